"""The run of ``predict``: its options, every input checked, then images and frames
segmented into the staging folder and committed with ``predictions.json``."""

from __future__ import annotations

import collections
import contextlib
import inspect
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from ..bundle import Bundle
from ..data.formats import submission_label_ids
from ..data.labels import LabelSet
from ..errors import OptionError
from ..evaluation.keys import aspect_note, colour_bar, with_legend
from ..evaluation.postprocess import HEATMAP, importance_heatmap, label_overlay, topk_picture
from ..interrupts import StopSignals, stop_signals
from ..io import read_image
from ..runtimes.base import Runner
from ..targets import output_folder
from .outputs import REPORT_NAME, OutputStaging
from .segmenter import Prediction, Segmenter
from .sources import Source, collect_inputs, open_video, probe, read_frames

DEFAULT_FPS = 25.0  # for containers and streams that do not state their frame rate


@dataclass
class PredictConfig:
    runtime: str = "ort"
    precision: str | None = None  # None: fp32, or the artifact's own
    device: str = "cpu"
    artifact: str | None = None  # a specific file of the bundle (e.g. model.onnx); None: the table's choice
    # Network input (H, W). None: the image's own size on a dynamic artefact, else the
    # artefact's fixed size; the prediction is always resized back to the image's size.
    shape: tuple[int, int] | None = None
    overlay_alpha: float = 0.5
    importance: bool = False
    mask: bool = False
    label_ids: bool = False
    video_every: int = 1  # process every n-th video frame
    max_frames: int | None = None  # at most this many processed frames per video or live source
    ort_provider: str | None = None  # ONNX Runtime execution provider (cpu | cuda | tensorrt); None follows device

    def validate(self) -> None:
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise OptionError(f"overlay alpha must be in [0, 1], got {self.overlay_alpha}")
        if self.video_every < 1:
            raise OptionError(f"--video-every must be at least 1, got {self.video_every}")
        if self.max_frames is not None and self.max_frames < 1:
            raise OptionError(f"--max-frames must be at least 1, got {self.max_frames}")


# ---------------------------------------------------------------------------- pictures


def _pictures(image: np.ndarray, pred: Prediction, cfg: PredictConfig, labels: LabelSet,
              keys: bool = False) -> dict[str, np.ndarray]:
    """The RGB pictures of one prediction, by output suffix; ``keys`` (an image's pictures, not
    a video's frames, whose size is fixed): the overlay over the legend of the classes it
    shows, the importance map over its colour bar."""
    pictures = {"overlay": label_overlay(image, pred.labels, labels, cfg.overlay_alpha)}
    if pred.importance is not None:
        pictures["importance"] = importance_heatmap(image, pred.importance, cfg.overlay_alpha)
    if pred.mask is not None:
        pictures["topk"] = topk_picture(image, pred.mask)
    if keys:
        pictures["overlay"] = with_legend(pictures["overlay"], pred.labels, labels)
        if "importance" in pictures:
            bar = colour_bar(image.shape[1], HEATMAP, "0", "1", "importance")
            pictures["importance"] = np.concatenate([pictures["importance"], bar], axis=0)
    return pictures


def _label_maps(pred: Prediction, label_ids: bool, labels: LabelSet) -> dict[str, np.ndarray]:
    maps = {"trainIds": pred.labels}
    if label_ids:
        maps["labelIds"] = submission_label_ids(labels, pred.labels)
    return maps


# ---------------------------------------------------------------------------- running


def _run_image(source: Source, segment: Segmenter, cfg: PredictConfig, staging: OutputStaging) -> list[str]:
    image = read_image(source.item.path)
    pred = segment(image, importance=cfg.importance, mask=cfg.mask)
    written = []
    outputs = {**_label_maps(pred, cfg.label_ids, segment.labels), "color": segment.labels.colorize(pred.labels),
               **_pictures(image, pred, cfg, segment.labels, keys=True)}
    for suffix, picture in outputs.items():
        rel = f"{source.item.name}_{suffix}.png"
        staging.write_png(rel, picture)
        written.append(rel)
    return written


