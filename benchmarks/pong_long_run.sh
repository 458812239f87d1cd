#!/usr/bin/env bash
# The long Pong teacher runs on the 2-core CPU, one thread each, resumable across sessions and machines.
# GAME=breakout runs the same parts on Breakout (data/breakout, runs/breakout3; session 12).
#
#   nohup bash benchmarks/pong_long_run.sh phases > runs/pong3.log 2>&1 &     # the two-phase teacher
#   nohup bash benchmarks/pong_long_run.sh map > runs/pong3-map.log 2>&1 &    # the one-phase teacher
#   nohup bash benchmarks/pong_long_run.sh local > runs/pong3-local.log 2>&1 &  # + the convolutional local path
#   nohup bash benchmarks/pong_long_run.sh decoders > runs/pong3-dec.log 2>&1 &
#   nohup bash benchmarks/pong_long_run.sh shipped-decoders > runs/pong3-sdec.log 2>&1 &  # the shipped pong's decoder
#   nohup bash benchmarks/pong_long_run.sh warm > runs/pong3-warm.log 2>&1 &    # a new machine: from the shipped pong
#   nohup bash benchmarks/pong_long_run.sh conv > runs/pong3-conv.log 2>&1 &    # + the local path alone, trunk frozen
#   nohup bash benchmarks/pong_long_run.sh predictor > runs/pong3-pred.log 2>&1 &  # + the history predictor
#   GAME=breakout AUTOENCODER=shipped TEACHER_THREADS=2 nohup bash benchmarks/pong_long_run.sh map > runs/breakout3-map.log 2>&1 &
#
# AUTOENCODER=shipped: phases, map and local use the shipped world's autoencoder (and its latents) instead of training one.
#
# Every part first makes what it needs (the recordings and the autoencoder, about 30 min on a new
# machine; seeded) and skips what exists; a training run resumes from its last checkpoint, so the same
# command picks the run up after Ctrl-C, a time limit or on a new machine.
#   phases    phase 1: the `small-ctx` teacher from scratch (5,739 steps; its keys stayed ignored), then
#             phase 2: grown with the per-place action map, shift-3 training draws (runs/pong3/teacher-amap)
#   map       one phase: the action map and the shift-3 draws from step 0 (runs/pong3/teacher-map); the clean
#             history noised up to CONTEXT_NOISE (default 0.3; GameNGen's augmentation against the drift of
#             long rollouts): session 7 switched it on at step 8,257, resuming the run with the changed config
#   local     the one-phase teacher at step LOCAL_FROM (default 10,600; made first if missing) grown with the
#             convolutional local path (ModelConfig.local_channels = LOCAL_CHANNELS, default 64) and trained on with
#             the same settings (runs/pong3/teacher-local; session 8: the ball from history)
#   decoders  the autoencoder's decoder alone, fine-tuned in six rounds (the latents stay the same;
#             docs/training.md, "Fine-tuning only the decoder"); a world gets it with
#             `worldsdk export --decoder-from runs/pong3/decoder6/autoencoder.safetensors`
#   shipped-decoders  the same six rounds on the shipped `pong`'s autoencoder (runs/pong3/sdec1 ... sdec6; session 11):
#             the decoder of every world on its latents (the shipped one, the warm, conv and predictor teachers' students)
#   warm      a teacher again from the shipped `pong` (the causal ODE student of the step-10,600 teacher, in git):
#             its weights fine-tuned with the teacher's objective for WARM_STEPS (default 1,000) on latents of the
#             shipped autoencoder (runs/pong3/teacher-warm); no autoencoder run. What a new machine starts from
#             instead of 4 h of teacher from scratch (docs/worlds.md, session 9)
#   conv      the warm teacher grown with the convolutional local path, which alone trains (stage.trainable=[local],
#             batch CONV_BATCH, default 16) while the trunk and text encoder stay frozen (runs/pong3/teacher-conv):
#             the locality experiment of benchmarks/ball_from_history.py inside the world
#   predictor the shipped `pong` (as warm does; PRED_FROM: another world) grown with the history predictor
#             (ModelConfig.predictor_channels = PRED_CHANNELS, default 96, PRED_BLOCKS blocks, default 6: the net of
#             benchmarks/ball_from_history.py, trained by its own regression beside the diffusion loss); the whole model
#             trains (runs/pong3/$PRED_NAME, default teacher-pred; session 10)
# Every 500 steps metrics.jsonl gets the learnability probe on data/pong's test episodes (eval/probe/...).
# Probe a checkpoint on the held-out recordings while it trains:
#   python -m trainers.snapshot runs/pong3/teacher-amap
#   python benchmarks/learnability.py --worlds runs/pong3/teacher-amap/snapshots/step_<N>/world.safetensors --data data/pong-fresh
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
PART=${1:-phases}
GAME=${GAME:-pong}
case "$GAME" in pong) ENV_ID=ALE/Pong-v5;; breakout) ENV_ID=ALE/Breakout-v5;;
  *) echo "GAME must be pong or breakout, not '$GAME'" >&2; exit 2;; esac
