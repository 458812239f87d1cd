"""`worldsdk/RemoteWorld-v0`: a Gymnasium env over a world served by `worldsdk serve`."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from worldsdk.bridge import Client


class RemoteWorldEnv(gym.Env):
    """## Description
    The same env as `worldsdk/World-v0`, but the world runs in a bridge server (another process or
    machine; `worldsdk serve --world W`). Each step sends the action over ZeroMQ and receives the
    next chunk of frames; the server batches the steps of all its clients into one forward.

    ## Action Space
    The served world's action space, learnt at the handshake (`Discrete(6)` for the default game
    worlds). An action outside it raises `worldsdk.bridge.ProtocolError` (code `bad_action`).

    ## Observation Space
    `Box(0, 255, (chunk, H, W, 3), uint8)`: the frames of one step, exactly as the world made them
    (lossy only with `codec="jpeg"`). The arrays are read-only views of the received message.

    ## Rewards
    Always 0 (`info["reward_predicted"]` is False).

    ## Starting State
    A new session on the server; its noise seed comes from `np_random`, so `reset(seed=...)` is
    reproducible. `options={"prompt": str}` sets the prompt, `options={"context": frames}` (uint8
    (N, H, W, 3)) makes the world continue from real frames.

    ## Episode End
    Never terminates on its own; truncation comes from the `TimeLimit` wrapper (1000 steps by
    default). A session lost on the server (restart, lapsed lease) raises
    `worldsdk.bridge.SessionLostError`; the next `reset()` starts a new one.

    ## Arguments
    `address`: the server's endpoint ("tcp://127.0.0.1:5555"). `render_mode`: "rgb_array" (the last
    frame). `timeout_ms`, `retries`: per-request timeout and retries. `prompt`: default prompt.
    `codec`: "raw" or "jpeg". `curve_server_key`, `curve_client_key`: key files for CURVE.

        >>> import gymnasium, worldsdk
        >>> env = gymnasium.make("worldsdk/RemoteWorld-v0", address="tcp://127.0.0.1:5555")
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(self, address: str, render_mode: str | None = None, timeout_ms: int = 30_000, retries: int = 1,
                 prompt: str | None = None, codec: str = "raw", curve_server_key=None, curve_client_key=None):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.client = Client(address, timeout_ms=timeout_ms, retries=retries, codec=codec,
                             curve_server_key=curve_server_key, curve_client_key=curve_client_key, name="worldsdk-gym")
        try:
            info = self.client.hello()
        except Exception:
            self.client.close()
            raise
        self.info = info
        self.metadata = {**self.metadata, "render_fps": info.spec.fps}
        self.render_mode = render_mode
        self.prompt = prompt or info.spec.default_prompt
        self.observation_space = spaces.Box(0, 255, info.observation_shape, np.uint8)
        self.action_space = info.action_space
        self._frames: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        prompt = options.get("prompt", self.prompt)
        session_seed = int(self.np_random.integers(0, 2**31 - 1))
        self._frames = self.client.reset(prompt=prompt, seed=session_seed, context=options.get("context"))
        return self._frames, {"prompt": prompt, "reward_predicted": False, "session": self.client.session}

    def step(self, action):
        if self._frames is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        self._frames = self.client.step(action)
        return self._frames, 0.0, False, False, {"reward_predicted": False, "step": self.client.chunk}

    def set_prompt(self, text: str) -> None:
        """Switch the prompt mid-episode (reachable through `env.unwrapped.set_prompt`)."""
        if self._frames is None:
            raise gym.error.ResetNeeded("call reset() before set_prompt()")
        self.client.set_prompt(text)

    def get_keys_to_action(self) -> dict:
        """Keyboard map for `gymnasium.utils.play.play` (the served world's key map)."""
        from worldsdk.viewer.keymap import keys_to_action

        return keys_to_action(self.info.spec)

    def render(self):
        if self._frames is None or self.render_mode != "rgb_array":
            return None
        return self._frames[-1].copy()

    def close(self):
        self.client.close()
