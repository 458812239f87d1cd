"""Train an agent inside a world with PPO, then score it on the real game (tutorial: docs/agents.md).

    # 1. train inside the pong world (8 sessions stepped in one batched forward)
    python examples/ppo_in_world.py train --world pong --num-envs 8 --frames 2000000 --out runs/agents/world
    # 2. the control: the same agent trained for the same number of frames on the real game
    python examples/ppo_in_world.py train --real --world pong --num-envs 8 --frames 2000000 --out runs/agents/real
    # 3. both on the real ALE/Pong-v5, 20 episodes each, beside a random agent
    python examples/ppo_in_world.py evaluate runs/agents/world/policy.safetensors runs/agents/real/policy.safetensors

The agent sees frames through one `worldsdk.agents.ObservationConfig`, in the world and in the real
game alike. `--obs objects` (the default): where the ball and the player's paddle are in each frame
of the chunk (`object_observation`, 5 floats a frame) for a small MLP, cheap enough for the few
frames a world on a CPU gives. `--obs pixels`: the chunk as grey images for a CNN (Atari-scale
budgets: millions of frames). `worldsdk.agents.RealGameEnv` shows the agent the real game exactly
as the recorder showed the world's training data (frameskip 4, minimal action set, area resize,
classic palette, chunks of frames per action). A "frame" below is one recorded frame (4 emulator
frames for Atari); the agent sees `chunk` of them per step.

PPO (Schulman et al. 2017, arXiv:1707.06347, clipped objective) with GAE (Schulman et al. 2016,
arXiv:1506.02438), laid out like CleanRL's ppo_atari.py and with its Atari hyper-parameters. A
policy is saved as one safetensors file whose header holds its JSON config, the real game's settings
and a training summary (`train.json` beside it repeats the summary); the config includes the
observation config, so a loaded policy preprocesses frames as it did in training. Loading never runs code.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from worldsdk import World, checkpoint  # importing worldsdk registers worldsdk/World-v0
from worldsdk.agents import (OBSERVATION_MODES, ObservationConfig, RealGameEnv, evaluate, make_real_env,
                             random_actor)
from worldsdk.data.recorder import game_name
from worldsdk.world import DEFAULT_WORLD

log = logging.getLogger("ppo_in_world")

POLICY_FORMAT = "worldsdk-policy"
POLICY_FORMAT_VERSION = 2  # 2: the policy config holds its observation config (1: pixels only)


# ----------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyConfig:
    """Input (frames per step, height, width) and how the policy sees it, the number of discrete
    actions, and the trunk's widths: `channels` and `hidden` for pixels (a CNN), `mlp` for objects."""

    frames: int
    height: int
    width: int
    actions: int
    observation: ObservationConfig = ObservationConfig("pixels")
    channels: tuple[int, int, int] = (32, 64, 64)
    hidden: int = 256
    mlp: tuple[int, ...] = (64, 64)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The network's input per env: (frames, H, W) for pixels, (frames * 5,) for objects."""
        return self.observation.shape(self.frames, self.height, self.width)

    @staticmethod
    def from_dict(d: dict) -> "PolicyConfig":
        """The inverse of `dataclasses.asdict` (a format-1 file has no observation: pixels)."""
        d = dict(d)
        d["observation"] = ObservationConfig(**d.get("observation", {"mode": "pixels"}))
        d["channels"], d["mlp"] = tuple(d["channels"]), tuple(d.get("mlp", PolicyConfig.mlp))
        return PolicyConfig(**d)


