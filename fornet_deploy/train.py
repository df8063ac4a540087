"""Training: single process or ``torchrun`` DDP with the same command, AMP on CUDA, exact resume.

Determinism: the images of iteration ``i`` and their augmentation depend only on
``(seed, i)`` (an epoch-wise permutation seeded by the epoch, an augmentation generator
seeded by ``(seed, i, slot)``), and the learning rate only on ``i``. So training ``N``
iterations in one go, or stopping at ``N/2`` and resuming from the saved state, gives the
same weights on the CPU.

Run folder (``--out``): ``last.safetensors`` (weights), ``best.safetensors`` (best
validation mIoU), ``last.state.safetensors`` (resume state), ``log.jsonl`` (one line per
validation), ``train_config.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .bundle import atomic_write_json
from .data.cityscapes import IGNORE_INDEX, CityscapesDataset
from .data.transforms import Augmentation
from .errors import FornetError
from .evaluation.metrics import SegmentationMetrics
from .model.checkpoint import load_train_state, save_checkpoint, save_train_state
from .model.fornet import FoRNet, FoRNetConfig, build_model
from .runtimes.torch_runner import torch_device

LAST, BEST, STATE, LOG = "last.safetensors", "best.safetensors", "last.state.safetensors", "log.jsonl"


@dataclass
class TrainConfig:
    data: str
    out: str
    model: FoRNetConfig = field(default_factory=FoRNetConfig)
    iterations: int = 2000
    batch_size: int = 8  # per process
    crop_height: int = 256
    crop_width: int = 256
    scale_min: float = 0.5
    scale_max: float = 1.5
    optimizer: str = "adamw"  # "sgd" | "adamw"
    lr: float = 4e-3
    weight_decay: float = 1e-2
    momentum: float = 0.9
    warmup: int = 50
    poly_power: float = 0.9
    loss: str = "ohem"  # "ce" | "ohem"
    ohem_threshold: float = 0.7
    ohem_min_kept: int = 10_000
    selector_loss_weight: float = 0.4  # auxiliary loss on the importance map (0 = off)
    hard_region_width: int = 2  # band around label edges that the selector learns to find
    val_interval: int = 500
    val_images: int | None = None  # None = whole val split
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    amp: bool = True  # used on CUDA only
    num_workers: int = 0
    threads: int | None = None  # torch CPU threads (None = torch default)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        data["model"] = FoRNetConfig.from_dict(data.get("model", {}))
        return cls(**data)


def poly_lr(cfg: TrainConfig, iteration: int) -> float:
    """Linear warm-up, then poly decay to 0 at ``cfg.iterations``."""
    if iteration < cfg.warmup:
        return cfg.lr * (iteration + 1) / cfg.warmup
    return cfg.lr * (1 - iteration / cfg.iterations) ** cfg.poly_power


def batch_plan(num_samples: int, batch_size: int, seed: int, iteration: int, rank: int = 0, world: int = 1) -> list[tuple[int, int]]:
    """(sample index, augmentation seed) for one process's batch at one iteration.

    Samples are drawn without replacement from a per-epoch permutation shared by all
    processes; each process takes its own slice of the global batch.
    """
    global_batch = batch_size * world
    plan = []
    for slot in range(rank * batch_size, (rank + 1) * batch_size):
        position = iteration * global_batch + slot
        epoch, offset = divmod(position, num_samples)
        permutation = np.random.default_rng([seed, epoch]).permutation(num_samples)
        aug_seed = int(np.random.default_rng([seed, iteration, slot]).integers(2**63))
        plan.append((int(permutation[offset]), aug_seed))
    return plan


def hard_region_target(labels: torch.Tensor, stride: int, width: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Selector target (N, 1, H/stride, W/stride): 1 where a cell holds a label edge.

    An edge pixel has a 4-neighbour of another valid class; the band is widened by
    ``width`` pixels before pooling to the selector's scale.
    """
    lab = labels.unsqueeze(1).float()
    valid = labels.unsqueeze(1) != ignore_index
    edge = torch.zeros_like(lab, dtype=torch.bool)
    dx = (lab[..., :, 1:] != lab[..., :, :-1]) & valid[..., :, 1:] & valid[..., :, :-1]
    dy = (lab[..., 1:, :] != lab[..., :-1, :]) & valid[..., 1:, :] & valid[..., :-1, :]
    edge[..., :, 1:] |= dx
    edge[..., :, :-1] |= dx
    edge[..., 1:, :] |= dy
    edge[..., :-1, :] |= dy
    band = F.max_pool2d(edge.float(), 2 * width + 1, stride=1, padding=width)
    return F.max_pool2d(band, stride)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    pixel_loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none").flatten()
    valid = labels.flatten() != IGNORE_INDEX
    pixel_loss = pixel_loss[valid]
    if pixel_loss.numel() == 0:
        return logits.sum() * 0.0
    if cfg.loss == "ce":
        return pixel_loss.mean()
    # OHEM: pixels whose true-class probability is below the threshold, at least min_kept.
    hard = pixel_loss > -math.log(cfg.ohem_threshold)
    min_kept = min(cfg.ohem_min_kept, pixel_loss.numel())
    if int(hard.sum()) < min_kept:
        return pixel_loss.topk(min_kept).values.mean()
    return pixel_loss[hard].mean()


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm and biases (standard for light segmentation nets).
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise FornetError(f"unknown optimizer {cfg.optimizer!r} (use sgd or adamw)")


