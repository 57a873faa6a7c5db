"""What a user of the daemon gets: held-out bits per byte after N minutes of `crystalline run`, against PyTorch.

A campaign is a list of runs, executed one after the other (never two at once). Each finished run
appends one JSON object to --results (default bench/results/daemon_learning.jsonl); a later
invocation skips the runs whose key is already there, so a long campaign is carried on across
sittings (--force runs them again and appends; the summary reads the last line of each key). A
run stopped half-way records nothing and starts over next time.

  daemon:SIZE[+RECIPE...]:MIN
                   `python -m crawler run --state-dir STATE` (cwd: the repo root) on a fresh
                   temporary STATE with its own crystalline.toml: [watch] roots = [INBOX],
                   settle_seconds = 0.5; [log] format = "json"; and [model] d_model/n_layer/n_head
                   unless SIZE is "default" (SIZE: a size of engine.sizes, XS, S, d192x4, d192x6,
                   M or L, or any d:L:H). Everything else is the daemon's default, threads (every
                   core) included. Once `daemon_ready` is
                   logged, every file of CORPUS/train is copied into INBOX, and the clock starts
                   at the copy. At each --at minute up to MIN, and at MIN itself, the daemon gets
                   SIGTERM (it finishes its step and writes a final checkpoint), and, with the
                   daemon stopped so eval has the cores and the state dir to itself,
                   `python -m crawler eval CORPUS/val --json --state-dir STATE` runs twice: as
                   it is (the best checkpoint by held-out bpb; the newest while there is no
                   best yet: best_file says which) and with --latest (the newest). Where this
                   version's eval rejects --latest, its default is the latest checkpoint: that
                   figure is recorded as latest and best is left empty (latest_flag false). No
                   checkpoint yet is recorded as checkpoint false. Then the daemon is restarted
                   on the same STATE and the clock goes on.
                   Minutes are daemon minutes: the clock runs from the copy to the first SIGTERM,
                   then from each restart's `daemon_ready` to the next SIGTERM. Shutdown, eval
                   and start-up are not counted (they are recorded as stopped_s).
                   From the events (fields missing on the version tested are left empty, never
                   an error): steps, tokens trained, tokens/s (harmonic mean of the train_step
                   events, each segment's first left out as bench/daemon.py does), the last
                   `eval_finished` (val_bits_per_byte, train_bits_per_byte, epoch), whether and
                   when (daemon seconds) `training_plateaued` was logged, the `trainer_idle`
                   and `plateau_deferred` times, every `eval_finished` (the daemon's own
                   held-out curve), every `model_grown` (with the figures just before and just
                   after), the depth and parameters trained at the end (`n_layer`,
                   `params_now`), the last `status` event's `time_share` (where the loop's
                   time went over its last ten minutes), and a count of every event name. Each --horizons row carries
                   the depth, parameters and growths up to its minute.
  torch:LR:MIN     PyTorch eager (crawler.bench.torch_reference.TorchGPT) at size S: byte tokenizer
                   V=257, d=128, L=4, H=4, T=128, B=16; AdamW betas (0.9, 0.95), weight decay 0.1
                   on the engine's DECAYED tensors, clip 1.0, torch.set_num_threads(--threads);
                   batches from crawler.ingest.data.WindowSampler over CORPUS/train (the engine's seed).
                   Schedule: 100 warmup steps to LR, then cosine down to 0.1 LR at the step count
                   that fits in MIN minutes of wall clock. That count is not known beforehand: the
                   first 20 steps (all in warmup, so their rate does not depend on it) are timed,
                   and total = MIN minutes / their mean step time. Training stops when the clock
                   (batches and steps, from step 0; one untimed warm-up step on a throwaway copy
                   first) reaches MIN, whether before or after that estimate. Then all of
                   CORPUS/val as bench/learning.py evaluates it (crawler.bench.harness.held_out:
                   every target once, windows of 128, bits per byte = summed nats / ln 2 / target
                   bytes), the same count the daemon's eval divides by.

  A RECIPE (--recipes NAME=section.key=value/section.key=value,...) adds those settings to the
  run's crystalline.toml: `daemon:default+rope+muon:5` is the default size with both recipes.
  Values are TOML scalars as written (numbers, true/false; anything else is a string). The
  recipes are part of the run's key, and recorded with its result. One setting is the script's,
  not the toml's: `tokenizer.vocab_size=N` runs `crystalline tokenizer train CORPUS/train
  --vocab-size N` on the fresh state dir before the daemon starts (a byte-level BPE trained on
  the text the daemon is about to get; its few seconds are not daemon minutes):
  `--runs daemon:default+bpe:10 --recipes bpe=tokenizer.vocab_size=4096`.

Each row records the commit it was measured on (crawler.bench.results); from a tree with
uncommitted changes the script refuses to start unless given --allow-dirty, and marks the rows
dirty. Rows recorded before the sizes were named in engine.sizes call d192x6 "M" and M "L"; the
model each row trained is in its `model`, and a run of the new M is not taken for an old "M".

Summary (printed after the runs, or alone with --summary): a markdown table of every run key in
the results (one row per daemon checkpoint, with the model's shape, and "dirty" for a row
measured on a dirty tree), the best torch bpb per minutes over the learning rates, and
daemon/torch: the daemon's bpb (best checkpoint, else latest) over that best torch bpb at the
same minutes; below 1 the daemon is ahead.

    python bench/daemon_learning.py                      # daemon:default:60 (evals at 10, 60) and
                                                         # torch at 3e-4, 1e-3, 2e-3 for 10 and 60 min
    python bench/daemon_learning.py --runs daemon:default:10,torch:1e-3:10 --at 10,60
    python bench/daemon_learning.py --runs daemon:d192x6:60,daemon:M:30,daemon:128:6:4:30
    python bench/daemon_learning.py --runs daemon:default:5,daemon:default+muon:5 \
        --recipes muon=train.optimizer=muon,rope=model.positions=rope --at 5
    python bench/daemon_learning.py --summary [--results FILE]
Not a test: the machine should otherwise be quiet. Exit 2 when the corpus, or PyTorch for a
torch run (pip install -e '.[bench]'), is missing, or the tree is dirty without --allow-dirty;
1 when a run failed (it is not recorded).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from crawler.bench.harness import (
    DEFAULT_CORPUS,
    BenchDaemon,
    CorpusMissing,
    RunFailed,
    copy_files,
    corpus_folder,
    crystalline,
    evaluate,
    held_out,
    load_tokens,
    mean_rate,
    parse_recipes,
    record_each,
    watching,
    with_settings,
)
from crawler.bench.results import DirtyTree, ResultLog, add_result_flags, is_dirty
from engine.sizes import SIZES, ModelSize, parse_size

DEFAULT_LRS = ("3e-4", "1e-3", "2e-3")
DEFAULT_AT = "10,60"
TORCH_WARMUP = 100
MEASURED_STEPS = 20  # timed steps that size the cosine schedule


# ---------------------------------------------------------------------------------------------
# run keys


@dataclass(frozen=True)
class Run:
    kind: str  # "daemon" or "torch"
    arg: str  # daemon: "default", a size's name or d:L:H; torch: the learning rate
    minutes: float
    size: ModelSize | None = None  # daemon: engine.sizes' shape; None = the daemon's default
    recipe: tuple[tuple[str, str, object], ...] = ()  # daemon: (section, key, value) added to its toml

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.arg}:{self.minutes:g}"


def lr_text(lr: float) -> str:
    """1e-3, 3e-4, 2.5e-4: the learning rate as a key spells it, whatever was typed."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def parse_positive(text: str, what: str, unit: str = "number") -> float:
    """A finite number above 0; ValueError naming `what` otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{what} ({text!r}) must be a positive {unit}")
    return value


def parse_minutes(text: str, what: str) -> float:
    return parse_positive(text, what, "number of minutes")


def parse_run(text: str, recipes: dict | None = None) -> Run:
    """daemon:SIZE[+RECIPE...]:MIN or torch:LR:MIN (SIZE: a size of engine.sizes or d:L:H)."""
    kind, _, rest = text.strip().partition(":")
    arg, _, minutes = rest.rpartition(":")
    if kind == "daemon" and "+" in arg:
        arg, *names = arg.split("+")
        unknown = [n for n in names if n not in (recipes or {})]
        if unknown:
            raise ValueError(f"run {text!r}: no recipe {unknown[0]!r} in --recipes")
        run = parse_run(f"daemon:{arg}:{minutes}")
        recipe = tuple(setting for n in names for setting in recipes[n])
        return Run("daemon", "+".join([arg, *names]), run.minutes, run.size, recipe)
    if kind not in ("daemon", "torch") or not arg:
        raise ValueError(f"run {text!r} must be daemon:SIZE:MINUTES or torch:LR:MINUTES")
    minutes_value = parse_minutes(minutes, f"minutes of run {text!r}")
    if kind == "torch":
        return Run("torch", lr_text(parse_positive(arg, f"learning rate of run {text!r}")), minutes_value)
    if arg == "default":
        return Run("daemon", arg, minutes_value)
    try:
        return Run("daemon", arg, minutes_value, parse_size(arg))
    except ValueError as exc:
        raise ValueError(f"run {text!r}: {exc}, or 'default'") from None


def same_run(run: Run, row: dict) -> bool:
    """Whether a recorded row is this run: the same key, and for a daemon of a named size the
    same shape (rows recorded before engine.sizes call d192x6 "M" and M "L")."""
    model = row.get("model")
    if run.size is None or not isinstance(model, dict):
        return True
    return all(model.get(field) == value for field, value in run.size.shape().items())


def default_runs(at: list[float]) -> str:
    horizons = [f"{m:g}" for m in sorted(at)]
    return ",".join([f"daemon:default:{horizons[-1]}"] + [f"torch:{lr}:{m}" for m in horizons for lr in DEFAULT_LRS])


# ---------------------------------------------------------------------------------------------
# the daemon


def daemon_sections(inbox: Path, size: ModelSize | None, recipe=()) -> dict[str, dict]:
    """The run's crystalline.toml: the inbox watched, its size's shape, its recipe."""
    sections = watching(inbox) | ({"model": size.shape()} if size is not None else {})
    # tokenizer.vocab_size is the script's own (run_daemon), not a daemon setting
    return with_settings(sections, [setting for setting in recipe if setting[0] != "tokenizer"])


@dataclass
class Segment:
    """One daemon process's counted stretch: daemon seconds [offset, offset + end - start]."""

    daemon: BenchDaemon
    offset: float  # daemon seconds counted before this segment
    start: float  # perf_counter when its clock started: the copy, or its daemon_ready
    end: float | None = None  # perf_counter of its SIGTERM

    def seconds(self, received: float) -> float:
        """The daemon second of an event received at `received`, clamped into this segment."""
        end = self.end if self.end is not None else received
        return self.offset + min(max(received - self.start, 0.0), end - self.start)


