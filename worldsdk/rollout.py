"""The rollout: how one chunk is generated against a KV cache, written once.

A `Sampler` turns a world's `Schedule` into the passes of one chunk: `FewStepSampler` is the distilled
student's (predict x0, re-noise to the next sigma with fresh noise; Self Forcing / Causal Forcing
inference), `EulerSampler` integrates the PF-ODE from sigma 1 to 0 with classifier-free guidance (the
teachers' sampler, and their ODE pairs). `stream_chunk` runs a sampler for one chunk of every batch
item against the cache and then commits the clean chunk at t = 0 (Causal Forcing, inference):

    x0 = stream_chunk(model, cache, actions, sampler, noise)

Every chunk-streaming loop calls it: `World.step_features`, the self-rollout and the causal ODE
pairs of the trainers (`trainers.objectives`), the guided Euler sessions of evaluation (through the
World) and the context probe (`World.denoise_state`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from worldsdk import diffusion as D
from worldsdk.model.cache import KVCache

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, sigma) -> v


@dataclass(frozen=True)
class FewStepSampler:
    """The few-step student's sampler: at each sigma predict x0, then re-noise it to the next sigma."""

    sigmas: tuple[float, ...]
    guidance: float = 1.0

    @classmethod
    def from_schedule(cls, schedule: D.Schedule) -> "FewStepSampler":
        """The world's own sampler: its schedule's student sigmas (`Schedule.student_sigmas`)."""
        return cls(tuple(float(s) for s in schedule.student_sigmas()))

    def __post_init__(self):
        if not self.sigmas:
            raise ValueError("a few-step sampler needs at least one sigma")

    @property
    def passes(self) -> int:
        """Denoising passes per chunk (per guidance branch)."""
        return len(self.sigmas)

    def truncated(self, exit_index: int) -> "FewStepSampler":
        """The sampler stopped at `exit_index` (its x0 at that step is the chunk): DMD's random exit step."""
        if not 0 <= exit_index < len(self.sigmas):
            raise ValueError(f"exit index must be in [0, {len(self.sigmas)}), got {exit_index}")
        return FewStepSampler(self.sigmas[: exit_index + 1], self.guidance)

    def sample(self, velocity: Velocity, x: torch.Tensor, noise: Callable[[], torch.Tensor],
               callback: Callable[[dict], None] | None = None, grad_last_only: bool = False) -> torch.Tensor:
        """x0 after the last sigma. `grad_last_only`: every pass but the last runs without gradients
        (Self Forcing: only the exit step's forward is back-propagated)."""
        sigmas = torch.tensor(self.sigmas, dtype=torch.float32, device=x.device)

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return D.x0_from_velocity(x, velocity(x, sigma).float(), sigma)  # latents stay fp32 whatever the model's

        if not grad_last_only or len(sigmas) == 1:
            return D.sample_few_step(denoise, x, sigmas, noise, callback)
        with torch.no_grad():
            x0 = D.sample_few_step(denoise, x, sigmas[:-1], noise, callback)
            x = D.add_noise(x0, noise(), sigmas[-1])
        x0 = denoise(x, sigmas[-1])
        if callback is not None:
            callback({"i": len(sigmas) - 1, "sigma": sigmas[-1], "x": x, "x0": x0})
        return x0


@dataclass(frozen=True)
class EulerSampler:
    """Euler integration of the PF-ODE over `steps` shifted sigmas from 1 to 0, guided by `guidance`."""

    sigmas: tuple[float, ...]
    guidance: float = 1.0

    @classmethod
    def from_schedule(cls, schedule: D.Schedule, steps: int = 48, guidance: float = 6.0) -> "EulerSampler":
        """The teachers' sampler on the world's schedule (`Schedule.euler_sigmas`)."""
        return cls(tuple(float(s) for s in schedule.euler_sigmas(steps)), guidance)

    def __post_init__(self):
        if len(self.sigmas) < 2:
            raise ValueError("an Euler sampler needs at least two sigmas (one step)")

    @property
    def passes(self) -> int:
        return len(self.sigmas) - 1

    def sample(self, velocity: Velocity, x: torch.Tensor, noise: Callable[[], torch.Tensor],
               callback: Callable[[dict], None] | None = None, grad_last_only: bool = False) -> torch.Tensor:
        """x at the last sigma (0: the clean chunk). `noise` is unused: the ODE is deterministic."""
        if grad_last_only:
            raise ValueError("grad_last_only is a few-step sampler option (DMD's self-rollout)")
        return D.sample_euler(velocity, x, torch.tensor(self.sigmas, dtype=torch.float32, device=x.device), callback)


