"""`worldsdk.envs` and `worldsdk.trainers` in a source checkout.

An installed worldsdk holds the repository's top-level `envs/` and `trainers/` as the subpackages
`worldsdk.envs` and `worldsdk.trainers` (pyproject's package-dir), so a user's own `envs` package
never collides with ours. A source checkout keeps them at the top level, where scripts and
long-running jobs import them as `envs` and `trainers`; this finder makes `worldsdk.envs.x` the very
same module object as `envs.x` there (one copy, one Gymnasium registration), and only when the
top-level package found is this checkout's own.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

SUBPACKAGES = ("envs", "trainers")
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def is_source_checkout() -> bool:
    """True when `envs/` and `trainers/` sit beside the `worldsdk/` package rather than inside it."""
    here = Path(__file__).resolve().parent
    return not (here / "envs").is_dir() and all((SOURCE_ROOT / name / "__init__.py").is_file() for name in SUBPACKAGES)


class _AliasLoader(importlib.abc.Loader):
    """Hands back the already imported top-level module instead of running the file a second time."""

    def __init__(self, target: str):
        self.target = target
        self._spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # The import system set the alias spec on the module; the module stays `envs.x` to everything
        # else (reload, pickling, Hydra's config lookup), so its own spec goes back.
        module.__spec__ = self._spec


class SourceAliasFinder(importlib.abc.MetaPathFinder):
    """Resolves `worldsdk.<sub>[.x]` to this checkout's top-level `<sub>[.x]`."""

    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split(".")
        if len(parts) < 2 or parts[0] != "worldsdk" or parts[1] not in SUBPACKAGES:
            return None
        real = ".".join(parts[1:])
        try:
            found = importlib.util.find_spec(real)
        except (ImportError, ValueError):
            return None
        origin = getattr(found, "origin", None)
        if origin is None or not Path(origin).resolve().is_relative_to(SOURCE_ROOT / parts[1]):
            return None  # a different `envs`/`trainers` (a user's own): leave worldsdk.<sub> to other finders
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(real), is_package=found.submodule_search_locations is not None)


def install() -> None:
    if is_source_checkout() and not any(isinstance(f, SourceAliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, SourceAliasFinder())
