"""Wan worlds: a folder with `world.json` naming its parts, opened by `World.load(folder)`.

This module builds a world's parts (`WorldParts`) and never imports the runtime: `World.load` and
`World.from_parts` put them together, so `worldsdk.world` depends on `worldsdk.wan` and not back.

    my-world/
      world.json          {"format": "worldsdk-wan-world", "transformer": "causal_forcing.pt", ...}
      causal_forcing.pt   the DiT: Wan / Self Forcing / Causal Forcing .pt, safetensors (sharded or not),
                          or a diffusers `transformer/` folder (see worldsdk.wan.checkpoint)
      vae/                diffusers AutoencoderKLWan (config.json + weights)
      text_encoder/       transformers UMT5EncoderModel (config.json + weights)
      tokenizer/          its tokenizer (defaults to text_encoder/ when absent)

Paths in world.json are relative to the folder or absolute. `world_spec` defaults to the wan-1.3b
preset's (832x480, 16 fps, prompt-only: a single no-op action, Discrete(1)); `model_config` gives what
the weights' shapes cannot (latent grid, frames per chunk, clip length, text length, head count); the
latent grid defaults to the spec's frame size over the VAE's stride.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Mapping

import torch

from worldsdk.checkpoint import CheckpointError
from worldsdk.config import ActionSpec, ModelConfig, WorldSpec, preset
from worldsdk.model import ByteTextConfig, ByteTextEncoder, CausalDiT
from worldsdk.wan.checkpoint import load_transformer
from worldsdk.wan.text import UMT5TextEncoder
from worldsdk.wan.vae import WanVAE

FORMAT = "worldsdk-wan-world"
FORMAT_VERSION = 1
WORLD_FILE = "world.json"


@dataclass
class WorldParts:
    """What a world is made of, before `World.from_parts` runs it: the DiT, the video codec, the text
    encoder, the spec and the info it reports."""

    model: CausalDiT
    autoencoder: torch.nn.Module
    text_encoder: torch.nn.Module
    spec: WorldSpec
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class WanWorldFiles:
    """The contents of world.json."""

    transformer: str
    vae: str = "vae"
    text_encoder: str = "text_encoder"
    tokenizer: str | None = None  # None: "tokenizer/" when it exists, else the text encoder's folder
    checkpoint_key: str | None = None  # entry of a training .pt: "generator" (default) or "generator_ema"
    world_spec: dict | None = None  # None: the wan-1.3b preset's spec
    model_config: dict = field(default_factory=dict)  # non-shape ModelConfig fields
    info: dict = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @staticmethod
    def read(path: Path) -> "WanWorldFiles":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: invalid JSON: {exc}") from exc
        if data.get("format") != FORMAT:
            raise CheckpointError(f"{path}: expected format {FORMAT!r}, found {data.get('format')!r}")
        names = {f.name for f in fields(WanWorldFiles)}
        unknown = sorted(set(data) - names)
        if unknown or "transformer" not in data:
            raise CheckpointError(f"{path}: unknown entries {unknown}" if unknown else f"{path}: no 'transformer' entry")
        return WanWorldFiles(**data)


def write_world_json(folder: str | Path, transformer: str | Path, vae: str | Path = "vae",
                     text_encoder: str | Path = "text_encoder", tokenizer: str | Path | None = None,
                     checkpoint_key: str | None = None, spec: WorldSpec | None = None,
                     model_config: Mapping | None = None, info: Mapping | None = None) -> Path:
    """Write `folder/world.json` pointing at the parts (paths relative to the folder or absolute)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = WanWorldFiles(
        transformer=str(transformer), vae=str(vae), text_encoder=str(text_encoder),
        tokenizer=None if tokenizer is None else str(tokenizer), checkpoint_key=checkpoint_key,
        world_spec=None if spec is None else spec.to_dict(), model_config=dict(model_config or {}), info=dict(info or {}),
    )
    path = folder / WORLD_FILE
    path.write_text(json.dumps(asdict(files), indent=2) + "\n")
    return path


def _resolve(folder: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else folder / path


def open_world_parts(path: str | Path, dtype: torch.dtype | None = None) -> WorldParts:
    """The parts of a Wan world folder (or its world.json); `dtype` applies to the VAE and UMT5 here,
    and to the DiT when `World.from_parts(parts, dtype=...)` casts it. `World.load(folder)` calls this."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    manifest = folder / WORLD_FILE
    if not manifest.is_file():
        raise FileNotFoundError(f"{folder}: no {WORLD_FILE} (a Wan world folder names its parts there; see docs/wan.md)")
    files = WanWorldFiles.read(manifest)
    spec = WorldSpec.from_dict(files.world_spec) if files.world_spec is not None else preset("wan-1.3b")[1]
    part_dtype = dtype or torch.float32

    vae = WanVAE.from_pretrained(_resolve(folder, files.vae), dtype=part_dtype)
    model_fields = dict(files.model_config)
    model_fields.setdefault("latent_height", spec.height // vae.config.stride)
    model_fields.setdefault("latent_width", spec.width // vae.config.stride)
    transformer = _resolve(folder, files.transformer)
    model = load_transformer(transformer, files.checkpoint_key, ModelConfig(), **model_fields)
    if not model.config.action_dim and spec.action != ActionSpec.discrete(1):
        raise CheckpointError(f"{manifest}: the model takes no actions (prompt-only), so world_spec.action must be "
                              f"{{'kind': 'discrete', 'n': 1}}, got {spec.action.to_dict()}")

    tokenizer = files.tokenizer or ("tokenizer" if (folder / "tokenizer").is_dir() else files.text_encoder)
    text = UMT5TextEncoder.from_pretrained(_resolve(folder, files.text_encoder), _resolve(folder, tokenizer),
                                           text_len=model.config.text_len, dtype=part_dtype)
    if text.text_dim != model.config.text_dim:
        raise CheckpointError(f"{manifest}: the text encoder gives {text.text_dim}-d features, the DiT expects {model.config.text_dim}")
    info = {**files.info, "source": str(folder), "transformer": str(transformer), "trained": files.info.get("trained", True)}
    return WorldParts(model, vae, text, spec, info)


def random_world_parts(model_config: ModelConfig, spec: WorldSpec, vae_config: Mapping | None = None, seed: int = 0,
                       dtype: torch.dtype | None = None) -> WorldParts:
    """The parts of a Wan world with random weights: CausalDiT, a diffusers AutoencoderKLWan (Wan2.1's
    shape unless `vae_config` says otherwise) and a small byte text encoder in place of UMT5 (benchmarks,
    tests); run them with `World.from_parts(parts, device, dtype=dtype)`."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    vae_config = dict(vae_config or {})
    vae_config.setdefault("z_dim", model_config.latent_channels)
    if vae_config["z_dim"] != 16:  # Wan's statistics have 16 entries; a custom z needs its own
        vae_config.setdefault("latents_mean", [0.0] * vae_config["z_dim"])
        vae_config.setdefault("latents_std", [1.0] * vae_config["z_dim"])
    vae = AutoencoderKLWan(**vae_config)
    if dtype is not None and dtype != torch.float32:
        torch.nn.Module.to(vae, dtype)  # diffusers' own .to() warns about fp32-kept modules; this VAE has none
    vae = WanVAE(vae).eval()
    text = ByteTextEncoder(ByteTextConfig(text_len=model_config.text_len, text_dim=model_config.text_dim, num_layers=1,
                                          num_heads=4, width=min(256, model_config.text_dim)))
    info = {"source": "random:wan", "trained": False}
    return WorldParts(CausalDiT(model_config), vae, text, spec, info)
