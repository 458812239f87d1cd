"""Training checkpoints: weights, EMA, optimiser moments, RNG states and data position in one file.

Built on `worldsdk.checkpoint` (one safetensors file, JSON metadata in its header, a sha256 over the
tensors, written to a temporary name and moved into place with `os.replace`): a run killed
mid-write leaves either the old file or the new one, a corrupt file is detected, and every read error
names the file. Tensors (module and EMA weights, optimiser moments, RNG states) are stored flat under
dotted prefixes; everything else (step, config, optimiser hyperparameters, sampler position, the
scalar parts of the RNG states) is JSON. Nothing is pickled.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from worldsdk.checkpoint import CheckpointError, atomic_save, read, split_prefix

TRAIN_STATE_FORMAT = "worldsdk-train-state"
TRAIN_STATE_VERSION = 1

__all__ = [
    "CheckpointError", "TrainState", "capture_rng", "flatten_optimizer_state", "load_train_state", "restore_rng",
    "save_train_state", "unflatten_optimizer_state",
]


def _unshared(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached tensors; any that share storage with an earlier one are cloned (safetensors refuses aliases)."""
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach()
        key = (t.untyped_storage().data_ptr(), str(t.device)) if t.numel() else None
        if key in seen:
            t = t.clone()
        elif key is not None:
            seen.add(key)
        out[name] = t
    return out


def with_prefix(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{name}": t for name, t in tensors.items()}


# ----------------------------------------------------------------------------------------------
# Optimiser state: tensors flat, the rest JSON
# ----------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} {value!r} in checkpoint JSON")


def flatten_optimizer_state(state_dict: Mapping) -> tuple[dict[str, torch.Tensor], dict]:
    """`optimizer.state_dict()` -> (tensors named `state.<param>.<key>`, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = _jsonable(value)
    return tensors, {"param_groups": _jsonable(state_dict["param_groups"]), "scalars": scalars}


def unflatten_optimizer_state(tensors: Mapping[str, torch.Tensor], meta: Mapping) -> dict:
    """Inverse of `flatten_optimizer_state`: a dict `optimizer.load_state_dict` accepts."""
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = t
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------------------------
# RNG states of torch, CUDA, numpy and Python
# ----------------------------------------------------------------------------------------------


def capture_rng() -> tuple[dict[str, torch.Tensor], dict]:
    """The process's global RNG states as (tensors, JSON-able scalars)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np_keys.astype(np.int64))
    py_version, py_state, py_gauss = random.getstate()
    tensors["python"] = torch.tensor(py_state, dtype=torch.int64)
    scalars = {
        "numpy": {"kind": np_kind, "pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": py_version, "gauss_next": py_gauss},
    }
    return tensors, scalars


def restore_rng(tensors: Mapping[str, torch.Tensor], scalars: Mapping) -> None:
    """Set the global RNG states captured by `capture_rng`."""
    torch.set_rng_state(tensors["torch"].to(torch.uint8).cpu())
    cuda = sorted((int(k.split(".")[1]), v) for k, v in tensors.items() if k.startswith("cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([v.to(torch.uint8).cpu() for _, v in cuda][: torch.cuda.device_count()])
    n = scalars["numpy"]
    keys = tensors["numpy"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = scalars["python"]
    random.setstate((p["version"], tuple(int(v) for v in tensors["python"].tolist()), p["gauss_next"]))


# ----------------------------------------------------------------------------------------------
# The training state
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped.

    `rng` holds one (tensors, scalars) pair per rank, in rank order; `extra` is JSON-able stage or
    loop state (data sampler position, wall-clock time trained so far).
    """

    step: int
    config: dict
    modules: dict[str, dict[str, torch.Tensor]]
    ema: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    optimizers: dict[str, dict] = field(default_factory=dict)
    rng: list[tuple[dict[str, torch.Tensor], dict]] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def save_train_state(path: str | Path, state: TrainState) -> Path:
    """Write `state` to one safetensors file, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    for name, sd in state.modules.items():
        tensors.update(with_prefix(f"module.{name}", sd))
    for name, sd in state.ema.items():
        tensors.update(with_prefix(f"ema.{name}", sd))
    optim_meta = {}
    for name, sd in state.optimizers.items():
        flat, optim_meta[name] = flatten_optimizer_state(sd)
        tensors.update(with_prefix(f"optim.{name}", flat))
    rng_meta = []
    for rank, (rng_tensors, rng_scalars) in enumerate(state.rng):
        tensors.update(with_prefix(f"rng.{rank}", rng_tensors))
        rng_meta.append(rng_scalars)
    meta = {
        "format": TRAIN_STATE_FORMAT,
        "version": TRAIN_STATE_VERSION,
        "step": state.step,
        "config": state.config,
        "modules": sorted(state.modules),
        "ema": sorted(state.ema),
        "optimizers": optim_meta,
        "rng": rng_meta,
        "extra": _jsonable(state.extra),
    }
    return atomic_save(_unshared(tensors), meta, path)


def load_train_state(path: str | Path, device: str | torch.device = "cpu") -> TrainState:
    """Read a file written by `save_train_state`; raises `CheckpointError` naming the file."""
    path = Path(path)
    tensors, meta = read(path, expected_format=TRAIN_STATE_FORMAT)
    if int(meta.get("version", -1)) > TRAIN_STATE_VERSION:
        raise CheckpointError(f"{path}: training-state version {meta['version']} is newer than this code")
    try:
        modules = {n: {k: t.to(device) for k, t in split_prefix(tensors, f"module.{n}").items()} for n in meta["modules"]}
        ema = {n: {k: t.to(device) for k, t in split_prefix(tensors, f"ema.{n}").items()} for n in meta["ema"]}
        optimizers = {
            name: unflatten_optimizer_state(split_prefix(tensors, f"optim.{name}"), m) for name, m in meta["optimizers"].items()
        }
        rng = [(split_prefix(tensors, f"rng.{rank}"), scalars) for rank, scalars in enumerate(meta["rng"])]
        return TrainState(
            step=int(meta["step"]), config=meta["config"], modules=modules, ema=ema, optimizers=optimizers, rng=rng,
            extra=meta["extra"],
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: incomplete training checkpoint ({type(err).__name__}: {err})") from err
