"""Shared fixtures: small random worlds whose outputs are not trivially zero."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
# Tiny models gain nothing from intra-op threads, and threads oversubscribe a shared 2-core machine
# (spinning OpenMP workers made steps 10x slower here); subprocesses of the tests inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
torch.set_num_threads(1)


def perturb_(module: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Add seeded noise to every parameter, so zero-initialised layers (head, action output) act."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module


@pytest.fixture
def tiny_world():
    from worldsdk import World

    world = World.from_preset("tiny", seed=0)
    perturb_(world.model)
    return world
