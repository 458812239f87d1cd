"""The Causal Forcing objectives as functions of models and tensors (Zhu et al. 2026, arXiv 2602.02214).

Stage 1  `teacher_loss`: AR teacher by teacher forcing (or diffusion forcing, or bidirectional).
Stage 2a `causal_ode_pairs` / `bidirectional_ode_pairs` + `ode_regression_loss`: ODE initialisation.
Stage 2b `consistency_loss`: causal consistency distillation (Causal Forcing++), no stored pairs.
Stage 3  `self_rollout` + `dmd_generator_loss` / `critic_loss`: DMD with self-rollout (Self Forcing).

Every loss returns `(loss, logs)`. Latents are (B, C, F, H, W) normalised latents, text features
(B, Lt, Dt), action features (B, F, A + 1) with the presence flag last (zeros = no action).
Randomness comes from torch's global RNG, which the training loop saves and restores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from worldsdk import diffusion as D
from worldsdk.model import CausalDiT, KVCache
from worldsdk.rollout import EulerSampler, FewStepSampler, stream_chunk

TEACHER_MODES = ("teacher_forcing", "diffusion_forcing", "bidirectional")


@dataclass
class Conditioning:
    """What a clip is conditioned on. `actions` is None for prompt-only models."""

    text: torch.Tensor  # (B, Lt, Dt)
    actions: torch.Tensor | None  # (B, F, A + 1)

    def null(self) -> "Conditioning":
        """The unconditional input of classifier-free guidance: empty prompt, no action."""
        return Conditioning(torch.zeros_like(self.text), None if self.actions is None else torch.zeros_like(self.actions))

    def chunk(self, start: int, stop: int) -> torch.Tensor | None:
        return None if self.actions is None else self.actions[:, start:stop]


def drop_conditioning(cond: Conditioning, p_text: float, p_action: float) -> Conditioning:
    """Replace the prompt and/or the actions of random batch items by the null input (CFG training)."""
    b = cond.text.shape[0]
    keep_text = (torch.rand(b, device=cond.text.device) >= p_text).to(cond.text.dtype)
    text = cond.text * keep_text[:, None, None]
    actions = cond.actions
    if actions is not None:
        keep_action = (torch.rand(b, device=actions.device) >= p_action).to(actions.dtype)
        actions = actions * keep_action[:, None, None]
    return Conditioning(text, actions)


def corrupt_history(clean: torch.Tensor, context_noise: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GameNGen's context augmentation: the clean history (B, C, F, h, w) noised to a level drawn uniformly
    in [0, context_noise] per clip, and that level as the history's timesteps (B, F); unchanged (and no
    timesteps: t = 0) when context_noise is 0. A model trained on it learns to make the next frame from a
    history that is a little off, as its own is when it is played."""
    if context_noise <= 0:
        return clean, None
    b, f = clean.shape[0], clean.shape[2]
    level = (torch.rand(b, 1, device=clean.device) * context_noise).expand(b, f)
    return D.add_noise(clean, torch.randn_like(clean), level), D.sigma_to_t(level)


