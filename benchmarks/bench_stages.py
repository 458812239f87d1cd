"""Seconds per training step of each Causal Forcing objective, and ODE-pair generation speed.

    python benchmarks/bench_stages.py [--preset small] [--batch-size 8] [--threads 1] [--out FILE]

Random latents of the preset's shapes stand in for a batch (the cost does not depend on the data);
each objective runs forward, backward and an AdamW step, as in its stage. Not a test.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from trainers import objectives as O
from worldsdk.config import MODEL_PRESETS
from worldsdk.diffusion import Schedule
from worldsdk.model import CausalDiT


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/stages.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = MODEL_PRESETS[args.preset]
    b, f = args.batch_size, cfg.latent_frames_max
    x0 = torch.randn(b, cfg.latent_channels, f, cfg.latent_height, cfg.latent_width)
    actions = torch.zeros(b, f, cfg.action_dim + 1)
    actions[..., 0] = actions[..., -1] = 1.0
    cond = O.Conditioning(torch.randn(b, cfg.text_len, cfg.text_dim), actions)
    student, teacher, critic = CausalDiT(cfg), CausalDiT(cfg).eval(), CausalDiT(cfg)
    target = copy.deepcopy(student).eval()
    opt = torch.optim.AdamW(list(student.parameters()) + list(critic.parameters()))
    schedule = Schedule()  # the paper's; the step costs do not depend on it
    sigmas = schedule.student_sigmas()

    def step(loss_fn):
        def run():
            loss, _ = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    states, endpoint = O.causal_ode_pairs(teacher, x0[:2], O.Conditioning(cond.text[:2], actions[:2]), schedule, 48, 6.0)
    states = states.repeat(b // 2, 1, 1, 1, 1, 1)
    endpoint = endpoint.repeat(b // 2, 1, 1, 1, 1)

    def dmd_generator():
        x = O.self_rollout(student, torch.randn_like(x0), cond, sigmas, int(torch.randint(0, 4, (1,))))
        return O.dmd_generator_loss(x, teacher, critic, cond, schedule, guidance=3.0)

    def dmd_critic():
        with torch.no_grad():
            x = O.self_rollout(student, torch.randn_like(x0), cond, sigmas, int(torch.randint(0, 4, (1,))))
        return O.critic_loss(critic, x, cond, schedule)

    results = {
        "teacher (teacher forcing)": timed(step(lambda: O.teacher_loss(student, x0, cond, "teacher_forcing", schedule)), args.repeats),
        "teacher (diffusion forcing)": timed(step(lambda: O.teacher_loss(student, x0, cond, "diffusion_forcing", schedule)), args.repeats),
        "teacher (bidirectional)": timed(step(lambda: O.teacher_loss(student, x0, cond, "bidirectional", schedule)), args.repeats),
        "ode (causal regression)": timed(step(lambda: O.ode_regression_loss(student, states, endpoint, x0, cond, sigmas)), args.repeats),
        "cd": timed(step(lambda: O.consistency_loss(student, target, teacher, x0, cond, schedule)), args.repeats),
        "dmd generator update": timed(step(dmd_generator), args.repeats),
        "dmd critic update": timed(step(dmd_critic), args.repeats),
    }
    with torch.no_grad():
        pair_time = timed(lambda: O.causal_ode_pairs(teacher, x0, cond, schedule, 48, 6.0), 1)
    results_out = {
        "preset": args.preset, "batch_size": b, "threads": args.threads,
        "seconds_per_step": results,
        "dmd_seconds_per_generator_step_with_5_critic_updates": results["dmd generator update"] + 5 * results["dmd critic update"],
        "ode_pairs_clips_per_s": b / pair_time,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results_out, indent=2) + "\n")
    print(f"{args.preset} preset, batch {b}, {args.threads} thread(s):")
    for name, seconds in results.items():
        print(f"  {name:30s} {seconds:7.3f} s/step")
    print(f"  ODE pairs (48 Euler steps, CFG, causal): {b / pair_time:.2f} clips/s")


if __name__ == "__main__":
    main()
