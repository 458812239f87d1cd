"""Tiny Wan-world parts built locally (no hub): a DiT config, a diffusers AutoencoderKLWan, a UMT5
encoder with a word-level tokenizer, and a world folder that names them."""

from __future__ import annotations

from pathlib import Path

import torch

from worldsdk.config import ModelConfig, WorldSpec

WORDS = "a the cat dog runs jumps over lake mountain at dawn night neon city street cinematic shot of".split()

STATS = dict(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.7, 1.0, 2.0])
# Wan2.1's VAE structure in miniature: stride (4, 8, 8), temporal upsampling in the two deepest levels.
WAN_LIKE_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                    temperal_downsample=[False, True, True], **STATS)
# The world tests' VAE (fewer layers, stride (4, 4, 4)): 16x32 frames -> 4x8 latents -> 2x4 = 8 tokens per frame.
WORLD_VAE = dict(base_dim=4, z_dim=4, dim_mult=[1, 1, 1], num_res_blocks=0, attn_scales=[], temperal_downsample=[True, True], **STATS)
TINY_SPEC = WorldSpec(name="tiny-wan", height=16, width=32, fps=16.0, prompts=("a cat runs",), default_prompt="a cat runs")


def tiny_model_config(**overrides) -> ModelConfig:
    fields = dict(latent_channels=4, latent_frames_max=9, latent_height=4, latent_width=8, dim=32, ffn_dim=64,
                  num_heads=2, num_layers=2, freq_dim=32, text_dim=16, text_len=12, frames_per_chunk=3)
    return ModelConfig(**{**fields, **overrides})


def perturbed(module: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Every parameter set to seeded noise, so no zero-initialised layer hides a wrong mapping."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def tiny_vae(seed: int = 0, config: dict = WORLD_VAE):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(**config).eval()


def save_tiny_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer with T5's special ids (pad 0, eos 1, unk 2) that appends </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(folder))
    return folder


def save_tiny_umt5(folder: Path, d_model: int = 16, seed: int = 0) -> Path:
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config = UMT5Config(vocab_size=len(WORDS) + 3, d_model=d_model, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                        relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0,
                        eos_token_id=1, decoder_start_token_id=0)
    UMT5EncoderModel(config).eval().save_pretrained(str(folder))
    return folder


def wan_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def write_causal_forcing_pt(path: Path, generator: dict, ema: dict | None = None) -> Path:
    """A training checkpoint as Self Forcing / Causal Forcing write it: wrapped, `model.`-prefixed, FSDP names."""
    def wrap(state, fsdp):
        out = {}
        for k, v in state.items():
            if fsdp and k.startswith("blocks."):
                _, i, rest = k.split(".", 2)
                k = f"blocks.{i}._fsdp_wrapped_module.{rest}"
            out[f"model.{k}"] = v
        return out

    payload = {"generator": wrap(generator, fsdp=False), "critic": {"model.x.weight": torch.zeros(1)}, "step": torch.tensor(7)}
    if ema is not None:
        payload["generator_ema"] = wrap(ema, fsdp=True)
    torch.save(payload, path)
    return path


def make_world_folder(folder: Path, seed: int = 0, **json_fields) -> Path:
    """A complete tiny Wan world folder: Causal-Forcing-style .pt DiT, vae/, text_encoder/, tokenizer/, world.json."""
    from worldsdk.model import CausalDiT
    from worldsdk.wan import write_world_json

    torch.manual_seed(seed)
    model = perturbed(CausalDiT(tiny_model_config()), std=0.1, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    write_causal_forcing_pt(folder / "causal_forcing.pt", wan_state(model))
    tiny_vae(seed).save_pretrained(str(folder / "vae"))
    save_tiny_umt5(folder / "text_encoder", d_model=16, seed=seed)
    save_tiny_tokenizer(folder / "tokenizer")
    model_config = {"latent_frames_max": 9, "text_len": 12, "num_heads": 2, "frames_per_chunk": 3}
    write_world_json(folder, "causal_forcing.pt", spec=TINY_SPEC, model_config=model_config, **json_fields)
    return folder
