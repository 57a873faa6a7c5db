"""The configuration's settings: what each section holds, its defaults, and the rules it must meet.

The crawler's own sections are the frozen dataclasses here (`DaemonConfig`, `GrowthConfig`,
`LogConfig`, `MetricsConfig`, `HttpConfig`), each with its `validate()`; the engine's, the store's
and the ingest room's are their owners' (`SECTIONS` names each by its TOML table). `DAEMON_DEFAULTS` holds
the product's defaults where they differ from the engine's, `Config` composes every section, and
`check_across_sections` holds the rules that join two of them. Reads no file and no environment
(`loader` does).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import ConfigError as EngineConfigError
from engine.config import ModelConfig, TrainConfig
from engine.distributed import DistributedConfig
from engine.sizes import SIZES
from storage import StorageConfig

from .. import ConfigError
from ..ingest.extract import ExtractLimits
from ..ingest.watcher import WatchConfig

# the names the configuration goes by on disk, in the environment and in its error messages
DEFAULT_STATE_DIR = "crystalline-state"
CONFIG_FILE = "crystalline.toml"
DATABASE_FILE = "corpus.db"
ENV_PREFIX = "CRYSTALLINE_"
BUILT_IN = "built-in daemon default"

IDLE_MODES = ("replay", "sleep")
AFTER_INGEST = ("keep", "move")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class DaemonConfig:
    # share of each batch drawn from already-trained data to limit forgetting (continual
    # pre-training: a few percent suffice for a mild shift, about a quarter for a strong one)
    replay_fraction: float = 0.05
    # each source (a top-level folder of the inbox) weighs its tokens ** replay_balance in the
    # batches: 1 is replay drawn uniformly over the stream (a source gets its size's share), 0 the
    # same share for every source; while new text is read the other sources are replayed at
    # their weights, so a large drop does not wash out what was learned before
    replay_balance: float = 0.5
    # once the held-out measure has plateaued (or max_passes is reached): "sleep" until new text
    # arrives (an idle daemon costs almost nothing), or "replay": keep training regardless
    idle: str = "sleep"
    # evaluate held-out bits per byte every this many steps or seconds, whichever comes first,
    # and at every checkpoint unless the last evaluation is recent enough to stand for it
    eval_every_steps: int = 1000
    eval_every_seconds: float = 120.0
    # plateau: this many evaluations in a row without improving on the reference by
    # plateau_margin bits per byte (an evaluation that worsens counts too: over-fitting stops)
    plateau_patience: int = 5
    plateau_margin: float = 0.002
    # passes over the trainable text after which training stops as if plateaued; 0: no limit
    max_passes: float = 100.0
    # the trained text is held in memory up to this size, for the windows of replay, further
    # passes and cool-downs (a window read from the store costs more than a small model's step);
    # beyond it, from STATE_DIR/stream.tokens, a copy read a window at a time (docs/STORAGE.md).
    # 2 bytes a token (4 above 65,536 token ids)
    replay_memory_mb: int = 256
    # the model handed to generate/eval/export (best.safetensors) is a cooled copy: at each
    # evaluation, a copy of the live weights trains this share of the steps since the last
    # cool-down more, with the rate decayed to 0; the live model goes on undisturbed. 0: off
    cooldown_fraction: float = 0.2
    # each checkpoint is evaluated (held-out measure, cool-down): 1000 steps is about 2 minutes
    # at the default size on 2 cores, so evaluation costs about a fifth of the time, not more
    checkpoint_every_steps: int = 1000
    checkpoint_every_seconds: float = 600.0
    keep_checkpoints: int = 3
    # disk caps in MB (1,000,000 bytes); 0: no cap. Enforced oldest first (docs/STORAGE.md):
    # checkpoints/ by step, never the newest committed checkpoint nor best.safetensors
    # (keep_checkpoints already bounds it for one model size; a growing model's files grow with
    # it, and `crystalline status` forecasts them at the deepest shape); processed/ (your own
    # files, moved there by after_ingest = "move") and quarantine/ (checkpoint files set aside,
    # kept for you to judge) by modification time. Off by default: each deletes what cannot be
    # made again
    checkpoints_max_mb: int = 0
    processed_max_mb: int = 0
    quarantine_max_mb: int = 0
    log_every: int = 10  # a train_step event every this many steps
    status_interval_seconds: float = 30.0  # a status event, health.json and STATUS= this often
    ingest_queue_size: int = 10_000  # files waiting for the ingest worker; the watcher holds the rest
    # while the trainer trains, ingest works at most this share of the wall time: it rests after
    # each batch for its time x (1 - share) / share, so a desk dropped at once does not take the
    # cores the synchronised training threads wait on; 1 = no rests. When the trainer is paused
    # or idle, ingest runs flat out (docs/BENCHMARKS.md, "The whole desk through the daemon")
    ingest_share: float = 0.3
    # after a file's tokens are durably stored: leave it, or move it to STATE_DIR/processed/
    after_ingest: str = "keep"
    health_max_age_seconds: float = 120.0  # `status --health` fails when health.json is older
    # a stop (SIGTERM) ends within this: the final checkpoint first, then the ingest batch in
    # flight; what is not done by then is cut short (shutdown_cut_short). Keep it well below the
    # service manager's limit (systemd TimeoutStopSec=90, docker --stop-timeout 90), which sends
    # SIGKILL: the margin covers closing the store and the process's own exit
    stop_timeout_seconds: float = 60.0
    # CPU priority of `run` and `train` outside a service manager (under systemd use Nice= and
    # CPUWeight=): added to the process's niceness at start, before any worker thread exists,
    # so every thread inherits it; 0 leaves it alone, 19 is the lowest priority
    nice: int = 0
    # false: an ingest-only daemon (`run --no-train`), no trainer: one of several writing a
    # shared PostgreSQL corpus that one other daemon trains on (docs/SCALE-OUT.md)
    train: bool = True
    # PostgreSQL: several daemons watching one folder claim each file before reading it; a
    # claim not renewed for this long (its daemon died) is taken over, and a file claimed
    # claim_attempts times without being finished is recorded as failed
    claim_lease_seconds: float = 300.0
    claim_attempts: int = 3
    # at start, a store that is unavailable for now (locked past busy_timeout_ms, a server that
    # does not answer, a full disk) is retried this long before the daemon gives up (exit 4);
    # 0: give up at once. Two minutes cover a database server restarting beside the daemon
    store_start_timeout_seconds: float = 120.0

    def validate(self) -> "DaemonConfig":
        if not 0.0 <= self.replay_fraction < 1.0:
            raise ConfigError(f"replay_fraction ({self.replay_fraction}) must be in [0, 1)")
        if not 0.0 <= self.replay_balance <= 1.0:
            raise ConfigError(f"replay_balance ({self.replay_balance}) must be in [0, 1]: 1 replays by size, "
                              "0 gives every source the same share")
        if self.idle not in IDLE_MODES:
            raise ConfigError(f"idle ({self.idle!r}) must be one of {', '.join(IDLE_MODES)}")
        if self.after_ingest not in AFTER_INGEST:
            raise ConfigError(f"after_ingest ({self.after_ingest!r}) must be one of {', '.join(AFTER_INGEST)}")
        if not 0 <= self.cooldown_fraction <= 1:
            raise ConfigError(f"cooldown_fraction ({self.cooldown_fraction}) must be in [0, 1]")
        if self.plateau_margin < 0 or self.max_passes < 0:
            raise ConfigError(f"plateau_margin ({self.plateau_margin}) and max_passes ({self.max_passes}) "
                              "must be 0 or more")
        if not 0 < self.ingest_share <= 1:
            raise ConfigError(f"ingest_share ({self.ingest_share}) must be in (0, 1]: 1 lets ingest run without rests")
        if not 0 <= self.nice <= 19:
            raise ConfigError(f"nice ({self.nice}) must be in [0, 19]: 0 leaves the priority alone, 19 is the lowest")
        if self.replay_memory_mb < 0:
            raise ConfigError(f"replay_memory_mb ({self.replay_memory_mb}) must be 0 or more")
        for name in ("checkpoints_max_mb", "processed_max_mb", "quarantine_max_mb"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} ({getattr(self, name)}) must be 0 (no cap) or more megabytes")
        for name in ("checkpoint_every_steps", "keep_checkpoints", "log_every", "ingest_queue_size",
                     "eval_every_steps", "plateau_patience", "claim_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} ({getattr(self, name)}) must be at least 1")
        for name in ("checkpoint_every_seconds", "status_interval_seconds", "health_max_age_seconds",
                     "eval_every_seconds", "stop_timeout_seconds", "claim_lease_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} ({getattr(self, name)}) must be positive")
        if not 0 <= self.store_start_timeout_seconds < math.inf:
            raise ConfigError(f"store_start_timeout_seconds ({self.store_start_timeout_seconds}) must be 0 (give up at "
                              "once) or more seconds")
        return self


@dataclass(frozen=True)
class GrowthConfig:
    # deepen the model while it trains when the model, not the data, is the limit: the policy is
    # crawler/training/growth.py's, the growth engine/grow.py's (the function kept exactly). Off
    # until a measurement shows it learns more than a fixed depth (issue 25); `enabled = true`
    # turns it on. A [model] n_layer set in a file, the environment or by --layers keeps that
    # depth whatever this says
    enabled: bool = False
    max_layers: int = 12  # never deeper than this
    # each growth multiplies the depth by this (at least one block more), up to max_layers: 2
    # doubles it, as the stacking studies grow (engine/grow.py)
    factor: float = 2.0
    # "flat": over the evaluations of the last doubling of tokens seen, at least `window` of them
    # at the present depth, held-out bits per byte fall more slowly than `flat_slope` against
    # tokens seen on log-log axes (0.015: about 1 % a doubling); or `window` evaluations in a row
    # set no new best (one fewer than the plateau rule's default patience, so growth comes first)
    window: int = 4
    flat_slope: float = 0.015
    # passes over the stored text between which a flat curve means the model is the limit;
    # beyond max_passes the data is: no growth, and the plateau rule idles as without growth
    min_passes: float = 0.0
    max_passes: float = 4.0
    # the stored text holds at least this many tokens a parameter of the grown model: 20 tokens a
    # parameter (Chinchilla) in 4 passes, repeated text being nearly as good as new up to about 4
    # passes (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models")
    min_tokens_per_parameter: float = 5.0
    # the grown model's step, estimated from the present one's by the parameter ratio, must stay
    # below this, so the curve still moves between two evaluations ([daemon] eval_every_seconds)
    max_step_seconds: float = 1.0
    # the grown trainer's memory (weights, optimizer state, gradients, activations, the cool-down
    # copy), estimated the same way, must stay below this; 0: half the machine's memory
    max_memory_mb: int = 0
    # a depth trains at least this long (the loop's clock, downtime not counted) before it may grow
    min_seconds: float = 600.0

    def validate(self) -> "GrowthConfig":
        if not 1 <= self.max_layers <= 1024:
            raise ConfigError(f"max_layers ({self.max_layers}) must be in [1, 1024]")
        if not 1 < self.factor <= 16:
            raise ConfigError(f"factor ({self.factor}) must be in (1, 16]: each growth adds at least one block")
        if self.window < 2:
            raise ConfigError(f"window ({self.window}) must be at least 2 evaluations: a slope needs two")
        if not 0 <= self.min_passes <= self.max_passes < math.inf:
            raise ConfigError(f"min_passes ({self.min_passes}) and max_passes ({self.max_passes}) must satisfy "
                              "0 <= min_passes <= max_passes")
        for name in ("flat_slope", "min_tokens_per_parameter", "min_seconds"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ConfigError(f"{name} ({getattr(self, name)}) must be 0 or a positive number")
        if not 0 < self.max_step_seconds < math.inf:
            raise ConfigError(f"max_step_seconds ({self.max_step_seconds}) must be positive")
        if self.max_memory_mb < 0:
            raise ConfigError(f"max_memory_mb ({self.max_memory_mb}) must be 0 (half the machine's) or more")
        return self


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    # auto: JSON lines when stdout is not a terminal (systemd, Docker), console on a terminal
    format: str = "auto"

    def validate(self) -> "LogConfig":
        if self.level not in LOG_LEVELS:
            raise ConfigError(f"level ({self.level!r}) must be one of {', '.join(LOG_LEVELS)}")
        if self.format not in LOG_FORMATS:
            raise ConfigError(f"format ({self.format!r}) must be one of {', '.join(LOG_FORMATS)}")
        return self


@dataclass(frozen=True)
class MetricsConfig:
    # HOST:PORT of the Prometheus endpoint (crawler/service/metrics.py); empty: off
    listen: str = ""

    def validate(self) -> "MetricsConfig":
        if self.listen:
            try:
                parse_listen(self.listen, "127.0.0.1:9464")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        return self


@dataclass(frozen=True)
class HttpConfig:
    # HOST:PORT of the daemon's page and API (crawler/service/http/); empty: off. `crystalline run`
    # serves it on the loopback address by default; any other address needs a token
    listen: str = "127.0.0.1:8484"
    # the bearer token every request must carry (Authorization: Bearer, or ?token= for the page);
    # or a file holding it (systemd's LoadCredential=, a Docker secret). Empty: no token
    token: str = ""
    token_file: str = ""
    # further names the page may be reached by (the Host header), such as the machine's name;
    # the listen address, localhost, 127.0.0.1 and ::1 always are. "*": any (only with a token)
    allowed_hosts: tuple[str, ...] = ()
    max_generations: int = 1  # completions at once; a 429 beyond
    max_new_tokens: int = 512  # the most a completion may ask for
    # the share of one core a completion may use (its own CPU time against the wall clock), so
    # training keeps its cores (docs/BENCHMARKS.md measures the cost)
    generation_cpu_share: float = 0.2

    @property
    def enabled(self) -> bool:
        return self.listen not in ("", "off")

    def validate(self) -> "HttpConfig":
        if self.enabled:
            try:
                host, _ = parse_listen(self.listen, "127.0.0.1:8484", any_port=True)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            if not (self.token or self.token_file) and not _loopback(host):
                raise ConfigError(f"listen ({self.listen!r}) is not a loopback address: set token or token_file "
                                  "(CRYSTALLINE_HTTP_TOKEN_FILE) so that every request must carry it, or listen "
                                  "on 127.0.0.1")
        if "*" in self.allowed_hosts and not (self.token or self.token_file):
            raise ConfigError('allowed_hosts "*" needs a token or token_file')
        if not 1 <= self.max_generations <= 64 or not 1 <= self.max_new_tokens <= 100_000:
            raise ConfigError(f"max_generations ({self.max_generations}) must be in [1, 64] and max_new_tokens "
                              f"({self.max_new_tokens}) in [1, 100000]")
        if not 0 < self.generation_cpu_share <= 1:
            raise ConfigError(f"generation_cpu_share ({self.generation_cpu_share}) must be in (0, 1]")
        return self


def parse_listen(text: str, example: str, any_port: bool = False) -> tuple[str, int]:
    """HOST:PORT -> (host, port): an empty HOST is every address (0.0.0.0), [::1] an IPv6 one;
    port 0, where `any_port`, asks for any free port. ValueError naming the form."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not (0 if any_port else 1) <= int(port) < 65536:
        raise ValueError(f"listen ({text!r}) must be HOST:PORT, such as {example}" + (", or off" if any_port else ""))
    return host.strip("[]") or "0.0.0.0", int(port)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# The product's defaults where they differ from the engine's, for every command (`run` and
