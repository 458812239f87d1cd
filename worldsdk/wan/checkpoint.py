"""Import Wan2.1-family DiT checkpoints (Wan2.1, Self Forcing, Causal Forcing, diffusers) into `CausalDiT`.

Two key layouts exist in the wild:
  wan        the original `WanModel` names (`blocks.0.self_attn.q.weight`, `head.modulation`, ...), which
             `CausalDiT` uses as is. Self Forcing / Causal Forcing `.pt` files wrap it: a dict with
             `generator` and/or `generator_ema` (and `critic`, optimiser state...), keys prefixed with
             `model.` (the `WanDiffusionWrapper`) and, from FSDP, `_fsdp_wrapped_module.`.
  diffusers  `WanTransformer3DModel` (`condition_embedder.time_embedder.linear_1`, `blocks.0.attn1.to_q`,
             `scale_shift_table`, `proj_out`, ...), where the cross-attention norm is called `norm2` and
             the FFN norm `norm3` (the reverse of Wan's).
Files: `.pt` / `.pth` (read with `torch.load(weights_only=True)`, so no code runs), `.safetensors`,
sharded safetensors with an `*.index.json`, or a folder holding one of those (and maybe `config.json`).
Shapes give the ModelConfig except the head count (Wan uses 128-wide heads) and the latent grid.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Mapping

import torch

from worldsdk.checkpoint import CheckpointError, load_state
from worldsdk.config import ModelConfig
from worldsdk.model import CausalDiT

log = logging.getLogger(__name__)

# Training wrappers of the reference code, in the order a plain load picks them (the reference
# inference CLI loads `generator` unless told `--use_ema`).
CONTAINER_KEYS = ("generator", "generator_ema", "model", "state_dict", "module", "net")
# Prefixes a wrapper puts before every key (WanDiffusionWrapper, DDP, torch.compile, ...).
LEADING_PREFIXES = ("model.", "module.", "net.", "diffusion_model.")
# Wrapper names FSDP / activation checkpointing insert anywhere inside a key.
INNER_WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")

WAN_HEAD_DIM = 128  # every released Wan2.1 model (1.3B: 12 x 128, 14B: 40 x 128)

# diffusers name -> Wan name; block-level entries apply after `blocks.N.`.
DIFFUSERS_TOP = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "proj_out": "head.head",
    "scale_shift_table": "head.modulation",
    "patch_embedding": "patch_embedding",
}
DIFFUSERS_BLOCK = {
    "scale_shift_table": "modulation",
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v", "attn1.to_out.0": "self_attn.o",
    "attn1.norm_q": "self_attn.norm_q", "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o",
    "attn2.norm_q": "cross_attn.norm_q", "attn2.norm_k": "cross_attn.norm_k",
    "norm2": "norm3",  # diffusers' norm2 is the cross-attention LayerNorm, Wan's norm3
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}
DIFFUSERS_IGNORED = ("norm_added_q",)  # present in some diffusers exports, unused (diffusers ignores it too)


# ----------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------


def _checkpoint_file(path: Path) -> Path:
    """The weights file of a folder: a safetensors index, one .safetensors, or one .pt/.pth."""
    for pattern in ("*.safetensors.index.json", "*.safetensors", "*.pt", "*.pth"):
        found = sorted(path.glob(pattern))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise CheckpointError(f"{path}: several {pattern} files {[p.name for p in found]}; name the one to load")
    raise CheckpointError(f"{path}: no .safetensors, .safetensors.index.json, .pt or .pth file in this folder")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from exc


def _read_sharded(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise CheckpointError(f"{index}: not a safetensors index (no weight_map): {exc}") from exc
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(f"{index}: shard {shard} is missing")
        state.update(_read_safetensors(shard_path))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(f"{index}: tensors listed in the index but absent from the shards: {missing[:10]}")
    return state


def _torch_load(file: Path):
    """torch.load without running code; memory-mapped when the file allows it (zip format)."""
    try:
        try:
            return torch.load(file, weights_only=True, map_location="cpu", mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(file, weights_only=True, map_location="cpu")  # legacy (non-zip) format
    except Exception as exc:  # unpickling errors, truncated archives, objects other than tensors
        raise CheckpointError(f"{file}: cannot be read with torch.load(weights_only=True): {exc}") from exc


def _unwrap(obj, path: Path, key: str | None) -> dict[str, torch.Tensor]:
    """A training checkpoint dict -> the generator's state dict (`key` or the first CONTAINER_KEYS entry)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    if key is not None:
        if key not in obj:
            raise CheckpointError(f"{path}: no entry {key!r}; top-level entries are {sorted(obj)}")
        return _unwrap(obj[key], path, None)
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    for name in CONTAINER_KEYS:
        if isinstance(obj.get(name), Mapping):
            log.info("%s: loading the %r entry", path, name)
            return _unwrap(obj[name], path, None)
    raise CheckpointError(f"{path}: no state dict found; top-level entries are {sorted(obj)}, expected one of {CONTAINER_KEYS}")


