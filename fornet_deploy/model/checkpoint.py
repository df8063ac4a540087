"""Checkpoints: safetensors weights + the FoR-Net config as JSON metadata, no pickle.

One ``.safetensors`` file holds everything needed to rebuild the model: tensors are the
``state_dict``, the header metadata holds ``format``, ``config`` (JSON), the label set the model was
trained on (``labels``: class names, palette, ignore index, thin classes, as
:class:`fornet_deploy.data.labels.LabelSet` writes it; absent in older files) and
free-form ``info`` (JSON: iteration, validation mIoU, ...). Training state for ``--resume``
(optimizer buffers, iteration) goes into a second file of the same kind, so a shipped
checkpoint stays small. Writes are atomic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file

from ..errors import FornetError
from ..io import atomic_path, read_bytes
from .fornet import MAX_PARAMETERS, FoRNet, FoRNetConfig, build_model, state_spec

CHECKPOINT_FORMAT = "fornet-deploy-checkpoint"
TRAIN_STATE_FORMAT = "fornet-deploy-train-state"
OPTIMIZER_PREFIX = "optimizer/"
# Largest file read: float32 weights plus two optimizer buffers per parameter, with room.
MAX_FILE_BYTES = 16 * MAX_PARAMETERS


def _save(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})


def _metadata(data: bytes, path: str | Path, expected_format: str, what: str) -> dict[str, Any]:
    """The JSON metadata of a safetensors file's header (read before any tensor is)."""
    try:
        size = int.from_bytes(data[:8], "little")
        if len(data) < 8 or size > len(data) - 8:
            raise ValueError("the header runs past the end of the file")
        header = json.loads(data[8 : 8 + size])
        meta = {k: json.loads(v) for k, v in (header.get("__metadata__") or {}).items()}
    except (ValueError, AttributeError, TypeError) as exc:  # JSON and Unicode errors are ValueErrors
        raise FornetError(f"{what} {path} is corrupt or not a safetensors file ({exc})") from None
    if meta.get("format") != expected_format:
        raise FornetError(
            f"{path} is not a fornet-deploy {what} (format {meta.get('format')!r}, expected {expected_format!r})"
        )
    return meta


def _tensors(data: bytes, path: str | Path, what: str) -> dict[str, torch.Tensor]:
    try:
        return load_tensors(data)
    except (SafetensorError, ValueError) as exc:
        raise FornetError(f"{what} {path} is corrupt or not a safetensors file ({exc})") from None


def _config(meta: dict, path: str | Path, what: str) -> FoRNetConfig:
    try:
        return FoRNetConfig.from_dict(meta["config"])
    except (KeyError, TypeError, FornetError) as exc:  # OptionError too: a file's config is input, not an option
        raise FornetError(f"{what} {path} has no valid FoR-Net config ({exc})") from None


