"""Which Jetson this is: :func:`detect_board` reads ``/proc/device-tree/model`` and
``/etc/nv_tegra_release`` (under a ``root`` so tests can point at a fake filesystem) and
maps the L4T release to a JetPack version with :data:`JETPACK_BY_L4T`."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ...errors import HardwareError

MODEL_PATH = Path("proc/device-tree/model")
COMPATIBLE_PATH = Path("proc/device-tree/compatible")
TEGRA_RELEASE_PATH = Path("etc/nv_tegra_release")

# JetPack release for each L4T version (major.minor.patch), from NVIDIA's JetPack archive
# as tabulated by jetson-stats (rbonghi/jetson_stats, jtop/core/jetson_variables.py);
# 39.2.1 -> 7.2.1 was read off a board reporting both. Not listed -> JETPACK_SERIES.
JETPACK_BY_L4T: dict[str, str] = {
    # JetPack 4 (Nano, TX1, TX2, Xavier)
    "32.1.0": "4.2", "32.2.0": "4.2.1", "32.2.1": "4.2.2", "32.2.3": "4.2.3",
    "32.3.1": "4.3", "32.4.2": "4.4 DP", "32.4.3": "4.4", "32.4.4": "4.4.1",
    "32.5.0": "4.5", "32.5.1": "4.5.1", "32.5.2": "4.5.1", "32.6.1": "4.6",
    "32.7.1": "4.6.1", "32.7.2": "4.6.2", "32.7.3": "4.6.3", "32.7.4": "4.6.4",
    "32.7.5": "4.6.5", "32.7.6": "4.6.6",
    # JetPack 5 (Xavier, Orin)
    "34.1.0": "5.0 DP", "34.1.1": "5.0.1 DP", "35.1.0": "5.0.2", "35.2.1": "5.1",
    "35.3.1": "5.1.1", "35.4.1": "5.1.2", "35.5.0": "5.1.3", "35.6.0": "5.1.4",
    "35.6.1": "5.1.5", "35.6.2": "5.1.5", "35.6.3": "5.1.5", "35.6.4": "5.1.6",
    # JetPack 6 (Orin)
    "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.2": "6.1",
    "36.4.3": "6.2", "36.4.4": "6.2.1", "36.4.7": "6.2.1", "36.5.0": "6.2.2",
    # JetPack 7 (Thor from 38.2, Orin from 39.2)
    "38.2.0": "7.0", "38.2.1": "7.0", "38.2.2": "7.0", "38.4.0": "7.1",
    "39.2.0": "7.2", "39.2.1": "7.2.1",
}
# An L4T release missing from the table still names its JetPack series.
JETPACK_SERIES: dict[str, str] = {
    "32": "4.x", "34": "5.x", "35": "5.x", "36": "6.x", "38": "7.x", "39": "7.x",
}

# (keyword in the device-tree model, module family, SoC); the first match wins, so the
# Orin and Xavier names come before the plain "Nano".
_MODULES: tuple[tuple[str, str, str], ...] = (
    ("AGX Thor", "AGX Thor", "tegra264"),
    ("AGX Orin", "AGX Orin", "tegra234"),
    ("Orin NX", "Orin NX", "tegra234"),
    ("Orin Nano", "Orin Nano", "tegra234"),
    ("AGX Xavier", "AGX Xavier", "tegra194"),
    ("Xavier NX", "Xavier NX", "tegra194"),
    ("TX2", "TX2", "tegra186"),
    ("TX1", "TX1", "tegra210"),
    ("Nano", "Nano", "tegra210"),
)

# "# R36 (release), REVISION: 4.4, GCID: 41062509, BOARD: generic, ..."
#     R<release>            REVISION: <revision>
_TEGRA_RELEASE_RE = re.compile(
    r"#\s*R(?P<release>\d+)\s*\(release\),\s*REVISION:\s*(?P<revision>\d+(?:\.\d+)*)"
)
# "nvidia,tegra234" among the NUL-separated device-tree compatible strings.
_COMPATIBLE_SOC_RE = re.compile(r"nvidia,(tegra\d+)")


@dataclass(frozen=True)
class JetsonBoard:
    """What the board says about itself; ``None`` where it does not say."""

    model: str | None  # /proc/device-tree/model, e.g. "NVIDIA Jetson AGX Orin Developer Kit"
    l4t_release: str | None  # "36" from "# R36 (release), ..."
    l4t_revision: str | None  # "4.4" from "REVISION: 4.4"
    jetpack: str | None  # "6.2.1", or a series such as "6.x" for an unlisted revision
    module: str | None  # "AGX Orin", "Orin NX", "Xavier NX", "Nano", ...
    soc: str | None  # "tegra234", ...

    @property
    def l4t_version(self) -> str | None:
        """``"36.4.4"``: release and revision, padded to three numbers."""
        if self.l4t_release is None or self.l4t_revision is None:
            return None
        return _l4t_version(self.l4t_release, self.l4t_revision)

    def to_dict(self) -> dict:
        return {**asdict(self), "l4t_version": self.l4t_version}


def _l4t_version(release: str, revision: str) -> str:
    parts = [release, *revision.split(".")]
    return ".".join((parts + ["0", "0"])[:3])


def jetpack_for_l4t(release: str, revision: str) -> str | None:
    """The JetPack version for an L4T release, its series if unlisted, else ``None``."""
    return JETPACK_BY_L4T.get(_l4t_version(release, revision), JETPACK_SERIES.get(release))


def parse_tegra_release(text: str) -> tuple[str, str] | None:
    """``(release, revision)`` from ``/etc/nv_tegra_release``, e.g. ``("36", "4.4")``."""
    match = _TEGRA_RELEASE_RE.search(text)
    return (match["release"], match["revision"]) if match else None


def module_and_soc(model: str | None, compatible: str | None = None) -> tuple[str | None, str | None]:
    """Module family and SoC from the device-tree model (and compatible list, if read)."""
    module = soc = None
    for keyword, family, family_soc in _MODULES:
        if model and keyword.lower() in model.lower():
            module, soc = family, family_soc
            break
    match = _COMPATIBLE_SOC_RE.search(compatible or "")
    return module, match[1] if match else soc


def _read_device_tree_string(path: Path) -> str | None:
    """A device-tree property: NUL-terminated (or NUL-separated) text, or ``None``."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    text = raw.decode("utf-8", errors="replace").strip("\0").strip()
    return text or None