def _strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop FSDP / compile wrapper names anywhere and prefixes that every key shares (`model.`)."""
    out = {}
    for k, v in state.items():
        for inner in INNER_WRAPPERS:
            k = k.replace(inner, "")
        out[k] = v
    stripped = True
    while stripped and out:
        stripped = False
        for prefix in LEADING_PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix):]: v for k, v in out.items()}
                stripped = True
    return out


def read_state_dict(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """Raw tensors of a checkpoint file or folder, unwrapped from training containers, wrapper prefixes removed.

    `key` picks a container entry of a `.pt` file (`generator`, `generator_ema`, ...); by default the
    first of CONTAINER_KEYS that exists.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    file = _checkpoint_file(path) if path.is_dir() else path
    is_pickle = file.suffix in (".pt", ".pth", ".bin", ".ckpt")
    if key is not None and not is_pickle:
        raise CheckpointError(f"{file}: a container key ({key!r}) only applies to .pt/.pth training checkpoints")
    if file.name.endswith(".index.json"):
        state = _read_sharded(file)
    elif file.suffix == ".safetensors":
        state = _read_safetensors(file)
    elif is_pickle:
        state = _unwrap(_torch_load(file), file, key)
    else:
        raise CheckpointError(f"{file}: unknown checkpoint type (expected .pt, .pth, .safetensors or .index.json)")
    return _strip_wrappers(state)


def _folder_config(path: Path) -> dict:
    """config.json beside the weights (Wan's `num_heads` / diffusers' `num_attention_heads`), or {}."""
    folder = path if path.is_dir() else path.parent
    file = folder / "config.json"
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}: invalid JSON: {exc}") from exc


# ----------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------


def detect_layout(state: Mapping[str, torch.Tensor], source: str | Path = "checkpoint") -> str:
    """'wan' or 'diffusers'; raises CheckpointError with sample keys when it is neither."""
    if "time_embedding.0.weight" in state:
        return "wan"
    if "condition_embedder.time_embedder.linear_1.weight" in state:
        return "diffusers"
    raise CheckpointError(
        f"{source}: not a Wan DiT checkpoint (neither time_embedding.0.weight nor "
        f"condition_embedder.time_embedder.linear_1.weight); first keys: {sorted(state)[:8]}"
    )


_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


