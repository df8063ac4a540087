# Shared by benchmarks/gpu_suite.sh and gpu_torch_suite.sh (sourced, not run).

# require_gpu SUITE: one line on stderr and exit 5 (fornet-deploy's "missing hardware") without an NVIDIA GPU
require_gpu() {
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
        echo "$1: no NVIDIA GPU here (nvidia-smi lists none); run it on a machine with one" >&2
        exit 5
    fi
}

# step NAME BUDGET_SECONDS COMMAND...: run with a time limit, log to OUT/logs/NAME.log, record the
# result in OUT/steps.txt; a step that fails or runs out of time does not stop the suite
step() {
    local name=$1 budget=$2 start rc
    shift 2
    start=$(date +%s)
    timeout --kill-after=10 "$budget" "$@" >"$OUT/logs/$name.log" 2>&1
    rc=$?
    printf '%-24s rc=%-3s %4ss (budget %ss)\n' "$name" "$rc" "$(( $(date +%s) - start ))" "$budget" | tee -a "$OUT/steps.txt"
    return $rc
}
