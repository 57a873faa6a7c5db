"""Loading the configuration: where each value comes from, and turning it into a section.

Sources, later ones winning: built-in defaults, a TOML file (`--config`, or
STATE_DIR/crystalline.toml when it exists), environment variables `CRYSTALLINE_<SECTION>_<KEY>`
(for example CRYSTALLINE_STORAGE_URL, CRYSTALLINE_EXTRACT_MAX_FILE_BYTES), then command-line
flags. Each section is the frozen dataclass its owner defines (`storage.StorageConfig`,
`crawler.ingest.extract.ExtractLimits`, ...); `load_config` validates them all before anything starts,
and every error names the setting, where it came from and what is allowed. This is the one
module that reads configuration files and the environment; what the settings are and their
defaults is `sections`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine import ConfigError as EngineConfigError
from storage import StorageConfig

from .. import ConfigError
from .sections import (
    BUILT_IN,
    CONFIG_FILE,
    DAEMON_DEFAULTS,
    DEFAULT_STATE_DIR,
    ENV_PREFIX,
    SECTIONS,
    Config,
    check_across_sections,
)


def _convert(value: Any, kind: Any, where: str) -> Any:
    """Coerce a TOML or environment value to the field's type, or say what was expected."""
    if isinstance(kind, str):  # postponed annotations
        kind = {"int": int, "float": float, "str": str, "bool": bool}.get(kind, kind)
    if typing.get_origin(kind) is tuple:  # a list in TOML, comma-separated in the environment
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(v.strip() for v in items if v.strip())
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"{where}: expected {name}, got {value!r}") from None
    return value


def _section(cls: type, values: Mapping[str, tuple[Any, str]], section: str):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = values[unknown[0]][1]
        raise ConfigError(f"{where}: unknown setting [{section}] {unknown[0]}; allowed: {', '.join(sorted(known))}")
    kwargs = {key: _convert(value, hints[key], where) for key, (value, where) in values.items()}
    try:
        instance = cls(**kwargs)
        validate = getattr(instance, "validate", None)
        if cls is StorageConfig:  # checked once its url is resolved (Config.storage_config)
            return instance
        return validate() if validate else instance
    except (ConfigError, EngineConfigError) as exc:  # say where the values it names were set: that is where to fix them
        text = str(exc)
        sources = [where for key, (_, where) in values.items()
                   if re.search(rf"\b{key}\b", text) and where != BUILT_IN]
        raise ConfigError(f"[{section}] {text}" + (f" (set in {'; '.join(sources)})" if sources else "")) from None


def load_config(config_file: str | Path | None = None, env: Mapping[str, str] | None = None,
                state_dir: str | Path | None = None,
                overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Config:
    """Resolve and validate the configuration. `overrides` holds flag values by section;
    `state_dir` is the --state-dir flag. Raises ConfigError naming the bad setting."""
    env = os.environ if env is None else env
    values: dict[str, dict[str, tuple[Any, str]]] = {name: {} for name in SECTIONS}
    top: dict[str, tuple[Any, str]] = {}

    resolved_state = state_dir or env.get(ENV_PREFIX + "STATE_DIR")
    path = Path(config_file) if config_file else None
    if path is None:
        candidate = Path(resolved_state or DEFAULT_STATE_DIR) / CONFIG_FILE
        path = candidate if candidate.is_file() else None
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for key, value in data.items():
            if isinstance(value, dict):
                if key not in SECTIONS:
                    raise ConfigError(f"{path}: unknown section [{key}]; allowed: {', '.join(SECTIONS)}")
                for k, v in value.items():
                    values[key][k] = (v, f"{path} [{key}] {k}")
            elif key == "state_dir":
                top[key] = (value, f"{path} state_dir")
            else:
                raise ConfigError(f"{path}: unknown setting {key!r}; allowed: state_dir and sections {', '.join(SECTIONS)}")

    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            name = f"{ENV_PREFIX}{section}_{f.name}".upper()
            if name in env:
                values[section][f.name] = (env[name], f"environment {name}")
    if ENV_PREFIX + "STATE_DIR" in env:
        top["state_dir"] = (env[ENV_PREFIX + "STATE_DIR"], f"environment {ENV_PREFIX}STATE_DIR")

    for section, flags in (overrides or {}).items():
        for key, value in flags.items():
            if value is not None:
                values[section][key] = (value, f"flag --{key.replace('_', '-')}")
    if state_dir is not None:
        top["state_dir"] = (str(state_dir), "flag --state-dir")

    state = Path(str(top["state_dir"][0])) if "state_dir" in top else Path(DEFAULT_STATE_DIR)
    for section, defaults in DAEMON_DEFAULTS.items():  # the product's defaults, under every source
        for key, value in defaults.items():
            values[section].setdefault(key, (value, BUILT_IN))
    sections = {name: _section(cls, values[name], name) for name, cls in SECTIONS.items()}
    depth = values["model"].get("n_layer")  # set by hand, growth leaves the depth alone
    depth_set_in = "" if depth is None or depth[1] == BUILT_IN else depth[1]
    config = Config(state_dir=state, **sections, depth_set_in=depth_set_in)
    check_across_sections(config, values)
    return config
