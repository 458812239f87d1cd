"""The model's config: `ModelConfig`, the frozen dataclass from which every shape of the causal DiT is
derived (token counts, cache length, head split), and the model presets.

What a client of a world needs (`ActionSpec`, `WorldSpec`, the schedule's numbers, the world spec
presets) lives in `worldsdk.spec`; it is re-exported here, so `from worldsdk.config import WorldSpec`
keeps working. Both round-trip through plain JSON-able dicts, which is how checkpoints store them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

# re-exported: imports of these names from worldsdk.config keep working
from worldsdk.spec import (  # noqa: F401
    ACTION_KINDS,
    GAME_ACTION,
    GAME_KEYS,
    PAPER_SHIFT,
    PAPER_STEPS,
    SMALL_WORLD_SHIFT,
    WORLD_PRESETS,
    ActionSpec,
    WorldSpec,
    dataclass_from_dict,
)

# ----------------------------------------------------------------------------------------------
# Model config
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the causal DiT (Wan2.1 layout). Every token count and cache size derives from it."""

    latent_channels: int = 16
    latent_frames_max: int = 21  # the trained clip length in latent frames: positions never exceed it
    latent_height: int = 60
    latent_width: int = 104
    patch: tuple[int, int, int] = (1, 2, 2)
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    frames_per_chunk: int = 3
    action_dim: int = 0  # features per latent frame from the ActionSpec; 0 = prompt-only world
    # Clean latent frames before each chunk that every token of the chunk also sees at its own place,
    # stacked on channels (DIAMOND and GameNGen condition on the previous frames this way). Attention
    # reaches the whole history, but a 1-2 px ball moving between 16x16 px tokens is a local change
    # that a patch-aligned view of the last frames makes cheap to learn. 0 = off (Wan's layout).
    context_frames: int = 0
    # With context frames: the std of a latent's change from the last context frame to the frame being
    # denoised. v becomes the exact v of a Gaussian prior around that frame (EDM's skip, with the last
    # frame as the data mean) plus the network's output, so an untrained model already predicts
    # "nothing moved" and training learns only what moves. 0 = off (the network predicts all of v).
    context_skip: float = 0.0
    # A learned embedding of each frame's action per token place, added to the frame's tokens. The
    # action's adaLN modulation is the same at every place, so a token must first learn whether the
    # controlled object is in it before the action can move it; this gives each place its own response
    # (a paddle's column, a car's row). Zero-initialised. False = off (actions modulate only).
    action_map: bool = False
    # A convolutional path on each latent frame's own grid, added to the head's v: 3x3 convolutions over the
    # noisy latent, the context frames, the head's v, the frame's action, its sigma and its slot in the
    # chunk. DIAMOND's all-convolutional U-Net moves a 1-2 px ball cheaply; 16x16 px tokens behind a linear
    # patch embedding do not (docs/worlds.md, session 8). Its output starts at zero, so a grown model
    # computes what it did. 0 = off.
    local_channels: int = 0
    local_blocks: int = 4  # residual blocks of two 3x3 convolutions in the local path
    # A convolutional predictor of each frame from history alone (needs context_frames): 3x3 convolutions
    # over the context frames and the actions of the frame's chunk, predicting the change from the last
    # context frame, as benchmarks/ball_from_history.py's stand-alone net does (2-3x the trunk's ball from
    # history; docs/worlds.md, sessions 8-10). Its prediction replaces the last context frame as the
    # reference of the skip (context_skip) and enters the trunk as one more input at each token's place;
    # a teacher trains it with its own regression loss alone (stage.predictor_weight). Its output starts at
    # "nothing moved", so a grown model computes what it did. 0 = off.
    predictor_channels: int = 0
    predictor_blocks: int = 6
    rope_theta: float = 10000.0
    eps: float = 1e-6
    cross_attn_norm: bool = True

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} must be divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.rope_split[0] <= 0:
            raise ValueError(f"head_dim {self.head_dim} must be even and >= 6 for 3D RoPE")
        pt, ph, pw = self.patch
        if pt != 1:
            raise ValueError("only temporal patch size 1 is supported (one latent frame per token row)")
        if self.latent_height % ph or self.latent_width % pw:
            raise ValueError(f"latent grid {self.latent_height}x{self.latent_width} not divisible by patch {self.patch}")
        if self.context_frames < 0:
            raise ValueError(f"context_frames must be >= 0, got {self.context_frames}")
        if self.context_skip < 0 or (self.context_skip and not self.context_frames):
            raise ValueError(f"context_skip must be >= 0 and needs context_frames >= 1, got {self.context_skip} "
                             f"with {self.context_frames} context frames")
        if self.local_channels < 0 or self.local_channels % 8 or self.local_blocks < 0:
            raise ValueError(f"local_channels must be 0 (off) or a positive multiple of 8 and local_blocks >= 0, "
                             f"got {self.local_channels} and {self.local_blocks}")
        if self.predictor_channels < 0 or self.predictor_channels % 8 or self.predictor_blocks < 0 or (
                self.predictor_channels and not self.context_frames):
            raise ValueError(f"predictor_channels must be 0 (off) or a positive multiple of 8, with context_frames >= 1 "
                             f"and predictor_blocks >= 0; got {self.predictor_channels}, {self.context_frames} and "
                             f"{self.predictor_blocks}")
        if self.action_map and not self.action_dim:
            raise ValueError("action_map needs an action-conditioned model (action_dim >= 1)")
        if self.latent_frames_max % self.frames_per_chunk:
            raise ValueError(
                f"latent_frames_max {self.latent_frames_max} must be a multiple of frames_per_chunk {self.frames_per_chunk}"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Head-dim split between time, height and width (Wan: 128 -> 44/42/42)."""
        d = self.head_dim
        return d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid of one latent frame (height, width)."""
        return self.latent_height // self.patch[1], self.latent_width // self.patch[2]

    @property
    def tokens_per_frame(self) -> int:
        h, w = self.grid
        return h * w

    @property
    def tokens_per_chunk(self) -> int:
        return self.tokens_per_frame * self.frames_per_chunk

    @property
    def patch_dim(self) -> int:
        return self.latent_channels * math.prod(self.patch)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: Mapping) -> "ModelConfig":
        return dataclass_from_dict(ModelConfig, d, ("patch",))


