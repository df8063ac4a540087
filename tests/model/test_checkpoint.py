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