# `train` are one training loop). It trains continuously: warm up once, then hold the rate (no
# decay to a fixed end). The model size is the one that reached the lowest held-out bits per
# byte after the daemon ran for an hour on 2 cores (docs/BENCHMARKS.md, bench/daemon_learning.py);
# [model] sets another size before the first checkpoint, which then fixes it.
DAEMON_DEFAULTS = {
    # 3e-3: with cool-downs, 2e-3 scored 0.066 bits per byte lower than 1e-3 at 3,000 steps
    # (bench/cooldown.py), and after 10 minutes of the daemon 3e-3 reached 2.1168 on val against
    # 2.1436 at 2e-3 (bench/daemon_learning.py, docs/BENCHMARKS.md)
    # Muon at 0.01 for the blocks' matrices (AdamW at 3e-3 keeps the embeddings, gains and
    # biases) and rotary positions: the modern-architecture ablation's winners on the daemon.
    # After 10 daemon minutes (evaluating every 30 s) the two together reached 2.0622 on val
    # against 2.1414 for learned positions and AdamW; every other option lost or tied at 5
    # minutes (docs/BENCHMARKS.md, bench/arch_ablation.sh)
    "train": {"schedule": "constant", "warmup_steps": 100, "learning_rate": 3e-3, "optimizer": "muon",
              "muon_lr": 0.01},
    # size S (engine/sizes.py: d=128, 4 layers): ahead of d=192/6 and d=256/6 after 10 and 30
    # daemon minutes, and of d=192/6 and d=64/2 with 1 thread and on a 4-play corpus, so one size
    # for every machine and corpus rather than a rule at first start (docs/BENCHMARKS.md)
    "model": {**SIZES["S"].shape(), "positions": "rope"},
    "store": {"url": ""},  # SQLite in the state directory (Config.database_url)
}


