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
from .contract import IMPORTANCE, TOPK_MASK, check_stride, nearest_valid
from .data.cityscapes import colorize, train_ids_to_label_ids
from .data.transforms import Preprocessing, preprocess
from .errors import FornetError
from .evaluation.postprocess import (
    importance_heatmap,
    label_outputs,
    label_overlay,
    predicted_labels,
    topk_picture,
    upsampled_importance,
    upsampled_mask,
)
from .io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, encode_png, find_files, read_image
from .runtimes.base import Runner
from .runtimes.registry import load_runner

_KINDS = {**dict.fromkeys(IMAGE_EXTENSIONS, "image"), **dict.fromkeys(VIDEO_EXTENSIONS, "video")}
REPORT_NAME = "predictions.json"
ALL_OUTPUTS_OPTION = "--outputs logits,labels,importance,topk_mask"
DEFAULT_FPS = 25.0  # for containers that do not state their frame rate


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
    items: list[InputItem] = []
    seen: set[Path] = set()
    for path in map(Path, paths):
        if path.is_dir():
            found = _folder_items(path, exclude)
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
    for path in find_files(folder, tuple(_KINDS), exclude=excluded):
        rel = path.relative_to(folder).with_suffix("").as_posix()
        items.append(InputItem(path, _KINDS[path.suffix.lower()], "/".join(filter(None, (prefix, rel)))))
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


# ---------------------------------------------------------------------------- inference


@dataclass
class Prediction:
    """What a segmenter says about one image, everything at the image's size."""

    labels: np.ndarray  # H x W uint8 train ids
    importance: np.ndarray | None  # H x W float32, bilinear from 1/8 scale (when asked)
    mask: np.ndarray | None  # H x W bool, the Top-K regions, nearest from 1/8 scale (when asked)


class Segmenter:
    """A runner plus the bundle's preprocessing: an RGB image of any size in, a
    :class:`Prediction` at that size out. What ``fornet-deploy predict`` runs, and the
    Python API's entry point::

        with Segmenter.from_bundle("bundle", runtime="ort", precision="fp16") as segment:
            prediction = segment(rgb_image)          # H x W x 3 uint8
            prediction.labels                        # H x W train ids

    ``shape`` fixes the network input (H, W); without it, an image runs at its own size when
    that is a multiple of the network stride, else at the nearest multiple (or at the
    artefact's fixed size, or the preprocessing's fixed resize); the prediction is always
    resized back to the image.
    """

    def __init__(self, runner: Runner, preprocessing: Preprocessing, shape: tuple[int, int] | None = None):
        self.runner = runner
        self.preprocessing = preprocessing
        self.shape = shape

    @classmethod
    def from_bundle(cls, bundle: Bundle | str | Path, runtime: str = "ort", precision: str = "fp32",
                    device: str = "cpu", shape: tuple[int, int] | None = None, **runner_options) -> "Segmenter":
        if not isinstance(bundle, Bundle):
            bundle = Bundle.open(bundle, verify=False)  # the runner checks the hash of its artefact
        runner = load_runner(bundle, runtime, precision, device, **runner_options)
        return cls(runner, Preprocessing.from_dict(bundle.manifest["preprocessing"]), shape)

    def __enter__(self) -> "Segmenter":
        self.runner.activate()
        if self.shape is not None:
            check_stride(*self.shape, self.runner.input_spec().stride)
        return self

    def __exit__(self, *exc) -> None:
        self.runner.deactivate()

    def network_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        """The network input size for an image of size ``hw``."""
        if self.shape is not None:
            return tuple(self.shape)
        if self.preprocessing.resize == "fixed":
            return self.preprocessing.target_size(hw)
        spec = self.runner.input_spec()
        fixed_h, fixed_w = spec.shape[2:]
        if fixed_h is not None and fixed_w is not None:
            return fixed_h, fixed_w
        return nearest_valid(hw[0], spec.stride), nearest_valid(hw[1], spec.stride)

    def check_size(self, hw: tuple[int, int], source: str = "image") -> tuple[int, int]:
        """The network size for ``hw``, checked against the artefact before any work."""
        net_hw = self.network_size(hw)
        try:
            self.runner.input_spec().check_shape((1, 3, *net_hw))
        except FornetError as exc:
            raise FornetError(f"{source}: {exc}") from None
        return net_hw

    def __call__(self, image: np.ndarray, importance: bool = False, mask: bool = False) -> Prediction:
        hw = image.shape[:2]
        net_h, net_w = self.network_size(hw)
        pre = replace(self.preprocessing, resize="fixed", height=net_h, width=net_w)
        extra = (IMPORTANCE,) * importance + (TOPK_MASK,) * mask
        outputs = self.runner(preprocess(image, pre), outputs=label_outputs(self.runner.output_names(), *extra))
        missing = [name for name in extra if name not in outputs]
        if missing:
            raise FornetError(
                f"{self.runner.info().artifact} was exported without the {' and '.join(missing)} output; "
                f"re-export it with `fornet-deploy export ... {ALL_OUTPUTS_OPTION}`"
            )
        return Prediction(predicted_labels(outputs, hw), upsampled_importance(outputs, hw) if importance else None,
                          upsampled_mask(outputs, hw) if mask else None)


