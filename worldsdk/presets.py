"""The preset table: one row per named preset, with everything a world of that name is built from.

    PRESETS["small"].model         the DiT's shapes       (worldsdk.config.MODEL_PRESETS)
    PRESETS["small"].spec          the world's spec       (worldsdk.spec.WORLD_PRESETS)
    PRESETS["small"].autoencoder   the frame autoencoder  (worldsdk.autoencoder.AUTOENCODER_PRESETS; None: Wan VAE)
    PRESETS["small"].text          the byte text encoder  (`text_config`, derived from the model's text shape)

`World.from_preset` builds from a row; the trainers' `model=` group (trainers/conf/model/*.yaml) names a
row and its autoencoder, and tests/test_presets.py checks every YAML against this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from worldsdk.autoencoder import AUTOENCODER_PRESETS, AutoencoderConfig
from worldsdk.config import MODEL_PRESETS, ModelConfig
from worldsdk.spec import WORLD_PRESETS, WorldSpec
from worldsdk.model.text import ByteTextConfig


def text_config(model_config: ModelConfig) -> ByteTextConfig:
    """The byte text encoder a model of these shapes gets when it is built from scratch (a trained
    world stores its own in its file): two layers, at most 256 wide, projecting to the model's text_dim."""
    width = min(model_config.text_dim, 256)
    heads = 4 if width >= 64 else 2
    return ByteTextConfig(text_len=model_config.text_len, text_dim=model_config.text_dim, num_layers=2, num_heads=heads,
                          width=0 if width == model_config.text_dim else width)


@dataclass(frozen=True)
class Preset:
    """One row of the table. `autoencoder_name` is the AUTOENCODER_PRESETS entry (None: the Wan VAE,
    loaded with the Wan import)."""

    name: str
    model: ModelConfig
    spec: WorldSpec
    autoencoder_name: str | None
    text: ByteTextConfig

    @property
    def autoencoder(self) -> AutoencoderConfig | None:
        return None if self.autoencoder_name is None else AUTOENCODER_PRESETS[self.autoencoder_name]

    def model_choice(self) -> dict:
        """The trainers' `model=` group entry (trainers.stage.ModelChoice fields) for this preset."""
        return {"name": self.name, "preset": self.name, "autoencoder": self.autoencoder_name}


# which frame autoencoder each model preset decodes with (None: the Wan VAE)
_AUTOENCODER_OF = {"tiny": "tiny", "small": "small", "small-ctx": "small", "wan-1.3b": None}

PRESETS: dict[str, Preset] = {
    name: Preset(name, MODEL_PRESETS[name], WORLD_PRESETS[name], _AUTOENCODER_OF[name], text_config(MODEL_PRESETS[name]))
    for name in MODEL_PRESETS
}


def get_preset(name: str) -> Preset:
    """The row called `name`."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
