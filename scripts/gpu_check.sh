#!/usr/bin/env bash
# The prepared check for a lent GPU machine (about 4-6 minutes on one H100/H200):
#  1-4. scripts/bench/gpu_check.py: PGD-AT on digits in 32-true / bf16-mixed / 16-mixed judged by
#       AutoAttack, attacks under bf16/fp16 autocast vs fp32 and CPU vs CUDA, the float16
#       underflow control, PGD-AT throughput callback vs hand-written, smoothing certify rate;
#  5.   the CLI end to end on the GPU: advtrain-train trainer=gpu trainer.precision=16-mixed
#       (skipped where Hydra is not importable, or with SKIP_CLI=1);
#  6.   scripts/bench/callback.py --accelerator gpu: each training method through its callback vs
#       written by hand inside training_step, on digits, same run (about 3 minutes; skipped with
#       SKIP_CALLBACK_BENCH=1).
# Paste its Markdown output into BENCHMARKS.md.
# Usage on the device: [SKIP_CLI=1] [SKIP_CALLBACK_BENCH=1] bash scripts/gpu_check.sh [gpu_check args],
# e.g. SKIP_CLI=1 bash scripts/gpu_check.sh --sections 3 (throughput and the callback bench only); the repo's package must be
# importable (PYTHONPATH=src is set here) and its dependencies installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
OUTDIR="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
PYTHONUNBUFFERED=1 python3 -m scripts.bench.gpu_check --device cuda "$@" | tee "$OUTDIR/gpu_check.md"

if [[ "${SKIP_CLI:-0}" != 1 ]] && python3 -c "import hydra, omegaconf" 2>/dev/null; then
    echo
    echo "### 5. advtrain-train on the GPU (trainer=gpu trainer.precision=16-mixed)"
    echo
    start=$(date +%s)
    PYTHONUNBUFFERED=1 python3 -m advtrain.cli.train trainer=gpu trainer.precision=16-mixed \
        trainer.enable_progress_bar=false hydra.run.dir=/tmp/advtrain_gpu_cli 2>&1 |
        grep -v -i "warn" | tail -n 12 | tee -a "$OUTDIR/gpu_check.md"
    cp /tmp/advtrain_gpu_cli/report.md "$OUTDIR/cli_report.md" || true
    echo "($(( $(date +%s) - start )) s)" | tee -a "$OUTDIR/gpu_check.md"
fi

if [[ "${SKIP_CALLBACK_BENCH:-0}" != 1 ]]; then
    printf '\n### 6. Each method through its callback vs by hand, on the GPU (scripts.bench.callback)\n\n```\n' |
        tee -a "$OUTDIR/gpu_check.md"
    PYTHONUNBUFFERED=1 python3 -m scripts.bench.callback --accelerator gpu --epochs 8 \
        --repeats 12 --skip-accuracy --methods pgd_at trades mart fast_at free_at 2>&1 |
        grep -v -i "warn" | tee -a "$OUTDIR/gpu_check.md"
    echo '```' | tee -a "$OUTDIR/gpu_check.md"
fi
