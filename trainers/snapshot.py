"""The result a run would write if it finished now, made from one of its checkpoints.

A long run (a teacher over several sessions) writes checkpoints, not worlds; probing or playing it
midway needs the world file its stage writes at the end. This rebuilds the stage from the config
saved in the checkpoint, loads the checkpoint's EMA weights (or the raw ones: `--raw`, or when the
stage keeps no EMA) and calls the stage's own `finish`, into `<run_dir>/snapshots/step_<N>/`:

    python -m trainers.snapshot runs/pong/teacher            # newest checkpoint
    python -m trainers.snapshot runs/pong/teacher --step 4000 --raw

The run itself is not touched: a run still training can be snapshotted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .app import build_dataclass, stage_class
from .loop import list_checkpoints
from .stage import ModelChoice, RunContext
from worldsdk.checkpoint import split_prefix
from worldsdk.train_checkpoint import CheckpointError, load_sharded_train_state, load_train_state, read_sharded_tensors


def snapshot(run_dir: str | Path, step: int | None = None, raw: bool = False, out: str | Path | None = None) -> Path:
    """Write the stage's final artefacts for checkpoint `step` (default: the newest) and return their folder."""
    run_dir = Path(run_dir)
    found = dict(list_checkpoints(run_dir))
    if not found:
        raise FileNotFoundError(f"{run_dir} has no checkpoints (expected {run_dir / 'checkpoints'}/step_*)")
    step = max(found) if step is None else step
    if step not in found:
        raise FileNotFoundError(f"{run_dir} has no checkpoint at step {step}; it has steps {sorted(found)}")
    path = found[step]
    if path.is_dir():  # a sharded (FSDP) checkpoint: its state file holds no weights, its shards do
        state = load_sharded_train_state(path)
        tensors = read_sharded_tensors(path)
        state.modules = {n: split_prefix(tensors, f"module.{n}") for n in {k.split(".")[1] for k in tensors if k.startswith("module.")}}
        state.ema = {n: split_prefix(tensors, f"ema.{n}") for n in {k.split(".")[1] for k in tensors if k.startswith("ema.")}}
    else:
        state = load_train_state(path)
    if not state.config.get("stage"):
        raise CheckpointError(f"{path}: the checkpoint carries no stage config to rebuild the stage from")
    cls = stage_class(state.config["stage"].get("name", ""))
    stage_config = build_dataclass(cls.config_class, state.config["stage"], "stage")
    model = build_dataclass(ModelChoice, state.config.get("model"), "model")
    folder = Path(out) if out is not None else run_dir / "snapshots" / f"step_{step:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    stage = cls(stage_config, model, RunContext(run_dir=folder, device=torch.device("cpu")))
    modules = stage.modules()
    for name, module in modules.items():
        weights = state.modules[name] if raw or name not in state.ema else state.ema[name]
        module.load_state_dict(weights)
        module.eval()
    with torch.no_grad():
        stage.finish(step, modules)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainers.snapshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a worldsdk-train run folder (holds checkpoints/)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    parser.add_argument("--raw", action="store_true", help="the trained weights instead of their EMA")
    parser.add_argument("--out", default=None, help="output folder (default: <run_dir>/snapshots/step_<N>)")
    args = parser.parse_args(argv)
    try:
        folder = snapshot(args.run_dir, args.step, args.raw, args.out)
    except (FileNotFoundError, CheckpointError, ValueError, KeyError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"wrote {folder}: " + ", ".join(sorted(p.name for p in folder.iterdir() if p.is_file())))


if __name__ == "__main__":
    main(sys.argv[1:])
