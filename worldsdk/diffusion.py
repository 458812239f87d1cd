"""Flow-matching schedules, noising, v <-> x0 conversions, losses and samplers: pure tensor functions.

Conventions (Causal Forcing / Wan2.1): sigma in [0, 1] is the noise level, x_t = (1 - sigma) x0 +
sigma eps, the network predicts v = eps - x0, and its timestep input is t = 1000 sigma.
Samplers share one shape: `sample_*(fn, x, sigmas, ..., callback=None)` where `fn` is a plain
callable and `callback(dict)` receives every intermediate (k-diffusion style).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from worldsdk.spec import PAPER_SHIFT, PAPER_STEPS

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Timestep shift of SD3 / Wan: sigma' = shift sigma / (1 + (shift - 1) sigma)."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def training_sigmas(shift: float, num_steps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """The shifted training grid: linspace(1, 0, num_steps + 1)[:-1], shifted (Wan FlowMatchScheduler)."""
    return shift_sigma(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1], shift).float()


def warped_sigmas(nominal_steps: Sequence[float], shift: float) -> torch.Tensor:
    """Few-step list: nominal timesteps [1000, 750, ...] looked up on the shifted grid (Causal Forcing App. D).

    [1000, 750, 500, 250] with shift 5 gives sigma = 1, 0.9375, 0.8333, 0.625.
    """
    grid = training_sigmas(shift)
    index = torch.tensor([NUM_TRAIN_TIMESTEPS - int(round(s)) for s in nominal_steps])
    if (index < 0).any() or (index >= NUM_TRAIN_TIMESTEPS).any():
        raise ValueError(f"nominal steps must lie in (0, 1000], got {list(nominal_steps)}")
    return grid[index]


def euler_sigmas(num_steps: int, shift: float) -> torch.Tensor:
    """num_steps + 1 shifted sigmas from 1 down to exactly 0, for the multi-step Euler sampler."""
    return shift_sigma(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift).float()


@dataclass(frozen=True)
class Schedule:
    """A world's noise schedule, the one place training and sampling read it from.

    `shift` warps every grid (training draws, the loss weight, the teachers' Euler steps, the
    student's steps); `steps` are the few-step student's nominal timesteps, looked up on the shifted
    grid. The paper's (5, [1000, 750, 500, 250]) suits 832x480 video; a 16x16 latent is near shift 1
    by SD3's resolution rule (docs/worlds.md). A world's spec carries its schedule
    (`WorldSpec.schedule`), so every stage trained from a world, and the world itself, agree on it.
    """

    shift: float = PAPER_SHIFT
    steps: tuple[float, ...] = PAPER_STEPS

    def __post_init__(self):
        if not self.shift > 0:
            raise ValueError(f"schedule shift must be > 0, got {self.shift}")
        warped_sigmas(self.steps, self.shift)  # validates the steps

    def training_sigmas(self) -> torch.Tensor:
        """The grid training draws sigma from (uniform over it)."""
        return training_sigmas(self.shift)

    def student_sigmas(self) -> torch.Tensor:
        """The few-step sampler's sigmas, from 1 down to the last step's."""
        return warped_sigmas(self.steps, self.shift)

    def euler_sigmas(self, num_steps: int) -> torch.Tensor:
        """num_steps + 1 sigmas from 1 to 0 for the teachers' PF-ODE (and their ODE pairs)."""
        return euler_sigmas(num_steps, self.shift)

    def student_state_indices(self, num_steps: int) -> list[int]:
        """Indices of the `num_steps` Euler grid whose sigmas are the student's (48 steps: 0, 12, 24, 36)."""
        euler = self.euler_sigmas(num_steps)
        out = []
        for s in self.student_sigmas():
            i = int(torch.argmin((euler - s).abs()))
            if abs(float(euler[i] - s)) > 1e-4:
                raise ValueError(f"student sigma {float(s):.4f} is not on the {num_steps}-step Euler grid")
            out.append(i)
        return out

    def bell_weight(self, t: torch.Tensor) -> torch.Tensor:
        return bell_weight(t, self.shift)

    def shift_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return shift_sigma(sigma, self.shift)


def sigma_to_t(sigma: torch.Tensor) -> torch.Tensor:
    """Network timestep input t = 1000 sigma."""
    return sigma * NUM_TRAIN_TIMESTEPS


def t_to_sigma(t: torch.Tensor) -> torch.Tensor:
    """sigma = t / 1000, the inverse of `sigma_to_t`."""
    return t / NUM_TRAIN_TIMESTEPS


def _bcast(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Broadcast sigma of shape (), (B,) or (B, F) against latents (B, C, F, H, W)."""
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if sigma.dim() == 0:
        return sigma
    if sigma.dim() == 1:  # (B,)
        return sigma.view(-1, *([1] * (like.dim() - 1)))
    return sigma.view(sigma.shape[0], 1, sigma.shape[1], *([1] * (like.dim() - 3)))  # (B, 1, F, 1, 1)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
    """Rectified-flow forward process: x_t = (1 - sigma) x0 + sigma eps."""
    s = _bcast(sigma, x0)
    return (1.0 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Flow-matching target v = eps - x0."""
    return noise - x0


def x0_from_velocity(x_t: torch.Tensor, v: torch.Tensor, sigma) -> torch.Tensor:
    """x0 = x_t - sigma v."""
    return x_t - _bcast(sigma, x_t) * v


def velocity_from_x0(x_t: torch.Tensor, x0: torch.Tensor, sigma) -> torch.Tensor:
    """v = (x_t - x0) / sigma (sigma > 0)."""
    return (x_t - x0) / _bcast(sigma, x_t)


def bell_weight(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Training weight ~ exp(-2 ((t - 500) / 1000)^2), normalised to mean 1 over the shifted grid."""
    grid_t = sigma_to_t(training_sigmas(shift)).to(t.device)
    norm = torch.exp(-2.0 * ((grid_t - 500.0) / 1000.0) ** 2).mean()
    return torch.exp(-2.0 * ((t - 500.0) / 1000.0) ** 2) / norm


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale (cond - uncond)."""
    return uncond + scale * (cond - uncond)


def sample_few_step(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    noise: Callable[[], torch.Tensor],
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Few-step consistency-style sampler (Self Forcing / Causal Forcing inference).

    At each sigma: predict x0, then re-noise it to the next sigma with fresh noise from `noise()`.
    `denoise(x, sigma) -> x0`. Returns the last x0.
    """
    x0 = x
    for i, sigma in enumerate(sigmas):
        x0 = denoise(x, sigma)
        if callback is not None:
            callback({"i": i, "sigma": sigma, "x": x, "x0": x0})
        if i + 1 < len(sigmas):
            x = add_noise(x0, noise(), sigmas[i + 1])
    return x0


def sample_euler(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Euler integration of the probability-flow ODE dx/dsigma = v from sigmas[0] to sigmas[-1].

    `velocity(x, sigma) -> v` (wrap it with `cfg` for guidance). Returns x at sigmas[-1].
    """
    for i in range(len(sigmas) - 1):
        v = velocity(x, sigmas[i])
        if callback is not None:
            callback({"i": i, "sigma": sigmas[i], "x": x, "v": v})
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


def guided_velocity(
    velocity: Callable[..., torch.Tensor], scale: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap `velocity(x, sigma, conditional: bool)` into a CFG velocity(x, sigma) (one call each side)."""

    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if scale == 1.0:
            return velocity(x, sigma, True)
        return cfg(velocity(x, sigma, True), velocity(x, sigma, False), scale)

    return guided


def flow_matching_loss(
    v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, shift: float,
    token_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bell-weighted v-MSE, averaged per frame then weighted by the frame's t (Causal Forcing stage 1).

    v_pred, x0, noise: (B, C, F, H, W); t: (B, F); token_weight: optional (B, 1, F, H, W) spatial weight.
    """
    err = (v_pred.float() - velocity_target(x0, noise).float()) ** 2
    if token_weight is not None:
        err = err * token_weight
    per_frame = err.mean(dim=(1, 3, 4))  # (B, F)
    return (per_frame * bell_weight(t.float(), shift)).mean()
