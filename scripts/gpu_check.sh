#!/usr/bin/env bash
# The prepared check for a lent GPU machine (about 5-8 minutes on one H100): CUDA + bf16 autocast
# correctness of the attacks, PGD-AT throughput (callback vs hand-written loop, fp32 and bf16)
# and randomized-smoothing certify throughput. Paste its Markdown output into BENCHMARKS.md.
# Usage on the device: bash scripts/gpu_check.sh  (the repo's package must be importable).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --device cuda "$@" | tee "${OUT:-/tmp}/gpu_check.md"
