#!/usr/bin/env bash
# The OpenVINO numbers of docs/benchmarks.md section 12 (issue 23), from the shipped weights:
#   bash benchmarks/run_openvino_suite.sh     (about 20 min on an idle 2-core machine, + waits)
# Needs the [openvino] extra, and nncf for the NNCF comparison (NNCF=0 skips it).
# Timing steps first wait (up to WAIT_MAX s) for the 1-minute load average to fall below
# QUIET_LOAD; every ratio is taken over quiet rounds only (benchmarks/rounds.py).
set -euo pipefail
OUT=${OUT:-docs/results/openvino}
RUNS=${RUNS:-runs/ov}
WEIGHTS=${WEIGHTS:-fornet_deploy/weights/fornet_synthcity.safetensors}
QUIET_LOAD=${QUIET_LOAD:-0.6}
WAIT_MAX=${WAIT_MAX:-1800}
REPEATS=${REPEATS:-2}
NNCF=${NNCF:-32}
DATA=$RUNS/sc0
mkdir -p "$OUT" "$RUNS"
. "$(dirname "$0")/quiet.sh"

# The bundle of the CPU speed runs (benchmarks/run_speed_suite.sh): 512x1024, the refine tail,
# FP16 graph, U8S8 CPU graph from 32 calibration images.
[ -d "$DATA/leftImg8bit" ] || fornet-deploy synthcity --out "$DATA" --train 64 --val 50 --shape 512x1024 --seed 0
[ -f "$RUNS/bundle/model.int8.cpu.onnx" ] || {
  fornet-deploy export --checkpoint "$WEIGHTS" --out "$RUNS/bundle" --shape 512x1024 --precision fp16
  fornet-deploy calibrate --bundle "$RUNS/bundle" --data "$DATA" --num-images 32 --target cpu
}
lscpu | head -20 > "$OUT/lscpu.txt"

# 1. Parity against PyTorch and mIoU of every OpenVINO precision on the 50 val images.
for precision in fp32 bf16 int8; do
  fornet-deploy parity --bundle "$RUNS/bundle" --runtime openvino --precision "$precision" --data "$DATA" \
    --json "$OUT/parity_openvino_${precision}.json" || echo "parity openvino $precision failed (see its report)"
  fornet-deploy eval --bundle "$RUNS/bundle" --data "$DATA" --runtime openvino --precision "$precision" \
    --json "$OUT/eval_openvino_${precision}.json"
done

# 2. The targets: OpenVINO vs ONNX Runtime FP32 in one process, several runs.
for run in $(seq 1 "$REPEATS"); do
  wait_quiet
  python benchmarks/openvino_speed.py "$RUNS/bundle" "$DATA" --threads 2 --rounds 8 --nncf "$NNCF" \
    --json "$OUT/openvino_speed_run$run.json"
done

# One thread: CPU time per call barely depends on other processes (a ratio a busy machine keeps).
wait_quiet
python benchmarks/openvino_speed.py "$RUNS/bundle" "$DATA" --threads 1 --rounds 6 --eval-images 0 \
  --json "$OUT/openvino_speed_t1.json"

# 3. The benchmark matrix with the OpenVINO rows beside ONNX Runtime's (accuracy on 8 val images).
wait_quiet
fornet-deploy bench --bundle "$RUNS/bundle" --matrix --threads 2 --iters 20 --num-images 8 --data "$DATA" \
  --json "$OUT/bench_matrix.json"
