"""The frame autoencoder: shapes of every preset, its file format, the small-object loss and metrics,
and the autoencoder stage's objective overfitting one batch."""

from __future__ import annotations

import math

import pytest
import torch

from worldsdk.autoencoder import (
    AUTOENCODER_PRESETS,
    AutoencoderConfig,
    FrameAutoencoder,
    background_colour,
    foreground_mask,
    hard_pixel_loss,
    load_autoencoder,
    psnr,
    save_autoencoder,
    to_frames,
    to_images,
    weighted_reconstruction_loss,
)
from worldsdk.checkpoint import CheckpointError


def _frames(n=3, size=16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("name", sorted(AUTOENCODER_PRESETS))
def test_presets_map_frames_to_latents_of_their_stride(name):
    config = AUTOENCODER_PRESETS[name]
    ae = FrameAutoencoder(config)
    size = 4 * config.stride
    z = ae.encode(_frames(2, size))
    assert z.shape == (2, config.latent_channels, 4, 4) and z.dtype == torch.float32
    frames = ae.decode(z)
    assert frames.shape == (2, size, size, 3) and frames.dtype == torch.uint8


def test_stride_counts_the_fold_and_the_downsamplings():
    config = AutoencoderConfig(patch_size=4, num_down=1, channel_mult=(1, 2))
    assert config.stride == 8 and config.level_channels == (64, 128)
    with pytest.raises(ValueError, match="channel_mult"):
        AutoencoderConfig(num_down=2, channel_mult=(1, 2))
    assert AutoencoderConfig.from_dict(config.to_dict()) == config


def test_latent_statistics_normalise_the_latents():
    ae = FrameAutoencoder(AUTOENCODER_PRESETS["tiny"])
    frames = _frames(8, 16)
    raw = ae.encode_raw(to_images(frames)).detach()
    ae.set_latent_stats(raw)
    z = ae.encode(frames)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-3)


def test_file_round_trip_keeps_weights_statistics_and_config(tmp_path):
    ae = FrameAutoencoder(AUTOENCODER_PRESETS["tiny"])
    ae.set_latent_stats(torch.randn(4, 4, 2, 2) * 3 + 1)
    path = save_autoencoder(tmp_path / "ae.safetensors", ae, extra={"psnr": 40.0})
    loaded = load_autoencoder(path)
    assert loaded.config == ae.config
    for key, value in ae.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    frames = _frames(2, 16)
    assert torch.equal(loaded.decode(loaded.encode(frames)), ae.eval().decode(ae.encode(frames)))


def test_corrupt_autoencoder_file_is_named(tmp_path):
    path = save_autoencoder(tmp_path / "pong_ae.safetensors", FrameAutoencoder(AUTOENCODER_PRESETS["tiny"]))
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="pong_ae.safetensors"):
        load_autoencoder(path)


def test_uint8_conversions_round_trip():
    frames = _frames()
    assert torch.equal(to_frames(to_images(frames)), frames)


def test_foreground_mask_finds_a_one_pixel_ball():
    frames = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    frames[:] = torch.tensor([144, 72, 17], dtype=torch.uint8)
    frames[0, 3, 5] = torch.tensor([170, 110, 70], dtype=torch.uint8)  # a half-covered ball pixel
    assert background_colour(frames).tolist() == [[144, 72, 17], [144, 72, 17]]
    mask = foreground_mask(frames, tolerance=4, dilate=0)
    assert mask.shape == (2, 1, 8, 8) and mask[0, 0, 3, 5] and mask.sum() == 1
    grown = foreground_mask(frames, tolerance=4, dilate=1)
    assert grown[0, 0, 2:5, 4:7].all() and grown.sum() == 9


