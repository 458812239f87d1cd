"""The whole Causal Forcing chain for one game, in one command:

    python -m trainers.recipe --data data/pong --out runs/pong [--preset small] [--ablation]

autoencoder -> latent cache -> AR teacher (teacher forcing) and bidirectional teacher -> causal ODE
pairs and student -> DMD (real score: the bidirectional teacher) -> `<out>/world.safetensors`, a
world that `World.load` and the env open. Each stage reads the previous stage's output and runs in
its own folder under `--out`; running the command again resumes the stage that was interrupted and
skips the finished ones. `--ablation` also trains the paper's comparisons from the same data and
budget: diffusion forcing instead of teacher forcing, Self Forcing's ODE initialisation (pairs from
the bidirectional teacher) + DMD, that initialisation alone, the AR teacher + DMD directly, and
causal consistency distillation (+ DMD). When the recordings carry rewards, a reward model is trained
last on the final world (stage=reward, with a bank of real starts), so its env returns rewards.
A stage folder may hold a world trained elsewhere (say a long teacher run's snapshot) beside a `FROM` file
naming it: the stages that read it use it, and `recipe.json` lists it under "given", not "trained".

Before the first stage the recordings are checked against the preset's frame size: a mismatch fails
at once with the `worldsdk record --size` to use. Ctrl-C stops the running stage with a checkpoint;
the same command resumes it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .app import run
from .loop import RESUME_HINT

log = logging.getLogger("trainers.recipe")

# Steps of each stage at --scale 1 (the small preset on a 2-core CPU; see docs/causal_forcing.md). The
# bidirectional teacher only has to be a fair score of the data distribution for DMD: fewer steps.
STEPS = {"autoencoder": 3000, "teacher": 4000, "teacher-bidirectional": 1500, "ode": 1000, "cd": 1000, "dmd": 300,
         "reward": 2000}


@dataclass(frozen=True)
class Recipe:
    data: str
    out: Path
    preset: str
    scale: float
    batch_size: int
    threads: int
    ode_clips: int
    autoencoder: str | None
    precision: str = "auto"
    ode_guidance: float = 6.0  # CFG of the causal ODE trajectories (the paper's 6)
    context_noise: float = 0.0  # GameNGen's noise on the causal ODE student's clean history

    def world(self, folder: str) -> str:
        return str(self.out / folder / "world.safetensors")

    def steps(self, stage: str) -> int:
        return max(2, int(round(STEPS[stage] * self.scale)))

    def train(self, folder: str, stage: dict, steps: int, batch_size: int | None = None) -> Path:
        run_dir = self.out / folder
        loop = {"max_steps": steps, "batch_size": batch_size or self.batch_size, "threads": self.threads,
                "precision": self.precision, "checkpoint_every": max(50, steps // 10), "log_every": max(1, min(50, steps // 20)),
                "sample_every": 0, "eval_every": 0}
        started = time.perf_counter()
        result = run({"run_dir": str(run_dir), "loop": loop, "stage": stage,
                      "model": {"name": self.preset, "preset": self.preset, "autoencoder": self.preset}})
        if result.interrupted:
            raise Interrupted(f"stage {folder} stopped at step {result.step} with a checkpoint; {RESUME_HINT}")
        log.info("stage %s done in %.0f s", folder, time.perf_counter() - started)
        return run_dir


class Interrupted(Exception):
    """Ctrl-C stopped a stage (with a checkpoint): the recipe stops there too."""


def check_data(data: str, preset_name: str) -> None:
    """Fail before any training when the recordings cannot train the preset (their frame size)."""
    from worldsdk.config import MODEL_PRESETS, preset
    from worldsdk.data.store import EpisodeStore
    from worldsdk.errors import UserError

    if preset_name not in MODEL_PRESETS:
        raise UserError(f"--preset {preset_name!r} is not a preset; choose one of {sorted(MODEL_PRESETS)}")
    store = EpisodeStore(data)
    if not Path(data).is_dir():
        raise UserError(f"--data {data} does not exist (record one with `worldsdk record --out {data}`)")
    meta = store.meta()
    if not store.records():
        raise UserError(f"--data {data} holds no episodes (record some with `worldsdk record --out {data}`)")
    _, spec = preset(preset_name)
    if (meta.height, meta.width) != (spec.height, spec.width):
        size = str(spec.height) if spec.height == spec.width else f"{spec.height}x{spec.width}"
        raise UserError(f"--data {data} holds {meta.height}x{meta.width} frames but --preset {preset_name} makes "
                        f"{spec.height}x{spec.width} worlds: record with `worldsdk record --size {size} ...` "
                        f"(or pick the preset of that size)")


def recordings_have_rewards(data: str) -> bool:
    """Whether any recorded frame has a non-zero reward (what a reward model can learn from)."""
    from worldsdk.data.store import EpisodeStore

    store = EpisodeStore(data)
    records = store.records()
    if any(r.total_reward != 0 for r in records):
        return True
    return any(bool(np.any(store.read(r, with_frames=False).rewards != 0)) for r in records)  # +1s and -1s that cancel


def build_latents(recipe: Recipe, autoencoder_file: Path) -> Path:
    from worldsdk.autoencoder import load_autoencoder
    from worldsdk.data.latents import build_latent_cache

    return build_latent_cache(recipe.data, load_autoencoder(autoencoder_file), recipe.out / "latents")


@dataclass(frozen=True)
class Step:
    """One training run of the chain: its folder under --out, the stage section, and its budget."""

    folder: str
    stage: dict
    budget: str  # key of STEPS
    batch_size: int | None = None
    needs: tuple[str, ...] = ()  # folders whose world.safetensors this run reads
    ablation: bool = False


def chain(recipe: Recipe, latents: str, ae_file: str) -> list[Step]:
    """The main chain, then the paper's comparisons (`ablation=True`), in an order that respects `needs`."""
    teacher = {"name": "teacher", "latents": latents, "autoencoder": ae_file}
    ode = {"name": "ode", "latents": latents, "num_clips": recipe.ode_clips}
    causal_ode = {**ode, "guidance": recipe.ode_guidance, "context_noise": recipe.context_noise}
    dmd = {"name": "dmd", "latents": latents, "real": recipe.world("teacher-bidirectional")}
    return [
        Step("teacher-causal", {**teacher, "mode": "teacher_forcing"}, "teacher"),
        Step("teacher-bidirectional", {**teacher, "mode": "bidirectional"}, "teacher-bidirectional"),
        Step("ode-causal", {**causal_ode, "teacher": recipe.world("teacher-causal")}, "ode", needs=("teacher-causal",)),
        Step("dmd-causal-forcing", {**dmd, "generator": recipe.world("ode-causal")}, "dmd", 4,
             needs=("ode-causal", "teacher-bidirectional")),
        Step("teacher-diffusion-forcing", {**teacher, "mode": "diffusion_forcing"}, "teacher", ablation=True),
        Step("cd-causal", {"name": "cd", "latents": latents, "teacher": recipe.world("teacher-causal")}, "cd",
             needs=("teacher-causal",), ablation=True),
        Step("ode-bidirectional", {**ode, "teacher": recipe.world("teacher-bidirectional"), "teacher_kind": "bidirectional"},
             "ode", needs=("teacher-bidirectional",), ablation=True),
        Step("dmd-teacher-direct", {**dmd, "generator": recipe.world("teacher-causal")}, "dmd", 4,
             needs=("teacher-causal", "teacher-bidirectional"), ablation=True),
        Step("dmd-self-forcing", {**dmd, "generator": recipe.world("ode-bidirectional")}, "dmd", 4,
             needs=("ode-bidirectional", "teacher-bidirectional"), ablation=True),
    ]


