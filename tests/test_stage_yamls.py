"""The trainers' YAMLs mirror their dataclasses: every stage=<name> file lists exactly the fields of the
stage's config dataclass (nested optimizers too) with the dataclass's defaults, which are the source of
truth; config.yaml's loop section is LoopConfig's defaults, and a stage file's loop overrides name
LoopConfig fields only."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from trainers.app import STAGES, build_dataclass, stage_class
from trainers.loop import LoopConfig

CONF = Path(__file__).resolve().parent.parent / "trainers" / "conf"
STAGE_YAMLS = sorted((CONF / "stage").glob("*.yaml"))
GLOBAL = "# @package _global_"  # a stage file that also sets loop defaults holds its stage under `stage:`


def stage_section(path: Path) -> tuple[dict, dict]:
    """(the `stage` mapping, the `loop` overrides) of a stage file."""
    text = path.read_text()
    data = yaml.safe_load(text)
    if text.startswith(GLOBAL):
        assert set(data) <= {"stage", "loop"}, f"{path.name}: a global stage file sets stage and loop only"
        return data["stage"], data.get("loop", {})
    return data, {}


def differences(got: dict, want: dict, where: str = "") -> list[str]:
    """Keys missing or extra and values unequal between a YAML mapping and a dataclass's asdict, nested.
    A value `${key}` is the command line's (Hydra interpolation of a top-level key): only its presence counts."""
    found = [f"{where}{k}: missing" for k in sorted(set(want) - set(got))]
    found += [f"{where}{k}: not a field" for k in sorted(set(got) - set(want))]
    for k in sorted(set(got) & set(want)):
        value, default = got[k], want[k]
        if isinstance(default, dict):
            found += differences(value or {}, default, f"{where}{k}.")
        elif isinstance(value, str) and value.startswith("${"):
            continue
        elif (tuple(value) if isinstance(value, list) else value) != default:
            found.append(f"{where}{k}: {value!r} in the YAML, {default!r} in the dataclass")
    return found


def test_every_stage_has_its_yaml_and_no_yaml_lacks_a_stage():
    assert sorted(p.stem for p in STAGE_YAMLS) == sorted(STAGES)


@pytest.mark.parametrize("path", STAGE_YAMLS, ids=lambda p: p.stem)
def test_stage_yaml_lists_every_field_with_its_default(path):
    stage, _ = stage_section(path)
    cls = stage_class(path.stem).config_class
    assert stage["name"] == path.stem
    assert differences(stage, dataclasses.asdict(cls())) == []
    given = {k: v for k, v in stage.items() if not (isinstance(v, str) and v.startswith("${"))}
    assert build_dataclass(cls, given, "stage") == cls()  # and it builds, typed, into the defaults


def test_loop_defaults_mirror_loop_config_and_stage_overrides_name_its_fields():
    loop = yaml.safe_load((CONF / "config.yaml").read_text())["loop"]
    assert differences(loop, dataclasses.asdict(LoopConfig())) == []
    for path in STAGE_YAMLS:
        overrides = stage_section(path)[1]
        build_dataclass(LoopConfig, {**loop, **overrides}, f"{path.name} loop")  # unknown keys or types raise


def test_a_yaml_that_drifts_from_its_dataclass_is_caught():
    default = dataclasses.asdict(stage_class("dmd").config_class())
    drifted = {**default, "guidance": 2.5, "generator_optimizer": {**default["generator_optimizer"], "eps": 1e-6},
               "betas": [0.9, 0.99]}
    del drifted["ema_start_step"]
    drifted["critic_optimizer"] = {**default["critic_optimizer"], "betas": list(default["critic_optimizer"]["betas"])}
    assert differences(drifted, default) == [
        "ema_start_step: missing", "betas: not a field", "generator_optimizer.eps: 1e-06 in the YAML, 1e-08 in the dataclass",
        "guidance: 2.5 in the YAML, 3.0 in the dataclass"]
