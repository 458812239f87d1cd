"""stage=ode: ODE initialisation of the few-step causal student (Causal Forcing stage 2a).

First the teacher's PF-ODE trajectories are generated once and stored (48 Euler steps with CFG; the
states at the student's 4 timesteps and the endpoint): with teacher_kind=causal, chunk by chunk
against the ground-truth clean history (the paper's causal ODE); with teacher_kind=bidirectional,
over whole clips (Self Forcing / CausVid's initialisation). Then the student, initialised from the
teacher, regresses its x0 at a stored state onto the endpoint: with the clean ground-truth context
(causal) or with the noisy states as context (bidirectional pairs, as Self Forcing trains it).
Generation resumes where it stopped: each shard is written atomically and skipped when present.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
from safetensors import safe_open
from torch.utils.data import Dataset
from tqdm import tqdm

from .. import distributed
from ..objectives import Conditioning, bidirectional_ode_pairs, causal_ode_pairs, ode_regression_loss
from ..stage import ModelChoice, OptimizerConfig, RunContext, Stage, Update
from . import worlds
from worldsdk import checkpoint
from worldsdk.data.datasets import collate_clips

log = logging.getLogger(__name__)

TEACHER_KINDS = ("causal", "bidirectional")


@dataclass(frozen=True)
class OdeStageConfig:
    """The `stage:` section for stage=ode (mirrored by conf/stage/ode.yaml)."""

    name: str = "ode"
    teacher: str = ""  # world file of the teacher (stage=teacher's world.safetensors)
    teacher_kind: str = "causal"  # causal (Causal Forcing) | bidirectional (Self Forcing's ODE init)
    latents: str = ""  # latent cache: ground-truth clips, prompts and actions
    pairs: str = ""  # where the trajectories go; default <run_dir>/ode_pairs
    num_clips: int = 256  # clips of trajectories to generate
    generate_batch: int = 8
    ode_steps: int = 48
    guidance: float = 6.0  # the paper's default CFG for trajectory generation
    context_noise: float = 0.0  # causal: corrupt the clean history with noise up to this level (GameNGen)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(
        lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01, grad_clip=1.0, warmup_steps=50, decay="constant"))
    ema_decay: float = 0.99


class PairDataset(Dataset):
    """Stored ODE pairs: item i = one clip's states (S, C, F, h, w), endpoint, clean latents, actions, prompt."""

    def __init__(self, folder: Path):
        self.files = sorted(folder.glob("pairs_*.safetensors"))
        self.index = []
        for path in self.files:
            with safe_open(str(path), framework="pt") as f:
                n = f.get_slice("endpoint").get_shape()[0]
            self.index += [(path, i) for i in range(n)]
        if not self.index:
            raise ValueError(f"no ODE pairs in {folder}")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        path, row = self.index[i]
        tensors, meta = checkpoint.read(path, expected_format="worldsdk-ode-pairs")
        item = {k: v[row] for k, v in tensors.items()}
        item["prompt"] = meta["prompts"][row]
        return item