def _init(layer: nn.Module, gain: float = math.sqrt(2)) -> nn.Module:
    """Orthogonal weights, zero bias (CleanRL's layer_init)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def cnn_trunk(config: PolicyConfig) -> tuple[nn.Module, int]:
    """Pixels: three stride-2 convolutions halve the frame thrice (64x64 -> 8x8, 32x32 -> 4x4), so one
    network fits every world resolution; (B, frames, H, W) -> (B, hidden). Returns (trunk, width)."""
    c1, c2, c3 = config.channels
    trunk = nn.Sequential(
        _init(nn.Conv2d(config.frames, c1, 4, stride=2, padding=1)), nn.ReLU(),
        _init(nn.Conv2d(c1, c2, 4, stride=2, padding=1)), nn.ReLU(),
        _init(nn.Conv2d(c2, c3, 4, stride=2, padding=1)), nn.ReLU(),
        nn.Flatten(),
        _init(nn.Linear(c3 * (config.height // 8) * (config.width // 8), config.hidden)), nn.ReLU(),
    )
    return trunk, config.hidden


def mlp_trunk(config: PolicyConfig) -> tuple[nn.Module, int]:
    """Objects: a tanh MLP (CleanRL's ppo.py for low-dimensional observations);
    (B, frames * 5) -> (B, mlp[-1]). Returns (trunk, width)."""
    layers, width = [], config.input_shape[0]
    for out in config.mlp:
        layers += [_init(nn.Linear(width, out)), nn.Tanh()]
        width = out
    return nn.Sequential(*layers), width


class ActorCritic(nn.Module):
    """A trunk shared by the policy logits and the value: `cnn_trunk` for pixels, `mlp_trunk` for
    objects. `observe` is the one preprocessing from frames to the network's input."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        self.trunk, width = (cnn_trunk if config.observation.mode == "pixels" else mlp_trunk)(config)
        self.policy_head = _init(nn.Linear(width, config.actions), gain=0.01)  # near-uniform first policy
        self.value_head = _init(nn.Linear(width, 1), gain=1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, *config.input_shape) -> logits (B, actions), value (B,)."""
        h = self.trunk(x)  # (B, width)
        return self.policy_head(h), self.value_head(h).squeeze(-1)

    def observe(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames (B, chunk, H, W, 3) -> the network's input (B, *config.input_shape) on its device."""
        return torch.from_numpy(self.config.observation.apply(frames)).to(self.value_head.weight.device)

    @torch.no_grad()
    def act(self, frames: np.ndarray, greedy: bool = False, generator: torch.Generator | None = None) -> np.ndarray:
        """uint8 frames (B, chunk, H, W, 3) -> actions int64 (B,): sampled, or the most likely if `greedy`."""
        logits, _ = self(self.observe(frames))
        if greedy:
            return logits.argmax(-1).cpu().numpy()
        return torch.multinomial(logits.softmax(-1).cpu(), 1, generator=generator).squeeze(-1).numpy()


def save_policy(policy: ActorCritic, path: str | Path, real_env: dict, info: dict) -> Path:
    """Weights + config + the real game's settings + `info` in one safetensors file."""
    meta = {"format": POLICY_FORMAT, "format_version": POLICY_FORMAT_VERSION,
            "policy_config": asdict(policy.config), "real_env": real_env, "info": info}
    return checkpoint.atomic_save(policy.state_dict(), meta, path)


def load_policy(path: str | Path, device: str = "cpu") -> tuple[ActorCritic, dict]:
    """-> (the policy in eval mode, its metadata: policy_config, real_env, info)."""
    tensors, meta = checkpoint.read(path, expected_format=POLICY_FORMAT)
    policy = ActorCritic(PolicyConfig.from_dict(meta["policy_config"]))
    policy.load_state_dict(tensors)
    return policy.to(device).eval(), meta


# ----------------------------------------------------------------------------------------------
# PPO
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PPOConfig:
    """CleanRL's Atari settings; one rollout is `rollout_steps` steps of every env."""

    rollout_steps: int = 128
    learning_rate: float = 2.5e-4  # annealed linearly to 0
    gamma: float = 0.99
    gae_lambda: float = 0.95
    minibatches: int = 4
    epochs: int = 4
    clip: float = 0.1
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    max_grad_norm: float = 0.5


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
        done: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimates (Schulman et al. 2016, eq. 16) over (T, N) tensors.

    `next_values[t]` is the value of the observation step t returned (the episode's last one when it
    ended). A terminated episode is not bootstrapped, a truncated one is; neither chains into the
    next step, which starts a new episode."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_values[t] * (1.0 - terminated[t]) - values[t]
        running = delta + gamma * lam * (1.0 - done[t]) * running
        advantages[t] = running
    return advantages


def ppo_loss(policy: ActorCritic, obs: torch.Tensor, actions: torch.Tensor, old_logp: torch.Tensor,
             advantages: torch.Tensor, returns: torch.Tensor, cfg: PPOConfig) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate + value + entropy losses of one minibatch -> (loss, logs)."""
    logits, values = policy(obs)
    dist = torch.distributions.Categorical(logits=logits)
    logp = dist.log_prob(actions)
    ratio = (logp - old_logp).exp()
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    policy_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - cfg.clip, 1 + cfg.clip)).mean()
    value_loss = 0.5 * (returns - values).pow(2).mean()
    entropy = dist.entropy().mean()
    loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
    logs = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item(),
            "clip_fraction": ((ratio - 1).abs() > cfg.clip).float().mean().item()}
    return loss, logs


def train(env: gym.vector.VectorEnv, policy: ActorCritic, frames: int, cfg: PPOConfig, seed: int = 0,
          reset_options: dict | None = None, on_update=None, progress: bool = True) -> dict:
    """Train `policy` on the vector env until it has seen `frames` frames. Returns a summary.

    The env autoresets on the step after an episode ends (Gymnasium's next-step mode): that step's
    action is ignored, so its transition is left out of the loss. `on_update(update, summary)` is
    called after every update (to save the policy)."""
    if env.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP) != gym.vector.AutoresetMode.NEXT_STEP:
        raise ValueError("train() expects a vector env with next-step autoreset")
    device = policy.value_head.weight.device
    n, T = env.num_envs, cfg.rollout_steps
    chunk = env.single_observation_space.shape[0]
    updates = max(1, math.ceil(frames / (T * n * chunk)))
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=1e-5)

    obs_shape = policy.config.input_shape
    buf_obs = torch.zeros((T, n, *obs_shape), device=device)
    buf_actions = torch.zeros((T, n), dtype=torch.long, device=device)
    buf_logp, buf_values, buf_next_values, buf_rewards, buf_terminated, buf_done, buf_valid = (
        torch.zeros((T, n), device=device) for _ in range(7))

    frames_obs, _ = env.reset(seed=seed, options=reset_options)
    obs = policy.observe(frames_obs)
    prev_done = torch.zeros(n, device=device)
    episode_return, episode_returns = np.zeros(n), []
    reward_predicted = False
    env_time, steps, start = 0.0, 0, time.perf_counter()
    history, logs = [], {}
    bar = tqdm(total=updates * T * n * chunk, unit="frame", unit_scale=True, disable=not progress, desc="ppo")
    for update in range(updates):
        for group in optimizer.param_groups:
            group["lr"] = cfg.learning_rate * (1.0 - update / updates)
        policy.eval()
        for t in range(T):
            with torch.no_grad():
                logits, value = policy(obs)
                dist = torch.distributions.Categorical(logits=logits)
                action = dist.sample()
            buf_obs[t], buf_actions[t], buf_logp[t], buf_values[t] = obs, action, dist.log_prob(action), value
            buf_valid[t] = 1.0 - prev_done  # the step after an episode's end only resets the env
            tick = time.perf_counter()
            frames_obs, reward, terminated, truncated, info = env.step(action.cpu().numpy())
            env_time += time.perf_counter() - tick
            steps += n
            reward_predicted |= bool(np.any(info.get("reward_predicted", False)))
            obs = policy.observe(frames_obs)
            done = terminated | truncated
            buf_rewards[t] = torch.as_tensor(np.clip(reward, -1.0, 1.0), dtype=torch.float32, device=device)
            buf_terminated[t] = torch.as_tensor(terminated, dtype=torch.float32, device=device)
            buf_done[t] = prev_done = torch.as_tensor(done, dtype=torch.float32, device=device)
            episode_return += reward  # 0 on a reset step
            for i in np.flatnonzero(done):
                episode_returns.append(float(episode_return[i]))
                episode_return[i] = 0.0
            bar.update(n * chunk)
        if update == 0 and not reward_predicted and not np.any(buf_rewards.cpu().numpy()):
            log.warning("no reward in the first rollout (a world without a reward model gives 0; "
                        "info['reward_predicted'] is False): the agent has nothing to learn from")

        with torch.no_grad():  # the observation step t returned is the one step t + 1 starts from
            buf_next_values[:-1], buf_next_values[-1] = buf_values[1:], policy(obs)[1]
        advantages = gae(buf_rewards, buf_values, buf_next_values, buf_terminated, buf_done, cfg.gamma, cfg.gae_lambda)
        returns = advantages + buf_values
        valid = buf_valid.reshape(-1) > 0
        flat = {"obs": buf_obs.reshape(T * n, *obs_shape)[valid], "actions": buf_actions.reshape(-1)[valid],
                "old_logp": buf_logp.reshape(-1)[valid], "advantages": advantages.reshape(-1)[valid],
                "returns": returns.reshape(-1)[valid]}
        size = int(valid.sum())
        policy.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(size, device=device)
            for idx in order.chunk(cfg.minibatches):
                loss, logs = ppo_loss(policy, **{k: v[idx] for k, v in flat.items()}, cfg=cfg)
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                optimizer.step()

        recent = episode_returns[-20:]
        history.append({"frames": steps * chunk, "episodes": len(episode_returns),
                        "return_mean_last20": float(np.mean(recent)) if recent else None, **logs})
        bar.set_postfix(env_fps=f"{steps * chunk / max(env_time, 1e-9):.0f}",
                        ret=f"{np.mean(recent):.1f}" if recent else "-", ent=f"{logs['entropy']:.2f}")
        summary = _summary(steps, chunk, env_time, time.perf_counter() - start, episode_returns, history, reward_predicted)
        if on_update is not None:
            on_update(update, summary)
    bar.close()
    return summary


def _summary(steps, chunk, env_time, wall, episode_returns, history, reward_predicted) -> dict:
    return {
        "frames": steps * chunk, "env_steps": steps, "wall_s": wall,
        "env_frames_per_s": steps * chunk / max(env_time, 1e-9),  # env.step alone: what the agent sees
        "frames_per_s": steps * chunk / max(wall, 1e-9),  # with the policy's forwards and the updates
        "episodes": len(episode_returns), "reward_predicted": reward_predicted, "history": history,
    }


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def make_training_env(args, world: World | None) -> tuple[gym.vector.VectorEnv, RealGameEnv]:
    """The vector env to train on (the world's, or the real game's with `--real`) and the real game
    the policy will be scored on; their observation and action spaces are checked equal. With
    `--real` and no world the real game has the dataset's resolution (else 64x64) and chunks of 2."""
    limit = {"max_episode_steps": args.max_episode_steps} if args.max_episode_steps else {}
    real = make_real_env(world, dataset=args.dataset, env_id=args.game)
    if args.real:
        env = gym.vector.SyncVectorEnv(
            [lambda: make_real_env(world, dataset=args.dataset, env_id=args.game, **limit)] * args.num_envs,
            autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
        )
    else:
        env = gym.make_vec("worldsdk/World-v0", num_envs=args.num_envs, vectorization_mode="vector_entry_point",
                           world=world, **limit)
    if env.single_observation_space != real.observation_space or env.single_action_space != real.action_space:
        raise ValueError(f"the world's spaces {env.single_observation_space}, {env.single_action_space} differ from the "
                         f"real game's {real.observation_space}, {real.action_space}")
    return env, real.unwrapped


def cmd_train(args) -> dict:
    torch.manual_seed(args.seed)
    world_name = args.world or DEFAULT_WORLD
    # --real needs a world only for its resolution and chunk
    world = None if args.real and args.world is None else World.load(world_name, device=args.device)
    env, real = make_training_env(args, world)
    chunk, height, width, _ = env.single_observation_space.shape
    # the real game's name and palette: the world, trained on its recordings, shows the same
    observation = ObservationConfig(args.obs, game=game_name(real.env_id), style=real.style)
    policy = ActorCritic(PolicyConfig(chunk, height, width, int(env.single_action_space.n), observation)).to(args.device)
    cfg = PPOConfig(rollout_steps=args.rollout_steps, learning_rate=args.learning_rate)
    out = Path(args.out)
    trained_in = f"real:{real.env_id}" if args.real else f"world:{world_name}"
    info = {"trained_in": trained_in, "world": None if world is None else str(world_name), "obs": args.obs,
            "num_envs": args.num_envs, "seed": args.seed, "ppo": asdict(cfg)}
    save_every = max(1, args.save_every)

    def on_update(update: int, summary: dict) -> None:
        if (update + 1) % save_every == 0:
            save_policy(policy, out / "policy.safetensors", real.settings(), {**info, "frames": summary["frames"]})

    reset_options = {"start": args.start} if args.start and not args.real else None
    summary = train(env, policy, args.frames, cfg, seed=args.seed, reset_options=reset_options,
                    on_update=on_update, progress=not args.quiet)
    env.close()
    path = save_policy(policy, out / "policy.safetensors", real.settings(), {**info, "frames": summary["frames"]})
    (out / "train.json").write_text(json.dumps({**info, **summary}, indent=1))
    print(f"trained in {trained_in} ({args.obs}): {summary['frames']} frames in {summary['wall_s']:.0f} s; env frames/s "
          f"{summary['env_frames_per_s']:.0f} ({args.num_envs} envs), overall {summary['frames_per_s']:.0f}; "
          f"{summary['episodes']} episodes; policy -> {path}")
    return summary


def cmd_evaluate(args) -> dict:
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    rows, real_settings = {}, None
    for path in args.policies:
        policy, meta = load_policy(path, device=args.device)
        real_settings = real_settings or meta["real_env"]
        env = _real_env(meta["real_env"], args.max_episode_steps)
        act = lambda obs, p=policy: int(p.act(obs[None], greedy=args.greedy, generator=generator)[0])  # noqa: E731
        rows[str(path)] = {"trained_in": meta["info"].get("trained_in"), "frames": meta["info"].get("frames"),
                           "obs": policy.config.observation.mode,
                           "scores": _play(act, env, args, desc=Path(path).parent.name)}
    if not args.no_random:
        env = _real_env(real_settings or RealGameEnv().settings(), args.max_episode_steps)
        rows["random"] = {"trained_in": "-", "frames": 0, "obs": "-",
                          "scores": _play(random_actor(env.action_space, args.seed), env, args, desc="random")}
    print(f"{'agent':<48} {'trained in':<22} {'obs':<8} {'frames':>10} {'mean':>7} {'std':>6} {'min':>6} {'max':>6}")
    for name, row in rows.items():
        s = np.asarray(row["scores"])
        print(f"{name:<48} {row['trained_in']:<22} {row['obs']:<8} {row['frames'] or 0:>10} {s.mean():>7.2f} {s.std():>6.2f} "
              f"{s.min():>6.1f} {s.max():>6.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"episodes": args.episodes, "seed": args.seed, "greedy": args.greedy,
                                               "real_env": real_settings, "agents": rows}, indent=1))
    return rows


