"""What a training stage is: modules, a data set, and a schedule of objective -> optimiser updates.

Stages (autoencoder, teacher, ode, cd, dmd) differ only in their objectives and update schedule;
`trainers.loop.train` does everything else (devices, DDP or FSDP, precision, clipping, EMA,
logging, checkpoints, resuming). A stage subclasses `Stage` and implements `modules`, `updates` and
`dataset`; the hooks (`sample`, `evaluate`, `before_checkpoint`, `finish`) are optional.

Example: DMD's schedule (Self Forcing, `dfake_gen_update_ratio: 5`) is two updates, run in order:

    def updates(self):
        return [
            Update("generator", self.generator_loss, modules=("generator",), optimizer=self.config.generator_optim, every=5),
            Update("critic", self.critic_loss, modules=("critic",), optimizer=self.config.critic_optim),
        ]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import torch
import torch.nn as nn
from torch.utils.data import Dataset, default_collate

# An objective maps (batch, step) to (scalar loss, logs); logs are floats or 0-dim tensors.
Objective = Callable[[Any, int], tuple[torch.Tensor, dict[str, Any]]]

LR_DECAYS = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW for one update; each stage's YAML sets its own (the paper: lr 2e-6, betas (0, 0.999))."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    grad_clip: float = 10.0  # max global grad norm (the reference trainers hard-code 10); 0 = no clipping
    warmup_steps: int = 0  # linear warm-up from 0
    decay: str = "constant"  # constant | cosine | linear, to `min_lr_ratio * lr` at the run's last step
    min_lr_ratio: float = 0.0

    def lr_at(self, step: int, max_steps: int) -> float:
        """Learning rate for the update at 0-based iteration `step` of a `max_steps` run."""
        if self.decay not in LR_DECAYS:
            raise ValueError(f"optimizer decay must be one of {LR_DECAYS}, got {self.decay!r}")
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.decay == "constant" or max_steps <= self.warmup_steps:
            return self.lr * warm
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / max(1, max_steps - self.warmup_steps)))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.decay == "cosine" else 1.0 - progress
        return self.lr * warm * (self.min_lr_ratio + (1 - self.min_lr_ratio) * shape)


@dataclass(frozen=True)
class Update:
    """One entry of a stage's update schedule.

    At every iteration `step` with `step % every == 0`, the loop draws a fresh batch, computes
    `objective(batch, step) -> (loss, logs)`, back-propagates into the parameters of `modules` only
    (the other trained modules are frozen for this update), averages the gradients over ranks,
    clips them and steps this update's own AdamW. Logs are recorded as `<name>/<key>`.
    """

    name: str
    objective: Objective
    modules: tuple[str, ...]
    optimizer: OptimizerConfig = OptimizerConfig()
    every: int = 1


@dataclass(frozen=True)
class ModelChoice:
    """The `model=` group: which presets a stage builds (names in worldsdk's preset tables)."""

    name: str = "small"
    preset: str = "small"  # worldsdk.config.MODEL_PRESETS
    autoencoder: str | None = "small"  # worldsdk.autoencoder.AUTOENCODER_PRESETS; None: the Wan VAE


@dataclass(frozen=True)
class RunContext:
    """Where and how a stage runs; given to the stage's constructor by the loop."""

    run_dir: Path
    device: torch.device
    rank: int = 0
    world_size: int = 1
    autocast_dtype: torch.dtype | None = None  # bf16 when the loop runs under autocast

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> torch.autocast:
        """The loop's autocast context, for hooks that run models outside the objectives."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None)


class Stage:
    """Base class of a training stage. Constructed as `StageClass(config, model, ctx)`.

    `modules()` names every module whose state the checkpoint holds (trained modules and any whose
    buffers the stage changes); frozen helpers (a teacher) stay private to the stage, which puts them
    on `ctx.device` itself. Hooks run on rank 0 only, with the global RNG states saved and restored
    around them, so that sampling or evaluating never changes the training trajectory. They receive
    `weights`: the modules to evaluate, i.e. the EMA copy where the stage keeps one. Under
    `loop.strategy=fsdp` these are whole copies gathered from the shards, and the stage's own
    references to its trained modules hold only shards: hooks must use `weights`.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = object

    def modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def updates(self) -> list[Update]:
        raise NotImplementedError

    def frozen_modules(self) -> dict[str, nn.Module]:
        """Large frozen helpers (DMD's real score) that the objectives call on every rank.

        With `loop.strategy=fsdp` the loop shards them like the trained modules, so no rank holds a
        whole copy; they are neither trained nor checkpointed, and hooks (rank 0 only) must not call
        them. Their parameters must already be frozen. With ddp they are left as they are.
        """
        return {}

    def dataset(self) -> Dataset:
        """A map-style data set; item i must be a deterministic function of i (randomness belongs in objectives)."""
        raise NotImplementedError

    def collate(self, items: list) -> Any:
        return default_collate(items)

    def ema_decays(self) -> dict[str, float]:
        """Module name -> EMA decay, for the modules to keep an exponential moving average of."""
        return {}

    def ema_start_step(self) -> int:
        """Before this step the EMA copies just track the weights (Self Forcing: 200)."""
        return 0

    def state_dict(self) -> dict:
        """JSON-able state of the stage itself (not of its modules), stored in every checkpoint."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""

    def sample(self, step: int, weights: Mapping[str, nn.Module], out_dir: Path) -> None:
        """Write samples (images, videos) for `step` into `out_dir`."""

    def evaluate(self, step: int, weights: Mapping[str, nn.Module]) -> dict[str, float]:
        """Return evaluation metrics; logged as `eval/<key>`."""
        return {}

    def before_checkpoint(self, step: int, weights: Mapping[str, nn.Module]) -> None:
        """Update state that must be current in every checkpoint (e.g. latent statistics)."""

    def finish(self, step: int, weights: Mapping[str, nn.Module]) -> dict[str, float]:
        """Write the stage's final artefacts into `ctx.run_dir`; return final metrics (logged as `final/<key>`)."""
        return {}

