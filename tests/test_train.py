import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli

from fornet_deploy.data.synthcity import MANIFEST_NAME
from fornet_deploy.errors import FornetError
from fornet_deploy.model.checkpoint import load_checkpoint
from fornet_deploy.train import LOG, TrainConfig, batch_plan, hard_region_target, poly_lr, train


def _cfg(data, out, tiny_config, **kw):
    options = dict(iterations=6, batch_size=2, crop_height=64, crop_width=128, val_interval=3, val_images=2, warmup=2,
                   device="cpu")
    return TrainConfig(data=str(data), out=str(out), model=tiny_config, **options | kw)


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


# --init: a second schedule or a fine-tuning from a checkpoint --------------------------------


def _parameters(path):
    # parameters only (not _weights' state_dict): one training step moves BatchNorm's running
    # statistics whatever the learning rate
    model = load_checkpoint(path)[0]
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_data, tiny_config):
    out = tmp_path_factory.mktemp("first") / "run"
    train(_cfg(tiny_data, out, tiny_config))
    return out / "last.safetensors"


def test_init_starts_from_the_checkpoint_with_a_fresh_schedule(tmp_path, tiny_data, tiny_config, first_run):
    # a learning rate too small to move a weight: what the run ends with is what it started from
    still = dict(iterations=1, warmup=0, lr=1e-30, weight_decay=0.0)
    summary = train(_cfg(tiny_data, tmp_path / "init", tiny_config, init=str(first_run), **still))
    train(_cfg(tiny_data, tmp_path / "scratch", tiny_config, **still))
    start, init = _parameters(first_run), _parameters(tmp_path / "init" / "last.safetensors")
    scratch = _parameters(tmp_path / "scratch" / "last.safetensors")
    assert all(torch.equal(start[k], init[k]) for k in start)
    assert not all(torch.equal(start[k], scratch[k]) for k in start)  # the check can fail
    assert summary["iterations"] == 1  # the schedule is the new run's, not the checkpoint's
    assert json.loads((tmp_path / "init" / "train_config.json").read_text())["init"] == str(first_run)


def test_init_with_other_classes_is_refused_before_anything_is_written(tmp_path, tiny_data, tiny_config, first_run):
    from fornet_deploy.data.labels import generic_label_set
    from fornet_deploy.model.checkpoint import save_checkpoint

    model = load_checkpoint(first_run)[0]
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, model, labels=generic_label_set(tiny_config.num_classes).to_dict())
    with pytest.raises(FornetError, match="predicts the classes class_0, .*; the data's are road, ") as info:
        train(_cfg(tiny_data, tmp_path / "run", tiny_config, init=str(other)))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_init_of_another_architecture_is_refused(tmp_path, tiny_data, tiny_config, first_run):
    with pytest.raises(FornetError, match="does not match the requested architecture: focus: checkpoint has 'topk'"):
        train(_cfg(tiny_data, tmp_path / "run", tiny_config.replace(focus="none"), init=str(first_run)))
    assert not (tmp_path / "run").exists()


def test_resume_of_an_init_run_needs_only_its_state(tmp_path, tiny_data, tiny_config, first_run):
    init = tmp_path / "start.safetensors"
    shutil.copy(first_run, init)
    train(_cfg(tiny_data, tmp_path / "resumed", tiny_config, init=str(init)), stop_after=3)
    init.unlink()  # the state holds the weights now
    train(_cfg(tiny_data, tmp_path / "resumed", tiny_config, init=str(init)), resume=True)
    shutil.copy(first_run, init)
    train(_cfg(tiny_data, tmp_path / "straight", tiny_config, init=str(init)))
    a, b = _weights(tmp_path / "straight" / "last.safetensors"), _weights(tmp_path / "resumed" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("content", [None, b"not a checkpoint"])
def test_init_of_a_missing_or_corrupt_file_is_one_line(tmp_path, tiny_data, content):
    init = tmp_path / "init.safetensors"
    if content is not None:
        init.write_bytes(content)
    result = run_cli("train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--iterations", "1",
                     "--device", "cpu", "--init", str(init))
    assert_one_line_error(result, str(init))
    assert not (tmp_path / "run").exists()
