"""NVIDIA Jetson facts and telemetry for ``fornet-deploy bench --device jetson``.

Four things live here, each a small pure parser plus a thin layer that runs the tool:

* **Board** — :func:`detect_board` reads ``/proc/device-tree/model`` and
  ``/etc/nv_tegra_release`` (under a ``root`` so tests can point at a fake filesystem) and
  maps the L4T release to a JetPack version with :data:`JETPACK_BY_L4T`.
* **Power mode and clocks** — :func:`parse_nvpmodel_query` reads ``nvpmodel -q``,
  :func:`parse_jetson_clocks_show` reads ``jetson_clocks --show``;
  :func:`collect_jetson_info` runs both and records a note instead of failing when a tool
  is missing or refuses (``jetson_clocks`` needs root).
* **tegrastats** — :func:`parse_tegrastats_line` turns one line into a
  :class:`TegrastatsSample`; :class:`TegrastatsSampler` runs ``tegrastats --interval MS``
  in the background for the duration of a ``with`` block.
* **Summary** — :func:`summarize` reduces samples to JSON-ready loads, temperatures, power
  and energy per frame.

The tegrastats line format differs between boards and releases (see the fixtures under
``tests/bench/fixtures/jetson`` and their SOURCES.md):

* Nano / TX1 / TX2 / Xavier on JetPack 4 print rails without unit, ``POM_5V_IN 1022/1022``
  (current/average mW); AGX Xavier names its rails ``GPU``, ``CPU``, ``SOC``, ``CV``...
* JetPack 5 and 6 print ``VDD_IN 5299mW/5299mW``; JetPack 7 adds a running maximum,
  ``VDD_IN 3462mW/3522mW/3582mW``, and a maximum to temperatures, ``cpu@45.375C/45.812C``.
* Orin prints one GPU clock per GPC, ``GR3D_FREQ 0%@[305,305]``; newer releases prefix the
  line with a ``MM-DD-YYYY HH:MM:SS`` timestamp.
* Unused thermal zones read ``-256C``; they are dropped.

Fields the parser does not model are kept: ``NAME value`` pairs (``APE 150``,
``NVENC off``) in :attr:`TegrastatsSample.engines`, anything else verbatim in
:attr:`TegrastatsSample.unparsed`.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from ..errors import HardwareError

# --------------------------------------------------------------------------------------
# Board detection
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# nvpmodel and jetson_clocks
# --------------------------------------------------------------------------------------


class PowerMode(NamedTuple):
    """The active ``nvpmodel`` mode: ``("MAXN", 0)``."""

    name: str
    id: int | None


# "NV Power Mode: MAXN_SUPER" followed (next line) by the mode number "2".
_NVPMODEL_RE = re.compile(
    r"^NV Power Mode:\s*(?P<name>\S+)[ \t]*(?:\n\s*(?P<id>\d+)\s*$)?", re.MULTILINE
)


def parse_nvpmodel_query(text: str) -> PowerMode | None:
    """Parse ``nvpmodel -q``; warnings such as ``NVPM WARN: ...`` before it are skipped."""
    match = _NVPMODEL_RE.search(text)
    if not match:
        return None
    return PowerMode(match["name"], int(match["id"]) if match["id"] is not None else None)


# A clock-domain line of `jetson_clocks --show`:
#   "cpu3:  Online=1 Governor=schedutil MinFreq=729600 MaxFreq=1510400 CurrentFreq=..."
#   "GPU MinFreq=306000000 MaxFreq=624750000 CurrentFreq=306000000"
#   "DLA0_CORE:   Online=1 MinFreq=0 MaxFreq=1600000000 CurrentFreq=1600000000"
#   <domain>[:]  then KEY=value pairs, among them MinFreq/MaxFreq/CurrentFreq.
_CLOCK_LINE_RE = re.compile(r"^(?P<domain>\w+):?\s+(?P<pairs>.*\bMinFreq=.*)$")
_PAIR_RE = re.compile(r"(\w+)=(\S+)")
_CPU_DOMAIN_RE = re.compile(r"cpu(?P<index>\d+)")
# "SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit"
_SOC_LINE_RE = re.compile(r"^SOC family:\s*(?P<soc>\S+)\s+Machine:\s*(?P<machine>.*)$")
# "Online CPUs: 0,3-5" or, newer, "Online CPUs: 0-5, Offline CPUs: "
_ONLINE_RE = re.compile(r"^Online CPUs:\s*(?P<cpus>[\d,\-\s]*?)\s*(?:,\s*Offline CPUs:.*)?$")
# "FAN Dynamic Speed Control=nvfancontrol hwmon0_pwm1=65" (Orin), "Fan: speed=0" (TX2).
_FAN_RE = re.compile(r"^(?:FAN|Fan:)\s+(?P<fan>.*)$")
# "NV Power Mode: MAXN"
_MODE_LINE_RE = re.compile(r"^NV Power Mode:\s*(?P<mode>\S+)")
# Anything else shaped "Key: value", e.g. "Active GPU TPCs: 8".
_OTHER_LINE_RE = re.compile(r"^(?P<key>[^:=]+):\s*(?P<value>.*)$")


def _cpu_set(spec: str) -> set[int]:
    """``"0,3-5"`` -> ``{0, 3, 4, 5}``."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def _clock_domain(domain: str, pairs: str) -> dict:
    """Min/max/current in MHz. cpufreq reports kHz (``cpuN``), every other domain Hz."""
    values = dict(_PAIR_RE.findall(pairs))
    per_mhz = 1e3 if _CPU_DOMAIN_RE.fullmatch(domain) else 1e6

    def mhz(key: str) -> float | None:
        return int(values[key]) / per_mhz if values.get(key, "").isdigit() else None

    online = values.get("Online")
    return {
        "online": None if online is None else online == "1",
        "governor": values.get("Governor"),
        "min_mhz": mhz("MinFreq"),
        "max_mhz": mhz("MaxFreq"),
        "current_mhz": mhz("CurrentFreq"),
    }


