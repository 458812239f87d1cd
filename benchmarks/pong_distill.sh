#!/usr/bin/env bash
# The few-step Pong world from a long-run teacher (benchmarks/pong_long_run.sh), on the 2-core CPU,
# one thread, beside the long run; resumable like it (each step skips what exists):
#
#   nohup bash benchmarks/pong_distill.sh > runs/pong4.log 2>&1 &                     # phase 2's teacher
#   TEACHER=teacher-map nohup bash benchmarks/pong_distill.sh > runs/pong4.log 2>&1 &  # the one-phase teacher
#
# 1. the teacher run's latest checkpoint (EMA) becomes runs/pong4/teacher-causal (kept once made:
#    delete that folder to distil a later checkpoint);
# 2. the bidirectional teacher (DMD's real score) is fine-tuned from it, not trained from scratch;
# 3. the recipe's causal ODE initialisation and Causal Forcing DMD;
# 4. `worldsdk eval` of the student on the held-out recordings, with the sixth decoder round swapped in
#    where it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
FROM=${FROM:-runs/pong3}
TEACHER=${TEACHER:-teacher-amap}  # the teacher run in $FROM: teacher-amap (two phases) or teacher-map (one)
RUN=${RUN:-runs/pong4}
BIDIRECTIONAL_STEPS=${BIDIRECTIONAL_STEPS:-600}
export OMP_NUM_THREADS=1
mkdir -p "$RUN/teacher-causal"
ln -sfn "$(realpath "$FROM/latents")" "$RUN/latents"

if [ ! -f "$RUN/teacher-causal/world.safetensors" ]; then
  python -m trainers.snapshot "$FROM/$TEACHER"
  latest=$(ls -d "$FROM/$TEACHER"/snapshots/step_* | sort | tail -1)
  cp "$latest/world.safetensors" "$RUN/teacher-causal/world.safetensors"
  echo "$latest" > "$RUN/teacher-causal/FROM"
fi

[ -f "$RUN/teacher-bidirectional/world.safetensors" ] || worldsdk-train stage=teacher stage.mode=bidirectional \
  stage.init="$RUN/teacher-causal/world.safetensors" stage.latents="$RUN/latents" \
  run_dir="$RUN/teacher-bidirectional" loop.max_steps="$BIDIRECTIONAL_STEPS" loop.batch_size=8 loop.precision=fastest \
  loop.threads=1 loop.checkpoint_every=100 loop.log_every=20 loop.progress=false

python -m trainers.recipe --data data/pong --out "$RUN" --preset small-ctx --scale 0.3 --ode-clips 128 \
  --precision fastest --threads 1 --autoencoder "$FROM/autoencoder/autoencoder.safetensors" --reward no \
  --only ode-causal,dmd-causal-forcing

# The sixth decoder round (`pong_long_run.sh decoders`) when it exists, else the autoencoder's own decoder.
DECODER=${DECODER:-$FROM/decoder6/autoencoder.safetensors}
swap=(); [ -f "$DECODER" ] && swap=(--decoder-from "$DECODER") || echo "no $DECODER: the world keeps its own decoder"
[ -f "$RUN/pong-export.safetensors" ] || worldsdk export --world "$RUN/world.safetensors" \
  --name pong --storage exact "${swap[@]}" --out "$RUN/pong-export.safetensors"
[ -f "$RUN/eval/eval.json" ] || worldsdk eval --world "$RUN/pong-export.safetensors" --data data/pong-fresh \
  --out "$RUN/eval"
