#!/usr/bin/env bash
# One-shot GPU check (issue 8): DiT-XL/2 at 256 px (32x32x4 latents), batch 64.
# Prints images/s, model TFLOP/s and MFU for our bf16+compile recipe, the diffusers DiT peer, the original
# fp32 recipe, and activation checkpointing's memory/speed trade. Budget: under 8 minutes on an H100.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -d .venv ]]; then source .venv/bin/activate; fi
python -c "import dit_core" 2>/dev/null || pip install -q -e . --no-deps
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
exec timeout 470 python benchmarks/gpu_train.py --model DiT-XL/2 --batch-size 64 --steps "${STEPS:-200}" \
    --warmup "${WARMUP:-15}" "$@"
