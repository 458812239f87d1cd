"""What the world-model stages (teacher, ode, cd, dmd) share: data, conditioning, hand-off, samples.

Stages hand their result to the next one as a world file (`<run_dir>/world.safetensors`, the same
format `World.load` opens): model, text encoder, autoencoder and world spec travel together, so
every stage's output can also be played. A stage that starts from scratch (the teachers) builds
the world spec from the latent cache's dataset metadata and the model preset.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..media import save_video
from ..objectives import Conditioning
from ..stage import RunContext
from worldsdk.autoencoder import FrameAutoencoder, load_autoencoder
from worldsdk.config import MODEL_PRESETS, WORLD_PRESETS, ModelConfig, WorldSpec
from worldsdk.data.latents import LatentClipDataset
from worldsdk.model import ByteTextEncoder, CausalDiT
from worldsdk.presets import text_config
from worldsdk.world import World

log = logging.getLogger(__name__)

WORLD_FILE = "world.safetensors"


def open_latent_clips(path: str, clip_frames: int, split: str = "train") -> LatentClipDataset:
    """Clips of `clip_frames` latent frames from a latent cache (built by the recipe or build_latent_cache)."""
    if not path:
        raise ValueError("this stage needs a latent cache: pass stage.latents=path/to/latent/cache")
    dataset = LatentClipDataset(path, clip_frames, split=split, stride=max(1, clip_frames // 2))
    if len(dataset) == 0:
        raise ValueError(f"latent cache {path} has no {split} clips of {clip_frames} frames")
    return dataset


def spec_for_dataset(dataset: LatentClipDataset, preset: str) -> WorldSpec:
    """The world spec of a world trained on `dataset`: its resolution, fps, actions and prompts."""
    meta = dataset.meta
    prompts = sorted({p for episode in dataset.episodes for p in episode.prompts})
    classic = [p for p in prompts if "classic" in p]
    base = WORLD_PRESETS.get(preset, WORLD_PRESETS["small"])
    key_map = base.key_map if meta.action_spec == base.action else {}
    return replace(base, name=meta.game, height=meta.height, width=meta.width, fps=meta.fps, action=meta.action_spec,
                   key_map=key_map, prompts=tuple(prompts), default_prompt=(classic or prompts or [""])[0],
                   description=f"trained on {meta.env_id} recordings")


def model_config_for(preset: str, spec: WorldSpec) -> ModelConfig:
    if preset not in MODEL_PRESETS:
        raise KeyError(f"unknown model preset {preset!r}; choose one of {sorted(MODEL_PRESETS)}")
    return replace(MODEL_PRESETS[preset], action_dim=spec.action.feature_dim)


def load_world(path: str, what: str) -> World:
    if not path:
        raise ValueError(f"this stage needs {what}: pass the world file a previous stage wrote ({WORLD_FILE})")
    return World.load(path)


def fresh_parts(preset: str, spec: WorldSpec, autoencoder_path: str) -> tuple[CausalDiT, ByteTextEncoder, FrameAutoencoder]:
    """A new world model and text encoder for `spec`, and the trained autoencoder."""
    model_config = model_config_for(preset, spec)
    autoencoder = load_autoencoder(autoencoder_path)
    if autoencoder.config.latent_channels != model_config.latent_channels:
        raise ValueError(f"autoencoder {autoencoder_path} has {autoencoder.config.latent_channels} latent channels, "
                         f"model preset {preset} expects {model_config.latent_channels}")
    return CausalDiT(model_config), ByteTextEncoder(text_config(model_config)), autoencoder


def clip_batch(batch: Mapping[str, Any], text_encoder: nn.Module, device) -> tuple[torch.Tensor, Conditioning]:
    """A collated latent-clip batch -> x0 (B, C, F, h, w) and its conditioning (text encoded now)."""
    x0 = batch["latents"].to(device).permute(0, 2, 1, 3, 4)  # (B, T, C, h, w) -> (B, C, T, h, w)
    features = batch["action_features"].to(device).float()  # (B, T, A)
    actions = torch.cat([features, torch.ones_like(features[..., :1])], dim=-1)  # presence flag
    text = text_encoder.encode(list(batch["prompt"]))
    return x0, Conditioning(text, actions)


def foreground_weight(x0: torch.Tensor, weight: float, threshold: float = 1.0) -> torch.Tensor | None:
    """Loss weight (B, 1, F, h, w): 1 + weight on latent pixels far from the frame's background latent.

    The background latent is each frame's per-channel spatial median; the ball, paddles and bricks
    are the few latent pixels away from it. Grown by one pixel so the ball's neighbourhood counts.
    """
    if weight <= 0:
        return None
    background = x0.flatten(3).median(dim=3).values[..., None, None]  # (B, C, F, 1, 1)
    distance = (x0 - background).norm(dim=1, keepdim=True)  # (B, 1, F, h, w)
    mask = (distance > threshold * x0.shape[1] ** 0.5 * 0.5).float()
    mask = F.max_pool3d(mask, kernel_size=(1, 3, 3), stride=1, padding=(0, 1, 1))
    return 1.0 + weight * mask


def grown_model(model: CausalDiT, changes: Mapping[str, Any]) -> CausalDiT:
    """`model` rebuilt with some ModelConfig fields changed (e.g. {"action_map": True}), holding every
    weight of `model`; the new parameters keep their initialisation (zero for the optional pathways,
    so the grown model computes what `model` did). Only additive changes: a weight that no longer fits
    is an error."""
    fields = set(ModelConfig.__dataclass_fields__)
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise ValueError(f"stage.grow: unknown model field(s) {unknown}; ModelConfig has {sorted(fields)}")
    grown = CausalDiT(replace(model.config, **changes)).to(next(model.parameters()).device)
    own = grown.state_dict()
    for name, value in model.state_dict().items():
        if name not in own or own[name].shape != value.shape:
            raise ValueError(f"stage.grow {dict(changes)}: the initial model's {name} {tuple(value.shape)} has no "
                             f"place in the grown model (only additions are possible: a new pathway, not new shapes)")
    added = grown.load_state_dict(model.state_dict(), strict=False).missing_keys
    parts = sorted({name.split(".")[0] for name in added})  # the new pathways, not each of their tensors
    sizes = {part: sum(own[n].numel() for n in added if n.split(".")[0] == part) for part in parts}
    log.info("grew the initial model with %s: new parts %s", dict(changes),
             ", ".join(f"{part} ({size:,} parameters)" for part, size in sizes.items()))
    return grown


def motion_weight(x0: torch.Tensor, weight: float, threshold: float = 0.25) -> torch.Tensor | None:
    """Loss weight (B, 1, F, h, w): 1 + weight on latent pixels that changed since the previous frame.

    What moves (the ball, the paddles, a score digit) is where a frame differs from the one before it,
    at its old place and its new one; the change is measured per latent pixel (RMS over channels) and
    grown by one pixel. A clip's first frame has no previous frame: it gets weight 1. The static
    background, most of every frame, is what the context frames already give away.
    """
    if weight <= 0:
        return None
    change = (x0[:, :, 1:] - x0[:, :, :-1]).pow(2).mean(dim=1, keepdim=True).sqrt()  # (B, 1, F - 1, h, w)
    mask = F.max_pool3d((change > threshold).float(), kernel_size=(1, 3, 3), stride=1, padding=(0, 1, 1))
    mask = F.pad(mask, (0, 0, 0, 0, 1, 0))  # the first frame: no previous frame, no extra weight
    return 1.0 + weight * mask


def world_of(model: CausalDiT, text_encoder: ByteTextEncoder, autoencoder: FrameAutoencoder, spec: WorldSpec) -> World:
    """A playable World of fp32 CPU copies of a stage's modules (the training ones stay untouched)."""
    return World(_cpu_copy(model), _cpu_copy(autoencoder), _cpu_copy(text_encoder), spec)


