"""The causal DiT (Wan2.1 layout) with per-latent-frame timestep and action modulation.

Reads bottom-up: norms, attention, block, head, model. One set of layers, four entry points:
  forward_bidirectional   full attention over a clip (teachers, critics)
  forward_causal          block-causal attention over a clip (diffusion forcing, the causal student)
  forward_teacher_forcing clean + noisy copies in one sequence, only the noisy half scored
  denoise_chunk / commit_chunk  streaming one chunk against a KVCache

Latents are (B, C, F, H, W); timesteps t = 1000 sigma are (B, F); text features are
(B, text_len, text_dim); action features are (B, F, action_dim + 1), the last entry being 1 for a
real action and 0 for "no action" (the unconditional input of guidance).
Parameter names follow Wan2.1's DiT so that its checkpoints map one-to-one.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from worldsdk.config import ModelConfig
from worldsdk.diffusion import t_to_sigma
from worldsdk.model.attention import attention_backend, sdpa_attention
from worldsdk.model.cache import KVCache
from worldsdk.model.masks import block_causal_mask, teacher_forcing_mask
from worldsdk.model.rope import Rope3D, apply_rope


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's 1D sinusoidal embedding: [cos(t w), sin(t w)], w = 10000^(-i / (dim / 2))."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t.double()[..., None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def clip_context(x: torch.Tensor, frames_per_chunk: int, context_frames: int) -> torch.Tensor:
    """For every frame of a clip (B, C, F, H, W), the `context_frames` frames before its chunk, stacked
    on channels, then one presence channel per context frame: (B, K * (C + 1), F, H, W).

    Frames before the clip are missing (zeros, presence 0), as at the start of an episode. The frames
    of one chunk share their context, as they do when streaming (see `recent_context`).
    """
    b, c, f, h, w = x.shape
    k = context_frames
    padded = torch.cat([x.new_zeros(b, c, k, h, w), x], dim=2)  # (B, C, K + F, H, W)
    present = torch.cat([x.new_zeros(k), x.new_ones(f)])
    starts = torch.arange(f, device=x.device) // frames_per_chunk * frames_per_chunk  # chunk start of each frame
    index = starts[:, None] + torch.arange(k, device=x.device)[None, :]  # (F, K) in padded frames
    frames = padded[:, :, index]  # (B, C, F, K, H, W)
    frames = frames.permute(0, 3, 1, 2, 4, 5).reshape(b, k * c, f, h, w)  # (B, K * C, F, H, W), oldest first
    flags = present[index].t()[None, :, :, None, None].expand(b, k, f, h, w)  # (B, K, F, H, W)
    return torch.cat([frames, flags], dim=1)


def skip_velocity(x_t: torch.Tensor, sigma: torch.Tensor, reference: torch.Tensor, present: torch.Tensor,
                  change_std: float) -> torch.Tensor:
    """E[v | x_t] when x0 ~ N(reference, change_std^2) per element (N(0, 1), the latents' own scale, where
    no reference frame is present): the linear skip of EDM (Karras et al. 2022, eq. 7) written for
    rectified flow, x_t = a x0 + sigma eps with a = 1 - sigma.

    E[x0 | x_t] = m + k (x_t - a m) with k = a s^2 / D, D = a^2 s^2 + sigma^2, so
    v = (x_t - E[x0 | x_t]) / sigma = (sigma - a s^2) / D (x_t - m) - k m: finite at every sigma
    (-x0 at sigma 0, eps - m at sigma 1). x_t (B, C, F, H, W); sigma, present (B, F); reference
    (B, C, F, H, W).
    """
    x_t, reference = x_t.float(), reference.float()
    shape = (sigma.shape[0], 1, sigma.shape[1], 1, 1)
    s = sigma.float().view(shape)
    p = present.float().view(shape)
    s2 = p * change_std**2 + (1 - p)  # no reference frame: the unit-variance data prior
    mean = reference * p
    a = 1 - s
    d = a * a * s2 + s * s
    return (s - a * s2) / d * (x_t - mean) - (a * s2 / d) * mean


def recent_context(recent: torch.Tensor, recent_valid: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """The streaming twin of `clip_context`: a cache's last clean frames (B, C, K, H, W) and their
    presence (B, K) -> the context of the next chunk (B, K * (C + 1), chunk_frames, H, W)."""
    b, c, k, h, w = recent.shape
    frames = recent.permute(0, 2, 1, 3, 4).reshape(b, k * c, 1, h, w)
    flags = recent_valid.to(recent)[:, :, None, None, None].expand(b, k, 1, h, w)
    return torch.cat([frames, flags], dim=1).expand(-1, -1, chunk_frames, -1, -1)


class Attention(nn.Module):
    """The projections Wan's self- and cross-attention share: q, k, v, o and RMSNorm on q and k."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.heads = (config.num_heads, config.head_dim)
        self.q = nn.Linear(config.dim, config.dim)
        self.k = nn.Linear(config.dim, config.dim)
        self.v = nn.Linear(config.dim, config.dim)
        self.o = nn.Linear(config.dim, config.dim)
        self.norm_q = RMSNorm(config.dim, config.eps)
        self.norm_k = RMSNorm(config.dim, config.eps)
        self.attend = sdpa_attention  # the kernel; CausalDiT.set_attention swaps it

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_q(self.q(x)).unflatten(-1, self.heads)  # (B, L, H, D)

    def key_value(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.norm_k(self.k(x)).unflatten(-1, self.heads), self.v(x).unflatten(-1, self.heads)


class SelfAttention(Attention):
    def forward(self, x, rope_q, rope_k, mask, past=None):
        """Returns (output (B, L, dim), k, v of x pre-RoPE (B, L, H, D)). `past(k, v)`, when streaming, gives
        the keys and values to attend over: the cached window with x's own (`KVCache.extend`)."""
        q = self.query(x)
        k, v = self.key_value(x)
        k_all, v_all = (k, v) if past is None else past(k, v)
        out = self.attend(apply_rope(q, rope_q), apply_rope(k_all, rope_k), v_all, mask)
        return self.o(out), k, v


class CrossAttention(Attention):
    def text_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded text (B, Lt, dim) -> k, v (B, Lt, H, D): the per-prompt cross-attention cache."""
        return self.key_value(context)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.o(self.attend(self.query(x), kv[0], kv[1], None))


class Block(nn.Module):
    """adaLN transformer block: self-attention, cross-attention to text, GELU-tanh FFN."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        dim = config.dim
        self.norm1 = nn.LayerNorm(dim, eps=config.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(config)
        self.norm3 = nn.LayerNorm(dim, eps=config.eps) if config.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(config)
        self.norm2 = nn.LayerNorm(dim, eps=config.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(config.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x, e, rope_q, rope_k, mask, text_kv, past=None):
        """x (B, F * T, dim); e (B, F, 6, dim) per-frame modulation. Returns (x, k, v)."""
        b, f = e.shape[:2]
        mod = (self.modulation.unsqueeze(0) + e).unsqueeze(3)  # (B, F, 6, 1, dim)
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = mod.unbind(2)  # each (B, F, 1, dim)
        per_frame = lambda h: h.unflatten(1, (f, -1))  # (B, F * T, dim) -> (B, F, T, dim)  # noqa: E731
        h = modulate(per_frame(self.norm1(x)), shift_sa, scale_sa).flatten(1, 2)
        y, k, v = self.self_attn(h, rope_q, rope_k, mask, past)
        x = x + (per_frame(y) * gate_sa).flatten(1, 2)
        x = x + self.cross_attn(self.norm3(x), text_kv)
        h = modulate(per_frame(self.norm2(x)), shift_ff, scale_ff).flatten(1, 2)
        x = x + (per_frame(self.ffn(h)) * gate_ff).flatten(1, 2)
        return x, k, v


class Head(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.dim, eps=config.eps, elementwise_affine=False)
        self.head = nn.Linear(config.dim, config.patch_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, config.dim) / config.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x (B, F * T, dim), e (B, F, dim) -> (B, F * T, patch_dim)."""
        f = e.shape[1]
        shift, scale = (self.modulation.unsqueeze(0) + e[:, :, None, :]).unsqueeze(3).unbind(2)  # (B, F, 1, dim)
        return self.head(modulate(self.norm(x).unflatten(1, (f, -1)), shift, scale)).flatten(1, 2)


class LocalBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and SiLU around a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


class LocalPath(nn.Module):
    """The convolutional path of `ModelConfig.local_channels`: per latent frame, 3x3 convolutions over its
    noisy latent, its context frames, the head's v, its action, its sigma and its slot in the chunk; the
    output is added to v. Frames are independent (each sees its chunk's context, as its tokens do), so
    a clip, a teacher-forcing sequence and a streamed chunk give the same values."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c, k, width = config.latent_channels, config.context_frames, config.local_channels
        self.frames_per_chunk = config.frames_per_chunk
        inputs = 2 * c + k * (c + 1) + (config.action_dim + 1 if config.action_dim else 0) + 1 + config.frames_per_chunk
        self.inp = nn.Conv2d(inputs, width, 3, padding=1)
        self.blocks = nn.Sequential(*[LocalBlock(width) for _ in range(config.local_blocks)])
        self.norm = nn.GroupNorm(8, width)
        self.out = nn.Conv2d(width, c, 3, padding=1)

    def forward(self, x: torch.Tensor, v: torch.Tensor, context: torch.Tensor | None, actions: torch.Tensor | None,
                sigma: torch.Tensor) -> torch.Tensor:
        """x, v (B, C, F, H, W) of frames starting at a chunk boundary; context (B, K * (C + 1), F, H, W) or
        None; actions (B, F, A + 1) or None; sigma (B, F) -> the correction to v, (B, C, F, H, W)."""
        b, _, f, h, w = x.shape
        dtype = self.inp.weight.dtype
        per_frame = lambda y: y[..., None, None].expand(*y.shape, h, w).permute(0, 2, 1, 3, 4)  # noqa: E731  (B, F, n) -> (B, n, F, H, W)
        slot = F.one_hot(torch.arange(f, device=x.device) % self.frames_per_chunk, self.frames_per_chunk)
        parts = [x, v] + ([] if context is None else [context]) + ([] if actions is None else [per_frame(actions)])
        parts += [per_frame(sigma[..., None]), per_frame(slot.expand(b, -1, -1))]
        z = torch.cat([p.to(dtype) for p in parts], dim=1).transpose(1, 2).flatten(0, 1)  # (B * F, inputs, H, W)
        out = self.out(F.silu(self.norm(self.blocks(self.inp(z)))))
        return out.unflatten(0, (b, f)).transpose(1, 2)


class HistoryPredictor(nn.Module):
    """The predictor of `ModelConfig.predictor_channels`: the frames of each chunk from the context frames
    before it and the chunk's actions, as a change from the last context frame, by 3x3 convolutions on
    the latent grid (the stand-alone net of benchmarks/ball_from_history.py, inside the world). It sees
    neither the noisy frames nor sigma, so every denoising step of a chunk gets the same prediction
    (`CausalDiT.predict_chunk` computes it once per chunk when streaming).

    The rest of the model reads its frames detached: it learns only from its own regression
    (`trainers.objectives.teacher_loss`'s predictor_weight), as the stand-alone net does. Trained also
    through the diffusion loss (the skip's reference, the trunk's input), it learned 3-4x slower per
    sample (docs/worlds.md, session 10)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c, k, fc, width = config.latent_channels, config.context_frames, config.frames_per_chunk, config.predictor_channels
        self.channels, self.context_frames, self.frames_per_chunk = c, k, fc
        action_inputs = fc * (config.action_dim + 1) if config.action_dim else 0
        self.inp = nn.Conv2d(k * (c + 1) + action_inputs, width, 3, padding=1)
        self.blocks = nn.Sequential(*[LocalBlock(width) for _ in range(config.predictor_blocks)])
        self.norm = nn.GroupNorm(8, width)
        self.out = nn.Conv2d(width, fc * c, 3, padding=1)

    def forward(self, context: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        """context (B, K * (C + 1), F, H, W) of frames starting at a chunk boundary (`clip_context`); actions
        (B, F, A + 1) or None -> the predicted frames (B, C, F, H, W)."""
        b, _, f, h, w = context.shape
        c, k, fc = self.channels, self.context_frames, self.frames_per_chunk
        dtype = self.inp.weight.dtype
        first = context[:, :, ::fc].transpose(1, 2)  # each chunk's context (its frames share it): (B, n, ., H, W)
        n = first.shape[1]
        parts = [first]
        if actions is not None:  # the actions of the chunk's frames, zeros past the end of a clip
            padded = F.pad(actions, (0, 0, 0, n * fc - f)).reshape(b, n, -1)
            parts.append(padded[..., None, None].expand(-1, -1, -1, h, w))
        z = torch.cat([p.to(dtype) for p in parts], dim=2).flatten(0, 1)  # (B * n, inputs, H, W)
        change = self.out(F.silu(self.norm(self.blocks(self.inp(z))))).float()
        change = change.reshape(b, n, fc, c, h, w).flatten(1, 2)[:, :f].permute(0, 2, 1, 3, 4)  # (B, C, F, H, W)
        last = context[:, (k - 1) * c : k * c].float()  # the newest context frame (zeros where there is none)
        return last + change


class CausalDiT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        dim = config.dim
        self.patch_embedding = nn.Conv3d(config.latent_channels, dim, kernel_size=config.patch, stride=config.patch)
        self.text_embedding = nn.Sequential(nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.action_embedding = (
            nn.Sequential(nn.Linear(config.action_dim + 1, dim), nn.SiLU(), nn.Linear(dim, dim)) if config.action_dim else None
        )
        k = config.context_frames
        if k:  # the previous frames at each token's place, and which frame of its chunk a token is in
            self.context_embedding = nn.Conv3d(k * (config.latent_channels + 1), dim, kernel_size=config.patch, stride=config.patch)
            self.chunk_slot = nn.Parameter(torch.zeros(config.frames_per_chunk, dim))
        else:
            self.context_embedding, self.chunk_slot = None, None
        # each place's own response to each frame's action (ModelConfig.action_map), zero at first
        self.action_map = (nn.Parameter(torch.zeros(config.action_dim + 1, config.tokens_per_frame, dim))
                           if config.action_map else None)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.num_layers)])
        self.head = Head(config)
        self.local = LocalPath(config) if config.local_channels else None
        if config.predictor_channels:  # the history predictor, and its prediction as an input at each token's place
            self.predictor = HistoryPredictor(config)
            self.prediction_embedding = nn.Conv3d(config.latent_channels, dim, kernel_size=config.patch, stride=config.patch)
        else:
            self.predictor, self.prediction_embedding = None, None
        self.rope = Rope3D(config)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Wan2.1's init: xavier linears, small-normal embeddings, zero head and zero action output."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for seq in (self.text_embedding, self.time_embedding):
            for layer in seq:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        if self.action_embedding is not None:  # a new action pathway starts as a no-op (adaLN-zero style)
            nn.init.zeros_(self.action_embedding[-1].weight)
        if self.context_embedding is not None:  # so does the context pathway
            nn.init.zeros_(self.context_embedding.weight)
            nn.init.zeros_(self.context_embedding.bias)
        if self.local is not None:  # and the local path
            nn.init.zeros_(self.local.out.weight)
            nn.init.zeros_(self.local.out.bias)
        if self.predictor is not None:  # and the predictor ("nothing moved") and its input to the trunk
            for layer in (self.predictor.out, self.prediction_embedding):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    # -- inference set-up ---------------------------------------------------------------------------
    FP32_MODULES = ("time_embedding", "time_projection", "action_embedding", "rope")

    def to_inference_dtype(self, dtype: torch.dtype) -> "CausalDiT":
        """Cast weights to `dtype` (bf16 on a GPU) but keep the timestep and action MLPs and the RoPE
        angle tables in fp32 (bf16 angles of ~50 rad would be off by ~0.2 rad).

        As diffusers' Wan port does (`_keep_in_fp32_modules`): the per-frame modulation is computed in
        fp32 from an fp64 sinusoid and only then cast to the blocks' dtype.
        """
        self.to(dtype)
        for name in self.FP32_MODULES:
            module = getattr(self, name)
            if module is not None:
                module.float()
        return self

    def set_attention(self, name: str) -> "CausalDiT":
        """Install an attention kernel ('sdpa', 'flash' or 'auto'; see worldsdk.model.attention) in every layer."""
        kernel = attention_backend(name, self.patch_embedding.weight.device)
        for block in self.blocks:
            block.self_attn.attend = kernel
            block.cross_attn.attend = kernel
        return self

    # -- shared pieces ------------------------------------------------------------------------------
    def embed_text(self, text: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Text features (B, Lt, text_dim) -> per-layer cross-attention (k, v)."""
        context = self.text_embedding(text.to(self.text_embedding[0].weight))  # its dtype and device
        return [block.cross_attn.text_kv(context) for block in self.blocks]

    def _conditioning(self, t: torch.Tensor, actions: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """t (B, F), actions (B, F, A + 1) -> e (B, F, dim) for the head, e0 (B, F, 6, dim) for blocks."""
        time_dtype = self.time_embedding[0].weight.dtype  # fp32 unless the whole model was cast
        e = self.time_embedding(sinusoidal_embedding(self.config.freq_dim, t).to(time_dtype))  # (B, F, dim)
        if self.action_embedding is not None:
            if actions is None:
                raise ValueError("this model is action-conditioned: pass action features (B, F, action_dim + 1)")
            e = e + self.action_embedding(actions.to(self.action_embedding[0].weight.dtype)).to(e.dtype)
        e0 = self.time_projection(e).unflatten(-1, (6, self.config.dim))  # (B, F, 6, dim)
        dtype = self.patch_embedding.weight.dtype  # the blocks' dtype
        return e.to(dtype), e0.to(dtype)

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, F, H, W) -> tokens (B, F * T, dim), frame-major."""
        return self.patch_embedding(x.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)

    def _embed(self, x: torch.Tensor, context: torch.Tensor | None, actions: torch.Tensor | None = None,
               prediction: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens of latents (B, C, F, H, W) whose frames start at a chunk boundary, plus their context
        frames (B, K * (C + 1), F, H, W), their actions' map (B, F, A + 1) and the history predictor's
        frames (B, C, F, H, W) when the model has them. -> (B, F * T, dim)."""
        h = self._patchify(x)
        if prediction is not None:  # detached: the predictor learns from its own regression alone (HistoryPredictor)
            h = h + self.prediction_embedding(prediction.detach().to(h.dtype)).flatten(2).transpose(1, 2)
        if self.action_map is not None:
            if actions is None:
                raise ValueError("this model is action-conditioned: pass action features (B, F, action_dim + 1)")
            place = torch.einsum("bfa,atd->bftd", actions.to(self.action_map.dtype), self.action_map)
            h = h + place.flatten(1, 2).to(h.dtype)
        if self.context_embedding is None:
            return h
        f, fc = x.shape[2], self.config.frames_per_chunk
        dtype = self.patch_embedding.weight.dtype
        h = h + self.context_embedding(context.to(dtype)).flatten(2).transpose(1, 2)
        slot = self.chunk_slot[torch.arange(f, device=x.device) % fc].to(dtype)  # (F, dim)
        return h + slot.repeat_interleave(self.config.tokens_per_frame, dim=0)

    def _output(self, h: torch.Tensor, e: torch.Tensor, x: torch.Tensor, t: torch.Tensor,
                context: torch.Tensor | None, actions: torch.Tensor | None,
                prediction: torch.Tensor | None = None) -> torch.Tensor:
        """The head's v for tokens h of latents x (B, C, F, H, W) at timesteps t, plus the skip around
        the history predictor's frames, or the last context frame without one, when the model has a skip
        (`skip_velocity`), plus the local path's correction when it has one (`LocalPath`)."""
        v = self._unpatchify(self.head(h, e), x.shape[2])
        sigma = t_to_sigma(t).float()
        if self.config.context_skip:
            c, k = self.config.latent_channels, self.config.context_frames
            reference = context[:, (k - 1) * c : k * c] if prediction is None else prediction.detach()  # (B, C, F, H, W)
            present = context[:, k * c + k - 1, :, 0, 0]  # its presence flag, (B, F)
            prior = skip_velocity(x, sigma, reference, present, self.config.context_skip)
            v = (v.float() + prior).to(v.dtype)
        if self.local is not None:
            v = v + self.local(x, v, context, actions, sigma).to(v.dtype)
        return v

    def _clip_context(self, x: torch.Tensor) -> torch.Tensor | None:
        cfg = self.config
        return clip_context(x.float(), cfg.frames_per_chunk, cfg.context_frames) if cfg.context_frames else None

    def _unpatchify(self, tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(B, F * T, C * ph * pw) -> (B, C, F, H, W), Wan's (p, q, r, c) channel order."""
        c = self.config.latent_channels
        _, ph, pw = self.config.patch
        gh, gw = self.config.grid
        x = tokens.reshape(tokens.shape[0], num_frames, gh, gw, 1, ph, pw, c)  # (B, F, h, w, pt, ph, pw, C)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(tokens.shape[0], c, num_frames, gh * ph, gw * pw)

    def _check(self, x: torch.Tensor, t: torch.Tensor) -> None:
        cfg = self.config
        if x.dim() != 5 or x.shape[1] != cfg.latent_channels or tuple(x.shape[3:]) != (cfg.latent_height, cfg.latent_width):
            raise ValueError(
                f"latents must be (B, {cfg.latent_channels}, F, {cfg.latent_height}, {cfg.latent_width}), got {tuple(x.shape)}"
            )
        if t.shape != x.shape[:1] + x.shape[2:3]:
            raise ValueError(f"timesteps must be (B, F) = {tuple(x.shape[:1] + x.shape[2:3])}, got {tuple(t.shape)}")

    def _sequence(self, x, t, text, actions, mask) -> torch.Tensor:
        """Run a whole clip with a given token mask; returns v (B, C, F, H, W)."""
        self._check(x, t)
        b, _, f = x.shape[:3]
        if f > self.config.latent_frames_max:
            raise ValueError(f"clip of {f} latent frames exceeds the trained length {self.config.latent_frames_max}")
        e, e0 = self._conditioning(t, actions)
        rope = self.rope(torch.arange(f, device=x.device).expand(b, -1))
        text_kv = self.embed_text(text)
        context = self._clip_context(x)  # causal and full attention see the input's own frames
        prediction = None if self.predictor is None else self.predictor(context, actions)
        h = self._embed(x, context, actions, prediction)
        for block, kv in zip(self.blocks, text_kv):
            h, _, _ = block(h, e0, rope, rope, mask, kv)
        return self._output(h, e, x, t, context, actions, prediction)

    # -- whole-clip entry points -----------------------------------------------------------------------
    def forward_bidirectional(self, x, t, text, actions=None) -> torch.Tensor:
        """Full attention over the clip (bidirectional teachers and critics). Returns v."""
        return self._sequence(x, t, text, actions, None)

    def forward_causal(self, x, t, text, actions=None) -> torch.Tensor:
        """Block-causal attention over chunks of frames_per_chunk frames. Returns v."""
        cfg = self.config
        mask = block_causal_mask(x.shape[2], cfg.frames_per_chunk, cfg.tokens_per_frame, x.device)
        return self._sequence(x, t, text, actions, mask)

    def forward_teacher_forcing(self, clean, noisy, t, text, actions=None, clean_t=None, with_prediction=False,
                                predictor_history=None):
        """Teacher forcing (Causal Forcing stage 1): v for the noisy copy, each chunk seeing clean history.

        clean, noisy: (B, C, F, H, W); t: (B, F) timesteps of the noisy copy (the clean copy has t = 0, or
        `clean_t` (B, F): a history corrupted with noise of that level, GameNGen's context augmentation).
        `predictor_history` (B, C, F, H, W): the history the history predictor reads, the uncorrupted one
        when `clean` is noised (as a cache's `recent_clean`); default `clean`.
        `with_prediction`: return (v, the history predictor's frames (B, C, F, H, W) or None), for its loss.
        """
        self._check(noisy, t)
        cfg = self.config
        b, _, f = noisy.shape[:3]
        if f > cfg.latent_frames_max:
            raise ValueError(f"clip of {f} latent frames exceeds the trained length {cfg.latent_frames_max}")
        both_t = torch.cat([torch.zeros_like(t) if clean_t is None else clean_t.to(t), t], dim=1)  # (B, 2F)
        both_actions = None if actions is None else torch.cat([actions, actions], dim=1)
        e, e0 = self._conditioning(both_t, both_actions)
        positions = torch.arange(f, device=noisy.device)
        rope = self.rope(torch.cat([positions, positions]).expand(b, -1))  # both copies share positions
        mask = teacher_forcing_mask(f, cfg.frames_per_chunk, cfg.tokens_per_frame, noisy.device)
        text_kv = self.embed_text(text)
        context = self._clip_context(clean)  # both copies see the clean frames before their chunk
        prediction = None
        if self.predictor is not None:
            prediction = self.predictor(context if predictor_history is None else self._clip_context(predictor_history), actions)
        h = torch.cat([self._embed(clean, context, actions, prediction),
                       self._embed(noisy, context, actions, prediction)], dim=1)  # (B, 2 F T, dim)
        for block, kv in zip(self.blocks, text_kv):
            h, _, _ = block(h, e0, rope, rope, mask, kv)
        half = f * cfg.tokens_per_frame
        v = self._output(h[:, half:], e[:, f:], noisy, t, context, actions, prediction)
        return (v, prediction) if with_prediction else v

    # -- streaming entry points --------------------------------------------------------------------------
    def predict_chunk(self, actions, cache: KVCache, frames: int | None = None) -> torch.Tensor | None:
        """The history predictor's frames (B, C, F, H, W) for the next chunk of `cache` (F = `frames`, default
        the model's chunk), from its clean recent frames and the chunk's actions (B, F, A + 1); None without
        a predictor. They are the same at every denoising step of the chunk and at its commit, so a sampler
        computes them once and passes them to `denoise_chunk` and `commit_chunk` (`prediction=`)."""
        if self.predictor is None:
            return None
        f = self.config.frames_per_chunk if frames is None else frames
        recent = cache.recent if cache.recent_clean is None else cache.recent_clean
        return self.predictor(recent_context(recent, cache.recent_valid, f), actions)

    def _stream(self, x, t, actions, cache: KVCache, with_head: bool, prediction=None):
        self._check(x, t)
        b, _, f = x.shape[:3]
        if b != cache.batch_size:
            raise ValueError(f"batch of {b} latents against a cache of batch {cache.batch_size}")
        e, e0 = self._conditioning(t, actions)
        query_pos, key_pos = cache.positions(f)
        rope_q, rope_k = self.rope(query_pos), self.rope(key_pos)
        mask = cache.key_mask(f)
        context = None
        if self.config.context_frames:
            if cache.recent is None:
                raise ValueError("this model reads context frames: make its cache with KVCache.empty(model.config, ...)")
            context = recent_context(cache.recent, cache.recent_valid, f)
            if prediction is None:
                prediction = self.predict_chunk(actions, cache, f)
        h = self._embed(x, context, actions, prediction)
        new_k, new_v = [], []
        for layer, block in enumerate(self.blocks):
            text_kv = (cache.text_keys[layer], cache.text_values[layer])
            h, k, v = block(h, e0, rope_q, rope_k, mask, text_kv, partial(cache.extend, layer))
            new_k.append(k)
            new_v.append(v)
        out = self._output(h, e, x, t, context, actions, prediction) if with_head else None
        return out, new_k, new_v

    def denoise_chunk(self, x, t, actions, cache: KVCache, prediction: torch.Tensor | None = None) -> torch.Tensor:
        """v for one chunk (B, C, Fc, H, W) attending to the cached clean history and itself. Leaves the
        cache's lengths, hence its window, as they were (it writes only the free slots after it).
        `prediction`: the chunk's `predict_chunk`, computed here when not given."""
        return self._stream(x, t, actions, cache, with_head=True, prediction=prediction)[0]

    def commit_chunk(self, x, t, actions, cache: KVCache, clean: torch.Tensor | None = None,
                     prediction: torch.Tensor | None = None) -> None:
        """Run a chunk (clean in inference, t = 0) and append its K/V (and, for a model with context
        frames, its latents) to the cache. `clean`: the chunk before the noise of a noised commit (t > 0),
        which the history predictor reads; default x. `prediction`: as for `denoise_chunk`."""
        _, new_k, new_v = self._stream(x, t, actions, cache, with_head=False, prediction=prediction)
        cache.commit(new_k, new_v)
        cache.push_recent(x, clean)

    def set_prompt(self, cache: KVCache, index: int, text: torch.Tensor) -> None:
        """Write the cross-attention K/V of text features (1, Lt, text_dim) into cache item `index`."""
        kv = self.embed_text(text)
        cache.set_text(index, [k[0] for k, _ in kv], [v[0] for _, v in kv])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

