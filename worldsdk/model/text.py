"""Text encoders: prompt strings -> (B, text_len, text_dim) token features, padding zeroed.

`ByteTextEncoder` is the small trainable encoder of the tiny and small worlds (UTF-8 bytes, no
vocabulary, no download). Larger worlds plug in UMT5 through the same `TextEncoder` protocol.
The empty prompt encodes to all zeros: it is the unconditional input of classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Protocol

import torch
import torch.nn as nn


class TextEncoder(Protocol):
    text_len: int
    text_dim: int

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(B,) prompts -> (B, text_len, text_dim), zeros at padding."""
        ...


@dataclass(frozen=True)
class ByteTextConfig:
    text_len: int = 32
    text_dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    width: int = 0  # internal width; 0 = text_dim. Wide text_dim (UMT5's 4096) gets a projection.

    @property
    def inner_dim(self) -> int:
        return self.width or self.text_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: Mapping) -> "ByteTextConfig":
        return ByteTextConfig(**d)


class ByteTextEncoder(nn.Module):
    """UTF-8 bytes -> embeddings + learned positions -> a few pre-norm transformer layers."""

    PAD = 0

    def __init__(self, config: ByteTextConfig):
        super().__init__()
        self.config = config
        self.text_len, self.text_dim = config.text_len, config.text_dim
        width = config.inner_dim
        self.byte_embedding = nn.Embedding(257, width, padding_idx=self.PAD)  # byte b -> id b + 1
        self.position = nn.Parameter(torch.randn(config.text_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, config.num_heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, config.text_dim) if width != config.text_dim else nn.Identity()

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """(B,) strings -> (B, text_len) byte ids, 0 = padding; longer prompts are truncated."""
        ids = torch.zeros(len(prompts), self.text_len, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            data = prompt.encode("utf-8")[: self.text_len]
            if data:
                ids[i, : len(data)] = torch.tensor(list(data), dtype=torch.long) + 1
        return ids.to(self.position.device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == self.PAD  # (B, L)
        x = self.byte_embedding(ids) + self.position  # (B, L, D)
        # An all-padding row (the empty prompt) would make attention NaN; let it attend to itself.
        safe_pad = pad & ~pad.all(dim=1, keepdim=True)
        x = self.proj(self.norm(self.layers(x, src_key_padding_mask=safe_pad)))
        return x.masked_fill(pad[..., None], 0.0)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self(self.tokenize(prompts))
