#!/usr/bin/env bash
# The Pong teacher on a lent GPU, as one script (run from the repo root; results land in $OUT).
#
#   run(command="bash benchmarks/device/teacher_run.sh", timeout_s=540)
#
# Records Pong, trains the autoencoder and the AR teacher (the small-ctx preset), writes the
# learnability probe, and copies the world files back through $OUT. Every stage stops on its own
# time limit with a checkpoint, so the script fits the device budget; rerunning it on the same warm
# machine resumes each stage. Budgets (minutes) can be set from the environment.
set -euo pipefail
OUT=${OUT:-runs/device-out}
AE_MINUTES=${AE_MINUTES:-2.5}
TEACHER_MINUTES=${TEACHER_MINUTES:-4.5}
mkdir -p "$OUT" runs
if [ ! -d .venv ]; then
  python3 -m venv .venv && . .venv/bin/activate && pip install -q torch torchvision && pip install -q -e '.[dev]'
else
  . .venv/bin/activate
fi
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" || true
[ -d data/pong ] || worldsdk record --env ALE/Pong-v5 --episodes 100 --out data/pong --policy scripted --style-switch-fraction 0.25 --quiet
[ -d data/pong-fresh ] || worldsdk record --env ALE/Pong-v5 --episodes 8 --out data/pong-fresh --policy random --seed 8000 --quiet
worldsdk-train stage=autoencoder model=small data=data/pong run_dir=runs/gpu/ae loop.device=cuda loop.batch_size=64 \
    loop.max_steps=20000 loop.time_limit_minutes="$AE_MINUTES" loop.progress=false 2>&1 | tail -n 5 | tee "$OUT/ae.log"
AE=runs/gpu/ae/autoencoder.safetensors
if [ ! -f "$AE" ]; then  # stopped by its time limit: export the newest checkpoint's autoencoder
  python - <<'PY'
from pathlib import Path
import torch
from trainers.loop import latest_checkpoint
from worldsdk.autoencoder import AUTOENCODER_PRESETS, FrameAutoencoder, save_autoencoder
from worldsdk.train_checkpoint import load_train_state
state = load_train_state(latest_checkpoint(Path("runs/gpu/ae")))
ae = FrameAutoencoder(AUTOENCODER_PRESETS["small"])
ae.load_state_dict(state.ema.get("autoencoder") or state.modules["autoencoder"])
save_autoencoder("runs/gpu/ae/autoencoder.safetensors", ae)
PY
fi
python -c "from worldsdk.autoencoder import load_autoencoder; from worldsdk.data.latents import build_latent_cache; \
build_latent_cache('data/pong', load_autoencoder('$AE', 'cuda'), 'runs/gpu/latents', progress=False)"
worldsdk-train stage=teacher model=small-ctx stage.latents=runs/gpu/latents stage.autoencoder="$AE" \
    stage.optimizer.lr=1e-3 stage.optimizer.warmup_steps=200 stage.optimizer.decay=constant stage.ema_decay=0.999 \
    run_dir=runs/gpu/teacher loop.device=cuda loop.batch_size=32 loop.max_steps=20000 loop.checkpoint_every=1000 \
    loop.time_limit_minutes="$TEACHER_MINUTES" loop.progress=false 2>&1 | tail -n 5 | tee "$OUT/teacher.log"
cp runs/gpu/ae/autoencoder.safetensors "$OUT/" 2>/dev/null || true
cp runs/gpu/teacher/metrics.jsonl "$OUT/teacher-metrics.jsonl" 2>/dev/null || true
ls -t runs/gpu/teacher/checkpoints/* 2>/dev/null | head -n 1 | xargs -r -I{} cp -r {} "$OUT/"
[ -f runs/gpu/teacher/world.safetensors ] && cp runs/gpu/teacher/world.safetensors "$OUT/teacher.safetensors" && \
  python benchmarks/learnability.py --worlds runs/gpu/teacher/world.safetensors --data data/pong-fresh --out "$OUT/probe.json" | tee "$OUT/probe.md"
echo done
