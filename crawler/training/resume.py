"""Where a start of the training loop stands: the model a checkpoint fixes against the
configuration and the command-line flags, the engine's Trainer built from it, and the stream
position and counts it resumes at (`open_trainer`).

The checkpoint's model wins over the configuration (a setting that differs is logged as
`model_config_ignored`, not used); a field pinned by a flag must agree, and the vocabulary must
be the state directory's tokenizer's. A model grown in depth (crawler/training/growth.py,
`crystalline grow`) is compared by the shape it was born with as well as its shape now, so the
setting it started from is not reported as ignored. A checkpoint of this loop carries its stream
position; one without (adopted weights) or none at all starts from the store's cursor.

Not which checkpoint to resume from (the CheckpointStore's `reconcile` decides, before this), nor
the rest of the loop's state in the checkpoint's `extra` (each part of the loop restores its own).
Relies on the engine's Trainer and ModelConfig, on the store's cursor and, under MPI, on the
team's communicator.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, NamedTuple

from engine import CheckpointError, ConfigError

from ..config import Config
from .checkpoints import RESET_HINT


class Start(NamedTuple):
    """A Trainer and the place in the stream it resumes at."""

    trainer: Any  # engine.Trainer
    model: Any  # engine.ModelConfig: the model trained
    seq_len: int  # the configured one, at most the model's context length
    extra: dict  # the checkpoint's loop state ({} when fresh)
    position: int  # stream offset read up to
    tokens_trained: int  # new stream tokens trained on


def open_trainer(config: Config, checkpoint, queue, vocab_size: int, pinned: dict[str, str], log,
                 team=None) -> Start:
    """A Trainer for `config`'s model, from `checkpoint` (None: a fresh model); a start without a
    stream position takes the store's cursor (`queue.cursor()`). Raises ConfigError for a pinned
    field that disagrees with the checkpoint and CheckpointError for another tokenizer's
    vocabulary."""
    from engine import Trainer

    model = replace(config.model, vocab_size=vocab_size).validate()
    if checkpoint is not None:
        model = resumed_model(model, checkpoint, vocab_size, pinned, log)
    train = replace(config.train, seq_len=min(config.train.seq_len, model.context_length))
    train = train.validate(model)
    cursor = queue.cursor()
    extra = {} if checkpoint is None else checkpoint.extra
    across = {} if team is None else {"comm": team.comm, "distributed": team.config}
    if checkpoint is None or "stream_position" not in extra:  # fresh, or adopted weights
        trainer = (Trainer(model, train, **across) if checkpoint is None
                   else Trainer.from_checkpoint(checkpoint, train, **across))
        return Start(trainer, model, train.seq_len, extra, cursor.stream_position, cursor.tokens_trained)
    trainer = Trainer.from_checkpoint(checkpoint, train, **across)
    position, tokens = int(extra["stream_position"]), int(extra["tokens_trained"])
    log.info("checkpoint_loaded", step=checkpoint.step, path=str(checkpoint.path),
             stream_position=position, tokens_trained=tokens)
    return Start(trainer, model, train.seq_len, extra, position, tokens)


def resumed_model(configured, checkpoint, vocab_size: int, pinned: dict[str, str], log):
    """The checkpoint's model wins over the configuration; a pinned (flag) field must agree. A
    model grown since it was born (its train_state's growth records) is still the user's: a
    setting that agrees with its shape before the first growth, or with its shape now, is no
    conflict (so `--layers 4` resumes a model grown from 4 layers, as a setting of 4 does)."""
    trained = checkpoint.model_config
    born = _born_as(trained, (checkpoint.train_state or {}).get("growth"))
    fields = [f for f in configured.SHAPE_FIELDS + ("seed",)
              if getattr(configured, f) not in (getattr(trained, f), getattr(born, f))]
    for field in fields:
        if field in pinned:
            raise ConfigError(
                f"{pinned[field]} {getattr(configured, field)} conflicts with the checkpoint "
                f"{checkpoint.path} ({field}={getattr(trained, field)}); drop the flag, use another "
                f"--state-dir, or {RESET_HINT}")
    if fields:
        settings = ", ".join(f"model.{f} = {getattr(configured, f)}" for f in fields)
        kept = ", ".join(f"{f} = {getattr(trained, f)}" for f in fields)
        log.warning("model_config_ignored", path=str(checkpoint.path),
                    configured={f: getattr(configured, f) for f in fields},
                    checkpoint={f: getattr(trained, f) for f in fields},
                    message=f"{settings} (a setting, or this version's default) is not used: the "
                            f"checkpoints were trained with {kept}, which "
                            "the model keeps; set it back, or start a model of the new shape with "
                            "`crystalline reset --keep-corpus` (or a new state directory)")
    if trained.vocab_size != vocab_size:
        raise CheckpointError(checkpoint.path, f"vocab_size {trained.vocab_size} does not match the state "
                              f"directory's tokenizer ({vocab_size}): restore the tokenizer "
                              f"it was trained with, or {RESET_HINT}")
    return trained


def _born_as(trained, growth):
    """The model `trained` was before its first growth (`trained` itself when never grown, or
    when the records cannot be read)."""
    if not isinstance(growth, list) or not growth or not isinstance(growth[0], dict):
        return trained
    old = growth[0].get("old") or {}
    shape = {f: old[f] for f in ("n_layer", "d_model", "n_head") if isinstance(old.get(f), int)}
    return replace(trained, **shape)
