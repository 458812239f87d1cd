"""Process-group set-up for `torchrun` and the few collectives the loop needs.

Works unchanged without torchrun (one process, no process group). Under torchrun the backend is
NCCL when the process has a GPU and gloo otherwise. With `loop.strategy=ddp`, gradients are averaged
by the loop itself, one flat all-reduce per update and bucket, instead of wrapping modules in
DistributedDataParallel: a stage then calls its modules directly, and an update may freeze the
modules it does not train (DMD's generator update runs through the critic) without DDP's
unused-parameter bookkeeping. With `loop.strategy=fsdp` (trainers/fsdp.py) FSDP2 reduce-scatters
them during the backward pass instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.tensor import DTensor

log = logging.getLogger(__name__)

BUCKET_ELEMENTS = 64 * 1024 * 1024  # 256 MB of fp32 per all-reduce


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # this call made the process group (and so tears it down)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto", group_of_one: bool = False) -> DistInfo:
    """Join the torchrun process group if launched by torchrun; pick this process's device.

    `group_of_one`: without torchrun, make a one-process group anyway (FSDP shards over a device
    mesh, and a mesh needs a process group even when it has a single rank). A group that already
    exists (made by the caller) is used as it is and left to the caller.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    owns_group = False
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    elif world_size > 1:
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
        owns_group = True
        log.info("rank %d/%d joined the %s process group on %s", rank, world_size, backend, dev)
    elif group_of_one:
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
        owns_group = True
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, owns_group=owns_group)


def teardown(info: DistInfo | None = None, wait: bool = True) -> None:
    """Leave the process group if `info` says this process made it (a caller's group stays up);
    `wait=False` after an error, when other ranks may never arrive."""
    if not dist.is_initialized():
        return
    if wait:
        dist.barrier()
    if info is None or info.owns_group:
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s value of a small picklable object, on every rank (in-memory only, never a file)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list:
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_int(value: int, src: int = 0) -> int:
    """Rank `src`'s integer, on every rank (a tensor broadcast: cheap enough to call every step)."""
    if not dist.is_initialized():
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    box = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(box, src=src)
    return int(box.item())


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers of rank `src` to every rank."""
    if not dist.is_initialized():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy the buffers (not the parameters) of rank `src` to every rank."""
    if not dist.is_initialized():
        return
    with torch.no_grad():
        for t in module.buffers():
            dist.broadcast(t.data, src=src)


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Mean of each parameter's gradient over ranks, in flat buckets.

    A parameter whose gradient is None on some ranks but not others gets a zero gradient everywhere
    first, so that every rank sends buffers of the same layout.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    dist.all_reduce(has_grad, op=dist.ReduceOp.MAX)
    grads = []
    for p, flag in zip(params, has_grad.tolist()):
        if flag and p.grad is None:
            p.grad = torch.zeros_like(p)
        if flag:
            grads.append(p.grad)
    world = dist.get_world_size()
    for bucket in _buckets(grads):
        flat = _flatten_dense_tensors(bucket)
        dist.all_reduce(flat)
        flat /= world
        for g, synced in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
            g.copy_(synced)


def _buckets(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    buckets, current, size = [], [], 0
    for t in tensors:
        if current and (size + t.numel() > BUCKET_ELEMENTS or t.dtype != current[0].dtype or t.device != current[0].device):
            buckets.append(current)
            current, size = [], 0
        current.append(t)
        size += t.numel()
    if current:
        buckets.append(current)
    return buckets


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a float tensor (returned; the input is not modified)."""
    if not dist.is_initialized():
        return values
    out = values.clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a sharded DTensor (a collective: every rank calls it); others as they are."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def fingerprint(modules: dict[str, torch.nn.Module]) -> list[float]:
    """A few numbers per module that differ when any replica's weights differ (sum and weighted sum).

    Sharded (FSDP) parameters are gathered first, so every rank reports the whole model's numbers.
    """
    out = []
    with torch.no_grad():
        for name in sorted(modules):
            params = [full_tensor(p.detach()).double().flatten() for p in modules[name].parameters()]
            flat = torch.cat(params or [torch.zeros(1, dtype=torch.float64)])
            ramp = torch.linspace(0.5, 1.5, flat.numel(), dtype=torch.float64, device=flat.device)
            out += [flat.sum().item(), (flat * ramp).sum().item()]
    return out
