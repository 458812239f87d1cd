"""Shared fixtures: small random worlds whose outputs are not trivially zero."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path

import pytest
import torch

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
# Tiny models gain nothing from intra-op threads, and threads oversubscribe a shared 2-core machine
# (spinning OpenMP workers made steps 10x slower here); subprocesses of the tests inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
torch.set_num_threads(1)


ROOT = Path(__file__).resolve().parents[1]


def load_script(path: str | Path, name: str):
    """Import a script that is not in a package (benchmarks/, examples/) from its path, once. It is in
    sys.modules while it executes, where dataclasses look their module up."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def perturb_(module: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Add seeded noise to every parameter, so zero-initialised layers (head, action output) act."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module


def reactive_world(name: str = "tiny", seed: int = 0):
    """A preset world whose frames depend on actions, prompt and history (the same weights on every call).

    A bare preset has a zero output head (adaLN-zero), so its frames depend on the noise seed alone and
    a test comparing two such worlds passes whatever actions or prompts reach them; this one is perturbed.
    """
    from worldsdk import World

    world = World.from_preset(name, seed=seed)
    perturb_(world.model)
    return world


def frame_difference(a, b) -> float:
    """Mean absolute difference of two uint8 frame arrays, in grey levels."""
    import numpy as np

    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


def assert_world_reacts(world, seed: int = 0) -> None:
    """Fail unless, in `world`, a different action, prompt, mid-episode prompt or earlier action (the
    history) changes the frames of the same seed: the precondition of every test that compares frames to
    show that actions and prompts arrived. Leaves the world's single session reset."""

    def last_chunk(actions, prompt=None, switch_to=None):
        world.reset(prompt=prompt, seed=seed)
        frames = None
        for i, action in enumerate(actions):
            if switch_to is not None and i == len(actions) - 1:
                world.set_prompt(switch_to)
            frames = world.step(action)
        return frames

    base = last_chunk([1, 0, 0])
    assert frame_difference(base, last_chunk([1, 0, 2])) > 1.0, "the action does not change the frames"
    assert frame_difference(base, last_chunk([4, 0, 0])) > 0.1, "an earlier action (the history) does not change the frames"
    assert frame_difference(base, last_chunk([1, 0, 0], prompt="breakout, grey")) > 1.0, "the prompt does not change the frames"
    assert frame_difference(base, last_chunk([1, 0, 0], switch_to="breakout, grey")) > 1.0, "set_prompt does not change the frames"
    world.reset(seed=seed)


@pytest.fixture
def tiny_world():
    return reactive_world()


@pytest.fixture(scope="session")
def pong_recording(tmp_path_factory):
    """Four short episodes of real Pong at 64x64 (scripted player), recorded once per test run."""
    from worldsdk.data.recorder import record

    root = tmp_path_factory.mktemp("pong64")
    record("ALE/Pong-v5", root, episodes=4, policy="scripted", max_steps=60, seed=0)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Back to one intra-op thread for a module (an earlier test may have raised it), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared: keep the tests at one core
    yield
    torch.set_num_threads(threads)


def run_together(n: int, play, timeout: float = 300.0) -> None:
    """Run `play(i, barrier)` for i in range(n) in threads sharing one `threading.Barrier(n)` (so clients
    can act at the same moment); fail with the threads' errors."""
    barrier, errors = threading.Barrier(n), []

    def run(i: int):
        try:
            play(i, barrier)
        except BaseException as e:  # reported in the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not errors, errors[:3]
