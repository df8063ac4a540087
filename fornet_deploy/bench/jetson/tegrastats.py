"""tegrastats: :func:`parse_tegrastats_line` turns one line into a :class:`TegrastatsSample`,
:class:`TegrastatsSampler` runs ``tegrastats --interval MS`` in the background for the
duration of a ``with`` block, and :func:`summarize` reduces samples to JSON-ready loads,
temperatures, power and energy per frame (line formats: see the package docstring)."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace

from ...errors import HardwareError


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
