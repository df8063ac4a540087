#!/usr/bin/env bash
# docs/benchmarks.md section 9 (calibration: time, ranges, INT8 accuracy by method), re-run
# from the shipped weights; run it on an idle machine (the JSON records the load):
#   bash benchmarks/calibration_suite.sh            (~20 min on 2 cores, ~1.5 GB of disk in $WORK)
set -euo pipefail
WORK=${WORK:-runs/calibration}
RESULTS=${RESULTS:-docs/results}
WEIGHTS=${WEIGHTS:-fornet_deploy/weights/fornet_synthcity.safetensors}
mkdir -p "$WORK" "$RESULTS"
for seed in 0 1 5; do
    [ -f "$WORK/sc512_$seed/synthcity.json" ] ||
        fornet-deploy synthcity --out "$WORK/sc512_$seed" --train 64 --val 50 --shape 512x1024 --seed "$seed"
done
[ -f "$WORK/sc1024/synthcity.json" ] ||
    fornet-deploy synthcity --out "$WORK/sc1024" --train 128 --val 4 --shape 1024x2048 --seed 0
[ -f "$WORK/b512/model.fp16.onnx" ] ||
    fornet-deploy export --checkpoint "$WEIGHTS" --out "$WORK/b512" --shape 512x1024 --precision fp16
[ -f "$WORK/b1024/model.fp16.onnx" ] ||
    fornet-deploy export --checkpoint "$WEIGHTS" --out "$WORK/b1024" --shape 1024x2048 --precision fp16

# calibrate --num-images 32 (entropy, the default) on three SynthCity sets: time, ranges against
# ONNX Runtime's own calibrator, the old quantize_static path, INT8 accuracy on 50 val images
python benchmarks/calibration_time.py "$WORK/b512" "$WORK/sc512_0" "$WORK/sc512_1" "$WORK/sc512_5" \
    --num-images 32 --reference --val-images 50 --old-path-timeout 600 --json "$RESULTS/calibration_time.json"
# the README's typical deployment: 128 images at 1024x2048, --method percentile
python benchmarks/calibration_time.py "$WORK/b1024" "$WORK/sc1024" --num-images 128 --method percentile \
    --json "$RESULTS/calibration_time_1024x2048.json"
# INT8 accuracy of every method on both targets at 512x1024 (64 calibration images, 50 val)
python benchmarks/precision_eval.py "$WORK/b512" "$WORK/sc512_0" --num-images 64 --runs 10 --warmup 2 \
    --json "$RESULTS/precision_512x1024.json"
