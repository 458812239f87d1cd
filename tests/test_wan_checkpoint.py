"""Importing Wan-family DiT checkpoints: every layout and wrapper, config inference, errors that name keys and files."""

import json

import pytest
import torch
from safetensors.torch import save_file

from tests.wan_parts import perturbed, tiny_model_config, wan_state, write_causal_forcing_pt
from worldsdk.checkpoint import CheckpointError
from worldsdk.model import CausalDiT
from worldsdk.wan import diffusers_to_wan, infer_model_config, load_transformer, read_state_dict, save_transformer, wan_to_diffusers

GRID = dict(latent_frames_max=9, latent_height=4, latent_width=8, text_len=12, frames_per_chunk=3, num_heads=2)


@pytest.fixture(scope="module")
def models():
    """Two tiny models with different weights: the `generator` and the `generator_ema` of a checkpoint."""
    config = tiny_model_config()
    return perturbed(CausalDiT(config), seed=1), perturbed(CausalDiT(config), seed=2)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_causal_forcing_pt_with_generator_and_ema_wrappers(models, tmp_path):
    generator, ema = models
    path = write_causal_forcing_pt(tmp_path / "causal_forcing.pt", wan_state(generator), wan_state(ema))
    loaded = load_transformer(path, **GRID)  # `generator` by default, as the reference CLI without --use_ema
    assert loaded.config == generator.config and same_weights(loaded, generator)
    assert same_weights(load_transformer(path, key="generator_ema", **GRID), ema)  # FSDP names stripped too
    with pytest.raises(CheckpointError, match=r"causal_forcing.pt: no entry 'nope'.*generator_ema"):
        load_transformer(path, key="nope", **GRID)


def test_plain_wan_state_dicts_in_pt_safetensors_and_shards(models, tmp_path):
    generator, _ = models
    state = wan_state(generator)
    torch.save(state, tmp_path / "plain.pt")
    save_file(state, str(tmp_path / "plain.safetensors"))
    # sharded, as Wan2.1 / diffusers publish large models: an index json naming the shard of every tensor
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2], "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(tmp_path / file))
    index = {"metadata": {}, "weight_map": {k: file for file, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    for name in ("plain.pt", "plain.safetensors", "model.safetensors.index.json"):
        assert same_weights(load_transformer(tmp_path / name, **GRID), generator), name
    # bf16 weights (how the released checkpoints are stored) load into the fp32 model
    save_file({k: v.bfloat16() for k, v in state.items()}, str(tmp_path / "bf16.safetensors"))
    loaded = load_transformer(tmp_path / "bf16.safetensors", **GRID)
    assert torch.equal(loaded.head.head.weight, generator.head.head.weight.bfloat16().float())


def test_missing_shard_is_named(models, tmp_path):
    generator, _ = models
    save_file(wan_state(generator), str(tmp_path / "a.safetensors"))
    index = {"weight_map": {k: "a.safetensors" for k in wan_state(generator)} | {"extra.weight": "b.safetensors"}}
    (tmp_path / "w.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="w.safetensors.index.json: shard b.safetensors is missing"):
        read_state_dict(tmp_path / "w.safetensors.index.json")


def test_diffusers_layout_folder_with_config_json(models, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    generator, _ = models
    cfg = generator.config
    ref = diffusers.WanTransformer3DModel(
        patch_size=cfg.patch, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim, in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
    )
    ref.load_state_dict(wan_to_diffusers(wan_state(generator)), strict=True)  # our inverse map covers every key
    ref.save_pretrained(str(tmp_path / "transformer"))
    grid = {k: v for k, v in GRID.items() if k != "num_heads"}  # the folder's config.json gives the head count
    loaded = load_transformer(tmp_path / "transformer", **grid)
    assert loaded.config == generator.config and same_weights(loaded, generator)
    # an older diffusers export may carry norm_added_q; it is ignored as diffusers ignores it
    state = ref.state_dict() | {"blocks.0.attn2.norm_added_q.weight": torch.ones(cfg.dim)}
    assert set(diffusers_to_wan(state)) == set(wan_state(generator))


def test_config_is_inferred_from_shapes(models):
    generator, _ = models
    state = wan_state(generator)
    config = infer_model_config(state, **GRID)
    assert config == generator.config
    # Wan's own head width (128) is the default head count source
    wide = {k: v for k, v in state.items()}
    wide["patch_embedding.weight"] = torch.zeros(256, 4, 1, 2, 2)
    assert infer_model_config(wide, **{k: v for k, v in GRID.items() if k != "num_heads"}).num_heads == 2
    with pytest.raises(CheckpointError, match=r"config sets dim=64 but the weights have dim=32"):
        infer_model_config(state, dim=64, **GRID)
    # the paper preset's shapes come back from a (shape-only) 1.3B state dict
    meta = {"patch_embedding.weight": torch.empty(1536, 16, 1, 2, 2, device="meta"),
            "text_embedding.0.weight": torch.empty(1536, 4096, device="meta"),
            "time_embedding.0.weight": torch.empty(1536, 256, device="meta"),
            "blocks.0.ffn.0.weight": torch.empty(8960, 1536, device="meta"),
            "blocks.29.modulation": torch.empty(1, 6, 1536, device="meta"),
            "blocks.0.norm3.weight": torch.empty(1536, device="meta")}
    from worldsdk.config import MODEL_PRESETS

    assert infer_model_config(meta) == MODEL_PRESETS["wan-1.3b"]


def test_unknown_and_missing_keys_are_listed_with_the_file(models, tmp_path):
    generator, _ = models
    state = wan_state(generator)
    del state["blocks.1.cross_attn.o.weight"]
    state["blocks.0.self_attn.extra.weight"] = torch.zeros(3)
    state["img_emb.proj.0.weight"] = torch.zeros(3)  # an I2V model's image embedding: not ours
    torch.save({"generator": {f"model.{k}": v for k, v in state.items()}}, tmp_path / "broken.pt")
    pattern = (r"broken.pt: transformer does not match its config: missing keys \['blocks.1.cross_attn.o.weight'\]; "
               r"unexpected keys \['blocks.0.self_attn.extra.weight', 'img_emb.proj.0.weight'\]")
    with pytest.raises(CheckpointError, match=pattern):
        load_transformer(tmp_path / "broken.pt", **GRID)


def test_files_that_are_not_wan_checkpoints(tmp_path):
    save_file({"encoder.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match=r"other.safetensors: not a Wan DiT checkpoint.*encoder.weight"):
        load_transformer(tmp_path / "other.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="junk.pt: cannot be read"):
        load_transformer(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_transformer(tmp_path / "nothing.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty: no .safetensors"):
        load_transformer(tmp_path / "empty")


def test_save_transformer_round_trips_in_both_layouts(models, tmp_path):
    generator, _ = models
    for layout in ("wan", "diffusers"):
        path = save_transformer(generator, tmp_path / f"{layout}.safetensors", layout=layout)
        assert same_weights(load_transformer(path, **GRID), generator)