def test_weighted_loss_is_the_plain_loss_for_uniform_weights():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    loss, logs = weighted_reconstruction_loss(a, b, torch.full((2, 1, 4, 4), 7.0), l1=1.0, mse=0.5)
    assert loss.item() == pytest.approx((a - b).abs().mean().item() + 0.5 * (a - b).square().mean().item(), rel=1e-5)
    weights = torch.ones(2, 1, 4, 4)
    weights[0, 0, 0, 0] = 100.0
    error = torch.zeros(2, 3, 4, 4)
    error[0, :, 0, 0] = 1.0  # the error sits on the heavy pixel
    heavy, _ = weighted_reconstruction_loss(error, torch.zeros_like(error), weights, l1=1.0, mse=0.0)
    light, _ = weighted_reconstruction_loss(error, torch.zeros_like(error), torch.ones_like(weights), l1=1.0, mse=0.0)
    assert heavy > 10 * light


def test_hard_pixel_loss_is_the_mean_of_the_worst_pixels():
    target = torch.zeros(2, 3, 4, 4)
    recon = torch.zeros(2, 3, 4, 4)
    recon[0, :, 1, 2] = 0.5  # one bad pixel: L1 summed over channels 1.5
    recon[1, 0] = 0.1  # everything slightly off
    assert hard_pixel_loss(recon, target, k=1).item() == pytest.approx((1.5 + 0.1) / 2)
    assert hard_pixel_loss(recon, target, k=2).item() == pytest.approx((1.5 + 0.0 + 0.1 + 0.1) / 4)
    scale = torch.zeros(2, 4, 4)
    scale[1, 0, 0] = 2.0  # only one pixel of the second image counts, twice
    assert hard_pixel_loss(recon, target, k=1, scale=scale).item() == pytest.approx((0.0 + 0.2) / 2)


def test_relative_error_scale_favours_faint_objects(tmp_path):
    from tests.test_trainer_app import write_synthetic_recording
    from trainers.stage import ModelChoice, RunContext
    from trainers.stages.autoencoder import AutoencoderStage, AutoencoderStageConfig

    data = write_synthetic_recording(tmp_path / "pong", episodes=2, steps=4)
    stage = AutoencoderStage(AutoencoderStageConfig(data=(str(data),)), ModelChoice("tiny", "tiny", "tiny"), RunContext(tmp_path, torch.device("cpu")))
    frames = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    frames[:] = torch.tensor([100, 100, 100], dtype=torch.uint8)
    frames[0, 2, 2] = torch.tensor([250, 100, 100], dtype=torch.uint8)  # bright
    frames[0, 5, 5] = torch.tensor([115, 100, 100], dtype=torch.uint8)  # faint
    scale = stage.relative_error_scale(frames)
    assert scale[0, 5, 5] == pytest.approx(127.5 / 15) and scale[0, 2, 2] == pytest.approx(127.5 / 150)
    assert scale.sum() == pytest.approx(scale[0, 5, 5] + scale[0, 2, 2])  # background: 0


def test_psnr_closed_form():
    real = torch.zeros(4, 8, 8, 3, dtype=torch.uint8)
    recon = real.clone()
    assert psnr(real, recon) == math.inf
    recon[..., 0] = 3  # squared error 9 on a third of the values
    assert psnr(real, recon) == pytest.approx(10 * math.log10(255**2 / 3.0))


def test_autoencoder_stage_objective_overfits_one_batch(tmp_path):
    from tests.test_trainer_app import write_synthetic_recording
    from trainers.stage import ModelChoice, RunContext
    from trainers.stages.autoencoder import AutoencoderStage, AutoencoderStageConfig

    data = write_synthetic_recording(tmp_path / "pong", episodes=2, steps=20)
    torch.manual_seed(0)
    config = AutoencoderStageConfig(data=(str(data),), relative_hard_pixel_weight=0.3)
    stage = AutoencoderStage(config, ModelChoice("tiny", "tiny", "tiny"), RunContext(tmp_path, torch.device("cpu")))
    batch = torch.stack([stage.dataset()[i] for i in range(8)])
    optimizer = torch.optim.AdamW(stage.autoencoder.parameters(), lr=3e-3)
    losses, psnrs = [], []
    for step in range(40):
        loss, logs = stage.reconstruction_loss(batch, step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        psnrs.append(logs["psnr"].item())
    assert losses[-1] < 0.5 * losses[0]
    assert psnrs[-1] > psnrs[0] + 6
    assert set(logs) == {"l1", "mse", "hard_pixels", "relative_hard_pixels", "psnr"}
