"""Rank the levers of a world that plays its game: one short teacher run per lever, then the probe.

    python benchmarks/levers.py --latents runs/pong3/latents \\
        --autoencoder runs/pong3/autoencoder/autoencoder.safetensors --data data/pong-fresh \\
        --levers base,ctx,ctx-skip --steps 600 --out runs/levers

Every lever is the same AR teacher (teacher forcing, batch 8, bf16, one thread, lr 1e-3 held, no EMA)
with one thing changed: the model's tokens, the schedule, the loss. Each trains `--steps` steps
into `<out>/<lever>/` (a finished lever is not trained again; an interrupted one resumes), then the
learnability probe (`worldsdk.probe`) scores it on recordings it never saw: the ball and the
player's paddle predicted from history alone (sigma 1) and after the last few-step sigma, and the
keys' effect from history. The table (`<out>/levers.md`, and JSON) has the seconds per step
beside them, so a lever that helps per step but costs 4x per step shows it.

With `--init WORLD` every lever fine-tunes that world (its model's shapes replace the lever's, so only
the loss and schedule levers differ): a cheap way to rank what the long run should switch to.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trainers.app import run  # noqa: E402
from trainers.logger import read_metrics  # noqa: E402
from worldsdk import World  # noqa: E402
from worldsdk.config import MODEL_PRESETS, PAPER_SHIFT  # noqa: E402
from worldsdk.data.store import EpisodeStore  # noqa: E402
from worldsdk.evaluation import opposite_actions  # noqa: E402
from worldsdk.probe import load_clips, probe  # noqa: E402

SMALL, CTX = MODEL_PRESETS["small"], MODEL_PRESETS["small-ctx"]

# name: (what changes, model config, stage overrides)
LEVERS = {
    "base": ("`small`: 16 tokens per frame, shift 1", SMALL, {}),
    "shift5": ("`small` on the paper's shift 5 (4-step sigmas 1 ... 0.625)", SMALL, {"timestep_shift": PAPER_SHIFT}),
    "ctx": ("+ each token sees the 2 clean frames before its chunk", replace(CTX, context_skip=0.0), {}),
    "ctx-skip": ("+ v predicted around 'nothing moved' (`small-ctx`)", CTX, {}),
    "ctx-skip-patch2": ("`small-ctx` with 2x2 patches: 64 tokens per frame", replace(CTX, patch=(1, 2, 2)), {}),
    "ctx-skip-fg16": ("`small-ctx`, object pixels weighted 17x instead of 5x", CTX, {"foreground_weight": 16.0}),
    "ctx-skip-lr3e-3": ("`small-ctx` at lr 3e-3", CTX, {"optimizer": {"lr": 3e-3}}),
    "ctx-skip-motion8": ("`small-ctx`, loss weighted 9x on latent pixels that moved (not on all objects)", CTX,
                         {"motion_weight": 8.0, "foreground_weight": 0.0}),
    "ctx-skip-draw3": ("`small-ctx`, training sigmas drawn on the shift-3 grid (more at high noise)", CTX,
                       {"draw_shift": 3.0}),
    "ctx-skip-amap": ("`small-ctx` + each token place's own response to the action (ModelConfig.action_map)",
                      replace(CTX, action_map=True), {"grow": {"action_map": True}}),
    "ctx-skip-motion8-draw3": ("`small-ctx`, both: motion-weighted loss and more draws at high noise", CTX,
                               {"motion_weight": 8.0, "foreground_weight": 0.0, "draw_shift": 3.0}),
}


def lever_run(name: str, args) -> Path:
    """Train (or resume) the lever's teacher and return its world file."""
    _, config, stage_overrides = LEVERS[name]
    preset = f"lever-{name}"
    MODEL_PRESETS[preset] = config  # the stage builds its model from the preset table
    run_dir = Path(args.out) / name
    world = run_dir / "world.safetensors"
    if world.is_file():
        return world
    optimizer = {"lr": 1e-3, "warmup_steps": 100, "decay": "constant", **stage_overrides.get("optimizer", {})}
    # from an initial world, a lever that changes the model grows it (stage.grow); from scratch, its config says it
    skip = {"optimizer"} | (set() if args.init else {"grow"})
    stage = {"name": "teacher", "latents": args.latents, "autoencoder": args.autoencoder, "ema_decay": 0.0,
             "init": args.init, **{k: v for k, v in stage_overrides.items() if k not in skip}, "optimizer": optimizer}
    loop = {"max_steps": args.steps, "batch_size": 8, "precision": "bf16", "threads": args.threads, "device": "cpu",
            "checkpoint_every": 100, "log_every": 20, "progress": False, "tensorboard": False, "seed": 0}
    result = run({"run_dir": str(run_dir), "loop": loop, "model": {"name": preset, "preset": preset}, "stage": stage})
    if not result.finished:
        raise SystemExit(f"{name}: stopped at step {result.step}; run the same command to resume")
    return world


