#!/usr/bin/env bash
# Trains the SynthCity model behind fornet_deploy/weights/fornet_synthcity.safetensors and the training
# numbers in docs/benchmarks.md: a CPU-only run sized for <= 15 minutes on a 2-core machine. The shipped
# weights came from this script at commit 1ba2b04; today's selector target differs slightly (section 1).
set -euo pipefail
DATA=${DATA:-runs/synthcity}
OUT=${OUT:-runs/train_synthcity}
ITERATIONS=${ITERATIONS:-1000}
SHIP=${SHIP:-fornet_deploy/weights/fornet_synthcity.safetensors}  # where the final weights are copied
fornet-deploy synthcity --out "$DATA" --train 300 --val 50 --shape 256x512 --seed 0
start=$(date +%s)
fornet-deploy train --data "$DATA" --out "$OUT" --iterations "$ITERATIONS" --batch 8 --shape 256x256 \
    --val-interval 250 --seed 0 --device cpu
echo "training wall time: $(( $(date +%s) - start )) s"
mkdir -p "$(dirname "$SHIP")"
cp "$OUT/last.safetensors" "$SHIP"
