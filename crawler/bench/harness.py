"""The shared harness of the bench/ scripts: the daemon they start, the corpus and held-out split
they read, bits per byte, and the result rows they record.

For the scripts of bench/ (each run as `python bench/NAME.py` from a checkout), which import it
as `crawler.bench.harness`, so that no script imports another. It lives in the package, as
crawler.service.child does, so that a script and a test import it the same way; neither
`crystalline bench` nor the daemon uses it.

The rows the scripts record, and the commit each names, are crawler.bench.results' concern;
`record_each` runs a campaign of measurements into them. Relies on crawler.service.child for
the daemon, crawler.ingest for the corpus and its byte count, and engine.units for the
arithmetic.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from engine.units import bits_per_byte

from ..ingest.data import eval_windows, load_corpus
from ..ingest.tokenizer import ByteTokenizer
from ..service.child import ChildFailed, DaemonChild
from .results import REPO, DirtyTree, ResultLog

DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "shakespeare"  # train/ and val/
READY_TIMEOUT_S = 600.0  # launch -> daemon_ready; a cold numba cache compiles for minutes
STOP_TIMEOUT_S = 300.0  # SIGTERM -> exit: the step in flight and the final checkpoint
EVAL_TIMEOUT_S = 1800.0


class RunFailed(Exception):
    """A measurement that could not finish; the script reports it and records nothing."""


# ---------------------------------------------------------------------------------------------
# settings and the daemon


def toml_text(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """A crystalline.toml of `sections` ({"watch": {"roots": [...]}, ...}): JSON scalars, strings
    and lists are valid TOML."""
    return "".join(f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in keys.items()) + "\n"
                   for name, keys in sections.items())


def parse_value(text: str) -> bool | int | float | str:
    """A setting's value as TOML would read it: true/false, an int, a float, else the string."""
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text


def parse_settings(spec: str) -> tuple[tuple[str, str, Any], ...]:
    """"section.key=value/section.key=value" -> ((section, key, value), ...); ValueError otherwise."""
    settings = []
    for setting in filter(None, spec.split("/")):
        dotted, _, value = setting.partition("=")
        section, _, key = dotted.partition(".")
        if not (section and key and value):
            raise ValueError(f"setting {setting!r} must be section.key=value")
        settings.append((section, key, parse_value(value)))
    return tuple(settings)


def parse_recipes(text: str) -> dict[str, tuple[tuple[str, str, Any], ...]]:
    """NAME=section.key=value/section.key=value,... -> {NAME: ((section, key, value), ...)}."""
    recipes = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, spec = item.partition("=")
        try:
            settings = parse_settings(spec)
        except ValueError:
            settings = ()
        if not (name and settings):
            raise ValueError(f"--recipes item {item!r} must be NAME=section.key=value[/section.key=value...]")
        recipes[name] = settings
    return recipes


def with_settings(sections: dict[str, dict], settings: Sequence[tuple[str, str, Any]]) -> dict[str, dict]:
    """`sections` with each (section, key, value) set; a new dict, `sections` is left as it is."""
    out = {name: dict(keys) for name, keys in sections.items()}
    for section, key, value in settings:
        out.setdefault(section, {})[key] = value
    return out


def watching(inbox: Path, settle_seconds: float = 0.5) -> dict[str, dict]:
    """The sections every benchmarked daemon has: `inbox` watched, and its events as JSON lines."""
    return {"watch": {"roots": [str(inbox)], "settle_seconds": settle_seconds}, "log": {"format": "json"}}


