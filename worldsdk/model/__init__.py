"""The causal DiT, its attention masks, RoPE, KV cache and text encoders."""

from worldsdk.model.cache import KVCache
from worldsdk.model.dit import CausalDiT
from worldsdk.model.masks import block_causal_mask, teacher_forcing_mask
from worldsdk.model.text import ByteTextConfig, ByteTextEncoder, TextEncoder

__all__ = [
    "ByteTextConfig", "ByteTextEncoder", "CausalDiT", "KVCache", "TextEncoder",
    "block_causal_mask", "teacher_forcing_mask",
]