@dataclass(frozen=True)
class Config:
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    # the store's own settings; an empty url is SQLite in STATE_DIR/corpus.db (`database_url`)
    store: StorageConfig = field(default_factory=lambda: StorageConfig(url=""))
    extract: ExtractLimits = field(default_factory=ExtractLimits)
    watch: WatchConfig = field(default_factory=WatchConfig)
    # vocab_size comes from the state directory's tokenizer, whatever is set here
    model: ModelConfig = field(default_factory=lambda: ModelConfig(**DAEMON_DEFAULTS["model"]))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**DAEMON_DEFAULTS["train"]))
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    # `mpiexec -n N crystalline run|train --distributed`: how the ranks agree (docs/SCALE-OUT.md)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    growth: GrowthConfig = field(default_factory=GrowthConfig)
    # where [model] n_layer was set (a file, the environment, a flag), or "" for the product's
    # default: growth leaves a depth set by hand alone (the loader fills it in)
    depth_set_in: str = ""

    @property
    def database_url(self) -> str:
        if self.store.url:
            return self.store.url
        return f"sqlite:///{(self.state_dir / DATABASE_FILE).resolve()}"

    def storage_config(self) -> StorageConfig:
        """[store] with its url resolved (the state directory's SQLite file when empty), validated."""
        return dataclasses.replace(self.store, url=self.database_url).validate()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["state_dir"] = str(self.state_dir)
        if data["http"]["token"]:  # (logged in config_loaded)
            data["http"]["token"] = "<hidden>"
        return data


