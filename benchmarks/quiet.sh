# Shared by benchmarks/run_speed_suite.sh and run_openvino_suite.sh (sourced, not run).

# wait_quiet: wait (up to WAIT_MAX s) for the 1-minute load average to fall below QUIET_LOAD
wait_quiet() {
  local waited=0
  while awk -v q="$QUIET_LOAD" '{exit !($1 > q)}' /proc/loadavg && [ "$waited" -lt "$WAIT_MAX" ]; do
    sleep 15; waited=$((waited + 15))
  done
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (waited ${waited} s)"
}
