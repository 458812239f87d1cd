"""stage=dmd: distribution matching distillation with self-rollout (Causal Forcing stage 3 = Self Forcing's).

The generator (a few-step causal student from stage=ode or stage=cd, or the AR teacher directly)
rolls out whole clips chunk by chunk with its own KV cache, under the recorded games' prompts and
action sequences (no video is used); one exit step per iteration keeps gradients. The real score is
a frozen bidirectional teacher with CFG; the critic (fake score) starts as a copy of it and learns
the generator's distribution by flow matching on its samples, 5 critic updates per generator update.
The generator's EMA is the world written at the end.

Long rollouts (`rollout_frames` > the clip; Self Forcing++'s windows): a student trained only on
clips as long as the real score's drifts once its cache holds nothing but its own frames. With
`rollout_frames`, each step starts from `context_frames` recorded frames (as a played world starts),
rolls out a random number of chunks up to `rollout_frames` as at inference, the cache rolling, and
the real score and the critic see the last clip-length window of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from .. import distributed
from ..objectives import Conditioning, critic_loss, dmd_generator_loss, self_rollout
from ..stage import ModelChoice, OptimizerConfig, RunContext, Stage, Update
from . import worlds
from worldsdk.data.datasets import collate_clips


@dataclass(frozen=True)
class DmdStageConfig:
    """The `stage:` section for stage=dmd (mirrored by conf/stage/dmd.yaml)."""

    name: str = "dmd"
    generator: str = ""  # world file of the student to distil (ode / cd output, or the AR teacher)
    real: str = ""  # world file of the bidirectional teacher (real score; the critic starts from it)
    latents: str = ""  # prompts and action sequences come from the recordings
    guidance: float = 3.0  # CFG of the real score
    critic_updates: int = 5  # critic updates per generator update (dfake_gen_update_ratio)
    ema_decay: float = 0.99
    ema_start_step: int = 200
    rollout_frames: int = 0  # frames rolled out per step (at most; drawn per step); 0: one clip
    context_frames: int = 0  # recorded frames committed before each rollout (a world's start)
    generator_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(
        lr=2e-5, betas=(0.0, 0.999), weight_decay=0.01, grad_clip=10.0))
    critic_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(
        lr=4e-6, betas=(0.0, 0.999), weight_decay=0.01, grad_clip=10.0))


class DmdStage(Stage):
    name = "dmd"
    config_class = DmdStageConfig

    def __init__(self, config: DmdStageConfig, model: ModelChoice, ctx: RunContext):
        self.config, self.ctx = config, ctx
        gen_world = worlds.load_world(config.generator, "a generator (stage.generator=.../world.safetensors)")
        real_world = worlds.load_world(config.real, "a bidirectional teacher (stage.real=.../world.safetensors)")
        if gen_world.model.config.latent_frames_max != real_world.model.config.latent_frames_max:
            raise ValueError("generator and real score must be trained on clips of the same length")
        self.spec, self.autoencoder = gen_world.spec, gen_world.autoencoder
        self.generator = gen_world.model.to(ctx.device).train()
        self.gen_text = gen_world.text_encoder.to(ctx.device).eval().requires_grad_(False)
        self.real = worlds.frozen_copy(real_world.model).to(ctx.device)
        self.real_text = real_world.text_encoder.to(ctx.device).eval().requires_grad_(False)
        self.critic = real_world.model.to(ctx.device).train()
        if gen_world.spec.schedule != real_world.spec.schedule:
            raise ValueError(f"generator and real score were trained on different schedules: "
                             f"{gen_world.spec.schedule} vs {real_world.spec.schedule}")
        self.schedule = self.spec.schedule
        self.sigmas = self.schedule.student_sigmas().to(ctx.device)
        self.window = self.generator.config.latent_frames_max
        fc = self.generator.config.frames_per_chunk
        self.rollout_frames = config.rollout_frames or self.window
        if self.rollout_frames < self.window or self.rollout_frames % fc or config.context_frames % fc or config.context_frames < 0:
            raise ValueError(f"stage.rollout_frames must be 0 or a multiple of the chunk ({fc}) of at least the clip "
                             f"({self.window}), stage.context_frames a multiple of the chunk; got {config.rollout_frames}, "
                             f"{config.context_frames}")
        self.sink_frames = self.spec.sink_frames  # the world's, once a rollout rolls past the window
        self.data = worlds.open_latent_clips(config.latents, config.context_frames + self.rollout_frames)

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "critic": self.critic}

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"real": self.real}  # sharded too under loop.strategy=fsdp

    def updates(self) -> list[Update]:
        c = self.config
        return [
            Update("generator", self.generator_loss, modules=("generator",), optimizer=c.generator_optimizer, every=c.critic_updates),
            Update("critic", self.critic_loss, modules=("critic",), optimizer=c.critic_optimizer),
        ]

    def dataset(self) -> Dataset:
        return self.data

    def collate(self, items: list):
        return collate_clips(items)

    def ema_decays(self) -> dict[str, float]:
        return {"generator": self.config.ema_decay}

    def ema_start_step(self) -> int:
        return self.config.ema_start_step

    def _rollout(self, batch, grad: bool) -> tuple[torch.Tensor, Conditioning]:
        x0, gen_cond = worlds.clip_batch(batch, self.gen_text, self.ctx.device)
        # One exit step (and rollout length) for all ranks, rank 0's (Self Forcing broadcasts it too):
        # every rank then runs the same number of generator passes, which FSDP's per-block all-gathers
        # require. Every rank still draws, so each rank's RNG stream does not depend on its rank.
        exit_index = distributed.broadcast_int(int(torch.randint(0, len(self.sigmas), (1,))))
        k, fc = self.config.context_frames, self.generator.config.frames_per_chunk
        extra = (self.rollout_frames - self.window) // fc
        frames = self.window + fc * distributed.broadcast_int(int(torch.randint(0, extra + 1, (1,)))) if extra else self.window
        context, cond = x0[:, :, :k], Conditioning(gen_cond.text, gen_cond.actions[:, : k + frames])
        noise = torch.randn_like(x0[:, :, :frames])
        with torch.set_grad_enabled(grad):
            x = self_rollout(self.generator, noise, cond, self.sigmas, exit_index, context=context if k else None,
                             window=self.window, sink_frames=self.sink_frames)
        actions = cond.actions[:, k + frames - self.window :]
        real_cond = Conditioning(self.real_text.encode(list(batch["prompt"])), actions)
        return x, real_cond

    def generator_loss(self, batch, step: int):
        x, cond = self._rollout(batch, grad=True)
        return dmd_generator_loss(x, self.real, self.critic, cond, self.schedule, self.config.guidance)

    def critic_loss(self, batch, step: int):
        x, cond = self._rollout(batch, grad=False)
        return critic_loss(self.critic, x, cond, self.schedule)

    def sample(self, step: int, weights: Mapping[str, nn.Module], out_dir: Path) -> None:
        worlds.sample_rollouts(out_dir / f"rollout_{step:06d}.mp4", weights["generator"], self.gen_text,
                               self.autoencoder, self.spec, self.data, self.ctx.device)

    def finish(self, step: int, weights: Mapping[str, nn.Module]) -> dict[str, float]:
        worlds.save_world(self.ctx, weights["generator"], self.gen_text, self.autoencoder, self.spec,
                          {"stage": "dmd", "step": step, "config": asdict(self.config)})
        return {}
