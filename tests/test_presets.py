"""One preset table: the trainers' model= YAMLs agree with it, worlds build from it, no import circle."""

import ast
from pathlib import Path

import pytest
import yaml

from trainers.stage import ModelChoice
from worldsdk import World
from worldsdk.autoencoder import AUTOENCODER_PRESETS
from worldsdk.config import MODEL_PRESETS, WORLD_PRESETS
from worldsdk.presets import PRESETS, get_preset, text_config

ROOT = Path(__file__).resolve().parent.parent
MODEL_YAMLS = sorted((ROOT / "trainers" / "conf" / "model").glob("*.yaml"))


def test_every_preset_has_its_model_yaml_and_no_yaml_lacks_a_preset():
    assert sorted(p.stem for p in MODEL_YAMLS) == sorted(PRESETS)


@pytest.mark.parametrize("path", MODEL_YAMLS, ids=lambda p: p.stem)
def test_model_yaml_equals_the_table(path):
    entry = yaml.safe_load(path.read_text())
    assert entry == PRESETS[path.stem].model_choice()
    ModelChoice(**entry)  # and it is what the model= group builds


def test_rows_hold_the_configs_a_world_is_built_from():
    for name, row in PRESETS.items():
        assert row.model is MODEL_PRESETS[name] and row.spec is WORLD_PRESETS[name]
        assert row.text == text_config(row.model) and row.text.text_dim == row.model.text_dim
        if row.autoencoder is not None:
            assert row.autoencoder is AUTOENCODER_PRESETS[row.autoencoder_name]
            assert row.autoencoder.latent_channels == row.model.latent_channels
    assert PRESETS["wan-1.3b"].autoencoder is None
    world = World.from_preset("tiny")
    assert world.model.config == PRESETS["tiny"].model and world.text_encoder.config == PRESETS["tiny"].text
    assert world.autoencoder.config == PRESETS["tiny"].autoencoder
    with pytest.raises(KeyError, match="unknown preset"):
        get_preset("huge")


def test_the_wan_package_never_imports_the_runtime():
    """worldsdk.world opens Wan folders through worldsdk.wan; worldsdk.wan builds parts and never imports back."""
    for path in (ROOT / "worldsdk" / "wan").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = {a.name for a in node.names}
                assert node.module != "worldsdk.world" and not (node.module == "worldsdk" and "World" in names), path
            elif isinstance(node, ast.Import):
                assert all(a.name != "worldsdk.world" for a in node.names), path