Sampler = FewStepSampler | EulerSampler


def calls_per_chunk(sampler: Sampler) -> int:
    """Model forward passes per chunk: the sampler's passes on each guidance branch plus the commits."""
    branches = 1 if sampler.guidance == 1.0 else 2
    return branches * (sampler.passes + 1)


def chunk_timesteps(sigma, batch: int, frames: int, device) -> torch.Tensor:
    """The network's timestep input t (batch, frames) for one sigma shared by a chunk."""
    return D.sigma_to_t(torch.full((batch, frames), float(sigma), device=device))


def stream_chunk(model, cache: KVCache, actions: torch.Tensor | None, sampler: Sampler,
                 noise: Callable[[], torch.Tensor], *, x: torch.Tensor | None = None,
                 uncond: tuple[KVCache, torch.Tensor | None] | None = None, commit: bool = True,
                 clean: torch.Tensor | None = None, callback: Callable[[dict], None] | None = None,
                 grad_last_only: bool = False, commit_noise: float = 0.0) -> torch.Tensor:
    """Generate one chunk of every batch item against `cache` and commit it. Returns x0 (B, C, F, h, w).

    model: a `CausalDiT` (its `denoise_chunk` / `commit_chunk`); actions (B, F, A + 1) or None.
    noise() draws fresh noise of the chunk's shape; the chunk starts from `x` if given, else noise().
    uncond: the unconditional branch of guidance, its own cache of the same history and its actions
    (zeros), required when `sampler.guidance != 1`. commit: append the clean chunk at t = 0 to the
    cache(s); `clean` commits given latents instead of the sample (teacher forcing with the ground
    truth, the causal ODE pairs). The commit never keeps gradients. commit_noise: the chunk is committed
    noised to this level (with a fresh noise() draw) under that timestep, for a world trained with noise
    on its history (`WorldSpec.context_noise`); 0: clean, at t = 0.
    """
    if sampler.guidance != 1.0 and uncond is None:
        raise ValueError(f"guidance {sampler.guidance:g} needs the unconditional branch (uncond=(cache, actions))")
    x = noise() if x is None else x
    b, f = x.shape[0], x.shape[2]
    guided = sampler.guidance != 1.0
    with torch.no_grad():  # a history predictor's frames (None without one): the same at every step and the commit
        predicted = model.predict_chunk(actions, cache, f)
        predicted_uncond = model.predict_chunk(uncond[1], uncond[0], f) if guided else None

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = chunk_timesteps(sigma, b, f, x.device)
        v = model.denoise_chunk(x, t, actions, cache, prediction=predicted)
        if not guided:
            return v
        v_uncond = model.denoise_chunk(x, t, uncond[1], uncond[0], prediction=predicted_uncond)
        return D.cfg(v.float(), v_uncond.float(), sampler.guidance)

    x0 = sampler.sample(velocity, x, noise, callback, grad_last_only)
    if commit:
        clean_out = out = (x0 if clean is None else clean).detach()
        if commit_noise > 0:
            out = D.add_noise(out, noise().to(out), commit_noise)
        level = chunk_timesteps(commit_noise, b, f, x.device)
        with torch.no_grad():  # the history predictor (if any) reads the chunk before its noise
            model.commit_chunk(out, level, actions, cache, clean=clean_out, prediction=predicted)
            if uncond is not None and guided:
                model.commit_chunk(out, level, uncond[1], uncond[0], clean=clean_out, prediction=predicted_uncond)
    return x0
