"""World checkpoints: one safetensors file whose header carries the JSON configs and a checksum.

Tensors are stored under prefixes (`model.`, `autoencoder.`, `text_encoder.`); the header's
`worldsdk` entry holds the model config, world spec, autoencoder and text-encoder configs and any
extra JSON (training summary), and `sha256` covers every tensor's bytes, so a truncated or corrupt
file is detected and named. Loading never runs code from the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "worldsdk-world"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def atomic_save(tensors: Mapping[str, torch.Tensor], meta: Mapping, path: str | os.PathLike) -> Path:
    """Write tensors + JSON metadata to `path` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header = {"worldsdk": json.dumps(dict(meta)), "sha256": tensors_digest(tensors)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read(path: str | os.PathLike, expected_format: str | None = FORMAT) -> tuple[dict[str, torch.Tensor], dict]:
    """Read and verify a checkpoint: returns (tensors, metadata). Raises CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for truncated headers and data
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    if "worldsdk" not in header:
        raise CheckpointError(f"{path}: safetensors file without worldsdk metadata (not a worldsdk checkpoint)")
    try:
        meta = json.loads(header["worldsdk"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt metadata JSON: {exc}") from exc
    if expected_format is not None and meta.get("format") != expected_format:
        raise CheckpointError(f"{path}: expected a {expected_format!r} checkpoint, found {meta.get('format')!r}")
    if header.get("sha256") != tensors_digest(tensors):
        raise CheckpointError(f"{path}: tensor data does not match its checksum (the file is corrupt)")
    return tensors, meta


def split_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Sub-dict of tensors under `prefix.` with the prefix removed."""
    p = prefix + "."
    return {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}


def load_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor], path, what: str) -> None:
    """Load a state dict strictly; on mismatch raise CheckpointError listing missing, unexpected and misshaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                       for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or misshaped:
        parts = [f"missing keys {missing}" if missing else "", f"unexpected keys {unexpected}" if unexpected else "",
                 f"shape mismatches {misshaped}" if misshaped else ""]
        raise CheckpointError(f"{path}: {what} does not match its config: " + "; ".join(p for p in parts if p))
    module.load_state_dict(state, strict=True)
