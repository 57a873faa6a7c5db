"""`crystalline run` (the daemon, in the foreground) and `crystalline init` (a commented config).

Wired into the parser by crawler/cli/main.py; the daemon itself is crawler/service/daemon.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import ConfigError
from ..config import CONFIG_FILE

DEFAULT_CONFIG = """\
# crystalline configuration. Every setting is optional: this file shows the defaults.
# Precedence: these values < CRYSTALLINE_<SECTION>_<KEY> environment variables < flags.
# The state directory (database, checkpoints, tokenizer) is --state-dir, CRYSTALLINE_STATE_DIR,
# or `state_dir = "..."` at the top of this file.

[watch]
roots = ["inbox"]              # folders watched recursively (created when missing)
settle_seconds = 2.0           # a file is complete when its size and mtime hold this long
polling = false                # true for network filesystems and container volumes
poll_interval_seconds = 2.0
rescan_interval_seconds = 60.0 # full scan beside the events (0: at start and after errors only)
include = []                   # name globs; empty: every file
exclude = []                   # name or relative-path globs

[daemon]
replay_fraction = 0.05         # share of each batch replayed from trained data (limits forgetting)
idle = "sleep"                 # once training plateaus: "sleep" until new text, "replay" trains on
eval_every_steps = 1000        # held-out bits per byte every N steps or M seconds, and at checkpoints
eval_every_seconds = 120.0
plateau_patience = 5           # evaluations in a row that do not beat the best by plateau_margin
plateau_margin = 0.002         # bits per byte
max_passes = 100.0             # passes over the text after which training stops; 0: no limit
replay_memory_mb = 256         # trained text held in memory for replay and further passes
cooldown_fraction = 0.2        # best.safetensors is a copy cooled for this share of the steps since
                               # the last evaluation (the rate decayed to 0); 0: the live weights
checkpoint_every_steps = 1000  # each checkpoint is also evaluated
checkpoint_every_seconds = 600.0
keep_checkpoints = 3
checkpoints_max_mb = 0         # disk caps in MB, enforced oldest first; 0: no cap. Checkpoints by
processed_max_mb = 0           # step (never the newest nor best.safetensors); processed/ and
quarantine_max_mb = 0          # quarantine/ by modification time (docs/STORAGE.md)
log_every = 10                 # a train_step event every N steps
status_interval_seconds = 30.0 # a status event, health.json and the systemd STATUS= line
ingest_queue_size = 10000
after_ingest = "keep"          # "move": ingested files go to STATE_DIR/processed/
health_max_age_seconds = 120.0 # `crystalline status --health` fails past this
stop_timeout_seconds = 60.0    # a stop ends within this (checkpoint first); below TimeoutStopSec=90
nice = 0                       # CPU priority outside systemd: 0 leaves it, 19 is the lowest
train = true                   # false (`run --no-train`): ingest only, into a shared corpus
claim_lease_seconds = 300.0    # PostgreSQL, one folder watched by several daemons: a dead one's
claim_attempts = 3             # files are taken over after this; failed after this many claims

[model]                        # fixed once the first checkpoint exists (docs/BENCHMARKS.md: the
context_length = 128           # size that learned most in an hour of the daemon on 2 cores)
d_model = 128
n_layer = 4
n_head = 4
mlp_ratio = 4
seed = 1337                    # vocab_size comes from the state directory's tokenizer

[train]
batch_size = 16
micro_batch_size = 0           # 0: the whole per-thread share in one pass
seq_len = 128
learning_rate = 0.003          # held after warmup; the cool-downs decay a copy
warmup_steps = 100
schedule = "constant"          # warm up once, then hold: the schedule for continuous training
weight_decay = 0.1
grad_clip = 1.0
crystalline_weight = 0.0
threads = 0                    # 0: every core
seed = 1337

[store]
url = ""                       # empty: SQLite in STATE_DIR/corpus.db; or postgresql+psycopg://user@host/db
sqlite_synchronous = "NORMAL"  # NORMAL survives process crashes; FULL also power loss (slower)
busy_timeout_ms = 5000
chunk_tokens = 65536