def parse_jetson_clocks_show(text: str) -> dict:
    """Parse ``jetson_clocks --show`` into a JSON-ready dict.

    Keys: ``soc_family``, ``machine``, ``online_cpus`` (as printed), ``cpus``
    (``{"cpu0": {online, governor, min_mhz, max_mhz, current_mhz}}``), ``gpu``, ``emc``,
    ``accelerators`` (DLA/PVA domains, JetPack 7), ``fan`` (raw lines), ``power_mode`` and
    ``other`` (remaining ``Key: value`` lines such as ``Active GPU TPCs``).
    """
    info: dict = {
        "soc_family": None, "machine": None, "online_cpus": None, "cpus": {}, "gpu": None,
        "emc": None, "accelerators": {}, "fan": [], "power_mode": None, "other": {},
    }
    for line in (raw.strip() for raw in text.splitlines()):
        if match := _SOC_LINE_RE.match(line):
            info["soc_family"], info["machine"] = match["soc"], match["machine"].strip()
        elif match := _ONLINE_RE.match(line):
            info["online_cpus"] = match["cpus"]
        elif match := _CLOCK_LINE_RE.match(line):
            domain = match["domain"]
            clocks = _clock_domain(domain, match["pairs"])
            if _CPU_DOMAIN_RE.fullmatch(domain):
                info["cpus"][domain] = clocks
            elif domain in ("GPU", "EMC"):
                info[domain.lower()] = clocks
            else:
                info["accelerators"][domain] = clocks
        elif match := _FAN_RE.match(line):
            info["fan"].append(match["fan"].strip())
        elif match := _MODE_LINE_RE.match(line):
            info["power_mode"] = match["mode"]
        elif match := _OTHER_LINE_RE.match(line):
            info["other"][match["key"].strip()] = match["value"].strip()

    # Newer releases drop "Online=1" from cpu lines; the "Online CPUs" list says it.
    if info["online_cpus"] is not None:
        online = _cpu_set(info["online_cpus"])
        for name, clocks in info["cpus"].items():
            if clocks["online"] is None:
                clocks["online"] = int(_CPU_DOMAIN_RE.fullmatch(name)["index"]) in online
    return info


