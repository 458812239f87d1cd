"""stage=autoencoder: train the frame autoencoder of the tiny/small worlds on recorded game frames.

Objective: weighted L1 + MSE between frames and reconstructions, where pixels that differ from the
frame's background colour (paddles, bricks, score and the 1-2 pixel ball, grown by a pixel) weigh
`1 + foreground_weight`, plus the mean of each frame's `hard_pixels` worst pixel errors. In plain
MSE a 64x64 autoencoder learns to paint the ball over with background, which costs almost nothing;
the foreground weight makes objects count, and the hard-pixel term keeps pushing on the ball once
the large objects are right (without it, ball recall stays near 0 for the first thousand steps). Before every checkpoint the per-channel latent
statistics are measured on a fixed sample of training frames and stored in the model's buffers.
At the end it writes `<run_dir>/autoencoder.safetensors` (weights, statistics and config; read by
`worldsdk.autoencoder.load_autoencoder`), reconstruction images, and the test-split PSNR and ball
recall of every data folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
from torch.utils.data import ConcatDataset, Dataset

from ..media import image_grid, save_image
from ..stage import ModelChoice, OptimizerConfig, RunContext, Stage, Update
from .frames import FrameSet, ball_recall, evenly_spaced, open_frame_sets
from worldsdk.autoencoder import (
    AUTOENCODER_PRESETS,
    FrameAutoencoder,
    background_contrast,
    foreground_mask,
    hard_pixel_loss,
    load_autoencoder,
    psnr,
    save_autoencoder,
    to_images,
    weighted_reconstruction_loss,
)
from worldsdk.config import WORLD_PRESETS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutoencoderStageConfig:
    """The `stage:` section for stage=autoencoder (mirrored by conf/stage/autoencoder.yaml)."""

    name: str = "autoencoder"
    data: tuple[str, ...] = ()  # recording folders; one autoencoder is trained on all of them
    init: str = ""  # optional autoencoder file to start from (its config replaces the preset's)
    # false: only the decoder learns; the encoder and the latent statistics stay as `init` has them, so its
    # latents, latent caches and the worlds trained on them stay valid (swap the decoder into a world with
    # `worldsdk export --decoder-from`). GameNGen fine-tunes its decoder on game frames this way.
    train_encoder: bool = True
    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(
            lr=2e-3, betas=(0.9, 0.99), weight_decay=0.0, grad_clip=1.0, warmup_steps=100, decay="cosine", min_lr_ratio=0.02
        )
    )
    foreground_weight: float = 20.0  # extra loss weight of pixels unlike the background colour
    foreground_tolerance: int = 4  # max channel difference that still counts as background
    foreground_dilate: int = 1  # grow the foreground by this many pixels (the edges around a ball)
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    hard_pixel_weight: float = 1.0  # weight of the mean of each frame's worst `hard_pixels` pixel errors
    hard_pixels: int = 8
    relative_hard_pixel_weight: float = 0.0  # the same on foreground pixels, errors / contrast to the background
    contrast_floor: float = 0.05  # smallest contrast divided by (image units: 0.05 = 6 of 255 levels)
    ema_decay: float = 0.0  # 0: no EMA; else evaluate and export the EMA weights
    stats_frames: int = 2048  # training frames sampled for the latent mean / std
    eval_frames: int = 2048  # held-out frames per data folder for PSNR and ball recall (0: all)
    sample_frames: int = 8  # held-out frames shown in the reconstruction images
    ball_radius: float = 1.5  # max distance in pixels between the real and the reconstructed ball
    eval_batch_size: int = 256


class AutoencoderStage(Stage):
    name = "autoencoder"
    config_class = AutoencoderStageConfig

    def __init__(self, config: AutoencoderStageConfig, model: ModelChoice, ctx: RunContext):
        if model.autoencoder is None:
            raise ValueError(f"stage=autoencoder trains a frame autoencoder, but model={model.name} uses the Wan VAE")
        if model.autoencoder not in AUTOENCODER_PRESETS:
            raise KeyError(f"unknown autoencoder preset {model.autoencoder!r}; choose one of {sorted(AUTOENCODER_PRESETS)}")
        if not config.data:
            raise ValueError("stage=autoencoder needs recordings: pass data=path/to/recordings (or a list of folders)")
        if not config.train_encoder and not config.init:
            raise ValueError("stage.train_encoder=false fine-tunes the decoder of an existing autoencoder: "
                             "pass stage.init=path/to/autoencoder.safetensors")
        self.config, self.ctx = config, ctx
        if config.init:
            self.autoencoder = load_autoencoder(config.init, ctx.device).train()
        else:
            self.autoencoder = FrameAutoencoder(AUTOENCODER_PRESETS[model.autoencoder]).to(ctx.device)
        if not config.train_encoder:
            self.autoencoder.encoder.requires_grad_(False)
        self.frame_sets: list[FrameSet] = open_frame_sets(config.data)
        self.train_frames = ConcatDataset([s.train for s in self.frame_sets])
        self._heldout: dict[tuple[str, int], torch.Tensor] = {}
        height, width = self.frame_sets[0].frame_shape
        stride = self.autoencoder.config.stride
        if height % stride or width % stride:
            raise ValueError(f"frames of {height}x{width} are not divisible by the autoencoder stride {stride}")
        world = WORLD_PRESETS.get(model.preset)
        if world is not None and (world.height, world.width) != (height, width):
            log.warning("frames are %dx%d but the %s world is %dx%d", height, width, model.preset, world.height, world.width)

    # -- the Stage protocol --------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"autoencoder": self.autoencoder}

    def updates(self) -> list[Update]:
        return [Update("reconstruction", self.reconstruction_loss, modules=("autoencoder",), optimizer=self.config.optimizer)]

    def dataset(self) -> Dataset:
        return self.train_frames

    def ema_decays(self) -> dict[str, float]:
        return {"autoencoder": self.config.ema_decay} if self.config.ema_decay > 0 else {}

    # -- the objective ---------------------------------------------------------------------------
    def foreground_weights(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> loss weights (B, 1, H, W): 1 + foreground_weight on the foreground."""
        c = self.config
        mask = foreground_mask(frames, tolerance=c.foreground_tolerance, dilate=c.foreground_dilate)
        return 1.0 + c.foreground_weight * mask.float()

    def relative_error_scale(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> (B, H, W): 1 / contrast to the background on foreground pixels, 0 elsewhere.

        A pixel's error divided by its contrast is the fraction of the object it lost, so a faint ball
        in a low-contrast style (sepia, night) counts as much as a white one on brown.
        """
        c = self.config
        mask = foreground_mask(frames, tolerance=c.foreground_tolerance, dilate=0)[:, 0]
        return mask / background_contrast(frames).clamp_min(c.contrast_floor)

    def reconstruction_loss(self, frames: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        """Weighted L1 + MSE plus the hard-pixel term, of a batch of uint8 frames (B, H, W, 3)."""
        images = to_images(frames)  # (B, 3, H, W) in [-1, 1]
        recon = self.autoencoder(images)
        c = self.config
        loss, logs = weighted_reconstruction_loss(recon, images, self.foreground_weights(frames), l1=c.l1_weight, mse=c.mse_weight)
        if c.hard_pixel_weight > 0:
            hard = hard_pixel_loss(recon, images, c.hard_pixels)
            loss = loss + c.hard_pixel_weight * hard
            logs["hard_pixels"] = hard.detach()
        if c.relative_hard_pixel_weight > 0:
            relative = hard_pixel_loss(recon, images, c.hard_pixels, self.relative_error_scale(frames))
            loss = loss + c.relative_hard_pixel_weight * relative
            logs["relative_hard_pixels"] = relative.detach()
        with torch.no_grad():
            mse = (recon.float().clamp(-1, 1) - images).square().mean()
            logs["psnr"] = 10 * torch.log10(4.0 / mse.clamp_min(1e-12))  # images span 2 -> peak^2 = 4
        return loss, logs

    # -- hooks -------------------------------------------------------------------------------------
    def heldout(self, frame_set: FrameSet, count: int) -> torch.Tensor:
        key = (frame_set.name, count)
        if key not in self._heldout:
            self._heldout[key] = frame_set.heldout_frames(count)
        return self._heldout[key]

    def _reconstruct(self, autoencoder: FrameAutoencoder, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) -> their reconstructions, in fp32 and batches."""
        chunks = frames.split(self.config.eval_batch_size)
        return torch.cat([autoencoder.decode(autoencoder.encode(chunk.to(self.ctx.device))).cpu() for chunk in chunks])

    def _latent_stats(self, autoencoder: FrameAutoencoder) -> None:
        """Latent mean / std over `stats_frames` evenly spaced training frames, set on the live and evaluated
        weights (kept as they are when only the decoder trains: the latents must not change)."""
        if not self.config.train_encoder:
            return
        train = self.train_frames
        frames = torch.stack([torch.as_tensor(train[int(i)]) for i in evenly_spaced(len(train), self.config.stats_frames)])
        raw = torch.cat([autoencoder.encode_raw(to_images(chunk.to(self.ctx.device))) for chunk in frames.split(self.config.eval_batch_size)])
        autoencoder.set_latent_stats(raw)
        if autoencoder is not self.autoencoder:
            self.autoencoder.set_latent_stats(raw)

    def before_checkpoint(self, step: int, weights: Mapping[str, nn.Module]) -> None:
        self._latent_stats(weights["autoencoder"])

    def sample(self, step: int, weights: Mapping[str, nn.Module], out_dir: Path) -> None:
        for s in self.frame_sets:
            real = self.heldout(s, self.config.sample_frames)
            recon = self._reconstruct(weights["autoencoder"], real)
            diff = ((real.short() - recon.short()).abs() * 4).clamp(0, 255).to(torch.uint8)
            save_image(out_dir / f"reconstruction_{s.name}.png", image_grid([real, recon, diff], scale=4))

    def evaluate(self, step: int, weights: Mapping[str, nn.Module]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        all_real, all_recon = [], []
        for s in self.frame_sets:
            real = self.heldout(s, self.config.eval_frames)
            recon = self._reconstruct(weights["autoencoder"], real)
            all_real.append(real)
            all_recon.append(recon)
            metrics[f"psnr/{s.name}"] = psnr(real, recon)
            recall, present = ball_recall(real, recon, s.game, self.config.ball_radius)
            if present:
                metrics[f"ball_recall/{s.name}"] = recall
                metrics[f"ball_frames/{s.name}"] = float(present)
        metrics["psnr"] = psnr(torch.cat(all_real), torch.cat(all_recon))
        return metrics

    def finish(self, step: int, weights: Mapping[str, nn.Module]) -> dict[str, float]:
        autoencoder = weights["autoencoder"]
        self._latent_stats(autoencoder)
        metrics = self.evaluate(step, weights)
        extra = {"step": step, "data": list(self.config.data), "metrics": metrics, "stage": asdict(self.config)}
        path = save_autoencoder(self.ctx.run_dir / "autoencoder.safetensors", autoencoder, extra=extra)
        (self.ctx.run_dir / "final_metrics.json").write_text(json.dumps({"step": step, **metrics}, indent=2) + "\n")
        log.info("wrote %s: %s", path, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        return metrics
