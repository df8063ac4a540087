import pytest
import torch
from safetensors.torch import save_file

from fornet_deploy.errors import FornetError
from fornet_deploy.model.checkpoint import load_checkpoint, save_checkpoint
from fornet_deploy.model.fornet import build_model


def test_save_load_gives_the_same_outputs(tmp_path, tiny_config):
    torch.manual_seed(1)
    model = build_model(tiny_config).eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, {"iteration": 7})
    loaded, info = load_checkpoint(path)
    assert info == {"iteration": 7}
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        assert torch.equal(model.forward_all(x)["logits"], loaded.forward_all(x)["logits"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left


def test_runtime_fields_can_be_overridden(tmp_path, tiny_config):
    save_checkpoint(tmp_path / "m.safetensors", build_model(tiny_config))
    model, _ = load_checkpoint(tmp_path / "m.safetensors", expected=tiny_config.replace(topk_mode="threshold"), topk_mode="threshold")
    assert model.topk.mode == "threshold"


def test_mismatched_architecture_names_the_fields(tmp_path, tiny_config):
    save_checkpoint(tmp_path / "m.safetensors", build_model(tiny_config))
    with pytest.raises(FornetError, match=r"neck_channels: checkpoint has 16, expected 32"):
        load_checkpoint(tmp_path / "m.safetensors", expected=tiny_config.replace(neck_channels=32))


def test_missing_corrupt_truncated_and_foreign_files(tmp_path, tiny_config):
    with pytest.raises(FornetError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(FornetError, match="corrupt or not a safetensors file"):
        load_checkpoint(tmp_path / "garbage.safetensors")
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, build_model(tiny_config))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(FornetError, match="corrupt"):
        load_checkpoint(truncated)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(FornetError, match="not a fornet-deploy checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")


def test_tensors_that_do_not_fit_the_config(tmp_path, tiny_config):
    model = build_model(tiny_config)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model)
    # rewrite with one tensor dropped, keeping the metadata
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("head.classifier")}
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(FornetError, match="missing tensors"):
        load_checkpoint(path)


# --- untrusted headers (issue 14, defect 8) --------------------------------------------------


def write_header_only(path, config: dict, tensors: dict | None = None) -> None:
    """A checkpoint file whose header says anything: a few hundred bytes."""
    import json

    from fornet_deploy.model.checkpoint import CHECKPOINT_FORMAT

    meta = {"format": json.dumps(CHECKPOINT_FORMAT), "config": json.dumps(config)}
    save_file(tensors or {}, str(path), metadata=meta)


@pytest.mark.parametrize("config, message", [
    ({"stage_channels": [100_000, 100_000, 100_000, 100_000], "neck_channels": 100_000}, "integers from 1 to 2048"),
    ({"stage_channels": [2048] * 4, "stage_depths": [16] * 4, "expansions": [8] * 3, "neck_channels": 2048},
     "does not fit its own config: .* missing tensors"),
    ({"topk_ratio": float("nan")}, "topk_ratio must be a number in \\(0, 1\\]"),
    ({"topk_ratio": 1.5}, "topk_ratio must be a number in \\(0, 1\\]"),
    ({"num_classes": "19"}, "num_classes must be integers"),
    ({"branch_dilations": []}, "branch_dilations needs 1 to 8 entries"),
])
def test_a_hostile_config_is_refused_before_any_weight_is_allocated(tmp_path, monkeypatch, config, message):
    """A 268-byte checkpoint whose config asked for a 640 GB model allocated before checking."""
    path = tmp_path / "hostile.safetensors"
    write_header_only(path, config)
    assert path.stat().st_size < 1000

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr("fornet_deploy.model.checkpoint.build_model", no_build)
    with pytest.raises(FornetError, match=message) as info:
        load_checkpoint(path)
    assert info.type is FornetError  # an input error (exit 3), not a usage error


def test_hostile_checkpoints_are_one_line_on_the_command_line(tmp_path):
    from cli_helpers import assert_one_line_error, run_cli

    path = tmp_path / "hostile.safetensors"
    write_header_only(path, {"topk_ratio": float("nan"), "stage_channels": [10**9] * 4})
    export = ["export", "--checkpoint", str(path), "--out", str(tmp_path / "b")]
    for args in (["info", "--checkpoint", str(path)], export):
        result = run_cli(*args)
        assert_one_line_error(result, "has no valid FoR-Net config")
        assert result.returncode == 3
    assert not (tmp_path / "b").exists()


def test_a_model_beyond_the_parameter_budget_is_refused_before_it_is_built(tiny_config):
    from fornet_deploy.errors import OptionError

    huge = tiny_config.replace(stage_channels=(2048,) * 4, stage_depths=(16,) * 4, expansions=(8,) * 3)
    with pytest.raises(OptionError, match="M parameters, more than the supported 100 M"):
        build_model(huge)


def _train_state(path, tiny_config):
    from fornet_deploy.model.checkpoint import save_train_state

    torch.manual_seed(0)
    model = build_model(tiny_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(1, 3, 64, 64)).mean().backward()
    optimizer.step()
    save_train_state(path, model, optimizer, {"iteration": 3})
    return model


@pytest.mark.parametrize("damage, message", [
    (lambda t: t.update({"model/head.classifier.weight": torch.zeros(3, 3)}), "wrong shape"),
    (lambda t: t.pop("model/head.classifier.weight"), "missing tensors"),
    (lambda t: t.update({"model/head.classifier.weight": torch.zeros_like(
        t["model/head.classifier.weight"], dtype=torch.int64)}), "wrong type"),
    (lambda t: t.update({"optimizer/0/exp_avg": torch.zeros(7)}), "optimizer buffer 0/exp_avg has shape"),
    (lambda t: t.update({"optimizer/999/exp_avg": torch.zeros(7)}), "optimizer state for parameter 999"),
    (lambda t: t.update({"optimizer/x/exp_avg": torch.zeros(7)}), "does not fit this model and optimizer"),
])
def test_a_well_formed_train_state_with_wrong_tensors_is_one_line(tmp_path, tiny_config, damage, message):
    from safetensors import safe_open

    from fornet_deploy.model.checkpoint import load_train_state

    path = tmp_path / "state.safetensors"
    _train_state(path, tiny_config)
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    damage(tensors)
    save_file(tensors, str(path), metadata=meta)
    model = build_model(tiny_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FornetError, match=message):
        load_train_state(path, model, optimizer)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-restored


def test_a_checkpoint_is_checked_against_the_hash_it_must_have(tmp_path, tiny_config):
    from fornet_deploy.io import sha256_file

    path = tmp_path / "m.safetensors"
    save_checkpoint(path, build_model(tiny_config))
    load_checkpoint(path, sha256=sha256_file(path))
    with pytest.raises(FornetError, match="does not match the sha256 its bundle's manifest records"):
        load_checkpoint(path, sha256="0" * 64)
