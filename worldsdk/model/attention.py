"""Attention kernels behind one signature, chosen once per model (not per call).

Every backend takes q (B, Lq, H, D), k and v (B, Lk, H, D) and a boolean mask broadcastable to
(B, H, Lq, Lk) or None, and returns (B, Lq, H * D).
  sdpa   PyTorch scaled_dot_product_attention (any device and dtype; picks flash / memory-efficient
         kernels itself on CUDA).
  flash  flash-attn 2/3 (`flash_attn_func`) on CUDA in fp16/bf16: takes our (B, L, H, D) layout as is.
         Masked calls (batches of sessions whose histories differ in length) go through SDPA.
`CausalDiT.set_attention(name)` installs one of them in every attention layer.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """PyTorch SDPA. q (B, Lq, H, D), k/v (B, Lk, H, D) -> (B, Lq, H * D)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


def _flash_kernel():
    """flash-attn's `flash_attn_func` (FA3 on Hopper when installed, else FA2), or None."""
    for module in ("flash_attn_interface", "flash_attn"):  # FA3 ships as flash_attn_interface
        if importlib.util.find_spec(module) is not None:
            return getattr(importlib.import_module(module), "flash_attn_func")
    return None


def make_flash_attention() -> AttentionFn:
    """flash-attn for unmasked fp16/bf16 CUDA calls, SDPA for the rest (masks, fp32, CPU)."""
    kernel = _flash_kernel()
    if kernel is None:
        raise ImportError("attention='flash' needs the flash-attn package (pip install 'worldsdk[gpu]')")

    def flash_attention(q, k, v, mask):
        if mask is not None or not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
            return sdpa_attention(q, k, v, mask)
        out = kernel(q, k, v)
        out = out[0] if isinstance(out, tuple) else out  # FA3 returns (out, lse)
        return out.flatten(2)

    return flash_attention


ATTENTION_BACKENDS = ("sdpa", "flash", "auto")


def attention_backend(name: str, device: torch.device | str | None = None) -> AttentionFn:
    """The attention function called `name`; 'auto' = flash when installed and on CUDA, else SDPA."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {ATTENTION_BACKENDS}")
    if name == "auto":
        on_cuda = device is not None and torch.device(device).type == "cuda"
        name = "flash" if on_cuda and _flash_kernel() is not None else "sdpa"
        log.info("attention backend: %s", name)
    return make_flash_attention() if name == "flash" else sdpa_attention
