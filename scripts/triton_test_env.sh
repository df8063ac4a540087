#!/usr/bin/env bash
# A real Triton server for tests/package/test_triton_server.py, without a GPU or Docker.
#
# The nvidia-pytriton wheel carries a real `tritonserver` binary (Triton 2.51) with the
# Python backend only. Its backend stub embeds Debian's libpython3.11 (3.11.2) and takes
# its standard library from the first `python3` on PATH: it must be Debian's own, so the
# environment is made with /usr/bin/python3.11 (with a newer 3.11 first on PATH the stub
# fails: its interpreter has no `_thread.RLock._recursion_count`). The stub imports numpy
# and onnxruntime from this environment to run the ONNX graph.
#
# usage: scripts/triton_test_env.sh [ENV_DIR]   (default .venv-triton; the test reads
# FORNET_TRITON_ENV or .venv-triton and skips, saying why, when it is missing)
set -euo pipefail
cd "$(dirname "$0")/.."
ENV_DIR=${1:-.venv-triton}
PYTHON=/usr/bin/python3.11
if [ ! -x "$PYTHON" ]; then
    echo "triton test env: $PYTHON not found, the Triton server test will skip" >&2
    exit 0
fi
"$PYTHON" -m venv "$ENV_DIR"
"$ENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check "nvidia-pytriton==0.7.0" onnxruntime
echo "triton test env ready: $ENV_DIR"
