#!/usr/bin/env bash
# The few-step Pong world from a long-run teacher (benchmarks/pong_long_run.sh), on the 2-core CPU,
# one thread beside the long run (THREADS=2 with the long run stopped); resumable like it (each step skips
# what exists):
#
#   nohup bash benchmarks/pong_distill.sh > runs/pong4.log 2>&1 &                     # phase 2's teacher
#   TEACHER=teacher-map nohup bash benchmarks/pong_distill.sh > runs/pong4.log 2>&1 &  # the one-phase teacher
#   TEACHER=teacher-map STEP=7000 THREADS=2 ABLATION=1 ODE_GUIDANCE=6 CONTEXT_NOISE=0 PLAY_NOISE=0 \
#     STUDENT=dmd-causal-forcing bash benchmarks/pong_distill.sh                       # session 6's run
#   TEACHER=teacher-map STEP=7000 RUN=runs/pong6 SHIP=1 bash benchmarks/pong_distill.sh  # the shipped pong (session 7)
#   TEACHER=teacher-conv LATENTS=runs/pong3/latents-shipped AE=runs/pong3/autoencoder-shipped/autoencoder.safetensors \
#     RUN=runs/pong9 bash benchmarks/pong_distill.sh                                   # session 9: from the shipped world
#   GAME=breakout TEACHER=teacher-map LATENTS=runs/breakout3/latents-shipped \
#     AE=runs/breakout3/autoencoder-shipped/autoencoder.safetensors bash benchmarks/pong_distill.sh  # Breakout (session 12)
#
# GAME (pong or breakout) picks the recordings (data/$GAME, held out: data/$GAME-fresh), the world's name and the
# default folders (runs/${GAME}3 -> runs/${GAME}4); STORAGE the shipped weights' (int8; breakout: int4, for the budget).
#
# 1. the teacher run's latest checkpoint (STEP: a given one; its EMA weights, RAW=1 the trained ones) becomes
#    runs/pong4/teacher-causal (kept once made: delete that folder to distil a later checkpoint);
# 2. for DMD (STUDENT=dmd-causal-forcing or ABLATION=1), the bidirectional teacher (its real score) is
#    fine-tuned from it, not trained from scratch;
# 3. the recipe's causal ODE initialisation (trajectories at CFG ODE_GUIDANCE, the student's history noised up
#    to CONTEXT_NOISE) and, for STUDENT=dmd-causal-forcing, Causal Forcing DMD;
# 4. `worldsdk eval` of the student ($RUN/$STUDENT) on the held-out recordings, committing its history noised to
#    PLAY_NOISE (WorldSpec.context_noise), with the sixth decoder round swapped in where it exists;
# 5. ABLATION=1: the Self Forcing style student from the same teachers (bidirectional ODE + DMD) and
#    benchmarks/ablation.py on the held-out recordings, its students against the Causal Forcing one (about
#    13 min a row on the shared CPU; session 6's table in docs/worlds.md used `worldsdk eval` per world);
# 6. SHIP=1: replaces the shipped `pong` (worldsdk/worlds/pong.safetensors) with the student: a reward model
#    trained on the latents, int8 storage, a bank of 8 real starts. Only after its eval beats the shipped
#    world's (session 6's student did not: it collapses after 16-32 frames; session 7's ODE student, trained
#    and played with a noised history, does not).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
GAME=${GAME:-pong}
case "$GAME" in pong|breakout) ;; *) echo "GAME must be pong or breakout, not '$GAME'" >&2; exit 2;; esac
[ "$GAME" = pong ] && STORAGE=${STORAGE:-int8} || STORAGE=${STORAGE:-int4}
FROM=${FROM:-runs/${GAME}3}
TEACHER=${TEACHER:-teacher-amap}  # the teacher run in $FROM: teacher-amap (two phases) or teacher-map (one)
RUN=${RUN:-runs/${GAME}4}
BIDIRECTIONAL_STEPS=${BIDIRECTIONAL_STEPS:-600}
ODE_GUIDANCE=${ODE_GUIDANCE:-3}  # CFG of the causal ODE trajectories: 3 drifts less than the paper's 6 (session 7)
CONTEXT_NOISE=${CONTEXT_NOISE:-0.3}  # GameNGen's noise on the causal ODE student's clean history (training)
PLAY_NOISE=${PLAY_NOISE:-0.25}  # the noise level the world commits its history at when played
STUDENT=${STUDENT:-ode-causal}  # the world evaluated and shipped: ode-causal or dmd-causal-forcing
LATENTS=${LATENTS:-$FROM/latents}  # $FROM/latents-shipped for the teachers warmed from the shipped world (warm, conv)
AE=${AE:-$FROM/autoencoder/autoencoder.safetensors}  # the autoencoder that made them ($FROM/autoencoder-shipped/...)
THREADS=${THREADS:-1}  # 2 when the long run is stopped meanwhile (the 2-core CPU otherwise idle)
export OMP_NUM_THREADS=$THREADS
mkdir -p "$RUN/teacher-causal"
ln -sfn "$(realpath "$LATENTS")" "$RUN/latents"

