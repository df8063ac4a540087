"""``fornet-deploy predict``: segment images, folders and videos with any artefact of a bundle.

For every image ``NAME`` it writes, into the output folder:

- ``NAME_trainIds.png``: the prediction, uint8 train ids 0..18 at the image's size;
- ``NAME_labelIds.png`` (``label_ids``): the same as Cityscapes label ids (benchmark submission);
- ``NAME_color.png``: the train ids in the Cityscapes palette;
- ``NAME_overlay.png``: the image blended with that colour map;
- ``NAME_importance.png`` (``importance``): the 1/8-scale importance map, upsampled
  bilinearly, as a heat map over the image;
- ``NAME_topk.png`` (``mask``): the image dimmed outside the Top-K mask, selected regions
  tinted and outlined: what FoR-Net chose to focus on.

A video ``NAME`` gives ``NAME_overlay.mp4`` (plus ``NAME_importance.mp4`` / ``NAME_topk.mp4``),
at the source frame rate divided by ``video_every``. Per-frame label maps
(``NAME_frames/NAME_000123_trainIds.png`` and ``_labelIds.png``, numbered by source frame)
are written only with ``label_ids``: a minute of video is ~1800 PNG files, and on a GPU
their encoding would cost more than the inference.

``NAME`` is the file's stem; files found in a folder keep their path below the folder's
parent (``predict data/`` writes ``data/a/x_*`` and ``data/b/x_*``), so same-named files in
different folders do not collide. ``predictions.json`` lists every file written.

A run writes all or nothing: every input is decoded (images) or opened (videos) before
anything is written, outputs go to a hidden staging folder inside the output folder and
are moved into place only once the whole run has succeeded. A failed or interrupted run
leaves the output folder as it was, including files of an earlier run it would replace.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from .bundle import Bundle
from .data.cityscapes import IMAGE_EXTENSIONS, colorize, encode_png, read_image, train_ids_to_label_ids
from .data.transforms import Preprocessing, check_stride, preprocess
from .errors import FornetError
from .evaluation.evaluate import predicted_labels, upsampled_mask
from .runtimes.base import IMPORTANCE, LABELS, LOGITS, TOPK_MASK, InputSpec, Runner

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
_KINDS = {**dict.fromkeys(IMAGE_EXTENSIONS, "image"), **dict.fromkeys(VIDEO_EXTENSIONS, "video")}
REPORT_NAME = "predictions.json"
ALL_OUTPUTS_OPTION = "--outputs logits,labels,importance,topk_mask"
DEFAULT_FPS = 25.0  # for containers that do not state their frame rate
HEATMAP = cv2.COLORMAP_INFERNO
TOPK_COLOUR = (255, 200, 0)  # RGB; warm yellow stands out on street scenes
TOPK_DIM = 0.3  # brightness kept outside the Top-K mask


@dataclass(frozen=True)
class InputItem:
    path: Path
    kind: str  # "image" | "video"
    name: str  # output stem relative to the output folder, "/"-separated


@dataclass
class PredictConfig:
    runtime: str = "ort"
    precision: str = "fp32"
    device: str = "cpu"
    # Network input (H, W). None: the image's own size when it is a multiple of the network
    # stride, else the nearest multiple (or the artefact's size when its shape is fixed);
    # the prediction is always resized back to the image's size.
    shape: tuple[int, int] | None = None
    overlay_alpha: float = 0.5
    importance: bool = False
    mask: bool = False
    label_ids: bool = False
    video_every: int = 1  # process every n-th video frame

    def validate(self) -> None:
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise FornetError(f"overlay alpha must be in [0, 1], got {self.overlay_alpha}")
        if self.video_every < 1:
            raise FornetError(f"--video-every must be at least 1, got {self.video_every}")


# ---------------------------------------------------------------------------- inputs


def collect_inputs(paths: list[Path], exclude: Path | None = None) -> list[InputItem]:
    """Images and videos named by ``paths`` (files, or folders searched recursively).

    In folders, files of other types and hidden files/folders are skipped and files under
    ``exclude`` (the output folder, so a re-run does not segment its own pictures) are
    left out; a file named directly must be an image or a video.
    """
    excluded = Path(exclude).resolve() if exclude is not None else None
    items: list[InputItem] = []
    seen: set[Path] = set()
    for path in map(Path, paths):
        if path.is_dir():
            found = _folder_items(path, excluded)
            if not found:
                raise FornetError(f"folder {path} holds no images or videos")
        elif path.is_file():
            found = [InputItem(path, _kind(path), path.stem)]
        else:
            raise FornetError(f"input {path} does not exist")
        for item in found:
            resolved = item.path.resolve()
            if resolved not in seen:  # the same file named twice is segmented once
                seen.add(resolved)
                items.append(item)
    _check_names(items)
    return items


def _kind(path: Path) -> str:
    kind = _KINDS.get(path.suffix.lower())
    if kind is None:
        raise FornetError(
            f"input {path}: unknown file type {path.suffix or '(none)'} "
            f"(images: {' '.join(IMAGE_EXTENSIONS)}; videos: {' '.join(VIDEO_EXTENSIONS)})"
        )
    return kind


def _folder_items(folder: Path, excluded: Path | None) -> list[InputItem]:
    # "." has no name of its own; its resolved name keeps the outputs in a sub-folder too.
    prefix = folder.name or folder.resolve().name
    items = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if excluded is not None and path.resolve().is_relative_to(excluded):
            continue
        kind = _KINDS.get(path.suffix.lower())
        if kind is not None:
            name = "/".join(filter(None, (prefix, rel.with_suffix("").as_posix())))
            items.append(InputItem(path, kind, name))
    return items


def _check_names(items: list[InputItem]) -> None:
    owners: dict[str, Path] = {}
    for item in items:
        other = owners.setdefault(item.name, item.path)
        if other != item.path:
            raise FornetError(
                f"inputs {other} and {item.path} would both write {item.name}_*; "
                "rename one or put them in different folders"
            )


@dataclass
class _Source:
    """An input checked before the run: its size, the network size, video timing."""

    item: InputItem
    hw: tuple[int, int]
    net_hw: tuple[int, int]
    fps: float | None = None
    frames: int = 1  # frames to process (videos: an estimate from the container)


def _probe(item: InputItem) -> tuple[tuple[int, int], float | None, int]:
    """Size, frame rate and frame count of an input; raises when it cannot be read.

    Images are decoded fully (a header check does not catch truncated data); videos must
    open and yield a first frame.
    """
    if item.kind == "image":
        return read_image(item.path).shape[:2], None, 1
    with _open_video(item.path) as cap:
        ok, frame = cap.read()
        if not ok:
            raise FornetError(f"video {item.path} has no frames")
        fps = cap.get(cv2.CAP_PROP_FPS)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    return frame.shape[:2], fps if fps > 0 else None, max(count, 1)


@contextlib.contextmanager
def _open_video(path: Path) -> Iterator[cv2.VideoCapture]:
    # OpenCV logs a multi-line warning of its own for a file it cannot open; the error
    # below says it in one line.
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    finally:
        cv2.utils.logging.setLogLevel(level)
    try:
        if not cap.isOpened():
            raise FornetError(f"cannot open video {path}: not a video file, corrupt, or a codec OpenCV lacks")
        yield cap
    finally:
        cap.release()


def network_size(hw: tuple[int, int], cfg: PredictConfig, pre: Preprocessing, spec: InputSpec) -> tuple[int, int]:
    """The network input size for an image of size ``hw`` (see ``PredictConfig.shape``)."""
    if cfg.shape is not None:
        return cfg.shape
    if pre.resize == "fixed":
        return pre.target_size(hw)
    fixed_h, fixed_w = spec.shape[2:]
    if fixed_h is not None and fixed_w is not None:
        return fixed_h, fixed_w
    return tuple(max(spec.stride, math.floor(v / spec.stride + 0.5) * spec.stride) for v in hw)


def _check_network_input(source: _Source, spec: InputSpec) -> None:
    # A zero-copy stand-in for the batch: the spec checks dtype, rank and shape only.
    stand_in = np.broadcast_to(np.float32(0), (1, 3, *source.net_hw))
    try:
        spec.check(stand_in)
    except FornetError as exc:
        raise FornetError(f"{source.item.path}: {exc}") from None


# ---------------------------------------------------------------------------- pictures


def label_overlay(image: np.ndarray, train_ids: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB image blended with the palette picture of its train ids."""
    return cv2.addWeighted(image, 1.0 - alpha, colorize(train_ids), alpha, 0.0)