def save_world(ctx: RunContext, model: CausalDiT, text_encoder: ByteTextEncoder, autoencoder: FrameAutoencoder,
               spec: WorldSpec, info: dict) -> Path:
    """Write the stage's result as a playable world file in the run folder."""
    world = world_of(model, text_encoder, autoencoder, spec)
    path = world.save(ctx.run_dir / WORLD_FILE, info={"trained": True, **info})
    log.info("wrote %s", path)
    return path


def _cpu_copy(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).float().cpu().eval()


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy that never trains (a teacher, a real score), in eval mode."""
    return copy.deepcopy(module).eval().requires_grad_(False)


@torch.no_grad()
def sample_rollouts(path: Path, model: CausalDiT, text_encoder: ByteTextEncoder, autoencoder: FrameAutoencoder,
                    spec: WorldSpec, dataset: LatentClipDataset, device, steps: tuple[float, ...] | None = None,
                    clips: int = 2) -> Path:
    """Video of real clips (top) over the model's streaming rollouts from their first chunk under the
    same actions (bottom)."""
    world = world_of(model, text_encoder, autoencoder, spec if steps is None else replace(spec, denoising_steps=steps))
    fc = model.config.frames_per_chunk
    rows = []
    for i in np.linspace(0, len(dataset) - 1, clips).round().astype(int):
        item = dataset[int(i)]
        latents = item["latents"]  # (T, C, h, w)
        real = world.autoencoder.decode(latents).numpy()
        _, state = world.init_state(1, [item["prompt"]], [int(i)], [real[:fc]])
        frames = [real[:fc]]
        features = item["action_features"].float()
        for start in range(fc, len(real) - fc + 1, fc):
            feats = torch.cat([features[start : start + fc], torch.ones(fc, 1)], -1)[None]
            result = world.step_features(state, feats)
            state = result.state
            frames.append(result.frames[0])
        gen = np.concatenate(frames)
        rows.append(np.concatenate([real[: len(gen)], gen], axis=1))  # real above generated
    video = np.concatenate(rows, axis=2)  # clips side by side
    return save_video(path, video, fps=spec.fps, scale=4)
