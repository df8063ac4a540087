"""Power mode and clocks: :func:`parse_nvpmodel_query` reads ``nvpmodel -q``,
:func:`parse_jetson_clocks_show` reads ``jetson_clocks --show``; :func:`collect_jetson_info`
runs both and records a note instead of failing when a tool is missing or refuses
(``jetson_clocks`` needs root)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from .board import detect_board


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


# How a command is run: subprocess.run, or a fake in tests.
ToolRunner = Callable[..., subprocess.CompletedProcess]


def _run_tool(run: ToolRunner, argv: list[str], notes: list[str]) -> str | None:
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


def collect_jetson_info(run: ToolRunner = subprocess.run, root: Path = Path("/")) -> dict:
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


