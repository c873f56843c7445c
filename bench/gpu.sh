#!/usr/bin/env bash
# Every GPU measurement in one command (see bench/gpu.py): on one H100/H200 in under 8 minutes.
#
#   bash bench/gpu.sh              # on a CUDA machine: bench/results/gpu.json and a table
#   bash bench/gpu.sh --dry-run    # the same code on the CPU with tiny sizes (CI, < 3 minutes)
#   bash bench/gpu.sh --only sd2 oom
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-$(command -v python || command -v python3)}"
if [[ " $* " != *" --dry-run "* ]]; then
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
        --format=csv,noheader
    "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else \
'no CUDA device: run with --dry-run to check the script on a CPU')"
fi
exec "$python" bench/gpu.py "$@"
