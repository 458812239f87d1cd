"""Closed-form checks of the schedule, noising, conversions, loss weight and samplers."""

import math

import pytest
import torch

from worldsdk import diffusion as D


def test_training_grid_is_shifted_linspace():
    sig = D.training_sigmas(shift=5.0)
    assert sig.shape == (1000,)
    s = torch.linspace(1, 0, 1001, dtype=torch.float64)[:-1]
    assert torch.allclose(sig.double(), 5 * s / (1 + 4 * s), atol=1e-7)
    assert sig[0] == 1.0 and sig[-1] > 0 and bool((sig[1:] < sig[:-1]).all())


def test_warped_steps_match_the_paper():
    sig = D.warped_sigmas([1000, 750, 500, 250], shift=5.0)
    assert torch.allclose(D.sigma_to_t(sig), torch.tensor([1000.0, 937.5, 2500 / 3, 625.0]), atol=1e-3)


def test_warped_steps_reject_out_of_range():
    with pytest.raises(ValueError, match="nominal steps"):
        D.warped_sigmas([0, 500], 5.0)


def test_euler_grid_ends_at_zero():
    sig = D.euler_sigmas(48, 5.0)
    assert sig.shape == (49,) and sig[0] == 1.0 and sig[-1] == 0.0
    assert math.isclose(float(sig[24]), 5 * 0.5 / (1 + 4 * 0.5), rel_tol=1e-6)


def test_noise_and_conversions_round_trip():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 5, 5, generator=g), torch.randn(2, 3, 4, 5, 5, generator=g)
    sigma = torch.rand(2, 4, generator=g) * 0.9 + 0.05  # per frame
    xt = D.add_noise(x0, eps, sigma)
    v = D.velocity_target(x0, eps)
    assert torch.allclose(D.x0_from_velocity(xt, v, sigma), x0, atol=1e-5)
    assert torch.allclose(D.velocity_from_x0(xt, x0, sigma), v, atol=1e-4)
    assert torch.allclose(D.add_noise(x0, eps, 0.0), x0) and torch.allclose(D.add_noise(x0, eps, 1.0), eps)
    # per-frame sigma really is per frame
    assert torch.allclose(xt[:, :, 1], (1 - sigma[:, 1, None, None, None]) * x0[:, :, 1] + sigma[:, 1, None, None, None] * eps[:, :, 1])


def test_bell_weight_peaks_at_500_and_has_mean_one_on_the_grid():
    grid_t = D.sigma_to_t(D.training_sigmas(5.0))
    w = D.bell_weight(grid_t, 5.0)
    assert abs(float(w.mean()) - 1.0) < 1e-5
    assert D.bell_weight(torch.tensor(500.0), 5.0) > D.bell_weight(torch.tensor(900.0), 5.0) > D.bell_weight(torch.tensor(1000.0), 5.0)
    ratio = D.bell_weight(torch.tensor(0.0), 5.0) / D.bell_weight(torch.tensor(500.0), 5.0)
    assert math.isclose(float(ratio), math.exp(-0.5), rel_tol=1e-5)


def test_euler_sampler_is_exact_for_a_straight_flow():
    # With the true velocity of a single data point, every Euler step lands exactly on the line.
    x0 = torch.randn(1, 2, 1, 3, 3)
    eps = torch.randn_like(x0)
    out = D.sample_euler(lambda x, s: eps - x0, eps.clone(), D.euler_sigmas(7, 5.0))
    assert torch.allclose(out, x0, atol=1e-5)


def test_cfg_guided_velocity():
    calls = []

    def v(x, s, cond):
        calls.append(cond)
        return torch.full_like(x, 2.0 if cond else 1.0)

    out = D.guided_velocity(v, 3.0)(torch.zeros(1), torch.tensor(0.5))
    assert torch.allclose(out, torch.tensor([4.0])) and calls == [True, False]  # 1 + 3 (2 - 1)
    assert D.guided_velocity(v, 1.0)(torch.zeros(1), torch.tensor(0.5)).item() == 2.0


def test_few_step_sampler_renoises_with_fresh_noise_and_reports_progress():
    target = torch.ones(1, 1, 1, 2, 2)
    seen = []
    noise_draws = iter([torch.full_like(target, 10.0 * i) for i in range(1, 4)])
    out = D.sample_few_step(lambda x, s: target * float(s), torch.zeros_like(target),
                            D.warped_sigmas([1000, 750, 500, 250], 5.0), lambda: next(noise_draws), seen.append)
    assert [d["i"] for d in seen] == [0, 1, 2, 3]
    # x fed at step 1 = (1 - s1) x0_0 + s1 * noise_1 with x0_0 = target * 1
    s1 = float(D.warped_sigmas([750], 5.0)[0])
    assert torch.allclose(seen[1]["x"], (1 - s1) * target + s1 * 10.0)
    assert torch.allclose(out, target * 0.625, atol=1e-6)


def test_flow_matching_loss_zero_at_target_and_weighted():
    x0, eps = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    t = torch.full((2, 4), 500.0)
    assert D.flow_matching_loss(eps - x0, x0, eps, t, 5.0).item() == 0.0
    err = D.flow_matching_loss(eps - x0 + 1.0, x0, eps, t, 5.0)
    assert math.isclose(err.item(), float(D.bell_weight(torch.tensor(500.0), 5.0)), rel_tol=1e-5)


def test_schedule_is_the_one_home_of_shift_and_steps():
    paper = D.Schedule()
    assert paper.shift == 5.0 and paper.steps == (1000.0, 750.0, 500.0, 250.0)
    assert torch.allclose(paper.student_sigmas(), torch.tensor([1.0, 0.9375, 0.8333333, 0.625]))
    assert paper.student_state_indices(48) == [0, 12, 24, 36]
    small = D.Schedule(shift=1.0)
    # shift 1: the grids are unwarped, the student's last step reaches sigma 0.25
    assert torch.allclose(small.student_sigmas(), torch.tensor([1.0, 0.75, 0.5, 0.25]))
    assert torch.allclose(small.euler_sigmas(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    assert torch.allclose(small.training_sigmas(), torch.linspace(1, 0, 1001)[:-1])
    assert small.student_state_indices(48) == [0, 12, 24, 36]
    with pytest.raises(ValueError, match="Euler grid"):
        D.Schedule(shift=1.0, steps=(1000.0, 510.0)).student_state_indices(48)
    with pytest.raises(ValueError, match="shift"):
        D.Schedule(shift=0.0)