DATA=data/$GAME
RUN=${RUN:-runs/${GAME}3}
AUTOENCODER=${AUTOENCODER:-train}
AE_STEPS=${AE_STEPS:-8000}
AE_THREADS=${AE_THREADS:-1}
TEACHER_THREADS=${TEACHER_THREADS:-1}  # 2 on an otherwise idle 2-core CPU: 0.97 s/step against 1.75 (fp32, AVX2)
TEACHER_STEPS=${TEACHER_STEPS:-5739}
AMAP_STEPS=${AMAP_STEPS:-30000}
MODEL=${MODEL:-small-ctx}
CONTEXT_NOISE=${CONTEXT_NOISE:-0.3}
export OMP_NUM_THREADS=1
LOCAL_FROM=${LOCAL_FROM:-10600}
LOCAL_CHANNELS=${LOCAL_CHANNELS:-64}
WARM_STEPS=${WARM_STEPS:-1000}
CONV_STEPS=${CONV_STEPS:-30000}
CONV_BATCH=${CONV_BATCH:-16}
CONV_NAME=${CONV_NAME:-teacher-conv}  # session 9: teacher-conv-clean with CONTEXT_NOISE=0
CONV_DRAW_SHIFT=${CONV_DRAW_SHIFT:-3}  # the conv run's training draws: 20 puts most of them above sigma 0.9
PRED_CHANNELS=${PRED_CHANNELS:-96}
PRED_BLOCKS=${PRED_BLOCKS:-6}
PRED_STEPS=${PRED_STEPS:-30000}
PRED_NAME=${PRED_NAME:-teacher-pred}
PRED_FROM=${PRED_FROM:-worldsdk/worlds/$GAME.safetensors}  # the shipped student: a teacher again after 500 steps (warm)
case "$PART" in phases|map|local|decoders|shipped-decoders|warm|conv|predictor) ;;
  *) echo "usage: $0 [phases|map|local|decoders|shipped-decoders|warm|conv|predictor]" >&2; exit 2;; esac
mkdir -p "$RUN"

if [ ! -f $DATA/index.json ]; then
  worldsdk record --env $ENV_ID --episodes 60 --policy scripted --seed 0 --style-switch-fraction 0.25 --out $DATA --quiet
  worldsdk record --env $ENV_ID --episodes 40 --policy random --seed 1000 --style-switch-fraction 0.25 --out $DATA --quiet
fi
if [ ! -f $DATA-fresh/index.json ]; then  # held out: new seeds, both players
  worldsdk record --env $ENV_ID --episodes 6 --policy scripted --seed 7000 --style-switch-fraction 0.25 --out $DATA-fresh --quiet
  worldsdk record --env $ENV_ID --episodes 6 --policy random --seed 8000 --style-switch-fraction 0.25 --out $DATA-fresh --quiet
fi

[ "$AUTOENCODER" = shipped ] || [ "$AUTOENCODER" = train ] || { echo "AUTOENCODER must be shipped or train" >&2; exit 2; }
[ "$AUTOENCODER" = train ] || PART_AE=shipped
case "${PART_AE:-$PART}" in  # warm, conv and predictor start from the shipped world: its autoencoder, hence the latents its weights know
  shipped|warm|conv|predictor|shipped-decoders)
    AE="$RUN/autoencoder-shipped/autoencoder.safetensors"; LATENTS="$RUN/latents-shipped"
    [ -f "$AE" ] || python -c "
from pathlib import Path
from worldsdk import World
from worldsdk.autoencoder import save_autoencoder
Path('$AE').parent.mkdir(parents=True, exist_ok=True)
save_autoencoder('$AE', World.load('$GAME').autoencoder)";;
  *) AE="$RUN/autoencoder/autoencoder.safetensors"; LATENTS="$RUN/latents";;
esac
[ -f "$AE" ] || OMP_NUM_THREADS=$AE_THREADS worldsdk-train stage=autoencoder model=small data=$DATA \
  run_dir="$RUN/autoencoder" loop.max_steps="$AE_STEPS" loop.threads="$AE_THREADS" loop.eval_every=4000 \
  loop.checkpoint_every=500 loop.progress=false

