"""A CamVid sequence as FoR-Net sees it: the frames of one sequence (default 0001TP, CamVid's
test split) joined into a video, segmented by ``predict`` with overlays, the importance heat
map and the selected Top-K cells, each as a video.

    python benchmarks/camvid_video.py /data/CamVid BUNDLE OUT [--sequence 0001TP] [--split test] [--fps 5]

Writes OUT/SEQUENCE.mp4 (the frames) and OUT/predictions/SEQUENCE_{overlay,importance,topk}.mp4
(+ predictions.json). CamVid's images are CC BY-NC 4.0: keep what this writes out of the
repository.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

from fornet_deploy.data.formats import open_dataset
from fornet_deploy.predict import PredictConfig, predict


def sequence_video(data: Path, split: str, sequence: str, out: Path, fps: float) -> tuple[Path, int]:
    """The ``sequence`` frames of ``split``, in name order, as an mp4 video."""
    frames = [s.image for s in open_dataset(data).samples(split, require_labels=False) if s.name.startswith(sequence)]
    if not frames:
        raise SystemExit(f"no {sequence} frames in the {split} split of {data}")
    first = cv2.imread(str(frames[0]))
    path = out / f"{sequence or split}.mp4"
    out.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (first.shape[1], first.shape[0]))
    try:
        for frame in frames:
            writer.write(cv2.imread(str(frame)))
    finally:
        writer.release()
    return path, len(frames)


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
    args = p.parse_args()
    video, count = sequence_video(args.data, args.split, args.sequence, args.out, args.fps)
    print(f"{video}: {count} frames")
    predict(args.bundle, [str(video)], args.out / "predictions",
            PredictConfig(runtime=args.runtime, precision=args.precision, importance=True, mask=True))
    print("\n".join(str(p) for p in sorted((args.out / "predictions").glob("*.mp4"))))


if __name__ == "__main__":
    main()