class OdeStage(Stage):
    name = "ode"
    config_class = OdeStageConfig

    def __init__(self, config: OdeStageConfig, model: ModelChoice, ctx: RunContext):
        if config.teacher_kind not in TEACHER_KINDS:
            raise ValueError(f"stage.teacher_kind must be one of {TEACHER_KINDS}, got {config.teacher_kind!r}")
        if config.context_noise < 0 or (config.context_noise and config.teacher_kind != "causal"):
            raise ValueError(f"stage.context_noise must be >= 0, and > 0 only with teacher_kind=causal (the clean "
                             f"history it corrupts); got {config.context_noise} with teacher_kind={config.teacher_kind}")
        self.config, self.ctx = config, ctx
        teacher_world = worlds.load_world(config.teacher, "a teacher (stage.teacher=.../world.safetensors)")
        self.spec, self.autoencoder, self.text_encoder = teacher_world.spec, teacher_world.autoencoder, teacher_world.text_encoder
        self.text_encoder.to(ctx.device).eval().requires_grad_(False)  # the student keeps the teacher's text encoder
        self.student = teacher_world.model.to(ctx.device).train()  # initialised from the teacher (paper, App. C.3)
        self.pairs_dir = Path(config.pairs) if config.pairs else ctx.run_dir / "ode_pairs"
        self.sigmas = self.spec.schedule.student_sigmas()
        if ctx.is_main:
            self._generate(worlds.frozen_copy(teacher_world.model), config)
        distributed.barrier()
        self.pairs = PairDataset(self.pairs_dir)

    # -- trajectories ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _generate(self, teacher: nn.Module, config: OdeStageConfig) -> None:
        teacher.to(self.ctx.device).eval()
        data = worlds.open_latent_clips(config.latents, teacher.config.latent_frames_max)
        self.pairs_dir.mkdir(parents=True, exist_ok=True)
        generate = causal_ode_pairs if config.teacher_kind == "causal" else bidirectional_ode_pairs
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[: config.num_clips].tolist()
        shards = [order[i : i + config.generate_batch] for i in range(0, len(order), config.generate_batch)]
        todo = [(k, s) for k, s in enumerate(shards) if not (self.pairs_dir / f"pairs_{k:05d}.safetensors").exists()]
        if not todo:
            return
        rng_state = torch.get_rng_state()
        for k, indices in tqdm(todo, desc=f"ODE pairs ({config.teacher_kind} teacher)", unit="shard"):
            torch.manual_seed(1000 + k)  # each shard's noise is a function of its index: resumable, reproducible
            batch = collate_clips([data[i] for i in indices])
            x0, cond = worlds.clip_batch(batch, self.text_encoder, self.ctx.device)
            with self.ctx.autocast():
                states, endpoint = generate(teacher, x0, cond, self.spec.schedule, config.ode_steps, config.guidance)
            tensors = {"states": states.float(), "endpoint": endpoint.float(), "clean": x0.float(), "actions": cond.actions.float()}
            meta = {"format": "worldsdk-ode-pairs", "prompts": list(batch["prompt"]), "teacher_kind": config.teacher_kind,
                    "ode_steps": config.ode_steps, "guidance": config.guidance, "teacher": config.teacher}
            checkpoint.atomic_save(tensors, meta, self.pairs_dir / f"pairs_{k:05d}.safetensors")
        torch.set_rng_state(rng_state)
        (self.pairs_dir / "pairs.json").write_text(json.dumps({"clips": len(order), "config": asdict(config)}, indent=2))

    # -- the Stage protocol ----------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def updates(self) -> list[Update]:
        return [Update("ode", self.loss, modules=("student",), optimizer=self.config.optimizer)]

    def dataset(self) -> Dataset:
        return self.pairs

    def ema_decays(self) -> dict[str, float]:
        return {"student": self.config.ema_decay} if self.config.ema_decay > 0 else {}

    def loss(self, batch, step: int):
        device = self.ctx.device
        cond = Conditioning(self.text_encoder.encode(list(batch["prompt"])), batch["actions"].to(device))
        return ode_regression_loss(self.student, batch["states"].to(device), batch["endpoint"].to(device),
                                   batch["clean"].to(device), cond, self.sigmas, causal=self.config.teacher_kind == "causal",
                                   context_noise=self.config.context_noise)

    def collate(self, items: list):
        out = {k: torch.stack([it[k] for it in items]) for k in ("states", "endpoint", "clean", "actions")}
        out["prompt"] = [it["prompt"] for it in items]
        return out

    def sample(self, step: int, weights: Mapping[str, nn.Module], out_dir: Path) -> None:
        data = worlds.open_latent_clips(self.config.latents, weights["student"].config.latent_frames_max, split="val")
        worlds.sample_rollouts(out_dir / f"rollout_{step:06d}.mp4", weights["student"], self.text_encoder,
                               self.autoencoder, self.spec, data, self.ctx.device)

    def finish(self, step: int, weights: Mapping[str, nn.Module]) -> dict[str, float]:
        worlds.save_world(self.ctx, weights["student"], self.text_encoder, self.autoencoder, self.spec,
                          {"stage": "ode", "teacher_kind": self.config.teacher_kind, "step": step, "config": asdict(self.config)})
        return {}

