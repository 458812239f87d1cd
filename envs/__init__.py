"""Gymnasium environments over worldsdk worlds. Importing registers the IDs; nothing else happens."""

from gymnasium.envs.registration import register, registry

if "worldsdk/World-v0" not in registry:
    register(
        id="worldsdk/World-v0",
        entry_point="envs.world_env:WorldEnv",
        vector_entry_point="envs.world_env:WorldVectorEnv",
        max_episode_steps=1000,
    )
if "worldsdk/RemoteWorld-v0" not in registry:
    register(id="worldsdk/RemoteWorld-v0", entry_point="envs.remote_env:RemoteWorldEnv", max_episode_steps=1000)
