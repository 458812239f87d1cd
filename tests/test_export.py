"""Compact world storage (int8 / int4 / fp16 in worldsdk.checkpoint) and `worldsdk export`."""

import json

import pytest
import torch

from tests.conftest import perturb_
from worldsdk import World, checkpoint
from worldsdk.checkpoint import CheckpointError, INT4_GROUP, atomic_save, dequantize, quantize, read
from worldsdk.evaluation import psnr
from worldsdk.export import attach_start_bank, export_world, rollout


def _groupwise(scale: torch.Tensor, bits: int, columns: int) -> torch.Tensor:
    """Per-element scale (out, columns) of a quantized (out, columns) tensor."""
    scale = scale.float()
    return scale.expand(-1, columns) if bits == 8 else scale.repeat_interleave(INT4_GROUP, dim=1)[:, :columns]


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("shape", [(64, 128), (96, 70), (32, 16, 3, 3), (8, 1, 4, 4, 4)])
def test_quantizer_error_is_at_most_half_a_scale_per_element(bits, shape):
    g = torch.Generator().manual_seed(sum(shape) + bits)
    t = torch.randn(shape, generator=g) * torch.logspace(-4, 1, shape[0])[(...,) + (None,) * (len(shape) - 1)]
    t[1] = 0.0  # an all-zero channel: scale 0, codes 0, restored exactly
    t[2, ...] = 3e-8  # below fp16's normal range: the scale is a subnormal, rounded up
    codes, scale = quantize(t, bits)
    levels = 127 if bits == 8 else 7
    restored = dequantize(codes, scale, t.shape, t.dtype)
    assert restored.dtype == t.dtype and restored.shape == t.shape
    rows, back = t.reshape(shape[0], -1), restored.reshape(shape[0], -1)
    bound = _groupwise(scale, bits, rows.shape[1]) / 2
    assert torch.all((rows - back).abs() <= bound * (1 + 1e-6) + 1e-12)
    assert torch.all(scale.float() * levels >= rows.abs().reshape(shape[0], -1).amax(1, keepdim=True).min())
    assert torch.all(back[1] == 0)
    if bits == 8:
        assert codes.dtype == torch.int8 and codes.abs().max() <= levels
    else:  # two codes per byte, each nibble in [1, 15] (code + 8)
        assert codes.dtype == torch.uint8 and codes.shape[1] * 2 == scale.shape[1] * INT4_GROUP
        assert ((codes & 0x0F) >= 1).all() and ((codes >> 4) >= 1).all()


def _state():
    g = torch.Generator().manual_seed(0)
    return {
        "model.w": torch.randn(128, 64, generator=g),  # quantized
        "model.conv": torch.randn(64, 8, 3, 3, generator=g).double(),  # quantized, fp64 restored
        "model.half": torch.randn(64, 64, generator=g).bfloat16(),  # quantized, bf16 restored
        "model.norm": torch.randn(64, generator=g),  # 1-D: kept exact
        "model.small": torch.randn(8, 8, generator=g),  # too small to quantize: exact
        "model.steps": torch.arange(10),  # integers: exact
    }


@pytest.mark.parametrize("storage", ["int8", "int4", "fp16"])
def test_compact_storage_round_trip_keeps_keys_dtypes_and_shapes(tmp_path, storage):
    state = _state()
    path = atomic_save(state, {"format": "test"}, tmp_path / "w.safetensors", storage=storage, int4_patterns=("*",))
    tensors, meta = read(path, expected_format="test")
    assert meta == {"format": "test"} and set(tensors) == set(state)
    for name, t in state.items():
        assert tensors[name].dtype == t.dtype and tensors[name].shape == t.shape, name
    assert torch.equal(tensors["model.steps"], state["model.steps"])
    layout = checkpoint.storage_of(path)
    assert layout["storage"] == storage
    if storage == "fp16":
        assert not layout["quantized"] and set(layout["cast"]) == {"model.w", "model.conv", "model.half", "model.norm", "model.small"}
        assert layout["cast"]["model.conv"] == "float64"
        return
    assert torch.equal(tensors["model.norm"], state["model.norm"]) and torch.equal(tensors["model.small"], state["model.small"])
    assert set(layout["quantized"]) == {"model.w", "model.conv", "model.half"}
    assert layout["quantized"]["model.conv"] == {"dtype": "float64", "shape": [64, 8, 3, 3], "bits": 8 if storage == "int8" else 4}
    levels = 127 if storage == "int8" else 7
    w = state["model.w"]
    assert (tensors["model.w"] - w).abs().max() <= w.abs().max() / levels / 2 * 1.001