# ----------------------------------------------------------------------------------------------
# Presets: each named preset's DiT (what it looks like to a player: worldsdk.spec.WORLD_PRESETS)
# ----------------------------------------------------------------------------------------------

MODEL_PRESETS: dict[str, ModelConfig] = {
    # Unit tests: seconds on one core. 32x32 frames -> 8x8x4 latents -> 16 tokens per frame.
    "tiny": ModelConfig(
        latent_channels=4, latent_frames_max=8, latent_height=8, latent_width=8, dim=64, ffn_dim=128,
        num_heads=2, num_layers=2, freq_dim=32, text_dim=32, text_len=16, frames_per_chunk=2,
        action_dim=GAME_ACTION.feature_dim,
    ),
    # The CPU-trained default worlds: 64x64 frames -> 16x16x8 latents -> 4x4 patches, 16 tokens per frame;
    # clips of 8 latent frames (4 chunks of 2). Sized so that every stage trains on a 2-core CPU.
    "small": ModelConfig(
        latent_channels=8, latent_frames_max=8, latent_height=16, latent_width=16, patch=(1, 4, 4), dim=256,
        ffn_dim=1024, num_heads=4, num_layers=8, freq_dim=128, text_dim=128, text_len=32, frames_per_chunk=2,
        action_dim=GAME_ACTION.feature_dim,
    ),
    # `small` whose tokens also see the two clean frames before their chunk at their own place
    # (ModelConfig.context_frames: the locality that moves a 1-2 px ball cheaply), with v predicted
    # around "nothing moved" (context_skip: 0.33 is the std of a Pong latent's change over 1-2 frames).
    "small-ctx": ModelConfig(
        latent_channels=8, latent_frames_max=8, latent_height=16, latent_width=16, patch=(1, 4, 4), dim=256,
        ffn_dim=1024, num_heads=4, num_layers=8, freq_dim=128, text_dim=128, text_len=32, frames_per_chunk=2,
        action_dim=GAME_ACTION.feature_dim, context_frames=2, context_skip=0.33,
    ),
    # The paper's shapes (Wan2.1-T2V-1.3B): 832x480, 21 latent frames of 1,560 tokens, chunks of 3.
    "wan-1.3b": ModelConfig(),
}


def preset(name: str) -> tuple[ModelConfig, WorldSpec]:
    """Return (model config, world spec) of a named preset."""
    if name not in MODEL_PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(MODEL_PRESETS)}")
    return MODEL_PRESETS[name], WORLD_PRESETS[name]