class BenchDaemon(DaemonChild):
    """`python -m crawler run --state-dir STATE` (cwd: the checkout), with STATE/crystalline.toml
    written from `sections` first when they are given; every JSON event carries `_received`
    (time.perf_counter()). A wait that fails, or a stop that does not end in exit 0, is RunFailed.
    """

    inbox: Path | None = None  # the folder it watches, when `running` made one

    def __init__(self, state: Path, sections: Mapping[str, Mapping[str, Any]] | None = None,
                 args: Sequence[str] = (), env: Mapping[str, str] | None = None):
        state.mkdir(parents=True, exist_ok=True)
        if sections is not None:
            (state / "crystalline.toml").write_text(toml_text(sections))
        super().__init__(state, args, env=env, cwd=REPO)

    def first(self, event: str, timeout: float = READY_TIMEOUT_S) -> dict:
        """The first `event` it logged, waiting up to `timeout` s."""
        try:
            return self.wait_for(event, timeout)[0]
        except ChildFailed as exc:
            raise RunFailed(str(exc)) from None

    def last(self, event: str) -> dict | None:
        """The newest `event` logged so far, or None."""
        with self.cond:
            return next((e for e in reversed(self.events) if e.get("event") == event), None)

    def rates(self, start: float = -math.inf, end: float = math.inf) -> list[float]:
        """tokens_per_s of the train_step events received in [start, end) (perf_counter)."""
        return [e["tokens_per_s"] for e in self.find("train_step")
                if start <= e["_received"] < end and e.get("tokens_per_s")]

    def run_until(self, deadline: float, progress: Callable[[BenchDaemon], None] | None = None,
                  every: float = 60.0) -> None:
        """Sleep until perf_counter() reaches `deadline`, calling progress(self) every `every` s."""
        next_report = time.perf_counter() + every
        while (now := time.perf_counter()) < deadline:
            if self.proc.poll() is not None:
                raise RunFailed(f"daemon exited {self.proc.returncode} while training:\n{self.tail()}")
            if progress is not None and now >= next_report:
                progress(self)
                next_report = now + every
            time.sleep(min(1.0, deadline - now))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """`sig` once (a second SIGTERM would skip the final checkpoint); exit 0 is required."""
        try:
            code = super().stop(sig, timeout)
        except subprocess.TimeoutExpired:
            raise RunFailed(f"daemon still running {timeout:.0f} s after signal {sig}:\n{self.tail()}") from None
        if code != 0:
            raise RunFailed(f"daemon exited {code} after signal {sig}:\n{self.tail()}")
        return code


@contextlib.contextmanager
def running(sections: dict[str, dict] | None = None, corpus: Path | None = None, args: Sequence[str] = (),
            settle_seconds: float = 0.5, ready: str = "daemon_ready") -> Iterator[BenchDaemon]:
    """A daemon on a fresh temporary state dir watching a fresh inbox (a copy of the folder
    `corpus` when given; `daemon.inbox`), its sections `watching(inbox)` plus `sections`, once it
    has logged `ready`. Stopped with SIGTERM (exit 0) when the block ends, killed if it raises;
    the folder is removed either way."""
    work = Path(tempfile.mkdtemp(prefix="crystalline-bench-"))
    daemon = None
    try:
        inbox = work / "inbox"
        shutil.copytree(corpus, inbox) if corpus is not None else inbox.mkdir()
        settings = [(name, key, value) for name, keys in (sections or {}).items() for key, value in keys.items()]
        daemon = BenchDaemon(work / "state", with_settings(watching(inbox, settle_seconds), settings), args)
        daemon.inbox = inbox
        daemon.first(ready)
        yield daemon
        daemon.stop()
    finally:
        if daemon is not None:
            daemon.kill()
        shutil.rmtree(work, ignore_errors=True)


def copy_files(source: Path, inbox: Path) -> int:
    """Every file under `source` into `inbox`, relative paths kept (a plain copy, as a user makes)."""
    count = 0
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        target = inbox / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        count += 1
    return count


