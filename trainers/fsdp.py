"""FSDP2 for the shared loop (`loop.strategy=fsdp`): weights, gradients, optimiser state and EMA sharded.

At the paper's scale a DMD run holds three 1.4 B-parameter DiTs (generator, critic, frozen real
score) plus the generator's EMA and two AdamW states: 57 GB in fp32 before activations, more than
an 80 GB GPU holds with them; Self Forcing and Causal Forcing train it with FSDP. Here every
module the stage checkpoints (and every frozen helper it names in `Stage.frozen_modules`) goes
through `torch.distributed.fsdp.fully_shard`:

- a `CausalDiT` is sharded per transformer block (each block is one unit: its weights are
  all-gathered just before it runs and freed after), with each block's cross-attention a unit of
  its own, because the model computes every block's text K/V ahead of the blocks
  (`CausalDiT.embed_text` calls `cross_attn.text_kv` outside the block's forward); the embeddings
  and head form the root unit. Other modules (text encoder, autoencoder, reward model: small) are
  one unit each;
- mixed precision follows `loop.precision`: with bf16, weights are gathered and computed in bf16 and
  gradients reduced in fp32, while the sharded master weights, optimiser moments and EMA stay fp32.
  Inputs are not cast (`cast_forward_inputs=False`): the timesteps (up to 1000) and RoPE angles
  must stay fp32, and the loop's autocast casts the rest as it does without FSDP;
- activation checkpointing (`loop.activation_checkpointing`) wraps each block of the trained DiTs,
  so only block inputs are kept for the backward pass;
- the EMA copy is sharded like its module and updated shard by shard;
- the stage calls its DiTs through methods other than `forward` (`forward_teacher_forcing`,
  `denoise_chunk`, ...): they are registered as FSDP forward methods, so the root unit gathers its
  weights for them; nested calls (`forward_causal` -> `embed_text`) run inside the outer gather.

Hooks (samples, evaluation, checkpoint preparation) run on rank 0 only, which a sharded module
cannot do (every rank must take part in its all-gathers): the loop gathers whole copies of the
modules the hooks get (`full_copies`, a collective), and the hooks run on those. A stage's hooks must
therefore use the `weights` they are given, not their own references to trained modules.

Checkpoints are `torch.distributed.checkpoint` folders of safetensors shards
(`worldsdk.train_checkpoint.save_sharded_train_state`), loadable on any number of ranks.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any, Mapping

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from .ema import EMA
from worldsdk.model import CausalDiT

log = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")

# The CausalDiT methods stages call from outside: the training and streaming entry points.
CAUSAL_DIT_ENTRY_POINTS = (
    "forward_bidirectional", "forward_causal", "forward_teacher_forcing", "denoise_chunk", "commit_chunk", "set_prompt",
    "embed_text", "predict_chunk",
)


def mixed_precision(compute_dtype: torch.dtype | None) -> MixedPrecisionPolicy:
    """bf16 gathers and compute with fp32 gradient reduction, or fp32 throughout (compute_dtype None)."""
    if compute_dtype is None:
        return MixedPrecisionPolicy(cast_forward_inputs=False)
    return MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)


def _register_entry_points(module: nn.Module, names: tuple[str, ...]) -> None:
    """Make `names` FSDP forward methods of `module`, gathering only at the outermost call.

    FSDP reshards a unit's weights when its forward returns; a registered method called from inside
    another (`forward_causal` -> `embed_text`) would reshard them under the outer one's feet, so
    nested calls go straight to the plain method.
    """
    depth = [0]
    for name in names:
        register_fsdp_forward_method(module, name)
        gathered = getattr(module, name)
        plain = getattr(type(module), name).__get__(module)

        def entry(*args, _gathered=gathered, _plain=plain, **kwargs):
            if depth[0]:
                return _plain(*args, **kwargs)
            depth[0] += 1
            try:
                return _gathered(*args, **kwargs)
            finally:
                depth[0] -= 1

        setattr(module, name, entry)


def _silence_view_warnings() -> None:
    """FSDP warns when a unit returns a view, since an in-place op on it would skip the backward
    all-gather. The DiT's blocks return their K/V and `text_kv` its text K/V as views (`unflatten`);
    no caller changes them in place (the KV cache copies them into its own storage), so the warning
    is noise. (Set when sharding, not at import: a caller's `catch_warnings` would drop it.)"""
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \((FSDPBlock|FSDPCrossAttention|FSDPCheckpointWrapper)\) "
                            r"returned a view tensor")


def _fully_shard(module: nn.Module, mesh, policy: MixedPrecisionPolicy) -> None:
    # reshard_after_forward given explicitly: left to its default, FSDP keeps the root unit gathered
    # from a forward until the backward that should follow. Stages run many forwards that no backward
    # follows (rollouts without gradients, frozen modules, a critic under no_grad), after which the
    # root would stay whole, and the module would show the optimiser and EMA unsharded parameters.
    fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=True)


def shard_module(module: nn.Module, mesh, policy: MixedPrecisionPolicy, activation_checkpointing: bool = False) -> None:
    """Apply FSDP2 to `module` in place (see the module docstring for the units)."""
    if not isinstance(module, CausalDiT):
        _fully_shard(module, mesh, policy)
        return
    for i, block in enumerate(module.blocks):
        _fully_shard(block.cross_attn, mesh, policy)
        register_fsdp_forward_method(block.cross_attn, "text_kv")
        if activation_checkpointing:
            block = checkpoint_wrapper(block)  # keeps the state-dict names (the wrapper strips its prefix)
            module.blocks[i] = block
        _fully_shard(block, mesh, policy)
    _fully_shard(module, mesh, policy)
    _register_entry_points(module, CAUSAL_DIT_ENTRY_POINTS)