def _run_frames(source: Source, segment: Segmenter, cfg: PredictConfig, staging: OutputStaging,
                tick: Callable[[], None], stop: StopSignals) -> dict:
    """A video file or a live source; returns its record's outputs, frames, fps and why it ended
    (``end``, ``max_frames``, or for a live source the signal that stopped it)."""
    name = source.item.name
    stem = name.rsplit("/", 1)[-1]
    kinds = ["overlay"] + (["importance"] if cfg.importance else []) + (["topk"] if cfg.mask else [])
    fps = (source.fps or DEFAULT_FPS) / cfg.video_every  # keeps the playback speed
    live = source.item.kind == "stream"
    written: list[str] = []
    processed, ended = 0, "end"
    with contextlib.ExitStack() as stack:
        cap = source.capture if live else stack.enter_context(open_video(source.item.path))
        videos = {}
        for kind in kinds:
            videos[kind] = staging.video(f"{name}_{kind}.mp4", fps, source.hw)
            stack.callback(videos[kind].close)
            written.append(f"{name}_{kind}.mp4")
        for index, frame in read_frames(cap, cfg.video_every, source.first_frame):
            image = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            pred = segment(image, importance=cfg.importance, mask=cfg.mask)
            for kind, picture in _pictures(image, pred, cfg, segment.labels).items():
                videos[kind].write(picture)
            if cfg.label_ids:
                for suffix, labels in _label_maps(pred, True, segment.labels).items():
                    rel = f"{name}_frames/{stem}_{index:06d}_{suffix}.png"
                    staging.write_png(rel, labels)
                    written.append(rel)
            processed += 1
            tick()
            if cfg.max_frames is not None and processed >= cfg.max_frames:
                ended = "max_frames"
                break
            if live and stop.requested:
                ended = stop.name
                break
        for video in videos.values():
            video.finish()
    return {"outputs": written, "frames": processed, "fps": source.fps, "ended": ended}


# ---------------------------------------------------------------------------- entry point


Progress = Callable[..., None]


def _progress_reporter(progress: Progress | None) -> Progress | None:
    """``progress(done, total, note)``; a callback written for ``progress(done, total)``
    (this function's signature before live sources) is called with two arguments."""
    if progress is None:
        return None
    try:
        inspect.signature(progress).bind(0, 0, "")
    except TypeError:
        return lambda done, total, note: progress(done, total)
    except ValueError:  # no signature to inspect (a builtin): call it with three
        pass
    return progress


class _Meter:
    """Counts processed images and frames, sums the runner's compute time and reports
    progress with the recent frame rate as its note."""

    def __init__(self, runner: Runner, progress: Progress | None, total: int | None):
        self.runner, self.progress, self.total = runner, progress, total
        self.done = 0
        self.inference_seconds = 0.0
        self._times: collections.deque[float] = collections.deque(maxlen=30)

    def fps(self) -> float | None:
        """Images or frames per second over the last 30 (end to end: read, infer, write)."""
        if len(self._times) < 2 or self._times[-1] <= self._times[0]:
            return None
        return (len(self._times) - 1) / (self._times[-1] - self._times[0])

    def tick(self) -> None:
        self.done += 1
        self.inference_seconds += self.runner.last_inference_time or 0.0
        self._times.append(time.perf_counter())
        if self.progress:
            fps = self.fps()
            total = None if self.total is None else max(self.total, self.done)  # container counts can be low
            self.progress(self.done, total, f"{fps:.1f} fps" if fps else "")


def _total(sources: list[Source], cfg: PredictConfig) -> int | None:
    """Images and frames the run will process; None when a live source has no bound."""
    total = 0
    for source in sources:
        if source.item.kind == "image":
            total += 1
            continue
        bound = math.ceil(source.frames / cfg.video_every) if source.frames is not None else None
        if cfg.max_frames is not None:
            bound = cfg.max_frames if bound is None else min(bound, cfg.max_frames)
        if bound is None:
            return None
        total += bound
    return total