def _check_tensors(expected: dict[str, tuple[tuple[int, ...], torch.dtype]], tensors: dict[str, torch.Tensor],
                   path: str | Path, what: str) -> None:
    """The file holds exactly the tensors of the architecture, of its shapes and dtypes."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if tuple(tensors[k].shape) != expected[k][0])
    dtype = sorted(k for k in set(expected) & set(tensors) if k not in wrong
                   and tensors[k].dtype.is_floating_point != expected[k][1].is_floating_point)
    if missing or unexpected or wrong or dtype:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} tensors of the wrong shape "
                         f"(e.g. {k}: {tuple(tensors[k].shape)} vs {expected[k][0]})")
        if dtype:
            k = dtype[0]
            parts.append(f"{len(dtype)} tensors of the wrong type (e.g. {k}: {tensors[k].dtype})")
        raise FornetError(f"{what} {path} does not fit its own config: " + ", ".join(parts))


def save_checkpoint(path: str | Path, model: FoRNet, info: dict | None = None, labels: dict | None = None) -> None:
    """Weights, config, ``info`` and the label set's dict form (``labels``; checked by the
    data layer where it is made and where it is read)."""
    meta = {"format": CHECKPOINT_FORMAT, "config": model.config.to_dict(), "info": info or {}}
    _save(path, model.state_dict(), meta | ({"labels": labels} if labels is not None else {}))


def config_differences(expected: FoRNetConfig, found: FoRNetConfig) -> list[str]:
    """Architecture fields that differ (runtime-only fields such as topk_mode are skipped)."""
    a, b = expected.to_dict(), found.to_dict()
    return [
        f"{k}: checkpoint has {b[k]!r}, expected {a[k]!r}"
        for k in a
        if a[k] != b[k] and k not in FoRNetConfig.RUNTIME_FIELDS
    ]


def load_checkpoint(
    path: str | Path, expected: FoRNetConfig | None = None, *, sha256: str | None = None, **runtime: Any
) -> tuple[FoRNet, dict]:
    """Rebuild the model from a checkpoint; returns (model in eval mode, info).

    ``expected``: a config the caller needs; any architectural difference is an error that
    names the differing fields. ``sha256``: the hash the file must have (a bundle's
    manifest entry), checked on the bytes that are loaded. ``runtime``: runtime fields to
    override (``topk_mode``, ``topk_search_steps``).
    """
    data = read_bytes(path, "checkpoint", MAX_FILE_BYTES, sha256)
    return load_checkpoint_bytes(data, path, expected, **runtime)


def load_checkpoint_bytes(data: bytes, path: str | Path, expected: FoRNetConfig | None = None,
                          **runtime: Any) -> tuple[FoRNet, dict]:
    """:func:`load_checkpoint` of a file's bytes (``path`` names it in messages).

    Untrusted input: the config is range-checked and the tensors are compared with the
    shapes it implies (computed without allocating) before the model is built.
    """
    meta = _metadata(data, path, CHECKPOINT_FORMAT, "checkpoint")
    config = _config(meta, path, "checkpoint")
    if expected is not None:
        diffs = config_differences(expected, config)
        if diffs:
            raise FornetError(f"checkpoint {path} does not match the requested architecture: " + "; ".join(diffs))
    if runtime:
        config = config.replace(**runtime)
    tensors = _tensors(data, path, "checkpoint")
    _check_tensors(state_spec(config), tensors, path, "checkpoint")
    model = build_model(config)
    model.load_state_dict(tensors)
    model.eval()
    info = meta.get("info", {})
    return model, info if isinstance(info, dict) else {}


def checkpoint_labels(data: bytes, path: str | Path) -> Any:
    """The stored label set (its dict form, unchecked: the data layer checks it), or None
    for a checkpoint saved without one."""
    return _metadata(data, path, CHECKPOINT_FORMAT, "checkpoint").get("labels")


def read_checkpoint_header(path: str | Path) -> tuple[FoRNetConfig, Any]:
    """The config and stored label set (dict form, unchecked; None without one) of a
    checkpoint file, read once."""
    data = read_bytes(path, "checkpoint", MAX_FILE_BYTES)
    meta = _metadata(data, path, CHECKPOINT_FORMAT, "checkpoint")
    return _config(meta, path, "checkpoint"), meta.get("labels")


def read_checkpoint_config(path: str | Path) -> FoRNetConfig:
    return read_checkpoint_header(path)[0]


# Training state ------------------------------------------------------------------------

def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, buffers in state_dict["state"].items():
        for name, value in buffers.items():
            if torch.is_tensor(value):
                tensors[f"{OPTIMIZER_PREFIX}{index}/{name}"] = value
            else:
                scalars[f"{index}/{name}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key[len(OPTIMIZER_PREFIX):].split("/", 1)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_train_state(
    path: str | Path, model: FoRNet, optimizer: torch.optim.Optimizer, info: dict
) -> None:
    """Everything ``--resume`` needs: weights, optimizer buffers, iteration and settings."""
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()} | opt_tensors
    _save(path, tensors, {"format": TRAIN_STATE_FORMAT, "config": model.config.to_dict(), "optimizer": opt_meta, "info": info})


def load_train_state(path: str | Path, model: FoRNet, optimizer: torch.optim.Optimizer) -> dict:
    """Restore weights and optimizer buffers in place; returns the saved info.

    Checked before anything is restored: the architecture, every model tensor's shape and
    type, and that every optimizer buffer belongs to a parameter and has its shape.
    """
    data = read_bytes(path, "training state", MAX_FILE_BYTES)
    meta = _metadata(data, path, TRAIN_STATE_FORMAT, "training state")
    diffs = config_differences(model.config, _config(meta, path, "training state"))
    if diffs:
        raise FornetError(f"training state {path} is for another architecture: " + "; ".join(diffs))
    tensors = _tensors(data, path, "training state")
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    spec = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    _check_tensors(spec, model_state, path, "training state")
    opt = {k: v for k, v in tensors.items() if k.startswith(OPTIMIZER_PREFIX)}
    try:
        state = _unflatten_optimizer(opt, meta["optimizer"])
        _check_optimizer_state(state, optimizer)
        info = meta["info"]
        if not isinstance(info, dict) or isinstance(info.get("iteration"), bool) \
                or not isinstance(info.get("iteration"), int) or info["iteration"] < 0:
            raise ValueError("no valid iteration")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FornetError(f"training state {path} does not fit this model and optimizer ({exc})") from None
    model.load_state_dict(model_state)
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError) as exc:
        raise FornetError(f"training state {path} does not fit this optimizer ({exc})") from None
    return info


def _check_optimizer_state(state: dict, optimizer: torch.optim.Optimizer) -> None:
    """Every buffer of the saved optimizer state belongs to a parameter and has its shape
    (``step`` counters are scalars); raises ValueError otherwise."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, buffers in state["state"].items():
        if not 0 <= index < len(params):
            raise ValueError(f"optimizer state for parameter {index}, the model has {len(params)}")
        for name, value in buffers.items():
            want = () if name == "step" else tuple(params[index].shape)
            if torch.is_tensor(value) and tuple(value.shape) != want:
                raise ValueError(f"optimizer buffer {index}/{name} has shape {tuple(value.shape)}, not {want}")
