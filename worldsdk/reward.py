"""Reward and termination prediction: a small recurrent network over a world's latent frames.

A world generates latents before it decodes them, so the reward model reads those latents (the
same normalised space as the latent cache it trains on) plus each frame's action features, and
predicts per latent frame a reward class (one of `RewardConfig.reward_values`, taken from the
recorded data: -1 / 0 / +1 for Pong) and a termination logit. Each frame is seen next to its
difference from the previous frame (a score that changes, a ball that leaves), and a GRU carries
memory across frames and across the world's chunks.

Training (`forward`, a whole sequence from an empty memory) and streaming (`step`, one chunk
against a `RewardState`) are separate entry points over the same layers. `RewardState` is the
per-session memory; it stacks and splits with the batch like `WorldState`, and holds the decoded
predictions of the last chunk.

Events are sparse (in Pong about one reward per 160 frames), so a frame counts as rewarded when
the probability of "not 0" passes `reward_threshold` (tuned on held-out episodes by the training
stage), not by the argmax; the pure helpers at the end score predictions as events, with a
tolerance of a few frames.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from worldsdk.spec import dataclass_from_dict


@dataclass(frozen=True)
class RewardConfig:
    """Shape of the reward model, and the decision rule its predictions follow."""

    latent_channels: int = 8
    latent_height: int = 16
    latent_width: int = 16
    action_dim: int = 0  # action features per frame (without the presence flag); 0 = a prompt-only world
    channels: int = 32  # convolution width over a latent frame
    hidden: int = 128  # frame features and GRU memory
    reward_values: tuple[float, ...] = (-1.0, 0.0, 1.0)  # one class per value; must contain 0
    reward_threshold: float = 0.5  # a frame is rewarded when P(reward != 0) exceeds this
    termination_threshold: float = 0.5  # a frame ends the episode when P(terminated) exceeds this

    def __post_init__(self):
        if 0.0 not in self.reward_values:
            raise ValueError(f"reward_values must contain 0 (no reward), got {self.reward_values}")
        if list(self.reward_values) != sorted(set(self.reward_values)):
            raise ValueError(f"reward_values must be distinct and sorted, got {self.reward_values}")

    @property
    def num_classes(self) -> int:
        return len(self.reward_values)

    @property
    def zero_class(self) -> int:
        return self.reward_values.index(0.0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reward_values"] = list(self.reward_values)
        return d

    @staticmethod
    def from_dict(d: Mapping) -> "RewardConfig":
        return dataclass_from_dict(RewardConfig, d, ("reward_values",))


@dataclass
class RewardState:
    """Reward memory of a batch of sessions, and the predictions for the frames of their last chunk."""

    hidden: torch.Tensor  # (B, hidden) GRU memory
    previous: torch.Tensor  # (B, C, h, w) the last latent frame seen
    started: torch.Tensor  # bool (B,): False until a session has seen a frame
    rewards: torch.Tensor  # float32 (B, F): predicted reward per frame of the last chunk
    terminated: torch.Tensor  # bool (B, F)

    @property
    def batch_size(self) -> int:
        return self.hidden.shape[0]

    @staticmethod
    def stack(states: Sequence["RewardState"]) -> "RewardState":
        """One batched state from several (their last chunks must have the same number of frames, or none:
        a state that has seen no chunk yet gets zero predictions)."""
        frames = {s.rewards.shape[1] for s in states} - {0}
        if len(frames) > 1:
            raise ValueError(f"cannot stack reward states whose last chunks have different lengths {sorted(frames)}")
        width = frames.pop() if frames else 0
        pad = lambda x: x if x.shape[1] == width else x.new_zeros(x.shape[0], width)  # noqa: E731
        return RewardState(*(torch.cat([pad(getattr(s, name)) if name in ("rewards", "terminated") else getattr(s, name)
                                        for s in states]) for name in _STATE_FIELDS))

    def split(self) -> list["RewardState"]:
        """One state per batch item (views of this state's tensors)."""
        return [self.view(b, b + 1) for b in range(self.batch_size)]

    def view(self, start: int, stop: int) -> "RewardState":
        """Items start..stop-1 (views of this state's tensors)."""
        return RewardState(*(getattr(self, name)[start:stop] for name in _STATE_FIELDS))

    def put(self, start: int, part: "RewardState") -> None:
        """Copy a state of one or more sessions into items start.. of this batch, in place (sessions reset or
        stepped in their slots). A part that has seen no chunk yet (no predictions) zeroes its items'
        predictions; a batch that has seen none takes the part's chunk length."""
        stop = start + part.batch_size
        for name in ("hidden", "previous", "started"):
            getattr(self, name)[start:stop] = getattr(part, name)
        frames = part.rewards.shape[1]
        if frames == 0:
            self.rewards[start:stop], self.terminated[start:stop] = 0.0, False
            return
        if self.rewards.shape[1] == 0:
            self.rewards = self.rewards.new_zeros(self.batch_size, frames)
            self.terminated = self.terminated.new_zeros(self.batch_size, frames)
        if frames != self.rewards.shape[1]:
            raise ValueError(f"a last chunk of {frames} frames does not fit a batch of {self.rewards.shape[1]}")
        self.rewards[start:stop], self.terminated[start:stop] = part.rewards, part.terminated


_STATE_FIELDS = ("hidden", "previous", "started", "rewards", "terminated")


class RewardModel(nn.Module):
    """Latent frames (B, T, C, h, w) + action features (B, T, action_dim + 1) -> per-frame reward-class
    logits (B, T, K) and termination logits (B, T). The action features carry a last "real action"
    flag; all zeros means no action (context frames), as in the world model."""

    def __init__(self, config: RewardConfig):
        super().__init__()
        self.config = config
        c = config.channels
        self.frame_encoder = nn.Sequential(
            nn.Conv2d(2 * config.latent_channels, c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c, c, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * c * 16, config.hidden),
        )
        self.action_embed = nn.Linear(config.action_dim + 1, config.hidden) if config.action_dim else None
        self.memory = nn.GRU(config.hidden, config.hidden, batch_first=True)
        self.reward_head = nn.Linear(2 * config.hidden, config.num_classes)
        self.termination_head = nn.Linear(2 * config.hidden, 1)

    # -- the shared layers ------------------------------------------------------------------------
    def _run(self, latents: torch.Tensor, actions: torch.Tensor | None, hidden: torch.Tensor,
             previous: torch.Tensor, started: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> reward logits (B, T, K), termination logits (B, T), new hidden (B, H)."""
        b, t = latents.shape[:2]
        first = torch.where(started[:, None, None, None], previous, latents[:, 0])  # (B, C, h, w)
        before = torch.cat([first[:, None], latents[:, :-1]], dim=1)  # (B, T, C, h, w)
        frames = torch.cat([latents, latents - before], dim=2).flatten(0, 1)  # (B * T, 2C, h, w)
        features = self.frame_encoder(frames).view(b, t, -1)  # (B, T, H)
        if self.action_embed is not None:
            if actions is None:
                actions = latents.new_zeros(b, t, self.config.action_dim + 1)
            features = features + self.action_embed(actions.to(features.dtype))
        features = F.silu(features)
        memory, hidden = self.memory(features, hidden[None].contiguous())  # (B, T, H), (1, B, H)
        joint = torch.cat([memory, features], dim=-1)  # (B, T, 2H)
        return self.reward_head(joint), self.termination_head(joint)[..., 0], hidden[0]

    def empty_state(self, batch_size: int, device: torch.device | str | None = None) -> RewardState:
        """Memory of `batch_size` sessions that have seen nothing yet (their last chunk has no frames)."""
        cfg = self.config
        device = device if device is not None else next(self.parameters()).device
        return RewardState(
            hidden=torch.zeros(batch_size, cfg.hidden, device=device),
            previous=torch.zeros(batch_size, cfg.latent_channels, cfg.latent_height, cfg.latent_width, device=device),
            started=torch.zeros(batch_size, dtype=torch.bool, device=device),
            rewards=torch.zeros(batch_size, 0, device=device),
            terminated=torch.zeros(batch_size, 0, dtype=torch.bool, device=device),
        )

    # -- training -------------------------------------------------------------------------------------
    def forward(self, latents: torch.Tensor, actions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole sequence from an empty memory -> reward logits (B, T, K), termination logits (B, T)."""
        empty = self.empty_state(latents.shape[0], latents.device)
        reward_logits, termination_logits, _ = self._run(latents, actions, empty.hidden, empty.previous, empty.started)
        return reward_logits, termination_logits

    # -- streaming --------------------------------------------------------------------------------------
    def step(self, latents: torch.Tensor, actions: torch.Tensor | None, state: RewardState) -> RewardState:
        """One chunk of latent frames (B, F, C, h, w) with its action features (B, F, action_dim + 1) or
        None -> the new state, whose `rewards` / `terminated` are this chunk's predictions."""
        reward_logits, termination_logits, hidden = self._run(latents, actions, state.hidden, state.previous, state.started)
        rewards, terminated = self.decide(reward_logits, termination_logits)
        return RewardState(hidden=hidden, previous=latents[:, -1], started=torch.ones_like(state.started),
                           rewards=rewards, terminated=terminated)

    def decide(self, reward_logits: torch.Tensor, termination_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits -> rewards (float32, values of `reward_values`) and terminated (bool), by the config's thresholds."""
        cfg = self.config
        values = torch.tensor(cfg.reward_values, device=reward_logits.device)
        probs = reward_logits.float().softmax(-1)
        return (
            values[decide_rewards(probs, cfg.zero_class, cfg.reward_threshold)],
            termination_logits.float().sigmoid() > cfg.termination_threshold,
        )


# ----------------------------------------------------------------------------------------------
# Pure helpers: labels, class weights, decisions and event precision / recall
# ----------------------------------------------------------------------------------------------


def reward_classes(rewards: torch.Tensor, values: Sequence[float]) -> torch.Tensor:
    """Rewards (any shape) -> index of the nearest value in `values` (long, same shape)."""
    table = torch.tensor(values, dtype=torch.float32, device=rewards.device)
    return (rewards.float()[..., None] - table).abs().argmin(-1)


def class_weights(counts: Sequence[int] | np.ndarray, power: float = 1.0) -> torch.Tensor:
    """Loss weight per class, (n / (K n_k)) ** power (power 1: fully balanced, 0: plain); an absent
    class gets the largest weight of the present ones."""
    counts = torch.as_tensor(np.asarray(counts, dtype=np.float64))
    present = counts > 0
    weights = torch.ones_like(counts)
    weights[present] = (counts.sum() / (present.sum() * counts[present])) ** power
    weights[~present] = weights[present].max() if present.any() else 1.0
    return weights.float()


def decide_rewards(probs: torch.Tensor, zero_class: int, threshold: float) -> torch.Tensor:
    """Class probabilities (..., K) -> class indices (...): the most likely non-zero class where
    P(not zero) > threshold, else the zero class."""
    nonzero = probs.clone()
    nonzero[..., zero_class] = -1.0
    best = nonzero.argmax(-1)
    fire = 1.0 - probs[..., zero_class] > threshold
    return torch.where(fire, best, torch.full_like(best, zero_class))


def event_counts(predicted: np.ndarray, target: np.ndarray, tolerance: int = 0) -> tuple[int, int, int]:
    """True positives, false positives and false negatives of non-zero events in one episode.

    `predicted` and `target` are per-frame values (T,) (rewards, or booleans for terminations); a
    predicted event matches an unmatched target event of the same value at most `tolerance` frames
    away (one-to-one, in time order)."""
    predicted, target = np.asarray(predicted, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {predicted.shape} and target {target.shape} differ in shape")
    events = np.flatnonzero(target)
    matched = np.zeros(len(events), dtype=bool)
    tp = fp = 0
    for i in np.flatnonzero(predicted):
        candidates = np.flatnonzero(~matched & (np.abs(events - i) <= tolerance) & (target[events] == predicted[i]))
        if len(candidates):
            matched[candidates[np.argmin(np.abs(events[candidates] - i))]] = True
            tp += 1
        else:
            fp += 1
    return tp, fp, int((~matched).sum())


def precision_recall(tp: int, fp: int, fn: int) -> dict[str, float | int | None]:
    """Precision, recall and F1 from event counts; None where undefined (no predictions, no events)."""
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def episode_scores(predicted: Sequence[np.ndarray], target: Sequence[np.ndarray], tolerance: int = 0) -> dict:
    """`precision_recall` over several episodes (event counts summed)."""
    counts = np.zeros(3, dtype=np.int64)
    for p, t in zip(predicted, target, strict=True):
        counts += event_counts(p, t, tolerance)
    return precision_recall(*(int(c) for c in counts))
