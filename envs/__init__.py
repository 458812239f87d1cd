"""Gymnasium environments over worldsdk worlds. Importing registers the IDs; nothing else happens.

This package installs as `worldsdk.envs` (and runs as `envs` in a source checkout), so the entry
points are spelled from `__name__` rather than a fixed package name.
"""

from gymnasium.envs.registration import register, registry

if "worldsdk/World-v0" not in registry:
    register(
        id="worldsdk/World-v0",
        entry_point=f"{__name__}.world_env:WorldEnv",
        vector_entry_point=f"{__name__}.world_env:WorldVectorEnv",
        max_episode_steps=1000,
    )
if "worldsdk/RemoteWorld-v0" not in registry:
    register(id="worldsdk/RemoteWorld-v0", entry_point=f"{__name__}.remote_env:RemoteWorldEnv", max_episode_steps=1000)