def chunk_sigmas(batch: int, frames: int, frames_per_chunk: int, schedule: D.Schedule, device,
                 uniform: bool = False) -> torch.Tensor:
    """sigma (B, F) drawn on the schedule's training grid: one per chunk (or one per clip if `uniform`)."""
    grid = schedule.training_sigmas().to(device)
    chunks = -(-frames // frames_per_chunk)
    index = torch.randint(0, len(grid), (batch, 1 if uniform else chunks), device=device)
    sigma = grid[index].repeat_interleave(frames_per_chunk if not uniform else frames, dim=1)
    return sigma[:, :frames]


def _x0(model_v: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return D.x0_from_velocity(x_t, model_v, sigma)


# ----------------------------------------------------------------------------------------------
# Stage 1: the teacher
# ----------------------------------------------------------------------------------------------


def teacher_loss(model: CausalDiT, x0: torch.Tensor, cond: Conditioning, mode: str, schedule: D.Schedule,
                 token_weight: torch.Tensor | None = None, draw: D.Schedule | None = None,
                 context_noise: float = 0.0, predictor_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Bell-weighted v-MSE of the world model in one of three attention layouts.

    teacher_forcing: clean + noisy copies, per-chunk t, each chunk sees the clean history (the AR teacher);
    diffusion_forcing: block-causal over the noisy clip, per-chunk t (noisy history);
    bidirectional: full attention, one t per clip (real score, critic initialisation, SF teacher).
    `draw` (default `schedule`) is the schedule whose grid sigma is drawn from; the loss weight is `schedule`'s.
    `context_noise` (teacher_forcing only): the clean history is corrupted (`corrupt_history`).
    `predictor_weight` (teacher_forcing, a model with `ModelConfig.predictor_channels`): plus this times the
    history predictor's own MSE against the frames it predicts, on every frame after the clip's first chunk
    (which has no history in the clip): the regression of benchmarks/ball_from_history.py, which teaches the
    motion from history at every draw of sigma, not only the high ones.
    """
    if mode not in TEACHER_MODES:
        raise ValueError(f"teacher mode must be one of {TEACHER_MODES}, got {mode!r}")
    if context_noise > 0 and mode != "teacher_forcing":
        raise ValueError(f"context_noise corrupts the clean history of teacher forcing; mode {mode} has none")
    b, _, f = x0.shape[:3]
    sigma = chunk_sigmas(b, f, model.config.frames_per_chunk, schedule if draw is None else draw, x0.device,
                         uniform=mode == "bidirectional")
    noise = torch.randn_like(x0)
    x_t = D.add_noise(x0, noise, sigma)
    t = D.sigma_to_t(sigma)
    if predictor_weight and (mode != "teacher_forcing" or model.predictor is None):
        raise ValueError(f"predictor_weight trains a history predictor in teacher forcing; mode {mode} with "
                         f"predictor_channels={model.config.predictor_channels} has none")
    if mode == "teacher_forcing":
        history, history_t = corrupt_history(x0, context_noise)
        v, prediction = model.forward_teacher_forcing(history, x_t, t, cond.text, cond.actions, clean_t=history_t,
                                                      with_prediction=True, predictor_history=x0)
    elif mode == "diffusion_forcing":
        v = model.forward_causal(x_t, t, cond.text, cond.actions)
    else:
        v = model.forward_bidirectional(x_t, t, cond.text, cond.actions)
    loss = D.flow_matching_loss(v, x0, noise, t, schedule.shift, token_weight)
    stats = {"loss": loss.detach(), "sigma": sigma.mean().detach()}
    if predictor_weight:
        fc = model.config.frames_per_chunk
        regression = (prediction[:, :, fc:] - x0[:, :, fc:].float()).pow(2).mean()
        loss = loss + predictor_weight * regression
        stats["predictor_loss"] = regression.detach()
    return loss, stats


# ----------------------------------------------------------------------------------------------
# Stage 2a: ODE pairs and regression
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def causal_ode_pairs(teacher: CausalDiT, x0: torch.Tensor, cond: Conditioning, schedule: D.Schedule,
                     num_steps: int = 48, guidance: float = 6.0) -> tuple[torch.Tensor, torch.Tensor]:
    """PF-ODE of the AR teacher, chunk by chunk, with the ground-truth clean history as context.

    Returns (states (B, S, C, F, H, W) at the student's S sigmas, endpoint (B, C, F, H, W)).
    The history is written to a KV cache by committing the *ground-truth* chunk at t = 0, with a
    second cache for the unconditional branch of CFG (Causal Forcing, blockwise_kv mode).
    """
    b, _, f = x0.shape[:3]
    fc = teacher.config.frames_per_chunk
    sampler = EulerSampler.from_schedule(schedule, num_steps, guidance)
    keep = schedule.student_state_indices(num_steps)
    cache = _prompt_cache(teacher, cond.text)
    null = cond.null()
    null_cache = _prompt_cache(teacher, null.text) if guidance != 1.0 else None
    states = torch.zeros(b, len(keep), *x0.shape[1:], device=x0.device, dtype=x0.dtype)
    endpoint = torch.zeros_like(x0)
    for start in range(0, f, fc):
        stop = min(start + fc, f)

        def record(info):
            if info["i"] in keep:
                states[:, keep.index(info["i"]), :, start:stop] = info["x"]

        clean = x0[:, :, start:stop]
        uncond = None if null_cache is None else (null_cache, null.chunk(start, stop))
        endpoint[:, :, start:stop] = stream_chunk(teacher, cache, cond.chunk(start, stop), sampler,
                                                  lambda: torch.randn_like(clean), uncond=uncond, clean=clean,
                                                  callback=record)
    return states, endpoint


@torch.no_grad()
def bidirectional_ode_pairs(teacher: CausalDiT, x0: torch.Tensor, cond: Conditioning, schedule: D.Schedule,
                            num_steps: int = 48, guidance: float = 6.0) -> tuple[torch.Tensor, torch.Tensor]:
    """PF-ODE of a bidirectional teacher over the whole clip (the Self Forcing / CausVid pairs)."""
    b, _, f = x0.shape[:3]
    sigmas = schedule.euler_sigmas(num_steps).to(x0.device)
    keep = schedule.student_state_indices(num_steps)
    null = cond.null()
    states = torch.zeros(b, len(keep), *x0.shape[1:], device=x0.device, dtype=x0.dtype)

    def velocity(x, sigma):
        t = D.sigma_to_t(torch.full((b, f), float(sigma), device=x.device))
        v = teacher.forward_bidirectional(x, t, cond.text, cond.actions)
        if guidance == 1.0:
            return v
        return D.cfg(v, teacher.forward_bidirectional(x, t, null.text, null.actions), guidance)

    def record(info):
        if info["i"] in keep:
            states[:, keep.index(info["i"])] = info["x"]

    endpoint = D.sample_euler(velocity, torch.randn_like(x0), sigmas, record)
    return states, endpoint


def ode_regression_loss(student: CausalDiT, states: torch.Tensor, endpoint: torch.Tensor, clean: torch.Tensor,
                        cond: Conditioning, student_sigmas: torch.Tensor, causal: bool = True,
                        context_noise: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Regress the student's x0 at a stored ODE state onto the teacher's endpoint.

    causal (Causal Forcing): one state index shared by all frames, clean ground-truth context through
    the teacher-forcing layout. Otherwise (Self Forcing's ODE init): an index per chunk and the noisy
    states themselves as context (block-causal), no clean copy.

    context_noise (causal only): the ground-truth history is corrupted (`corrupt_history`) while the
    target stays the teacher's endpoint from the clean history.
    """
    b, s = states.shape[:2]
    f = states.shape[3]
    fc = student.config.frames_per_chunk
    sig = student_sigmas.to(states.device)
    if causal:
        index = torch.randint(0, s, (b, 1), device=states.device).expand(b, f)
    else:
        index = torch.randint(0, s, (b, -(-f // fc)), device=states.device).repeat_interleave(fc, dim=1)[:, :f]
    gather = index[:, None, None, :, None, None].expand(b, 1, *states.shape[2:])
    x_t = torch.gather(states, 1, gather).squeeze(1)  # (B, C, F, H, W)
    sigma = sig[index]  # (B, F)
    t = D.sigma_to_t(sigma)
    if causal:
        history, history_t = corrupt_history(clean, context_noise)
        v = student.forward_teacher_forcing(history, x_t, t, cond.text, cond.actions, clean_t=history_t,
                                            predictor_history=clean)
    else:
        if context_noise > 0:
            raise ValueError("context_noise corrupts the clean history of causal ODE pairs; bidirectional pairs have none")
        v = student.forward_causal(x_t, t, cond.text, cond.actions)
    loss = F.mse_loss(_x0(v, x_t, sigma).float(), endpoint.float())
    return loss, {"loss": loss.detach()}


# ----------------------------------------------------------------------------------------------
# Stage 2b: causal consistency distillation
# ----------------------------------------------------------------------------------------------


def consistency_loss(student: CausalDiT, target: CausalDiT, teacher: CausalDiT, x0: torch.Tensor, cond: Conditioning,
                     schedule: D.Schedule, num_steps: int = 48, guidance: float = 3.0) -> tuple[torch.Tensor, dict]:
    """Causal consistency distillation (Causal Forcing++): one teacher Euler step n -> n+1 with CFG and
    clean context; the student's x0 at x_n matches the EMA target's x0 at x_{n+1}."""
    b, _, f = x0.shape[:3]
    sigmas = schedule.euler_sigmas(num_steps).to(x0.device)
    n = torch.randint(0, num_steps - 1, (b,), device=x0.device)  # n in [0, num_steps - 2]: n+1 stays above 0
    s_n, s_next = sigmas[n][:, None].expand(b, f), sigmas[n + 1][:, None].expand(b, f)
    x_n = D.add_noise(x0, torch.randn_like(x0), s_n)
    with torch.no_grad():
        t_n = D.sigma_to_t(s_n)
        v = teacher.forward_teacher_forcing(x0, x_n, t_n, cond.text, cond.actions)
        if guidance != 1.0:
            null = cond.null()
            v = D.cfg(v, teacher.forward_teacher_forcing(x0, x_n, t_n, null.text, null.actions), guidance)
        x_next = x_n + D._bcast(s_next - s_n, x_n) * v
        v_target = target.forward_teacher_forcing(x0, x_next, D.sigma_to_t(s_next), cond.text, cond.actions)
        x0_target = _x0(v_target, x_next, s_next)
    v_student = student.forward_teacher_forcing(x0, x_n, D.sigma_to_t(s_n), cond.text, cond.actions)
    loss = F.mse_loss(_x0(v_student, x_n, s_n).float(), x0_target.float())
    return loss, {"loss": loss.detach(), "n": n.float().mean()}


# ----------------------------------------------------------------------------------------------
# Stage 3: DMD with self-rollout
# ----------------------------------------------------------------------------------------------


def _prompt_cache(model: CausalDiT, text: torch.Tensor, sink_frames: int = 0) -> KVCache:
    cache = KVCache.empty(model.config, text.shape[0], sink_frames, device=text.device, dtype=text.dtype)
    for i in range(text.shape[0]):
        model.set_prompt(cache, i, text[i : i + 1])
    return cache


def self_rollout(generator: CausalDiT, noise: torch.Tensor, cond: Conditioning, sigmas: torch.Tensor,
                 exit_index: int, *, context: torch.Tensor | None = None, window: int | None = None,
                 sink_frames: int = 0) -> torch.Tensor:
    """The student generates a clip chunk by chunk with its own KV cache (Self Forcing).

    Each chunk runs the few-step sampler up to `exit_index`; only that pass keeps gradients, and its
    x0 is the chunk's output; the output is re-run at t = 0 without gradients to write the cache.

    A long rollout (Self Forcing++'s windows), as a world is played: `context` (B, C, K, h, w) real clean
    latents are committed first, as a world starts from recorded frames; then the student generates all
    of `noise`'s frames, the cache rolling past its window (keeping `sink_frames`), and only the last
    `window` frames are returned, sampled as above. The frames before them are sampled like at inference
    (every step of the sampler, no gradients): the history the window is generated against is the
    student's own. `cond` covers the context and the generated frames (actions (B, K + F, A + 1)).
    """
    f = noise.shape[2]
    fc = generator.config.frames_per_chunk
    k = 0 if context is None else context.shape[2]
    window = f if window is None else window
    if k % fc or window % fc or not 0 < window <= f:
        raise ValueError(f"context ({k}) and window ({window}) must be multiples of the chunk ({fc}), "
                         f"the window within the {f} generated frames")
    full = FewStepSampler(tuple(float(s) for s in sigmas))
    sampler = full.truncated(exit_index)
    with torch.no_grad():
        cache = _prompt_cache(generator, cond.text, sink_frames)
        for start in range(0, k, fc):
            zero = torch.zeros(noise.shape[0], fc, device=noise.device)
            generator.commit_chunk(context[:, :, start : start + fc].to(noise.dtype), zero, cond.chunk(start, start + fc), cache)
    chunks = []
    for start in range(0, f, fc):
        stop = min(start + fc, f)
        x = noise[:, :, start:stop]
        actions = cond.chunk(k + start, k + stop)
        if start < f - window:  # history before the window: the world as it is played
            with torch.no_grad():
                stream_chunk(generator, cache, actions, full, lambda: torch.randn_like(x), x=x)
            continue
        chunks.append(stream_chunk(generator, cache, actions, sampler, lambda: torch.randn_like(x), x=x,
                                   grad_last_only=True))
    return torch.cat(chunks, dim=2)


def dmd_sigma(batch: int, schedule: D.Schedule, device, low: float = 0.02, high: float = 0.98) -> torch.Tensor:
    """DMD's timestep: uniform, shifted by the schedule, clamped to [20, 980] in t; one per sample."""
    u = torch.rand(batch, device=device)
    return schedule.shift_sigma(u).clamp(low, high)


def dmd_generator_loss(x: torch.Tensor, real: CausalDiT, fake: CausalDiT, cond: Conditioning, schedule: D.Schedule,
                       guidance: float = 3.0) -> tuple[torch.Tensor, dict]:
    """Distribution matching: push generated x along x0_fake - x0_real (real = CFG teacher), normalised."""
    b, _, f = x.shape[:3]
    sigma = dmd_sigma(b, schedule, x.device)[:, None].expand(b, f)
    with torch.no_grad():
        x_t = D.add_noise(x, torch.randn_like(x), sigma)
        t = D.sigma_to_t(sigma)
        v_real = real.forward_bidirectional(x_t, t, cond.text, cond.actions)
        if guidance != 1.0:
            null = cond.null()
            v_real = D.cfg(v_real, real.forward_bidirectional(x_t, t, null.text, null.actions), guidance)
        x0_real = _x0(v_real, x_t, sigma)
        x0_fake = _x0(fake.forward_bidirectional(x_t, t, cond.text, cond.actions), x_t, sigma)
        grad = (x0_fake - x0_real).double()
        norm = (x.double() - x0_real.double()).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-8)
        grad = torch.nan_to_num(grad / norm)
    loss = 0.5 * F.mse_loss(x.double(), (x.double() - grad).detach())
    return loss.float(), {"loss": loss.detach().float(), "grad_norm": grad.abs().mean().float()}


def critic_loss(fake: CausalDiT, x: torch.Tensor, cond: Conditioning, schedule: D.Schedule) -> tuple[torch.Tensor, dict]:
    """The fake score learns the generator's distribution: flow matching on generated samples."""
    x = x.detach()
    b, _, f = x.shape[:3]
    sigma = dmd_sigma(b, schedule, x.device)[:, None].expand(b, f)
    noise = torch.randn_like(x)
    x_t = D.add_noise(x, noise, sigma)
    v = fake.forward_bidirectional(x_t, D.sigma_to_t(sigma), cond.text, cond.actions)
    loss = F.mse_loss(v.float(), D.velocity_target(x, noise).float())
    return loss, {"loss": loss.detach()}
