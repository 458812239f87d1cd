"""Ball from history with convolutions alone: is the ball's motion learnable at the latent's own grid?

    python benchmarks/ball_from_history.py --latents runs/pong3/latents \\
        --autoencoder runs/pong3/autoencoder/autoencoder.safetensors --data data/pong-fresh --steps 1500

A small all-convolutional network (the blocks of `ModelConfig.local_channels`' path, DIAMOND's kind of
locality) is trained to regress the next chunk's latents from the `--history` latent frames before it and
the actions, on a latent cache's training episodes: the x0 a world predicts at sigma 1, without a
transformer. Then, on recordings it never saw, the learnability probe's scores of its decoded prediction
(`worldsdk.probe.object_scores`: ball within 4 px, false balls, player's paddle), beside the
repeat-the-last-frame floor of the same chunks. Compare with a teacher's `eval/probe/1/...` figures: the
session-8 run of this script gave 40% ball recall after 1,500 steps (22 min, one thread) where the long
teacher, 16x16 px tokens behind a linear patch embedding, stayed at 10-15% for 10,000 steps.

It also plays on its own output: from each fresh clip's real history, `--rollout` chunks in a row, each read
from the net's own chunks, scored chunk by chunk (what a world's replays ask of it). `--unroll K` trains it
that way (K chunks per clip, gradients through its own frames). Session 11 (64 channels, 2 history frames,
800 steps of 32): one-step training 18% / 6% / 3% / 0% over the first four chunks; unrolled over 4 chunks
5% / 0%: regressed on its own uncertain frames, the net blurs the ball sooner (docs/worlds.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from worldsdk.autoencoder import load_autoencoder  # noqa: E402
from worldsdk.data.actions import encode_actions  # noqa: E402
from worldsdk.data.latents import LatentClipDataset  # noqa: E402
from worldsdk.model.dit import LocalBlock  # noqa: E402
from worldsdk.probe import load_clips, object_scores  # noqa: E402
from worldsdk.bench import write_results  # noqa: E402
from trainers.objectives import corrupt_history  # noqa: E402  (a teacher's stage.context_noise)


class ConvPredictor(nn.Module):
    """Latents of `history` frames (B, H, C, h, w) and the actions' features of those frames and the
    `chunk` frames after them (B, H + chunk, A) -> the chunk's latents (B, chunk, C, h, w), predicted as a
    change from the last history frame (an untrained network repeats it)."""

    def __init__(self, channels: int, history: int, chunk: int, action_features: int, width: int, blocks: int):
        super().__init__()
        self.chunk, self.channels = chunk, channels
        self.inp = nn.Conv2d(channels * history + action_features * (history + chunk), width, 3, padding=1)
        self.blocks = nn.Sequential(*[LocalBlock(width) for _ in range(blocks)])
        self.out = nn.Conv2d(width, channels * chunk, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, history: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        b, _, _, h, w = history.shape
        a = actions.reshape(b, -1, 1, 1).expand(-1, -1, h, w)
        change = self.out(self.blocks(self.inp(torch.cat([history.flatten(1, 2), a], dim=1))))
        return history[:, -1:] + change.reshape(b, self.chunk, self.channels, h, w)


def unrolled_loss(net: ConvPredictor, history: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor,
                  unroll: int) -> torch.Tensor:
    """Mean MSE of `unroll` chunks predicted one after another from `history` (B, H, C, h, w): after the
    first, the history holds the net's own predictions, gradients through them (the net trained on what it
    reads when it plays on its own output). `actions` (B, H + unroll * chunk, A), `targets` the real chunks
    (B, unroll * chunk, C, h, w)."""
    steps, chunk = history.shape[1], net.chunk
    loss = history.new_zeros(())
    for k in range(unroll):
        pred = net(history, actions[:, k * chunk : k * chunk + steps + chunk])
        loss = loss + F.mse_loss(pred, targets[:, k * chunk : (k + 1) * chunk]) / unroll
        history = torch.cat([history, pred], dim=1)[:, -steps:]
    return loss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latents", required=True, help="a latent cache (worldsdk.data.latents)")
    parser.add_argument("--autoencoder", required=True, help="the autoencoder that made the cache")
    parser.add_argument("--data", required=True, help="recordings never seen in training, for the scores")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--history", type=int, default=4, help="latent frames before each chunk")
    parser.add_argument("--chunk", type=int, default=2, help="frames predicted at once (a world's chunk)")
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--history-noise", type=float, default=0.0,
                        help="train on history noised to a level drawn in [0, this] per clip, as a teacher's "
                             "stage.context_noise does (the scores always use the clean history, as the probe does)")
    parser.add_argument("--unroll", type=int, default=1,
                        help="chunks per training clip: after the first, the history holds the net's own predictions "
                             "(gradients through them), as it does when the net plays on its own output")
    parser.add_argument("--rollout", type=int, default=8,
                        help="chunks predicted on the net's own output from real history, scored per chunk")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="JSON file for the results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.unroll < 1 or args.rollout < 1:
        raise SystemExit(f"--unroll and --rollout must be >= 1 chunk, got {args.unroll} and {args.rollout}")
    span = args.history + args.unroll * args.chunk
    data = LatentClipDataset(args.latents, span, split="train", stride=1)
    if not len(data):
        raise SystemExit(f"{args.latents} has no training clips of {span} frames")
    first = data[0]
    net = ConvPredictor(first["latents"].shape[1], args.history, args.chunk, first["action_features"].shape[1],
                        args.width, args.blocks)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = [data[int(i)] for i in rng.integers(0, len(data), args.batch)]
        latents = torch.stack([s["latents"] for s in batch])
        actions = torch.stack([s["action_features"] for s in batch]).float()
        history = corrupt_history(latents[:, : args.history].transpose(1, 2), args.history_noise)[0].transpose(1, 2)
        loss = unrolled_loss(net, history, actions, latents[:, args.history :], args.unroll)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(f"step {step}: loss {loss.item():.5f} ({time.perf_counter() - started:.0f} s)", flush=True)
    train_seconds = time.perf_counter() - started

    # every chunk of fresh clips whose history is all real frames, predicted from the real frames before it
    ae = load_autoencoder(args.autoencoder).eval()
    # and, from each clip's first real history, `rollout` chunks on the net's own output, scored per chunk
    clips = load_clips(args.data, args.history + max(3, args.rollout) * args.chunk, clips_per_episode=4)
    spec = data.meta.action_spec
    real, pred, repeat, styles = [], [], [], []
    rolled = [([], [], []) for _ in range(args.rollout)]  # per chunk: real, predicted, styles
    with torch.no_grad():
        for frames, acts, clip_styles in zip(clips.frames, clips.actions, clips.styles):
            z = ae.encode(torch.from_numpy(frames))
            features = torch.as_tensor(encode_actions(spec, np.asarray(acts))).float()
            for s in range(args.history, len(frames) - args.chunk + 1, args.chunk):
                p = net(z[None, s - args.history : s], features[None, s - args.history : s + args.chunk])[0]
                pred.append(ae.decode(p).numpy())
                real.append(frames[s : s + args.chunk])
                repeat.append(np.repeat(frames[s - 1 : s], args.chunk, axis=0))
                styles += clip_styles[s : s + args.chunk]
            history = z[None, : args.history]
            for k, (r_k, p_k, s_k) in enumerate(rolled):
                s = args.history + k * args.chunk
                p = net(history, features[None, s - args.history : s + args.chunk])
                history = torch.cat([history, p], dim=1)[:, -args.history :]
                p_k.append(ae.decode(p[0]).numpy())
                r_k.append(frames[s : s + args.chunk])
                s_k += clip_styles[s : s + args.chunk]
    real, pred, repeat = (np.concatenate(x) for x in (real, pred, repeat))
    results = {"conv": object_scores(real, pred, styles, clips.game),
               "repeat_last_frame": object_scores(real, repeat, styles, clips.game),
               "rollout": [object_scores(np.concatenate(r_k), np.concatenate(p_k), s_k, clips.game) for r_k, p_k, s_k in rolled],
               "train_seconds": train_seconds, "args": vars(args),
               "parameters": sum(p.numel() for p in net.parameters())}
    for name in ("conv", "repeat_last_frame"):
        r = results[name]
        print(f"{name}: ball within 4 px {r['ball_recall']:.0%} (false {r['ball_false_positive']:.0%}), "
              f"paddle error {r['paddle_error_px']:.2f} px, within 2 px {r['paddle_within_2px']:.0%}")
    print("on its own output, chunk by chunk: ball within 4 px (false) / paddle within 2 px: " + ", ".join(
        f"{r['ball_recall']:.0%} ({r['ball_false_positive']:.0%}) / {r['paddle_within_2px']:.0%}" for r in results["rollout"]))
    if args.out:
        write_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