FINAL = "dmd-causal-forcing"
REWARD = "reward"


def main(argv: list[str] | None = None) -> int:
    """The recipe; user errors print one line (exit 2), Ctrl-C saves and exits 130 (`--debug`: tracebacks)."""
    from worldsdk.errors import run_reporting_errors

    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        return run_reporting_errors(lambda: _main(argv), "recipe", debug)
    except Interrupted as stop:
        print(f"recipe: {stop}", file=sys.stderr)
        return 130


def _main(argv: list[str]) -> int:
    from worldsdk.errors import UserError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="recordings folder (worldsdk record --out ...)")
    parser.add_argument("--out", required=True, help="folder for every stage's run and the final world")
    parser.add_argument("--preset", default="small", help="model preset (tiny, small)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every stage's steps (0.01 for a smoke run)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fastest"),
                        help="auto: bf16 autocast on a GPU, fp32 on a CPU; fastest: bf16 also on a CPU with native bf16 "
                             "(1.4x faster there; an AVX2-only CPU emulates bf16, 20x slower)")
    parser.add_argument("--ode-clips", type=int, default=256, help="clips of teacher trajectories to generate")
    parser.add_argument("--ode-guidance", type=float, default=6.0,
                        help="CFG of the causal ODE trajectories (the paper's 6; 3 drifted less in Pong's 64-frame replays)")
    parser.add_argument("--context-noise", type=float, default=0.0,
                        help="noise up to this level on the causal ODE student's clean history (GameNGen's augmentation)")
    parser.add_argument("--autoencoder", default=None, help="use this trained autoencoder instead of training one")
    parser.add_argument("--ablation", action="store_true", help="also train the paper's comparisons")
    parser.add_argument("--only", default="", help="comma-separated run folders to train now (e.g. to split the "
                        "chain over two processes); the runs they read must be finished")
    parser.add_argument("--reward", default="auto", choices=("auto", "yes", "no"),
                        help="train a reward model on the final world (auto: when the recordings carry rewards)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors (else one line)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recipe = Recipe(args.data, Path(args.out), args.preset, args.scale, args.batch_size, args.threads, args.ode_clips,
                    args.autoencoder, args.precision, args.ode_guidance, args.context_noise)
    known = [s.folder for s in chain(recipe, "", "")]
    only = [f for f in args.only.split(",") if f]
    unknown = sorted(set(only) - set(known + [REWARD]))
    if unknown:
        parser.error(f"--only: unknown run folder(s) {unknown}; expected some of {known + [REWARD]}")
    check_data(recipe.data, recipe.preset)
    with_reward = args.reward == "yes" or (args.reward == "auto" and recordings_have_rewards(recipe.data))
    recipe.out.mkdir(parents=True, exist_ok=True)

    if recipe.autoencoder:
        ae_file = Path(recipe.autoencoder)
    else:
        ae_dir = recipe.train("autoencoder", {"name": "autoencoder", "data": [recipe.data]}, recipe.steps("autoencoder"), 32)
        ae_file = ae_dir / "autoencoder.safetensors"
    steps = chain(recipe, str(recipe.out / "latents"), str(ae_file))
    build_latents(recipe, ae_file)
    if only:
        todo = [s for s in steps if s.folder in only]
    else:
        todo = [s for s in steps if args.ablation or not s.ablation]

    for step in todo:
        missing = [n for n in step.needs if not Path(recipe.world(n)).is_file()]
        if missing:
            raise UserError(f"{step.folder} reads the world(s) of {missing}, which are not trained yet "
                             f"(no {recipe.world(missing[0])}); train them first")
        recipe.train(step.folder, step.stage, recipe.steps(step.budget), step.batch_size)

    if with_reward and (not only or REWARD in only) and Path(recipe.world(FINAL)).is_file():
        reward = {"name": "reward", "world": recipe.world(FINAL), "latents": str(recipe.out / "latents"), "data": recipe.data}
        recipe.train(REWARD, reward, recipe.steps("reward"), 16)
    elif args.reward == "auto" and not with_reward:
        log.info("the recordings carry no rewards: no reward model (the world's env will return reward 0)")

    # A world put into a run folder from elsewhere (a long run's snapshot, benchmarks/pong_distill.sh) carries a FROM
    # file naming its source: the summary says so instead of counting it as trained here.
    folders = [s.folder for s in steps] + [REWARD]
    given = {f: (recipe.out / f / "FROM").read_text().strip() for f in folders if (recipe.out / f / "FROM").is_file()}
    final = recipe.out / "world.safetensors"
    source = recipe.world(REWARD) if with_reward and Path(recipe.world(REWARD)).is_file() else recipe.world(FINAL)
    if Path(source).is_file():
        shutil.copyfile(source, final)
    summary = {"world": str(final), "data": recipe.data, "preset": recipe.preset, "scale": recipe.scale,
               "precision": recipe.precision, "ode_clips": recipe.ode_clips,
               "ode_guidance": recipe.ode_guidance, "context_noise": recipe.context_noise, "autoencoder": str(ae_file),
               "stages": {k: recipe.steps(k) for k in STEPS
                          if not (k == "autoencoder" and recipe.autoencoder) and not (k == "reward" and not with_reward)},
               "reward_model": with_reward,
               "trained": sorted(f for f in folders if Path(recipe.world(f)).is_file() and f not in given)}
    if given:
        summary["given"] = given
    (recipe.out / "recipe.json").write_text(json.dumps(summary, indent=2) + "\n")
    if final.is_file():
        print(f"world: {final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
