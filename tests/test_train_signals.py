"""Training stopped by real signals in a real process resumes exactly (tensor for tensor).

One run is stopped five times, each time at another point, by SIGINT, SIGTERM and
``kill -9``, and resumed after each stop; its final weights, best checkpoint and log must
equal those of an uninterrupted run. The child process pauses at a chosen point (a
wrapper around a function of ``fornet_deploy.train``, installed by the child script, not
a hook in the library), prints where it is, and waits; the test sends the signal and then
lets it go on, so each signal lands exactly in the phase it is meant for.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from fornet_deploy.model.checkpoint import load_checkpoint, load_train_state
from fornet_deploy.train import BEST, LAST, LOG, STATE, TrainConfig, train

# argv: config JSON, "resume"|"fresh", pause point ("" | "step:N" | "validate:N" | "save:N" | "best:N"),
# go-file. Exits as the CLI does: the error's one line on stderr, its exit code.
CHILD = r"""
import os, sys, time
import fornet_deploy.train as t
from fornet_deploy.errors import FornetError

config, mode, point, go = sys.argv[1:5]
calls = {}

def pause(name, limit):
    calls[name] = calls.get(name, 0) + 1
    if calls[name] == limit:
        print(f"PAUSED {name}", flush=True)
        deadline = time.monotonic() + 60
        while not os.path.exists(go):
            if time.monotonic() > deadline:
                sys.exit(99)
            time.sleep(0.01)

def around(name, function, after=False, only=None):
    def wrapper(*args, **kwargs):
        hit = only is None or only(*args)
        if hit and not after:
            pause(name, limit)
        result = function(*args, **kwargs)
        if hit and after:
            pause(name, limit)
        return result
    return wrapper

if point:
    name, limit = point.split(":")[0], int(point.split(":")[1])
    if name == "step":  # inside a step: after the forward pass, before backward and the optimizer
        t.segmentation_loss = around("step", t.segmentation_loss)
    elif name == "validate":
        t.validate = around("validate", t.validate)
    elif name == "save":
        t.save_train_state = around("save", t.save_train_state)
    elif name == "best":  # best.safetensors written, the state that records it not yet
        t.save_checkpoint = around("best", t.save_checkpoint, after=True, only=lambda path, *a: path.name == t.BEST)
try:
    t.train(t.TrainConfig.from_dict(__import__("json").loads(config)), resume=mode == "resume")
except FornetError as exc:
    print(exc, file=sys.stderr)
    sys.exit(int(exc.exit_code))
"""


def _config(data: Path, out: Path, tiny_config) -> TrainConfig:
    # the CPU with one thread: the same arithmetic in every process, whatever the machine
    # (CUDA kernels and AMP's loss scale make resume close, not bit-exact)
    return TrainConfig(data=str(data), out=str(out), model=tiny_config, iterations=6, batch_size=2, crop_height=64,
                       crop_width=128, val_interval=2, val_images=1, warmup=2, threads=1, device="cpu")


def _run_child(cfg: TrainConfig, resume: bool, point: str, sig: int | None, tmp_path: Path) -> tuple[int, str]:
    go = tmp_path / f"go-{point}-{sig}"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(cfg.to_dict()), "resume" if resume else "fresh", point, str(go)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    if sig is not None:
        line = child.stdout.readline()
        assert line.startswith("PAUSED"), (line, child.communicate())
        os.kill(child.pid, sig)
        go.touch()
    _, stderr = child.communicate(timeout=300)
    return child.returncode, stderr


def _state_iteration(out: Path, tiny_config) -> tuple[int, list[int]]:
    from fornet_deploy.model.fornet import build_model
    from fornet_deploy.train import make_optimizer

    cfg = TrainConfig(data="", out="", model=tiny_config)
    model = build_model(tiny_config)
    info = load_train_state(out / STATE, model, make_optimizer(model, cfg))
    return info["iteration"], [r["iteration"] for r in info["history"]]


def _log(out: Path) -> list[dict]:
    """The log's records without their wall-clock time."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in map(json.loads, (out / LOG).read_text().splitlines())]


def _same_tensors(a: Path, b: Path) -> bool:
    (ma, ia), (mb, ib) = load_checkpoint(a), load_checkpoint(b)
    sa, sb = ma.state_dict(), mb.state_dict()
    return ia == ib and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_after_any_signal_at_any_point_is_exact(tmp_path, tiny_data, tiny_config):
    threads = torch.get_num_threads()
    try:
        train(_config(tiny_data, tmp_path / "straight", tiny_config))
    finally:
        torch.set_num_threads(threads)
    straight = tmp_path / "straight"
    cfg = _config(tiny_data, tmp_path / "stopped", tiny_config)
    out = Path(cfg.out)

    # Each stop: (resume?, where the child pauses, signal, exit code, state after: iteration, validated iterations)
    stops = [
        (False, "step:1", signal.SIGINT, 130, (1, [])),  # Ctrl-C inside the first step: it is finished, then saved
        (True, "best:1", signal.SIGKILL, -9, (2, [])),  # kill -9 between best.safetensors and the state naming it
        (True, "validate:2", signal.SIGINT, 130, (4, [2])),  # Ctrl-C during validation: the state at 4, unvalidated
        (True, "save:1", signal.SIGTERM, 130, (4, [2, 4])),  # SIGTERM during a save: the save completes, then stop
    ]
    for resume, point, sig, code, expected_state in stops:
        returncode, stderr = _run_child(cfg, resume, point, sig, tmp_path)
        assert returncode == code, (point, stderr)
        if sig != signal.SIGKILL:
            assert stderr.strip().count("\n") == 0 and "continue with --resume" in stderr, stderr
            assert f"at iteration {expected_state[0]}" in stderr and signal.Signals(sig).name in stderr
        assert _state_iteration(out, tiny_config) == expected_state, point
        assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"

    returncode, stderr = _run_child(cfg, True, "", None, tmp_path)
    assert returncode == 0, stderr
    assert _same_tensors(straight / LAST, out / LAST)
    assert _same_tensors(straight / BEST, out / BEST)  # weights and the iteration / mIoU it records
    assert _log(out) == _log(straight) and [r["iteration"] for r in _log(out)] == [2, 4, 6]
