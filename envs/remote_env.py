"""`worldsdk/RemoteWorld-v0`: a Gymnasium env over a world served by `worldsdk serve`."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from .world_env import NO_REWARD_NOTE, START_MODES, check_frame_mode, frames_observation, frames_space
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
    The frames of one step, exactly as the world made them (lossy only with `codec="jpeg"`), shaped
    as `frames=` asks, as in `worldsdk/World-v0`: "chunk" (default) `Box(0, 255, (chunk, H, W, 3),
    uint8)`; "last" the chunk's last frame `(H, W, 3)`; "stack" the chunk on the channel axis, oldest
    first, `(H, W, 3 * chunk)`. "chunk" and "last" arrays are read-only views of the received message.

    ## Rewards
    As in `worldsdk/World-v0`, computed by the server: when the served world has a reward model, the
    sum of the rewards it predicts for the chunk's frames, with `info["reward_predicted"] = True` and
    the per-frame values in `info["frame_rewards"]`. Otherwise always 0, with
    `info["reward_predicted"] = False` and a note in `info["reward_note"]` (also with a server of
    bridge protocol 1.0, which predicts no rewards).

    ## Starting State
    A new session on the server; its noise seed (and the bank entry of a real start) come from
    `np_random`, so `reset(seed=...)` is reproducible and matches `worldsdk/World-v0` with the same
    world. `start="real"` (the default when the served world has a bank of real starts): the
    session continues from a bank entry (`info["start_index"]`; its prompt is used unless one is
    given); `start="prompt"`: the world generates a first chunk. `reset(options=)` takes "start" to
    override the mode for one episode, "context" (uint8 frames (N, H, W, 3), which wins over
    "start") to continue from frames of your own, and "prompt" (str).

    ## Episode End
    Terminates when the served world's reward model predicts an episode end within the chunk
    (never without one); truncation comes from the `TimeLimit` wrapper (1000 steps by default). A
    session lost on the server (restart, lapsed lease) raises `worldsdk.bridge.SessionLostError`;
    the next `reset()` starts a new one.

    ## Arguments
    `address`: the server's endpoint ("tcp://127.0.0.1:5555"). `render_mode`: "rgb_array" (the last
    frame). `timeout_ms`, `retries`: per-request timeout and retries. `prompt`: default prompt
    (default: a real start's own prompt, else the world's default prompt). `codec`: "raw", "jpeg", or "shm"
    (exact frames through shared memory, for a server on this machine; see docs/protocol.md).
    `curve_server_key`, `curve_client_key`: key files for CURVE. `start`: "prompt" or "real" (None:
    "real" when the served world has a bank); "real" without a bank raises ValueError. `frames`:
    "chunk" | "last" | "stack" (see Observation Space).

        >>> import gymnasium, worldsdk
        >>> env = gymnasium.make("worldsdk/RemoteWorld-v0", address="tcp://127.0.0.1:5555")
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(self, address: str, render_mode: str | None = None, timeout_ms: int = 30_000, retries: int = 1,
                 prompt: str | None = None, codec: str = "raw", curve_server_key=None, curve_client_key=None,
                 start: str | None = None, frames: str = "chunk"):
        self.frames = check_frame_mode(frames)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.client = Client(address, timeout_ms=timeout_ms, retries=retries, codec=codec,
                             curve_server_key=curve_server_key, curve_client_key=curve_client_key, name="worldsdk-gym")
        try:
            info = self.client.hello()
            self.info = info
            self.start = self._start_mode(start)
        except Exception:
            self.client.close()
            raise
        self._prompt_given = prompt is not None
        self.metadata = {**self.metadata, "render_fps": info.spec.fps}
        self.render_mode = render_mode
        self.prompt = prompt or info.spec.default_prompt
        self.observation_space = frames_space(info.observation_shape, self.frames)
        self.action_space = info.action_space
        self._frames: np.ndarray | None = None

    def _start_mode(self, start: str | None) -> str:
        """The start mode asked for, checked against the served world (as `WorldEnv` checks it)."""
        if start is None:
            return "real" if self.info.num_starts else "prompt"
        if start not in START_MODES:
            raise ValueError(f"start must be one of {START_MODES}, got {start!r}")
        if start == "real" and not self.info.num_starts:
            raise ValueError(f"start='real' needs a world with a bank of real starts, and the served world "
                             f"{self.info.spec.name!r} has none")
        return start

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        context = options.get("context")
        prompt = options.get("prompt", self.prompt if self._prompt_given else None)  # None: the server picks
        start, index = None, None
        if context is None and self._start_mode(options.get("start", self.start)) == "real":
            start, index = "real", int(self.np_random.integers(0, self.info.num_starts))  # drawn as WorldEnv draws it
        session_seed = int(self.np_random.integers(0, 2**31 - 1))
        self._frames = self.client.reset(prompt=prompt, seed=session_seed, context=context, start=start, start_index=index)
        started = self.client.last_reset
        if started.prompt is not None:
            prompt = started.prompt
        elif prompt is None:  # a 1.0 server does not say which prompt it used
            prompt = self.info.spec.default_prompt
        info = {"prompt": prompt, "start": started.start}
        if started.start_index is not None:
            info["start_index"] = started.start_index
        observation = frames_observation(self._frames, self.frames)
        return observation, {**info, **self._reward_info(self.info.predicts_rewards), "session": self.client.session}

    def step(self, action):
        if self._frames is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        self._frames = self.client.step(action)
        result = self.client.last_step
        info = self._reward_info(result.reward_predicted)
        if result.reward_predicted:
            info["frame_rewards"] = result.frame_rewards
        return frames_observation(self._frames, self.frames), result.reward, result.terminated, False, {**info, "step": result.chunk}

    @staticmethod
    def _reward_info(predicted: bool) -> dict[str, Any]:
        return {"reward_predicted": True} if predicted else {"reward_predicted": False, "reward_note": NO_REWARD_NOTE}

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
