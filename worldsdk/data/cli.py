"""`worldsdk record`: record episodes of a Gymnasium game into a dataset directory (appends)."""

from __future__ import annotations

import argparse
import json

from worldsdk.data.policies import POLICY_NAMES


def parse_size(text: str) -> tuple[int, int]:
    """"64" -> (64, 64); "48x64" -> (48, 64) as height x width."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 8:
        raise argparse.ArgumentTypeError(f"size must be N or HxW with sides >= 8, got {text!r}")
    return values[0], values[1]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, help="Gymnasium id with pixel frames, e.g. ALE/Pong-v5, ALE/Breakout-v5, CarRacing-v3")
    parser.add_argument("--episodes", type=int, required=True, help="episodes to record")
    parser.add_argument("--out", required=True, help="dataset directory (created, or appended to)")
    parser.add_argument("--policy", default="random", choices=POLICY_NAMES, help="random: sticky random actions; scripted: a Pong/Breakout player")
    parser.add_argument("--size", type=parse_size, default=(64, 64), help="frame size, N or HxW (default 64)")
    parser.add_argument("--max-steps", type=int, default=1000, help="steps per episode at most (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; episode e uses (seed, e)")
    parser.add_argument("--styles", default=None, help="comma-separated styles, cycled over episodes (default: all registered)")
    parser.add_argument("--style-switch-fraction", type=float, default=0.0, help="fraction of episodes that switch style mid-episode")
    parser.add_argument("--frameskip", type=int, default=None, help="env steps per recorded frame (default 4 for ALE, 1 otherwise)")
    parser.add_argument("--env-kwargs", type=json.loads, default=None, help="JSON dict of extra gymnasium.make kwargs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from worldsdk.data.recorder import record
    from worldsdk.data.store import EpisodeStore

    styles = [s.strip() for s in args.styles.split(",") if s.strip()] if args.styles else None
    records = record(
        args.env, args.out, args.episodes, policy=args.policy, size=args.size, max_steps=args.max_steps, seed=args.seed,
        styles=styles, style_switch_fraction=args.style_switch_fraction, frameskip=args.frameskip,
        env_kwargs=args.env_kwargs, progress=not args.quiet,
    )
    store = EpisodeStore(args.out)
    everything = store.records()
    print(
        f"recorded {len(records)} episodes ({sum(r.length for r in records)} frames) into {args.out}; "
        f"the dataset holds {len(everything)} episodes, {sum(r.length for r in everything)} frames, "
        f"{sum(r.bytes for r in everything) / 2**20:.1f} MiB"
    )
    return 0
