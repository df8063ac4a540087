"""Training: single process or ``torchrun`` DDP with the same command, AMP on CUDA, exact resume.

Determinism: the images of iteration ``i`` and their augmentation depend only on
``(seed, i)`` (an epoch-wise permutation seeded by the epoch, an augmentation generator
seeded by ``(seed, i, slot)``), and the learning rate only on ``i``. So training ``N``
iterations in one go, or stopping at ``N/2`` and resuming from the saved state, gives the
same weights on the CPU.

Run folder (``--out``): ``last.safetensors`` (weights), ``best.safetensors`` (best
validation mIoU), ``last.state.safetensors`` (resume state), ``log.jsonl`` (one line per
validation), ``train_config.json``.

Interruptions. Ctrl-C and SIGTERM (what schedulers send) stop training at the next safe
point: a step in progress is finished, a validation in progress is abandoned (it changes
nothing), then the state is saved and the command exits with code 130; a second signal
stops at once without saving (the last saved state stays valid). Every file is written
atomically, and the resume state is the one record of the run: weights, optimizer, the
iteration, the validation history and which iteration ``best.safetensors`` holds, in
one file. ``best.safetensors`` is written before the state that names it and
``log.jsonl`` is rewritten from the state after it, so a ``kill -9`` at any moment leaves
a state that ``--resume`` continues from exactly (re-validating, and re-writing the same
best checkpoint, where the kill came in between). ``--resume`` from a state saved during
a validation runs that validation first. ``train`` without ``--resume`` refuses a folder
that already holds a run, and checks every label of the dataset before it writes
anything.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .contract import IMPORTANCE, LOGITS, MAX_SIDE, check_choice
from .data.formats import FORMAT_NAMES, Dataset, TrainingSet, open_dataset
from .data.labels import IGNORE_INDEX, label_set_for
from .data.transforms import Augmentation, Preprocessing
from .errors import FornetError, Interrupted, OptionError
from .evaluation.evaluate import evaluate_runner
from .evaluation.examples import dataset_examples
from .evaluation.metrics import boundary_band
from .interrupts import StopSignals, stop_signals
from .io import atomic_write_bytes, atomic_write_json, read_bytes
from .model.checkpoint import (
    MAX_FILE_BYTES,
    checkpoint_labels,
    load_checkpoint_bytes,
    load_train_state,
    save_checkpoint,
    save_train_state,
)
from .model.fornet import FoRNet, FoRNetConfig, build_model
from .runtimes.base import network_size
from .runtimes.torch_runner import TorchRunner, torch_device

LAST, BEST, STATE, LOG = "last.safetensors", "best.safetensors", "last.state.safetensors", "log.jsonl"
CONFIG = "train_config.json"
RUN_FILES = (STATE, LAST, BEST, LOG)  # what makes a folder hold a run (a config alone does not)


@dataclass
class TrainConfig:
    data: str
    out: str
    # The model's class count is the dataset's (its label set travels into the checkpoints).
    model: FoRNetConfig = field(default_factory=FoRNetConfig)
    format: str | None = None  # dataset layout (data/formats.py); None = detected
    train_split: str = "train"  # "train+val" trains on both (CamVid's protocol, with val_split "test")
    val_split: str = "val"
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
    # A checkpoint whose weights start the run (fine-tuning, or a second schedule after the
    # first): its architecture must be the requested one and its classes the dataset's;
    # the optimizer and the schedule start afresh (--resume continues a run instead).
    init: str | None = None
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    amp: bool = True  # used on CUDA only
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

    def validate(self) -> None:
        """Every option in its range, one :class:`OptionError` line (the model's fields are
        checked by :class:`FoRNetConfig` itself)."""
        counts = {"iterations": 1, "batch_size": 1, "val_interval": 1, "warmup": 0, "ohem_min_kept": 1,
                  "hard_region_width": 0, "seed": 0}
        for name, least in counts.items():
            _check_number(name, getattr(self, name), least, integer=True)
        for name in ("val_images", "threads"):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name), 1, integer=True)
        for name in ("crop_height", "crop_width"):
            _check_number(name, getattr(self, name), 1, MAX_SIDE, integer=True)
        for name, least, most in (("lr", 0.0, None), ("weight_decay", 0.0, None), ("momentum", 0.0, 1.0),
                                  ("poly_power", 0.0, None), ("selector_loss_weight", 0.0, None),
                                  ("ohem_threshold", 0.0, 1.0), ("scale_min", 0.0, None), ("scale_max", 0.0, None)):
            _check_number(name, getattr(self, name), least, most)
        if self.lr == 0:
            raise OptionError("--lr must be above 0")
        if self.scale_min == 0 or self.scale_min > self.scale_max:
            raise OptionError(f"need 0 < scale_min <= scale_max, got {self.scale_min} and {self.scale_max}")
        check_choice(self.optimizer, ("sgd", "adamw"), "optimizer")
        if self.format is not None:
            check_choice(self.format, FORMAT_NAMES, "dataset format")
        for name in ("train_split", "val_split"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or any(not p.strip() or "/" in p or p.strip() in (".", "..")
                                                               for p in value.split("+")):
                raise OptionError(f"--{name.replace('_', '-')} must name splits such as 'train' or 'train+val', "
                                  f"got {value!r}")
        check_choice(self.loss, ("ce", "ohem"), "loss")
        if self.init is not None and (not isinstance(self.init, str) or not self.init):
            raise OptionError(f"--init must name a checkpoint file, got {self.init!r}")
        if not isinstance(self.model, FoRNetConfig):
            raise OptionError(f"model must be a FoRNetConfig, got {type(self.model).__name__}")


# Fields whose command-line option is spelled otherwise (one spelling per concept: --batch).
OPTION_NAMES = {"batch_size": "--batch"}


def _check_number(name: str, value, least: float, most: float | None = None, integer: bool = False) -> None:
    option = OPTION_NAMES.get(name, "--" + name.replace("_", "-"))
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value < least \
            or (most is not None and value > most):
        bound = f"from {least} to {most}" if most is not None else f">= {least}"
        raise OptionError(f"{option} must be {'an integer' if integer else 'a finite number'} {bound}, got {value!r}")


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

    The edges are the evaluation's (:func:`~fornet_deploy.evaluation.metrics.boundary_band`:
    a valid pixel with a differently labelled valid 8-neighbour), widened by ``width``
    pixels (Chebyshev distance), then max-pooled to the selector's scale; so the selector
    learns exactly the band the boundary IoU is measured on.
    """
    bands = [boundary_band(image, width + 1, ignore_index) for image in labels.cpu().numpy()]
    band = torch.from_numpy(np.stack(bands)).to(labels.device, torch.float32).unsqueeze(1)
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


