#!/usr/bin/env bash
# The GPU numbers that need no TensorRT, in one command, on a machine with an NVIDIA GPU and
# PyTorch (CUDA) but no TensorRT / onnxruntime-gpu and no network (this project's lent GPU
# machines: PyTorch's CUDA image, packages carried as wheels):
#
#   BUNDLE=path/to/bundle bash benchmarks/gpu_torch_suite.sh
#
# BUNDLE: a bundle exported elsewhere (`fornet-deploy export --checkpoint ... --dynamic
# --shape 1024x2048`); its checkpoint is what PyTorch runs. WHEELS (optional): a folder of
# wheels installed with --no-index into a private target first (typer, pydantic, onnxsim for
# the test fixtures). Writes to OUT (default docs/results/gpu_torch/): gpu_torch.json (Top-K
# exactness on CUDA, its share of the forward, TF32), parity / eval / bench JSON for PyTorch
# CUDA FP32 (TF32 off) and FP16 autocast, a short AMP training run, the real-GPU tests, and
# steps.txt. A step that fails or runs out of time is recorded and the suite goes on.
# Without an NVIDIA GPU it prints one line and exits 5.
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/suite_steps.sh
require_gpu gpu_torch_suite
OUT=${OUT:-docs/results/gpu_torch}
WORK=${WORK:-$(mktemp -d -t fornet-gpu-XXXX)}
BUNDLE=${BUNDLE:?set BUNDLE to an exported bundle}
PY=${PYTHON:-python3}
mkdir -p "$OUT/logs"
: >"$OUT/steps.txt"
START=$(date +%s)
if [ -n "${WHEELS:-}" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" "$WHEELS"/*.whl
    export PYTHONPATH="$PWD:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch, onnxruntime; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"
  $PY -c "import tensorrt" 2>/dev/null && echo "tensorrt present: run benchmarks/gpu_suite.sh too" || echo "no tensorrt"
} | tee "$OUT/machine.txt"
FD="$PY -m fornet_deploy.cli"

step gpu-torch 120 $PY benchmarks/gpu_torch.py --json "$OUT/gpu_torch.json"
step pytest-gpu 90 $PY -m pytest -q -rs -p no:cacheprovider -m gpu \
    tests/runtimes/test_trt_cuda.py tests/runtimes/test_runners.py
step synthcity 60 sh -c "$FD synthcity --out '$WORK/city' --train 0 --val 8 --shape 1024x2048 &&
                         $FD synthcity --out '$WORK/train' --train 64 --val 8 --shape 256x512"
for precision in fp32 fp16; do
    step "parity-torch-$precision" 60 $FD parity --bundle "$BUNDLE" --runtime torch --precision "$precision" \
        --device cuda --data "$WORK/city" --num-images 4 --out "$WORK/parity-$precision" \
        --json "$OUT/parity_torch_cuda_$precision.json"
    step "eval-torch-$precision" 45 $FD eval --bundle "$BUNDLE" --runtime torch --precision "$precision" \
        --device cuda --data "$WORK/city" --json "$OUT/eval_torch_cuda_$precision.json"
    # the runner copies every output back (160 MB of FP32 logits at 1024x2048): fewer iterations there
    for shape_iters in 512x1024:100 1024x2048:30; do
        shape=${shape_iters%:*}
        step "bench-$precision-$shape" 60 $FD bench --bundle "$BUNDLE" --runtime torch --precision "$precision" \
            --device cuda --shape "$shape" --warmup 5 --iterations "${shape_iters#*:}" \
            --json "$OUT/bench_torch_cuda_${precision}_$shape.json"
    done
done
step train-amp 90 $FD train --data "$WORK/train" --out "$WORK/run" --iterations 60 --batch 8 --shape 256x256 \
    --val-interval 30 --device cuda --json "$OUT/train_cuda_amp.json"
echo "gpu_torch_suite: $(( $(date +%s) - START )) s; results in $OUT" | tee -a "$OUT/steps.txt"
