"""The `worldsdk-train` Hydra app: `worldsdk-train stage=<name> model=<preset> data=<dir> [key=value ...]`.

The Hydra config is turned into the typed frozen dataclasses here, at the entry point, and nothing
below this file sees a DictConfig. Stages are found by name in `STAGES` and imported lazily.
Under `torchrun`, only rank 0 lets Hydra write its output folder; the run folder itself is
rank 0's, broadcast by the loop.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Mapping

from .loop import LoopConfig, TrainResult, train
from .stage import ModelChoice, Stage

# stage name -> "module:Class" (module relative to this package); the class names its config dataclass in `config_class`.
STAGES: dict[str, str] = {
    "autoencoder": ".stages.autoencoder:AutoencoderStage",
    "teacher": ".stages.teacher:TeacherStage",
    "ode": ".stages.ode:OdeStage",
    "cd": ".stages.cd:CdStage",
    "dmd": ".stages.dmd:DmdStage",
    "reward": ".stages.reward:RewardStage",
}


def stage_class(name: str) -> type[Stage]:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; choose one of {sorted(STAGES)}")
    module_name, class_name = STAGES[name].split(":")
    # Relative to this package: it is `trainers` in a source checkout and `worldsdk.trainers` when installed.
    return getattr(importlib.import_module(module_name, __package__), class_name)


def build_dataclass(cls: type, data: Mapping[str, Any] | None, where: str) -> Any:
    """Build the frozen dataclass `cls` from plain (resolved) config data, checking every key.

    Nested dataclasses are built recursively; lists become tuples where the field is a tuple, and a
    single value given for a variable-length tuple becomes a 1-tuple (`data=data/pong`).
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in `{where}`; {cls.__name__} has {sorted(names)}")
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ValueError(f"`{where}` needs {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, where) for a, v in zip(args, value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ValueError(f"`{where}` must be {hint.__name__}, got {value!r}")
    return value


def run(config: Mapping[str, Any]) -> TrainResult:
    """Train from a resolved config mapping (what Hydra composes): run_dir, loop, model, stage."""
    stage_config_data = dict(config["stage"])
    cls = stage_class(stage_config_data.get("name", ""))
    stage_config = build_dataclass(cls.config_class, stage_config_data, "stage")
    model = build_dataclass(ModelChoice, config.get("model"), "model")
    loop = build_dataclass(LoopConfig, config.get("loop"), "loop")
    record = {"stage": dataclasses.asdict(stage_config), "model": dataclasses.asdict(model), "loop": dataclasses.asdict(loop)}
    return train(lambda ctx: cls(stage_config, model, ctx), loop, Path(config["run_dir"]), config=record)


PROGRAM = "worldsdk-train"


def _config_user_errors() -> tuple[type[BaseException], ...]:
    from worldsdk.errors import user_error_types

    # ValueError / KeyError: build_dataclass and stage_class name the bad key or value.
    return (*user_error_types(), ValueError, KeyError)


def check_overrides(overrides: list[str]) -> None:
    """Compose the config with the command line's overrides, so a wrong key fails in one line before
    Hydra sets up a run (Hydra's own report spans several lines and points at HYDRA_FULL_ERROR)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from worldsdk.errors import UserError, one_line

    ours = [o for o in overrides if not o.startswith(("-", "hydra.", "hydra/", "+hydra", "~hydra"))]
    try:
        with initialize_config_dir(config_dir=str(Path(__file__).parent / "conf"), version_base="1.3"):
            compose(config_name="config", overrides=ours)
    except (HydraException, OmegaConfBaseException) as err:
        message = one_line(err).split(" Config search path:")[0]
        if err.__cause__ is not None:  # "Key 'foo' is not in struct" lives in the cause
            message += " (" + one_line(err.__cause__).split(" full_key:")[0] + ")"
        raise UserError(message) from err


def _hydra_main(debug: bool) -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from worldsdk.errors import one_line

    @hydra.main(config_path="conf", config_name="config", version_base="1.3")
    def entry(cfg: DictConfig) -> None:
        try:
            result = run(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
        except _config_user_errors() as err:
            if debug:
                raise
            print(f"{PROGRAM}: error: {one_line(err)}", file=sys.stderr)
            sys.exit(2)  # SystemExit passes through Hydra's own error report
        if result.interrupted:
            sys.exit(130)

    entry()


def main() -> None:
    """`worldsdk-train`: user errors print one line and exit 2; `--debug` (or HYDRA_FULL_ERROR=1) shows tracebacks."""
    debug = "--debug" in sys.argv or os.environ.get("HYDRA_FULL_ERROR") == "1"
    sys.argv = [a for a in sys.argv if a != "--debug"]
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun: one Hydra output folder, rank 0's
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled", "hydra.run.dir=."]
    if not any(a.startswith("-") for a in sys.argv[1:]):  # --help, --cfg, -m ...: Hydra's own flags run as they are
        from worldsdk.errors import run_reporting_errors

        code = run_reporting_errors(lambda: check_overrides(sys.argv[1:]) or 0, PROGRAM, debug)
        if code:
            sys.exit(code)
    _hydra_main(debug)


if __name__ == "__main__":
    main()
