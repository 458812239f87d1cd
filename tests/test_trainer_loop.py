"""The shared training loop on a toy two-update stage: schedule, EMA, hooks, exact kill-and-resume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from trainers.logger import read_metrics
from trainers.loop import LoopConfig, latest_checkpoint, list_checkpoints, train
from trainers.stage import ModelChoice, OptimizerConfig, RunContext, Stage, Update
from worldsdk.train_checkpoint import load_train_state


@dataclass(frozen=True)
class ToyConfig:
    name: str = "toy"
    critic_every: int = 1
    generator_every: int = 3
    ema_decay: float = 0.9


class ToyStage(Stage):
    """A DMD-shaped schedule on linear regression: a 'critic' fits y every step, a 'generator' fits
    the critic's output every `generator_every` steps, both with fresh noise from the global RNG."""

    name = "toy"
    config_class = ToyConfig

    def __init__(self, config: ToyConfig, model: ModelChoice, ctx: RunContext):
        self.config, self.ctx = config, ctx
        self.critic = nn.Linear(4, 2)
        self.generator = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        g = torch.Generator().manual_seed(123)
        x = torch.randn(64, 4, generator=g)
        self.data = TensorDataset(x, x @ torch.randn(4, 2, generator=g))
        self.hook_calls: list[tuple[str, int]] = []

    def modules(self):
        return {"critic": self.critic, "generator": self.generator}

    def updates(self):
        opt = OptimizerConfig(lr=1e-2, betas=(0.0, 0.999), weight_decay=0.01, grad_clip=1.0)
        return [
            Update("generator", self.generator_loss, ("generator",), opt, every=self.config.generator_every),
            Update("critic", self.critic_loss, ("critic",), OptimizerConfig(lr=1e-1, warmup_steps=2, decay="cosine")),
        ]

    def dataset(self):
        return self.data

    def ema_decays(self):
        return {"generator": self.config.ema_decay} if self.config.ema_decay else {}

    def critic_loss(self, batch, step):
        x, y = batch
        noisy = x + 0.1 * torch.randn_like(x)
        loss = (self.critic(noisy) - y).square().mean()
        return loss, {"noise_mean": noisy.mean()}

    def generator_loss(self, batch, step):
        x, _ = batch
        assert not any(p.requires_grad for p in self.critic.parameters()), "critic must be frozen in the generator update"
        target = self.critic(x + 0.1 * torch.randn_like(x))
        return (self.generator(x) - target).square().mean(), {}

    def sample(self, step, weights, out_dir):
        self.hook_calls.append(("sample", step))
        torch.randn(100)  # hooks may use the RNG freely: the loop restores it

    def evaluate(self, step, weights):
        self.hook_calls.append(("evaluate", step))
        torch.randn(100)
        return {"critic_weight_norm": weights["critic"].weight.norm().item()}


def _loop(**overrides) -> LoopConfig:
    base = dict(max_steps=12, batch_size=8, seed=3, device="cpu", threads=1, log_every=1, checkpoint_every=4, progress=False, tensorboard=False)
    return LoopConfig(**{**base, **overrides})


def _run(run_dir: Path, config: ToyConfig = ToyConfig(), on_step=None, stages: list | None = None, **loop_overrides):
    def make(ctx):
        stage = ToyStage(config, ModelChoice(), ctx)
        if stages is not None:
            stages.append(stage)
        return stage

    return train(make, _loop(**loop_overrides), run_dir, config={"toy": True}, on_step=on_step)


def _losses(run_dir: Path) -> list[tuple[int, float, float | None]]:
    return [(r["step"], r["critic/loss"], r.get("generator/loss")) for r in read_metrics(run_dir) if "critic/loss" in r]


def _final_state(run_dir: Path):
    return load_train_state(latest_checkpoint(run_dir))


class Killed(Exception):
    pass


def test_losses_fall_and_schedule_runs_generator_every_third_step(tmp_path):
    result = _run(tmp_path / "run", max_steps=30, log_every=1)
    assert result.finished and result.step == 30
    records = [r for r in read_metrics(tmp_path / "run") if "critic/loss" in r]
    assert [r["step"] for r in records] == list(range(1, 31))
    generator_steps = [r["step"] for r in records if "generator/loss" in r]
    assert generator_steps == [s + 1 for s in range(30) if s % 3 == 0]
    assert records[-1]["critic/loss"] < 0.5 * records[0]["critic/loss"]
    assert records[0]["critic/lr"] == pytest.approx(1e-1 / 2)  # warm-up step 1 of 2
    assert records[-1]["critic/lr"] < 1e-3  # cosine decay to 0 at the last step


