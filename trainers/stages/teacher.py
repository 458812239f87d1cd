"""stage=teacher: diffusion training of the world model (Causal Forcing stage 1).

mode=teacher_forcing is the AR teacher: clean and noisy copies in one sequence, an independent t per
chunk on the shifted grid, each noisy chunk seeing the clean history (the paper's choice);
mode=diffusion_forcing conditions on the noisy history instead (the paper's Table 2 baseline);
mode=bidirectional trains with full attention and one t per clip: the DMD real score, the critic's
initialisation and the Self Forcing baseline's teacher. The text encoder trains with the model;
prompts and actions are dropped at random so classifier-free guidance works. The loss is the
bell-weighted v-MSE, with extra weight on latent pixels that hold objects (the ball is a few
pixels: without it the model learns the background and the paddles first, the ball last).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping

import torch.nn as nn
from torch.utils.data import Dataset

from ..objectives import TEACHER_MODES, drop_conditioning, teacher_loss
from ..stage import ModelChoice, OptimizerConfig, RunContext, Stage, Update
from . import worlds
from worldsdk.config import MODEL_PRESETS
from worldsdk.data.datasets import collate_clips
from worldsdk.data.store import EpisodeStore
from worldsdk.evaluation import opposite_actions
from worldsdk.probe import load_clips, probe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherStageConfig:
    """The `stage:` section for stage=teacher (mirrored by conf/stage/teacher.yaml)."""

    name: str = "teacher"
    mode: str = "teacher_forcing"  # teacher_forcing | diffusion_forcing | bidirectional
    latents: str = ""  # latent cache of the recordings
    autoencoder: str = ""  # the autoencoder that made the cache (it ships inside the world file)
    init: str = ""  # optional world file to start from (fine-tuning)
    # ModelConfig fields to change on top of `init`'s model, or of the preset's when there is no init
    # (command line: +stage.grow.action_map=true): rebuilt with them, keeping every weight the model had;
    # new pathways start at zero (worlds.grown_model)
    grow: dict = field(default_factory=dict)
    # The model's top-level parts to train (e.g. ("local",): the convolutional path alone, on a frozen
    # trunk and text encoder, whose forward then builds no graph); empty: the whole model and text encoder
    trainable: tuple[str, ...] = ()
    clip_frames: int = 0  # latent frames per clip; 0 = the model's trained length
    p_drop_text: float = 0.1
    p_drop_action: float = 0.1
    foreground_weight: float = 4.0
    # Extra loss weight on latent pixels that changed since the previous frame (worlds.motion_weight):
    # the dynamics are the few pixels that move; 0 = off. Adds to foreground_weight's when both are on.
    motion_weight: float = 0.0
    # Training draws sigma from the grid of this shift instead of the world's (0: the world's). > 1 puts
    # more of the draws at high noise, where a chunk is predicted from its history (the dynamics); the
    # loss weight and the world's samplers keep the world's schedule.
    draw_shift: float = 0.0
    # teacher_forcing: the clean history corrupted with noise up to this level, given as its timestep
    # (GameNGen's context augmentation, against the drift of long rollouts); 0: clean history
    context_noise: float = 0.0
    # teacher_forcing, a model with a history predictor (ModelConfig.predictor_channels, e.g. grown with
    # +stage.grow.predictor_channels=96): the weight of its own regression loss beside the diffusion loss
    predictor_weight: float = 1.0
    timestep_shift: float = 0.0  # 0: the preset's (or the initial world's) schedule; else written into the world's
    ema_decay: float = 0.999
    # A recorded dataset of the same game: each eval (loop.eval_every) runs the learnability probe
    # (worldsdk/probe.py) on its test split (all of it with probe_split=all): ball recall, paddle
    # error and the keys' effect from history at each sigma, logged as eval/probe/<sigma>/<metric>.
    probe_data: str = ""
    probe_split: str = "test"  # test | all
    probe_sigmas: tuple[float, ...] = (1.0, 0.25)
    probe_clips_per_episode: int = 4
    # Held at 1e-3: a teacher learns to use its history in a sudden transition, which a decayed rate
    # postpones past the end of a CPU budget (docs/worlds.md, "Why the first teacher ignored its history").
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(
        lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01, grad_clip=1.0, warmup_steps=100, decay="constant", min_lr_ratio=0.1))


class TeacherStage(Stage):
    name = "teacher"
    config_class = TeacherStageConfig

    def __init__(self, config: TeacherStageConfig, model: ModelChoice, ctx: RunContext):
        if config.mode not in TEACHER_MODES:
            raise ValueError(f"stage.mode must be one of {TEACHER_MODES}, got {config.mode!r}")
        self.config, self.choice, self.ctx = config, model, ctx
        if config.init:
            world = worlds.load_world(config.init, "an initial world")
            self.model, self.text_encoder, self.autoencoder, self.spec = world.model, world.text_encoder, world.autoencoder, world.spec
            if config.grow:
                self.model = worlds.grown_model(self.model, config.grow)
            clip = config.clip_frames or self.model.config.latent_frames_max
            self.data = worlds.open_latent_clips(config.latents, clip)
        else:
            preset_frames = MODEL_PRESETS[model.preset].latent_frames_max
            self.data = worlds.open_latent_clips(config.latents, config.clip_frames or preset_frames)
            self.spec = worlds.spec_for_dataset(self.data, model.preset)
            self.model, self.text_encoder, self.autoencoder = worlds.fresh_parts(model.preset, self.spec, config.autoencoder)
            if config.grow:
                self.model = worlds.grown_model(self.model, config.grow)
        if config.timestep_shift:
            self.spec = replace(self.spec, timestep_shift=config.timestep_shift)
        if config.trainable:
            self._freeze_all_but(config.trainable)
        self.schedule = self.spec.schedule  # trained on the grid the world will sample on
        if config.context_noise < 0 or (config.context_noise and config.mode != "teacher_forcing"):
            raise ValueError(f"stage.context_noise must be >= 0, and > 0 only with mode=teacher_forcing; got "
                             f"{config.context_noise} with mode={config.mode}")
        if config.draw_shift < 0:
            raise ValueError(f"stage.draw_shift must be >= 0 (0: the world's shift), got {config.draw_shift}")
        self.draw_schedule = replace(self.schedule, shift=config.draw_shift) if config.draw_shift else self.schedule
        self.probe_clips, self._probe_controls_logged = None, False
        if config.probe_data:
            if config.probe_split not in ("test", "all"):
                raise ValueError(f"stage.probe_split must be test or all, got {config.probe_split!r}")
            frames = self.data.clip_len * self.autoencoder.config.temporal_stride
            self.probe_clips = load_clips(config.probe_data, frames, config.probe_clips_per_episode,
                                          split=None if config.probe_split == "all" else "test")
            meta = EpisodeStore(config.probe_data).meta()
            self.probe_keys = opposite_actions(meta.action_meanings, meta.game) if meta.action_meanings else None
        self.model.to(ctx.device).train()
        self.text_encoder.to(ctx.device).train()
        self.autoencoder.eval()

    def _freeze_all_but(self, parts: tuple[str, ...]) -> None:
        children = dict(self.model.named_children()) | {n: p for n, p in self.model.named_parameters(recurse=False)}
        unknown = [p for p in parts if children.get(p) is None]
        if unknown:
            present = sorted(n for n, c in children.items() if c is not None)
            raise ValueError(f"stage.trainable names {unknown}, which this model does not have; it has {present}")
        self.model.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        for part in parts:
            children[part].requires_grad_(True)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "text_encoder": self.text_encoder}

    def updates(self) -> list[Update]:
        return [Update("teacher", self.loss, modules=("model", "text_encoder"), optimizer=self.config.optimizer)]

    def dataset(self) -> Dataset:
        return self.data

    def collate(self, items: list):
        return collate_clips(items)

    def ema_decays(self) -> dict[str, float]:
        return {"model": self.config.ema_decay, "text_encoder": self.config.ema_decay} if self.config.ema_decay > 0 else {}

    def loss(self, batch, step: int):
        x0, cond = worlds.clip_batch(batch, self.text_encoder, self.ctx.device)
        cond = drop_conditioning(cond, self.config.p_drop_text, self.config.p_drop_action)
        weight = worlds.foreground_weight(x0, self.config.foreground_weight)
        motion = worlds.motion_weight(x0, self.config.motion_weight)
        if motion is not None:
            weight = motion if weight is None else weight + motion - 1.0
        predictor = self.config.predictor_weight if self.model.predictor is not None and self.config.mode == "teacher_forcing" else 0.0
        return teacher_loss(self.model, x0, cond, self.config.mode, self.schedule, weight, draw=self.draw_schedule,
                            context_noise=self.config.context_noise, predictor_weight=predictor)

    def evaluate(self, step: int, weights: Mapping[str, nn.Module]) -> dict[str, float]:
        if self.probe_clips is None:
            return {}
        world = worlds.world_of(weights["model"], weights["text_encoder"], self.autoencoder, self.spec)
        results = probe(world, self.probe_clips, self.config.probe_sigmas, actions=self.probe_keys)
        controls = ("autoencoder", "repeat_last_frame")  # the ceiling and the floor: the same at every eval
        metrics = {f"probe/{key}/{name}": float(value) for key, scores in results.items()
                   if key not in controls or not self._probe_controls_logged for name, value in scores.items()}
        self._probe_controls_logged = True
        return metrics

    def sample(self, step: int, weights: Mapping[str, nn.Module], out_dir: Path) -> None:
        # The teacher is a many-step model: sample it with 8 warped steps rather than the student's 4.
        steps = (1000.0, 875.0, 750.0, 625.0, 500.0, 375.0, 250.0, 125.0)
        worlds.sample_rollouts(out_dir / f"rollout_{step:06d}.mp4", weights["model"], weights["text_encoder"],
                               self.autoencoder, self.spec, self.data, self.ctx.device, steps)

    def finish(self, step: int, weights: Mapping[str, nn.Module]) -> dict[str, float]:
        worlds.save_world(self.ctx, weights["model"], weights["text_encoder"], self.autoencoder, self.spec,
                          {"stage": "teacher", "mode": self.config.mode, "step": step, "config": asdict(self.config)})
        return {}