Runner = Callable[..., subprocess.CompletedProcess]


def _run_tool(run: Runner, argv: list[str], notes: list[str]) -> str | None:
    """Run a board tool, return its stdout, or record why not in ``notes``."""
    try:
        done = run(argv, capture_output=True, text=True, timeout=15, check=False)
    except FileNotFoundError:
        notes.append(f"'{argv[0]}' was not found on PATH")
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        notes.append(f"'{' '.join(argv)}' could not run: {exc}")
        return None
    if done.returncode != 0:
        said = (done.stderr or done.stdout or "").strip().splitlines()
        reason = f": {said[0]}" if said else ""
        notes.append(f"'{' '.join(argv)}' exited with {done.returncode}{reason}")
        return None
    return done.stdout


def collect_jetson_info(run: Runner = subprocess.run, root: Path = Path("/")) -> dict:
    """Board, power mode and clocks as one JSON-ready dict.

    Raises :class:`HardwareError` off a Jetson; a missing or refusing tool (``jetson_clocks``
    needs root) leaves its entry ``None`` and adds a line to ``notes``.
    """
    notes: list[str] = []
    board = detect_board(root)

    nvpmodel_out = _run_tool(run, ["nvpmodel", "-q"], notes)
    mode = parse_nvpmodel_query(nvpmodel_out) if nvpmodel_out is not None else None
    if nvpmodel_out is not None and mode is None:
        notes.append("'nvpmodel -q' printed no 'NV Power Mode' line")

    clocks_out = _run_tool(run, ["jetson_clocks", "--show"], notes)
    return {
        "board": board.to_dict(),
        "power_mode": mode._asdict() if mode else None,
        "clocks": parse_jetson_clocks_show(clocks_out) if clocks_out is not None else None,
        "notes": notes,
    }


# --------------------------------------------------------------------------------------
# tegrastats
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuCore:
    online: bool
    load_pct: int | None = None
    freq_mhz: int | None = None


@dataclass(frozen=True)
class PowerRail:
    """One INA3221 rail in mW: instantaneous, running average, running max (JetPack 7)."""

    current_mw: int
    average_mw: int
    max_mw: int | None = None


@dataclass(frozen=True)
class TegrastatsSample:
    """One tegrastats line. ``None`` / empty where the board did not print the field."""

    timestamp: str | None = None  # ISO 8601, from a leading "MM-DD-YYYY HH:MM:SS"
    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    swap_used_mb: int | None = None
    swap_total_mb: int | None = None
    swap_cached_mb: int | None = None
    cpus: tuple[CpuCore, ...] = ()
    emc_load_pct: int | None = None
    emc_freq_mhz: int | None = None
    gpu_load_pct: int | None = None  # GR3D_FREQ
    gpu_freq_mhz: int | None = None  # highest per-GPC clock on Orin ("@[305,305]")
    temperatures_c: dict[str, float] = field(default_factory=dict)
    rails: dict[str, PowerRail] = field(default_factory=dict)
    engines: dict[str, str] = field(default_factory=dict)  # "APE": "150", "NVENC": "off"
    unparsed: str = ""  # text no pattern claimed, e.g. "IRAM 0/252kB(lfb 252kB)"
    host_time: float | None = None  # time.monotonic() when read (set by TegrastatsSampler)

    def to_dict(self) -> dict:
        return asdict(self)


# Each pattern below claims its span of the line; the spans are blanked before the next
# pattern runs, so a later, looser pattern cannot re-read them.

