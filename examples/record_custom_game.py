"""Record a game of your own (any Gymnasium env with pixels) into a worldsdk dataset, then read clips.

    python examples/record_custom_game.py [--out runs/custom-data]

Records CarRacing-v3 when Box2D is installed (`pip install "gymnasium[box2d]"`); otherwise a tiny
game defined below (a paddle catching falling blocks), which takes a couple of seconds.
"""

from __future__ import annotations

import argparse
import logging

import gymnasium as gym
import numpy as np

from worldsdk.data import ClipDataset, EpisodeStore, record


class CatchEnv(gym.Env):
    """A paddle at the bottom catches blocks falling from the top.

    Action Space: Discrete(3): 0 stay, 1 left, 2 right.
    Observation Space: Box(0, 255, (48, 48, 3), uint8), the frame itself.
    Starting State: the paddle in the middle, a block at a random column at the top.
    Episode End: terminates after 5 missed blocks; truncate with a TimeLimit.
    Arguments: none.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(self, render_mode: str | None = "rgb_array"):
        self.render_mode = render_mode
        self.action_space = gym.spaces.Discrete(3)
        self.observation_space = gym.spaces.Box(0, 255, (48, 48, 3), np.uint8)

    def _frame(self) -> np.ndarray:
        frame = np.full((48, 48, 3), (20, 30, 60), np.uint8)
        frame[44:46, self.paddle - 4 : self.paddle + 4] = (240, 240, 90)
        frame[self.block_y : self.block_y + 3, self.block_x : self.block_x + 3] = (230, 80, 80)
        return frame

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.paddle, self.misses = 24, 0
        self.block_x, self.block_y = int(self.np_random.integers(2, 44)), 0
        return self._frame(), {}

    def step(self, action):
        self.paddle = int(np.clip(self.paddle + (0, -2, 2)[int(action)], 4, 44))
        self.block_y += 2
        reward = 0.0
        if self.block_y >= 42:
            caught = abs(self.block_x + 1 - self.paddle) <= 5
            reward = 1.0 if caught else -1.0
            self.misses += not caught
            self.block_x, self.block_y = int(self.np_random.integers(2, 44)), 0
        return self._frame(), reward, self.misses >= 5, False, {}

    def render(self):
        return self._frame()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/custom-data")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        import Box2D  # noqa: F401

        env_id, options = "CarRacing-v3", dict(episodes=2, max_steps=200, frameskip=2)
    except ImportError:
        gym.register("examples/Catch-v0", entry_point=CatchEnv, max_episode_steps=300)
        env_id, options = "examples/Catch-v0", dict(episodes=4, max_steps=300)

    # random sticky actions; every episode in one style, a third of them switching style mid-episode
    records = record(env_id, args.out, policy="random", size=(48, 48), style_switch_fraction=0.34, progress=True, **options)
    print(f"recorded {len(records)} episodes of {env_id}: " + ", ".join(f"{r.length} frames '{r.prompt}'" for r in records))
    print("dataset:", EpisodeStore(args.out).meta().to_dict())

    clips = ClipDataset(args.out, clip_len=16, split=None)
    clip = clips[0]
    print(f"{len(clips)} clips of 16 frames; the first: frames {tuple(clip['frames'].shape)}, "
          f"action features {tuple(clip['action_features'].shape)}, prompt '{clip['prompt']}'")


if __name__ == "__main__":
    main()
