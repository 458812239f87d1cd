"""World: model + frame autoencoder + text encoder + KV cache -> reset / step / set_prompt.

A `WorldState` is one or more live sessions (batch items): their KV cache (with the prompt's
cross-attention K/V), prompts, noise generators and step counts. It is explicit state, passed in
and returned; `World` itself holds only weights. The simple single-session API (`reset`, `step`,
`set_prompt`) keeps one state on the World for convenience.

One step (per batch, one forward per pass): action features per latent frame -> 4 denoising
passes against the cache (predict x0, re-noise with fresh noise) -> one commit pass at t = 0 that
appends the clean chunk's K/V -> autoencoder decode -> uint8 frames (B, chunk, H, W, 3).

Frames are decoded through a `worldsdk.codec.VideoCodec`: the per-frame `FrameAutoencoder` of the
small worlds, or Wan's causal video VAE (`worldsdk.wan.WanVAE`), whose per-session decoder state
rides in `WorldState.decoders` so each step decodes only its new chunk.

Optional parts, stored in the same file: a `RewardModel` (`worldsdk.reward`), which reads every
step's generated latents before they are decoded and keeps its per-session memory in
`WorldState.rewards` (`predicted_rewards` reads its predictions for the last chunk); and a bank of
real starts (`start_frames` uint8 (N, T, H, W, 3) with one prompt each, `worldsdk.starts`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from worldsdk import checkpoint
from worldsdk.autoencoder import AUTOENCODER_PRESETS, AutoencoderConfig, FrameAutoencoder
from worldsdk.codec import VideoCodec, as_codec
from worldsdk.config import MODEL_PRESETS, ModelConfig, WorldSpec, preset
from worldsdk.diffusion import sample_few_step, sigma_to_t
from worldsdk.model import ByteTextConfig, ByteTextEncoder, CausalDiT, KVCache, TextEncoder
from worldsdk.reward import RewardConfig, RewardModel, RewardState

log = logging.getLogger(__name__)

SHIPPED_WORLDS_DIR = Path(__file__).parent / "worlds"
START_FRAMES_TENSOR = "starts.frames"  # the bank of real starts inside a world file


def shipped_worlds() -> list[str]:
    """Names of the trained worlds that ship inside the package."""
    return sorted(p.stem for p in SHIPPED_WORLDS_DIR.glob("*.safetensors"))


DEFAULT_WORLD = "pong"


def default_world() -> str:
    """What `worldsdk demo`, `play` and `serve` open by default: the shipped pong world, else the first
    shipped world, else the `small` preset (random weights)."""
    worlds = shipped_worlds()
    if DEFAULT_WORLD in worlds:
        return DEFAULT_WORLD
    return worlds[0] if worlds else "small"


def _fresh_seed() -> int:
    return int(np.random.SeedSequence().generate_state(1)[0])


@dataclass
class WorldState:
    """Live sessions of a world: one KV cache batch plus per-item prompt, noise generator, step count,
    video-decoder state (None for a per-frame autoencoder) and reward memory (None without a reward model)."""

    cache: KVCache
    prompts: list[str]
    generators: list[torch.Generator]
    steps: list[int]
    seeds: list[int]
    decoders: list[Any] = field(default_factory=list)
    rewards: RewardState | None = None

    def __post_init__(self):
        if not self.decoders:
            self.decoders = [None] * len(self.prompts)

    @property
    def batch_size(self) -> int:
        return len(self.prompts)

    @staticmethod
    def stack(states: Sequence["WorldState"]) -> "WorldState":
        """One batched state from several (their caches and decoder states are copied into one batch)."""
        return WorldState(
            cache=KVCache.stack([s.cache for s in states]),
            prompts=[p for s in states for p in s.prompts],
            generators=[g for s in states for g in s.generators],
            steps=[n for s in states for n in s.steps],
            seeds=[n for s in states for n in s.seeds],
            decoders=[None if d is None else d.copy() for s in states for d in s.decoders],
            rewards=None if any(s.rewards is None for s in states) else RewardState.stack([s.rewards for s in states]),
        )

    def split(self) -> list["WorldState"]:
        """One state per batch item (sharing this state's buffers)."""
        rewards = [None] * self.batch_size if self.rewards is None else self.rewards.split()
        return [
            WorldState(cache=c, prompts=[self.prompts[b]], generators=[self.generators[b]], steps=[self.steps[b]],
                       seeds=[self.seeds[b]], decoders=[self.decoders[b]], rewards=rewards[b])
            for b, c in enumerate(self.cache.split())
        ]


class World:
    """A playable world. `World.load(name_or_path)` opens a trained one; `World.from_preset` a random one."""

    def __init__(self, model: CausalDiT, autoencoder: FrameAutoencoder | VideoCodec, text_encoder: TextEncoder,
                 spec: WorldSpec, device: str | torch.device = "cpu", info: dict | None = None,
                 dtype: torch.dtype | None = None, attention: str = "sdpa", compile: bool | str = False,
                 reward_model: RewardModel | None = None, start_frames: np.ndarray | None = None,
                 start_prompts: Sequence[str] | None = None):
        """`dtype` casts the DiT (bf16 on a GPU; its timestep MLPs stay fp32); `attention` picks the kernel
        ('sdpa', 'flash', 'auto'); `compile` wraps each block in torch.compile (True or a mode name).
        `reward_model` and `start_frames` / `start_prompts` are the optional parts (see `set_reward_model`
        and `set_start_bank`)."""
        mc = model.config
        ac = autoencoder.config
        if mc.latent_channels != ac.latent_channels or (mc.latent_height * ac.stride, mc.latent_width * ac.stride) != (spec.height, spec.width):
            raise ValueError(
                f"model latents {mc.latent_channels}x{mc.latent_height}x{mc.latent_width} with autoencoder stride "
                f"{ac.stride} do not give the spec's {spec.height}x{spec.width} frames"
            )
        if mc.action_dim and mc.action_dim != spec.action.feature_dim:
            raise ValueError(f"model expects {mc.action_dim} action features, the spec's action space gives {spec.action.feature_dim}")
        self.device = torch.device(device)
        if dtype is not None:
            model.to_inference_dtype(dtype)
        self.model = model.to(self.device).eval().set_attention(attention)
        if compile:
            for block in self.model.blocks:  # per block: the entry points stay plain methods
                block.compile(mode=None if compile is True else compile, dynamic=True)
        self.autoencoder = autoencoder.to(self.device).eval()
        self.codec = as_codec(self.autoencoder)
        self.text_encoder = text_encoder.to(self.device).eval()
        self.spec = spec
        self.info = dict(info or {})
        self.sigmas = spec.schedule.student_sigmas().to(self.device)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.state: WorldState | None = None
        self.reward_model: RewardModel | None = None
        self.start_frames: np.ndarray | None = None
        self.start_prompts: list[str] = []
        if reward_model is not None:
            self.set_reward_model(reward_model)
        if start_frames is not None:
            self.set_start_bank(start_frames, start_prompts if start_prompts is not None else [spec.default_prompt] * len(start_frames))

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, seed: int = 0, device: str | torch.device = "cpu", **options) -> "World":
        """A world of a named preset with random (untrained) weights, seeded. `options`: dtype, attention, compile."""
        model_config, spec = preset(name)
        ae_config = AUTOENCODER_PRESETS.get(name, AutoencoderConfig(latent_channels=model_config.latent_channels, num_down=3))
        torch.manual_seed(seed)
        model = CausalDiT(model_config)
        autoencoder = FrameAutoencoder(ae_config)
        text = ByteTextEncoder(_text_config(model_config))
        return cls(model, autoencoder, text, spec, device, info={"source": f"preset:{name}", "trained": False}, **options)

    @classmethod
    def load(cls, name_or_path: str | Path, device: str | torch.device = "cpu", **options) -> "World":
        """Open a world: a path to a .safetensors world file, a world folder (`world.json` + its parts: the
        Wan worlds, see docs/wan.md), a shipped world's name, or a preset name (random weights).
        `options`: dtype, attention, compile (see `World.__init__`)."""
        path = Path(name_or_path)
        if (path / "world.json").is_file() or (path.is_file() and path.name == "world.json"):
            from worldsdk.wan import load_world

            return load_world(path, device=device, **options)
        if not path.is_file():
            shipped = SHIPPED_WORLDS_DIR / f"{name_or_path}.safetensors"
            if shipped.is_file():
                path = shipped
            elif str(name_or_path) in MODEL_PRESETS:
                log.warning("world %r is a preset: random, untrained weights", str(name_or_path))
                return cls.from_preset(str(name_or_path), device=device, **options)
            else:
                raise FileNotFoundError(
                    f"no world {str(name_or_path)!r}: not a file, not a folder with a world.json, "
                    f"not a shipped world {shipped_worlds()}, not a preset {sorted(MODEL_PRESETS)}"
                )
        tensors, meta = checkpoint.read(path)
        try:
            model_config = ModelConfig.from_dict(meta["model_config"])
            spec = WorldSpec.from_dict(meta["world_spec"])
            ae_config = AutoencoderConfig.from_dict(meta["autoencoder_config"])
            text_config = ByteTextConfig.from_dict(meta["text_encoder_config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise checkpoint.CheckpointError(f"{path}: invalid or missing config in metadata: {exc}") from exc
        model, autoencoder, text = CausalDiT(model_config), FrameAutoencoder(ae_config), ByteTextEncoder(text_config)
        for module, prefix in ((model, "model"), (autoencoder, "autoencoder"), (text, "text_encoder")):
            checkpoint.load_state(module, checkpoint.split_prefix(tensors, prefix), path, prefix)
        reward_model = None
        if "reward_config" in meta:  # optional parts: files without them still load
            try:
                reward_model = RewardModel(RewardConfig.from_dict(meta["reward_config"]))
            except (TypeError, ValueError) as exc:
                raise checkpoint.CheckpointError(f"{path}: invalid reward_config in metadata: {exc}") from exc
            checkpoint.load_state(reward_model, checkpoint.split_prefix(tensors, "reward"), path, "reward")
        start_frames = tensors[START_FRAMES_TENSOR].numpy() if START_FRAMES_TENSOR in tensors else None
        info = dict(meta.get("info", {}), source=str(path), trained=meta.get("info", {}).get("trained", True))
        try:
            return cls(model, autoencoder, text, spec, device, info=info, reward_model=reward_model,
                       start_frames=start_frames, start_prompts=meta.get("start_prompts"), **options)
        except ValueError as exc:
            raise checkpoint.CheckpointError(f"{path}: {exc}") from exc

    def save(self, path: str | Path, info: dict | None = None, storage: str = "exact") -> Path:
        """Write this world (weights, configs, spec, info, and the reward model and start bank when it has
        them) to one safetensors file. `storage`: see `worldsdk.checkpoint.atomic_save`."""
        if not isinstance(self.autoencoder, FrameAutoencoder) or not isinstance(self.text_encoder, ByteTextEncoder):
            raise TypeError("only worlds with a FrameAutoencoder and a ByteTextEncoder fit one file; a Wan world is a "
                            "folder: save its DiT with worldsdk.wan.save_transformer and see worldsdk.wan.write_world_json")
        tensors = {}
        parts = [(self.model, "model"), (self.autoencoder, "autoencoder"), (self.text_encoder, "text_encoder")]
        if self.reward_model is not None:
            parts.append((self.reward_model, "reward"))
        for module, prefix in parts:
            tensors.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
        meta = {
            "format": checkpoint.FORMAT, "format_version": checkpoint.FORMAT_VERSION,
            "model_config": self.model.config.to_dict(), "world_spec": self.spec.to_dict(),
            "autoencoder_config": self.autoencoder.config.to_dict(), "text_encoder_config": self.text_encoder.config.to_dict(),
            "info": {**self.info, **(info or {})},
        }
        if self.reward_model is not None:
            meta["reward_config"] = self.reward_model.config.to_dict()
        if self.start_frames is not None:
            tensors[START_FRAMES_TENSOR] = torch.from_numpy(self.start_frames)
            meta["start_prompts"] = list(self.start_prompts)
        return checkpoint.atomic_save(tensors, meta, path, storage=storage)

    # -- optional parts: reward model, start bank ---------------------------------------------------------
    def set_reward_model(self, reward_model: RewardModel | None) -> None:
        """Attach (or with None remove) a reward model; it must read this world's latents and actions.
        Sessions started before keep no reward memory: start new ones."""
        if reward_model is not None:
            mc, rc = self.model.config, reward_model.config
            if (rc.latent_channels, rc.latent_height, rc.latent_width, rc.action_dim) != (
                    mc.latent_channels, mc.latent_height, mc.latent_width, mc.action_dim):
                raise ValueError(
                    f"reward model reads {rc.latent_channels}x{rc.latent_height}x{rc.latent_width} latents with "
                    f"{rc.action_dim} action features; this world makes {mc.latent_channels}x{mc.latent_height}x"
                    f"{mc.latent_width} with {mc.action_dim}")
            reward_model = reward_model.to(self.device).eval()
        self.reward_model = reward_model

    def set_start_bank(self, frames: np.ndarray | None, prompts: Sequence[str] | None = None) -> None:
        """Ship real starts with this world: uint8 frames (N, T, H, W, 3) with T >= one chunk, one prompt
        each (see `worldsdk.starts.build_start_bank`); None removes the bank."""
        if frames is None:
            self.start_frames, self.start_prompts = None, []
            return
        frames = np.asarray(frames)
        expected = (self.spec.height, self.spec.width, 3)
        if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[2:] != expected or len(frames) == 0:
            raise ValueError(f"start frames must be uint8 (N, T, {expected[0]}, {expected[1]}, 3) with N >= 1, "
                             f"got {frames.dtype} {frames.shape}")
        if frames.shape[1] < self.chunk_frames:
            raise ValueError(f"each start needs at least {self.chunk_frames} frames (one chunk), got {frames.shape[1]}")
        prompts = list(prompts) if prompts is not None else [self.spec.default_prompt] * len(frames)
        if len(prompts) != len(frames) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"expected {len(frames)} start prompts (str), got {prompts!r}")
        self.start_frames, self.start_prompts = np.ascontiguousarray(frames), prompts

    @property
    def num_starts(self) -> int:
        """Entries in the bank of real starts (0: none)."""
        return 0 if self.start_frames is None else len(self.start_frames)

    def start(self, index: int) -> tuple[np.ndarray, str]:
        """Real start `index` of the bank: its context frames (T, H, W, 3) and its prompt."""
        if self.start_frames is None:
            raise ValueError("this world has no bank of real starts (see worldsdk.starts.build_start_bank)")
        return self.start_frames[index], self.start_prompts[index]

    def predicted_rewards(self, state: WorldState | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The reward model's predictions for the frames of each session's last chunk (the last step, or
        the context's last chunk): rewards float32 (B, F) and terminated bool (B, F). `state`: default the
        single session's."""
        if self.reward_model is None:
            raise ValueError("this world has no reward model: its rewards are not predicted (train one with "
                             "`worldsdk-train stage=reward`, see docs/rewards.md)")
        state = self.state if state is None else state
        if state is None or state.rewards is None:
            raise ValueError("no reward memory in this state: start sessions with init_state / reset after attaching the reward model")
        return state.rewards.rewards.cpu().numpy(), state.rewards.terminated.cpu().numpy()

    # -- shapes ------------------------------------------------------------------------------------------
    @property
    def chunk_frames(self) -> int:
        """Pixel frames returned by one step."""
        return self.model.config.frames_per_chunk * self.autoencoder.config.temporal_stride

    @property
    def observation_shape(self) -> tuple[int, int, int, int]:
        return (self.chunk_frames, self.spec.height, self.spec.width, 3)

    @property
    def action_space(self):
        return self.spec.action.to_space()

    # -- batched sessions ------------------------------------------------------------------------------
    @torch.inference_mode()
    def init_state(self, batch_size: int = 1, prompts: Sequence[str] | str | None = None,
                   seeds: Sequence[int | None] | int | None = None,
                   contexts: Sequence[np.ndarray | None] | None = None) -> tuple[np.ndarray, WorldState]:
        """Start `batch_size` sessions. Returns their first frames (B, chunk, H, W, 3) and the state.

        A session with context frames (uint8 (N, H, W, 3), N >= chunk) continues from them and its first
        frames are the last chunk of the context; one without generates a first chunk under the no-op action.
        """
        prompts = _per_item(prompts, batch_size, self.spec.default_prompt, "prompts")
        seeds = _per_item(seeds, batch_size, None, "seeds")
        contexts = _per_item(contexts, batch_size, None, "contexts")
        singles = [self._empty_state(p, _fresh_seed() if s is None else int(s)) for p, s in zip(prompts, seeds)]
        frames: list[np.ndarray | None] = [None] * batch_size
        for b, context in enumerate(contexts):
            if context is not None:
                frames[b] = self._commit_context(singles[b], context)
        fresh = [b for b in range(batch_size) if frames[b] is None]
        if fresh:
            noop = self.spec.action.noop_action()
            generated, state = self.step_state(WorldState.stack([singles[b] for b in fresh]), [noop] * len(fresh))
            for i, (b, single) in enumerate(zip(fresh, state.split())):
                frames[b], singles[b] = generated[i], single
        return np.stack(frames), WorldState.stack(singles)

    @torch.inference_mode()
    def step_state(self, state: WorldState, actions: Sequence[Any]) -> tuple[np.ndarray, WorldState]:
        """Advance every session by one chunk under its action, in one batched forward per pass."""
        if len(actions) != state.batch_size:
            raise ValueError(f"got {len(actions)} actions for {state.batch_size} sessions")
        return self.step_features(state, self._action_features(actions))

    @torch.inference_mode()
    def step_frames_state(self, state: WorldState, frame_actions: Sequence[Sequence[Any]]) -> tuple[np.ndarray, WorldState]:
        """Like `step_state`, with one action per latent frame of the chunk for every session
        (replaying recorded games, whose actions change from frame to frame)."""
        if len(frame_actions) != state.batch_size:
            raise ValueError(f"got per-frame actions for {len(frame_actions)} sessions, expected {state.batch_size}")
        return self.step_features(state, self.frame_action_features(frame_actions))

    @torch.inference_mode()
    def step_features(self, state: WorldState, features: torch.Tensor | None) -> tuple[np.ndarray, WorldState]:
        """Advance every session by one chunk given encoded action features (B, frames_per_chunk,
        action_dim + 1) (last entry 1 = a real action, all zeros = no action), or None for a
        prompt-only world. Actions are not validated here; `step_state` is the checked entry point."""
        cfg = self.model.config
        if features is not None:
            features = features.to(self.device, torch.float32)
        shape = (cfg.latent_channels, cfg.frames_per_chunk, cfg.latent_height, cfg.latent_width)
        noise = lambda: torch.stack([torch.randn(shape, generator=g) for g in state.generators]).to(self.device)  # noqa: E731
        t_chunk = lambda sigma: sigma_to_t(torch.full((state.batch_size, cfg.frames_per_chunk), float(sigma), device=self.device))  # noqa: E731

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            v = self.model.denoise_chunk(x, t_chunk(sigma), features, state.cache)
            return x - sigma * v.float()  # latents stay fp32 whatever the model's dtype

        x0 = sample_few_step(denoise, noise(), self.sigmas, noise)
        self.model.commit_chunk(x0, t_chunk(0.0), features, state.cache)
        for b in range(state.batch_size):
            state.steps[b] += 1
        self._predict_rewards(state, x0, features)
        return self.codec.decode_chunk(x0, state.decoders).cpu().numpy(), state

    @torch.inference_mode()
    def prompt_state(self, state: WorldState, prompts: Sequence[str] | str, indices: Sequence[int] | None = None) -> WorldState:
        """Switch the prompt of some sessions (all by default) from their next step on."""
        indices = list(range(state.batch_size)) if indices is None else list(indices)
        prompts = _per_item(prompts, len(indices), None, "prompts")
        for b, prompt in zip(indices, prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"a prompt must be a str, got {type(prompt).__name__}")
            self.model.set_prompt(state.cache, b, self._encode_text(prompt))
            state.prompts[b] = prompt
        return state

    # -- the single default session --------------------------------------------------------------------
    def reset(self, prompt: str | None = None, seed: int | None = None, context: np.ndarray | None = None) -> np.ndarray:
        """Start a new episode; returns its first frames (chunk, H, W, 3) uint8."""
        frames, self.state = self.init_state(1, [prompt], [seed], [context])
        return frames[0]

    def step(self, action) -> np.ndarray:
        """Advance one chunk under `action`; returns frames (chunk, H, W, 3) uint8."""
        if self.state is None:
            self.reset()
        frames, self.state = self.step_state(self.state, [action])
        return frames[0]

    def set_prompt(self, text: str) -> None:
        """Change what the world shows from the next step on, keeping its history."""
        if self.state is None:
            self.reset(prompt=text)
            return
        self.state = self.prompt_state(self.state, [text])

    @property
    def prompt(self) -> str | None:
        return None if self.state is None else self.state.prompts[0]

    # -- internals ----------------------------------------------------------------------------------------
    def _empty_state(self, prompt: str, seed: int) -> WorldState:
        param = next(self.model.parameters())
        cache = KVCache.empty(self.model.config, 1, self.spec.sink_frames, device=self.device, dtype=param.dtype)
        rewards = None if self.reward_model is None else self.reward_model.empty_state(1, self.device)
        state = WorldState(cache, [prompt], [torch.Generator().manual_seed(seed)], [0], [seed],
                           [self.codec.decoder_state()], rewards)
        return self.prompt_state(state, [prompt])

    def _predict_rewards(self, state: WorldState, latents: torch.Tensor, features: torch.Tensor | None) -> None:
        """Run the reward model over a chunk's latents (B, C, F, h, w), updating the sessions' reward memory."""
        if self.reward_model is None or state.rewards is None:
            return
        rewards = self.reward_model.step(latents.transpose(1, 2).float(), features, state.rewards)
        fc = self.model.config.frames_per_chunk  # keep one chunk's predictions, so that states stack
        rewards.rewards, rewards.terminated = rewards.rewards[:, -fc:], rewards.terminated[:, -fc:]
        state.rewards = rewards

    def _encode_text(self, prompt: str) -> torch.Tensor:
        if prompt not in self._text_cache:
            self._text_cache[prompt] = self.text_encoder.encode([prompt])
            if len(self._text_cache) > 256:
                self._text_cache.popitem(last=False)
        self._text_cache.move_to_end(prompt)
        return self._text_cache[prompt]

    def _action_features(self, actions: Sequence[Any]) -> torch.Tensor | None:
        """Validated actions, one per session -> (B, frames_per_chunk, action_dim + 1) features."""
        return self.frame_action_features([[a] * self.model.config.frames_per_chunk for a in actions])

    def frame_action_features(self, frame_actions: Sequence[Sequence[Any]]) -> torch.Tensor | None:
        """Validated actions, one per latent frame of the chunk for each session -> features (B,
        frames_per_chunk, action_dim + 1), the last entry flagging "real action"; None for a prompt-only world."""
        fc = self.model.config.frames_per_chunk
        if any(len(a) != fc for a in frame_actions):
            raise ValueError(f"expected {fc} per-frame actions per session, got {[len(a) for a in frame_actions]}")
        for a in (a for session in frame_actions for a in session):
            self.spec.action.validate(a)
        if not self.model.config.action_dim:
            return None
        feats = np.array([[np.append(self.spec.action.encode(a), 1.0) for a in session] for session in frame_actions],
                         dtype=np.float32)
        return torch.from_numpy(feats).to(self.device)

    def no_action_features(self, batch_size: int = 1) -> torch.Tensor | None:
        """Features of "no action" (all zeros: context frames and the unconditional branch of guidance)."""
        cfg = self.model.config
        return None if not cfg.action_dim else torch.zeros(batch_size, cfg.frames_per_chunk, cfg.action_dim + 1, device=self.device)

    def commit_history(self, latents: torch.Tensor, cache: KVCache) -> None:
        """Append clean latents (B, C, F, h, w) to `cache` chunk by chunk, without action (F a multiple of
        the chunk)."""
        cfg = self.model.config
        null = self.no_action_features(latents.shape[0])
        for start in range(0, latents.shape[2], cfg.frames_per_chunk):
            x = latents[:, :, start : start + cfg.frames_per_chunk]
            self.model.commit_chunk(x, torch.zeros(x.shape[0], cfg.frames_per_chunk, device=self.device), null, cache)

    def _commit_context(self, state: WorldState, context: np.ndarray) -> np.ndarray:
        """Encode real frames and commit them as clean history (no action). Returns the last chunk of them."""
        context = np.asarray(context)
        expected = (self.spec.height, self.spec.width, 3)
        if context.dtype != np.uint8 or context.ndim != 4 or context.shape[1:] != expected:
            raise ValueError(f"context must be uint8 frames (N, {expected[0]}, {expected[1]}, 3), got {context.dtype} {context.shape}")
        chunk = self.chunk_frames
        usable = (len(context) // chunk) * chunk
        if usable == 0:
            raise ValueError(f"context needs at least {chunk} frames (one chunk), got {len(context)}")
        context = context[len(context) - usable :]  # keep the most recent whole chunks
        latents = self.codec.encode_video(torch.from_numpy(context).to(self.device))  # (1, C, F, h, w)
        if state.decoders[0] is not None:  # a causal decoder continues from the context's last frames
            self.codec.decode_chunk(latents, state.decoders)
        self.commit_history(latents, state.cache)
        self._predict_rewards(state, latents, None)  # the reward memory sees the context, without actions
        return context[-chunk:].copy()


def _text_config(model_config: ModelConfig) -> ByteTextConfig:
    width = min(model_config.text_dim, 256)
    heads = 4 if width >= 64 else 2
    return ByteTextConfig(text_len=model_config.text_len, text_dim=model_config.text_dim, num_layers=2, num_heads=heads,
                          width=0 if width == model_config.text_dim else width)


def _per_item(values, n: int, default, what: str) -> list:
    """Broadcast None, one value (a str, an int, or one context array (N, H, W, 3)) or a sequence of n values to n items."""
    if values is None:
        return [default] * n
    if isinstance(values, (str, int, np.integer)) or (isinstance(values, np.ndarray) and values.ndim == 4):
        return [values] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"expected {n} {what}, got {len(values)}")
    return [default if v is None else v for v in values]