def validate(model: FoRNet, dataset: Dataset, split: str, device: torch.device, limit: int | None = None) -> dict:
    """Validation metrics of the model being trained: the evaluation loop of
    ``fornet-deploy eval`` on a PyTorch runner over the model itself (full images, batch 1,
    fed at the size ``eval`` feeds them)."""
    pre = Preprocessing()
    with TorchRunner(model, topk=model.config.topk_mode, device=str(device)) as runner:
        sized = partial(network_size, runner.input_spec(), pre)
        examples = dataset_examples(dataset, split, pre, limit, network_size=sized)
        return evaluate_runner(runner, examples, dataset.labels)


StepCallback = Callable[[int, int, dict], None]


@dataclass
class _Run:
    """Everything one training process holds: set up by :func:`_setup`, advanced by
    :func:`_step`, checked by :func:`_validate_and_save`."""

    cfg: TrainConfig
    out: Path
    rank: int
    world: int
    device: torch.device
    model: FoRNet
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    use_amp: bool
    train_set: TrainingSet
    start: int
    history: list = field(default_factory=list)  # validation records: the lines of log.jsonl
    best: dict | None = None  # {"iteration", "miou"} of what best.safetensors holds
    last_loss: float | None = None  # of the last step done (logged with a validation resumed later)
    saved: int | None = None  # iteration of the state on disk written by this process

    @property
    def labels(self) -> dict:
        """The dataset's label set as checkpoints store it."""
        return self.train_set.dataset.labels.to_dict()

    def save_state(self, iteration: int) -> None:
        """Commit the run at ``iteration`` (one atomic file), then the files derived from it."""
        if self.rank == 0:
            info = {"iteration": iteration, "train_config": self.cfg.to_dict(), "history": self.history,
                    "best": self.best, "last_loss": self.last_loss}
            save_train_state(self.out / STATE, self.model, self.optimizer, info)
            save_checkpoint(self.out / LAST, self.model, {"iteration": iteration}, self.labels)
            atomic_write_bytes(self.out / LOG, "".join(json.dumps(r) + "\n" for r in self.history).encode())
        self.saved = iteration