def evaluate_state(state: Path, val: Path) -> dict:
    """Both evals of a stopped daemon's state dir; see the module docstring for --latest.

    No checkpoint yet (nothing trained before the SIGTERM) is recorded, not an error.
    """
    t0 = time.perf_counter()
    out = {"best_file": any(state.rglob("best.safetensors"))}
    default, error = evaluate(state, val)
    if default is None:
        if "no checkpoint" not in error:
            raise RunFailed(f"eval exited non-zero:\n{error}")
        return out | {"eval_s": round(time.perf_counter() - t0, 1), "checkpoint": False, "latest_flag": None,
                      "best": None, "latest": None, "eval_error": error.strip()[-500:]}
    latest, error = evaluate(state, val, "--latest")
    if latest is None and not ("--latest" in error and "unrecognized" in error):
        raise RunFailed(f"eval --latest exited non-zero:\n{error}")
    out |= {"eval_s": round(time.perf_counter() - t0, 1), "checkpoint": True, "latest_flag": latest is not None}
    if latest is None:  # this version's eval has no --latest: its default is the latest checkpoint
        return out | {"best": None, "latest": default}
    return out | {"best": default, "latest": latest}


def train_bpe(state: Path, text: Path, vocab_size: int) -> None:
    """`crystalline tokenizer train TEXT --vocab-size N` into the state dir; RunFailed if it fails."""
    done = crystalline("tokenizer", "train", str(text), "--vocab-size", str(vocab_size), "--state-dir", str(state))
    if done.returncode != 0:
        raise RunFailed(f"tokenizer train exited {done.returncode}:\n{done.stderr[-2000:]}")


