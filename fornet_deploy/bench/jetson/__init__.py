"""NVIDIA Jetson facts and telemetry for ``fornet-deploy bench --device jetson``.

Four things live here (one module each but the summary, which sits with tegrastats), each
a small pure parser plus a thin layer that runs the tool:

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

from .board import (
    JETPACK_BY_L4T,
    JETPACK_SERIES,
    MODEL_PATH,
    JetsonBoard,
    detect_board,
    jetpack_for_l4t,
    module_and_soc,
    parse_tegra_release,
)
from .power import (
    PowerMode,
    ToolRunner,
    collect_jetson_info,
    parse_jetson_clocks_show,
    parse_nvpmodel_query,
)
from .tegrastats import (
    CpuCore,
    PowerRail,
    TegrastatsSample,
    TegrastatsSampler,
    parse_tegrastats_line,
    summarize,
)

__all__ = [
    "JETPACK_BY_L4T", "JETPACK_SERIES", "MODEL_PATH", "CpuCore", "JetsonBoard", "PowerMode", "PowerRail", "TegrastatsSample",
    "TegrastatsSampler", "ToolRunner", "collect_jetson_info", "detect_board", "jetpack_for_l4t", "module_and_soc",
    "parse_jetson_clocks_show", "parse_nvpmodel_query", "parse_tegra_release", "parse_tegrastats_line", "summarize",
]
