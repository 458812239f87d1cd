"""What the viewer plays: a `Session`, the small interface shared by a local World and a remote one.

The viewer never touches a model or a cache (STYLE principle 7): it calls only `reset`, `step`,
`set_prompt` and `close`, and reads `spec`. `LocalSession` wraps a `worldsdk.World`; `RemoteSession`
wraps a `worldsdk.bridge.Client` (or anything with its hello/reset/step/set_prompt/close contract).
`source` says how to open the same world again, which is what a recording stores for replay.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Protocol

import numpy as np

from worldsdk.spec import WORLD_PRESETS, WorldSpec

log = logging.getLogger(__name__)


class Session(Protocol):
    spec: WorldSpec
    source: dict  # how to open this world again: {"world": name_or_path, "seed": s} or {"connect": address}

    def reset(self, prompt: str | None = None, seed: int | None = None) -> np.ndarray: ...  # (chunk, H, W, 3) uint8

    def step(self, action: Any) -> np.ndarray: ...  # (chunk, H, W, 3) uint8

    def set_prompt(self, text: str) -> None: ...

    def close(self) -> None: ...


class LocalSession:
    """A World in this process."""

    def __init__(self, world, source: dict | None = None):
        self.world = world
        self.spec: WorldSpec = world.spec
        self.source = dict(source or {"world": str(getattr(world, "info", {}).get("source", world.spec.name))})

    def reset(self, prompt=None, seed=None) -> np.ndarray:
        return self.world.reset(prompt=prompt, seed=seed)

    def step(self, action) -> np.ndarray:
        return self.world.step(action)

    def set_prompt(self, text: str) -> None:
        self.world.set_prompt(text)

    def close(self) -> None:
        pass  # the World holds only weights; nothing to release


class RemoteSession:
    """A world served elsewhere, through a bridge client.

    The client is used from one thread at a time: `hello` here, then every call on the viewer's
    generation thread, then `close` after that thread has stopped (ZeroMQ sockets may move between
    threads at such hand-overs, never be shared).
    """

    def __init__(self, client, address: str):
        self.client = client
        self.spec = _spec_from_hello(client.hello())
        self.source = {"connect": address}

    def reset(self, prompt=None, seed=None) -> np.ndarray:
        return _frames(self.client.reset(prompt=prompt, seed=seed))

    def step(self, action) -> np.ndarray:
        return _frames(self.client.step(action))

    def set_prompt(self, text: str) -> None:
        self.client.set_prompt(text)

    def close(self) -> None:
        self.client.close()


def _spec_from_hello(reply) -> WorldSpec:
    """The world spec from a hello reply: a `WorldInfo` (its .spec), a WorldSpec, or a spec dict (or one under "spec")."""
    if isinstance(getattr(reply, "spec", None), WorldSpec):
        return reply.spec
    if isinstance(reply, WorldSpec):
        return reply
    for key in ("world_spec", "spec"):
        if isinstance(reply.get(key), Mapping):
            return WorldSpec.from_dict(reply[key])
    return WorldSpec.from_dict(reply)


def _frames(reply) -> np.ndarray:
    """Frames from a client reply: the array itself, or the first item of a (frames, info) pair."""
    frames = reply[0] if isinstance(reply, tuple) else reply
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"the world sent frames of {frames.dtype} {frames.shape}; expected uint8 (chunk, H, W, 3)")
    return frames


def open_session(world: str | None = None, connect: str | None = None, seed: int = 0) -> Session:
    """Open a local world (a preset, a shipped world's name or a path) or connect to a served one."""
    if connect:
        from worldsdk.bridge import Client

        return RemoteSession(Client(connect), connect)
    from worldsdk.world import World

    if not world:
        from worldsdk.world import default_world  # one definition of "the default world" for every command

        world = default_world()
    if world in WORLD_PRESETS:  # a preset has random weights: the seed decides them, so a recording stores it
        log.warning("world %r is a preset with random, untrained weights", world)
        return LocalSession(World.from_preset(world, seed=seed), {"world": world, "weights_seed": seed})
    return LocalSession(World.load(world), {"world": world})

