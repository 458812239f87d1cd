"""Causal Forcing objectives checked against their definitions on the tiny model."""

import copy
from dataclasses import replace

import pytest
import torch

from tests.conftest import perturb_
from trainers import objectives as O
from worldsdk import diffusion as D
from worldsdk.config import MODEL_PRESETS
from worldsdk.model import CausalDiT


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return perturb_(CausalDiT(replace(MODEL_PRESETS["tiny"], **kw)), seed=seed)


def batch(model, b=2, seed=1):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, cfg.latent_channels, cfg.latent_frames_max, cfg.latent_height, cfg.latent_width, generator=g)
    text = torch.randn(b, cfg.text_len, cfg.text_dim, generator=g)
    actions = torch.zeros(b, cfg.latent_frames_max, cfg.action_dim + 1)
    actions[..., torch.randint(0, cfg.action_dim, (1,), generator=g)] = 1.0
    actions[..., -1] = 1.0
    return x0, O.Conditioning(text, actions)


def test_chunk_sigmas_are_constant_within_chunks_and_on_the_grid():
    torch.manual_seed(0)
    s = O.chunk_sigmas(3, 8, 2, D.Schedule(5.0), "cpu")
    assert torch.equal(s[:, 0::2], s[:, 1::2])
    grid = D.training_sigmas(5.0)
    assert all(bool((grid == v).any()) for v in s.flatten())
    u = O.chunk_sigmas(3, 8, 2, D.Schedule(5.0), "cpu", uniform=True)
    assert bool((u == u[:, :1]).all())


@torch.no_grad()
def test_causal_ode_pairs_follow_the_teacher_forcing_definition():
    teacher = tiny().eval()
    x0, cond = batch(teacher)
    steps, guidance = 8, 2.0
    torch.manual_seed(5)
    states, endpoint = O.causal_ode_pairs(teacher, x0, cond, D.Schedule(5.0, (1000, 500)), steps, guidance)
    # Reference: each chunk integrated alone with the full teacher-forcing forward, GT as clean copy.
    torch.manual_seed(5)
    sigmas = D.euler_sigmas(steps, 5.0)
    fc, f = teacher.config.frames_per_chunk, x0.shape[2]
    null = cond.null()
    ref_end = torch.zeros_like(x0)
    ref_states = torch.zeros_like(states)
    for start in range(0, f, fc):
        x = torch.randn_like(x0[:, :, start : start + fc])
        for i in range(steps):
            if i in (0, 4):
                ref_states[:, (0, 4).index(i), :, start : start + fc] = x
            noisy = torch.zeros_like(x0)  # later chunks are masked out; their content must not matter
            noisy[:, :, start : start + fc] = x
            t = torch.full(x0.shape[:1] + x0.shape[2:3], float(sigmas[i]) * 1000)
            v_c = teacher.forward_teacher_forcing(x0, noisy, t, cond.text, cond.actions)[:, :, start : start + fc]
            v_u = teacher.forward_teacher_forcing(x0, noisy, t, null.text, null.actions)[:, :, start : start + fc]
            x = x + (sigmas[i + 1] - sigmas[i]) * D.cfg(v_c, v_u, guidance)
        ref_end[:, :, start : start + fc] = x
    assert (endpoint - ref_end).abs().max() < 1e-4
    assert (states - ref_states).abs().max() < 1e-4


@pytest.mark.parametrize("mode", O.TEACHER_MODES)
def test_teacher_loss_falls_when_overfitting_one_batch(mode):
    model = tiny().train()
    x0, cond = batch(model)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for step in range(40):
        torch.manual_seed(step % 2)  # two fixed noise draws: a fixed, learnable target
        loss, logs = O.teacher_loss(model, x0, cond, mode, D.Schedule())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:4]) / 4
    with pytest.raises(ValueError, match="teacher mode"):
        O.teacher_loss(model, x0, cond, "nope", D.Schedule())


