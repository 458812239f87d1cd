"""The training loop every stage shares: written once, stages plug in through `trainers.stage.Stage`.

`train(make_stage, loop, run_dir)` sets up the process (torchrun group, device, seeds), builds the
stage, and runs `loop.max_steps` iterations of the stage's update schedule with AdamW, gradient
averaging over ranks, clipping, bf16 autocast, EMA, logging, samples, evaluation and atomic
checkpoints. Calling it again with the same `run_dir` resumes from the newest checkpoint there,
exactly: weights, EMA, optimiser moments, the RNG states of every rank and the data position are all
restored, so a killed run continues on the same trajectory as one that was never stopped.

`loop.strategy` picks how ranks share the work: `ddp` replicates every module on every rank and
averages gradients; `fsdp` shards weights, gradients, optimiser state and EMA with FSDP2
(trainers/fsdp.py) and writes sharded checkpoint folders. The schedule, EMA, hooks and logging are
the same code for both.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from . import distributed
from . import fsdp as fsdp_lib
from .batches import BatchStream
from .ema import EMA
from .logger import RunLogger
from .stage import RunContext, Stage, Update
from worldsdk.train_checkpoint import (
    CheckpointError, TrainState, capture_rng, load_sharded_tensors, load_sharded_train_state, load_train_state, restore_rng,
    save_sharded_train_state, save_train_state,
)

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fastest")
# step_N.safetensors: one file (ddp); step_N: a sharded folder (fsdp). A step_N.tmp folder is unfinished.
CHECKPOINT_NAME = re.compile(r"^step_(\d+)(\.safetensors)?$")


@dataclass(frozen=True)
class LoopConfig:
    """Settings of the shared loop (the `loop:` section of the Hydra config)."""

    max_steps: int = 1000
    batch_size: int = 16  # per process; the global batch is batch_size * world size
    seed: int = 0
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    # auto: bf16 autocast on GPU, fp32 on CPU | fp32 | bf16 | fastest: bf16 on GPU and on CPUs with native bf16
    precision: str = "auto"
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
    strategy: str = "ddp"  # ddp (replicated weights, averaged gradients) | fsdp (FSDP2: everything sharded)
    activation_checkpointing: bool = False  # fsdp: recompute each DiT block in the backward pass


@dataclass(frozen=True)
class TrainResult:
    step: int
    run_dir: Path
    checkpoint: Path | None
    finished: bool  # reached max_steps (else stopped by the time limit or Ctrl-C)
    metrics: dict = field(default_factory=dict)  # the stage's final metrics (rank 0)
    interrupted: bool = False  # stopped by Ctrl-C (SIGINT), with a checkpoint to resume from

RESUME_HINT = "resume with the same command"


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


def checkpoint_path(run_dir: Path, step: int, sharded: bool = False) -> Path:
    name = f"step_{step:08d}" if sharded else f"step_{step:08d}.safetensors"
    return Path(run_dir) / "checkpoints" / name


def checkpoint_step(path: Path) -> int:
    match = CHECKPOINT_NAME.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint name (step_<N>.safetensors or step_<N>)")
    return int(match.group(1))


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's checkpoints (files and sharded folders), oldest first."""
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


def _remove_checkpoint(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _overrides(stage: Stage, hook: str) -> bool:
    """Whether the stage implements `hook` (gathering sharded weights for a no-op hook would be waste)."""
    return getattr(type(stage), hook) is not getattr(Stage, hook)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX). Without it oneDNN
    emulates them: on an AVX2 CPU a bf16 matmul ran 11x slower than fp32, a teacher step 20x."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise ValueError(f"loop.precision must be one of {PRECISIONS}, got {precision!r}")
    native = device.type == "cuda" or cpu_has_native_bf16()
    if precision == "bf16" and not native:
        log.warning("loop.precision=bf16 on a CPU without native bf16 (%s): its matmuls are emulated, about 10x "
                    "slower than fp32; loop.precision=fastest picks the faster one", torch.backends.cpu.get_cpu_capability())
    if precision == "bf16" or (precision == "auto" and device.type == "cuda") or (precision == "fastest" and native):
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