# Leading "04-27-2026 14:59:41" (month-day-year).
_TIMESTAMP_RE = re.compile(r"^\s*(?P<m>\d{2})-(?P<d>\d{2})-(?P<y>\d{4}) (?P<time>\d{2}:\d{2}:\d{2})\b")
# "RAM 6334/15388MB (lfb 1770x4MB)"; \b keeps "IRAM 0/252kB" out.
_RAM_RE = re.compile(r"\bRAM\s+(?P<used>\d+)/(?P<total>\d+)MB(?:\s*\(lfb\s[^)]*\))?")
# "SWAP 491/7694MB (cached 0MB)"
_SWAP_RE = re.compile(r"\bSWAP\s+(?P<used>\d+)/(?P<total>\d+)MB(?:\s*\(cached\s+(?P<cached>\d+)MB\))?")
# "CPU [6%@729,9%@729,off,off]"
_CPU_RE = re.compile(r"\bCPU\s+\[(?P<cores>[^\]]*)\]")
# One core: "6%@729", "6%" (no clock) or "off".
_CORE_RE = re.compile(r"(?P<load>\d+)%(?:@(?P<freq>\d+))?")


def _load_freq_re(name: str) -> re.Pattern[str]:
    # "<name> 12%@1300", "<name> 0%", "<name> 0%@[305,305]" (per GPC), "<name> @[1000,1000]"
    return re.compile(
        rf"\b{name}\s+(?:(?P<load>\d+)%)?(?:@\[?(?P<freqs>\d+(?:,\d+)*)\]?)?(?=\s|$)"
    )


_EMC_RE = _load_freq_re("EMC_FREQ")
_GR3D_RE = _load_freq_re("GR3D_FREQ")
# "tj@48.875C", "SOC0@46.968C", JetPack 7 "cpu@45.375C/45.812C" (current/max).
_TEMP_RE = re.compile(
    r"\b(?P<name>[A-Za-z][A-Za-z0-9_]*)@(?P<value>-?\d+(?:\.\d+)?)C(?:/-?\d+(?:\.\d+)?C)?(?=\s|$)"
)
# A rail: "VDD_IN 5299mW/5299mW", "VDD_IN 3462mW/3522mW/3582mW" (JetPack 7: + max),
# "POM_5V_IN 1022/1022" or "GPU 0/0" (JetPack 4, no unit). The look-ahead keeps
# "IRAM 0/252kB" out.
_RAIL_RE = re.compile(
    r"\b(?P<name>[A-Za-z][A-Za-z0-9_]*)\s+(?P<cur>\d+)(?:mW)?/(?P<avg>\d+)(?:mW)?"
    r"(?:/(?P<max>\d+)(?:mW)?)?(?=\s|$)"
)
# Any other "NAME value": "APE 150", "NVENC off", "VIC_FREQ 729", "GR3D2_FREQ 3%@0".
_ENGINE_RE = re.compile(
    r"\b(?P<name>[A-Z][A-Z0-9_]*)\s+(?P<value>off|\d+%?(?:@\[?\d+(?:,\d+)*\]?)?)(?=\s|$)"
)

# Thermal zones that are not populated read -256C.
_ABSENT_TEMPERATURE_C = -256.0


def _claim(pattern: re.Pattern[str], text: str) -> tuple[list[re.Match[str]], str]:
    """All matches of ``pattern`` and ``text`` with the matched spans blanked out."""
    matches = list(pattern.finditer(text))
    for match in matches:
        start, end = match.span()
        text = text[:start] + " " * (end - start) + text[end:]
    return matches, text


def _int(value: str | None) -> int | None:
    return int(value) if value is not None else None


def _parse_core(token: str) -> CpuCore:
    token = token.strip()
    match = _CORE_RE.fullmatch(token)
    if token == "off" or not match:
        return CpuCore(online=token != "off")
    return CpuCore(online=True, load_pct=int(match["load"]), freq_mhz=_int(match["freq"]))


