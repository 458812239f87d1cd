"""World checkpoints: one safetensors file whose header carries the JSON configs and a checksum.

Tensors are stored under prefixes (`model.`, `autoencoder.`, `text_encoder.`); the header's
`worldsdk` entry holds the model config, world spec, autoencoder and text-encoder configs and any
extra JSON (training summary), and `sha256` covers every tensor's bytes as stored, so a truncated or
corrupt file is detected and named. Loading never runs code from the file.

Storage (`atomic_save(..., storage=)`): "exact" keeps every tensor as given; "fp16" casts float
tensors to fp16; "int8" and "int4" quantize the weight matrices (float, >= 2 dims, >= 4096
elements) symmetrically by absmax: int8 with one scale per output channel (row), int4 with one
scale per group of 32 values of a row, two values packed per byte. "int4" gives 4 bits only to the
tensors whose names match `int4_patterns` (by default a world's transformer blocks, `model.blocks.*`,
83% of a small world's weights) and 8 bits to the other matrices, because the autoencoder and the
embeddings are what 4 bits hurt: on the trained Pong teacher, a seeded 16-step rollout's frames
against the fp32 world's are at 67 dB PSNR for fp16, 52 dB for int8, 49 dB for int4 (blocks) and
34 dB with 4 bits everywhere (38 dB with only the autoencoder at 4 bits). A quantized tensor is stored as
`<name>` (int8, or uint8 packed nibbles) plus `<name>#scale` (fp16, rounded up so that no value
clips: the error of every element is at most half its scale); the other float tensors (biases,
norms, latent statistics: under 1% of a world's bytes) stay exact. The header's `storage` entry
records the kind and, per quantized or cast tensor, its original dtype and shape; `read` restores
the original dtypes and shapes, so loaders never see the storage.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "worldsdk-world"
FORMAT_VERSION = 1

STORAGES = ("exact", "fp16", "int8", "int4")
SCALE_SUFFIX = "#scale"  # never part of a state-dict key (module and parameter names are identifiers)
QUANTIZE_MIN_ELEMENTS = 4096
INT4_GROUP = 32
INT4_TENSORS = ("model.blocks.*",)  # what "int4" storage gives 4 bits by default: the DiT's blocks
_FP16_MAX = 65504.0


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _digest(stored: Mapping[str, torch.Tensor], layout_json: str | None) -> str:
    """The header's checksum: the stored tensors' digest, and with compact storage also its layout."""
    digest = tensors_digest(stored)
    return digest if layout_json is None else hashlib.sha256(f"{digest}|{layout_json}".encode()).hexdigest()


def atomic_save(tensors: Mapping[str, torch.Tensor], meta: Mapping, path: str | os.PathLike,
                storage: str = "exact", int4_patterns: Sequence[str] = INT4_TENSORS) -> Path:
    """Write tensors + JSON metadata to `path` atomically (temp file in the same folder, then rename).

    `storage` is one of STORAGES (see the module docstring); with "int4", the weight matrices whose
    names match a glob of `int4_patterns` get 4 bits and the others 8. `read` undoes the storage."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    stored, layout = encode_storage(tensors, storage, int4_patterns)
    header = {"worldsdk": json.dumps(dict(meta))}
    if layout is not None:
        header["storage"] = json.dumps(layout)
    header["sha256"] = _digest(stored, header.get("storage"))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(stored, tmp, metadata=header)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; a world or checkpoint is shared like any file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# ----------------------------------------------------------------------------------------------
# Compact storage: fp16 casts and symmetric absmax int8 / int4 weights
# ----------------------------------------------------------------------------------------------


def quantizable(t: torch.Tensor) -> bool:
    """Weight matrices worth quantizing: float, >= 2 dims, >= QUANTIZE_MIN_ELEMENTS elements."""
    return t.is_floating_point() and t.dim() >= 2 and t.numel() >= QUANTIZE_MIN_ELEMENTS


