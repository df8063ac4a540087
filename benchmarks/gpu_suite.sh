#!/usr/bin/env bash
# Issue 13's GPU numbers in one command, on a machine with an NVIDIA GPU:
#
#   bash benchmarks/gpu_suite.sh
#
# Installs what is missing (CPU PyTorch for the reference, then `pip install -e '.[tensorrt,gpu]'`
# + pytest; set SKIP_INSTALL=1 to use the active environment as it is; pip's own PIP_FIND_LINKS /
# PIP_NO_INDEX work for an offline wheelhouse), runs the GPU tests (FoR-Net's FP32 / FP16 / INT8
# graphs built strongly typed, the legacy calibrator on TensorRT 10.x, parity, engine layers),
# then exports the shipped SynthCity weights at 1024x2048, calibrates INT8 on SynthCity made on
# the spot, builds the three engines at 1024x2048 and writes to docs/results/gpu/ (OUT=...):
#   build_trt_*.json  parity_*.json  eval_*.json  bench_*.json  layers_*.json (+ inspector_*.json)
#   lint_*.json  pytest.txt  steps.txt  summary.md / summary.json (the table and the goals)
# ONNX Runtime CUDA FP32 (use_tf32=0) is measured beside TensorRT as the comparison point.
#
# Each step has a time budget (seconds, sized for an H100 with 16 cores; the whole suite is meant to
# finish in under 8 minutes including installs). A step that fails or runs out of time is recorded
# in steps.txt and the suite goes on, so one failure does not lose the other results.
# Without an NVIDIA GPU it prints one line and exits 5 (fornet-deploy's "missing hardware").
set -uo pipefail
cd "$(dirname "$0")/.."

. benchmarks/suite_steps.sh
require_gpu gpu_suite

OUT=${OUT:-docs/results/gpu}
WORK=${WORK:-$(mktemp -d -t fornet-gpu-XXXX)}
SHAPE=${SHAPE:-1024x2048}
WEIGHTS=${WEIGHTS:-fornet_deploy/weights/fornet_synthcity.safetensors}
PY=${PYTHON:-python3}
mkdir -p "$OUT/logs"
: >"$OUT/steps.txt"
SUITE_START=$(date +%s)

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/gpu.txt"

# 1. installs (budget 200 s)
if [ "${SKIP_INSTALL:-0}" != 1 ] && ! $PY -c "import tensorrt, cuda.bindings.runtime, onnxruntime, pytest, fornet_deploy" 2>/dev/null; then
    $PY -c "import torch" 2>/dev/null || step install-torch 90 $PY -m pip install -q torch==2.13.0 \
        --index-url https://download.pytorch.org/whl/cpu
    # never `.[test]` here: it brings the CPU onnxruntime, which would clash with onnxruntime-gpu
    step install 200 $PY -m pip install -q -e '.[tensorrt,gpu]' pytest hypothesis
fi
FD="$PY -m fornet_deploy.cli"
$PY -c "from fornet_deploy.cli import main" 2>/dev/null || { echo "gpu_suite: fornet-deploy is not importable (see $OUT/logs/install.log)" >&2; exit 4; }
$PY -c "import tensorrt, sys; print('TensorRT', tensorrt.__version__)" | tee -a "$OUT/steps.txt"

# 2. the GPU tests (budget 180 s): FoR-Net's graphs at 256x512, parity, inspector
export FORNET_GPU_RESULTS="$OUT"
step pytest 180 $PY -m pytest -q -rs -p no:cacheprovider \
    tests/build/test_trt_fornet_gpu.py tests/runtimes/test_trt_runner.py tests/runtimes/test_trt_cuda.py
cp "$OUT/logs/pytest.log" "$OUT/pytest.txt"

# 3. data and graphs (budget 120 s): calibration images at half size, evaluation images at full size
step synthcity 60 sh -c "$FD synthcity --out '$WORK/calib' --train 16 --val 0 --shape 512x1024 &&
                          $FD synthcity --out '$WORK/city' --train 0 --val 8 --shape $SHAPE"
B="$WORK/bundle"
step export 60 $FD export --checkpoint "$WEIGHTS" --out "$B" --shape "$SHAPE" --dynamic --precision fp16
step calibrate 120 $FD calibrate --bundle "$B" --data "$WORK/calib" --num-images 16 --method entropy
for graph in model.onnx model.fp16.onnx model.int8.qdq.onnx; do
    step "lint-${graph%.onnx}" 30 $FD lint "$B/$graph" --json "$OUT/lint_${graph%.onnx}.json"
done

# 4. engines at full size, one timing cache (budget 120 s each)
for precision in fp32 fp16 int8; do
    step "build-$precision" 120 $FD build-trt --bundle "$B" --precision "$precision" --shape "$SHAPE" \
        --timing-cache "$WORK/timing.cache" --json "$OUT/build_trt_$precision.json"
done
step layers 60 $PY benchmarks/trt_layers.py "$B" --out "$OUT"

# 5. parity (4 images: the PyTorch reference runs on the CPU), accuracy, latency
for precision in fp32 fp16 int8; do
    step "parity-trt-$precision" 90 $FD parity --bundle "$B" --runtime trt --precision "$precision" --device cuda \
        --data "$WORK/city" --num-images 4 --out "$WORK/parity-trt-$precision" --json "$OUT/parity_trt_$precision.json"
done
step parity-ort-cuda-fp32 90 $FD parity --bundle "$B" --runtime ort --precision fp32 --device cuda --ort-provider cuda \
    --data "$WORK/city" --num-images 4 --out "$WORK/parity-ort" --json "$OUT/parity_ort_cuda_fp32.json"
for precision in fp32 fp16 int8; do
    step "eval-trt-$precision" 60 $FD eval --bundle "$B" --runtime trt --precision "$precision" --device cuda \
        --data "$WORK/city" --json "$OUT/eval_trt_$precision.json"
done
for precision in fp32 fp16 int8; do
    step "bench-trt-$precision" 60 $FD bench --bundle "$B" --runtime trt --precision "$precision" --device cuda \
        --shape "$SHAPE" --warmup 10 --iterations 50 --json "$OUT/bench_trt_$precision.json"
done
step bench-ort-cuda-fp32 90 $FD bench --bundle "$B" --runtime ort --precision fp32 --device cuda --ort-provider cuda \
    --shape "$SHAPE" --warmup 5 --iterations 20 --json "$OUT/bench_ort_cuda_fp32.json"

$PY benchmarks/gpu_summary.py "$OUT"
echo "gpu_suite: $(( $(date +%s) - SUITE_START )) s; results in $OUT (work files in $WORK)"