def _load_and_clock(match: re.Match[str] | None) -> tuple[int | None, int | None]:
    if match is None:
        return None, None
    clocks = [int(f) for f in match["freqs"].split(",")] if match["freqs"] else []
    return _int(match["load"]), max(clocks) if clocks else None


def parse_tegrastats_line(line: str) -> TegrastatsSample | None:
    """Parse one line of ``tegrastats`` output; ``None`` if it carries no known field."""
    text = line.rstrip("\n")
    timestamps, text = _claim(_TIMESTAMP_RE, text)
    rams, text = _claim(_RAM_RE, text)
    swaps, text = _claim(_SWAP_RE, text)
    cpus, text = _claim(_CPU_RE, text)
    emcs, text = _claim(_EMC_RE, text)
    gr3ds, text = _claim(_GR3D_RE, text)
    temps, text = _claim(_TEMP_RE, text)
    rails, text = _claim(_RAIL_RE, text)
    if not (rams or cpus or gr3ds or temps or rails):
        return None
    engines, text = _claim(_ENGINE_RE, text)

    ram = rams[0] if rams else None
    swap = swaps[0] if swaps else None
    emc_load, emc_freq = _load_and_clock(emcs[0] if emcs else None)
    gpu_load, gpu_freq = _load_and_clock(gr3ds[0] if gr3ds else None)
    stamp = timestamps[0] if timestamps else None
    return TegrastatsSample(
        timestamp=f"{stamp['y']}-{stamp['m']}-{stamp['d']}T{stamp['time']}" if stamp else None,
        ram_used_mb=_int(ram["used"]) if ram else None,
        ram_total_mb=_int(ram["total"]) if ram else None,
        swap_used_mb=_int(swap["used"]) if swap else None,
        swap_total_mb=_int(swap["total"]) if swap else None,
        swap_cached_mb=_int(swap["cached"]) if swap else None,
        cpus=tuple(_parse_core(t) for t in cpus[0]["cores"].split(",")) if cpus else (),
        emc_load_pct=emc_load,
        emc_freq_mhz=emc_freq,
        gpu_load_pct=gpu_load,
        gpu_freq_mhz=gpu_freq,
        temperatures_c={
            t["name"]: float(t["value"]) for t in temps if float(t["value"]) != _ABSENT_TEMPERATURE_C
        },
        # Duplicate names ("NC 0mW/0mW" twice on AGX Orin) are unconnected channels: last wins.
        rails={r["name"]: PowerRail(int(r["cur"]), int(r["avg"]), _int(r["max"])) for r in rails},
        engines={e["name"]: e["value"] for e in engines},
        unparsed=" ".join(text.split()),
    )


