#!/usr/bin/env bash
# Installs m4v and its dependencies into the current Python, compiling the CUDA extension when nvcc
# is present (a failed compile is then an error). Prints the extension's build time.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "torch==2.14.1" einops numpy safetensors tqdm imageio imageio-ffmpeg pillow pytest pytest-benchmark
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ -x "$CUDA_HOME/bin/nvcc" ] && [ "${M4V_SKIP_CUDA_BUILD:-0}" != "1" ]; then
  export M4V_FORCE_CUDA_BUILD=1
fi
start=$(date +%s)
python3 -m pip install -v --no-build-isolation -e . >/tmp/m4v-build.log 2>&1 || { tail -60 /tmp/m4v-build.log; exit 1; }
grep "m4v setup:" /tmp/m4v-build.log || true
echo "m4v install (build included): $(( $(date +%s) - start )) s"
python3 -c "import m4v.kernels as k; [print(f'  backend {n}: {s.usable} ({s.reason})') for n, s in k.available_backends().items()]"
