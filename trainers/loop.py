"""The training loop every stage shares: written once, stages plug in through `trainers.stage.Stage`.

`train(make_stage, loop, run_dir)` sets up the process (torchrun group, device, seeds), builds the
stage, and runs `loop.max_steps` iterations of the stage's update schedule with AdamW, gradient
averaging over ranks, clipping, bf16 autocast, EMA, logging, samples, evaluation and atomic
checkpoints. Calling it again with the same `run_dir` resumes from the newest checkpoint there,
exactly: weights, EMA, optimiser moments, the RNG states of every rank and the data position are all
restored, so a killed run continues on the same trajectory as one that was never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from trainers import distributed
from trainers.batches import BatchStream
from trainers.ema import EMA
from trainers.logger import RunLogger
from trainers.stage import RunContext, Stage, Update
from worldsdk.train_checkpoint import CheckpointError, TrainState, capture_rng, load_train_state, restore_rng, save_train_state

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
CHECKPOINT_NAME = re.compile(r"^step_(\d+)\.safetensors$")


@dataclass(frozen=True)
class LoopConfig:
    """Settings of the shared loop (the `loop:` section of the Hydra config)."""

    max_steps: int = 1000
    batch_size: int = 16  # per process; the global batch is batch_size * world size
    seed: int = 0
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    num_workers: int = 0  # DataLoader workers per process
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    log_every: int = 10
    sample_every: int = 0  # 0: samples only at the end
    eval_every: int = 0  # 0: evaluation only at the end
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # newest N kept; older ones are deleted after a successful write
    time_limit_minutes: float = 0.0  # stop with a checkpoint after this long in this process; 0: no limit
    progress: bool = True  # tqdm bar on rank 0
    tensorboard: bool = True


@dataclass(frozen=True)
class TrainResult:
    step: int
    run_dir: Path
    checkpoint: Path | None
    finished: bool  # reached max_steps (else stopped by the time limit)
    metrics: dict = field(default_factory=dict)  # the stage's final metrics (rank 0)


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy's global RNG and Python's `random`."""
    import random

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """A well-mixed per-rank training seed (the same for every run with this seed)."""
    return int(np.random.SeedSequence([seed, rank, 0x5EED]).generate_state(1)[0])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore every global RNG state on exit, so hooks never shift the training trajectory."""
    tensors, scalars = capture_rng()
    try:
        yield
    finally:
        restore_rng(tensors, scalars)


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}.safetensors"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's checkpoints, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = CHECKPOINT_NAME.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise ValueError(f"loop.precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<missing>"), current.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_differences(a, b, f"{prefix}{key}.")
        elif _plain(a) != _plain(b):  # a saved JSON list equals the current tuple
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


class _LogAccumulator:
    """Running sums of logged values between two log steps (tensors stay on device until then)."""

    def __init__(self):
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def add(self, key: str, value: Any) -> None:
        value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
        self.sums[key] = self.sums.get(key, 0.0) + value
        self.counts[key] = self.counts.get(key, 0) + 1

    def means(self, device: torch.device) -> dict[str, float]:
        """Per-key means, averaged over ranks (every rank logs the same keys)."""
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        local = torch.stack([torch.as_tensor(self.sums[k], dtype=torch.float32, device=device) / self.counts[k] for k in keys])
        values = distributed.all_reduce_mean(local).tolist()
        self.sums, self.counts = {}, {}
        return dict(zip(keys, values))


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


class _Trainer:
    """State of one `train` call; split into methods only for reading."""

    def __init__(self, make_stage: Callable[[RunContext], Stage], loop: LoopConfig, run_dir: Path, config: dict, dist):
        self.loop, self.config, self.dist = loop, config, dist
        self.run_dir = run_dir
        self.device = dist.device
        self.autocast_dtype = _autocast_dtype(loop.precision, self.device)
        seed_everything(loop.seed)  # identical initial weights on every rank
        self.ctx = RunContext(run_dir=run_dir, device=self.device, rank=dist.rank, world_size=dist.world_size, autocast_dtype=self.autocast_dtype)
        self.stage = make_stage(self.ctx)
        self.modules = self.stage.modules()
        for name, module in self.modules.items():
            if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                raise ValueError(f"stage module name {name!r} must be letters, digits and underscores")
            module.to(self.device)
            distributed.broadcast_module(module)
        self.updates = self.stage.updates()
        self._check_updates()
        # Which parameters each update trains: those of its modules that the stage left trainable.
        self.trainable = {id(p): p.requires_grad for m in self.modules.values() for p in m.parameters()}
        self.trained_modules = sorted({m for u in self.updates for m in u.modules})
        self.params = {u.name: self._update_params(u) for u in self.updates}
        self.optimizers = {
            u.name: torch.optim.AdamW(
                self.params[u.name], lr=u.optimizer.lr, betas=tuple(u.optimizer.betas), eps=u.optimizer.eps,
                weight_decay=u.optimizer.weight_decay,
            )
            for u in self.updates
        }
        self.ema = {name: EMA(self.modules[name], decay, self.stage.ema_start_step()) for name, decay in self.stage.ema_decays().items()}
        self.stream = BatchStream(
            self.stage.dataset(), loop.batch_size, seed=loop.seed, rank=dist.rank, world_size=dist.world_size,
            collate_fn=self.stage.collate, num_workers=loop.num_workers, pin_memory=self.device.type == "cuda",
        )
        self.step = 0
        self.train_seconds = 0.0  # wall-clock seconds trained, summed over resumes
        self.last_checkpoint: Path | None = None

    def _check_updates(self) -> None:
        names = [u.name for u in self.updates]
        if not self.updates or len(set(names)) != len(names):
            raise ValueError(f"a stage needs at least one update and unique update names, got {names}")
        for u in self.updates:
            missing = [m for m in u.modules if m not in self.modules]
            if missing:
                raise ValueError(f"update {u.name!r} trains {missing}, which are not in the stage's modules {sorted(self.modules)}")
            if u.every < 1:
                raise ValueError(f"update {u.name!r}: every must be >= 1, got {u.every}")
        unknown = set(self.stage.ema_decays()) - set(self.modules)
        if unknown:
            raise ValueError(f"EMA requested for unknown modules {sorted(unknown)}")

    def _update_params(self, update: Update) -> list[nn.Parameter]:
        seen, params = set(), []
        for name in update.modules:
            for p in self.modules[name].parameters():
                if self.trainable[id(p)] and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        if not params:
            raise ValueError(f"update {update.name!r} has no trainable parameters in {update.modules}")
        return params

    # -- weights to evaluate: EMA copies where kept ----------------------------------------------
    def eval_weights(self) -> dict[str, nn.Module]:
        return {name: self.ema[name].module if name in self.ema else module for name, module in self.modules.items()}

    # -- checkpoints -----------------------------------------------------------------------------
    def resume(self) -> None:
        path = distributed.broadcast_object(str(latest_checkpoint(self.run_dir) or ""))
        if not path:
            seed_everything(rank_seed(self.loop.seed, self.dist.rank))
            return
        path = Path(path)
        state = load_train_state(path, device=self.device)
        differences = _config_differences(state.config, self.config)
        if differences and self.dist.is_main:
            log.warning("resuming %s with a changed config:\n  %s", path, "\n  ".join(differences))
        try:
            for name, module in self.modules.items():
                module.load_state_dict(state.modules[name])
            for name, ema in self.ema.items():
                ema.load_state_dict(state.ema[name])
            for name, optimizer in self.optimizers.items():
                optimizer.load_state_dict(state.optimizers[name])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"checkpoint {path} does not match this stage's modules or optimisers: {err}") from err
        self.step = state.step
        self.stream.load_state_dict(state.extra["batches"])
        self.stage.load_state_dict(state.extra.get("stage", {}))
        self.train_seconds = float(state.extra.get("train_seconds", 0.0))
        if len(state.rng) == self.dist.world_size:
            restore_rng(*state.rng[self.dist.rank])
        else:
            log.warning("%s was written by %d process(es), this run has %d: reseeding, so the run is not bit-exact", path, len(state.rng), self.dist.world_size)
            seed_everything(rank_seed(self.loop.seed + self.step, self.dist.rank))
        self.last_checkpoint = path
        if self.dist.is_main:
            log.info("resumed from %s at step %d", path, self.step)

    def save_checkpoint(self) -> Path:
        self._hook(lambda: self.stage.before_checkpoint(self.step, self.eval_weights()))
        for module in list(self.modules.values()) + [e.module for e in self.ema.values()]:
            distributed.broadcast_buffers(module)  # the hook ran on rank 0 only
        rng = distributed.all_gather_object(capture_rng())
        path = checkpoint_path(self.run_dir, self.step)
        if self.dist.is_main:
            state = TrainState(
                step=self.step,
                config=self.config,
                modules={n: m.state_dict() for n, m in self.modules.items()},
                ema={n: e.state_dict() for n, e in self.ema.items()},
                optimizers={n: o.state_dict() for n, o in self.optimizers.items()},
                rng=rng,
                extra={"batches": self.stream.state_dict(), "stage": self.stage.state_dict(), "train_seconds": self.train_seconds},
            )
            save_train_state(path, state)
            for _, old in list_checkpoints(self.run_dir)[: -max(1, self.loop.keep_checkpoints)]:
                old.unlink(missing_ok=True)
        distributed.barrier()
        self.last_checkpoint = path
        return path

    # -- hooks run on rank 0, in eval mode, without touching the training RNG ---------------------
    def _hook(self, fn: Callable[[], Any]) -> Any:
        result = None
        if self.dist.is_main:
            modes = {name: m.training for name, m in self.modules.items()}
            for m in self.modules.values():
                m.eval()
            try:
                with preserved_rng(), torch.no_grad():
                    result = fn()
            finally:
                for name, m in self.modules.items():
                    m.train(modes[name])
        return result

    # -- one iteration -----------------------------------------------------------------------------
    def run_update(self, update: Update, acc: _LogAccumulator) -> None:
        params = self.params[update.name]
        chosen = {id(p) for p in params}
        for name in self.trained_modules:  # freeze every trained module this update does not train
            for p in self.modules[name].parameters():
                p.requires_grad_(id(p) in chosen)
        optimizer = self.optimizers[update.name]
        lr = update.optimizer.lr_at(self.step, self.loop.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = to_device(next(self.stream), self.device)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            loss, logs = update.objective(batch, self.step)
        if not torch.isfinite(loss.detach()).all():
            raise FloatingPointError(f"update {update.name!r} returned a non-finite loss {loss.item()} at step {self.step}")
        loss.backward()
        distributed.average_gradients(params)
        if update.optimizer.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, update.optimizer.grad_clip)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for name in update.modules:
            if name in self.ema:
                self.ema[name].update(self.modules[name], self.step)
        acc.add(f"{update.name}/loss", loss)
        acc.add(f"{update.name}/grad_norm", grad_norm)
        acc.add(f"{update.name}/lr", lr)
        for key, value in logs.items():
            acc.add(f"{update.name}/{key}", value)

    def run(self, on_step: Callable[[int, dict], None] | None) -> TrainResult:
        loop, is_main = self.loop, self.dist.is_main
        logger = RunLogger(self.run_dir, enabled=is_main, resume_step=self.step, tensorboard=loop.tensorboard)
        acc = _LogAccumulator()
        process_start = time.time()  # the time limit counts from here, whatever checkpoints happen
        started = process_start  # start of the span not yet added to train_seconds
        interval_start, interval_steps = time.time(), 0
        bar = tqdm(total=loop.max_steps, initial=self.step, disable=not (is_main and loop.progress), dynamic_ncols=True, desc=self.stage.name)
        stopped_early = False
        for m in self.modules.values():
            m.train()
        try:
            while self.step < loop.max_steps:
                for update in self.updates:
                    if self.step % update.every == 0:
                        self.run_update(update, acc)
                self.step += 1
                interval_steps += 1
                bar.update(1)
                scalars: dict[str, float] = {}
                if self.step % loop.log_every == 0 or self.step == loop.max_steps:
                    scalars = acc.means(self.device)
                    now = time.time()
                    scalars["time/step_seconds"] = (now - interval_start) / max(1, interval_steps)
                    interval_start, interval_steps = now, 0
                    logger.log(self.step, scalars)
                    bar.set_postfix({k.split("/")[0]: f"{v:.4g}" for k, v in scalars.items() if k.endswith("/loss")})
                if loop.eval_every and self.step % loop.eval_every == 0 and self.step < loop.max_steps:
                    self._evaluate(logger)
                if loop.sample_every and self.step % loop.sample_every == 0 and self.step < loop.max_steps:
                    self._hook(lambda: self.stage.sample(self.step, self.eval_weights(), self._sample_dir()))
                out_of_time = False
                if loop.time_limit_minutes > 0:
                    out_of_time = distributed.broadcast_object(time.time() - process_start > 60 * loop.time_limit_minutes)
                if self.step % loop.checkpoint_every == 0 or self.step == loop.max_steps or out_of_time:
                    self.train_seconds += time.time() - started  # stored in the checkpoint
                    self.save_checkpoint()
                    started = time.time()
                if on_step is not None:
                    on_step(self.step, scalars)
                if out_of_time:
                    log.info("time limit of %.1f minutes reached at step %d; resume with the same run_dir", loop.time_limit_minutes, self.step)
                    stopped_early = True
                    break
        finally:
            bar.close()
        self.train_seconds += time.time() - started
        metrics: dict = {}
        if not stopped_early:
            if self.last_checkpoint is None or not self.last_checkpoint.name.endswith(f"{self.step:08d}.safetensors"):
                self.save_checkpoint()
            self._hook(lambda: self.stage.sample(self.step, self.eval_weights(), self._sample_dir()))
            metrics = self._hook(lambda: self.stage.finish(self.step, self.eval_weights())) or {}
            logger.log(self.step, {f"final/{k}": v for k, v in metrics.items()})
        fingerprints = distributed.all_gather_object(distributed.fingerprint(self.modules))
        logger.log(
            self.step, {}, event="end", finished=not stopped_early, train_seconds=round(self.train_seconds, 2),
            world_size=self.dist.world_size, replica_fingerprints=fingerprints,
        )
        logger.close()
        if is_main and any(f != fingerprints[0] for f in fingerprints):
            log.error("replicas disagree on the weights: %s", fingerprints)
        return TrainResult(step=self.step, run_dir=self.run_dir, checkpoint=self.last_checkpoint, finished=not stopped_early, metrics=metrics)

    def _evaluate(self, logger: RunLogger) -> dict[str, float]:
        metrics = self._hook(lambda: self.stage.evaluate(self.step, self.eval_weights())) or {}
        logger.log(self.step, {f"eval/{k}": v for k, v in metrics.items()})
        return metrics

    def _sample_dir(self) -> Path:
        path = self.run_dir / "samples" / f"step_{self.step:08d}"
        path.mkdir(parents=True, exist_ok=True)
        return path


def train(
    make_stage: Callable[[RunContext], Stage],
    loop: LoopConfig,
    run_dir: str | Path,
    config: dict | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train (or resume) the stage built by `make_stage(ctx)` in `run_dir`.

    `config` is the JSON-able configuration stored in every checkpoint (the Hydra app passes the
    whole resolved config); `on_step(step, logged_scalars)` is called after each iteration on every
    rank. Works in one process or under `torchrun`.
    """
    dist = distributed.setup(loop.device)
    try:
        if loop.threads > 0:
            torch.set_num_threads(loop.threads)
        run_dir = Path(distributed.broadcast_object(str(Path(run_dir).absolute())))
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        trainer = _Trainer(make_stage, loop, run_dir, config or {}, dist)
        trainer.resume()
        result = trainer.run(on_step)
    except BaseException:
        distributed.teardown(wait=False)
        raise
    distributed.teardown()
    return result
