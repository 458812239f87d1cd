"""Training checkpoints: weights, EMA, optimiser moments, RNG states and data position in one file.

Built on `worldsdk.checkpoint` (one safetensors file, JSON metadata in its header, a sha256 over the
tensors, written to a temporary name and moved into place with `os.replace`): a run killed
mid-write leaves either the old file or the new one, a corrupt file is detected, and every read error
names the file. Tensors (module and EMA weights, optimiser moments, RNG states) are stored flat under
dotted prefixes; everything else (step, config, optimiser hyperparameters, sampler position, the
scalar parts of the RNG states) is JSON. Nothing is pickled.

Sharded checkpoints (FSDP, `loop.strategy=fsdp`) are a folder instead of a file:

    step_00000500/train_state.safetensors   rank 0: step, config, optimiser hyperparameters, the RNG
                                            states of every rank, data position (the layout above,
                                            without weights), and the size of every shard file
    step_00000500/shards/shard-0000R-model-00001-of-00001.safetensors   rank R-1's shards

The shards are written by `torch.distributed.checkpoint` through its safetensors storage
(`HuggingFaceStorageWriter`): each file holds one rank's pieces of the weights, EMA and optimiser
moments, with each piece's offset in the whole tensor in the file's JSON header. Reading goes
through the same safetensors headers, so a checkpoint can be loaded on a different number of ranks
(DCP cuts the pieces each rank needs from whichever files hold them), or consolidated into whole
tensors in one process (`read_sharded_tensors`). DCP's default storage pickles its metadata and
unpickles non-tensor entries with `torch.load(weights_only=False)`; the safetensors storage reads no
pickle, which is why it is used here and why only tensors go into the shards. The folder is written
as `step_00000500.tmp` and renamed once every rank has finished, so a kill mid-write leaves the
previous checkpoint the newest one.
"""

from __future__ import annotations

import os
import random
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from worldsdk.checkpoint import CheckpointError, atomic_save, read, split_prefix

TRAIN_STATE_FORMAT = "worldsdk-train-state"
TRAIN_STATE_VERSION = 1

__all__ = [
    "CheckpointError", "TrainState", "capture_rng", "flatten_optimizer_state", "load_sharded_tensors", "load_train_state",
    "read_sharded_tensors", "restore_rng", "save_sharded_train_state", "save_train_state", "unflatten_optimizer_state",
]

SHARDED_STATE_FILE = "train_state.safetensors"
SHARDS_DIR = "shards"


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


# ----------------------------------------------------------------------------------------------
# Sharded training state (FSDP): a folder of per-rank safetensors shards plus rank 0's state file
# ----------------------------------------------------------------------------------------------


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def _is_main() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def save_sharded_train_state(path: str | Path, state: TrainState, shards: Mapping[str, Any]) -> Path:
    """Write a sharded checkpoint folder at `path`; every rank calls this (it is a collective).

    `shards` is a nested dict of tensors (DTensors for sharded ones; plain tensors are taken as the
    same on every rank and written once); `state` is what rank 0 writes beside them, as in
    `save_train_state` but without weights (other ranks' `state` is ignored).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if _is_main():
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while writing
        (tmp / SHARDS_DIR).mkdir(parents=True)
    _barrier()
    dcp.save(dict(shards), storage_writer=HuggingFaceStorageWriter(str(tmp / SHARDS_DIR), save_distributed=True))
    _barrier()  # every rank's shard file is complete
    if _is_main():
        files = {f.name: f.stat().st_size for f in sorted((tmp / SHARDS_DIR).iterdir())}
        state.extra = {**state.extra, "shard_files": files}
        save_train_state(tmp / SHARDED_STATE_FILE, state)
        if path.exists():  # rewriting a step (never in a normal run): move the old folder aside first
            old = path.with_name(path.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    _barrier()
    return path


def _check_shard_files(path: Path, state: TrainState) -> None:
    expected = state.extra.get("shard_files")
    if not isinstance(expected, dict) or not expected:
        raise CheckpointError(f"{path}: no shard list in {SHARDED_STATE_FILE}")
    for name, size in expected.items():
        f = path / SHARDS_DIR / name
        if not f.is_file():
            raise CheckpointError(f"{path}: shard file {name} is missing")
        if f.stat().st_size != size:
            raise CheckpointError(f"{path}: shard file {name} has {f.stat().st_size} bytes, {size} were written")


def load_sharded_train_state(path: str | Path) -> TrainState:
    """Rank 0's state file of a sharded checkpoint folder (no weights), after checking its shard files."""
    path = Path(path)
    if not (path / SHARDED_STATE_FILE).is_file():
        raise CheckpointError(f"{path}: not a sharded training checkpoint (no {SHARDED_STATE_FILE})")
    state = load_train_state(path / SHARDED_STATE_FILE)
    _check_shard_files(path, state)
    return state


def load_sharded_tensors(path: str | Path, into: Mapping[str, Any]) -> None:
    """Fill the nested dict of (D)tensors `into` from a sharded checkpoint folder, in place.

    Every rank calls it with its own shards' tensors; the number of ranks may differ from the run
    that wrote the folder. A name in `into` that the checkpoint lacks raises `CheckpointError`.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    path = Path(path)
    try:
        dcp.load(dict(into), storage_reader=HuggingFaceStorageReader(str(path / SHARDS_DIR)))
    except (RuntimeError, ValueError, KeyError) as err:  # DCP wraps per-rank failures in a CheckpointException (a RuntimeError)
        raise CheckpointError(f"{path}: the sharded checkpoint does not match this run's modules or optimisers: {err}") from err


def read_sharded_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a sharded checkpoint folder, whole, on the CPU of this one process.

    Names are the flattened ones (`module.<module>.<parameter>`, `ema.<module>.<parameter>`,
    `optim.<update>.<parameter>.<exp_avg|exp_avg_sq|step>`). For inspection, conversion and tests:
    it holds the whole model in memory.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    path = Path(path)
    load_sharded_train_state(path)  # checks the shard files
    reader = HuggingFaceStorageReader(str(path / SHARDS_DIR))
    metadata = reader.read_metadata()
    tensors = {name: torch.empty(tuple(m.size), dtype=m.properties.dtype) for name, m in metadata.state_dict_metadata.items()}
    with warnings.catch_warnings():  # DCP warns that it loads without a process group, which is the intent here
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(path / SHARDS_DIR)), no_dist=True)
    return tensors
