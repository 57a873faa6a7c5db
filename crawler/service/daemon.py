"""`crystalline run`'s wiring: run_daemon resolves the configuration, joins the ranks under
mpiexec, builds the metrics and the window when configured, configures logging, and runs the
supervisor in this process.

Not the supervisor (supervisor.py: start, tick, stop, signals), its parts (parts.py), its
workers (ingest_worker.py, threads.py) or its reports (reporting.py). Also the home of the few
names the command line takes from here: DaemonError (exits.py), and PAUSE_FILE,
REPEAT_SIGNAL_SECONDS and lower_priority (supervisor.py). Relies on load_config for a
configuration already validated, and on crawler/training/team.py for the ranks.
"""

from __future__ import annotations

import sys

from ..config import load_config
from ..logging import configure_logging, get_logger
from .exits import DaemonError
from .opening import OpenedState
from .supervisor import PAUSE_FILE, REPEAT_SIGNAL_SECONDS, Daemon, json_flag, lower_priority

__all__ = ["DaemonError", "PAUSE_FILE", "REPEAT_SIGNAL_SECONDS", "lower_priority", "run_daemon"]

# How long a Python thread may hold the GIL while another waits for it (CPython's default: 5 ms).
# The training threads take the GIL back between every two kernels, dozens of times a step, and
# the ingest thread (parsing, cleaning, SQL) holds it whenever it runs: at 5 ms each hand-over
# waits out the interval. Measured with a pure-Python thread beside S's 2-thread step
# (bench/gil_switch.py): training at 0.12x of alone at 5 ms, 0.35x at 0.5 ms, 0.48x at 0.1 ms,
# against 0.55x beside the same work in another process (where only the CPU is shared).
GIL_SWITCH_SECONDS = 1e-4


def run_daemon(config_file=None, state_dir=None, overrides=None, distributed: bool = False) -> int:
    """Resolve the configuration, configure logging, and run the daemon in this process. With
    `distributed` (under mpiexec), rank 0 runs the daemon and the other ranks follow its steps."""
    source = {"config_file": config_file, "state_dir": state_dir, "overrides": overrides}
    config = load_config(**source)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)  # before any thread starts
    opened = OpenedState(config)  # the state is opened as every command opens it (opening.py)
    if opened.join(distributed):  # a follower under mpiexec: rank 0's steps, nothing of the state
        configure_logging(config.log.level, json=json_flag(config.log.format))
        return opened.follow(get_logger("daemon"))
    metrics = window = None
    if config.metrics.listen or config.http.enabled:  # /metrics is served on the [http] address too
        from .. import installed_version
        from .metrics import EventMetrics

        metrics = EventMetrics(installed_version())
    if config.http.enabled:
        from .http import Window

        window = Window(config.http, metrics)  # reads the token file: a ConfigError before anything starts
    configure_logging(config.log.level, json=json_flag(config.log.format), observer=window or metrics)
    try:
        return Daemon(config, source, metrics=metrics, window=window, opened=opened).run()
    except BaseException:
        opened.end_ranks()  # a start that failed before the supervisor ran: the followers end too
        raise
