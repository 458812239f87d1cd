"""The client-facing spec module: what a client needs (ActionSpec, WorldSpec, the schedule's numbers, the
world spec presets) apart from the model's config, which re-exports it so that old imports keep working."""

import ast
import sys
from pathlib import Path

import worldsdk.config as config
import worldsdk.spec as spec

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = sorted((ROOT / "worldsdk" / "viewer").glob("*.py")) + [
    ROOT / "worldsdk" / "bridge" / name for name in ("client.py", "protocol.py", "shm.py", "testing.py")]


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(a.name for a in node.names)
    return modules


def test_config_re_exports_the_spec_names_as_the_same_objects():
    for name in ("ActionSpec", "WorldSpec", "WORLD_PRESETS", "ACTION_KINDS", "PAPER_SHIFT", "PAPER_STEPS",
                 "SMALL_WORLD_SHIFT", "GAME_ACTION", "GAME_KEYS", "dataclass_from_dict"):
        assert getattr(config, name) is getattr(spec, name), name
    assert sorted(spec.WORLD_PRESETS) == sorted(config.MODEL_PRESETS)  # a preset has both halves
    assert config.MODEL_PRESETS["tiny"].action_dim == spec.WORLD_PRESETS["tiny"].action.feature_dim


def test_the_viewer_and_the_bridge_clients_read_the_spec_module_not_the_model_config():
    for path in CLIENTS:
        modules = imported_modules(path)
        assert "worldsdk.config" not in modules, path.relative_to(ROOT)
    assert "worldsdk.spec" in imported_modules(ROOT / "worldsdk" / "viewer" / "session.py")


def test_the_spec_module_imports_no_model_code():
    """No torch, no model: numpy, and gymnasium inside `ActionSpec.to_space`; the schedule's torch code is
    imported when a schedule is asked for."""
    modules = imported_modules(ROOT / "worldsdk" / "spec.py")
    top_level = {m for m in modules if not m.startswith("worldsdk.diffusion")}
    assert {m.split(".")[0] for m in top_level} <= {"__future__", "dataclasses", "typing", "numpy", "gymnasium"}
    assert "worldsdk.spec" in sys.modules and spec.WORLD_PRESETS["small"].schedule.shift == spec.SMALL_WORLD_SHIFT
