#!/usr/bin/env bash
# The CPU speed numbers of docs/benchmarks.md section 8 (issue 15), from the shipped weights:
#   bash benchmarks/run_speed_suite.sh          (about 25 min on an idle 2-core machine)
# Timing steps first wait (up to WAIT_MAX s) for the 1-minute load average to fall below
# QUIET_LOAD; every timing JSON records the CPU share other processes took while it timed
# (bench's machine_load), and a ratio measured on a busy machine is flagged, not reported.
set -euo pipefail
OUT=${OUT:-docs/results/speed}
RUNS=${RUNS:-runs/speed}
WEIGHTS=${WEIGHTS:-fornet_deploy/weights/fornet_synthcity.safetensors}
QUIET_LOAD=${QUIET_LOAD:-0.6}
WAIT_MAX=${WAIT_MAX:-1800}
REPEATS=${REPEATS:-3}
DATA=$RUNS/sc0
mkdir -p "$OUT" "$RUNS"
. "$(dirname "$0")/quiet.sh"

[ -d "$DATA/leftImg8bit" ] || fornet-deploy synthcity --out "$DATA" --train 64 --val 50 --shape 512x1024 --seed 0
# The default export (model.cpu.onnx with the refine tail) and one with --tail full (model.onnx
# only), each with its U8S8 CPU graph; the first also with the FP16 and TensorRT INT8 graphs.
fornet-deploy export --checkpoint "$WEIGHTS" --out "$RUNS/bundle" --shape 512x1024 --precision fp16
fornet-deploy export --checkpoint "$WEIGHTS" --out "$RUNS/full" --shape 512x1024 --tail full
for bundle in "$RUNS/bundle" "$RUNS/full"; do
  fornet-deploy calibrate --bundle "$bundle" --data "$DATA" --num-images 32 --target cpu
done
fornet-deploy calibrate --bundle "$RUNS/bundle" --data "$DATA" --num-images 32 --target tensorrt

# 1. The tail options: labels against the full tail, mIoU / boundary IoU, time (50 val images).
wait_quiet
python benchmarks/tail_options.py "$RUNS/full" "$DATA" --num-images 50 --json "$OUT/tail_options.json"

# 2. Accuracy of what ships: parity against PyTorch and mIoU of the FP32 and U8S8 CPU graphs.
for precision in fp32 int8; do
  fornet-deploy parity --bundle "$RUNS/bundle" --runtime ort --precision "$precision" --data "$DATA" \
    --json "$OUT/parity_ort_${precision}_512.json" || echo "parity $precision failed (see its report)"
  fornet-deploy eval --bundle "$RUNS/bundle" --data "$DATA" --runtime ort --precision "$precision" \
    --json "$OUT/eval_ort_${precision}_512.json"
done

# 3. Where the time goes: ONNX Runtime's profiler on every ONNX graph of the bundle, 2 threads.
wait_quiet
fornet-deploy bench --bundle "$RUNS/bundle" --matrix --profile --threads 2 --iterations 30 --num-images 8 \
  --data "$DATA" --json "$OUT/bench_matrix_profile.json"

# 4. The targets, torch vs ONNX Runtime FP32 vs U8S8 in one process, several runs; then the
#    session settings and graph choices (threads, spinning, optimisation level, NCHWc, parallel
#    execution, concat folding), and one thread by CPU time (robust to other load).
for run in $(seq 1 "$REPEATS"); do
  wait_quiet
  python benchmarks/cpu_speed.py "$RUNS/bundle" "$DATA" --threads 2 --rounds 8 --json "$OUT/cpu_speed_t2_run$run.json"
done
wait_quiet
python benchmarks/cpu_speed.py "$RUNS/bundle" "$DATA" --threads 2 --rounds 6 \
  --variant unfolded=model.onnx:tail=refine \
  --variant no_spin=model.cpu.onnx:spin=0 \
  --variant one_thread=model.cpu.onnx:threads=1 \
  --variant parallel_inter2=model.cpu.onnx:inter=2 \
  --variant opt_extended=model.cpu.onnx:opt=extended \
  --variant no_nchwc=model.cpu.onnx:disable=NchwcTransformer \
  --variant int8_no_spin=model.int8.cpu.onnx:spin=0 \
  --variant no_coarse=model.cpu.onnx:outputs=labels+importance+topk_mask \
  --json "$OUT/cpu_speed_settings.json"
wait_quiet
python benchmarks/cpu_speed.py "$RUNS/bundle" "$DATA" --threads 1 --rounds 6 \
  --variant unfolded=model.onnx:tail=refine --variant no_nchwc=model.cpu.onnx:disable=NchwcTransformer \
  --json "$OUT/cpu_speed_t1.json"
