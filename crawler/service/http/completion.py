"""A completion of POST /api/generate: its request checked, then streamed from a snapshot of the
live weights.

A completion runs on its request's thread at a lower CPU priority (nice +10) and within
`generation_cpu_share` of one core (it sleeps when its own CPU time runs ahead), on numpy with
BLAS held to one thread; the weights are copied by the training thread between two steps
(TrainingWorker.snapshot), so a completion never sees a half-updated step. At most
`max_generations` run at once (429 beyond).
Not the sampler (engine/sample.py draws each token) and not the settings' defaults or bounds
(engine/sampling.py: the page's defaults are PAGE_SAMPLING, and `[http] max_new_tokens` only
lowers the bound of a completion's length). Not the HTTP framing either: it writes through the
`send(dict)` it is given. Relies on the daemon's trainer (its snapshot: the weights with their
step and model config, taken together, so a model grown since is sampled at its own shape) and
tokenizer, handed in by the window.
"""

from __future__ import annotations

import codecs
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from engine.sampling import PAGE_SAMPLING, SampleConfig

from .errors import RequestError

MAX_PROMPT_BYTES = 8 * 1024  # of UTF-8
SNAPSHOT_WAIT_SECONDS = 10.0  # for the trainer's next step boundary (an evaluation may hold it)
GENERATION_NICE = 10


def completion_request(body: Any, max_new_tokens: int) -> tuple[str, SampleConfig]:
    """The POST /api/generate body checked field by field (each field's type is its default's):
    the prompt and the settings, or RequestError(400) naming the field."""
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    page = replace(PAGE_SAMPLING, max_new_tokens=min(PAGE_SAMPLING.max_new_tokens, max_new_tokens))
    defaults = {"prompt": ""} | asdict(page)
    unknown = sorted(set(body) - set(defaults))
    if unknown:
        raise RequestError(400, f"unknown field {unknown[0]!r}; allowed: {', '.join(defaults)}")
    values = {}
    for name, default in defaults.items():
        value, kind = body.get(name, default), type(default)
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if isinstance(value, bool) or not ok:
            wanted = "a string" if kind is str else "an integer" if kind is int else "a number"
            raise RequestError(400, f"{name} must be {wanted}, got {json.dumps(value)}")
        values[name] = float(value) if kind is float else value
    prompt = values.pop("prompt")
    if len(prompt.encode("utf-8", "surrogatepass")) > MAX_PROMPT_BYTES:
        raise RequestError(400, f"prompt is longer than {MAX_PROMPT_BYTES} bytes")
    try:
        return prompt, SampleConfig(**values).validate(max_new_tokens=max_new_tokens)
    except ValueError as exc:  # the engine's ConfigError, naming the field and its bound
        raise RequestError(400, str(exc)) from None


class Completions:
    """The completions of one window: the slots, the last snapshot, and the stream of each."""

    def __init__(self, config, stopping: threading.Event) -> None:
        self.config, self.stopping = config, stopping
        self.slots = threading.BoundedSemaphore(config.max_generations)
        self._last_snapshot = None

    def run(self, body: Any, trainer, tokenizer, send: Callable[[dict], None]) -> dict:
        """Check the request, take a slot and a snapshot, and stream the completion through
        `send`; the figures of its generation_finished event. RequestError before anything is
        sent when the request is wrong, the model is not there yet or every slot is taken."""
        prompt, settings = completion_request(body, self.config.max_new_tokens)
        if trainer is None or trainer.trainer is None or tokenizer is None:
            raise RequestError(503, "the model is not loaded yet; try again in a moment", {"Retry-After": "5"})
        if not self.slots.acquire(blocking=False):
            raise RequestError(429, f"{self.config.max_generations} completion(s) already running: try again when "
                               "it ends ([http] max_generations)", {"Retry-After": "5"})
        try:
            return self._stream(prompt, settings, trainer, tokenizer, send)
        finally:
            self.slots.release()

    def _stream(self, prompt: str, settings: SampleConfig, trainer, tokenizer, send) -> dict:
        import numpy as np

        from engine.sample import Generator, sample_next
        from engine.trainer import limit_blas_threads

        _lower_this_thread()
        limit_blas_threads()
        snapshot = trainer.snapshot(SNAPSHOT_WAIT_SECONDS) or self._last_snapshot
        if snapshot is None:
            raise RequestError(503, "the trainer is busy (an evaluation or a checkpoint); try again in a moment",
                               {"Retry-After": "10"})
        self._last_snapshot = snapshot
        params, step, model_config = snapshot  # the weights' own shape: the model may have grown since
        try:
            prompt_ids = [tokenizer.eod_id] + tokenizer.encode(prompt.encode("utf-8")).tolist()
        except ValueError as exc:
            raise RequestError(400, f"prompt: {exc}") from None
        generator = Generator(model_config, params)
        rng = np.random.default_rng(settings.seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        t0, cpu0 = time.monotonic(), time.thread_time()
        share = self.config.generation_cpu_share
        send({"step": step, "prompt_tokens": len(prompt_ids)})
        logits, count, reason = generator.feed(prompt_ids), 0, "length"
        while count < settings.max_new_tokens:
            if self.stopping.is_set():
                reason = "stopping"
                break
            token = sample_next(logits, rng, settings.temperature, settings.top_k, settings.top_p)
            if token == tokenizer.eod_id:
                reason = "end_of_document"
                break
            count += 1
            text = decoder.decode(tokenizer.decode([token]))
            if text:
                send({"text": text})
            if count < settings.max_new_tokens:
                logits = generator.feed([token])
            # the CPU budget: sleep while this thread's CPU time runs ahead of its share of the wall clock
            ahead = (time.thread_time() - cpu0) / share - (time.monotonic() - t0)
            if ahead > 0:
                self.stopping.wait(ahead)
        tail = decoder.decode(b"", final=True)
        if tail:
            send({"text": tail})
        seconds = round(time.monotonic() - t0, 3)
        send({"done": True, "tokens": count, "reason": reason, "seconds": seconds})
        return {"step": step, "prompt_tokens": len(prompt_ids), "tokens": count, "reason": reason,
                "seconds": seconds, "cpu_seconds": round(time.thread_time() - cpu0, 3)}


def _lower_this_thread() -> None:
    """Raise this thread's niceness (Linux: per thread), so training's threads come first."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), GENERATION_NICE)
    except (OSError, AttributeError):
        pass
