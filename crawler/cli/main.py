"""The `crystalline` command line: the parser of every command, and the entry point (also `python -m crawler`).

This is the edge where flags become configuration. Each command group registers its own
flags and handler from its module: `train` (train.py), `grow` (grow.py), `generate`, `eval`,
`export` (model.py), `tokenizer train` (tokenizer.py), `ingest`, `status`, `forget` (corpus.py), `show`
(show.py), `run`, `pause`, `resume`, `init` (service.py), `repair`, `reset`, `backup`
(state.py), `plot` (plot.py); `bench` is crawler/bench/throughput.py's, whose flags are
parsed only when it runs (its `--state-dir` and `--config` are opener.py's). Every command
finds its state directory as the daemon does (opener.py). Every expected failure (a missing
file, no or an incompatible checkpoint, a bad flag value, a store error) ends as ONE line
`crystalline: error: ...` on stderr and a non-zero exit status, never a traceback; a traceback
means a bug.

State layout: STATE_DIR/corpus.db (the corpus, the cursor, checkpoint rows, the evaluation
history), STATE_DIR/checkpoints/ckpt-*.safetensors (rolling) and best.safetensors, and an
optional STATE_DIR/tokenizer.json (a BPE from `crystalline tokenizer train`; without it, bytes).
Exit status: 0 done, 1 error, 2 bad usage, 130 interrupted by Ctrl-C (143 by SIGTERM). A store
error has its own two (sysexits.h): 75 (EX_TEMPFAIL) the store is unavailable for now, locked
past busy_timeout_ms, its server lost or refusing, its disk full: the same command may work
later, unchanged; 74 (EX_IOERR) the store is broken, a damaged file, an unexpected schema, a
refused constraint or login: it needs someone first. The line names which, and the way out.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from engine import CheckpointError, ConfigError
from engine.errors import EngineError
from storage import ConfigError as StorageConfigError
from storage import StorageError, StoreUnavailable

from .. import ConfigError as SettingError
from .. import installed_version
from ..config import LOG_LEVELS, LogConfig
from ..ingest.data import DataError
from ..ingest.tokenizer import TokenizerError
from ..logging import configure_logging
from ..service.daemon import DaemonError
from ..state.health import DaemonAlreadyRunning
from .corpus import add_commands as add_corpus_commands
from .grow import add_commands as add_grow_commands
from .model import add_commands as add_model_commands
from .opener import add_state_flags, command_config
from .parsing import EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_INTERRUPTED, PROG, CliError, Parser
from .plot import add_commands as add_plot_commands
from .progress import SHOWN_BY_BARS, BarSafeStream, on_terminal
from .service import add_commands as add_service_commands
from .show import add_commands as add_show_commands
from .state import add_commands as add_state_commands
from .tokenizer import add_commands as add_tokenizer_commands
from .train import add_commands as add_train_commands


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand."""
    parser = Parser(prog=PROG, description="A continuous-learning crawler daemon and its trainer.")
    parser.add_argument("--log-level", default=None, choices=LOG_LEVELS,
                        help="events at this level and above (default: [log] level, info)")
    parser.add_argument("--version", action="version", version=f"{PROG} {installed_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    add_train_commands(commands)
    add_grow_commands(commands)
    add_model_commands(commands)
    # bench's flags belong to crawler.bench.throughput (add_arguments), parsed only when bench runs
    bench = commands.add_parser("bench", help="time the engine (crystalline bench --help)", add_help=False)
    bench.set_defaults(handler=command_bench)
    add_tokenizer_commands(commands)
    add_corpus_commands(commands)
    add_show_commands(commands)
    add_service_commands(commands)
    add_state_commands(commands)
    add_plot_commands(commands)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse argv; bench's own flags are registered by crawler.bench.throughput, imported only for bench.

    Raises CliError (status 2) for bad usage, SystemExit(0) for --help.
    """
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command != "bench":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args
    from ..bench import throughput as bench

    bench_parser = Parser(prog=f"{PROG} bench", description=(bench.__doc__ or "").split("\n")[0])
    bench.add_arguments(bench_parser)
    add_state_flags(bench_parser)  # the state directory whose model bench also times
    return bench_parser.parse_args(rest, namespace=args)


def command_bench(args: argparse.Namespace) -> int:
    """Hand the parsed flags, and unless --skip-your-model the state directory's configuration
    (resolved as every command resolves it), to crawler.bench.throughput, imported only when
    asked for."""
    from ..bench import throughput as bench
    from ..bench.your_model import YourModel

    yours = None if args.skip_your_model else YourModel(command_config(args))
    status = bench.main(args, yours)
    return 0 if status is None else int(status)



# ---------------------------------------------------------------------------------------------
# entry point

EXPECTED = (CliError, DataError, CheckpointError, ConfigError, SettingError, TokenizerError, EngineError, StorageError,
            StorageConfigError, DaemonAlreadyRunning, DaemonError, OSError)
EXIT_STORE_BROKEN = 74  # EX_IOERR: a store error that retrying will not cure (storage.StoreBroken)
EXIT_STORE_UNAVAILABLE = 75  # EX_TEMPFAIL: a transient store error (busy, disconnected, disk full)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status instead of raising for every expected failure."""
    try:
        args = parse_args(argv)
    except CliError as exc:
        return _fail(exc, exc.status)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        # stdout carries the result of generate and eval, so events go to stderr; on a terminal
        # they are written around the progress bars, which show train_step themselves
        if on_terminal(sys.stderr):
            configure_logging(args.log_level or LogConfig.level, stream=BarSafeStream(sys.stderr), drop=SHOWN_BY_BARS)
        else:
            configure_logging(args.log_level or LogConfig.level, stream=sys.stderr)
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader had what it wanted (`generate ... | head`): no error
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except EXPECTED as exc:
        return _fail(exc, _exit_status(exc))


def _exit_status(exc: BaseException) -> int:
    """The exit status of an expected failure: its own `status`, a store error's class, else 1."""
    if isinstance(exc, StoreUnavailable):  # (a DaemonError's `status` says how the daemon ended)
        return EXIT_STORE_UNAVAILABLE if exc.transient else EXIT_STORE_BROKEN
    return getattr(exc, "status", EXIT_ERROR)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush at exit finds no closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # a stream with no descriptor (tests)
        pass


def _fail(exc: BaseException, status: int) -> int:
    message = " ".join(str(exc).split()) or type(exc).__name__  # always one line
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
        message = f"{exc.filename}: {message}"
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status
