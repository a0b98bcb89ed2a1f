"""Loading a committed script (a reference generator, a study script) as a module in tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(path: str | Path, name: str | None = None) -> ModuleType:
    """The script at ``path`` (absolute, or relative to the repository root), executed afresh
    as a module and registered in ``sys.modules`` as ``name`` (default: the file's stem), where
    dataclasses and pickling look their module up."""
    path = Path(path) if Path(path).is_absolute() else ROOT / path
    name = path.stem if name is None else name
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
