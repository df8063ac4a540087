#!/usr/bin/env bash
# Every CPU number in docs/benchmarks.md, re-run from the shipped weights on an idle machine:
#   bash benchmarks/run_cpu_suite.sh            (SynthCity from scripts/train_synthcity.sh's settings)
# Results land in docs/results/ (JSON + Markdown tables).
set -euo pipefail
DATA=${DATA:-runs/synthcity}
BUNDLE=${BUNDLE:-runs/bundle}
RESULTS=${RESULTS:-docs/results}
WEIGHTS=${WEIGHTS:-fornet_deploy/weights/fornet_synthcity.safetensors}
mkdir -p "$RESULTS"
[ -d "$DATA/leftImg8bit" ] || fornet-deploy synthcity --out "$DATA" --train 300 --val 50 --shape 256x512 --seed 0

fornet-deploy export --checkpoint "$WEIGHTS" --out "$BUNDLE" --shape 256x512 --precision fp16
fornet-deploy calibrate --bundle "$BUNDLE" --data "$DATA" --num-images 64 --method percentile --target tensorrt
fornet-deploy calibrate --bundle "$BUNDLE" --data "$DATA" --num-images 64 --method percentile --target cpu
for graph in model.onnx model.fp16.onnx model.int8.qdq.onnx; do
    fornet-deploy lint "$BUNDLE/$graph" --json "$RESULTS/lint_${graph%.onnx}.json"
done
for precision in fp32 fp16 int8; do
    fornet-deploy parity --bundle "$BUNDLE" --runtime ort --precision "$precision" --data "$DATA" \
        --out "$RESULTS/parity_ort_$precision" || echo "parity $precision failed (see its report)"
done
fornet-deploy eval --bundle "$BUNDLE" --data "$DATA" --runtime ort --precision fp32 --json "$RESULTS/eval_ort_fp32.json"
python benchmarks/topk_overhead.py --checkpoint "$WEIGHTS" --shape 512x1024 --latency --json "$RESULTS/topk_overhead.json"
python benchmarks/topk_confident.py --checkpoint "$WEIGHTS" --json "$RESULTS/topk_confident.json"
python benchmarks/precision_eval.py "$BUNDLE" "$DATA" --runs 50 --json "$RESULTS/precision.json"
python benchmarks/bench_matrix.py "$BUNDLE" --device cpu --data "$DATA" --num-images 50 --iterations 50 --out "$RESULTS"
