"""Training-checkpoint IO: exact round trips, RNG capture, atomic writes, corrupt files named."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from worldsdk.train_checkpoint import (
    CheckpointError,
    TrainState,
    capture_rng,
    flatten_optimizer_state,
    load_train_state,
    restore_rng,
    save_train_state,
    unflatten_optimizer_state,
)


def _trained_module_and_optimizer():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2, betas=(0.0, 0.999), weight_decay=0.01)
    for _ in range(3):
        module(torch.randn(5, 3)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return module, optimizer


def _state(module, optimizer, step=7) -> TrainState:
    return TrainState(
        step=step, config={"stage": {"name": "toy", "betas": [0.0, 0.999]}}, modules={"net": module.state_dict()},
        ema={"net": {k: v * 0.5 for k, v in module.state_dict().items()}}, optimizers={"net": optimizer.state_dict()},
        rng=[capture_rng(), capture_rng()], extra={"batches": {"epoch": 2, "drawn": 5}},
    )


def test_optimizer_state_flattens_and_restores_exactly():
    module, optimizer = _trained_module_and_optimizer()
    tensors, meta = flatten_optimizer_state(optimizer.state_dict())
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    restored = unflatten_optimizer_state(tensors, meta)
    fresh = torch.optim.AdamW(module.parameters(), lr=1.0)
    fresh.load_state_dict(restored)
    assert fresh.param_groups[0]["lr"] == 1e-2 and fresh.param_groups[0]["betas"] == (0.0, 0.999)
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(fresh.state_dict()["state"][index][key], value)


def test_train_state_round_trips(tmp_path):
    module, optimizer = _trained_module_and_optimizer()
    path = save_train_state(tmp_path / "ckpt.safetensors", _state(module, optimizer))
    loaded = load_train_state(path)
    assert loaded.step == 7 and loaded.config["stage"]["name"] == "toy"
    assert loaded.extra == {"batches": {"epoch": 2, "drawn": 5}}
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.modules["net"][key], value)
        assert torch.equal(loaded.ema["net"][key], value * 0.5)
    assert len(loaded.rng) == 2
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


def test_rng_capture_restores_every_generator():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    torch.randn(3), np.random.randn(3), random.random()
    saved = capture_rng()
    expected = (torch.randn(4), np.random.randn(4), random.random())
    torch.randn(10), np.random.randn(10), random.random()
    restore_rng(*saved)
    assert torch.equal(torch.randn(4), expected[0])
    assert np.array_equal(np.random.randn(4), expected[1])
    assert random.random() == expected[2]


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_checkpoint_raises_an_error_naming_the_file(tmp_path, damage):
    module, optimizer = _trained_module_and_optimizer()
    path = save_train_state(tmp_path / "step_00000007.safetensors", _state(module, optimizer))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-10] ^= 0xFF  # inside the tensor data: caught by the checksum
    else:
        data = bytearray(b"not a checkpoint at all")
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="step_00000007.safetensors"):
        load_train_state(path)


def test_a_world_checkpoint_is_not_a_training_checkpoint(tmp_path):
    from worldsdk.autoencoder import AUTOENCODER_PRESETS, FrameAutoencoder, save_autoencoder

    path = save_autoencoder(tmp_path / "ae.safetensors", FrameAutoencoder(AUTOENCODER_PRESETS["tiny"]))
    with pytest.raises(CheckpointError, match="ae.safetensors"):
        load_train_state(path)