raw=(); [ "${RAW:-0}" = 1 ] && raw=(--raw)  # RAW=1: the trained weights, not their EMA (the predictor runs, session 11)
if [ ! -f "$RUN/teacher-causal/world.safetensors" ]; then
  if [ -n "${STEP:-}" ]; then  # a given checkpoint step, else the newest
    python -m trainers.snapshot "$FROM/$TEACHER" --step "$STEP" "${raw[@]}"
    latest=$(printf '%s/snapshots/step_%08d' "$FROM/$TEACHER" "$STEP")
  else
    python -m trainers.snapshot "$FROM/$TEACHER" "${raw[@]}"
    latest=$(ls -d "$FROM/$TEACHER"/snapshots/step_* | sort | tail -1)
  fi
  cp "$latest/world.safetensors" "$RUN/teacher-causal/world.safetensors"
  echo "$latest${raw:+ (raw)}" > "$RUN/teacher-causal/FROM"
fi

needs_real=$([ "$STUDENT" != ode-causal ] || [ "${ABLATION:-0}" = 1 ] && echo 1 || echo 0)  # DMD's real score
[ "$needs_real" = 0 ] || [ -f "$RUN/teacher-bidirectional/world.safetensors" ] || worldsdk-train stage=teacher stage.mode=bidirectional \
  stage.init="$RUN/teacher-causal/world.safetensors" stage.latents="$RUN/latents" \
  run_dir="$RUN/teacher-bidirectional" loop.max_steps="$BIDIRECTIONAL_STEPS" loop.batch_size=8 loop.precision=fastest \
  loop.threads="$THREADS" loop.checkpoint_every=100 loop.log_every=20 loop.progress=false

python -m trainers.recipe --data data/$GAME --out "$RUN" --preset small-ctx --scale 0.3 --ode-clips 128 \
  --precision fastest --threads "$THREADS" --autoencoder "$AE" --reward no \
  --ode-guidance "$ODE_GUIDANCE" --context-noise "$CONTEXT_NOISE" --only "$(
    [ "$STUDENT" = ode-causal ] && echo ode-causal || echo ode-causal,dmd-causal-forcing)"

# The sixth decoder round (`pong_long_run.sh decoders`) when it exists, else the autoencoder's own decoder.
DECODER=${DECODER:-$FROM/decoder6/autoencoder.safetensors}
swap=(); [ -f "$DECODER" ] && swap=(--decoder-from "$DECODER") || echo "no $DECODER: the world keeps its own decoder"
[ -f "$RUN/$GAME-export.safetensors" ] || worldsdk export --world "$RUN/$STUDENT/world.safetensors" \
  --name "$GAME" --storage exact --context-noise "$PLAY_NOISE" "${swap[@]}" --out "$RUN/$GAME-export.safetensors"
[ -f "$RUN/eval/eval.json" ] || worldsdk eval --world "$RUN/$GAME-export.safetensors" --data data/$GAME-fresh \
  --out "$RUN/eval"

if [ "${ABLATION:-0}" = 1 ]; then
  python -m trainers.recipe --data data/$GAME --out "$RUN" --preset small-ctx --scale 0.3 --ode-clips 128 \
    --precision fastest --threads "$THREADS" --autoencoder "$AE" --reward no \
    --only ode-bidirectional,dmd-self-forcing
  [ -f "$RUN/ablation/ablation.json" ] || python benchmarks/ablation.py --runs "$RUN" --data data/$GAME-fresh \
    --out "$RUN/ablation" --rows ode-causal,dmd-causal-forcing,ode-bidirectional,dmd-self-forcing
fi

if [ "${SHIP:-0}" = 1 ]; then
  [ -f "$RUN/reward/world.safetensors" ] || worldsdk-train stage=reward stage.world="$RUN/$STUDENT/world.safetensors" \
    stage.latents="$RUN/latents" stage.data=data/$GAME run_dir="$RUN/reward" loop.max_steps=1500 loop.threads="$THREADS" \
    loop.progress=false
  worldsdk export --world "$RUN/$STUDENT/world.safetensors" --name "$GAME" --storage "$STORAGE" --summary "$RUN/recipe.json" \
    --eval "$RUN/eval/eval.json" --starts-from data/$GAME --starts 8 --reward-from "$RUN/reward/world.safetensors" \
    --context-noise "$PLAY_NOISE" "${swap[@]}"
fi
