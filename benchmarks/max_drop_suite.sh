#!/usr/bin/env bash
# docs/benchmarks.md section 9, "An accuracy budget": `calibrate --max-drop` on SynthCity at
# 256x512 (the shipped weights; 32 calibration images, 32 held-out val images), both targets,
# a budget the default calibration misses and a heavily clipped one (percentile 99), one of which
# cannot be met. Writes docs/results/max_drop_synthcity.json (~5 min on 2 busy cores):
#   bash benchmarks/max_drop_suite.sh
set -euo pipefail
WORK=${WORK:-runs/max_drop}
RESULTS=${RESULTS:-docs/results}
WEIGHTS=${WEIGHTS:-fornet_deploy/weights/fornet_synthcity.safetensors}
mkdir -p "$WORK/json" "$RESULTS"
[ -f "$WORK/sc/synthcity.json" ] ||
    fornet-deploy synthcity --out "$WORK/sc" --train 64 --val 50 --shape 256x512 --seed 0
[ -f "$WORK/b/model.fp16.onnx" ] ||
    fornet-deploy export --checkpoint "$WEIGHTS" --out "$WORK/b" --shape 256x512 --precision fp16

run() {  # name target max_drop [calibrate options...]: one calibrate, its entry or its error kept
    local name=$1 target=$2 budget=$3
    shift 3
    rm -rf "$WORK/b_$name" && cp -r "$WORK/b" "$WORK/b_$name"
    local start=$SECONDS status=0
    fornet-deploy calibrate --bundle "$WORK/b_$name" --data "$WORK/sc" --num-images 32 --target "$target" \
        --max-drop "$budget" --json "$WORK/json/$name.json" "$@" 2> "$WORK/json/$name.err" || status=$?
    python - "$WORK/json/$name" "$target" "$budget" "$status" $((SECONDS - start)) "$*" <<'EOF'
import json, sys
from pathlib import Path
stem, target, budget, status, wall, options = sys.argv[1:]
entry = json.loads(Path(stem + ".json").read_text()) if status == "0" else None
error = [line for line in Path(stem + ".err").read_text().splitlines() if line.startswith("error:")]
result = {"target": target, "max_drop": float(budget), "options": options, "exit": int(status), "wall_s": int(wall),
          "accuracy_budget": entry and entry["accuracy_budget"], "error": error[0] if error else None}
Path(stem + ".result.json").write_text(json.dumps(result, indent=2))
EOF
}

run trt_entropy tensorrt 0.1
run cpu_entropy cpu 0.01
run trt_p99 tensorrt 1 --method percentile --percentile 99
run cpu_p99_refused cpu 1 --method percentile --percentile 99
run cpu_p99 cpu 1.5 --method percentile --percentile 99
python - "$WORK/json" "$RESULTS/max_drop_synthcity.json" <<'EOF'
import json, os, sys
from pathlib import Path
runs = {p.name[: -len(".result.json")]: json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("*.result.json"))}
machine = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
Path(sys.argv[2]).write_text(json.dumps({"machine": machine, "runs": runs}, indent=2) + "\n")
EOF