def crystalline(*args: str, timeout: float = EVAL_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`python -m crawler ARGS` in the checkout, its output captured; RunFailed after `timeout` s."""
    command = [sys.executable, "-m", "crawler", *args]
    try:
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"crystalline {' '.join(args)} took over {timeout:.0f} s") from None


def evaluate(state: Path, split: Path, *flags: str) -> tuple[dict | None, str]:
    """`crystalline eval SPLIT --json --state-dir STATE FLAGS`: (its JSON result, "") or (None, the
    end of its stderr) when it exits non-zero; RunFailed when it prints no result."""
    done = crystalline("eval", str(split), "--json", "--state-dir", str(state), *flags)
    if done.returncode != 0:
        return None, f"exit {done.returncode}: {done.stderr[-3000:]}"
    for line in reversed(done.stdout.splitlines()):
        with contextlib.suppress(json.JSONDecodeError):
            if isinstance(result := json.loads(line), dict) and "bits_per_byte" in result:
                return result, ""
    raise RunFailed(f"crystalline eval printed no JSON result:\n{done.stdout[-2000:]}")


def json_events(text: str) -> list[dict]:
    """The JSON-object lines of a command's output (its events), in order; other lines are left out."""
    events = []
    for line in text.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if isinstance(event := json.loads(line), dict):
                events.append(event)
    return events


def mean_rate(rates: Sequence[float]) -> float | None:
    """Tokens over seconds across events that each cover as many tokens: the harmonic mean."""
    return len(rates) / sum(1.0 / r for r in rates) if rates else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# a campaign of runs


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM as Ctrl-C inside the block, so that `finally` blocks kill a run's daemon and remove
    its folders; the previous handler is put back after it. Main thread only."""

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def record_each(log: ResultLog, runs: Sequence[tuple[str, Callable[[], dict]]], script: str, **fields: Any) -> int:
    """Measure each (key, measure) in turn, never two at once, and append measure()'s row with
    started_at, cpus and `fields` to `log`; returns the script's exit status.

    A run that raises RunFailed is reported and not recorded (1 at the end). Ctrl-C or SIGTERM
    ends the campaign (130); so does a tree that is or becomes dirty without --allow-dirty (2),
    and a row whose tree changed during its run is printed, not recorded.
    """
    with sigterm_as_interrupt():
        return _record_each(log, runs, script, fields)


def _record_each(log: ResultLog, runs: Sequence[tuple[str, Callable[[], dict]]], script: str,
                 fields: dict[str, Any]) -> int:
    failed = 0
    for key, measure in runs:
        try:
            before = log.check()
        except DirtyTree as exc:
            print(f"{script}: {exc}", file=sys.stderr)
            return 2
        print(f"{key}: starting", file=sys.stderr, flush=True)
        started = datetime.now(timezone.utc)
        try:
            row = measure()
        except RunFailed as exc:
            print(f"{key}: FAILED, not recorded: {exc}", file=sys.stderr, flush=True)
            failed += 1
            continue
        except KeyboardInterrupt:
            print(f"{key}: interrupted, not recorded", file=sys.stderr, flush=True)
            return 130
        row.update(started_at=started.isoformat(timespec="seconds"), cpus=os.cpu_count(), **fields)
        try:
            log.append(row, before)
        except DirtyTree as exc:
            print(f"{key}: not recorded: {exc}\n{json.dumps(row)}", file=sys.stderr, flush=True)
            failed += 1
            continue
        print(f"{key}: recorded in {log.path}", file=sys.stderr, flush=True)
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# the corpus, held out text and bits per byte


class CorpusMissing(ValueError):
    """The corpus folder, or one of its splits, is not there."""


def corpus_folder(path: str | os.PathLike[str], splits: Sequence[str] = ("train", "val")) -> Path:
    """The corpus folder, resolved; CorpusMissing unless it is a folder holding every split as one."""
    folder = Path(path).resolve()
    if not folder.is_dir():
        raise CorpusMissing(f"corpus not found: {path} is not a folder")
    if not all((folder / split).is_dir() for split in splits):
        raise CorpusMissing(f"corpus not found: {path} needs {' and '.join(f'{s}/' for s in splits)} folders")
    return folder


def corpus_or_exit(path: str | os.PathLike[str], script: str, splits: Sequence[str] = ("train", "val")) -> Path:
    """corpus_folder, or the script's exit with status 2 and `SCRIPT: corpus not found: ...`."""
    try:
        return corpus_folder(path, splits)
    except CorpusMissing as exc:
        print(f"{script}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def load_tokens(corpus: Path, split: str) -> np.ndarray:
    """Byte-tokenized text of one split, "EOD doc1 EOD doc2 ..." (crawler.ingest.data.load_corpus)."""
    return load_corpus([corpus / split]).tokens


@dataclass(frozen=True)
class HeldOut:
    """Held-out (inputs, targets) batches and the bytes of text their targets stand for."""

    batches: list[tuple[np.ndarray, np.ndarray]]
    n_bytes: int

    def bits_per_byte(self, nats: Callable[[np.ndarray, np.ndarray], float]) -> float:
        """Bits per byte of a model whose nats(inputs, targets) sums its loss over a batch."""
        return bits_per_byte(sum(nats(x, y) for x, y in self.batches), self.n_bytes)


def held_out(tokens: np.ndarray, seq_len: int, batch_size: int, keep: int = 0) -> HeldOut:
    """Every target of `tokens` once (crawler.ingest.data.eval_windows), or, with `keep`, that many
    evenly spaced full windows of them; bytes counted by the byte tokenizer (EOD counts 0)."""
    batches = list(eval_windows(tokens, seq_len, batch_size))
    if keep:
        full = [b for b in batches if b[0].shape[1] == seq_len]
        x, y = np.concatenate([b[0] for b in full]), np.concatenate([b[1] for b in full])
        rows = np.unique(np.linspace(0, x.shape[0] - 1, min(keep, x.shape[0])).astype(np.int64))
        batches = [(x[rows[i:i + batch_size]], y[rows[i:i + batch_size]]) for i in range(0, rows.size, batch_size)]
    return HeldOut(batches, sum(ByteTokenizer().token_bytes(y) for _, y in batches))
