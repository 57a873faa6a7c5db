"""`crystalline run` (the daemon, in the foreground) and `crystalline init` (a commented config).

Wired into the parser by crawler/cli/main.py; the daemon itself is crawler/service/daemon.py.
"""

from __future__ import annotations

import argparse
from typing import Any

from .. import ConfigError
from ..config import CONFIG_FILE, default_config_text
from .opener import add_state_flags, command_config, command_state_dir


def add_commands(commands: Any) -> None:
    """Register `run` and `init` on the CLI's subparsers."""
    run = commands.add_parser("run", help="run the daemon in the foreground (systemd and Docker supervise it)")
    add_state_flags(run)
    run.add_argument("--watch", action="append", default=None, metavar="DIR", help="a folder to watch (repeatable)")
    run.add_argument("--threads", type=int, default=None, metavar="N", help="engine worker threads; 0 = every core")
    run.add_argument("--polling", action="store_true", default=None, help="poll instead of inotify events")
    run.add_argument("--log-format", choices=("auto", "json", "console"), default=None)
    run.add_argument("--metrics", default=None, metavar="HOST:PORT",
                     help="serve Prometheus metrics there, such as 127.0.0.1:9464 ([metrics] listen)")
    run.add_argument("--http", default=None, metavar="HOST:PORT|off",
                     help="serve the page and API there ([http] listen, default 127.0.0.1:8484); off: not at all")
    run.add_argument("--distributed", action="store_true",
                     help="under `mpiexec -n N`: N processes train one model ([distributed], docs/SCALE-OUT.md)")
    run.add_argument("--no-train", dest="train", action="store_false", default=None,
                     help="ingest only, no trainer ([daemon] train = false): one of several daemons "
                          "writing a shared corpus (docs/SCALE-OUT.md)")
    run.set_defaults(handler=command_run)

    for name, text in (("pause", "hold training (ingest goes on) until `resume`; a checkpoint is written first"),
                       ("resume", "let training go on after `pause`")):
        control = commands.add_parser(name, help=text)
        add_state_flags(control)
        control.set_defaults(handler=command_pause if name == "pause" else command_resume)

    init = commands.add_parser("init", help=f"write a commented default {CONFIG_FILE} into the state directory")
    add_state_flags(init)
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(handler=command_init)


def command_run(args: argparse.Namespace) -> int:
    from ..service.daemon import run_daemon

    overrides = {
        "watch": {"roots": tuple(args.watch) if args.watch else None, "polling": args.polling},
        "train": {"threads": args.threads},
        "daemon": {"train": args.train},
        "log": {"format": args.log_format,
                "level": args.log_level},
        "metrics": {"listen": args.metrics},
        "http": {"listen": args.http},
    }
    return run_daemon(config_file=args.config, state_dir=args.state_dir, overrides=overrides,
                      distributed=args.distributed)


def command_pause(args: argparse.Namespace) -> int:
    """Create STATE_DIR/paused: a running daemon checkpoints and holds training at its next step,
    and a daemon started later starts paused. Ingest goes on."""
    from ..service.daemon import PAUSE_FILE
    from ..state.health import lock_holder

    state = command_config(args).state_dir
    if not state.is_dir():
        raise ConfigError(f"{state}: no such state directory (pass --state-dir or set CRYSTALLINE_STATE_DIR)")
    (state / PAUSE_FILE).touch()
    pid = lock_holder(state)
    where = f"the daemon (pid {pid}) holds training at its next step" if pid else "no daemon runs: it will start paused"
    print(f"pause: {where}; `crystalline resume --state-dir {state}` lets it go on")
    return 0


def command_resume(args: argparse.Namespace) -> int:
    """Remove STATE_DIR/paused: training goes on at the daemon's next look (within a second)."""
    from ..service.daemon import PAUSE_FILE
    from ..state.health import lock_holder

    state = command_config(args).state_dir
    try:
        (state / PAUSE_FILE).unlink()
    except FileNotFoundError:
        print(f"resume: {state} was not paused")
        return 0
    pid = lock_holder(state)
    print(f"resume: training goes on{f' in the daemon (pid {pid})' if pid else ' at the next start'}")
    return 0


def command_init(args: argparse.Namespace) -> int:
    path = command_state_dir(args, unreadable_config_ok=args.force) / CONFIG_FILE
    if path.exists() and not args.force:
        raise ConfigError(f"{path} exists; --force overwrites it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(default_config_text(), encoding="utf-8")
    print(f"wrote {path}")
    return 0
