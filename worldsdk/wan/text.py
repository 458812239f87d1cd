"""UMT5-XXL text encoder (transformers) behind worldsdk's `TextEncoder` protocol.

As Wan2.1 encodes prompts: whitespace-cleaned text, tokenised with an end-of-sequence token to
`text_len` (512) tokens, the encoder's last hidden state with every padding position set to zero
(Wan trims each sequence to its length and zero-pads it back to 512). Encodings are cached per prompt
(least recently used first out), since a world re-encodes only when its prompt changes.
"""

from __future__ import annotations

import html
import re
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn


def clean_prompt(text: str) -> str:
    """Wan's `clean='whitespace'`: unescape HTML entities, collapse runs of whitespace, strip."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


class UMT5TextEncoder(nn.Module):
    """prompts -> (B, text_len, d_model) features, zeros at padding. Wraps a UMT5EncoderModel and its tokenizer."""

    def __init__(self, encoder: nn.Module, tokenizer, text_len: int = 512, cache_size: int = 64):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.text_dim = int(encoder.config.d_model)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @classmethod
    def from_pretrained(cls, encoder_path: str | Path, tokenizer_path: str | Path | None = None, text_len: int = 512,
                        dtype: torch.dtype = torch.float32, cache_size: int = 64) -> "UMT5TextEncoder":
        """Open a transformers UMT5EncoderModel folder and its tokenizer (by default in the same folder) locally."""
        import transformers
        from packaging.version import Version
        from transformers import AutoTokenizer, UMT5EncoderModel

        encoder_path = Path(encoder_path)
        tokenizer_path = Path(tokenizer_path) if tokenizer_path is not None else encoder_path
        for what, path in (("text encoder", encoder_path), ("tokenizer", tokenizer_path)):
            if not path.is_dir():
                raise FileNotFoundError(f"{what} folder {path} does not exist")
        dtype_arg = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"  # renamed in 4.56
        encoder = UMT5EncoderModel.from_pretrained(str(encoder_path), local_files_only=True, **{dtype_arg: dtype})
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
        return cls(encoder.eval(), tokenizer, text_len, cache_size)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def _apply(self, fn, *args, **kwargs):
        self._cache.clear()  # cached features live on the old device / dtype
        return super()._apply(fn, *args, **kwargs)

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        """Encode without the cache: (B,) prompts -> (B, text_len, text_dim)."""
        tokens = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", max_length=self.text_len,
                                truncation=True, add_special_tokens=True, return_tensors="pt")
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        return hidden * mask[..., None].to(hidden.dtype)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(B,) prompts -> (B, text_len, text_dim), zeros at padding; cached per prompt."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        fresh = dict(zip(missing, self(missing))) if missing else {}
        out = torch.stack([fresh[p] if p in fresh else self._cache[p] for p in prompts])
        for p in prompts:
            self._cache[p] = fresh.get(p, self._cache.get(p))
            self._cache.move_to_end(p)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out