if [ "$PART" = decoders ] || [ "$PART" = shipped-decoders ]; then
  previous="$AE"
  rounds=("decoder 3000" "decoder2 8000" "decoder3 8000" "decoder4 8000" "decoder5 8000" "decoder6 8000")
  [ "$PART" = decoders ] || rounds=("sdec1 3000" "sdec2 8000" "sdec3 8000" "sdec4 8000" "sdec5 8000" "sdec6 8000")
  for round in "${rounds[@]}"; do
    set -- $round
    [ -f "$RUN/$1/autoencoder.safetensors" ] || worldsdk-train stage=autoencoder model=small data=$DATA \
      run_dir="$RUN/$1" stage.init="$previous" stage.train_encoder=false stage.relative_hard_pixel_weight=1.0 \
      stage.optimizer.lr=5e-4 stage.optimizer.warmup_steps=50 loop.max_steps="$2" loop.threads=1 \
      loop.eval_every=4000 loop.checkpoint_every=500 loop.progress=false
    previous="$RUN/$1/autoencoder.safetensors"
  done
  exit 0
fi

python -c "
from worldsdk.autoencoder import load_autoencoder
from worldsdk.data.latents import build_latent_cache
build_latent_cache('$DATA', load_autoencoder('$AE'), '$LATENTS', progress=False)"  # encodes only what is missing

# Shared by every teacher run: batch 8, one thread (TEACHER_THREADS), the precision this CPU runs fastest (bf16 only where it
# is native: an AVX2 CPU emulates it 20x slower), the probe every 500 steps, a checkpoint every 200.
COMMON=(stage.latents="$LATENTS" stage.probe_data=$DATA stage.probe_clips_per_episode=8 loop.eval_every=500
  loop.batch_size=8 loop.precision=fastest loop.threads="$TEACHER_THREADS" loop.checkpoint_every=200 loop.keep_checkpoints=4
  loop.log_every=20 loop.progress=false)

export OMP_NUM_THREADS=$TEACHER_THREADS
map_teacher() {  # the one-phase teacher up to step $1
  worldsdk-train stage=teacher model="$MODEL" stage.autoencoder="$AE" +stage.grow.action_map=true stage.draw_shift=3 \
    stage.context_noise="$CONTEXT_NOISE" run_dir="$RUN/teacher-map" loop.max_steps="$1" "${COMMON[@]}"
}
if [ "$PART" = map ]; then
  map_teacher "$AMAP_STEPS"
  exit 0
fi
warm_teacher() {
  worldsdk-train stage=teacher stage.init=worldsdk/worlds/$GAME.safetensors stage.draw_shift=3 \
    stage.context_noise="$CONTEXT_NOISE" run_dir="$RUN/teacher-warm" loop.max_steps="$WARM_STEPS" "${COMMON[@]}"
}
if [ "$PART" = warm ]; then
  warm_teacher
  exit 0
fi
if [ "$PART" = conv ]; then
  [ -f "$RUN/teacher-warm/world.safetensors" ] || warm_teacher
  worldsdk-train stage=teacher stage.init="$RUN/teacher-warm/world.safetensors" +stage.grow.local_channels="$LOCAL_CHANNELS" \
    'stage.trainable=[local]' stage.draw_shift="$CONV_DRAW_SHIFT" stage.context_noise="$CONTEXT_NOISE" run_dir="$RUN/$CONV_NAME" \
    loop.max_steps="$CONV_STEPS" "${COMMON[@]}" loop.batch_size="$CONV_BATCH"
  exit 0
fi
if [ "$PART" = predictor ]; then
  worldsdk-train stage=teacher stage.init="$PRED_FROM" +stage.grow.predictor_channels="$PRED_CHANNELS" \
    +stage.grow.predictor_blocks="$PRED_BLOCKS" stage.draw_shift=3 stage.context_noise="$CONTEXT_NOISE" run_dir="$RUN/$PRED_NAME" \
    loop.max_steps="$PRED_STEPS" "${COMMON[@]}"
  exit 0
fi
if [ "$PART" = local ]; then
  from=$(printf '%s/teacher-map/snapshots/step_%08d/world.safetensors' "$RUN" "$LOCAL_FROM")
  if [ ! -f "$from" ]; then
    map_teacher "$LOCAL_FROM"
    python -m trainers.snapshot "$RUN/teacher-map" --step "$LOCAL_FROM"
  fi
  worldsdk-train stage=teacher stage.init="$from" +stage.grow.local_channels="$LOCAL_CHANNELS" stage.draw_shift=3 \
    stage.context_noise="$CONTEXT_NOISE" run_dir="$RUN/teacher-local" loop.max_steps="$AMAP_STEPS" "${COMMON[@]}"
  exit 0
fi

worldsdk-train stage=teacher model="$MODEL" stage.autoencoder="$AE" \
  run_dir="$RUN/teacher-causal" loop.max_steps="$TEACHER_STEPS" "${COMMON[@]}"
worldsdk-train stage=teacher stage.init="$RUN/teacher-causal/world.safetensors" +stage.grow.action_map=true \
  stage.draw_shift=3 run_dir="$RUN/teacher-amap" loop.max_steps="$AMAP_STEPS" "${COMMON[@]}"
