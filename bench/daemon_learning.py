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
                   unless SIZE is "default" (SIZE: a --sizes name, or d:L:H). Everything else is
                   the daemon's default, threads (every core) included. Once `daemon_ready` is
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
                   times, and a count of every event name.
  torch:LR:MIN     PyTorch eager (crawler.bench.torch_reference.TorchGPT) at config S: byte tokenizer
                   V=257, d=128, L=4, H=4, T=128, B=16; AdamW betas (0.9, 0.95), weight decay 0.1
                   on the engine's DECAYED tensors, clip 1.0, torch.set_num_threads(--threads);
                   batches from crawler.ingest.data.WindowSampler over CORPUS/train (the engine's seed).
                   Schedule: 100 warmup steps to LR, then cosine down to 0.1 LR at the step count
                   that fits in MIN minutes of wall clock. That count is not known beforehand: the
                   first 20 steps (all in warmup, so their rate does not depend on it) are timed,
                   and total = MIN minutes / their mean step time. Training stops when the clock
                   (batches and steps, from step 0; one untimed warm-up step on a throwaway copy
                   first) reaches MIN, whether before or after that estimate. Then all of
                   CORPUS/val as bench/learning.py evaluates it: every target once, windows of 128
                   (crawler.ingest.data.eval_windows), bits per byte = summed nats / ln 2 / target bytes
                   (ByteTokenizer.token_bytes), the same count the daemon's eval divides by.

  A RECIPE (--recipes NAME=section.key=value/section.key=value,...) adds those settings to the
  run's crystalline.toml: `daemon:default+rope+muon:5` is the default size with both recipes.
  Values are TOML scalars as written (numbers, true/false; anything else is a string). The
  recipes are part of the run's key, and recorded with its result. One setting is the script's,
  not the toml's: `tokenizer.vocab_size=N` runs `crystalline tokenizer train CORPUS/train
  --vocab-size N` on the fresh state dir before the daemon starts (a byte-level BPE trained on
  the text the daemon is about to get; its few seconds are not daemon minutes):
  `--runs daemon:default+bpe:10 --recipes bpe=tokenizer.vocab_size=4096`.

Summary (printed after the runs, or alone with --summary): a markdown table of every run key in
the results (one row per daemon checkpoint), the best torch bpb per minutes over the learning
rates, and daemon/torch: the daemon's bpb (best checkpoint, else latest) over that best torch bpb
at the same minutes; below 1 the daemon is ahead.

    python bench/daemon_learning.py                      # daemon:default:60 (evals at 10, 60) and
                                                         # torch at 3e-4, 1e-3, 2e-3 for 10 and 60 min
    python bench/daemon_learning.py --runs daemon:default:10,torch:1e-3:10 --at 10,60
    python bench/daemon_learning.py --runs daemon:M:60 --sizes S=128:4:4,M=192:6:6,L=256:6:8
    python bench/daemon_learning.py --runs daemon:default:5,daemon:default+muon:5 \
        --recipes muon=train.optimizer=muon,rope=model.positions=rope --at 5
    python bench/daemon_learning.py --summary [--results FILE]
Not a test: the machine should otherwise be quiet. Exit 2 when the corpus, or PyTorch for a
torch run (pip install -e '.[bench]'), is missing; 1 when a run failed (it is not recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from crawler.service.child import ChildFailed, DaemonChild

REPO = Path(__file__).resolve().parent.parent
LN2 = math.log(2.0)
DEFAULT_SIZES = "S=128:4:4,M=192:6:6,L=256:6:8"
DEFAULT_LRS = ("3e-4", "1e-3", "2e-3")
DEFAULT_AT = "10,60"
TORCH_WARMUP = 100
MEASURED_STEPS = 20  # timed steps that size the cosine schedule
READY_TIMEOUT_S = 600.0  # a cold numba cache compiles for minutes
STOP_TIMEOUT_S = 300.0  # SIGTERM -> exit: the step in flight and the final checkpoint
EVAL_TIMEOUT_S = 1800.0
PROGRESS_EVERY_S = 60.0


class RunFailed(Exception):
    """A run that could not finish; it is reported and left out of the results."""


# ---------------------------------------------------------------------------------------------
# run keys


@dataclass(frozen=True)
class Run:
    kind: str  # "daemon" or "torch"
    arg: str  # daemon: "default", a --sizes name or d:L:H; torch: the learning rate
    minutes: float
    size: tuple[int, int, int] | None = None  # daemon: (d_model, n_layer, n_head); None = defaults
    recipe: tuple[tuple[str, str, object], ...] = ()  # daemon: (section, key, value) added to its toml

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.arg}:{self.minutes:g}"


def lr_text(lr: float) -> str:
    """1e-3, 3e-4, 2.5e-4: the learning rate as a key spells it, whatever was typed."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def parse_size(text: str) -> tuple[int, int, int]:
    d, layers, heads = (int(v) for v in text.split(":"))  # ValueError on anything else
    if min(d, layers, heads) < 1 or d % heads:
        raise ValueError(text)
    return d, layers, heads


def parse_sizes(text: str) -> dict[str, tuple[int, int, int]]:
    sizes = {}
    for item in filter(None, text.split(",")):
        name, _, spec = item.partition("=")
        try:
            sizes[name] = parse_size(spec)
        except ValueError:
            raise ValueError(f"--sizes item {item!r} must be NAME=d_model:layers:heads, "
                             "heads dividing d_model") from None
    return sizes


def parse_minutes(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{what} ({text!r}) must be a positive number of minutes")
    return value


def parse_value(text: str):
    """A recipe value as TOML would read it: an int, a float, true/false, else the string."""
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_recipes(text: str) -> dict[str, tuple[tuple[str, str, object], ...]]:
    """NAME=section.key=value/section.key=value,... -> {NAME: ((section, key, value), ...)}."""
    recipes = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, spec = item.partition("=")
        settings = []
        for setting in spec.split("/"):
            dotted, _, value = setting.partition("=")
            section, _, key = dotted.partition(".")
            if not (name and section and key and value):
                raise ValueError(f"--recipes item {item!r} must be NAME=section.key=value[/section.key=value...]")
            settings.append((section, key, parse_value(value)))
        recipes[name] = tuple(settings)
    return recipes


def parse_run(text: str, sizes: dict, recipes: dict | None = None) -> Run:
    """daemon:SIZE[+RECIPE...]:MIN or torch:LR:MIN (SIZE may itself be d:L:H)."""
    kind, _, rest = text.strip().partition(":")
    arg, _, minutes = rest.rpartition(":")
    if kind == "daemon" and "+" in arg:
        arg, *names = arg.split("+")
        unknown = [n for n in names if n not in (recipes or {})]
        if unknown:
            raise ValueError(f"run {text!r}: no recipe {unknown[0]!r} in --recipes")
        run = parse_run(f"daemon:{arg}:{minutes}", sizes)
        recipe = tuple(setting for n in names for setting in recipes[n])
        return Run("daemon", "+".join([arg, *names]), run.minutes, run.size, recipe)
    if kind not in ("daemon", "torch") or not arg:
        raise ValueError(f"run {text!r} must be daemon:SIZE:MINUTES or torch:LR:MINUTES")
    minutes_value = parse_minutes(minutes, f"minutes of run {text!r}")
    if kind == "torch":
        try:
            lr = float(arg)
        except ValueError:
            lr = float("nan")
        if not lr > 0 or math.isinf(lr):
            raise ValueError(f"learning rate of run {text!r} must be a positive number")
        return Run("torch", lr_text(lr), minutes_value)
    if arg == "default":
        return Run("daemon", arg, minutes_value)
    if arg in sizes:
        return Run("daemon", arg, minutes_value, sizes[arg])
    try:
        return Run("daemon", arg, minutes_value, parse_size(arg))
    except ValueError:
        raise ValueError(f"size {arg!r} of run {text!r}: not 'default', a --sizes name ({', '.join(sizes)}) "
                         "or d_model:layers:heads") from None


def default_runs(at: list[float]) -> str:
    horizons = [f"{m:g}" for m in sorted(at)]
    return ",".join([f"daemon:default:{horizons[-1]}"] + [f"torch:{lr}:{m}" for m in horizons for lr in DEFAULT_LRS])


# ---------------------------------------------------------------------------------------------
# the daemon


def config_toml(inbox: Path, size: tuple[int, int, int] | None, recipe=()) -> str:
    sections = {"watch": {"roots": [str(inbox)], "settle_seconds": 0.5}, "log": {"format": "json"}}
    if size is not None:
        sections["model"] = dict(zip(("d_model", "n_layer", "n_head"), size))
    for section, key, value in recipe:
        if section != "tokenizer":  # the script's own (run_daemon), not a daemon setting
            sections.setdefault(section, {})[key] = value
    # JSON scalars, strings and lists are valid TOML
    return "".join(f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items()) + "\n"
                   for name, keys in sections.items())


class DaemonProcess(DaemonChild):
    """One `crystalline run` (crawler.service.child.DaemonChild: every JSON event gets `_received`,
    perf_counter), with this script's waits: a failure is RunFailed, and the run is not recorded."""

    def __init__(self, state: Path):
        super().__init__(state, cwd=REPO)

    def last(self, name: str) -> dict | None:
        with self.cond:
            return next((e for e in reversed(self.events) if e.get("event") == name), None)

    def first(self, name: str, timeout: float) -> dict:
        """The first event `name`, waiting up to `timeout` s; RunFailed when the daemon exits first."""
        try:
            return self.wait_for(name, timeout)[0]
        except ChildFailed as exc:
            raise RunFailed(str(exc)) from None

    def run_until(self, deadline: float, progress) -> None:
        """Sleep until perf_counter() reaches deadline; RunFailed if the daemon exits first."""
        next_report = time.perf_counter() + PROGRESS_EVERY_S
        while (now := time.perf_counter()) < deadline:
            if self.proc.poll() is not None:
                raise RunFailed(f"daemon exited {self.proc.returncode} while training:\n{self.tail()}")
            if now >= next_report:
                progress(self)
                next_report = now + PROGRESS_EVERY_S
            time.sleep(min(1.0, deadline - now))

    def stop(self) -> int:
        """SIGTERM once (a second one would stop it at once, skipping the final checkpoint)."""
        try:
            code = super().stop(signal.SIGTERM, timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RunFailed(f"daemon still running {STOP_TIMEOUT_S:.0f} s after SIGTERM:\n{self.tail()}") from None
        if code != 0:
            raise RunFailed(f"daemon exited {code} after SIGTERM:\n{self.tail()}")
        return code


@dataclass
class Segment:
    """One daemon process's counted stretch: daemon seconds [offset, offset + end - start]."""

    daemon: DaemonProcess
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
    base = [sys.executable, "-m", "crawler", "eval", str(val), "--json", "--state-dir", str(state)]
    t0 = time.perf_counter()
    out = {"best_file": any(state.rglob("best.safetensors"))}
    default, error = run_eval(base)
    if default is None:
        if "no checkpoint" not in error:
            raise RunFailed(f"eval exited non-zero:\n{error}")
        return out | {"eval_s": round(time.perf_counter() - t0, 1), "checkpoint": False, "latest_flag": None,
                      "best": None, "latest": None, "eval_error": error.strip()[-500:]}
    latest, error = run_eval(base + ["--latest"])
    if latest is None and not ("--latest" in error and "unrecognized" in error):
        raise RunFailed(f"eval --latest exited non-zero:\n{error}")
    out |= {"eval_s": round(time.perf_counter() - t0, 1), "checkpoint": True, "latest_flag": latest is not None}
    if latest is None:  # this version's eval has no --latest: its default is the latest checkpoint
        return out | {"best": None, "latest": default}
    return out | {"best": default, "latest": latest}


def run_eval(command: list[str]) -> tuple[dict | None, str]:
    """(eval's JSON result, "") or (None, the end of its stderr) when it exits non-zero."""
    try:
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=EVAL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"{' '.join(command[1:])} took over {EVAL_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        return None, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    for line in reversed(proc.stdout.splitlines()):
        with contextlib.suppress(json.JSONDecodeError):
            if isinstance(result := json.loads(line), dict) and "bits_per_byte" in result:
                return result, ""
    raise RunFailed(f"{' '.join(command[1:])} printed no JSON result:\n{proc.stdout[-2000:]}")


def train_bpe(state: Path, text: Path, vocab_size: int) -> None:
    """`crystalline tokenizer train TEXT --vocab-size N` into the state dir; RunFailed if it fails."""
    command = [sys.executable, "-m", "crawler", "tokenizer", "train", str(text), "--vocab-size", str(vocab_size),
               "--state-dir", str(state)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=EVAL_TIMEOUT_S)
    if proc.returncode != 0:
        raise RunFailed(f"tokenizer train exited {proc.returncode}:\n{proc.stderr[-2000:]}")


def copy_files(source: Path, inbox: Path) -> int:
    """Every file under source into inbox, relative paths kept (a plain copy, as a user makes)."""
    count = 0
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        target = inbox / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        count += 1
    return count


def run_daemon(run: Run, args, corpus: Path) -> dict:
    marks = sorted({m for m in args.at if m < run.minutes} | {run.minutes})
    work = Path(tempfile.mkdtemp(prefix="crystalline-daemon-learning-"))
    state, inbox = work / "state", work / "inbox"
    state.mkdir()
    inbox.mkdir()
    (state / "crystalline.toml").write_text(config_toml(inbox, run.size, run.recipe))
    for section, key, value in run.recipe:
        if (section, key) == ("tokenizer", "vocab_size"):
            train_bpe(state, corpus / "train", int(value))
    segments: list[Segment] = []
    checkpoints, stopped_s = [], 0.0

    def progress(d: DaemonProcess) -> None:
        step = d.last("train_step") or {}
        counted = segments[-1].seconds(time.perf_counter())
        print(f"{run.key}: {counted / 60:.1f}/{run.minutes:g} daemon min, step {step.get('step', '-')}, "
              f"loss {step.get('loss', '-')}", file=sys.stderr, flush=True)

    daemon = DaemonProcess(state)
    try:
        daemon.first("daemon_ready", READY_TIMEOUT_S)
        start = time.perf_counter()
        files = copy_files(corpus / "train", inbox)
        for i, mark in enumerate(marks):
            segment = Segment(daemon, offset=segments[-1].seconds(segments[-1].end) if segments else 0.0, start=start)
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
            print(f"{run.key}: at {mark:g} daemon min: step {figures['steps']}, bpb best "
                  f"{fmt(checkpoints[-1]['bpb_best'])}, latest {fmt(checkpoints[-1]['bpb_latest'])}",
                  file=sys.stderr, flush=True)
            if i + 1 < len(marks):
                daemon = DaemonProcess(state)
                start = daemon.first("daemon_ready", READY_TIMEOUT_S)["_received"]
                stopped_s += start - segment.end
            else:
                stopped_s += time.perf_counter() - segment.end
    finally:
        daemon.kill()
        shutil.rmtree(work, ignore_errors=True)
    config = (first_event(segments, "config_loaded") or {}).get("config")
    config = config if isinstance(config, dict) else {}
    # trainer_ready's model (newer versions) is the one trained; else the configured one
    model = (first_event(segments, "trainer_ready") or {}).get("model") or config.get("model")
    last = checkpoints[-1]
    return {"key": run.key, "kind": "daemon", "size": run.arg, "minutes": run.minutes, "at": marks,
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
    last_eval = None
    if evals:
        t, e = evals[-1]
        named_fields = ("val_bits_per_byte", "train_bits_per_byte", "epoch")
        last_eval = {"daemon_s": round(t, 1), **{k: e.get(k) for k in named_fields},
                     **{k: v for k, v in e.items() if k not in ("event", "timestamp", "level", "_received")}}
    return {
        "steps": max(steps) if steps else 0,
        "tokens_trained": saved[-1].get("tokens_trained") if saved else None,
        "tokens_per_s": round(len(rates) / sum(1.0 / r for r in rates), 1) if rates else None,
        "eval_finished": last_eval,
        "eval_finished_count": len(evals),
        "plateaued": bool(plateau),
        "plateaued_at_s": round(plateau[0][0], 1) if plateau else None,
        # the idle of the first start, before any file arrived, says nothing: left out
        "trainer_idle_at_s": [round(t, 1) for t, e in named.get("trainer_idle", [])
                              if e["_received"] >= segments[0].start],
        "event_counts": {name: len(v) for name, v in sorted(named.items(), key=lambda kv: str(kv[0]))},
    }


# ---------------------------------------------------------------------------------------------
# PyTorch


def run_torch(run: Run, args, corpus: Path) -> dict:
    import torch

    from crawler.bench.torch_reference import TorchGPT
    from crawler.ingest.data import WindowSampler, eval_windows, load_corpus
    from crawler.ingest.tokenizer import ByteTokenizer
    from engine import ModelConfig, TrainConfig, init_parameters
    from engine.schedule import learning_rate

    model_config = ModelConfig(vocab_size=ByteTokenizer.vocab_size, context_length=128, d_model=128,
                               n_layer=4, n_head=4).validate()
    recipe = TrainConfig(batch_size=16, seq_len=128, learning_rate=float(run.arg), warmup_steps=TORCH_WARMUP,
                         schedule="cosine", threads=args.threads).validate(model_config)
    sampler = WindowSampler(load_corpus([corpus / "train"]).tokens, recipe.seq_len, recipe.batch_size, recipe.seed)
    val_batches = list(eval_windows(load_corpus([corpus / "val"]).tokens, recipe.seq_len, recipe.batch_size))
    val_bytes = sum(ByteTokenizer().token_bytes(y) for _, y in val_batches)
    params = init_parameters(model_config)
    torch.set_num_threads(args.threads)

    def make():
        model = TorchGPT.from_flat(model_config, params)
        optimizer = torch.optim.AdamW(model.parameter_groups(recipe.weight_decay), lr=recipe.learning_rate,
                                      betas=(recipe.beta1, recipe.beta2), eps=recipe.eps)

        def step(x, y, lr: float) -> float:
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss = model.loss(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            return float(loss.detach())

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
    nats = 0.0
    with torch.no_grad():
        for x, y in val_batches:
            logits = model.logits(x)  # (b, t, V)
            target = torch.as_tensor(y, dtype=torch.long).reshape(-1)
            nats += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target,
                                                            reduction="sum"))
    bpb = nats / LN2 / val_bytes
    print(f"{run.key}: {s} steps in {seconds:.1f} s, val {bpb:.4f} bpb", file=sys.stderr, flush=True)
    return {"key": run.key, "kind": "torch", "lr": float(run.arg), "minutes": run.minutes, "bpb": bpb,
            "steps": s, "seconds": round(seconds, 2),
            "measured_step_ms": None if measured_ms is None else round(measured_ms, 2),
            "estimated_steps": estimated, "final_lr": learning_rate(schedule, max(s - 1, 0)),
            "train_loss_last20": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4),
            "eval_s": round(time.perf_counter() - t0, 1), "val_bytes": int(val_bytes),
            "model": model_config.to_dict(), "batch_size": recipe.batch_size, "warmup": recipe.warmup_steps,
            "min_lr_ratio": recipe.min_lr_ratio, "weight_decay": recipe.weight_decay,
            "threads": args.threads, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


# ---------------------------------------------------------------------------------------------
# results and summary


def load_results(path: Path) -> dict[str, dict]:
    """The last record of each key in a JSON-lines file (later lines win: --force appends)."""
    records = {}
    if path.exists():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                records[record["key"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                print(f"bench/daemon_learning.py: {path}:{number}: not a result line, ignored", file=sys.stderr)
    return records


def append_result(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def revision() -> str | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    return None


def fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary(records: dict[str, dict]) -> str:
    rows, torch_best = [], {}
    for key, r in records.items():
        if r.get("kind") == "torch":
            rows.append((key, r["minutes"], fmt(r.get("bpb")), fmt(r.get("bpb")), r.get("steps"), "-"))
            if r.get("bpb") is not None and r["bpb"] < torch_best.get(r["minutes"], (math.inf,))[0]:
                torch_best[r["minutes"]] = (r["bpb"], key)
        else:
            at = r.get("plateaued_at_s")
            for c in r.get("checkpoints", []):
                plateau = f"at {at:.0f} s" if at is not None and at <= c["daemon_s"] else "no"
                rows.append((key, c["minutes"], fmt(c.get("bpb_best")), fmt(c.get("bpb_latest")), c.get("steps"),
                             plateau))
    lines = ["| run | minutes | bpb best | bpb latest | steps | plateau |", "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {k} | {m:g} | {b} | {l} | {s} | {p} |" for k, m, b, l, s, p in rows]
    if torch_best:
        lines += ["", "| minutes | best torch bpb | run |", "|---:|---:|---|"]
        lines += [f"| {m:g} | {b:.4f} | {k} |" for m, (b, k) in sorted(torch_best.items())]
    ratios = []
    for key, r in records.items():
        for c in r.get("checkpoints", []) if r.get("kind") == "daemon" else []:
            daemon_bpb = c.get("bpb_best") if c.get("bpb_best") is not None else c.get("bpb_latest")
            best = next((v for m, v in torch_best.items() if math.isclose(m, c["minutes"])), None)
            if daemon_bpb is not None and best is not None:
                ratios.append(f"| {key} | {c['minutes']:g} | {daemon_bpb:.4f} | {best[0]:.4f} | "
                              f"{daemon_bpb / best[0]:.3f} |")
    if ratios:
        lines += ["", "| daemon run | minutes | daemon bpb | best torch bpb | daemon/torch |",
                  "|---|---:|---:|---:|---:|"]
        lines += ratios
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# main


def interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default=None, help="comma-separated daemon:SIZE:MIN and torch:LR:MIN, run in this order "
                   f"(default daemon:default:<last --at> and torch at {', '.join(DEFAULT_LRS)} for each --at)")
    p.add_argument("--at", default=DEFAULT_AT, help=f"daemon minutes to evaluate at (default {DEFAULT_AT})")
    p.add_argument("--recipes", default="", help="NAME=section.key=value/...,...: settings a run adds with +NAME")
    p.add_argument("--sizes", default=DEFAULT_SIZES, help=f"NAME=d_model:layers:heads,... (default {DEFAULT_SIZES})")
    p.add_argument("--results", default=str(REPO / "bench" / "results" / "daemon_learning.jsonl"),
                   help="JSON-lines results file (default bench/results/daemon_learning.jsonl)")
    p.add_argument("--corpus", default="../shared/corpus/shakespeare", help="a folder with train/ and val/")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2); the daemon uses its default")
    p.add_argument("--force", action="store_true", help="run keys already in the results again")
    p.add_argument("--summary", action="store_true", help="print the results file as tables; run nothing")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = Path(args.results)
    if args.summary:
        records = load_results(results)
        if not records:
            print(f"bench/daemon_learning.py: no results in {results}", file=sys.stderr)
            return 1
        print(summary(records))
        return 0
    corpus = Path(args.corpus).resolve()
    if not (corpus / "train").is_dir() or not (corpus / "val").is_dir():
        print(f"bench/daemon_learning.py: corpus not found: {args.corpus} needs train/ and val/ folders",
              file=sys.stderr)
        return 2
    try:
        if args.threads < 1:
            raise ValueError(f"--threads ({args.threads}) must be at least 1")
        args.at = [parse_minutes(m, "--at") for m in args.at.split(",") if m.strip()]
        if not args.at:
            raise ValueError("--at must name at least one minute")
        sizes = parse_sizes(args.sizes)
        recipes = parse_recipes(args.recipes)
        runs = [parse_run(t, sizes, recipes) for t in (args.runs or default_runs(args.at)).split(",") if t.strip()]
    except ValueError as exc:
        print(f"bench/daemon_learning.py: {exc}", file=sys.stderr)
        return 2
    done = load_results(results)
    todo = [r for r in dict.fromkeys(runs) if args.force or r.key not in done]
    if any(r.kind == "torch" for r in todo):
        try:
            import torch  # noqa: F401
        except ImportError:
            print("bench/daemon_learning.py: PyTorch is needed for torch runs: pip install -e '.[bench]'",
                  file=sys.stderr)
            return 2
    for r in runs:
        if r not in todo:
            print(f"{r.key}: already in {results}, skipped (--force runs it again)", file=sys.stderr)
    failed = 0
    signal.signal(signal.SIGTERM, interrupted)  # as Ctrl-C: the daemon is killed, its temp dir removed
    for r in todo:
        print(f"{r.key}: starting", file=sys.stderr, flush=True)
        started = datetime.now(timezone.utc)
        try:
            record = (run_daemon if r.kind == "daemon" else run_torch)(r, args, corpus)
        except RunFailed as exc:
            print(f"{r.key}: FAILED, not recorded: {exc}", file=sys.stderr, flush=True)
            failed += 1
            continue
        except KeyboardInterrupt:
            print(f"{r.key}: interrupted, not recorded", file=sys.stderr, flush=True)
            return 130
        record.update(started_at=started.isoformat(timespec="seconds"), revision=revision(), cpus=os.cpu_count(),
                      corpus=str(corpus))
        append_result(results, record)
        print(f"{r.key}: recorded in {results}", file=sys.stderr, flush=True)
    if (records := load_results(results)):
        print(summary(records))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
