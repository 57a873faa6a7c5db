"""How every command finds its state directory: one resolution, the daemon's own.

`--state-dir`, then the environment (CRYSTALLINE_STATE_DIR), then the configuration file's
`state_dir` (`--config FILE`, or STATE_DIR/crystalline.toml), then ./crystalline-state: exactly
what `load_config` resolves for `crystalline run`. Every command registers the same two flags
through `add_state_flags` and asks `command_config` for what they mean, so a command run from
another folder with only the environment set (as in the image, or `docker exec`) sees the
daemon's state. Knows nothing of locks, stores or models; raises ConfigError (one line) for a
bad configuration.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .. import ConfigError
from ..config import CONFIG_FILE, DEFAULT_STATE_DIR, ENV_PREFIX, Config, load_config

STATE_HELP = ("the state directory (default: CRYSTALLINE_STATE_DIR, else the config file's state_dir, "
              "else ./crystalline-state)")


def add_state_flags(parser: Any) -> None:
    """Register `--state-dir DIR` and `--config FILE` on one command's parser."""
    parser.add_argument("--state-dir", default=None, metavar="DIR", help=STATE_HELP)
    parser.add_argument("--config", default=None, metavar="FILE",
                        help=f"TOML configuration (default: STATE_DIR/{CONFIG_FILE} when present)")


def command_config(args: argparse.Namespace, overrides: dict | None = None) -> Config:
    """The configuration a command runs with, resolved as the daemon resolves it (load_config):
    flag, environment, config file, default. Raises ConfigError naming a bad setting."""
    return load_config(args.config, state_dir=args.state_dir, overrides=overrides)


def command_state_dir(args: argparse.Namespace, unreadable_config_ok: bool = False) -> Path:
    """The state directory alone. With `unreadable_config_ok` (`init --force`, which exists to
    replace a broken crystalline.toml), a configuration that does not load falls back to the
    flag, the environment and the default, the same order without the file."""
    try:
        return command_config(args).state_dir
    except ConfigError:
        if not unreadable_config_ok:
            raise
        return Path(args.state_dir or os.environ.get(ENV_PREFIX + "STATE_DIR") or DEFAULT_STATE_DIR)