def _sharded_grad_norm_(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Global gradient norm of sharded parameters (a collective), clipping to `max_norm` when > 0."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return distributed.full_tensor(norm)


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


class _SigintFlag:
    """Turns the first Ctrl-C into a flag the loop reads between iterations (a KeyboardInterrupt in
    the middle of an optimiser step or a collective would leave nothing consistent to save); a
    second Ctrl-C interrupts at once. Installed only in the main thread, where Python allows it."""

    def __init__(self):
        self.raised = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True
        log.warning("Ctrl-C: stopping after this step with a checkpoint (Ctrl-C again to stop now, without one)")

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


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
        self.trained_modules = sorted({m for u in self.updates for m in u.modules})
        # EMA copies start from the broadcast, unsharded weights; under FSDP they are sharded with their modules.
        self.ema = {name: EMA(self.modules[name], decay, self.stage.ema_start_step()) for name, decay in self.stage.ema_decays().items()}
        self.sharded: fsdp_lib.ShardedModules | None = None
        if loop.strategy == "fsdp":
            frozen = self._frozen_modules()
            self.sharded = fsdp_lib.ShardedModules(self.device, self.autocast_dtype, loop.activation_checkpointing)
            self.sharded.shard(self.modules, self.ema, frozen, set(self.trained_modules))
        # Which parameters each update trains: those of its modules that the stage left trainable
        # (read after sharding: FSDP replaces every parameter by its shard).
        self.trainable = {id(p): p.requires_grad for m in self.modules.values() for p in m.parameters()}
        self.params = {u.name: self._update_params(u) for u in self.updates}
        self.optimizers = {
            u.name: torch.optim.AdamW(
                self.params[u.name], lr=u.optimizer.lr, betas=tuple(u.optimizer.betas), eps=u.optimizer.eps,
                weight_decay=u.optimizer.weight_decay,
            )
            for u in self.updates
        }
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

    def _frozen_modules(self) -> dict[str, nn.Module]:
        frozen = self.stage.frozen_modules()
        for name, module in frozen.items():
            if name in self.modules:
                raise ValueError(f"stage module {name!r} is both checkpointed (modules()) and frozen (frozen_modules())")
            if any(p.requires_grad for p in module.parameters()):
                raise ValueError(f"frozen module {name!r} has trainable parameters; freeze it (requires_grad_(False)) first")
            module.to(self.device)
        return frozen

    def _restore_trainable(self) -> None:
        """Undo the last update's freezing: the optimiser state is read and written for every trained parameter."""
        for name in self.trained_modules:
            for p in self.modules[name].parameters():
                p.requires_grad_(self.trainable[id(p)])

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
        """The modules hooks evaluate (sharded under FSDP; `_hook` gives the hooks whole copies)."""
        return {name: self.ema[name].module if name in self.ema else module for name, module in self.modules.items()}

    # -- checkpoints -----------------------------------------------------------------------------
    def _read_newest_checkpoint(self) -> tuple[Path, TrainState] | None:
        """The newest readable checkpoint; one cut short (a full disk, a kill during a copy) is skipped with a warning."""
        paths = [Path(p) for p in distributed.broadcast_object([str(p) for _, p in list_checkpoints(self.run_dir)])]
        first_error: CheckpointError | None = None
        for path in reversed(paths):
            written_sharded = path.is_dir()
            if written_sharded != (self.sharded is not None):
                raise CheckpointError(
                    f"checkpoint {path} was written with loop.strategy={'fsdp' if written_sharded else 'ddp'}; this run has "
                    f"loop.strategy={self.loop.strategy}: resume it with the strategy that wrote it, or start a new run_dir"
                )
            try:
                state = load_sharded_train_state(path) if written_sharded else load_train_state(path, device=self.device)
            except CheckpointError as err:
                first_error = first_error or err
                if self.dist.is_main:
                    log.warning("checkpoint %s is unreadable (%s); trying the previous one", path, err)
                continue
            if first_error is not None and self.dist.is_main:
                log.warning("resuming from %s, the newest valid checkpoint, instead of the unreadable %s", path, paths[-1])
            return path, state
        if first_error is not None:
            raise CheckpointError(f"no readable checkpoint in {self.run_dir / 'checkpoints'}: {first_error}") from first_error
        return None

    def resume(self) -> None:
        found = self._read_newest_checkpoint()
        if found is None:
            seed_everything(rank_seed(self.loop.seed, self.dist.rank))
            return
        path, state = found
        written_sharded = path.is_dir()
        differences = _config_differences(state.config, self.config)
        if differences and self.dist.is_main:
            log.warning("resuming %s with a changed config:\n  %s", path, "\n  ".join(differences))
        if written_sharded:
            self._load_sharded(path, state)
        else:
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

    def _load_sharded(self, path: Path, state: TrainState) -> None:
        """Weights, EMA and optimiser moments from a sharded folder, on however many ranks this run has."""
        missing = sorted(set(self.optimizers) - set(state.optimizers))
        if missing:
            raise CheckpointError(f"checkpoint {path} has no optimiser state for update(s) {missing}")
        shards, _ = self.sharded.checkpoint_tensors(self.optimizers)
        load_sharded_tensors(path, shards)
        groups = {name: state.optimizers[name]["param_groups"] for name in self.optimizers}
        try:
            self.sharded.load_checkpoint_tensors(shards, self.optimizers, groups)
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"checkpoint {path} does not match this stage's modules or optimisers: {err}") from err

    def save_checkpoint(self) -> Path:
        self._hook(lambda weights: self.stage.before_checkpoint(self.step, weights),
                   needed=_overrides(self.stage, "before_checkpoint"), keep_buffers=True)
        for module in list(self.modules.values()) + [e.module for e in self.ema.values()]:
            distributed.broadcast_buffers(module)  # the hook ran on rank 0 only
        rng = distributed.all_gather_object(capture_rng())
        extra = {"batches": self.stream.state_dict(), "stage": self.stage.state_dict(), "train_seconds": self.train_seconds,
                 "strategy": self.loop.strategy, "world_size": self.dist.world_size}
        if self.sharded is None:
            path = checkpoint_path(self.run_dir, self.step)
            if self.dist.is_main:
                state = TrainState(
                    step=self.step,
                    config=self.config,
                    modules={n: m.state_dict() for n, m in self.modules.items()},
                    ema={n: e.state_dict() for n, e in self.ema.items()},
                    optimizers={n: o.state_dict() for n, o in self.optimizers.items()},
                    rng=rng,
                    extra=extra,
                )
                save_train_state(path, state)
        else:
            path = checkpoint_path(self.run_dir, self.step, sharded=True)
            self._restore_trainable()
            shards, groups = self.sharded.checkpoint_tensors(self.optimizers)
            state = TrainState(step=self.step, config=self.config, modules={}, ema={}, rng=rng, extra=extra,
                               optimizers={n: {"state": {}, "param_groups": g} for n, g in groups.items()})
            save_sharded_train_state(path, state, shards)
        if self.dist.is_main:
            for _, old in list_checkpoints(self.run_dir)[: -max(1, self.loop.keep_checkpoints)]:
                _remove_checkpoint(old)
        distributed.barrier()
        self.last_checkpoint = path
        return path

    # -- hooks run on rank 0, in eval mode, without touching the training RNG ---------------------
    def _hook(self, fn: Callable[[dict[str, nn.Module]], Any], needed: bool = True, keep_buffers: bool = False) -> Any:
        """`fn(weights)` on rank 0. Under FSDP, `weights` are whole copies gathered from the shards
        (every rank takes part), and with `keep_buffers` the buffers the hook set on them are copied
        back into the sharded modules. `needed=False` skips a hook the stage does not implement."""
        if not needed:
            return None
        sources = self.eval_weights()
        weights = sources if self.sharded is None else self.sharded.full_copies(sources)
        result = None
        if self.dist.is_main:
            modes = {name: m.training for name, m in self.modules.items()}
            for m in self.modules.values():
                m.eval()
            try:
                with preserved_rng(), torch.no_grad():
                    result = fn(weights)
            finally:
                for name, m in self.modules.items():
                    m.train(modes[name])
            if keep_buffers and self.sharded is not None:
                self.sharded.copy_buffers(weights, sources)
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
        if self.sharded is not None:  # FSDP has reduce-scattered (averaged) the gradients during backward
            grad_norm = _sharded_grad_norm_(params, update.optimizer.grad_clip)
        else:
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
        stopped_early = interrupted = False
        for m in self.modules.values():
            m.train()
        sigint = _SigintFlag()
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
                    self._sample(logger)
                out_of_time = False
                if loop.time_limit_minutes > 0:
                    out_of_time = distributed.broadcast_object(time.time() - process_start > 60 * loop.time_limit_minutes)
                # Ctrl-C is only acted on here, between iterations, where every rank can checkpoint together.
                interrupted = distributed.broadcast_object(sigint.raised) if self.dist.world_size > 1 else sigint.raised
                if self.step % loop.checkpoint_every == 0 or self.step == loop.max_steps or out_of_time or interrupted:
                    self.train_seconds += time.time() - started  # stored in the checkpoint
                    self.save_checkpoint()
                    started = time.time()
                if on_step is not None:
                    on_step(self.step, scalars)
                if interrupted:
                    if is_main:
                        log.warning("interrupted at step %d; checkpoint %s saved: %s", self.step, self.last_checkpoint, RESUME_HINT)
                    stopped_early = True
                    break
                if out_of_time:
                    log.info("time limit of %.1f minutes reached at step %d; resume with the same run_dir", loop.time_limit_minutes, self.step)
                    stopped_early = True
                    break
        finally:
            sigint.restore()
            bar.close()
        self.train_seconds += time.time() - started
        metrics: dict = {}
        if not stopped_early:
            if self.last_checkpoint is None or checkpoint_step(self.last_checkpoint) != self.step:
                self.save_checkpoint()
            self._sample(logger)
            metrics = self._hook(lambda w: self.stage.finish(self.step, w), needed=_overrides(self.stage, "finish")) or {}
            logger.log(self.step, {f"final/{k}": v for k, v in metrics.items()})
        fingerprints = distributed.all_gather_object(distributed.fingerprint(self.modules))
        logger.log(
            self.step, {}, event="end", finished=not stopped_early, train_seconds=round(self.train_seconds, 2),
            world_size=self.dist.world_size, replica_fingerprints=fingerprints,
        )
        logger.close()
        if is_main and any(f != fingerprints[0] for f in fingerprints):
            log.error("replicas disagree on the weights: %s", fingerprints)
        return TrainResult(step=self.step, run_dir=self.run_dir, checkpoint=self.last_checkpoint, finished=not stopped_early,
                           metrics=metrics, interrupted=interrupted)

    def _evaluate(self, logger: RunLogger) -> dict[str, float]:
        metrics = self._hook(lambda w: self.stage.evaluate(self.step, w), needed=_overrides(self.stage, "evaluate")) or {}
        logger.log(self.step, {f"eval/{k}": v for k, v in metrics.items()})
        return metrics

    def _sample(self, logger: RunLogger) -> None:
        """The stage's samples, written as files and shown in TensorBoard (images and clips)."""
        if not _overrides(self.stage, "sample"):
            return
        self._hook(lambda w: self.stage.sample(self.step, w, self._sample_dir()))  # the folder is made on rank 0 only
        if self.dist.is_main:
            logger.log_samples(self.step, self.run_dir / "samples" / f"step_{self.step:08d}")

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
    if loop.strategy not in fsdp_lib.STRATEGIES:
        raise ValueError(f"loop.strategy must be one of {fsdp_lib.STRATEGIES}, got {loop.strategy!r}")
    if loop.activation_checkpointing and loop.strategy != "fsdp":
        raise ValueError("loop.activation_checkpointing needs loop.strategy=fsdp (it also runs on one process)")
    dist = distributed.setup(loop.device, group_of_one=loop.strategy == "fsdp")
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
        distributed.teardown(dist, wait=False)
        raise
    distributed.teardown(dist)
    return result