# ---------------------------------------------------------------------------- pictures


def _pictures(image: np.ndarray, pred: Prediction, cfg: PredictConfig) -> dict[str, np.ndarray]:
    """The RGB pictures of one prediction, by output suffix."""
    pictures = {"overlay": label_overlay(image, pred.labels, cfg.overlay_alpha)}
    if pred.importance is not None:
        pictures["importance"] = importance_heatmap(image, pred.importance, cfg.overlay_alpha)
    if pred.mask is not None:
        pictures["topk"] = topk_picture(image, pred.mask)
    return pictures


def _label_maps(pred: Prediction, label_ids: bool) -> dict[str, np.ndarray]:
    maps = {"trainIds": pred.labels}
    if label_ids:
        maps["labelIds"] = train_ids_to_label_ids(pred.labels)
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


def _run_image(source: _Source, segment: Segmenter, cfg: PredictConfig, staging: _Staging) -> list[str]:
    image = read_image(source.item.path)
    pred = segment(image, importance=cfg.importance, mask=cfg.mask)
    written = []
    outputs = {**_label_maps(pred, cfg.label_ids), "color": colorize(pred.labels), **_pictures(image, pred, cfg)}
    for suffix, picture in outputs.items():
        rel = f"{source.item.name}_{suffix}.png"
        staging.write_png(rel, picture)
        written.append(rel)
    return written


def _run_video(source: _Source, segment: Segmenter, cfg: PredictConfig, staging: _Staging,
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
                pred = segment(image, importance=cfg.importance, mask=cfg.mask)
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
    start = time.perf_counter()
    cfg.validate()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FornetError(f"output path {out_dir} exists and is not a folder")
    items = collect_inputs(inputs, exclude=out_dir)
    bundle = Bundle.open(bundle_dir, verify=False)  # the runner checks the hash of the artefact it runs

    with Segmenter.from_bundle(bundle, cfg.runtime, cfg.precision, cfg.device, cfg.shape) as segment:
        runner = segment.runner
        sources = []
        for item in items:
            hw, fps, frames = _probe(item)
            sources.append(_Source(item, hw, segment.check_size(hw, str(item.path)), fps, frames))
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
                record = {"source": str(source.item.path), "kind": source.item.kind,
                          "size": list(source.hw), "network_size": list(source.net_hw)}
                if source.item.kind == "image":
                    record["outputs"] = _run_image(source, segment, cfg, staging)
                    tick()
                else:
                    record["outputs"], record["frames"] = _run_video(source, segment, cfg, staging, tick)
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