def quantize(t: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax quantization of a (out, ...) tensor -> (codes, fp16 scales).

    bits=8: int8 codes (out, in) in [-127, 127], scales (out, 1), one per output channel.
    bits=4: codes in [-7, 7] packed two per byte as uint8 (out, groups * INT4_GROUP / 2), scales
    (out, groups), one per INT4_GROUP values of a row (the row is zero-padded to whole groups).
    Each scale is absmax / levels rounded *up* to fp16, so |x| / scale <= levels and no code clips:
    |x - code * scale| <= scale / 2 for every element.
    """
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    levels = 127 if bits == 8 else 7
    rows = t.detach().reshape(t.shape[0], -1).float()  # (out, in)
    if bits == 4:
        pad = -rows.shape[1] % INT4_GROUP
        rows = torch.nn.functional.pad(rows, (0, pad)).reshape(rows.shape[0], -1, INT4_GROUP)  # (out, groups, G)
    else:
        rows = rows[:, None, :]  # (out, 1, in): one group per row
    scale = _fp16_ceil(rows.abs().amax(dim=-1, keepdim=True) / levels)  # (out, groups, 1)
    divisor = torch.where(scale > 0, scale.float(), torch.ones_like(scale, dtype=torch.float32))
    codes = torch.round(rows / divisor).clamp_(-levels, levels).to(torch.int8)
    if bits == 8:
        return codes[:, 0, :], scale[:, :, 0]
    nibbles = (codes.reshape(codes.shape[0], -1) + 8).to(torch.uint8)  # (out, groups * G) in [1, 15]
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4), scale[:, :, 0]


def dequantize(codes: torch.Tensor, scale: torch.Tensor, shape, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of `quantize`: codes and scales -> a tensor of `shape` and `dtype` (the bit width follows
    from the codes' dtype: int8 = 8 bits, uint8 = packed 4 bits)."""
    out = shape[0]
    if codes.dtype == torch.int8:
        values = codes.float() * scale.float()  # (out, in) * (out, 1)
    elif codes.dtype == torch.uint8:
        nibbles = torch.stack([codes & 0x0F, codes >> 4], dim=-1).reshape(out, -1).to(torch.int8) - 8
        values = (nibbles.float().reshape(out, scale.shape[1], -1) * scale.float()[:, :, None]).reshape(out, -1)
    else:
        raise ValueError(f"quantized codes must be int8 or uint8, got {codes.dtype}")
    inner = 1
    for n in shape[1:]:
        inner *= int(n)
    return values[:, :inner].reshape(tuple(shape)).to(dtype)


def _fp16_ceil(x: torch.Tensor) -> torch.Tensor:
    """x (fp32, >= 0) rounded up to the next fp16 value."""
    if float(x.max()) > _FP16_MAX:
        raise ValueError(f"a weight of magnitude {float(x.max()):.3g} is too large for fp16 scales")
    h = x.half()
    below = h.float() < x
    return torch.where(below, torch.nextafter(h, torch.full_like(h, float("inf"))), h)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def encode_storage(tensors: Mapping[str, torch.Tensor], storage: str,
                   int4_patterns: Sequence[str] = INT4_TENSORS) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Tensors as stored under `storage` and the layout that `decode_storage` needs (None for exact)."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    if storage == "exact":
        return dict(tensors), None
    clash = sorted(k for k in tensors if k.endswith(SCALE_SUFFIX))
    if clash:
        raise ValueError(f"tensor names {clash} end with the reserved suffix {SCALE_SUFFIX!r}")
    stored: dict[str, torch.Tensor] = {}
    quantized, cast = {}, {}
    for name, t in tensors.items():
        if storage in ("int8", "int4") and quantizable(t):
            bits = 4 if storage == "int4" and any(fnmatch.fnmatchcase(name, p) for p in int4_patterns) else 8
            stored[name], stored[name + SCALE_SUFFIX] = quantize(t, bits)
            quantized[name] = {"dtype": _dtype_name(t.dtype), "shape": list(t.shape), "bits": bits}
        elif storage == "fp16" and t.is_floating_point() and t.dtype != torch.float16 and _fits_fp16(t):
            stored[name] = t.half()
            cast[name] = _dtype_name(t.dtype)
        else:  # integers, the small float tensors of the quantized storages, values beyond fp16's range
            stored[name] = t
    return stored, {"storage": storage, "quantized": quantized, "cast": cast}


def _fits_fp16(t: torch.Tensor) -> bool:
    return t.numel() == 0 or float(t.detach().abs().max()) <= _FP16_MAX


def decode_storage(stored: Mapping[str, torch.Tensor], layout: Mapping) -> dict[str, torch.Tensor]:
    """Original tensors (dtypes and shapes) from stored ones and their layout."""
    tensors = {k: v for k, v in stored.items() if not k.endswith(SCALE_SUFFIX)}
    for name, entry in layout.get("quantized", {}).items():
        tensors[name] = dequantize(stored[name], stored[name + SCALE_SUFFIX], entry["shape"], _dtype(entry["dtype"]))
    for name, dtype in layout.get("cast", {}).items():
        tensors[name] = stored[name].to(_dtype(dtype))
    return tensors


def storage_of(path: str | os.PathLike) -> dict:
    """The storage layout recorded in a checkpoint's header ({"storage": "exact"} for a plain file)."""
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    return json.loads(header["storage"]) if "storage" in header else {"storage": "exact"}


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
    if header.get("sha256") != _digest(tensors, header.get("storage")):
        raise CheckpointError(f"{path}: tensor data does not match its checksum (the file is corrupt)")
    if "storage" in header:
        try:
            tensors = decode_storage(tensors, json.loads(header["storage"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: corrupt storage layout (quantized tensors cannot be restored): {exc}") from exc
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