def importance_heatmap(image: np.ndarray, importance: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB image blended with a heat map of an importance map in [0, 1] (same size).

    The map is not stretched to its own min/max: colours mean the same importance in
    every picture and every video frame (a per-frame stretch would flicker).
    """
    levels = np.clip(importance * 255.0 + 0.5, 0, 255).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(levels, HEATMAP), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)


def topk_picture(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB image dimmed outside a boolean Top-K mask, the selected regions tinted and outlined.

    The mask comes nearest-upsampled from 1/8 scale, so its blocks are the regions the
    network selected; the outline keeps small selections visible on large images.
    """
    out = (image.astype(np.float32) * TOPK_DIM).astype(np.uint8)
    tinted = cv2.addWeighted(image, 0.75, np.full_like(image, TOPK_COLOUR), 0.25, 0.0)
    out[mask] = tinted[mask]
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(min(mask.shape) / 256))
    cv2.drawContours(out, contours, -1, TOPK_COLOUR, thickness)
    return out


# ---------------------------------------------------------------------------- inference


@dataclass
class _Prediction:
    train_ids: np.ndarray  # H x W uint8 at the image size
    importance: np.ndarray | None  # H x W float32, bilinear from 1/8 scale
    mask: np.ndarray | None  # H x W bool, nearest from 1/8 scale


