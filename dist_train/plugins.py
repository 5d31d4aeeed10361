"""Plug-ins by import path: ``model.name`` and ``data.dataset`` may name a factory instead of a built-in.

Two spellings: ``package.module:attr`` (imported like any module; the working directory is on the
search path, as for ``python -m``) and ``path/to/file.py:attr`` (a file, relative to the working
directory). Every rank imports the plug-in itself. Every failure (file or module not found, the import
raised, no such attribute, not callable, the factory raised) is one :class:`ConfigError` line.

:func:`dist_train.train` can also hand objects over directly (:func:`given`): they are registered
under a ``given:NAME`` spelling, which resolves in this process only.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import os
import sys
import traceback
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from dist_train.errors import ConfigError

GIVEN = "given:"
_given: dict[str, Any] = {}
"""Objects handed to :func:`dist_train.train` in this process, by their ``given:NAME`` spelling."""


def is_import_path(name: str) -> bool:
    """Whether ``name`` names a plug-in (``module:attr``, ``file.py:attr`` or ``given:NAME``)."""
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr)


def where(error: BaseException) -> str:
    """``file:line`` where ``error`` arose: the offending line of a SyntaxError (its traceback ends inside
    importlib), else the innermost frame of its traceback (empty without one)."""
    if isinstance(error, SyntaxError) and error.filename:
        return f"{error.filename}:{error.lineno}"
    frames = traceback.extract_tb(error.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def describe_error(error: BaseException) -> str:
    """``Type: message (at file:line)`` on one line."""
    text = " ".join((error.msg if isinstance(error, SyntaxError) else str(error)).split())
    at = where(error)
    return f"{type(error).__name__}{': ' + text if text else ''}{f' (at {at})' if at else ''}"


def _import_file(path: Path, spec_text: str) -> ModuleType:
    """Import ``path`` as a module named after its file (kept in ``sys.modules`` so its objects pickle)."""
    if not path.is_file():
        raise ConfigError(f"{spec_text}: file not found: {path.resolve()} (working directory {os.getcwd()})")
    name = f"dist_train_plugin_{path.stem}_{zlib.crc32(str(path.resolve()).encode()):08x}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{spec_text}: cannot import {path} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ConfigError(f"{spec_text}: importing {path} raised {describe_error(e)}") from None
    return module


def _import_module(module_name: str, spec_text: str) -> ModuleType:
    """Import ``module_name`` with the working directory on the search path."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(f"{e.name}.")):
            raise ConfigError(f"{spec_text}: module '{module_name}' not found (working directory {cwd})") from None
        raise ConfigError(f"{spec_text}: importing {module_name} raised {describe_error(e)}") from None
    except Exception as e:
        raise ConfigError(f"{spec_text}: importing {module_name} raised {describe_error(e)}") from None


def source_of(module: ModuleType) -> str:
    """Where a plug-in module was read from."""
    return str(getattr(module, "__file__", None) or module.__name__)


def resolve(spec_text: str, key: str) -> tuple[Any, str]:
    """The object ``spec_text`` names (the value of config ``key``), and the file it came from."""
    if spec_text.startswith(GIVEN):
        if spec_text not in _given:
            raise ConfigError(
                f"{key}={spec_text}: an object handed to dist_train.train() in another process; "
                "hand it over again, or name a factory by import path"
            )
        return _given[spec_text], "handed to dist_train.train()"
    location, _, attr = spec_text.rpartition(":")
    label = f"{key}={spec_text}"
    if location.endswith(".py") or "/" in location or os.sep in location:
        module = _import_file(Path(location).expanduser(), label)
    else:
        module = _import_module(location, label)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{label}: {source_of(module)} has no attribute '{part}'{hint}")
        obj = getattr(obj, part)
    return obj, source_of(module)


def load_factory(spec_text: str, key: str) -> Callable[..., Any]:
    """The callable ``spec_text`` names; a one-line ConfigError if it cannot be found or is not callable."""
    obj, source = resolve(spec_text, key)
    if not callable(obj) and not spec_text.startswith(GIVEN):
        raise ConfigError(f"{key}={spec_text}: {type(obj).__name__} object in {source} is not callable")
    return obj


def call_factory(factory: Callable[..., Any], spec_text: str, key: str, **kwargs: Any) -> Any:
    """``factory(**kwargs)``; its exception becomes one line with its type, message and where it was raised."""
    try:
        return factory(**kwargs)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{key}={spec_text}: the factory raised {describe_error(e)}") from None


def spelling(obj: Any) -> str:
    """How a config names ``obj``: its import path when it has one (a module-level function or class of an
    importable module), else ``given:NAME``."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if callable(obj) and module and qualname and module != "__main__" and "<locals>" not in qualname:
        return f"{module}:{qualname}"
    return f"{GIVEN}{qualname or type(obj).__name__}"


@contextlib.contextmanager
def given(**objects: Any) -> Iterator[dict[str, str]]:
    """Register ``objects`` (not None) under their spellings while the block runs; yields name -> spelling."""
    names = {key: spelling(obj) for key, obj in objects.items() if obj is not None}
    for key, name in names.items():
        if name.startswith(GIVEN):
            _given[name] = objects[key]
    try:
        yield names
    finally:
        for name in names.values():
            _given.pop(name, None)


def check_imports(pairs: dict[str, str]) -> list[str]:
    """For each config key -> value that names a plug-in: import it here and say where it was found."""
    lines = []
    for key, value in pairs.items():
        if is_import_path(value):
            _, source = resolve(value, key)
            lines.append(f"{key}={value} imports from {source}")
    return lines