def test_int4_patterns_choose_which_tensors_get_4_bits(tmp_path):
    state = {"model.blocks.0.w": torch.randn(64, 64), "model.head.w": torch.randn(64, 64), "autoencoder.w": torch.randn(64, 64)}
    path = atomic_save(state, {"format": "test"}, tmp_path / "a.safetensors", storage="int4")  # default: a world's blocks
    bits = {k: v["bits"] for k, v in checkpoint.storage_of(path)["quantized"].items()}
    assert bits == {"model.blocks.0.w": 4, "model.head.w": 8, "autoencoder.w": 8}
    path = atomic_save(state, {"format": "test"}, tmp_path / "b.safetensors", storage="int4", int4_patterns=("*",))
    assert {v["bits"] for v in checkpoint.storage_of(path)["quantized"].values()} == {4}


def test_reserved_suffix_and_unknown_storage_are_refused(tmp_path):
    with pytest.raises(ValueError, match="reserved suffix"):
        atomic_save({"w#scale": torch.randn(64, 64)}, {}, tmp_path / "w.safetensors", storage="int8")
    with pytest.raises(ValueError, match="storage must be one of"):
        atomic_save({"w": torch.randn(4)}, {}, tmp_path / "w.safetensors", storage="int3")


def test_corrupt_quantized_file_is_named(tmp_path):
    path = atomic_save(_state(), {"format": "test"}, tmp_path / "w.safetensors", storage="int8")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # tensor bytes
    bad = tmp_path / "bad_data.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="bad_data.safetensors.*checksum"):
        read(bad, expected_format="test")
    # the storage layout is covered by the checksum too: an edited original dtype is caught
    data = path.read_bytes()
    assert data.count(b'float64') == 1
    bad = tmp_path / "bad_layout.safetensors"
    bad.write_bytes(data.replace(b"float64", b"float16"))
    with pytest.raises(CheckpointError, match="bad_layout.safetensors"):
        read(bad, expected_format="test")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        read(truncated, expected_format="test")


@pytest.fixture(scope="module")
def tiny_world_file(tmp_path_factory):
    world = World.from_preset("tiny", seed=0)
    perturb_(world.model)
    return world.save(tmp_path_factory.mktemp("export") / "tiny.safetensors")


def test_exported_tiny_world_generates_frames_close_to_the_original(tmp_path, tiny_world_file):
    result = export_world(tiny_world_file, "tiny", tmp_path / "tiny.safetensors", "int8", check_steps=8)
    assert result.bytes < 0.45 * result.source_bytes  # the tiny world's many 1-D tensors stay exact
    original, exported = World.load(tiny_world_file), World.load(result.path)
    assert exported.info["storage"] == "int8" and exported.info["name"] == "tiny"
    a, b = rollout(original, 8, seed=3), rollout(exported, 8, seed=3)
    other_seed = rollout(original, 8, seed=4)
    # 8-bit per-channel weights move each weight by at most 1/254 of its channel's largest value; the
    # frames must stay within ~2.5 grey levels RMS (40 dB) of the original's, and be far closer to them
    # than the original world is to itself under another seed (what a user would call "different").
    assert psnr(a, b) >= 40.0, psnr(a, b)
    assert psnr(a, b) >= psnr(a, other_seed) + 15.0
    assert result.fidelity.psnr_db >= 40.0 and result.fidelity.first_chunk_max_abs_diff <= 16