def predict(bundle_dir: str | Path, inputs: str | Path | Sequence[str | Path], out_dir: str | Path,
            cfg: PredictConfig = PredictConfig(), progress: Progress | None = None) -> dict:
    """The library function behind ``fornet-deploy predict``; returns the summary that is
    also written to ``OUT_DIR/predictions.json``.

    ``inputs``: image and video files, folders, and live sources (camera index, URL,
    GStreamer pipeline; pass them as strings: a ``Path`` folds a URL's ``//``); a single
    ``str`` or ``Path`` is one input.
    ``progress(done, total, note)`` is called after each image or frame; ``total`` is None
    while a live source without ``max_frames`` is read, ``note`` is the frame rate.
    """
    start = time.perf_counter()
    cfg.validate()
    out_dir = Path(out_dir)
    if isinstance(inputs, (str, Path)):  # one input, not a sequence of characters
        inputs = [inputs]
    # The output folder may lie inside an input folder (it is left out of the search), never
    # be one or hold one, nor be or hold the bundle; no output replaces an input file.
    folders = [given for given in inputs if Path(given).is_dir()]
    output_folder(out_dir, "--out", reads=(*folders, bundle_dir), inside_reads=True)
    items = collect_inputs(inputs, exclude=out_dir)
    bundle = Bundle.open(bundle_dir, verify=False)  # the runner checks the hash of the artefact it runs

    runner_options = {"ort_device": cfg.ort_provider, "artifact": cfg.artifact}
    if cfg.runtime == "trt" and cfg.shape is not None:
        runner_options["shape"] = (1, 3, *cfg.shape)  # the engine whose profile takes it
    with stop_signals() as stop, contextlib.ExitStack() as live_sources, \
            Segmenter.from_bundle(bundle, cfg.runtime, cfg.precision, cfg.device, cfg.shape,
                                  **runner_options) as segment:
        runner = segment.runner
        sources = [probe(item, segment, live_sources) for item in items]
        load_seconds = time.perf_counter() - start
        meter = _Meter(runner, _progress_reporter(progress), _total(sources, cfg))

        records = []
        inputs_read = {item.path for item in items if item.path is not None}
        with OutputStaging(out_dir, stop, protect=inputs_read) as staging:
            for source in sources:
                record = {"source": source.item.source, "kind": source.item.kind,
                          "size": list(source.hw), "network_size": list(source.net_hw)}
                if source.item.kind == "image":
                    record["outputs"] = _run_image(source, segment, cfg, staging)
                    meter.tick()
                elif source.item.kind == "video":
                    record.update(_run_frames(source, segment, cfg, staging, meter.tick, stop))
                else:
                    with stop.deferred():  # Ctrl-C / SIGTERM ends a live source after its current frame
                        record.update(_run_frames(source, segment, cfg, staging, meter.tick, stop))
                    stop.clear()
                records.append(record)
            with stop.deferred():  # a signal during the commit is honoured after it: the run is complete
                summary = _summary(bundle, runner, out_dir, cfg, records, meter, load_seconds, start)
                staging.commit(summary)
    return summary


def _summary(bundle: Bundle, runner: Runner, out_dir: Path, cfg: PredictConfig, records: list[dict],
             meter: _Meter, load_seconds: float, start: float) -> dict:
    resized = [r for r in records if r["size"] != r["network_size"]]
    notes = []
    if resized:
        notes.append(
            f"{len(resized)} of {len(records)} inputs were resized for the network "
            f"({', '.join(sorted({'x'.join(map(str, r['network_size'])) for r in resized}))}) "
            "and their predictions resized back to the input size"
        )
    for r in resized:
        if (stretched := aspect_note(r["size"], r["network_size"])) is not None:
            notes.append(f"{r['source']}: {stretched} (give --shape HxW of its aspect to keep it)")
    seconds = time.perf_counter() - start
    return {
        "bundle": str(bundle.root),
        "out_dir": str(out_dir),
        "runner": runner.info().to_dict(),
        "report": str(out_dir / REPORT_NAME),
        "config": asdict(cfg),
        "images": sum(r["kind"] == "image" for r in records),
        "videos": sum(r["kind"] == "video" for r in records),
        "streams": sum(r["kind"] == "stream" for r in records),
        "video_frames": sum(r.get("frames", 0) for r in records),
        "resized": len(resized),
        "notes": notes,
        "items": records,
        "files": [f for r in records for f in r["outputs"]],
        "timing": {
            "seconds": seconds,
            "load_seconds": load_seconds,  # runner start-up and input checks
            "inference_seconds": meter.inference_seconds,  # compute only, as the runner measures it
            "inference_ms_mean": 1000.0 * meter.inference_seconds / meter.done if meter.done else None,
            # images and frames per second, end to end (read, infer, write), after the start-up
            "frames_per_second": meter.done / (seconds - load_seconds) if seconds > load_seconds else None,
        },
    }
