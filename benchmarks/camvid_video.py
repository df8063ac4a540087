"""A CamVid sequence as FoR-Net sees it: the frames of one sequence (default 0001TP, CamVid's
test split) joined into a video, segmented by ``predict`` with overlays, the importance heat
map and the selected Top-K cells, each as a video.

    python benchmarks/camvid_video.py /data/CamVid BUNDLE OUT [--sequence 0001TP] [--split test] [--fps 5]

Writes OUT/SEQUENCE.mp4 (the frames) and OUT/predictions/SEQUENCE_{overlay,importance,topk}.mp4
(+ predictions.json). CamVid's images are CC BY-NC 4.0: keep what this writes there out of the
repository. ``--doc-frames N --doc-out DIR`` also writes N evenly spaced frames as
DIR/SEQUENCE_FRAME.png holding no CamVid pixel: the predicted classes (over their legend) beside
the importance heat map with the selected Top-K cells outlined (docs/benchmarks.md section 13).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from fornet_deploy.api import load_segmenter
from fornet_deploy.data.formats import open_dataset
from fornet_deploy.evaluation.keys import with_legend
from fornet_deploy.evaluation.postprocess import importance_heatmap, topk_picture
from fornet_deploy.predict import PredictConfig, predict


def sequence_frames(data: Path, split: str, sequence: str) -> list[Path]:
    """The image files of ``sequence`` in ``split``, in name order."""
    frames = [s.image for s in open_dataset(data).samples(split, require_labels=False) if s.name.startswith(sequence)]
    if not frames:
        raise SystemExit(f"no {sequence} frames in the {split} split of {data}")
    return frames


def sequence_video(frames: list[Path], name: str, out: Path, fps: float) -> Path:
    """The frames as the mp4 video OUT/NAME.mp4."""
    first = cv2.imread(str(frames[0]))
    path = out / f"{name}.mp4"
    out.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (first.shape[1], first.shape[0]))
    try:
        for frame in frames:
            writer.write(cv2.imread(str(frame)))
    finally:
        writer.release()
    return path


def doc_frames(frames: list[Path], count: int, bundle: Path, out: Path, runtime: str, precision: str) -> list[Path]:
    """``count`` evenly spaced frames as [predicted classes over their legend | importance heat
    map with the Top-K cells outlined], no pixel of the frame itself (its licence stays out)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with load_segmenter(bundle, runtime, precision) as segment:
        for index in np.linspace(0, len(frames) - 1, count).round().astype(int):
            image = cv2.cvtColor(cv2.imread(str(frames[index])), cv2.COLOR_BGR2RGB)
            pred = segment(image, importance=True, mask=True)
            classes = with_legend(segment.colorize(pred), pred.labels, segment.labels)
            # the heat map alone (alpha 1), then the selected cells tinted and outlined on it
            focus = topk_picture(importance_heatmap(np.zeros_like(image), pred.importance, 1.0), pred.mask)
            focus = np.concatenate([focus, np.zeros((classes.shape[0] - focus.shape[0],) + focus.shape[1:], np.uint8)])
            path = out / f"{frames[index].stem}.png"
            cv2.imwrite(str(path), cv2.cvtColor(np.concatenate([classes, focus], axis=1), cv2.COLOR_RGB2BGR))
            written.append(path)
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path)
    p.add_argument("bundle", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--sequence", default="0001TP")
    p.add_argument("--split", default="test")
    p.add_argument("--fps", type=float, default=5.0)
    p.add_argument("--runtime", default="ort")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--doc-frames", type=int, default=0, help="also write this many frames without CamVid pixels")
    p.add_argument("--doc-out", type=Path, help="where --doc-frames go (default OUT/doc_frames)")
    args = p.parse_args()
    frames = sequence_frames(args.data, args.split, args.sequence)
    if args.doc_frames:
        for path in doc_frames(frames, args.doc_frames, args.bundle, args.doc_out or args.out / "doc_frames",
                               args.runtime, args.precision):
            print(path)
    video = sequence_video(frames, args.sequence or args.split, args.out, args.fps)
    print(f"{video}: {len(frames)} frames")
    predict(args.bundle, [str(video)], args.out / "predictions",
            PredictConfig(runtime=args.runtime, precision=args.precision, importance=True, mask=True))
    print("\n".join(str(p) for p in sorted((args.out / "predictions").glob("*.mp4"))))


if __name__ == "__main__":
    main()