@torch.no_grad()
def evaluate_model(model: FoRNet, dataset: CityscapesDataset, device: torch.device, limit: int | None = None) -> dict:
    """Validation metrics of the PyTorch model on a dataset (full images, batch 1)."""
    model.eval()
    metrics = SegmentationMetrics(num_classes=model.config.num_classes)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(count):
        image, labels = dataset[i]
        out = model.forward_all(image.unsqueeze(0).to(device))
        pred = out["logits"].argmax(1)[0].cpu().numpy()
        mask = out["topk_mask"]
        if mask is not None:
            mask = F.interpolate(mask, size=pred.shape, mode="nearest")[0, 0].cpu().numpy() > 0.5
        metrics.update(pred, labels.numpy(), topk_mask=mask)
    return metrics.result()


StepCallback = Callable[[int, int, dict], None]


def train(cfg: TrainConfig, resume: bool = False, on_step: StepCallback | None = None, stop_after: int | None = None) -> dict:
    """Train FoR-Net; returns a summary. ``stop_after`` ends this run early at that
    iteration (as an interruption would), saving the resume state."""
    rank, world, local_rank = _distributed()
    device = torch_device(cfg.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise FornetError(f"--out {out} exists and is not a folder")

    augmentation = Augmentation(
        crop_height=cfg.crop_height, crop_width=cfg.crop_width, scale_range=(cfg.scale_min, cfg.scale_max)
    )
    train_set = CityscapesDataset(cfg.data, "train", augmentation=augmentation)
    val_set = CityscapesDataset(cfg.data, "val")

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device)
    optimizer = make_optimizer(model, cfg)
    start = 0
    if resume:
        state_path = out / STATE
        if not state_path.is_file():
            raise FornetError(f"--resume: no training state {state_path} (train without --resume first)")
        info = load_train_state(state_path, model, optimizer)
        if info.get("train_config", {}).get("iterations") not in (None, cfg.iterations):
            raise FornetError("--resume: --iterations differs from the interrupted run; the schedule would change")
        start = int(info["iteration"])
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "train_config.json", cfg.to_dict())

    net: torch.nn.Module = model
    if world > 1:
        if device.type == "cuda":
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    def save_state(iteration: int) -> None:
        if rank == 0:
            info = {"iteration": iteration, "train_config": cfg.to_dict()}
            save_train_state(out / STATE, model, optimizer, info)
            save_checkpoint(out / LAST, model, {"iteration": iteration})

    best = _read_best(out / LOG)
    history = []
    last_loss = float("nan")
    t0 = time.perf_counter()
    iteration = start
    try:
        for iteration in range(start, cfg.iterations):
            if stop_after is not None and iteration >= stop_after:
                break
            model.train()
            plan = batch_plan(len(train_set), cfg.batch_size, cfg.seed, iteration, rank, world)
            items = [train_set[p] for p in plan]
            images = torch.stack([x for x, _ in items]).to(device)
            labels = torch.stack([y for _, y in items]).to(device)
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(cfg, iteration)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                outputs = net(images, return_all=True)
                loss = segmentation_loss(outputs["logits"].float(), labels, cfg)
                if cfg.selector_loss_weight > 0 and outputs["importance"] is not None:
                    target = hard_region_target(labels, model.output_stride // 4, cfg.hard_region_width)
                    target = F.interpolate(target, size=outputs["importance"].shape[-2:], mode="nearest")
                    selector_loss = F.binary_cross_entropy(outputs["importance"].float(), target)
                    loss = loss + cfg.selector_loss_weight * selector_loss
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            last_loss = float(loss.detach())
            done = iteration + 1
            if on_step and rank == 0:
                on_step(done, cfg.iterations, {"loss": last_loss, "lr": poly_lr(cfg, iteration)})
            if done % cfg.val_interval == 0 or done == cfg.iterations:
                save_state(done)
                if rank == 0:
                    result = evaluate_model(model, val_set, device, cfg.val_images)
                    record = {"iteration": done, "loss": last_loss, "seconds": time.perf_counter() - t0, **result}
                    history.append(record)
                    _append_jsonl(out / LOG, record)
                    if best is None or (result["miou"] or 0) > best:
                        best = result["miou"] or 0
                        save_checkpoint(out / BEST, model, {"iteration": done, "val_miou": best})
                if world > 1:
                    torch.distributed.barrier()
        else:
            iteration = cfg.iterations
    except KeyboardInterrupt:
        save_state(iteration)
        raise FornetError(f"interrupted at iteration {iteration}; continue with --resume") from None
    if stop_after is not None and iteration < cfg.iterations:
        save_state(iteration)
    if world > 1:
        torch.distributed.destroy_process_group()
    return {
        "rank": rank,
        "out": str(out),
        "iterations": iteration,
        "seconds": time.perf_counter() - t0,
        "last_loss": last_loss,
        "best_miou": best,
        "history": history,
    }


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _read_best(path: Path) -> float | None:
    if not path.is_file():
        return None
    values = [json.loads(line).get("miou") or 0 for line in path.read_text().splitlines() if line.strip()]
    return max(values) if values else None
