import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from fornet_deploy.data.synthcity import MANIFEST_NAME
from fornet_deploy.errors import FornetError
from fornet_deploy.model.checkpoint import load_checkpoint
from fornet_deploy.train import LOG, TrainConfig, batch_plan, hard_region_target, poly_lr, train


def _cfg(data, out, tiny_config, **kw):
    return TrainConfig(data=str(data), out=str(out), model=tiny_config, iterations=6, batch_size=2, crop_height=64,
                       crop_width=128, val_interval=3, val_images=2, warmup=2, device="cpu", **kw)


def _weights(path):
    return load_checkpoint(path)[0].state_dict()


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_is_exact(tmp_path, tiny_data, tiny_config, optimizer):
    train(_cfg(tiny_data, tmp_path / "straight", tiny_config, optimizer=optimizer))
    train(_cfg(tiny_data, tmp_path / "resumed", tiny_config, optimizer=optimizer), stop_after=3)
    log = tmp_path / "resumed" / LOG
    assert json.loads(log.read_text().splitlines()[0])["iteration"] == 3
    with open(log, "a") as f:  # a torn last line (a writer killed mid-line) must not matter
        f.write('{"iteration": 6, "mi')
    train(_cfg(tiny_data, tmp_path / "resumed", tiny_config, optimizer=optimizer), resume=True)
    a = _weights(tmp_path / "straight" / "last.safetensors")
    b = _weights(tmp_path / "resumed" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(line)["iteration"] for line in log.read_text().splitlines()] == [3, 6]


def test_training_writes_checkpoints_and_log(tmp_path, tiny_data, tiny_config):
    summary = train(_cfg(tiny_data, tmp_path / "run", tiny_config, loss="ce"))
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"last.safetensors", "best.safetensors", "last.state.safetensors", "log.jsonl", "train_config.json"} <= names
    assert not any(n.endswith(".tmp") for n in names)
    assert summary["iterations"] == 6 and len(summary["history"]) == 2
    assert 0.0 <= summary["history"][-1]["miou"] <= 1.0


def test_batch_plan_is_deterministic_and_covers_an_epoch():
    plans = [batch_plan(10, 5, seed=3, iteration=i) for i in range(2)]
    assert plans == [batch_plan(10, 5, seed=3, iteration=i) for i in range(2)]
    assert sorted(i for plan in plans for i, _ in plan) == list(range(10))
    # two processes split the global batch without overlap
    ranks = [batch_plan(10, 2, 0, 0, rank=r, world=2) for r in range(2)]
    assert not {i for i, _ in ranks[0]} & {i for i, _ in ranks[1]}


def test_poly_schedule_warms_up_then_decays():
    cfg = TrainConfig(data="", out="", iterations=100, warmup=10, lr=1.0)
    assert poly_lr(cfg, 0) == pytest.approx(0.1)
    assert poly_lr(cfg, 10) == pytest.approx((1 - 0.1) ** 0.9)
    assert poly_lr(cfg, 99) < 0.02


def test_hard_region_target_marks_label_edges_only():
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[:, :, 16:] = 1
    labels[:, :4, :] = 255  # the ignore/valid edge along row 4 is not an edge
    target = hard_region_target(labels, stride=8, width=1)
    assert target.shape == (1, 1, 4, 4)
    # only the vertical 0|1 edge (columns 15/16, band 14..17) marks cells, in every row of cells
    assert target[0, 0].tolist() == [[0.0, 1.0, 1.0, 0.0]] * 4
    labels[:, :, 16:] = 0  # no class edge at all: nothing is hard, the ignore border included
    assert hard_region_target(labels, stride=8, width=1).sum() == 0


def test_resume_without_state_is_an_error(tmp_path, tiny_data, tiny_config):
    with pytest.raises(FornetError, match="no training state"):
        train(_cfg(tiny_data, tmp_path / "fresh", tiny_config), resume=True)


def _listing(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_fresh_train_into_an_earlier_run_is_refused(tmp_path, tiny_data, tiny_config):
    run = tmp_path / "run"
    train(_cfg(tiny_data, run, tiny_config), stop_after=1)
    before = _listing(run)
    with pytest.raises(FornetError, match="already holds a training run .*--resume") as info:
        train(_cfg(tiny_data, run, tiny_config))
    assert "\n" not in str(info.value)
    assert _listing(run) == before  # the old log is not appended to, nothing is replaced


@pytest.fixture
def broken_data(tmp_path, tiny_data):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    return data


def test_a_bad_label_is_found_before_anything_is_written(tmp_path, broken_data, tiny_config):
    label = sorted((broken_data / "gtFine" / "val").rglob("*_labelIds.png"))[-1]  # the last file checked
    cv2.imwrite(str(label), np.full((128, 256), 200, np.uint8))  # no Cityscapes label id is 200
    with pytest.raises(FornetError, match="unknown Cityscapes label ids \\[200\\]"):
        train(_cfg(broken_data, tmp_path / "run", tiny_config))
    assert not (tmp_path / "run").exists()


def test_an_interrupted_synthcity_dataset_is_refused(tmp_path, broken_data, tiny_config):
    manifest = json.loads((broken_data / MANIFEST_NAME).read_text())
    (broken_data / MANIFEST_NAME).write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(FornetError, match="incomplete SynthCity dataset.*fornet-deploy synthcity --out"):
        train(_cfg(broken_data, tmp_path / "run", tiny_config))
    assert not (tmp_path / "run").exists()