class _Template:
    """A module's structure on the meta device (no memory) and its non-persistent buffers (RoPE
    tables: not in a state dict), from which rank 0 builds whole copies for the hooks."""

    def __init__(self, module: nn.Module):
        memo: dict[int, Any] = {}
        for p in module.parameters():
            memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for b in module.buffers():
            memo[id(b)] = torch.empty_like(b, device="meta")
        self.module = copy.deepcopy(module, memo)  # structure and config copied, tensors replaced by meta ones
        persistent = set(module.state_dict())
        self.buffers = {n: b.detach().to("cpu", copy=True) for n, b in module.named_buffers() if n not in persistent}

    def build(self, state: Mapping[str, torch.Tensor], device: torch.device) -> nn.Module:
        module = copy.deepcopy(self.module).to_empty(device=device)
        for name, value in self.buffers.items():
            module.get_buffer(name).copy_(value)
        module.load_state_dict(state)
        return module.eval().requires_grad_(False)


class ShardedModules:
    """The loop's modules under FSDP2: shards them, gathers whole copies for hooks, and saves and
    loads their sharded checkpoint state (weights, EMA, optimiser moments)."""

    def __init__(self, device: torch.device, compute_dtype: torch.dtype | None, activation_checkpointing: bool = False):
        if not dist.is_initialized():
            raise RuntimeError("FSDP needs a process group; trainers.distributed.setup(group_of_one=True) makes one")
        self.device = device
        self.mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        self.policy = mixed_precision(compute_dtype)
        self.activation_checkpointing = activation_checkpointing
        self.is_main = dist.get_rank() == 0
        _silence_view_warnings()
        self.templates: dict[str, _Template] = {}
        self.modules = nn.ModuleDict()  # containers: state-dict names are <module>.<parameter>
        self.ema = nn.ModuleDict()

    def shard(self, modules: Mapping[str, nn.Module], ema: Mapping[str, EMA], frozen: Mapping[str, nn.Module],
              trained: set[str]) -> None:
        """Shard the stage's modules, their EMA copies (made beforehand from the unsharded weights)
        and its frozen helpers. Activation checkpointing goes to the `trained` modules only."""
        for name, module in modules.items():
            if self.is_main:
                self.templates[name] = _Template(module)
            shard_module(module, self.mesh, self.policy, self.activation_checkpointing and name in trained)
            self.modules[name] = module
        for name, e in ema.items():
            shard_module(e.module, self.mesh, self.policy)
            self.ema[name] = e.module
        for module in frozen.values():
            shard_module(module, self.mesh, self.policy)
        if self.is_main:
            count = sum(p.numel() for m in list(modules.values()) + list(frozen.values()) for p in m.parameters())
            log.info("FSDP: %d module(s), %d frozen, %.1f M parameters over %d rank(s)%s", len(modules), len(frozen),
                     count / 1e6, dist.get_world_size(), ", activation checkpointing" if self.activation_checkpointing else "")

    # -- whole copies for rank-0 hooks -----------------------------------------------------------------
    def full_copies(self, sources: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
        """Whole, unsharded copies of `sources` (name -> a sharded module or EMA copy) on rank 0;
        an empty dict on the other ranks. A collective: every rank calls it with the same names."""
        out = {}
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered into rank 0's CPU memory
        for name, module in sources.items():
            state = get_model_state_dict(module, options=options)
            if self.is_main:
                out[name] = self.templates[name].build(state, self.device)
        return out

    @staticmethod
    @torch.no_grad()
    def copy_buffers(copies: Mapping[str, nn.Module], sources: Mapping[str, nn.Module]) -> None:
        """Copy the buffers a hook set on the whole copies back into the sharded modules (rank 0;
        the loop then broadcasts them). Buffers are never sharded."""
        for name, whole in copies.items():
            for target, value in zip(sources[name].buffers(), whole.buffers()):
                target.copy_(value)

    # -- sharded checkpoints ----------------------------------------------------------------------------
    def checkpoint_tensors(self, optimizers: Mapping[str, torch.optim.Optimizer]) -> tuple[dict, dict[str, list]]:
        """(the nested dict of this rank's shards to save or load into, each optimiser's param groups).

        Optimiser states are keyed by parameter name (`<module>.<parameter>`), not by position, so
        they load whatever the sharding. The param groups (hyperparameters) are plain JSON."""
        shards: dict[str, Any] = {"module": get_model_state_dict(self.modules)}
        if len(self.ema):
            shards["ema"] = get_model_state_dict(self.ema)
        groups = {}
        shards["optim"] = {}
        for name, optimizer in optimizers.items():
            state = get_optimizer_state_dict(self.modules, optimizer)
            shards["optim"][name] = state["state"]
            groups[name] = state["param_groups"]
        return shards, groups

    def load_checkpoint_tensors(self, shards: Mapping, optimizers: Mapping[str, torch.optim.Optimizer],
                                groups: Mapping[str, list]) -> None:
        """Install shards filled by `load_sharded_tensors` into the modules, EMA copies and optimisers."""
        set_model_state_dict(self.modules, shards["module"])
        if len(self.ema):
            set_model_state_dict(self.ema, shards["ema"])
        for name, optimizer in optimizers.items():
            set_optimizer_state_dict(self.modules, optimizer, {"state": shards["optim"][name], "param_groups": groups[name]})
