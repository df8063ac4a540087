import json

import pytest
import torch

from fornet_deploy.model.checkpoint import load_checkpoint
from fornet_deploy.train import TrainConfig, batch_plan, hard_region_target, poly_lr, train


def _cfg(data, out, tiny_config, **kw):
    return TrainConfig(data=str(data), out=str(out), model=tiny_config, iterations=6, batch_size=2, crop_height=64,
                       crop_width=128, val_interval=3, val_images=2, warmup=2, **kw)


def _weights(path):
    return load_checkpoint(path)[0].state_dict()


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_is_exact(tmp_path, tiny_data, tiny_config, optimizer):
    train(_cfg(tiny_data, tmp_path / "straight", tiny_config, optimizer=optimizer))
    train(_cfg(tiny_data, tmp_path / "resumed", tiny_config, optimizer=optimizer), stop_after=3)
    assert json.loads((tmp_path / "resumed" / "log.jsonl").read_text().splitlines()[0])["iteration"] == 3
    train(_cfg(tiny_data, tmp_path / "resumed", tiny_config, optimizer=optimizer), resume=True)
    a = _weights(tmp_path / "straight" / "last.safetensors")
    b = _weights(tmp_path / "resumed" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


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
    from fornet_deploy.errors import FornetError

    with pytest.raises(FornetError, match="no training state"):
        train(_cfg(tiny_data, tmp_path / "fresh", tiny_config), resume=True)
