#!/usr/bin/env bash
# The trainer and sampler CLIs end to end on a GPU (run by gpu_check.sh after the step benchmark):
# bf16 + torch.compile + fused AdamW + flash SDPA through `python -m dit_core.train`, exact resume
# from a mid-run checkpoint (weights compared with the uninterrupted run), activation checkpointing,
# and DDIM sampling with guidance from the checkpoint (EMA decay 0.99: at DiT's 0.9999 a 200-step run's
# EMA is still 98 % its initialisation, and its samples noise). No MLflow (--no-mlflow), no downloads.
# MODEL / SIZE / BATCH / TRAIN_STEPS / OUTDIR override the defaults (a CPU smoke: MODEL=DiT-S/2 SIZE=8 BATCH=8 TRAIN_STEPS=4).
set -euo pipefail
cd "$(dirname "$0")/.."
(cd / && python -c "import dit_core") 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
MODEL=${MODEL:-DiT-B/2} SIZE=${SIZE:-32} BATCH=${BATCH:-256} STEPS=${TRAIN_STEPS:-200}
OUTDIR=${OUTDIR:-$(mktemp -d)}
trap 'rm -rf "$OUTDIR"/a "$OUTDIR"/b "$OUTDIR"/c "$OUTDIR"/d' EXIT  # the runs' checkpoints; the grid stays
half=$((STEPS / 2))
common=(--model "$MODEL" --data photos --image-size "$SIZE" --global-batch-size "$BATCH" --no-mlflow
        --ema-decay 0.99 --max-steps "$STEPS" --ckpt-every "$half" --keep-last 4 --val-every "$half" --eval-every 0 --log-every 50)
echo "== train $MODEL at ${SIZE}px, batch $BATCH, $STEPS steps: bf16, compile on"
python -m dit_core.train "${common[@]}" --precision bf16 --compile on --out "$OUTDIR/a" 2>&1 | grep -E "training|img/s|val/loss|compile|finished"
echo "== the same without compile (the run resumed below)"
python -m dit_core.train "${common[@]}" --precision bf16 --compile off --out "$OUTDIR/b" 2>&1 | grep -E "img/s|finished"
cp -r "$OUTDIR/b" "$OUTDIR/c"
rm "$OUTDIR/c/checkpoints/step_$(printf %07d "$STEPS").pt"
echo "== resume at step $half (its last checkpoint removed)"
python -m dit_core.train "${common[@]}" --precision bf16 --compile off --out "$OUTDIR/c" --resume auto 2>&1 | grep -E "resum|finished"
python - "$OUTDIR" "$STEPS" <<'PY'
import sys, torch
out, steps = sys.argv[1], int(sys.argv[2])
name = f"checkpoints/step_{steps:07d}.pt"
b, c = (torch.load(f"{out}/{r}/{name}", map_location="cpu", weights_only=False) for r in "bc")
def diff(key):
    return max((b[key][k].float() - c[key][k].float()).abs().max().item() for k in b[key])
keys = [k for k in ("model", "ema") if k in b]
print("resume: max |uninterrupted - resumed| over " + ", ".join(f"{k} {diff(k):.3g}" for k in keys))
PY
echo "== activation checkpointing"
python -m dit_core.train "${common[@]}" --max-steps "$half" --precision bf16 --grad-checkpointing true \
  --compile off --out "$OUTDIR/d" 2>&1 | grep -E "img/s|finished"
echo "== sample: DDIM 50 steps, cfg 4"
python -m dit_core.sample --checkpoint "$OUTDIR/a" --out "$OUTDIR/grid.png" --sampler ddim --steps 50 \
  --cfg-scale 4 --num-samples 16 --device "${DEVICE:-auto}"
ls -la "$OUTDIR/grid.png"