def _initial_model(cfg: TrainConfig, dataset: Dataset) -> FoRNet:
    """The model of ``--init``: the checkpoint's weights, refused (one line) when its
    architecture is not the requested one or it predicts other classes than the dataset's."""
    data = read_bytes(cfg.init, "--init checkpoint", MAX_FILE_BYTES)
    model, _ = load_checkpoint_bytes(data, cfg.init, cfg.model)
    classes = label_set_for(cfg.model.num_classes, checkpoint_labels(data, cfg.init), f"--init {cfg.init}").classes
    if classes != dataset.labels.classes:
        raise FornetError(f"--init {cfg.init} predicts the classes {', '.join(classes)}; the data's are "
                          f"{', '.join(dataset.labels.classes)}")
    return model.train()


def _validation_due(cfg: TrainConfig, done: int) -> bool:
    return done % cfg.val_interval == 0 or done == cfg.iterations


def _setup(cfg: TrainConfig, resume: bool) -> _Run:
    """Devices, process group, datasets (checked), model, optimizer and (with ``resume``)
    the saved state. Nothing is written before the dataset and the folder are checked."""
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
    if not resume and out.is_dir():
        found = [name for name in RUN_FILES if (out / name).exists()]
        if found:
            raise FornetError(f"--out {out} already holds a training run ({', '.join(found)}); "
                              "continue it with --resume, or choose another --out")

    augmentation = Augmentation(
        crop_height=cfg.crop_height, crop_width=cfg.crop_width, scale_range=(cfg.scale_min, cfg.scale_max)
    )
    dataset = open_dataset(cfg.data, cfg.format)
    if dataset.labels is None:
        raise FornetError(f"{cfg.data} holds images without labels ({dataset.format.layout}); training needs "
                          "a labelled dataset")
    train_set = TrainingSet(dataset, cfg.train_split, augmentation=augmentation)
    # the val split must exist and every label must be good before anything is written
    dataset.check(train_set.samples + dataset.samples(cfg.val_split))
    # the head predicts the dataset's classes; the checkpoints carry its label set
    cfg = replace(cfg, model=cfg.model.replace(num_classes=dataset.labels.num_classes))

    torch.manual_seed(cfg.seed)
    # on --resume the state holds the weights: --init served the run's start only
    model = (build_model(cfg.model) if cfg.init is None or resume else _initial_model(cfg, dataset)).to(device)
    optimizer = make_optimizer(model, cfg)
    start, history, best, last_loss = 0, [], None, None
    if resume:
        state_path = out / STATE
        if not state_path.is_file():
            raise FornetError(f"--resume: no training state {state_path} (train without --resume first)")
        info = load_train_state(state_path, model, optimizer)
        if info.get("train_config", {}).get("iterations") not in (None, cfg.iterations):
            raise FornetError("--resume: --iterations differs from the interrupted run; the schedule would change")
        start = int(info["iteration"])
        if "history" in info:
            history, best, last_loss = info["history"], info["best"], info["last_loss"]
        else:  # a state saved before states carried the run's bookkeeping
            history = _read_log(out / LOG, start)
            scored = [r for r in history if r.get("miou") is not None]
            top = max(scored, key=lambda r: r["miou"], default=None)
            best = {"iteration": top["iteration"], "miou": top["miou"]} if top else None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / CONFIG, cfg.to_dict())

    net: torch.nn.Module = model
    if world > 1:
        if device.type == "cuda":
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    use_amp = cfg.amp and device.type == "cuda"
    return _Run(cfg, out, rank, world, device, model, net, optimizer, torch.amp.GradScaler("cuda", enabled=use_amp),
                use_amp, train_set, start, history, best, last_loss, saved=start if resume else None)


