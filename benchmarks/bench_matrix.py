"""Every artefact of a bundle on one device: latency, throughput, speed-up, accuracy.

The numbers in docs/benchmarks.md come from this script:

    python benchmarks/bench_matrix.py runs/bundle --device cpu --data runs/synthcity \
        --out docs/results [--shape 256x512] [--batch 1] [--warmup 10] [--iterations 50] [--threads N]

It calls :func:`fornet_deploy.bench.run_matrix` (PyTorch FP32 and every ONNX Runtime /
TensorRT artefact the bundle holds for the device, measured in one process) and writes
``bench_<device>.json`` (everything, machine description included) and
``bench_<device>.md`` (the table) into ``--out``; the table is also printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fornet_deploy.bench import BenchConfig, matrix_markdown, run_matrix
from fornet_deploy.contract import parse_hw
from fornet_deploy.errors import FornetError
from fornet_deploy.io import atomic_write_bytes, atomic_write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path, help="deploy bundle (fornet-deploy export)")
    p.add_argument("--out", type=Path, required=True, help="folder for bench_<device>.json and .md")
    p.add_argument("--device", default="cpu", help="cpu | cuda | jetson")
    p.add_argument("--data", type=Path, default=None, help="Cityscapes-layout root: mIoU on its val images")
    p.add_argument("--num-images", type=int, default=8, help="images for the accuracy columns")
    p.add_argument("--shape", default=None, help="HxW (default: the bundle's export shape)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: each runtime's own)")
    p.add_argument("--images", type=Path, default=None, help="frames for the end-to-end loop (default: synthetic)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = BenchConfig(
            shape=parse_hw(args.shape, "--shape") if args.shape else None, batch=args.batch,
            warmup=args.warmup, iters=args.iterations, threads=args.threads, images=args.images,
        )

        def progress(done: int, total: int, note: str) -> None:
            print(f"[{done}/{total}] {note}", file=sys.stderr, flush=True)

        result = run_matrix(args.bundle, args.device, args.data, args.num_images, cfg, progress)
    except FornetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    table = matrix_markdown(result)
    stem = args.out / f"bench_{args.device}"
    atomic_write_json(stem.with_suffix(".json"), result)
    atomic_write_bytes(stem.with_suffix(".md"), table.encode())
    print(table)
    print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
