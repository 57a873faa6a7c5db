"""The daemon and the command line: the one package that joins the engine and the store.

Rooms, each a package whose docstring says what it owns; an import goes only down this list
(tests/unit/test_layers.py holds every module to it):

- `crawler.logging`   structured JSON events (structlog); imports nothing of the crawler
- `crawler.state`     the state directory: its disk use and caps, whether it can be written, the
                      daemon's lock and health files; the one folder walker every room uses
- `crawler.ingest`    files to tokens: watching, extraction (and its child process), formats,
                      tokenizers, claims, the ingest pipeline into the store
- `crawler.config`    the one configuration: TOML < environment < flags, validated once, composed
                      of the engine's, the store's and each room's own sections; its sections and
                      defaults, the loader, the `crystalline init` template
- `crawler.training`  the training loop that joins the store and the engine, its checkpoints, and
                      the team of ranks under MPI
- `crawler.service`   the running daemon: its supervisor and workers, systemd notify, the HTTP
                      page and API, metrics, the status report
- `crawler.bench`     `crystalline bench` and the PyTorch reference model it compares against
- `crawler.cli`       argument parsing and one module per command group
"""


class ConfigError(ValueError):
    """A setting of the crawler's is wrong (a config section, a flag, a state directory, a token
    file); the message names it and where it was set. `load_config` raises it for the engine's and
    the store's sections too, so a caller catches this one class."""


def installed_version() -> str:
    """The version of the installed distribution (its metadata), or "unknown" when the
    source tree runs without being installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crystalline")
    except PackageNotFoundError:
        return "unknown (not installed)"
