"""The daemon's and the CLI's configuration: one immutable `Config`, built once at the edge,
validated before anything starts (TOML < environment < flags).

- `sections`  what the settings are: the crawler's own section dataclasses and their checks, the
              product's defaults for the engine's (`DAEMON_DEFAULTS`), `Config` composing every
              section, and the rules that join two sections
- `loader`    where values come from: `load_config` reads the TOML file, the environment and the
              flags, converts each value and names where a bad one was set
- `template`  the commented file `crystalline init` writes (`default_config_text`)

Callers import from here. May import `crawler.ingest` (its extract and watch sections), the
engine's and the store's configuration, and nothing above it (crawler/__init__.py).
"""

from .loader import load_config
from .sections import (
    AFTER_INGEST,
    BUILT_IN,
    CONFIG_FILE,
    DAEMON_DEFAULTS,
    DATABASE_FILE,
    DEFAULT_STATE_DIR,
    ENV_PREFIX,
    IDLE_MODES,
    LOG_FORMATS,
    LOG_LEVELS,
    SECTIONS,
    Config,
    DaemonConfig,
    GrowthConfig,
    HttpConfig,
    LogConfig,
    MetricsConfig,
    WatchConfig,
    check_across_sections,
    parse_listen,
)
from .template import COMMENTED_OUT, CONFIG_TEMPLATE, NOT_IN_FILE, default_config_text

__all__ = [
    "AFTER_INGEST", "BUILT_IN", "COMMENTED_OUT", "CONFIG_FILE", "CONFIG_TEMPLATE", "DAEMON_DEFAULTS",
    "DATABASE_FILE", "DEFAULT_STATE_DIR", "ENV_PREFIX", "IDLE_MODES", "LOG_FORMATS", "LOG_LEVELS", "NOT_IN_FILE",
    "SECTIONS",
    "Config", "DaemonConfig", "GrowthConfig", "HttpConfig", "LogConfig", "MetricsConfig", "WatchConfig",
    "check_across_sections", "default_config_text", "load_config", "parse_listen",
]