def _step(run: _Run, iteration: int) -> float:
    """One optimizer step on iteration ``iteration``'s batch; returns the loss."""
    cfg, model = run.cfg, run.model
    model.train()
    plan = batch_plan(len(run.train_set), cfg.batch_size, cfg.seed, iteration, run.rank, run.world)
    items = [run.train_set[p] for p in plan]
    images = torch.stack([x for x, _ in items]).to(run.device)
    labels = torch.stack([y for _, y in items]).to(run.device)
    for group in run.optimizer.param_groups:
        group["lr"] = poly_lr(cfg, iteration)
    with torch.autocast(run.device.type, dtype=torch.float16, enabled=run.use_amp):
        outputs = run.net(images, return_all=True)
        loss = segmentation_loss(outputs[LOGITS].float(), labels, cfg)
        if cfg.selector_loss_weight > 0 and outputs[IMPORTANCE] is not None:
            target = hard_region_target(labels, model.output_stride // 4, cfg.hard_region_width)
            target = F.interpolate(target, size=outputs[IMPORTANCE].shape[-2:], mode="nearest")
            # autocast refuses BCE on probabilities (found on the first real GPU); FP32 outside
            # it computes exactly what the CPU path computes
            with torch.autocast(run.device.type, enabled=False):
                selector_loss = F.binary_cross_entropy(outputs[IMPORTANCE].float(), target)
            loss = loss + cfg.selector_loss_weight * selector_loss
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return float(loss.detach())


def _validate_and_save(run: _Run, done: int, started: float, stop: StopSignals) -> bool:
    """Save the state, validate (rank 0), keep the best checkpoint, commit; False when a
    signal abandoned the validation (the state at ``done`` is saved: --resume validates it).

    Order matters for a kill at any moment: the state before the validation (so the steps
    are kept), ``best.safetensors`` before the state that records it, the log after.
    """
    if run.saved != done:
        run.save_state(done)
    if run.rank == 0:
        if stop.requested:  # came during that save
            return False
        try:
            with stop.interruptible():  # validation changes nothing: abandon it at once
                result = validate(run.model, run.train_set.dataset, run.cfg.val_split, run.device, run.cfg.val_images)
        except KeyboardInterrupt:
            return False
        record = {"iteration": done, "loss": run.last_loss, "seconds": time.perf_counter() - started, **result}
        miou = result["miou"] or 0
        if run.best is None or miou > run.best["miou"]:
            save_checkpoint(run.out / BEST, run.model, {"iteration": done, "val_miou": miou}, run.labels)
            run.best = {"iteration": done, "miou": miou}
        run.history.append(record)
        run.save_state(done)
    if run.world > 1:
        torch.distributed.barrier()
    return True


def train(cfg: TrainConfig, resume: bool = False, on_step: StepCallback | None = None, stop_after: int | None = None) -> dict:
    """Train FoR-Net; returns a summary. ``stop_after`` ends this run early at that
    iteration (as an interruption would), saving the resume state.

    Ctrl-C / SIGTERM: the state is saved at the next safe point and :class:`Interrupted`
    (exit code 130) names the iteration ``--resume`` continues from.
    """
    cfg.validate()
    with stop_signals() as stop:
        run = _setup(cfg, resume)  # interruptible at once: it writes only train_config.json, atomically
        started = time.perf_counter()
        with stop.deferred():
            try:
                done = _loop(run, stop, on_step, stop_after, started)
            except KeyboardInterrupt:  # a second signal: stop without saving, mid-step perhaps
                saved = f"iteration {run.saved}" if run.saved is not None else "nothing yet (no state saved)"
                raise Interrupted(f"stopped at once by a second signal; the saved state holds {saved}; "
                                  "continue with --resume") from None
            if run.saved != done and (stop.requested or done < cfg.iterations):
                run.save_state(done)
            if stop.requested:
                raise Interrupted(f"{stop.name} at iteration {done}: state saved; continue with --resume")
    if run.world > 1:
        torch.distributed.destroy_process_group()
    return {
        "rank": run.rank,
        "out": str(run.out),
        "iterations": done,
        "seconds": time.perf_counter() - started,
        "last_loss": run.last_loss,
        "best_miou": run.best["miou"] if run.best else None,
        "history": run.history,
    }


def _loop(run: _Run, stop: StopSignals, on_step: StepCallback | None, stop_after: int | None,
          started: float) -> int:
    """Steps from ``run.start`` until the end, ``stop_after`` or a stop request; returns
    the iterations done."""
    cfg = run.cfg
    end = cfg.iterations if stop_after is None else min(stop_after, cfg.iterations)
    done = run.start
    if done and _validation_due(cfg, done) and all(r["iteration"] != done for r in run.history):
        # resumed from a state saved before (or during) its validation
        if not _validate_and_save(run, done, started, stop):
            return done
    while done < end and not stop.requested:
        run.last_loss = _step(run, done)
        done += 1
        if on_step and run.rank == 0:
            on_step(done, cfg.iterations, {"loss": run.last_loss, "lr": poly_lr(cfg, done - 1)})
        if not stop.requested and _validation_due(cfg, done):
            _validate_and_save(run, done, started, stop)
    return done


def _read_log(path: Path, iteration: int) -> list[dict]:
    """The records of ``log.jsonl`` up to ``iteration``, for a state saved before the state
    carried its history. Lines that do not parse (a torn last line) are dropped."""
    records = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("iteration"), int) and record["iteration"] <= iteration:
                records.append(record)
    return records