def test_killed_run_resumes_exactly(tmp_path):
    _run(tmp_path / "straight")

    def kill_at_10(step, _):
        if step == 10:
            raise Killed

    with pytest.raises(Killed):
        _run(tmp_path / "resumed", on_step=kill_at_10)
    assert latest_checkpoint(tmp_path / "resumed").name == "step_00000008.safetensors"
    result = _run(tmp_path / "resumed")
    assert result.step == 12

    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")
    a, b = _final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed")
    for group in ("modules", "ema"):
        for name, sd in getattr(a, group).items():
            for key, t in sd.items():
                assert torch.equal(t, getattr(b, group)[name][key]), f"{group}.{name}.{key}"
    for name, sd in a.optimizers.items():
        for index, state in sd["state"].items():
            for key, t in state.items():
                assert torch.equal(t, b.optimizers[name]["state"][index][key]), f"optim {name} {index} {key}"
    assert a.extra["batches"] == b.extra["batches"]


def test_hooks_do_not_change_the_trajectory(tmp_path):
    stages: list = []
    _run(tmp_path / "quiet")
    _run(tmp_path / "busy", sample_every=1, eval_every=2, stages=stages)
    assert _losses(tmp_path / "quiet") == _losses(tmp_path / "busy")
    calls = stages[0].hook_calls
    assert ("evaluate", 2) in calls and ("sample", 5) in calls and ("sample", 12) in calls
    assert any("eval/critic_weight_norm" in r for r in read_metrics(tmp_path / "busy"))


def test_ema_is_checkpointed_and_lags_the_weights(tmp_path):
    _run(tmp_path / "run", keep_checkpoints=2)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [8, 12]
    state = _final_state(tmp_path / "run")
    assert set(state.ema) == {"generator"}
    live, ema = state.modules["generator"], state.ema["generator"]
    assert not torch.equal(live["0.weight"], ema["0.weight"])


def test_rerunning_a_finished_run_does_not_train_again(tmp_path):
    _run(tmp_path / "run")
    before = _losses(tmp_path / "run")
    result = _run(tmp_path / "run")
    assert result.finished and result.step == 12
    assert _losses(tmp_path / "run") == before


def test_time_limit_stops_with_a_checkpoint(tmp_path):
    result = _run(tmp_path / "run", max_steps=10_000, time_limit_minutes=1e-9, checkpoint_every=1000)
    assert not result.finished and result.step == 1
    assert latest_checkpoint(tmp_path / "run").name == "step_00000001.safetensors"


class FakeClock:
    """time.time() that advances one minute per training step (counted by on_step)."""

    def __init__(self):
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


def test_time_limit_counts_from_the_process_start_not_the_last_checkpoint(tmp_path, monkeypatch):
    # Checkpoints every 2 steps (2 fake minutes) and a 5-minute limit: a clock reset at each
    # checkpoint would never reach the limit; measured from the start, the check after step 7 (six
    # ticked minutes) is the first past it.
    import trainers.loop as loop_module

    clock = FakeClock()
    monkeypatch.setattr(loop_module.time, "time", clock.time)

    def tick(step, _):
        clock.now += 60.0

    result = _run(tmp_path / "run", max_steps=12, time_limit_minutes=5.0, checkpoint_every=2, on_step=tick)
    assert not result.finished and result.step == 7
    assert latest_checkpoint(tmp_path / "run").name == "step_00000007.safetensors"
    state = _final_state(tmp_path / "run")
    assert state.extra["train_seconds"] == pytest.approx(6 * 60.0)  # steps 1-6 ticked before the step-7 check
    monkeypatch.undo()

    resumed = _run(tmp_path / "run", max_steps=12)
    assert resumed.finished and resumed.step == 12
    _run(tmp_path / "straight", max_steps=12)
    assert _losses(tmp_path / "run") == _losses(tmp_path / "straight")


def test_fastest_precision_uses_bf16_only_where_the_cpu_has_it_and_forced_bf16_warns_without_it(monkeypatch, caplog):
    from trainers import loop

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: False)  # an AVX2 CPU: bf16 emulated, ~20x slower
    assert loop._autocast_dtype("fastest", cpu) is None and loop._autocast_dtype("auto", cpu) is None
    with caplog.at_level("WARNING", logger="trainers.loop"):
        assert loop._autocast_dtype("bf16", cpu) is torch.bfloat16  # asked for explicitly: kept, with a warning
    assert "without native bf16" in caplog.text
    caplog.clear()
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: True)  # AVX512-BF16 / AMX
    with caplog.at_level("WARNING", logger="trainers.loop"):
        assert loop._autocast_dtype("fastest", cpu) is torch.bfloat16 and loop._autocast_dtype("bf16", cpu) is torch.bfloat16
    assert not caplog.text
    assert loop._autocast_dtype("auto", cpu) is None and loop._autocast_dtype("fp32", cpu) is None  # auto: fp32 on a CPU
    assert loop._autocast_dtype("auto", cuda) is torch.bfloat16 and loop._autocast_dtype("fastest", cuda) is torch.bfloat16
    with pytest.raises(ValueError, match="loop.precision must be one of"):
        loop._autocast_dtype("fp16", cpu)