def test_export_command_writes_world_and_summary(tmp_path, tiny_world_file, capsys):
    from worldsdk.cli import main

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"preset": "tiny", "stages": {"teacher": 10}}))
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({"fidelity": {"1": {"psnr": 30.0, "ssim": 0.9}}}))
    out = tmp_path / "worlds" / "mini.safetensors"
    code = main(["export", "--world", str(tiny_world_file), "--name", "mini", "--storage", "int8", "--summary", str(recipe),
                 "--eval", str(evaluation), "--check-steps", "4", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "fidelity vs the original over 4 steps" in printed and "MB in total" in printed
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["name"] == "mini" and summary["storage"] == "int8" and summary["bytes"] == out.stat().st_size
    assert summary["training"] == {"preset": "tiny", "stages": {"teacher": 10}}
    assert summary["eval"]["fidelity"]["1"]["psnr"] == 30.0 and summary["fidelity"]["steps"] == 4
    world = World.load(out)
    assert world.info["training"]["preset"] == "tiny" and world.info["fidelity"]["psnr_db"] == summary["fidelity"]["psnr_db"]
    assert main(["export", "--world", str(tmp_path / "missing.safetensors"), "--name", "x", "--out", str(out)]) == 1


def test_start_bank_needs_the_starts_api_or_says_so(tmp_path, tiny_world_file):
    world = World.load(tiny_world_file)
    try:
        from worldsdk.starts import build_start_bank  # noqa: F401
        available = hasattr(world, "set_start_bank")
    except ImportError:
        available = False
    if not available:
        with pytest.raises(RuntimeError, match="start_bank"):
            attach_start_bank(world, str(tmp_path), 2, 4)
        return
    from worldsdk.data.recorder import record

    record("ALE/Pong-v5", tmp_path / "pong", episodes=2, policy="scripted", size=(32, 32), max_steps=30, seed=0)
    result = export_world(tiny_world_file, "tiny", tmp_path / "tiny.safetensors", "int8", starts_from=str(tmp_path / "pong"),
                          starts=2, check_steps=2)
    assert World.load(result.path).info["start_bank"]["starts"] == 2
    assert json.loads(result.summary_path.read_text())["start_bank"]["starts"] == 2


def test_reward_model_of_another_world_file_is_attached(tmp_path, tiny_world_file):
    from worldsdk.reward import RewardConfig, RewardModel

    donor = World.load(tiny_world_file)
    mc = donor.model.config
    torch.manual_seed(1)
    donor.set_reward_model(RewardModel(RewardConfig(latent_channels=mc.latent_channels, latent_height=mc.latent_height,
                                                    latent_width=mc.latent_width, action_dim=mc.action_dim, channels=8, hidden=16)))
    donor_file = donor.save(tmp_path / "donor.safetensors")
    result = export_world(tiny_world_file, "tiny", tmp_path / "out.safetensors", "int8", check_steps=2, reward_from=donor_file)
    exported = World.load(result.path)
    assert exported.info["reward_model"]["from"] == str(donor_file)
    for name, value in donor.reward_model.state_dict().items():  # small reward tensors are stored exactly
        stored = exported.reward_model.state_dict()[name]
        assert torch.allclose(stored, value, atol=float(value.abs().max()) / 200 + 1e-8), name
    with pytest.raises(ValueError, match="no reward model"):
        export_world(tiny_world_file, "tiny", tmp_path / "x.safetensors", "int8", check_steps=2, reward_from=tiny_world_file)
    other = World.from_preset("tiny", seed=5)  # another autoencoder: its latents mean something else
    other.set_reward_model(donor.reward_model)
    other_file = other.save(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="different autoencoder"):
        export_world(tiny_world_file, "tiny", tmp_path / "y.safetensors", "int8", check_steps=2, reward_from=other_file)


def test_a_world_exported_again_keeps_the_record_of_what_it_carries(tmp_path, tiny_world_file):
    # a shipped file re-exported with a new decoder: its summary still says where its reward model and
    # training came from (the reward model itself travels in the weights), and a new summary replaces the old
    from worldsdk.autoencoder import save_autoencoder
    from worldsdk.reward import RewardConfig, RewardModel

    donor = World.load(tiny_world_file)
    mc = donor.model.config
    donor.set_reward_model(RewardModel(RewardConfig(latent_channels=mc.latent_channels, latent_height=mc.latent_height,
                                                    latent_width=mc.latent_width, action_dim=mc.action_dim, channels=8, hidden=16)))
    donor_file = donor.save(tmp_path / "donor.safetensors")
    training = tmp_path / "recipe.json"
    training.write_text(json.dumps({"budget": 7}))
    first = export_world(tiny_world_file, "tiny", tmp_path / "a" / "tiny.safetensors", "int8", summary=training,
                         check_steps=2, reward_from=donor_file)
    decoder = save_autoencoder(tmp_path / "decoder.safetensors", World.load(first.path).autoencoder)
    again = export_world(first.path, "tiny", tmp_path / "b" / "tiny.safetensors", "int8", check_steps=2, decoder_from=decoder)
    summary = json.loads(again.summary_path.read_text())
    assert summary["reward_model"]["from"] == str(donor_file) and summary["training"] == {"budget": 7}
    assert summary["exported_from"] == str(first.path) and summary["eval"] is None
    assert World.load(again.path).reward_model is not None
    plain = export_world(tiny_world_file, "tiny", tmp_path / "c" / "tiny.safetensors", "int8", check_steps=2)
    assert json.loads(plain.summary_path.read_text())["reward_model"] is None
    training.write_text(json.dumps({"budget": 9}))
    renewed = export_world(first.path, "tiny", tmp_path / "d" / "tiny.safetensors", "int8", summary=training, check_steps=2)
    assert json.loads(renewed.summary_path.read_text())["training"] == {"budget": 9}


def test_saved_files_are_readable_by_others(tmp_path):
    """Shipped worlds are package data: a file only its writer can read would break other users' installs."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = atomic_save({"w": torch.ones(2, 2)}, {"format": "test"}, tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_decoder_of_a_decoder_only_finetune_is_swapped_in(tmp_path, tiny_world_file):
    from worldsdk.autoencoder import load_autoencoder, save_autoencoder

    world = World.load(tiny_world_file)
    tuned = load_autoencoder(save_autoencoder(tmp_path / "same.safetensors", world.autoencoder))
    with torch.no_grad():
        for p in tuned.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tuned_file = save_autoencoder(tmp_path / "tuned.safetensors", tuned)
    result = export_world(tiny_world_file, "tiny", tmp_path / "out.safetensors", "exact", check_steps=2,
                          decoder_from=tuned_file)
    exported = World.load(result.path)
    assert exported.info["decoder_from"] == str(tuned_file)
    z = torch.randn(2, tuned.config.latent_channels, 8, 8)
    assert torch.equal(exported.autoencoder.decode(z), tuned.decode(z))
    assert not torch.equal(exported.autoencoder.decode(z), world.autoencoder.decode(z))
    frames = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    assert torch.equal(exported.autoencoder.encode(frames), world.autoencoder.encode(frames))
    with torch.no_grad():  # an encoder that changed: the world's latents would mean something else
        tuned.encoder[1].weight.add_(0.01)
    other = save_autoencoder(tmp_path / "other.safetensors", tuned)
    with pytest.raises(ValueError, match="encoder or latent statistics differ"):
        export_world(tiny_world_file, "tiny", tmp_path / "x.safetensors", "exact", check_steps=2, decoder_from=other)
