"""Paper-scale worlds: Wan2.1 DiT checkpoints (Wan, Self Forcing, Causal Forcing, diffusers), the Wan VAE
and UMT5 from local paths, put together as a World folder. See docs/wan.md.

Importing this package needs only torch; diffusers and transformers (`pip install 'worldsdk[wan]'`)
are imported when a VAE or text encoder is opened.
"""

from worldsdk.wan.checkpoint import (
    diffusers_to_wan, infer_model_config, load_transformer, read_state_dict, save_transformer, wan_to_diffusers,
)
from worldsdk.wan.text import UMT5TextEncoder
from worldsdk.wan.vae import WanDecoderState, WanVAE, WanVAEConfig
from worldsdk.wan.world import WanWorldFiles, WorldParts, open_world_parts, random_world_parts, write_world_json

__all__ = [
    "UMT5TextEncoder", "WanDecoderState", "WanVAE", "WanVAEConfig", "WanWorldFiles", "diffusers_to_wan",
    "WorldParts", "infer_model_config", "load_transformer", "open_world_parts", "random_world_parts", "read_state_dict",
    "save_transformer", "wan_to_diffusers", "write_world_json",
]