SECTIONS: dict[str, type] = {
    "store": StorageConfig, "extract": ExtractLimits, "watch": WatchConfig, "model": ModelConfig,
    "train": TrainConfig, "daemon": DaemonConfig, "log": LogConfig, "metrics": MetricsConfig,
    "http": HttpConfig, "distributed": DistributedConfig, "growth": GrowthConfig,
}


# ---------------------------------------------------------------------------------------------
# the rules that join two sections (each section's own are its `validate()`)


def check_across_sections(config: Config, values: Mapping[str, Mapping[str, tuple[Any, str]]] | None = None) -> None:
    """The rules that join two settings, checked here before any thread starts (a thread would
    find them too late): the store's URL with its state directory, the training window within
    the model's context, the page and the metrics on different ports. ConfigError naming both."""
    from storage import ConfigError as StorageConfigError

    def where(section: str, key: str) -> str:
        found = (values or {}).get(section, {}).get(key)
        return "" if found is None or found[1] == BUILT_IN else f" (set in {found[1]})"

    try:
        config.storage_config()  # the store's own validation, one place for its rules
    except StorageConfigError as exc:
        raise ConfigError(f"[store] {exc}") from None
    try:
        config.train.validate(config.model)
    except EngineConfigError as exc:
        raise ConfigError(f"[train] {exc}{where('train', 'seq_len')}{where('model', 'context_length')}") from None
    if config.http.enabled and config.metrics.listen:
        page = parse_listen(config.http.listen, "127.0.0.1:8484", any_port=True)
        metrics = parse_listen(config.metrics.listen, "127.0.0.1:9464")
        if page[1] == metrics[1] and page[1] != 0:
            raise ConfigError(f"[http] listen ({config.http.listen}){where('http', 'listen')} and [metrics] listen "
                              f"({config.metrics.listen}){where('metrics', 'listen')} use the same port")