[extract]
max_file_bytes = 67108864      # larger files are skipped as too_large
max_uncompressed_bytes = 268435456
max_compression_ratio = 200.0
max_zip_members = 10000
time_budget_seconds = 30.0
max_memory_bytes = 2147483648  # address space of the child process that parses PDF, DOCX and EPUB

[log]
level = "info"                 # debug, info, warning, error
format = "auto"                # auto: JSON lines off a terminal, readable on one; or json, console

[metrics]
listen = ""                    # HOST:PORT of a Prometheus endpoint, such as 127.0.0.1:9464; empty: off

[http]
listen = "127.0.0.1:8484"      # the page and API of `run` (crawler/service/http.py); "" or "off": off
token = ""                     # required beyond loopback: every request carries it (or token_file)
token_file = ""
allowed_hosts = []             # further Host names the page is reached by (DNS rebinding guard)
max_generations = 1            # completions at once; a 429 beyond
max_new_tokens = 512
generation_cpu_share = 0.2     # of one core, for a completion: training keeps its cores

[distributed]                  # only under `mpiexec -n N crystalline run|train --distributed`
mode = "sync"                  # "sync": gradients summed every step (a fast LAN); "local": each
sync_every = 32                # machine takes this many steps, then parameters are averaged (slow links)
outer_lr = 1.0                 # "local": the outer step on the averaged change (1.0, momentum 0:
outer_momentum = 0.0           # plain averaging; DiLoCo's outer Nesterov: 0.7 and 0.9)
average_state = false          # "local": average the optimizer's moments too (3x the traffic)
timeout_seconds = 600.0
"""


def add_commands(commands: Any, state: dict) -> None:
    """Register `run` and `init` on the CLI's subparsers."""
    run = commands.add_parser("run", help="run the daemon in the foreground (systemd and Docker supervise it)")
    run.add_argument("--state-dir", **dict(state, default=None))
    run.add_argument("--config", default=None, metavar="FILE", help=f"TOML configuration (default: STATE_DIR/{CONFIG_FILE})")
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
        control.add_argument("--state-dir", **state)
        control.set_defaults(handler=command_pause if name == "pause" else command_resume)

    init = commands.add_parser("init", help=f"write a commented default {CONFIG_FILE} into the state directory")
    init.add_argument("--state-dir", **state)
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(handler=command_init)


def command_run(args: argparse.Namespace) -> int:
    from ..service.daemon import run_daemon

    overrides = {
        "watch": {"roots": tuple(args.watch) if args.watch else None, "polling": args.polling},
        "train": {"threads": args.threads},
        "daemon": {"train": args.train},
        "log": {"format": args.log_format,
                "level": args.log_level if args.log_level != "info" else None},
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

    state = Path(args.state_dir)
    if not state.is_dir():
        raise ConfigError(f"{state}: no such state directory (pass --state-dir)")
    (state / PAUSE_FILE).touch()
    pid = lock_holder(state)
    where = f"the daemon (pid {pid}) holds training at its next step" if pid else "no daemon runs: it will start paused"
    print(f"pause: {where}; `crystalline resume --state-dir {state}` lets it go on")
    return 0


def command_resume(args: argparse.Namespace) -> int:
    """Remove STATE_DIR/paused: training goes on at the daemon's next look (within a second)."""
    from ..service.daemon import PAUSE_FILE
    from ..state.health import lock_holder

    state = Path(args.state_dir)
    try:
        (state / PAUSE_FILE).unlink()
    except FileNotFoundError:
        print(f"resume: {state} was not paused")
        return 0
    pid = lock_holder(state)
    print(f"resume: training goes on{f' in the daemon (pid {pid})' if pid else ' at the next start'}")
    return 0


def command_init(args: argparse.Namespace) -> int:
    path = Path(args.state_dir) / CONFIG_FILE
    if path.exists() and not args.force:
        raise ConfigError(f"{path} exists; --force overwrites it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DEFAULT_CONFIG, encoding="utf-8")
    print(f"wrote {path}")
    return 0