def run_daemon(run: Run, args, corpus: Path) -> dict:
    marks = sorted({m for m in args.at if m < run.minutes} | {run.minutes})
    segments: list[Segment] = []
    checkpoints, stopped_s = [], 0.0

    def progress(d: BenchDaemon) -> None:
        step = d.last("train_step") or {}
        counted = segments[-1].seconds(time.perf_counter())
        print(f"{run.key}: {counted / 60:.1f}/{run.minutes:g} daemon min, step {step.get('step', '-')}, "
              f"loss {step.get('loss', '-')}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="crystalline-daemon-learning-") as work:
        state, inbox = Path(work) / "state", Path(work) / "inbox"
        state.mkdir()
        inbox.mkdir()
        sections = daemon_sections(inbox, run.size, run.recipe)
        for section, key, value in run.recipe:
            if (section, key) == ("tokenizer", "vocab_size"):
                train_bpe(state, corpus / "train", int(value))
        daemon = BenchDaemon(state, sections)
        try:
            daemon.first("daemon_ready")
            start = time.perf_counter()
            files = copy_files(corpus / "train", inbox)
            for i, mark in enumerate(marks):
                offset = segments[-1].seconds(segments[-1].end) if segments else 0.0
                segment = Segment(daemon, offset=offset, start=start)
                segments.append(segment)
                daemon.run_until(start + 60 * mark - segment.offset, progress)
                segment.end = time.perf_counter()
                daemon.stop()
                evaluation = evaluate_state(state, corpus / "val")
                figures = event_figures(segments)
                checkpoints.append({"minutes": mark, "daemon_s": round(segment.seconds(segment.end), 1),
                                    "steps": figures["steps"],
                                    "bpb_best": (evaluation["best"] or {}).get("bits_per_byte"),
                                    "bpb_latest": (evaluation["latest"] or {}).get("bits_per_byte"), **evaluation})
                if args.horizons is not None:  # kept even if the run is cut short later
                    args.horizons.append({"key": run.key, "corpus": str(corpus), "minutes": mark,
                                          "recipe": [f"{a}.{b}={c}" for a, b, c in run.recipe],
                                          **checkpoints[-1], **{k: figures.get(k) for k in (
                                              "tokens_trained", "tokens_per_s", "n_layer", "params_now",
                                              "model_grown", "plateaued_at_s", "plateau_deferred_at_s",
                                              "time_share")}},
                                         args.revision)
                print(f"{run.key}: at {mark:g} daemon min: step {figures['steps']}, bpb best "
                      f"{fmt(checkpoints[-1]['bpb_best'])}, latest {fmt(checkpoints[-1]['bpb_latest'])}",
                      file=sys.stderr, flush=True)
                if i + 1 < len(marks):
                    daemon = BenchDaemon(state)
                    start = daemon.first("daemon_ready")["_received"]
                    stopped_s += start - segment.end
                else:
                    stopped_s += time.perf_counter() - segment.end
                    if args.keep_state is not None:  # for a follow-up (bench/forgetting.py --state)
                        kept = args.keep_state / run.key.replace(":", "_").replace("+", "_")
                        shutil.rmtree(kept, ignore_errors=True)
                        shutil.copytree(state, kept, symlinks=True)
                        print(f"{run.key}: state kept in {kept}", file=sys.stderr, flush=True)
        finally:
            daemon.kill()
    config = (first_event(segments, "config_loaded") or {}).get("config")
    config = config if isinstance(config, dict) else {}
    # trainer_ready's model (newer versions) is the one trained; else the configured one
    model = (first_event(segments, "trainer_ready") or {}).get("model") or config.get("model")
    last = checkpoints[-1]
    return {"key": run.key, "kind": "daemon", "size": run.size.name if run.size else run.arg,
            "minutes": run.minutes, "at": marks,
            "recipe": [f"{section}.{key}={value}" for section, key, value in run.recipe],
            "model": model, "params": (first_event(segments, "trainer_ready") or {}).get("params"),
            "train_files": files, "bpb_best": last["bpb_best"], "bpb_latest": last["bpb_latest"],
            **event_figures(segments), "stopped_s": round(stopped_s, 1), "restarts": len(segments) - 1,
            "checkpoints": checkpoints}


def first_event(segments: list[Segment], name: str) -> dict | None:
    return next((e for s in segments for e in s.daemon.events if e.get("event") == name), None)


def event_figures(segments: list[Segment]) -> dict:
    """What the events of every segment so far say; None wherever this version logs no such field."""
    timed = [(s.seconds(e["_received"]), e) for s in segments for e in list(s.daemon.events)]
    named = {}
    for t, e in timed:
        named.setdefault(e.get("event"), []).append((t, e))
    steps = [e["step"] for _, e in named.get("train_step", []) + named.get("checkpoint_saved", [])
             if isinstance(e.get("step"), int)]
    rates = []
    for s in segments:  # each segment's first train_step window opens at its trainer's start: left out
        rates += [e["tokens_per_s"] for e in [e for e in s.daemon.events if e.get("event") == "train_step"][1:]
                  if isinstance(e.get("tokens_per_s"), (int, float)) and e["tokens_per_s"] > 0]
    saved = [e for _, e in named.get("checkpoint_saved", [])]
    evals = named.get("eval_finished", [])
    plateau = named.get("training_plateaued", [])
    ready = [e for _, e in named.get("trainer_ready", [])]
    grown = [(t, e) for t, e in named.get("model_grown", [])]
    # the shape trained at the end of these segments: the newest growth's, else the trainer's
    shape = (grown[-1][1].get("new") if grown else None) or ((ready[-1].get("model") or {}) if ready else {})
    params = (grown[-1][1].get("parameters_after") if grown else None) or (ready[-1].get("params") if ready else None)
    # the newest `status` event's shares of the loop's time over its last ten minutes (TimeShare)
    shares = [e.get("time_share") for _, e in named.get("status", []) if e.get("time_share")]
    last_eval = None
    if evals:
        t, e = evals[-1]
        named_fields = ("val_bits_per_byte", "train_bits_per_byte", "epoch")
        last_eval = {"daemon_s": round(t, 1), **{k: e.get(k) for k in named_fields},
                     **{k: v for k, v in e.items() if k not in ("event", "timestamp", "level", "_received")}}
    return {
        "steps": max(steps) if steps else 0,
        "tokens_trained": saved[-1].get("tokens_trained") if saved else None,
        "tokens_per_s": round(mean_rate(rates), 1) if rates else None,
        "eval_finished": last_eval,
        "eval_finished_count": len(evals),
        "plateaued": bool(plateau),
        "plateaued_at_s": round(plateau[0][0], 1) if plateau else None,
        # the idle of the first start, before any file arrived, says nothing: left out
        "trainer_idle_at_s": [round(t, 1) for t, e in named.get("trainer_idle", [])
                              if e["_received"] >= segments[0].start],
        "n_layer": shape.get("n_layer"), "params_now": params,
        "model_grown": [{"daemon_s": round(t, 1), **{k: e.get(k) for k in (
            "step", "tokens_seen", "epoch", "parameters_before", "parameters_after", "val_bits_per_byte_before",
            "val_bits_per_byte_after", "exact", "val_bits_per_byte", "slope", "passes")}} for t, e in grown],
        "plateau_deferred_at_s": [round(t, 1) for t, _ in named.get("plateau_deferred", [])],
        "time_share": shares[-1] if shares else None,
        "evaluations": [{"daemon_s": round(t, 1), **{k: e.get(k) for k in (
            "step", "tokens_trained", "epoch", "val_bits_per_byte", "holdout_tokens", "seconds", "cooldown_steps")}}
            for t, e in evals],
        "event_counts": {name: len(v) for name, v in sorted(named.items(), key=lambda kv: str(kv[0]))},
    }


# ---------------------------------------------------------------------------------------------
# PyTorch


def run_torch(run: Run, args, corpus: Path) -> dict:
    import torch

    from crawler.bench.torch_reference import TorchGPT, torch_optimizer, train_step
    from crawler.ingest.data import WindowSampler
    from crawler.ingest.tokenizer import ByteTokenizer
    from engine import TrainConfig, init_parameters
    from engine.schedule import learning_rate

    model_config = SIZES["S"].model_config(vocab_size=ByteTokenizer.vocab_size, context_length=128)
    recipe = TrainConfig(batch_size=16, seq_len=128, learning_rate=float(run.arg), warmup_steps=TORCH_WARMUP,
                         schedule="cosine", threads=args.threads).validate(model_config)
    sampler = WindowSampler(load_tokens(corpus, "train"), recipe.seq_len, recipe.batch_size, recipe.seed)
    val = held_out(load_tokens(corpus, "val"), recipe.seq_len, recipe.batch_size)
    params = init_parameters(model_config)
    torch.set_num_threads(args.threads)

    def make():
        model = TorchGPT.from_flat(model_config, params)
        optimizer = torch_optimizer(model, recipe)  # AdamW: the recipe's optimizer

        def step(x, y, lr: float) -> float:
            return train_step(model, optimizer, x, y, recipe.grad_clip, lr)

        return model, step

    make()[1](*sampler.batch(0), 0.0)  # untimed, thrown away: torch's first-call allocations
    model, step = make()
    budget = 60.0 * run.minutes
    schedule, estimated, measured_ms, losses = recipe, None, None, []
    start = time.perf_counter()
    s = 0
    while (elapsed := time.perf_counter() - start) < budget:
        if s == MEASURED_STEPS:  # steps 0..19 are warmup, whatever total_steps is
            measured_ms = 1e3 * elapsed / s
            estimated = max(s + 1, int(budget / (elapsed / s)))
            schedule = replace(recipe, total_steps=estimated)
        x, y = sampler.batch(s)
        losses.append(step(x, y, learning_rate(schedule, s)))
        s += 1
    seconds = time.perf_counter() - start
    t0 = time.perf_counter()
    bpb = val.bits_per_byte(model.nats)
    print(f"{run.key}: {s} steps in {seconds:.1f} s, val {bpb:.4f} bpb", file=sys.stderr, flush=True)
    return {"key": run.key, "kind": "torch", "lr": float(run.arg), "minutes": run.minutes, "bpb": bpb,
            "steps": s, "seconds": round(seconds, 2),
            "measured_step_ms": None if measured_ms is None else round(measured_ms, 2),
            "estimated_steps": estimated, "final_lr": learning_rate(schedule, max(s - 1, 0)),
            "train_loss_last20": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4),
            "eval_s": round(time.perf_counter() - t0, 1), "val_bytes": val.n_bytes,
            "model": model_config.to_dict(), "batch_size": recipe.batch_size, "warmup": recipe.warmup_steps,
            "min_lr_ratio": recipe.min_lr_ratio, "weight_decay": recipe.weight_decay,
            "threads": args.threads, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


# ---------------------------------------------------------------------------------------------
# results and summary


def fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def shape_of(row: dict) -> str:
    """The trained model's size as engine.sizes names it (S, d192x6), or "-" when not recorded."""
    model = row.get("model")
    if not isinstance(model, dict) or not {"d_model", "n_layer", "n_head"} <= set(model):
        return "-"
    return parse_size(f"{model['d_model']}:{model['n_layer']}:{model['n_head']}").name


def latest_rows(log: ResultLog) -> list[dict]:
    """The last row of each run: of each key and shape (later rows win: --force appends)."""
    return list({(row["key"], shape_of(row)): row for row in log.rows() if "key" in row}.values())


def summary(records: list[dict]) -> str:
    rows, torch_best = [], {}
    for r in records:
        key, dirty = r["key"], "dirty" if is_dirty(r) else ""
        if r.get("kind") == "torch":
            rows.append((key, shape_of(r), r["minutes"], fmt(r.get("bpb")), fmt(r.get("bpb")), r.get("steps"), "-",
                         dirty))
            if r.get("bpb") is not None and r["bpb"] < torch_best.get(r["minutes"], (math.inf,))[0]:
                torch_best[r["minutes"]] = (r["bpb"], key)
        else:
            at = r.get("plateaued_at_s")
            for c in r.get("checkpoints", []):
                plateau = f"at {at:.0f} s" if at is not None and at <= c["daemon_s"] else "no"
                rows.append((key, shape_of(r), c["minutes"], fmt(c.get("bpb_best")), fmt(c.get("bpb_latest")),
                             c.get("steps"), plateau, dirty))
    lines = ["| run | model | minutes | bpb best | bpb latest | steps | plateau | tree |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    lines += [f"| {k} | {shape} | {m:g} | {b} | {l} | {s} | {p} | {d} |" for k, shape, m, b, l, s, p, d in rows]
    if torch_best:
        lines += ["", "| minutes | best torch bpb | run |", "|---:|---:|---|"]
        lines += [f"| {m:g} | {b:.4f} | {k} |" for m, (b, k) in sorted(torch_best.items())]
    ratios = []
    for r in records:
        for c in r.get("checkpoints", []) if r.get("kind") == "daemon" else []:
            daemon_bpb = c.get("bpb_best") if c.get("bpb_best") is not None else c.get("bpb_latest")
            best = next((v for m, v in torch_best.items() if math.isclose(m, c["minutes"])), None)
            if daemon_bpb is not None and best is not None:
                ratios.append(f"| {r['key']} ({shape_of(r)}) | {c['minutes']:g} | {daemon_bpb:.4f} | {best[0]:.4f} | "
                              f"{daemon_bpb / best[0]:.3f} |")
    if ratios:
        lines += ["", "| daemon run | minutes | daemon bpb | best torch bpb | daemon/torch |",
                  "|---|---:|---:|---:|---:|"]
        lines += ratios
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default=None, help="comma-separated daemon:SIZE:MIN and torch:LR:MIN, run in this order "
                   f"(default daemon:default:<last --at> and torch at {', '.join(DEFAULT_LRS)} for each --at)")
    p.add_argument("--at", default=DEFAULT_AT, help=f"daemon minutes to evaluate at (default {DEFAULT_AT})")
    p.add_argument("--recipes", default="", help="NAME=section.key=value/...,...: settings a run adds with +NAME")
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="a folder with train/ and val/")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2); the daemon uses its default")
    p.add_argument("--summary", action="store_true", help="print the results file as tables; run nothing")
    p.add_argument("--horizons", type=Path, default=None,
                   help="also append one row per --at minute as it passes to this JSON-lines file "
                        "(a run cut short keeps the horizons it reached)")
    p.add_argument("--keep-state", type=Path, default=None,
                   help="copy each daemon run's state dir, as it stands after its last evaluation, to "
                        "KEEP_STATE/<key> (e.g. for bench/forgetting.py --state)")
    add_result_flags(p, "daemon_learning.jsonl")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    log = ResultLog(args.results, allow_dirty=args.allow_dirty)
    if args.summary:
        records = latest_rows(log)
        if not records:
            print(f"bench/daemon_learning.py: no results in {args.results}", file=sys.stderr)
            return 1
        print(summary(records))
        return 0
    try:
        corpus = corpus_folder(args.corpus)
        if args.threads < 1:
            raise ValueError(f"--threads ({args.threads}) must be at least 1")
        args.at = [parse_minutes(m, "--at") for m in args.at.split(",") if m.strip()]
        if not args.at:
            raise ValueError("--at must name at least one minute")
        recipes = parse_recipes(args.recipes)
        runs = [parse_run(t, recipes) for t in (args.runs or default_runs(args.at)).split(",") if t.strip()]
    except (CorpusMissing, ValueError) as exc:
        print(f"bench/daemon_learning.py: {exc}", file=sys.stderr)
        return 2
    if args.horizons is not None:
        args.horizons = ResultLog(args.horizons, allow_dirty=args.allow_dirty)
        try:
            args.revision = args.horizons.check()
        except DirtyTree as exc:
            print(f"bench/daemon_learning.py: {exc}", file=sys.stderr)
            return 2
    done = latest_rows(log)
    todo = [r for r in dict.fromkeys(runs)
            if args.force or not any(row["key"] == r.key and same_run(r, row) for row in done)]
    for r in runs:
        if r not in todo:
            print(f"{r.key}: already in {args.results}, skipped (--force runs it again)", file=sys.stderr)
    if any(r.kind == "torch" for r in todo):
        try:
            import torch  # noqa: F401
        except ImportError:
            print("bench/daemon_learning.py: PyTorch is needed for torch runs: pip install -e '.[bench]'",
                  file=sys.stderr)
            return 2
    status = record_each(log, [(r.key, partial(run_daemon if r.kind == "daemon" else run_torch, r, args, corpus))
                               for r in todo], "bench/daemon_learning.py", corpus=str(corpus))
    if status in (0, 1) and (records := latest_rows(log)):
        print(summary(records))
    return status


if __name__ == "__main__":
    sys.exit(main())