class TegrastatsSampler:
    """Run ``tegrastats`` in the background and collect parsed samples.

    ::

        with TegrastatsSampler(interval_ms=200) as sampler:
            run_benchmark()
        summary = summarize(sampler.samples, frames=n, seconds=elapsed)

    ``command`` replaces ``["tegrastats", "--interval", MS]`` (tests inject a fake emitter).
    Lines that are not samples (tegrastats' own warnings) are kept in :attr:`messages`.
    On exit the process is terminated, and killed if it has not stopped after
    ``stop_timeout_s``.
    """

    def __init__(
        self,
        interval_ms: int = 200,
        command: Sequence[str] | None = None,
        stop_timeout_s: float = 2.0,
    ):
        self.command = list(command) if command else ["tegrastats", "--interval", str(int(interval_ms))]
        self.stop_timeout_s = stop_timeout_s
        self.messages: list[str] = []
        self.returncode: int | None = None
        self._samples: list[TegrastatsSample] = []
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def samples(self) -> list[TegrastatsSample]:
        """A snapshot of the samples read so far."""
        with self._lock:
            return list(self._samples)

    def start(self) -> None:
        try:
            self._process = subprocess.Popen(
                self.command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                bufsize=1,
            )
        except FileNotFoundError as exc:
            raise HardwareError(
                f"--device jetson: '{self.command[0]}' was not found; tegrastats ships with "
                f"Jetson Linux (L4T), so this is not a Jetson board or it is not on PATH"
            ) from exc
        except PermissionError as exc:
            raise HardwareError(f"--device jetson: '{self.command[0]}' is not executable by this user") from exc
        self._reader = threading.Thread(target=self._read, name="tegrastats-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            sample = parse_tegrastats_line(line)
            with self._lock:
                if sample is not None:
                    self._samples.append(replace(sample, host_time=time.monotonic()))
                elif line.strip():
                    self.messages.append(line.strip())

    def stop(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.returncode = process.returncode
        if self._reader is not None:
            self._reader.join(timeout=self.stop_timeout_s)
            if not self._reader.is_alive() and process.stdout is not None:
                process.stdout.close()
        self._process = None

    def __enter__(self) -> TegrastatsSampler:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


# --------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------

# Rails that measure the whole module's input. Where a board has none (AGX Xavier; AGX
# Orin, whose VIN_SYS_5V0 is its 5 V system rail beside VDD_GPU_SOC and VDD_CPU_CV, not
# the input), the total is the sum of all rails, as jtop computes it. Either way it is the
# module, not the carrier board.
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _max(values: Iterable[float]) -> float | None:
    return max(values, default=None)


def _total_power_mw(sample: TegrastatsSample) -> tuple[float, str] | None:
    for name in INPUT_RAILS:
        if name in sample.rails:
            return sample.rails[name].current_mw, name
    if sample.rails:
        return sum(r.current_mw for r in sample.rails.values()), "sum of " + "+".join(sample.rails)
    return None


def summarize(samples: Sequence[TegrastatsSample], frames: int, seconds: float) -> dict:
    """Reduce samples to a JSON-ready dict (``None`` where there is nothing to reduce).

    Power uses each rail's instantaneous reading. ``energy_per_frame_j`` is mean total
    power x ``seconds`` / ``frames``, so the samples should cover the timed window.
    """
    gpu = [s.gpu_load_pct for s in samples if s.gpu_load_pct is not None]
    emc = [s.emc_load_pct for s in samples if s.emc_load_pct is not None]
    cpu = [
        mean for s in samples
        if (mean := _mean(c.load_pct for c in s.cpus if c.load_pct is not None)) is not None
    ]
    ram = [s.ram_used_mb for s in samples if s.ram_used_mb is not None]

    temperatures: dict[str, list[float]] = {}
    rails_mw: dict[str, list[int]] = {}
    for sample in samples:
        for name, celsius in sample.temperatures_c.items():
            temperatures.setdefault(name, []).append(celsius)
        for name, rail in sample.rails.items():
            rails_mw.setdefault(name, []).append(rail.current_mw)

    totals = [t for s in samples if (t := _total_power_mw(s)) is not None]
    total_w = [mw / 1000 for mw, _ in totals]
    mean_total_w = _mean(total_w)
    energy = None
    if mean_total_w is not None and frames > 0 and seconds > 0:
        energy = mean_total_w * seconds / frames

    return {
        "samples": len(samples),
        "frames": frames,
        "seconds": seconds,
        "gpu_load_pct": {"mean": _mean(gpu), "max": _max(gpu)},
        "emc_load_pct": {"mean": _mean(emc), "max": _max(emc)},
        "cpu_load_pct": {"mean": _mean(cpu)},
        "ram_used_mb": {
            "peak": _max(ram),
            "total": _max(s.ram_total_mb for s in samples if s.ram_total_mb is not None),
        },
        "temperatures_c": {
            name: {"mean": _mean(values), "max": _max(values)} for name, values in temperatures.items()
        },
        "power": {
            "rails_w": {name: _mean(mw / 1000 for mw in values) for name, values in rails_mw.items()},
            "total_w": {"mean": mean_total_w, "max": _max(total_w)},
            "total_source": totals[0][1] if totals else None,
        },
        "energy_per_frame_j": energy,
    }