def test_ode_regression_and_consistency_losses_fall():
    student = tiny(1).train()
    teacher = tiny(2).eval()
    x0, cond = batch(student)
    torch.manual_seed(0)
    states, endpoint = O.causal_ode_pairs(teacher, x0, cond, D.Schedule(5.0, (1000, 500)), 8, 1.0)
    sig = D.euler_sigmas(8, 5.0)[[0, 4]]
    for causal in (True, False):
        model = copy.deepcopy(student)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
        losses = []
        for step in range(30):
            torch.manual_seed(step % 2)
            loss, _ = O.ode_regression_loss(model, states, endpoint, x0, cond, sig, causal=causal)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.6 * losses[0]
    target = copy.deepcopy(student).eval()
    opt = torch.optim.AdamW(student.parameters(), lr=2e-3)
    losses = []
    for step in range(30):
        torch.manual_seed(step % 2)
        loss, _ = O.consistency_loss(student, target, teacher, x0, cond, D.Schedule(), num_steps=8, guidance=2.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


@torch.no_grad()
def test_context_noise_corrupts_the_history_not_the_target():
    student = tiny(1, context_frames=2, context_skip=0.33).eval()
    teacher = tiny(2).eval()
    x0, cond = batch(student)
    torch.manual_seed(0)
    states, endpoint = O.causal_ode_pairs(teacher, x0, cond, D.Schedule(5.0, (1000, 500)), 8, 1.0)
    sig = D.euler_sigmas(8, 5.0)[[0, 4]]
    b, f = x0.shape[0], x0.shape[2]
    torch.manual_seed(7)
    loss, _ = O.ode_regression_loss(student, states, endpoint, x0, cond, sig, context_noise=0.3)
    # the definition: one level per clip in [0, 0.3], the history noised to it and labelled with it
    torch.manual_seed(7)
    index = torch.randint(0, 2, (b, 1))
    level = torch.rand(b, 1) * 0.3
    noisy_history = D.add_noise(x0, torch.randn_like(x0), level.expand(b, f))
    x_t = states[torch.arange(b), index[:, 0]]
    sigma = sig[index].expand(b, f)
    v = student.forward_teacher_forcing(noisy_history, x_t, D.sigma_to_t(sigma), cond.text, cond.actions,
                                        clean_t=D.sigma_to_t(level.expand(b, f)))
    expected = torch.nn.functional.mse_loss(x_t - sigma[:, None, :, None, None] * v, endpoint)
    assert abs(loss.item() - expected.item()) < 1e-5
    torch.manual_seed(7)
    clean_loss, _ = O.ode_regression_loss(student, states, endpoint, x0, cond, sig)
    assert abs(clean_loss.item() - loss.item()) > 1e-4  # the corrupted history changes the prediction
    zero_t = torch.zeros(b, f)
    assert torch.equal(student.forward_teacher_forcing(x0, x_t, D.sigma_to_t(sigma), cond.text, cond.actions),
                       student.forward_teacher_forcing(x0, x_t, D.sigma_to_t(sigma), cond.text, cond.actions, clean_t=zero_t))
    with pytest.raises(ValueError, match="bidirectional pairs have none"):
        O.ode_regression_loss(student, states, endpoint, x0, cond, sig, causal=False, context_noise=0.3)


@torch.no_grad()
def test_teacher_forcing_with_context_noise_sees_a_noised_labelled_history():
    model = tiny(1, context_frames=2, context_skip=0.33).eval()
    x0, cond = batch(model)
    b, f = x0.shape[0], x0.shape[2]
    torch.manual_seed(11)
    loss, _ = O.teacher_loss(model, x0, cond, "teacher_forcing", D.Schedule(), context_noise=0.5)
    torch.manual_seed(11)  # the definition: the draws of teacher_loss, then the history's level and noise
    sigma = O.chunk_sigmas(b, f, model.config.frames_per_chunk, D.Schedule(), "cpu")
    noise = torch.randn_like(x0)
    level = (torch.rand(b, 1) * 0.5).expand(b, f)
    history = D.add_noise(x0, torch.randn_like(x0), level)
    v = model.forward_teacher_forcing(history, D.add_noise(x0, noise, sigma), D.sigma_to_t(sigma), cond.text,
                                      cond.actions, clean_t=D.sigma_to_t(level))
    expected = D.flow_matching_loss(v, x0, noise, D.sigma_to_t(sigma), D.Schedule().shift)
    assert abs(loss.item() - expected.item()) < 1e-6
    torch.manual_seed(11)
    clean, _ = O.teacher_loss(model, x0, cond, "teacher_forcing", D.Schedule())
    assert abs(clean.item() - loss.item()) > 1e-4
    with pytest.raises(ValueError, match="mode bidirectional has none"):
        O.teacher_loss(model, x0, cond, "bidirectional", D.Schedule(), context_noise=0.5)


def test_the_history_predictor_adds_its_own_regression_and_learns_a_motion():
    model = tiny(2, context_frames=2, context_skip=0.33, predictor_channels=8, predictor_blocks=1).train()
    x0, cond = batch(model)
    x0 = torch.stack([x0[:, :, 0].roll(i, dims=-1) for i in range(x0.shape[2])], dim=2)  # a pattern moving 1 px a frame
    fc = model.config.frames_per_chunk
    torch.manual_seed(3)
    diffusion, _ = O.teacher_loss(model, x0, cond, "teacher_forcing", D.Schedule())
    torch.manual_seed(3)
    both, logs = O.teacher_loss(model, x0, cond, "teacher_forcing", D.Schedule(), predictor_weight=0.5)
    prediction = model.predictor(model._clip_context(x0), cond.actions)
    expected = (prediction[:, :, fc:] - x0[:, :, fc:]).pow(2).mean()  # every frame that has history in the clip
    assert abs(logs["predictor_loss"].item() - expected.item()) < 1e-6
    assert abs(both.item() - diffusion.item() - 0.5 * expected.item()) < 1e-5
    diffusion.backward()  # the rest of the model reads the prediction detached: only the regression trains it
    assert all(p.grad is None for p in model.predictor.parameters())
    assert model.prediction_embedding.weight.grad.abs().sum() > 0
    opt = torch.optim.AdamW(model.predictor.parameters(), lr=3e-3)
    first = expected.item()
    for _ in range(60):
        loss, logs = O.teacher_loss(model, x0, cond, "teacher_forcing", D.Schedule(), predictor_weight=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logs["predictor_loss"].item() < 0.5 * first  # it learns where the pattern goes from the frames before
    with pytest.raises(ValueError, match="history predictor"):
        O.teacher_loss(model, x0, cond, "bidirectional", D.Schedule(), predictor_weight=1.0)


def test_self_rollout_keeps_gradients_only_through_the_exit_step():
    gen = tiny().train()
    x0, cond = batch(gen, b=1)
    sigmas = D.warped_sigmas([1000, 750, 500, 250], 5.0)
    noise = torch.randn_like(x0)
    out = O.self_rollout(gen, noise, cond, sigmas, exit_index=2)
    assert out.shape == x0.shape and out.requires_grad
    out.sum().backward()
    assert gen.head.head.weight.grad.abs().sum() > 0
    # without gradients, the rollout is the World's streaming sampler: same noise draws, same result
    torch.manual_seed(3)
    with torch.no_grad():
        a = O.self_rollout(gen, noise, cond, sigmas, exit_index=3)
    torch.manual_seed(3)
    with torch.no_grad():
        cache = O._prompt_cache(gen, cond.text)
        chunks = []
        for s in range(0, x0.shape[2], 2):
            acts = cond.actions[:, s : s + 2]
            t_of = lambda sig: torch.full((1, 2), float(sig) * 1000)  # noqa: E731
            x0_chunk = D.sample_few_step(
                lambda x, sig: D.x0_from_velocity(x, gen.denoise_chunk(x, t_of(sig), acts, cache), sig),
                noise[:, :, s : s + 2], sigmas, lambda: torch.randn(1, 4, 2, 8, 8))
            gen.commit_chunk(x0_chunk, t_of(0.0), acts, cache)
            chunks.append(x0_chunk)
    assert (a - torch.cat(chunks, 2)).abs().max() < 1e-5


def long_rollout_inputs(gen, context=2, frames=12, seed=4):
    cfg = gen.config
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randn(1, cfg.latent_channels, context, cfg.latent_height, cfg.latent_width, generator=g)
    noise = torch.randn(1, cfg.latent_channels, frames, cfg.latent_height, cfg.latent_width, generator=g)
    actions = torch.zeros(1, context + frames, cfg.action_dim + 1)
    actions[0, torch.arange(context + frames), torch.randint(0, cfg.action_dim, (context + frames,), generator=g)] = 1.0
    actions[..., -1] = 1.0
    return ctx, noise, O.Conditioning(torch.randn(1, cfg.text_len, cfg.text_dim, generator=g), actions)


def test_long_self_rollout_scores_the_end_of_the_played_rollout():
    gen = tiny().train()
    sigmas = D.warped_sigmas([1000, 750, 500, 250], 5.0)
    context, noise, cond = long_rollout_inputs(gen)  # 2 context + 12 frames: the 6-frame window rolls (sink 1)
    # with the full sampler as exit step, the window is the last frames of the whole rollout, played as at inference
    torch.manual_seed(3)
    with torch.no_grad():
        whole = O.self_rollout(gen, noise, cond, sigmas, exit_index=3, context=context, sink_frames=1)
    torch.manual_seed(3)
    with torch.no_grad():
        window = O.self_rollout(gen, noise, cond, sigmas, exit_index=3, context=context, window=4, sink_frames=1)
    assert whole.shape[2] == 12 and window.shape[2] == 4
    assert (window - whole[:, :, -4:]).abs().max() < 1e-5
    # the history matters: another recorded start, or another action early on, changes the window
    torch.manual_seed(3)
    with torch.no_grad():
        other = O.self_rollout(gen, noise, cond, sigmas, exit_index=3, context=-context, window=4, sink_frames=1)
    assert (other - window).abs().max() > 1e-3
    # gradients reach the generator through the window's exit step only
    torch.manual_seed(3)
    out = O.self_rollout(gen, noise, cond, sigmas, exit_index=1, context=context, window=4, sink_frames=1)
    assert out.shape[2] == 4 and out.requires_grad
    out.sum().backward()
    assert gen.head.head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="multiples of the chunk"):
        O.self_rollout(gen, noise, cond, sigmas, exit_index=1, context=context, window=3)
    with pytest.raises(ValueError, match="within the 12 generated frames"):
        O.self_rollout(gen, noise, cond, sigmas, exit_index=1, context=context, window=14)


def test_dmd_gradient_vanishes_when_fake_equals_real_and_critic_learns():
    real = tiny(1).eval()
    fake = copy.deepcopy(real)
    x0, cond = batch(real)
    x = x0.clone().requires_grad_(True)
    loss, logs = O.dmd_generator_loss(x, real, fake, cond, D.Schedule(), guidance=1.0)
    loss.backward()
    assert loss.item() == 0.0 and x.grad.abs().max() == 0.0
    other = tiny(2).eval()
    x = x0.clone().requires_grad_(True)
    loss, _ = O.dmd_generator_loss(x, real, other, cond, D.Schedule(), guidance=3.0)
    loss.backward()
    assert loss.item() > 0 and x.grad.abs().max() > 0
    critic = tiny(3).train()
    opt = torch.optim.AdamW(critic.parameters(), lr=2e-3)
    losses = []
    for step in range(30):
        torch.manual_seed(step % 2)
        loss, _ = O.critic_loss(critic, x0, cond, D.Schedule())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_motion_weight_marks_what_changed_since_the_previous_frame():
    from trainers.stages.worlds import motion_weight

    x0 = torch.zeros(1, 4, 3, 8, 8)
    x0[0, :, 1:, 4, 2] = 1.0  # appears in frame 1 and stays: it moved into frame 1 only
    weight = motion_weight(x0, 5.0)
    assert weight.shape == (1, 1, 3, 8, 8)
    moved = torch.zeros(8, 8)
    moved[3:6, 1:4] = 1.0  # the changed latent pixel grown by one
    assert torch.equal(weight[0, 0, 1], 1.0 + 5.0 * moved)
    assert torch.equal(weight[0, 0, 0], torch.ones(8, 8))  # no previous frame
    assert torch.equal(weight[0, 0, 2], torch.ones(8, 8))  # nothing moved since frame 1
    assert motion_weight(x0, 0.0) is None
    small = x0 * 0.2  # a change below the threshold (RMS over channels 0.2 < 0.25) is not motion
    assert torch.equal(motion_weight(small, 5.0), torch.ones(1, 1, 3, 8, 8))
