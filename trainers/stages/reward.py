"""stage=reward: a reward and termination model for a world, trained on the recorded rewards.

Input: a world file (any stage's `world.safetensors`), the latent cache of the recordings (made
with that world's autoencoder, so real latents live where the world's generated ones do; the cache
carries each frame's reward and `terminated`), and optionally the recordings themselves, from
which a small bank of real starts ships with the world. The model (`worldsdk.reward.RewardModel`)
reads clips of real latents with their actions from an empty memory, as a session does after a
reset.

Objective: class-weighted cross-entropy over the reward classes plus weighted BCE for episode ends.
Rewards are sparse (Pong: 369 in 60,060 frames), so class k weighs (n / (K n_k)) ** class_balance,
and episode ends weigh (negatives / positives) ** termination_balance. Latents get Gaussian noise
of a random std up to `noise_std`, so that the model tolerates a generated latent's small errors;
actions are dropped at random, since a real start's context frames come without them.

At the end the decision threshold on P(reward != 0) (and on P(terminated)) is chosen for the best
event F1 on the validation episodes, and precision / recall are measured on the test episodes by
streaming each whole episode from an empty memory, exactly as the env does. Outputs:
`<run_dir>/world.safetensors` (the input world plus the reward model, and the start bank when
`data` is given), `<run_dir>/reward_metrics.json` and `<run_dir>/reward_pr.png`.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from torch.utils.data import Dataset

from ..stage import ModelChoice, OptimizerConfig, RunContext, Stage, Update
from . import worlds
from worldsdk.autoencoder import FrameAutoencoder
from worldsdk.data.datasets import collate_clips
from worldsdk.data.latents import LatentClipDataset, autoencoder_fingerprint
from worldsdk.reward import (
    RewardConfig,
    RewardModel,
    class_weights,
    decide_rewards,
    episode_scores,
    reward_classes,
)
from worldsdk.starts import build_start_bank

log = logging.getLogger(__name__)

METRICS_FILE = "reward_metrics.json"
FIGURE_FILE = "reward_pr.png"
MAX_REWARD_CLASSES = 16
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 1.0, 0.05))


@dataclass(frozen=True)
class RewardStageConfig:
    """The `stage:` section for stage=reward (mirrored by conf/stage/reward.yaml)."""

    name: str = "reward"
    world: str = ""  # the world file to add the reward model to
    latents: str = ""  # latent cache of the recordings, made with that world's autoencoder
    data: str | None = None  # recordings: when given, a bank of real starts from them ships with the world
    clip_frames: int = 32  # latent frames per training sequence
    channels: int = 32  # RewardConfig.channels
    hidden: int = 128  # RewardConfig.hidden
    reward_values: tuple[float, ...] = ()  # () = the distinct rewards of the training episodes (and 0)
    class_balance: float = 0.5  # 1: fully class-balanced loss, 0: plain cross-entropy
    termination_balance: float = 0.5
    termination_weight: float = 1.0  # weight of the termination BCE beside the reward cross-entropy
    noise_std: float = 0.2  # latents get N(0, s^2) noise, s ~ U(0, noise_std) per clip
    p_drop_action: float = 0.2  # probability of hiding a clip's actions (as for context frames)
    tolerance: int = 2  # frames of slack when matching predicted to recorded events
    start_count: int = 16  # entries of the start bank (with `data`)
    start_frames: int = 0  # frames per entry; 0 = the world's clip length less one chunk
    start_seed: int = 0
    ema_decay: float = 0.0  # 0: no EMA
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(
        lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01, grad_clip=1.0, warmup_steps=50, decay="cosine", min_lr_ratio=0.05))


@dataclass
class _Episode:
    """One whole held-out episode: latents (T, C, h, w), action features with the flag (T, A + 1), labels."""

    latents: torch.Tensor
    actions: torch.Tensor
    rewards: np.ndarray
    terminated: np.ndarray


class RewardStage(Stage):
    name = "reward"
    config_class = RewardStageConfig

    def __init__(self, config: RewardStageConfig, model: ModelChoice, ctx: RunContext):
        self.config, self.ctx = config, ctx
        self.world = worlds.load_world(config.world, "a world to add the reward model to (stage.world=...)")
        if not isinstance(self.world.autoencoder, FrameAutoencoder):
            raise ValueError("stage=reward needs a world with a per-frame autoencoder (a one-file world)")
        if config.clip_frames < 2:
            raise ValueError(f"stage.clip_frames must be >= 2, got {config.clip_frames}")
        self.data = worlds.open_latent_clips(config.latents, config.clip_frames)
        mc = self.world.model.config
        self._check_cache(mc)
        values = config.reward_values or _distinct_rewards(self.data)
        self.reward_config = RewardConfig(
            latent_channels=mc.latent_channels, latent_height=mc.latent_height, latent_width=mc.latent_width,
            action_dim=mc.action_dim, channels=config.channels, hidden=config.hidden,
            reward_values=tuple(sorted({float(v) for v in values} | {0.0})),
        )
        self.reward = RewardModel(self.reward_config).to(ctx.device)
        rewards = np.concatenate([e.rewards for e in self.data.episodes])
        counts = np.bincount(reward_classes(torch.from_numpy(rewards), self.reward_config.reward_values).numpy(),
                             minlength=self.reward_config.num_classes)
        self.class_weights = class_weights(counts, config.class_balance).to(ctx.device)
        ends = int(sum(e.terminated.sum() for e in self.data.episodes))
        self.termination_pos_weight = torch.tensor(((len(rewards) - ends) / ends) ** config.termination_balance if ends else 1.0,
                                                   device=ctx.device)
        log.info("reward classes %s with %s frames (loss weights %s); %d episode ends in %d frames",
                 self.reward_config.reward_values, counts.tolist(), [round(w, 3) for w in self.class_weights.tolist()], ends, len(rewards))
        self._heldout: dict[str, list[_Episode]] = {}

    def _check_cache(self, mc) -> None:
        """The cache must hold this world's latents: same autoencoder, shape and action features."""
        index = self.data.index
        if index.get("autoencoder", {}).get("fingerprint") != autoencoder_fingerprint(self.world.autoencoder):
            raise ValueError(f"latent cache {self.config.latents} was made by another autoencoder than the world "
                             f"{self.config.world}'s: its latents would not match the world's (a cache built before "
                             "fingerprints covered only the encoder is rebuilt by build_latent_cache with the "
                             "world's autoencoder, to the same latents)")
        shape = (mc.latent_channels, mc.latent_height, mc.latent_width)
        if tuple(self.data.latent_shape) != shape:
            raise ValueError(f"latent cache holds {tuple(self.data.latent_shape)} latents, the world makes {shape}")
        if mc.action_dim and self.data.meta.action_spec.feature_dim != mc.action_dim:
            raise ValueError(f"the recordings' actions give {self.data.meta.action_spec.feature_dim} features, "
                             f"the world expects {mc.action_dim}")

    # -- the Stage protocol --------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"reward": self.reward}

    def updates(self) -> list[Update]:
        return [Update("reward", self.loss, modules=("reward",), optimizer=self.config.optimizer)]

    def dataset(self) -> Dataset:
        return self.data

    def collate(self, items: list):
        return collate_clips(items)

    def ema_decays(self) -> dict[str, float]:
        return {"reward": self.config.ema_decay} if self.config.ema_decay > 0 else {}

    # -- the objective -----------------------------------------------------------------------------------
    def loss(self, batch, step: int) -> tuple[torch.Tensor, dict]:
        c = self.config
        latents = batch["latents"].float()  # (B, T, C, h, w)
        b = latents.shape[0]
        sigma = torch.rand(b, device=latents.device) * c.noise_std
        latents = latents + sigma.view(b, 1, 1, 1, 1) * torch.randn_like(latents)
        actions = _with_flag(batch["action_features"].float())  # (B, T, A + 1)
        keep = (torch.rand(b, device=latents.device) >= c.p_drop_action).float()
        actions = actions * keep.view(b, 1, 1)
        reward_logits, termination_logits = self.reward(latents, actions if self.reward_config.action_dim else None)
        # Frame 0 of a clip has no previous frame to compare with; its label is not learnable there.
        targets = reward_classes(batch["rewards"][:, 1:], self.reward_config.reward_values)
        reward_loss = F.cross_entropy(reward_logits[:, 1:].flatten(0, 1).float(), targets.flatten(), weight=self.class_weights)
        ends = batch["terminated"][:, 1:].float()
        termination_loss = F.binary_cross_entropy_with_logits(termination_logits[:, 1:].float(), ends,
                                                              pos_weight=self.termination_pos_weight)
        with torch.no_grad():
            predicted = reward_logits[:, 1:].argmax(-1)
            events = targets != self.reward_config.zero_class
            hits = (predicted == targets) & events
            logs = {"reward_ce": reward_loss.detach(), "termination_bce": termination_loss.detach(),
                    "event_frames": events.float().sum()}
            if events.any():
                logs["event_accuracy"] = hits.float().sum() / events.float().sum()
        return reward_loss + c.termination_weight * termination_loss, logs

    # -- held-out episodes ---------------------------------------------------------------------------------
    def heldout(self, split: str) -> list[_Episode]:
        """Every whole episode of a split, read once."""
        if split not in self._heldout:
            dataset = LatentClipDataset(self.config.latents, 1, split=split)
            episodes = []
            for a in dataset.episodes:
                with safe_open(dataset.root / a.record.shard, framework="pt") as f:
                    latents = f.get_tensor("latents").float()
                episodes.append(_Episode(latents, _with_flag(torch.from_numpy(a.action_features).float()),
                                         np.asarray(a.rewards, np.float32), np.asarray(a.terminated, bool)))
            self._heldout[split] = episodes
        return self._heldout[split]

    def _probabilities(self, model: RewardModel, episodes: list[_Episode]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per episode: reward-class probabilities (T, K) and P(terminated) (T,), streamed from an empty
        memory over the whole episode (equal to stepping it chunk by chunk, as the env does)."""
        out, device = [], next(model.parameters()).device
        for e in episodes:
            actions = e.actions[None].to(device) if model.config.action_dim else None
            reward_logits, termination_logits = model(e.latents[None].to(device), actions)
            out.append((reward_logits[0].float().softmax(-1).cpu().numpy(), termination_logits[0].float().sigmoid().cpu().numpy()))
        return out

    def _scores(self, config: RewardConfig, episodes: list[_Episode], probs, tolerance: int) -> dict:
        values = np.asarray(config.reward_values, dtype=np.float32)
        predicted = [values[decide_rewards(torch.from_numpy(p), config.zero_class, config.reward_threshold).numpy()] for p, _ in probs]
        ends = [t > config.termination_threshold for _, t in probs]
        scores = {"reward": episode_scores(predicted, [e.rewards for e in episodes], tolerance),
                  "termination": episode_scores(ends, [e.terminated for e in episodes], tolerance)}
        for v in config.reward_values:
            if v != 0:
                scores[f"reward={v:g}"] = episode_scores([np.where(p == v, p, 0) for p in predicted],
                                                         [np.where(e.rewards == v, e.rewards, 0) for e in episodes], tolerance)
        return scores

    def _eval_split(self) -> str:
        for split in ("test", "val", "train"):
            if self.heldout(split):
                if split == "train":
                    log.warning("no held-out episodes in %s: reward metrics are measured on training episodes", self.config.latents)
                return split
        raise ValueError(f"latent cache {self.config.latents} has no episodes")

    def evaluate(self, step: int, weights: Mapping[str, nn.Module]) -> dict[str, float]:
        model = weights["reward"]
        episodes = self.heldout(self._eval_split())
        scores = self._scores(model.config, episodes, self._probabilities(model, episodes), self.config.tolerance)
        return {f"{what}/{key}": float(v) for what in ("reward", "termination") for key, v in scores[what].items()
                if key in ("precision", "recall", "f1") and v is not None}

    def _tuned(self, model: RewardModel) -> RewardConfig:
        """The config with the thresholds of the best event F1 on the validation episodes (unchanged without any)."""
        config, episodes = model.config, self.heldout("val")
        if not episodes:
            log.warning("no validation episodes: keeping the reward thresholds at %.2f / %.2f",
                        config.reward_threshold, config.termination_threshold)
            return config
        probs = self._probabilities(model, episodes)
        best = {}
        for what, key in (("reward", "reward_threshold"), ("termination", "termination_threshold")):
            f1s = [(self._scores(replace(config, **{key: t}), episodes, probs, self.config.tolerance)[what]["f1"], t) for t in THRESHOLDS]
            f1s = [(f, t) for f, t in f1s if f is not None]
            if f1s:  # ties: the middle of the best range, the margin both ways for generated latents
                top = max(f for f, _ in f1s)
                tied = [t for f, t in f1s if f >= top - 1e-9]
                best[key] = tied[len(tied) // 2]
        return replace(config, **best)

    def finish(self, step: int, weights: Mapping[str, nn.Module]) -> dict[str, float]:
        model = copy.deepcopy(weights["reward"]).float().cpu().eval()
        model.config = self._tuned(model)
        split = self._eval_split()
        episodes = self.heldout(split)
        probs = self._probabilities(model, episodes)
        exact = self._scores(model.config, episodes, probs, 0)
        loose = self._scores(model.config, episodes, probs, self.config.tolerance)
        tolerance = self.config.tolerance
        curve = [{"threshold": t, **self._scores(replace(model.config, reward_threshold=t), episodes, probs, tolerance)["reward"]}
                 for t in THRESHOLDS]
        report = {
            "step": step, "split": split, "episodes": len(episodes), "frames": int(sum(len(e.rewards) for e in episodes)),
            "reward_values": list(model.config.reward_values), "reward_threshold": model.config.reward_threshold,
            "termination_threshold": model.config.termination_threshold, "tolerance": self.config.tolerance,
            "exact": exact, f"within_{self.config.tolerance}_frames": loose, "threshold_curve": curve,
        }
        run_dir = self.ctx.run_dir
        (run_dir / METRICS_FILE).write_text(json.dumps(report, indent=2) + "\n")
        _plot_curve(run_dir / FIGURE_FILE, curve, model.config.reward_threshold, split, self.config.tolerance)
        world = self.world
        world.set_reward_model(model)
        if self.config.data:
            frames = self.config.start_frames or _default_start_frames(world)
            bank, prompts = build_start_bank(self.config.data, self.config.start_count, frames, seed=self.config.start_seed)
            world.set_start_bank(bank, prompts)
        summary = {"step": step, "split": split, "reward_threshold": model.config.reward_threshold,
                   "precision": loose["reward"]["precision"], "recall": loose["reward"]["recall"], "config": asdict(self.config)}
        path = world.save(run_dir / worlds.WORLD_FILE, info={"reward": summary})
        log.info("wrote %s and %s: reward precision %s, recall %s (within %d frames, %s split)", path, METRICS_FILE,
                 _fmt(loose["reward"]["precision"]), _fmt(loose["reward"]["recall"]), self.config.tolerance, split)
        return {f"{what}/{key}": float(v) for what in ("reward", "termination") for key, v in loose[what].items()
                if key in ("precision", "recall", "f1") and v is not None}


def _with_flag(features: torch.Tensor) -> torch.Tensor:
    """Action features (..., A) -> (..., A + 1) with the world's "real action" flag set."""
    return torch.cat([features, torch.ones_like(features[..., :1])], dim=-1)


def _distinct_rewards(dataset: LatentClipDataset) -> list[float]:
    values = sorted({float(v) for e in dataset.episodes for v in np.unique(e.rewards)} | {0.0})
    if len(values) > MAX_REWARD_CLASSES:
        raise ValueError(f"the recordings have {len(values)} distinct rewards; give the classes with "
                         f"stage.reward_values=[...] (rewards are matched to the nearest)")
    return values


def _default_start_frames(world) -> int:
    """Enough context to fill the world's clip but one chunk, in frames (at least one chunk)."""
    mc = world.model.config
    latent = max(mc.frames_per_chunk, mc.latent_frames_max - mc.frames_per_chunk)
    return latent * world.autoencoder.config.temporal_stride


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _plot_curve(path: Path, curve: list[dict], chosen: float, split: str, tolerance: int) -> None:
    """Precision and recall of reward events against the decision threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = [p["threshold"] for p in curve]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for key in ("precision", "recall"):
        ax.plot(thresholds, [np.nan if p[key] is None else p[key] for p in curve], marker=".", label=key)
    ax.axvline(chosen, color="grey", linestyle="--", linewidth=1, label=f"chosen {chosen:.2f}")
    ax.set(xlabel="threshold on P(reward != 0)", ylim=(0, 1.02),
           title=f"reward events, {split} episodes (within {tolerance} frames)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
