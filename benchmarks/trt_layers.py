"""Engine-inspector summary of every TensorRT engine of a bundle (reformat layers, reformats
between INT8 convolutions, convolution precisions), plus the raw inspector JSON.

    python benchmarks/trt_layers.py BUNDLE --out docs/results/gpu

Writes OUT/layers_<engine>.json (summary) and OUT/inspector_<engine>.json (raw), for engines
built by ``fornet-deploy build-trt`` (detailed profiling verbosity). Needs TensorRT and a GPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fornet_deploy.bundle import Bundle
from fornet_deploy.io import atomic_write_json
from fornet_deploy.runtimes.registry import ENGINE_KIND, load_runner
from fornet_deploy.runtimes.trt.inspect import summarize_layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    bundle = Bundle.open(args.bundle, verify=False)
    for name, entry in sorted(bundle.artifacts_of(ENGINE_KIND).items()):
        with load_runner(bundle, "trt", entry["precision"], "cuda", artifact=name) as runner:
            info = runner.engine_information()
        summary = {"engine": name, "precision": entry["precision"], **summarize_layers(info)}
        atomic_write_json(args.out / f"layers_{name}.json", summary)
        atomic_write_json(args.out / f"inspector_{name}.json", info)
        print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, list)}))


if __name__ == "__main__":
    main()
