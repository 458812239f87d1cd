#!/usr/bin/env bash
# The long Pong teacher run on the 2-core CPU, one thread, resumable across sessions and machines.
#
#   nohup bash benchmarks/pong_long_run.sh > runs/pong3.log 2>&1 &
#
# Every step is skipped when its output exists and resumes from its last checkpoint otherwise, so the
# same command picks the run up after Ctrl-C, a time limit or on a new machine (where it first
# re-records the games and retrains the autoencoder: recordings are seeded, about 40 min in all).
# The teacher runs in two phases (below); the autoencoder's decoder is fine-tuned on the side.
# Every 500 steps metrics.jsonl gets the learnability probe on data/pong's test episodes (eval/probe/...).
# Probe a checkpoint on the held-out recordings while it trains:
#   python -m trainers.snapshot runs/pong3/teacher-causal
#   python benchmarks/learnability.py --worlds runs/pong3/teacher-causal/snapshots/step_<N>/world.safetensors --data data/pong-fresh
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
RUN=${RUN:-runs/pong3}
AE_STEPS=${AE_STEPS:-8000}
TEACHER_STEPS=${TEACHER_STEPS:-5739}
AMAP_STEPS=${AMAP_STEPS:-30000}
MODEL=${MODEL:-small-ctx}
export OMP_NUM_THREADS=1
mkdir -p "$RUN"

if [ ! -f data/pong/index.json ]; then
  worldsdk record --env ALE/Pong-v5 --episodes 60 --policy scripted --seed 0 --style-switch-fraction 0.25 --out data/pong --quiet
  worldsdk record --env ALE/Pong-v5 --episodes 40 --policy random --seed 1000 --style-switch-fraction 0.25 --out data/pong --quiet
fi
if [ ! -f data/pong-fresh/index.json ]; then  # held out: new seeds, both players
  worldsdk record --env ALE/Pong-v5 --episodes 6 --policy scripted --seed 7000 --style-switch-fraction 0.25 --out data/pong-fresh --quiet
  worldsdk record --env ALE/Pong-v5 --episodes 6 --policy random --seed 8000 --style-switch-fraction 0.25 --out data/pong-fresh --quiet
fi

AE="$RUN/autoencoder/autoencoder.safetensors"
[ -f "$AE" ] || worldsdk-train stage=autoencoder model=small data=data/pong run_dir="$RUN/autoencoder" \
  loop.max_steps="$AE_STEPS" loop.threads=1 loop.eval_every=4000 loop.checkpoint_every=500 loop.progress=false

# The decoder alone, fine-tuned in rounds (the latents stay the same; docs/training.md, "Fine-tuning only
# the decoder"); a world gets it with `worldsdk export --decoder-from "$RUN/decoder6/autoencoder.safetensors"`.
previous="$AE"
for round in "decoder 3000" "decoder2 8000" "decoder3 8000" "decoder4 8000" "decoder5 8000" "decoder6 8000"; do
  set -- $round
  [ -f "$RUN/$1/autoencoder.safetensors" ] || worldsdk-train stage=autoencoder model=small data=data/pong \
    run_dir="$RUN/$1" stage.init="$previous" stage.train_encoder=false stage.relative_hard_pixel_weight=1.0 \
    stage.optimizer.lr=5e-4 stage.optimizer.warmup_steps=50 loop.max_steps="$2" loop.threads=1 \
    loop.eval_every=4000 loop.checkpoint_every=500 loop.progress=false
  previous="$RUN/$1/autoencoder.safetensors"
done

python -c "
from worldsdk.autoencoder import load_autoencoder
from worldsdk.data.latents import build_latent_cache
build_latent_cache('data/pong', load_autoencoder('$AE'), '$RUN/latents', progress=False)"  # encodes only what is missing

# Phase 1: the `small-ctx` teacher from scratch (5,739 steps; its actions stayed ignored, docs/worlds.md).
worldsdk-train stage=teacher model="$MODEL" stage.latents="$RUN/latents" stage.autoencoder="$AE" \
  stage.probe_data=data/pong stage.probe_clips_per_episode=8 loop.eval_every=500 \
  run_dir="$RUN/teacher-causal" loop.max_steps="$TEACHER_STEPS" loop.batch_size=8 loop.precision=bf16 loop.threads=1 \
  loop.checkpoint_every=200 loop.keep_checkpoints=4 loop.log_every=20 loop.progress=false

# Phase 2: phase 1's world grown with a per-place action map, more training draws at high noise.
worldsdk-train stage=teacher stage.init="$RUN/teacher-causal/world.safetensors" stage.latents="$RUN/latents" \
  +stage.grow.action_map=true stage.draw_shift=3 \
  stage.probe_data=data/pong stage.probe_clips_per_episode=8 loop.eval_every=500 \
  run_dir="$RUN/teacher-amap" loop.max_steps="$AMAP_STEPS" loop.batch_size=8 loop.precision=bf16 loop.threads=1 \
  loop.checkpoint_every=200 loop.keep_checkpoints=4 loop.log_every=20 loop.progress=false
