"""The commented file `crystalline init` writes (`default_config_text`): the comments live here,
every value is read off the defaults in `sections` (so a default has one owner), and every setting
must be listed (tests/unit/crawler/test_config.py), those of COMMENTED_OUT as comments. Reads and
validates nothing.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .sections import Config

CONFIG_TEMPLATE = """\
# crystalline configuration. Every setting is optional: this file shows the defaults.
# Precedence: these values < CRYSTALLINE_<SECTION>_<KEY> environment variables < flags.
# The state directory (database, checkpoints, tokenizer) is --state-dir, CRYSTALLINE_STATE_DIR,
# or `state_dir = "..."` at the top of this file.

[watch]
roots # folders watched recursively (created when missing)
settle_seconds # a file is complete when its size and mtime hold this long
polling # true for network filesystems and container volumes
poll_interval_seconds
rescan_interval_seconds # full scan beside the events (0: at start and after errors only)
include # name globs; empty: every file
exclude # name or relative-path globs

[daemon]
replay_fraction # share of each batch replayed from trained data (limits forgetting)
replay_balance # each top-level folder weighs tokens ** this in the batches (1: by size,
               # 0: equal); while new text is read the others are replayed at their weights
idle # once training plateaus: "sleep" until new text, "replay" trains on
eval_every_steps # held-out bits per byte every N steps or M seconds, and at checkpoints
eval_every_seconds
plateau_patience # evaluations in a row that do not beat the best by plateau_margin
plateau_margin # bits per byte
max_passes # passes over the text after which training stops; 0: no limit
replay_memory_mb # trained text held in memory for replay and further passes
cooldown_fraction # best.safetensors is a copy cooled for this share of the steps since
                               # the last evaluation (the rate decayed to 0); 0: the live weights
checkpoint_every_steps # each checkpoint is also evaluated
checkpoint_every_seconds
keep_checkpoints
checkpoints_max_mb # disk caps in MB, enforced oldest first; 0: no cap. Checkpoints by
processed_max_mb # step (never the newest nor best.safetensors); processed/ and
quarantine_max_mb # quarantine/ by modification time (docs/STORAGE.md)
log_every # a train_step event every N steps
status_interval_seconds # a status event, health.json and the systemd STATUS= line
ingest_queue_size
ingest_share # while training, ingest rests so it takes at most this share of the time
after_ingest # "move": ingested files go to STATE_DIR/processed/
health_max_age_seconds # `crystalline status --health` fails past this
stop_timeout_seconds # a stop ends within this (checkpoint first); below TimeoutStopSec=90
nice # CPU priority outside systemd: 0 leaves it, 19 is the lowest
train # false (`run --no-train`): ingest only, into a shared corpus
claim_lease_seconds # PostgreSQL, one folder watched by several daemons: a dead one's
claim_attempts # files are taken over after this; failed after this many claims
store_start_timeout_seconds # at start, an unavailable store is retried this long

[model]                        # fixed once the first checkpoint exists (docs/BENCHMARKS.md: the
context_length # size that learned most in an hour of the daemon on 2 cores)
d_model
n_layer # written commented out: set, it keeps this depth ([growth] leaves it)
n_head
mlp_ratio
seed # vocab_size comes from the state directory's tokenizer
positions # "learned" (GPT-2), "rope" (rotary, in attention) or "both"
norm # "layernorm" or "rmsnorm"
qk_norm # RMS-normalise each head's queries and keys
activation # "gelu" or "relu2" (ReLU squared)
zero_init_proj # the output projections start at zero
logit_softcap # c * tanh(logits / c); 0: off
tie_head # the head shares the token embedding

[train]
batch_size
micro_batch_size # 0: the whole per-thread share in one pass
recompute_activation # redo the MLP's activation in the backward: less memory, a little more time
seq_len
learning_rate # AdamW's; held after warmup; the cool-downs decay a copy
warmup_steps
schedule # warm up once, then hold: the schedule for continuous training
total_steps # "cosine" only: the decay ends here, at min_lr_ratio of the rate
min_lr_ratio
weight_decay
beta1
beta2
eps
grad_clip
optimizer # "adamw", or "muon": Muon for the 2-D matrices, AdamW for the rest
muon_lr # Muon's rate, momentum and decoupled weight decay
muon_momentum
muon_weight_decay
ns_steps # Newton-Schulz iterations of Muon's orthogonalisation
crystalline_weight
threads # 0: every core
seed

