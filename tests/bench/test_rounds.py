"""benchmarks/rounds.py: ratios are taken over quiet rounds only (a busy machine is not a result)."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from rounds import Rounds, quiet_ratio, time_rounds  # noqa: E402

QUIET, BUSY = {"busy": False}, {"busy": True}


def test_ratio_over_quiet_rounds_only():
    timed = Rounds(blocks={"fast": [1.0, 1.0, 1.0], "slow": [2.0, 9.0, 3.0]}, loads={"fast": [QUIET, BUSY, QUIET],
                   "slow": [QUIET, QUIET, QUIET]}, cpu={"fast": [1.0], "slow": [2.5]}, rounds=3)
    ratio = quiet_ratio(timed, "fast vs slow", "fast", "slow")
    assert ratio == {"median": 2.5, "min": 2.0, "max": 3.0, "quiet_rounds": 2, "rounds": 3, "busy": False,
                     "cpu_time_ratio": 2.5,  # the busy round's 9x is left out ...
                     "all_rounds": {"median": 3.0, "min": 2.0, "max": 9.0}}  # ... and kept apart
    timed.loads["slow"] = [BUSY, QUIET, BUSY]
    busy = quiet_ratio(timed, "fast vs slow", "fast", "slow")
    assert busy == {"busy": True, "quiet_rounds": 0, "cpu_time_ratio": 2.5,
                    "all_rounds": {"median": 3.0, "min": 2.0, "max": 9.0}}


def test_every_variant_is_timed_on_the_same_inputs_in_every_round():
    seen = {"a": [], "b": []}
    calls = {name: (lambda batch, name=name: seen[name].append(int(batch[0]))) for name in seen}
    timed = time_rounds(calls, [np.array([0]), np.array([1]), np.array([2])], rounds=2, block=3)
    assert seen["a"] == seen["b"] == [0, 1, 0, 1, 2] * 2  # 2 untimed calls, then the block, per round
    assert all(len(timed.wall[name]) == 6 and len(timed.blocks[name]) == 2 for name in calls)
    assert timed.machine_load and len(timed.loads["a"]) == 2