def seconds_per_step(run_dir: Path) -> float:
    times = [r["time/step_seconds"] for r in read_metrics(run_dir) if "time/step_seconds" in r]
    return sum(times) / len(times) if times else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latents", required=True, help="latent cache of the training recordings")
    parser.add_argument("--autoencoder", required=True, help="the autoencoder that made the cache")
    parser.add_argument("--data", required=True, help="recordings the worlds never saw (the probe's)")
    parser.add_argument("--levers", default="base,ctx,ctx-skip", help=f"comma-separated, of {', '.join(LEVERS)}")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--init", default="", help="fine-tune every lever from this world (its model replaces the lever's)")
    parser.add_argument("--sigmas", default="1,0.25")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/levers")
    args = parser.parse_args()
    names = args.levers.split(",")
    unknown = [n for n in names if n not in LEVERS]
    if unknown:
        parser.error(f"unknown lever(s) {unknown}; choose from {', '.join(LEVERS)}")
    torch.set_num_threads(args.threads)
    sigmas = [float(s) for s in args.sigmas.split(",")]
    meta = EpisodeStore(args.data).meta()
    keys = opposite_actions(meta.action_meanings, meta.game) if meta.action_meanings else None
    out = Path(args.out)
    results_file = out / "levers.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for name in names:
        world_file = lever_run(name, args)
        if results.get(name, {}).get("steps") == args.steps:
            continue
        world = World.load(world_file)
        clips = load_clips(args.data, world.model.config.latent_frames_max * world.autoencoder.config.temporal_stride, 4)
        started = time.perf_counter()
        scores = probe(world, clips, sigmas, actions=keys)
        results[name] = {"steps": args.steps, "seconds_per_step": seconds_per_step(out / name), "probe": scores,
                         "probe_seconds": time.perf_counter() - started, "clips": len(clips.frames)}
        out.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results, sigmas)
    (out / "levers.md").write_text(table + "\n")
    print(table)
    return 0


def markdown(results: dict, sigmas: list[float]) -> str:
    head = ["lever", "what changes", "steps", "s/step"]
    for s in sigmas:
        head += [f"ball <=4px @{s:g}", f"ball FP @{s:g}", f"paddle err px @{s:g}"]
    head += ["keys: commanded side", "keys: separation px"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    controls = None
    for name, r in results.items():
        p = r["probe"]
        cells = [name, LEVERS[name][0], str(r["steps"]), f"{r['seconds_per_step']:.2f}"]
        for s in sigmas:
            q = p[f"{s:g}"]
            cells += [f"{q['ball_recall']:.0%}", f"{q['ball_false_positive']:.0%}", f"{q['paddle_error_px']:.2f}"]
        k = p.get("keys", {})
        cells += [f"{k.get('pass_rate', float('nan')):.0%}", f"{k.get('separation_px', float('nan')):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
        controls = p
    if controls is not None:  # the same clips for every lever: the last one's controls stand for all
        for key, label in (("autoencoder", "ceiling: real frames through the autoencoder"),
                           ("repeat_last_frame", "floor: the last history frame repeated")):
            q = controls[key]
            cells = [key, label, "", ""] + [f"{q['ball_recall']:.0%}", f"{q['ball_false_positive']:.0%}",
                                            f"{q['paddle_error_px']:.2f}"] * len(sigmas) + ["", ""]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