def _real_env(settings: dict, max_episode_steps: int | None) -> gym.Env:
    env = RealGameEnv(**{**settings, "size": tuple(settings["size"])})
    return gym.wrappers.TimeLimit(env, max_episode_steps) if max_episode_steps else env


def _play(act, env: gym.Env, args, desc: str) -> list[float]:
    with tqdm(total=args.episodes, unit="episode", desc=desc, disable=args.quiet) as bar:
        scores = evaluate(act, env, args.episodes, seed=args.seed,
                          progress=lambda e, score: (bar.update(1), bar.set_postfix(score=score)))
    env.close()
    return scores.tolist()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train a PPO agent in a world (or on the real game with --real)")
    tr.add_argument("--world", default=None, help=f"world name, preset or .safetensors path (default {DEFAULT_WORLD!r}); its "
                    "resolution and chunk set the agent's view; with --real only those are used, and none is needed")
    tr.add_argument("--real", action="store_true", help="train on the real game instead, seen through the same preprocessing")
    tr.add_argument("--obs", choices=OBSERVATION_MODES, default="objects",
                    help="what the agent sees: objects (ball and paddle positions, an MLP) or pixels (grey frames, a CNN)")
    tr.add_argument("--game", default=None, help="the real game's Gymnasium id (default: the dataset's, else ALE/Pong-v5)")
    tr.add_argument("--dataset", default=None, help="the world's dataset directory: its game, frameskip and env kwargs")
    tr.add_argument("--num-envs", type=int, default=8)
    tr.add_argument("--frames", type=int, default=2_000_000, help="frames the agent sees in all (num_envs x steps x chunk)")
    tr.add_argument("--rollout-steps", type=int, default=PPOConfig.rollout_steps)
    tr.add_argument("--learning-rate", type=float, default=PPOConfig.learning_rate, help="annealed linearly to 0")
    tr.add_argument("--max-episode-steps", type=int, default=None, help="episode limit in steps (world default: 1000)")
    tr.add_argument("--start", default=None, help='reset option "start" passed to the world env (e.g. "real")')
    tr.add_argument("--save-every", type=int, default=50, help="save the policy every N updates")
    tr.add_argument("--out", default="runs/agents/world")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="cpu")
    tr.add_argument("--quiet", action="store_true")
    ev = sub.add_parser("evaluate", help="score saved policies (and a random agent) on the real game")
    ev.add_argument("policies", nargs="*", help="policy.safetensors files")
    ev.add_argument("--episodes", type=int, default=20)
    ev.add_argument("--max-episode-steps", type=int, default=None, help="cap each episode (steps of one chunk)")
    ev.add_argument("--greedy", action="store_true", help="take the most likely action instead of sampling")
    ev.add_argument("--no-random", action="store_true", help="skip the random agent")
    ev.add_argument("--json", default=None, help="write the scores here")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.command == "train":
        return cmd_train(args)
    if not args.policies and args.no_random:
        raise SystemExit("nothing to evaluate: give policies or drop --no-random")
    return cmd_evaluate(args)


if __name__ == "__main__":
    main()