def diffusers_to_wan(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers WanTransformer3DModel state dict to Wan's names. Unknown keys pass through unchanged
    (so that loading lists them), ignored ones (`norm_added_q`) are dropped."""
    out = {}
    for key, value in state.items():
        if any(part in key for part in DIFFUSERS_IGNORED):
            continue
        out[_diffusers_name(key)] = value
    return out


def _diffusers_name(key: str) -> str:
    if key.startswith("blocks."):
        _, index, rest = key.split(".", 2)
        for old, new in DIFFUSERS_BLOCK.items():
            if rest == old or rest.startswith(old + "."):
                return f"blocks.{index}.{new}{rest[len(old):]}"
        return key
    for old, new in DIFFUSERS_TOP.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    return key


def wan_to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan names -> diffusers names (the inverse of `diffusers_to_wan`, for exports and tests)."""
    top = {v: k for k, v in DIFFUSERS_TOP.items()}
    block = {v: k for k, v in DIFFUSERS_BLOCK.items()}
    out = {}
    for key, value in state.items():
        table, prefix, rest = top, "", key
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            table, prefix = block, f"blocks.{index}."
        for old, new in table.items():
            if rest == old or rest.startswith(old + "."):
                rest = new + rest[len(old):]
                break
        out[prefix + rest] = value
    return out


def to_wan_layout(state: Mapping[str, torch.Tensor], source: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """A state dict in either layout -> Wan's (= CausalDiT's) names."""
    return dict(state) if detect_layout(state, source) == "wan" else diffusers_to_wan(state)


# ----------------------------------------------------------------------------------------------
# Config from shapes
# ----------------------------------------------------------------------------------------------

SHAPE_FIELDS = ("latent_channels", "patch", "dim", "ffn_dim", "num_layers", "freq_dim", "text_dim", "action_dim", "cross_attn_norm")


def infer_model_config(state: Mapping[str, torch.Tensor], base: ModelConfig | None = None, source: str | Path = "checkpoint",
                       **fields) -> ModelConfig:
    """The ModelConfig of a Wan-layout state dict: shapes from the tensors, the rest from `fields` and `base`.

    `fields` may set non-shape fields (latent grid, frames, text_len, num_heads...); a shape field that
    disagrees with the tensors is an error naming both values. `num_heads` defaults to dim / 128.
    """
    base = base or ModelConfig()
    try:
        dim, channels, *patch = state["patch_embedding.weight"].shape
        blocks = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))}
        shapes = {
            "latent_channels": channels, "patch": tuple(patch), "dim": dim,
            "ffn_dim": state["blocks.0.ffn.0.weight"].shape[0],
            "num_layers": max(blocks) + 1 if blocks else 0,
            "freq_dim": state["time_embedding.0.weight"].shape[1],
            "text_dim": state["text_embedding.0.weight"].shape[1],
            "action_dim": state["action_embedding.0.weight"].shape[1] - 1 if "action_embedding.0.weight" in state else 0,
            "cross_attn_norm": "blocks.0.norm3.weight" in state,
        }
    except KeyError as exc:
        raise CheckpointError(f"{source}: cannot infer the model shape, missing key {exc}") from exc
    for name, value in fields.items():
        if name in shapes and (tuple(value) if name == "patch" else value) != shapes[name]:
            raise CheckpointError(f"{source}: config sets {name}={value!r} but the weights have {name}={shapes[name]!r}")
    merged = {**base.to_dict(), **fields, **shapes}
    if "num_heads" not in fields:
        if dim % WAN_HEAD_DIM:
            raise CheckpointError(f"{source}: dim {dim} is not a multiple of {WAN_HEAD_DIM}; give num_heads explicitly")
        merged["num_heads"] = dim // WAN_HEAD_DIM
    try:
        return ModelConfig.from_dict(merged)
    except ValueError as exc:
        raise CheckpointError(f"{source}: inconsistent model config: {exc}") from exc


def _heads_from_folder_config(cfg: Mapping) -> dict:
    """num_heads / text_len / eps from a Wan or diffusers config.json, when present."""
    out = {}
    heads = cfg.get("num_heads", cfg.get("num_attention_heads"))
    if heads is not None:
        out["num_heads"] = int(heads)
    if "text_len" in cfg:
        out["text_len"] = int(cfg["text_len"])
    if "eps" in cfg:
        out["eps"] = float(cfg["eps"])
    return out


# ----------------------------------------------------------------------------------------------
# Loading into CausalDiT
# ----------------------------------------------------------------------------------------------


def load_transformer(path: str | Path, key: str | None = None, base: ModelConfig | None = None, **fields) -> CausalDiT:
    """A CausalDiT with the weights of a Wan-family checkpoint (any layout and wrapper above).

    `base` and `fields` give what shapes cannot (see `infer_model_config`); a config.json beside the
    weights supplies num_heads. Missing, unexpected or misshaped keys raise CheckpointError naming the file.
    """
    path = Path(path)
    state = to_wan_layout(read_state_dict(path, key), path)
    fields = {**_heads_from_folder_config(_folder_config(path)), **fields}
    config = infer_model_config(state, base, path, **fields)
    model = CausalDiT(config)
    load_state(model, state, path, "transformer")  # copies (and casts) into the fp32 parameters
    return model


def save_transformer(model: CausalDiT, path: str | Path, layout: str = "wan") -> Path:
    """Write a CausalDiT as a plain safetensors state dict in Wan's (or diffusers') layout, config in the header."""
    from safetensors.torch import save_file

    if layout not in ("wan", "diffusers"):
        raise ValueError(f"layout must be 'wan' or 'diffusers', got {layout!r}")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if layout == "diffusers":
        state = wan_to_diffusers(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"model_config": json.dumps(model.config.to_dict())})
    return path
