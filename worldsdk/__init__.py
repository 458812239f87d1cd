"""worldsdk: interactive world models distilled with Causal Forcing.

    from worldsdk import World
    world = World.load("pong")          # a shipped world, a path, or a preset name
    frames = world.reset(prompt="pong, neon style", seed=0)
    frames = world.step(action)

Importing worldsdk registers the Gymnasium IDs `worldsdk/World-v0` and `worldsdk/RemoteWorld-v0`.
The Gymnasium envs and the trainers install as `worldsdk.envs` and `worldsdk.trainers`.
"""

from worldsdk import _layout

_layout.install()  # a source checkout: worldsdk.envs / worldsdk.trainers are the top-level envs / trainers

from worldsdk.config import ModelConfig
from worldsdk.spec import ActionSpec, WorldSpec
from worldsdk.reward import RewardConfig, RewardModel
from worldsdk.world import World, WorldState, shipped_worlds

from worldsdk import envs as _envs  # noqa: E402,F401  (registers the Gymnasium IDs; no other side effect)

__all__ = ["ActionSpec", "ModelConfig", "RewardConfig", "RewardModel", "World", "WorldSpec", "WorldState", "shipped_worlds"]
__version__ = "0.1.0"