def detect_board(root: Path = Path("/")) -> JetsonBoard:
    """Identify the Jetson board under ``root``; raise :class:`HardwareError` if none.

    A machine counts as a Jetson when ``/etc/nv_tegra_release`` exists, or when the
    device tree names a Jetson or an NVIDIA Tegra SoC (some custom images lack the file).
    """
    root = Path(root)
    model = _read_device_tree_string(root / MODEL_PATH)
    compatible = _read_device_tree_string(root / COMPATIBLE_PATH)
    module, soc = module_and_soc(model, compatible)
    release_file = root / TEGRA_RELEASE_PATH
    try:
        release_text: str | None = release_file.read_text(errors="replace")
    except OSError:
        release_text = None

    if release_text is None and soc is None and "jetson" not in (model or "").lower():
        model_path = root / MODEL_PATH
        said = f"{model_path} says {model!r}" if model else f"no {model_path}"
        raise HardwareError(
            f"--device jetson: this machine is not a Jetson board (no {release_file}, and {said})"
        )

    parsed = parse_tegra_release(release_text or "")
    release, revision = parsed if parsed else (None, None)
    return JetsonBoard(
        model=model,
        l4t_release=release,
        l4t_revision=revision,
        jetpack=jetpack_for_l4t(release, revision) if parsed else None,
        module=module,
        soc=soc,
    )