[store]
url # empty: SQLite in STATE_DIR/corpus.db; or postgresql+psycopg://user@host/db
sqlite_synchronous # NORMAL survives process crashes; FULL also power loss (slower)
busy_timeout_ms
chunk_tokens
drop_boilerplate # a line repeated across many documents (navigation, footers) is stored a few times
skip_near_duplicates # a document mostly like one stored is skipped (reason near_duplicate)

[extract]
max_file_bytes # larger files are skipped as too_large
max_uncompressed_bytes
max_compression_ratio
max_zip_members # entries of a DOCX or EPUB
max_archive_members # entries of a tar or zip archive of documents, nested ones included
time_budget_seconds # per file; an archive is one file: all of its members in this time
max_memory_bytes # address space of the child process that parses PDF, DOCX, EPUB, archives

[log]
level # debug, info, warning, error
format # auto: JSON lines off a terminal, readable on one; or json, console

[metrics]
listen # HOST:PORT of a Prometheus endpoint, such as 127.0.0.1:9464; empty: off

[http]
listen # the page and API of `run` (crawler/service/http/); "" or "off": off
token # required beyond loopback: every request carries it (or token_file)
token_file
allowed_hosts # further Host names the page is reached by (DNS rebinding guard)
max_generations # completions at once; a 429 beyond
max_new_tokens
generation_cpu_share # of one core, for a completion: training keeps its cores

[distributed]                  # only under `mpiexec -n N crystalline run|train --distributed`
mode # "sync": gradients summed every step (a fast LAN); "local": each
sync_every # machine takes this many steps, then parameters are averaged (slow links)
outer_lr # "local": the outer step on the averaged change (1.0, momentum 0:
outer_momentum # plain averaging; DiLoCo's outer Nesterov: 0.7 and 0.9)
average_state # "local": average the optimizer's moments too (3x the traffic)
timeout_seconds

[growth]                       # deepen the model while it trains (crawler/training/growth.py)
enabled # off until measured better than a fixed depth; a set n_layer stays
max_layers
factor # each growth multiplies the depth by this, up to max_layers
window # evaluations a flat curve is judged over (at the present depth)
flat_slope # flat: held-out falls less than this log-log slope against tokens
min_passes # passes over the stored text between which flat means the model is
max_passes # the limit; beyond max_passes the data is, and training idles
min_tokens_per_parameter # stored text a parameter of the grown model
max_step_seconds # the grown model's estimated step time
max_memory_mb # the grown trainer's estimated memory; 0: half the machine's
min_seconds # a depth trains at least this long before it grows again
"""
NOT_IN_FILE = {"model": {"vocab_size"}}  # comes from the state directory's tokenizer
# written commented out, with their default: a value set in the file is set by hand, and an
# n_layer set by hand keeps its depth (crawler/training/growth.py), which the defaults must not
COMMENTED_OUT = {"model": {"n_layer"}}
COMMENT_COLUMN = 31


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return repr(value)


def default_config_text(defaults: "Config | None" = None) -> str:
    """CONFIG_TEMPLATE with each setting's default value: `key = value  # comment`."""
    defaults = defaults or Config()
    lines, section = [], None
    for line in CONFIG_TEMPLATE.splitlines():
        match = re.match(r"^(\w+)(?:\s+(#.*))?$", line)
        if line.startswith("["):
            section = line[1:line.index("]")]
        elif match and section:
            key, comment = match.groups()
            text = f"{key} = {_toml_value(getattr(getattr(defaults, section), key))}"
            if key in COMMENTED_OUT.get(section, ()):
                text = "# " + text
            line = f"{text:<{COMMENT_COLUMN - 1}} {comment}" if comment else text
        lines.append(line)
    return "\n".join(lines) + "\n"