"""From files and overrides to a typed config: defaults < YAML layers (``base:`` first) < ``key=value``.

OmegaConf does the merging and the type checks; its errors become one-line messages that name the key
and, for a misspelt key, the closest valid one. The merged config is then validated.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from dist_train.config.schema import Config, valid_keys
from dist_train.config.validation import validate
from dist_train.errors import ConfigError
from dist_train.named_configs import find_config
from dist_train.yamlio import read_yaml_mapping


def _closest(key: str) -> str:
    matches = difflib.get_close_matches(key, valid_keys(Config), n=1, cutoff=0.5)
    return f"; did you mean '{matches[0]}'?" if matches else ""


def _explain(error: OmegaConfBaseException, source: str, key_hint: str = "") -> ConfigError:
    """Turn an OmegaConf error into a one-line ConfigError naming the key."""
    key = key_hint or getattr(error, "full_key", None) or ""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, ConfigKeyError):
        return ConfigError(f"{source}: unknown config key '{key}'{_closest(key)}")
    return ConfigError(f"{source}: bad value for '{key}': {message}")


def parse_overrides(overrides: list[str]) -> list[str]:
    """Check that every override has the form ``dotted.key=value``."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key or any(not part.isidentifier() for part in key.split(".")):
            raise ConfigError(f"bad override '{item}': expected dotted.key=value, e.g. optim.lr=0.2")
        if not value.isprintable():
            raise ConfigError(f"bad override {item!r}: the value holds a newline or another control character")
        if "#" in value and not (len(value) > 1 and value[0] == value[-1] and value[0] in "'\""):
            raise ConfigError(f"bad override '{item}': '#' starts a YAML comment; quote the value: {key}='\"{value}\"'")
    return overrides


def _yaml_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """The YAML mappings to merge, base files first: a file may name another with ``base: FILE``
    (relative to its own directory) and override some of its keys."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' files form a cycle")
    loaded = read_yaml_mapping(path, "config", "expected a mapping of config keys at the top level")
    base = loaded.pop("base", None)
    if base is None:
        return [(path, loaded)]
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a file name, got {base!r}")
    return [*_yaml_layers(path.parent / base, (*seen, path.resolve())), (path, loaded)]


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build the typed config from defaults, a YAML file and ``key=value`` overrides.

    ``path`` is a file, or the name of an installed recipe (``quickstart``; ``dist-train recipes`` lists them)."""
    merged = OmegaConf.structured(Config)
    for layer_path, layer in _yaml_layers(find_config(path)) if path is not None else []:
        try:
            merged.merge_with(OmegaConf.create(layer))
        except OmegaConfBaseException as e:
            raise _explain(e, str(layer_path)) from None
    for item in parse_overrides(list(overrides)):
        try:
            merged.merge_with(OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as e:
            raise _explain(e, f"override '{item}'", item.partition("=")[0]) from None
    config: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    if not config.name:
        config.name = Path(path).stem if path is not None else "run"
    validate(config)
    return config


def to_yaml(config: Config) -> str:
    """The resolved config as YAML (what is written to the run directory)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as plain nested dicts."""
    return OmegaConf.to_container(OmegaConf.structured(config))  # type: ignore[return-value]
