"""Checkpoints: safetensors weights + the FoR-Net config as JSON metadata, no pickle.

One ``.safetensors`` file holds everything needed to rebuild the model: tensors are the
``state_dict``, the header metadata holds ``format``, ``config`` (JSON) and free-form
``info`` (JSON: iteration, validation mIoU, ...). Training state for ``--resume``
(optimizer buffers, iteration) goes into a second file of the same kind, so a shipped
checkpoint stays small. Writes are atomic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import FornetError
from ..io import atomic_path
from .fornet import FoRNet, FoRNetConfig, build_model

CHECKPOINT_FORMAT = "fornet-deploy-checkpoint"
TRAIN_STATE_FORMAT = "fornet-deploy-train-state"
OPTIMIZER_PREFIX = "optimizer/"


def _save(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})


def _load(path: str | Path, expected_format: str, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FornetError(f"{what} {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise FornetError(f"{what} {path} is corrupt or not a safetensors file ({exc})") from None
    try:
        meta = {k: json.loads(v) for k, v in raw_meta.items()}
    except json.JSONDecodeError:
        raise FornetError(f"{what} {path} has unreadable metadata") from None
    if meta.get("format") != expected_format:
        raise FornetError(
            f"{path} is not a fornet-deploy {what} (format {meta.get('format')!r}, expected {expected_format!r})"
        )
    return tensors, meta


def save_checkpoint(path: str | Path, model: FoRNet, info: dict | None = None) -> None:
    _save(path, model.state_dict(), {"format": CHECKPOINT_FORMAT, "config": model.config.to_dict(), "info": info or {}})


def config_differences(expected: FoRNetConfig, found: FoRNetConfig) -> list[str]:
    """Architecture fields that differ (runtime-only fields such as topk_mode are skipped)."""
    a, b = expected.to_dict(), found.to_dict()
    return [
        f"{k}: checkpoint has {b[k]!r}, expected {a[k]!r}"
        for k in a
        if a[k] != b[k] and k not in FoRNetConfig.RUNTIME_FIELDS
    ]


def load_checkpoint(
    path: str | Path, expected: FoRNetConfig | None = None, **runtime: Any
) -> tuple[FoRNet, dict]:
    """Rebuild the model from a checkpoint; returns (model in eval mode, info).

    ``expected``: a config the caller needs; any architectural difference is an error that
    names the differing fields. ``runtime``: runtime fields to override (``topk_mode``,
    ``bisection_steps``).
    """
    tensors, meta = _load(path, CHECKPOINT_FORMAT, "checkpoint")
    try:
        config = FoRNetConfig.from_dict(meta["config"])
    except (KeyError, TypeError) as exc:
        raise FornetError(f"checkpoint {path} has no valid FoR-Net config ({exc})") from None
    if expected is not None:
        diffs = config_differences(expected, config)
        if diffs:
            raise FornetError(f"checkpoint {path} does not match the requested architecture: " + "; ".join(diffs))
    if runtime:
        config = config.replace(**runtime)
    model = build_model(config)
    state = model.state_dict()
    missing = sorted(set(state) - set(tensors))
    unexpected = sorted(set(tensors) - set(state))
    wrong = sorted(k for k in set(state) & set(tensors) if state[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} tensors of the wrong shape (e.g. {k}: {tuple(tensors[k].shape)} vs {tuple(state[k].shape)})")
        raise FornetError(f"checkpoint {path} does not fit its own config: " + ", ".join(parts))
    model.load_state_dict(tensors)
    model.eval()
    return model, meta.get("info", {})


def read_checkpoint_config(path: str | Path) -> FoRNetConfig:
    _, meta = _load(path, CHECKPOINT_FORMAT, "checkpoint")
    return FoRNetConfig.from_dict(meta["config"])


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
    """Restore weights and optimizer buffers in place; returns the saved info."""
    tensors, meta = _load(path, TRAIN_STATE_FORMAT, "training state")
    diffs = config_differences(model.config, FoRNetConfig.from_dict(meta["config"]))
    if diffs:
        raise FornetError(f"training state {path} is for another architecture: " + "; ".join(diffs))
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    model.load_state_dict(model_state)
    opt = {k: v for k, v in tensors.items() if k.startswith(OPTIMIZER_PREFIX)}
    try:
        optimizer.load_state_dict(_unflatten_optimizer(opt, meta["optimizer"]))
    except (ValueError, KeyError) as exc:
        raise FornetError(f"training state {path} does not fit this optimizer ({exc})") from None
    return meta["info"]