def _infer(runner: Runner, pre: Preprocessing, image: np.ndarray, cfg: PredictConfig) -> _Prediction:
    """Run one RGB image; ``pre`` already resizes to the network size."""
    outputs = runner(preprocess(image, pre))
    _check_outputs(outputs, cfg, runner)
    hw = image.shape[:2]
    importance = None
    if cfg.importance:
        small = outputs[IMPORTANCE][0, 0].astype(np.float32)
        importance = cv2.resize(small, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    return _Prediction(predicted_labels(outputs, hw), importance, upsampled_mask(outputs, hw) if cfg.mask else None)


def _check_outputs(outputs: dict[str, np.ndarray], cfg: PredictConfig, runner: Runner) -> None:
    # Runs on every result but fails on the first one, before anything is written.
    asked = ((IMPORTANCE, cfg.importance), (TOPK_MASK, cfg.mask))
    missing = [name for name, wanted in asked if wanted and name not in outputs]
    if LOGITS not in outputs and LABELS not in outputs:
        missing.insert(0, LOGITS)
    if missing:
        raise FornetError(
            f"{runner.info().artifact} was exported without the {' and '.join(missing)} output; "
            f"re-export it with `fornet-deploy export ... {ALL_OUTPUTS_OPTION}`"
        )


def _pictures(image: np.ndarray, pred: _Prediction, cfg: PredictConfig) -> dict[str, np.ndarray]:
    """The RGB pictures of one prediction, by output suffix."""
    pictures = {"overlay": label_overlay(image, pred.train_ids, cfg.overlay_alpha)}
    if pred.importance is not None:
        pictures["importance"] = importance_heatmap(image, pred.importance, cfg.overlay_alpha)
    if pred.mask is not None:
        pictures["topk"] = topk_picture(image, pred.mask)
    return pictures


def _label_maps(pred: _Prediction, label_ids: bool) -> dict[str, np.ndarray]:
    maps = {"trainIds": pred.train_ids}
    if label_ids:
        maps["labelIds"] = train_ids_to_label_ids(pred.train_ids)
    return maps


# ---------------------------------------------------------------------------- writing


class _Staging:
    """Outputs are written into a hidden folder inside the output folder (same file system,
    so the final moves are atomic renames) and moved into place by :meth:`commit`.

    Leaving the ``with`` block on an exception removes the staged files and the folders
    this run created, so the output folder is left as it was.
    """

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.files: list[str] = []  # relative "/"-separated paths, in writing order

    def __enter__(self) -> "_Staging":
        self._created = _missing_dirs(self.out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.root = Path(tempfile.mkdtemp(prefix=".predict-", dir=self.out_dir))
        except OSError as exc:
            self._remove_created()
            raise FornetError(f"cannot create output folder {self.out_dir}: {exc.strerror or exc}") from None
        return self

    def __exit__(self, exc_type, *_) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        if exc_type is not None:
            self._remove_created()

    def _remove_created(self) -> None:
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):  # not empty: it held files before this run
                folder.rmdir()

    def path(self, rel: str) -> Path:
        """A staged path for the output ``rel``, recorded as written."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        self.files.append(rel)
        return path

    def write_png(self, rel: str, image: np.ndarray) -> None:
        """Write an RGB or single-channel uint8 image."""
        self.write_bytes(rel, encode_png(image, rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        try:
            self.path(rel).write_bytes(data)
        except OSError as exc:
            raise FornetError(f"cannot write {self.out_dir / rel}: {exc.strerror or exc}") from None

    def video_writer(self, rel: str, fps: float, hw: tuple[int, int]) -> cv2.VideoWriter:
        fourcc = cv2.VideoWriter.fourcc(*"mp4v")
        writer = cv2.VideoWriter(str(self.path(rel)), cv2.CAP_FFMPEG, fourcc, fps, (hw[1], hw[0]))
        if not writer.isOpened():
            raise FornetError(f"OpenCV here cannot write mp4v video {self.out_dir / rel} (is it built with FFmpeg?)")
        return writer

    def commit(self) -> None:
        try:
            for rel in self.files:
                target = self.out_dir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.root / rel, target)
        except OSError as exc:
            raise FornetError(f"cannot move outputs into {self.out_dir}: {exc}") from None


def _missing_dirs(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def _run_image(source: _Source, runner: Runner, pre: Preprocessing, cfg: PredictConfig, staging: _Staging) -> list[str]:
    image = read_image(source.item.path)
    pred = _infer(runner, pre, image, cfg)
    written = []
    outputs = {**_label_maps(pred, cfg.label_ids), "color": colorize(pred.train_ids), **_pictures(image, pred, cfg)}
    for suffix, picture in outputs.items():
        rel = f"{source.item.name}_{suffix}.png"
        staging.write_png(rel, picture)
        written.append(rel)
    return written


def _run_video(source: _Source, runner: Runner, pre: Preprocessing, cfg: PredictConfig, staging: _Staging,
               tick: Callable[[], None]) -> tuple[list[str], int]:
    name = source.item.name
    stem = name.rsplit("/", 1)[-1]
    kinds = ["overlay"] + (["importance"] if cfg.importance else []) + (["topk"] if cfg.mask else [])
    fps = (source.fps or DEFAULT_FPS) / cfg.video_every  # keeps the playback speed
    written: list[str] = []
    processed = 0
    with contextlib.ExitStack() as stack:
        cap = stack.enter_context(_open_video(source.item.path))
        writers = {}
        for kind in kinds:
            rel = f"{name}_{kind}.mp4"
            writers[kind] = stack.enter_context(_released(staging.video_writer(rel, fps, source.hw)))
            written.append(rel)
        index = 0
        while cap.grab():  # grab() skips the colour conversion of frames not processed
            if index % cfg.video_every == 0:
                ok, frame = cap.retrieve()
                if not ok:
                    break
                image = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                pred = _infer(runner, pre, image, cfg)
                for kind, picture in _pictures(image, pred, cfg).items():
                    writers[kind].write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
                if cfg.label_ids:
                    for suffix, labels in _label_maps(pred, True).items():
                        rel = f"{name}_frames/{stem}_{index:06d}_{suffix}.png"
                        staging.write_png(rel, labels)
                        written.append(rel)
                processed += 1
                tick()
            index += 1
    return written, processed


@contextlib.contextmanager
def _released(writer: cv2.VideoWriter) -> Iterator[cv2.VideoWriter]:
    try:
        yield writer
    finally:
        writer.release()  # finalises the mp4 (writes its index)


# ---------------------------------------------------------------------------- entry point


def predict(bundle_dir: str | Path, inputs: list[Path], out_dir: str | Path, cfg: PredictConfig = PredictConfig(),
            progress: Callable[[int, int], None] | None = None) -> dict:
    """The library function behind ``fornet-deploy predict``; returns the summary that is
    also written to ``OUT_DIR/predictions.json``."""
    from .runtimes.formats import make_runner

    start = time.perf_counter()
    cfg.validate()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FornetError(f"output path {out_dir} exists and is not a folder")
    items = collect_inputs(inputs, exclude=out_dir)
    bundle = Bundle.open(bundle_dir, verify=False)  # make_runner checks the hash of the artefact it runs
    pre = Preprocessing.from_dict(bundle.manifest["preprocessing"])

    with make_runner(bundle, cfg.runtime, cfg.precision, cfg.device) as runner:
        spec = runner.input_spec()
        if cfg.shape is not None:
            check_stride(*cfg.shape, spec.stride)
        sources = []
        for item in items:
            hw, fps, frames = _probe(item)
            source = _Source(item, hw, network_size(hw, cfg, pre, spec), fps, frames)
            _check_network_input(source, spec)
            sources.append(source)
        load_seconds = time.perf_counter() - start

        total = sum(1 if s.item.kind == "image" else math.ceil(s.frames / cfg.video_every) for s in sources)
        done = 0
        inference_seconds = 0.0

        def tick() -> None:
            nonlocal done, inference_seconds
            done += 1
            inference_seconds += runner.last_inference_time or 0.0
            if progress:
                progress(done, max(total, done))  # container frame counts can be low

        records = []
        with _Staging(out_dir) as staging:
            for source in sources:
                # The one preprocessing function resizes to the network size; the
                # prediction is resized back to the input's size.
                net_pre = replace(pre, resize="fixed", height=source.net_hw[0], width=source.net_hw[1])
                record = {"source": str(source.item.path), "kind": source.item.kind,
                          "size": list(source.hw), "network_size": list(source.net_hw)}
                if source.item.kind == "image":
                    record["outputs"] = _run_image(source, runner, net_pre, cfg, staging)
                    tick()
                else:
                    record["outputs"], record["frames"] = _run_video(source, runner, net_pre, cfg, staging, tick)
                    record["fps"] = source.fps
                records.append(record)
            summary = _summary(bundle, runner, out_dir, cfg, records, done, inference_seconds, load_seconds, start)
            staging.write_bytes(REPORT_NAME, (json.dumps(summary, indent=2) + "\n").encode())
            staging.commit()  # the report is moved last: its presence means the run completed
    return summary


def _summary(bundle: Bundle, runner: Runner, out_dir: Path, cfg: PredictConfig, records: list[dict],
             inferences: int, inference_seconds: float, load_seconds: float, start: float) -> dict:
    resized = [r for r in records if r["size"] != r["network_size"]]
    notes = []
    if resized:
        notes.append(
            f"{len(resized)} of {len(records)} inputs were resized for the network "
            f"({', '.join(sorted({'x'.join(map(str, r['network_size'])) for r in resized}))}) "
            "and their predictions resized back to the input size"
        )
    seconds = time.perf_counter() - start
    return {
        "bundle": str(bundle.root),
        "out_dir": str(out_dir),
        "runner": runner.info().to_dict(),
        "report": str(out_dir / REPORT_NAME),
        "config": asdict(cfg),
        "images": sum(r["kind"] == "image" for r in records),
        "videos": sum(r["kind"] == "video" for r in records),
        "video_frames": sum(r.get("frames", 0) for r in records),
        "resized": len(resized),
        "notes": notes,
        "items": records,
        "files": [f for r in records for f in r["outputs"]],
        "timing": {
            "seconds": seconds,
            "load_seconds": load_seconds,  # runner start-up and input checks
            "inference_seconds": inference_seconds,  # compute only, as the runner measures it
            "inference_ms_mean": 1000.0 * inference_seconds / inferences if inferences else None,
        },
    }
