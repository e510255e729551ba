#!/usr/bin/env bash
# One-shot GPU check (issue 8): DiT-XL/2 at 256 px (32x32x4 latents), batch 64.
# Prints images/s, model TFLOP/s and MFU for our bf16+compile recipe, the diffusers DiT peer, the original
# fp32 recipe, and activation checkpointing's memory/speed trade; whether flash SDPA takes the model's
# attention; eager ours and diffusers profiled (PROFILE=0 skips it); then the trainer and sampler CLIs end
# to end on the GPU (benchmarks/gpu_trainer.sh; TRAINER=0 skips it). It took 7 min 23 s on an H200
# (session 35, before the profile was added), about 4 min of it the step benchmark.
# Works offline: without an installed package it runs from this checkout (PYTHONPATH), and the diffusers
# peer is skipped if not importable.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -d .venv ]]; then source .venv/bin/activate; fi
(cd / && python -c "import dit_core") 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
modes=ours-bf16-compile,ours-bf16-ckpt,diffusers-bf16,fp32-nocompile
python -c "import diffusers" 2>/dev/null || { echo "diffusers not importable: its peer row skipped"; modes=${modes/diffusers-bf16,/}; }
timeout 300 python benchmarks/gpu_train.py --model DiT-XL/2 --batch-size 64 --steps "${STEPS:-100}" \
    --warmup "${WARMUP:-10}" --fp32-steps "${FP32_STEPS:-10}" --modes "$modes" "$@"
# Where eager ours loses to eager diffusers (0.94x on the H200, session 35): both profiled, operator by operator.
if [[ "$modes" == *diffusers* && "${PROFILE:-1}" == 1 ]]; then
    timeout 150 python benchmarks/gpu_train.py --model DiT-XL/2 --batch-size 64 --steps 20 --warmup 5 \
        --modes ours-bf16,diffusers-bf16 --profile 5
fi
if [[ "${TRAINER:-1}" == 1 ]]; then timeout 240 bash benchmarks/gpu_trainer.sh; fi
