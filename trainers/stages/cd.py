"""stage=cd: causal consistency distillation (Causal Forcing++), an initialisation without stored pairs.

Three copies of the AR teacher: the student (trained), the frozen teacher, and an EMA of the student
as the consistency target. Each step: noise the ground truth to a point n of the 48-step shifted
grid, take one teacher Euler step n -> n+1 with CFG and clean context, and match the student's x0 at
n to the target's x0 at n+1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import torch.nn as nn
from torch.utils.data import Dataset

from ..ema import EMA
from ..objectives import consistency_loss
from ..stage import ModelChoice, OptimizerConfig, RunContext, Stage, Update
from . import worlds
from worldsdk.data.datasets import collate_clips


@dataclass(frozen=True)
class CdStageConfig:
    """The `stage:` section for stage=cd (mirrored by conf/stage/cd.yaml)."""

    name: str = "cd"
    teacher: str = ""  # world file of the AR teacher
    latents: str = ""
    ode_steps: int = 48
    guidance: float = 3.0
    target_decay: float = 0.99  # EMA of the student used as the consistency target
    target_start_step: int = 200  # before it, the target tracks the student exactly
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(
        lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01, grad_clip=1.0, warmup_steps=50, decay="constant"))


class CdStage(Stage):
    name = "cd"
    config_class = CdStageConfig

    def __init__(self, config: CdStageConfig, model: ModelChoice, ctx: RunContext):
        self.config, self.ctx = config, ctx
        world = worlds.load_world(config.teacher, "an AR teacher (stage.teacher=.../world.safetensors)")
        self.spec, self.autoencoder = world.spec, world.autoencoder
        self.text_encoder = world.text_encoder.to(ctx.device).eval().requires_grad_(False)
        self.teacher = worlds.frozen_copy(world.model).to(ctx.device)
        self.student = world.model.to(ctx.device).train()
        self.target = EMA(self.student, config.target_decay, config.target_start_step)
        self.data = worlds.open_latent_clips(config.latents, self.student.config.latent_frames_max)

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "target": self.target.module}  # the target is checkpointed, not trained

    def updates(self) -> list[Update]:
        return [Update("cd", self.loss, modules=("student",), optimizer=self.config.optimizer)]

    def dataset(self) -> Dataset:
        return self.data

    def collate(self, items: list):
        return collate_clips(items)

    def loss(self, batch, step: int):
        self.target.update(self.student, step)  # the EMA after the previous update
        x0, cond = worlds.clip_batch(batch, self.text_encoder, self.ctx.device)
        return consistency_loss(self.student, self.target.module, self.teacher, x0, cond, self.spec.schedule,
                                self.config.ode_steps, self.config.guidance)

    def sample(self, step: int, weights: Mapping[str, nn.Module], out_dir: Path) -> None:
        worlds.sample_rollouts(out_dir / f"rollout_{step:06d}.mp4", weights["student"], self.text_encoder,
                               self.autoencoder, self.spec, self.data, self.ctx.device)

    def finish(self, step: int, weights: Mapping[str, nn.Module]) -> dict[str, float]:
        worlds.save_world(self.ctx, weights["student"], self.text_encoder, self.autoencoder, self.spec,
                          {"stage": "cd", "step": step, "config": asdict(self.config)})
        return {}
