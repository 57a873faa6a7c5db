"""Several processes train one model: rank 0 leads, the other ranks follow (docs/SCALE-OUT.md).

`mpiexec -n N crystalline run|train --distributed` starts N copies of the command. Rank 0 is the
whole product: the watcher, ingest, the store, the training loop (crawler/training/worker.py), the
held-out evaluation, the plateau rule, checkpoints and their rows, the HTTP and metrics ports
and every `train_step` and `status` event. Ranks 1..N-1 run `follow` only: they hold a replica
of the model and the engine's worker threads, and take part in each step. They need neither the
store nor the state directory, so another machine needs only the package.

Each step, rank 0 builds one batch of N*B windows, exactly the batch one process with batch
size N*B would build (so the cursor advances by what all ranks consumed and a resumed run takes
the same batches), broadcasts a STEP command and scatters B rows to each rank (rank r gets rows
r*B .. r*B+B-1: disjoint, decided by rank and position); then every rank calls Trainer.step,
which sums the gradients across ranks or averages the parameters (engine/distributed.py). A
STATE command carries the model, its configuration and the parameters and optimizer state
rank 0 resumed from, so every rank starts from the same checkpoint; HOLD and UNHOLD bracket
steps that are undone afterwards (the best model's cool-down copy, taken by all ranks with the
whole batch, as one process would); GROW deepens every replica between two steps with the same
arguments (Trainer.grow is a fixed function of them, so "sync" ranks stay bit-identical through
a growth); IDLE releases the followers' engines (the training worker stopped, perhaps to be
restarted), STOP ends them. Commands are broadcast in the order rank 0 takes its decisions, so
every rank calls the same collectives in the same order; a follower waits for the next command
without spinning a core.

A rank that dies ends the job (MPI's launcher kills the others): the restart path is the single
process's, from the last checkpoint. Followers ignore SIGINT and SIGTERM: rank 0 receives the
stop, finishes its step, checkpoints and sends STOP, so no rank leaves before the checkpoint.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
from typing import Any

import numpy as np

from engine import ModelConfig, NonFiniteLoss, TrainConfig
from engine.distributed import Communicator, DistributedConfig, world

from ..logging import set_process_fields

STEP, STATE, IDLE, STOP, HOLD, UNHOLD, GROW = 0, 1, 2, 3, 4, 5, 6


def join(config: DistributedConfig) -> tuple["Team | None", Communicator]:
    """This process's place under mpiexec: (the Team when it is rank 0 of several, else None; the
    communicator). Every event from now on carries `rank`. Raises engine.ConfigError when mpi4py
    is missing."""
    comm = world()
    if comm.size > 1:
        set_process_fields(rank=comm.rank)
    return (Team(comm, config) if comm.rank == 0 and comm.size > 1 else None), comm


class Team:
    """Rank 0's side: the commands that keep the followers in step with the training loop."""

    def __init__(self, comm: Communicator, config: DistributedConfig):
        self.comm = comm
        self.config = config.validate()
        self.stopped = False

    @property
    def size(self) -> int:
        return self.comm.size

    def _command(self, code: int, lr: float | None = None) -> None:
        self.comm.bcast_idle(np.array([code, math.nan if lr is None else lr], np.float64))

    def share(self, trainer) -> None:
        """STATE: every follower builds its replica from rank 0's trainer (model, recipe, counters,
        parameters and optimizer state), so all ranks start from the same checkpoint."""
        self._command(STATE)
        self.comm.bcast_json({"model": trainer.model_config.to_dict(), "train": trainer.train_config.to_dict(),
                              "distributed": self.config.to_dict(), "step": trainer.step_count,
                              "tokens_seen": trainer.tokens_seen})
        for buffer in (trainer.params, trainer.m, trainer.v):
            self.comm.bcast_array(buffer)

    def step(self, trainer, windows: np.ndarray, lr: float | None = None):
        """STEP: windows (size*B, T + 1) int32, rank r's rows r*B.. to rank r; every rank steps.
        Returns rank 0's StepStats (its loss is over every rank's rows in "sync" mode)."""
        B = windows.shape[0] // self.size
        self._command(STEP, lr)
        own = self.comm.scatter_rows(np.ascontiguousarray(windows, np.int32), (B, windows.shape[1]), np.int32)
        return trainer.step(own[:, :-1], own[:, 1:], lr=lr)

    def grow(self, trainer, add: int, reason: str = "", placement: str = "interleave", init: str = "copy") -> dict:
        """GROW: every rank adds `add` blocks to its replica between two steps, with the same
        arguments, then rank 0 to its own (Trainer.grow); returns rank 0's growth record. The
        arguments are checked here first (engine.ConfigError), so a bad one reaches no follower."""
        from engine import ConfigError
        from engine.grow import INITS, depth_plan

        depth_plan(trainer.model_config.n_layer, add, placement)  # raises before any rank changes
        if init not in INITS or not isinstance(reason, str):
            raise ConfigError(f"init ({init!r}) must be one of {', '.join(INITS)}, and reason a string")
        self._command(GROW)
        self.comm.bcast_json({"add": int(add), "reason": reason, "placement": placement, "init": init})
        return trainer.grow(add, reason, placement, init)

    def hold(self) -> None:
        """HOLD: every follower keeps a copy of its state (Trainer.state_copy), for steps that
        are to be undone: the cool-down of the best model's copy, which all ranks take in step."""
        self._command(HOLD)

    def unhold(self) -> None:
        """UNHOLD: every follower puts back the state HOLD kept."""
        self._command(UNHOLD)

    def release(self) -> None:
        """IDLE: the followers close their engines and wait for the next STATE or STOP."""
        self._command(IDLE)

    def stop(self) -> None:
        """STOP: the followers end (exit 0). Idempotent: only the first call sends it."""
        if not self.stopped:
            self.stopped = True
            self._command(STOP)


def follow(comm: Communicator, log: Any, timeout: float | None = None) -> int:
    """A follower rank's whole life: replicas built on STATE, a step on each STEP, until STOP.
    Returns the exit status: 1 when rank 0 sends no first command within `timeout` seconds."""
    from engine import Trainer

    # rank 0 decides when to stop (module docstring); the handlers are restored on the way out
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    log = log.bind(component="follower")
    log.info("follower_ready", ranks=comm.size, pid=os.getpid())
    trainer, steps, held = None, 0, None
    try:
        while True:
            try:
                code, lr = comm.bcast_idle(np.zeros(2, np.float64), timeout=None if steps or trainer else timeout)
            except TimeoutError as exc:
                log.error("follower_failed", error=f"{exc}: [distributed] timeout_seconds; is rank 0 running?")
                return 1
            code = int(code)
            if code == STEP:
                B, T = trainer.train_config.batch_size, trainer.train_config.seq_len
                own = comm.scatter_rows(None, (B, T + 1), np.int32)
                try:
                    trainer.step(own[:, :-1], own[:, 1:], lr=None if math.isnan(lr) else float(lr))
                except NonFiniteLoss as exc:  # every rank skips the same update
                    log.error("train_step_failed", step=trainer.step_count, error=str(exc))
                steps += 1
            elif code == STATE:
                if trainer is not None:
                    trainer.close()
                trainer = _replica(comm, Trainer)
                log.info("follower_started", step=trainer.step_count, threads=trainer.threads,
                         params=int(trainer.params.size), mode=trainer.distributed.mode)
            elif code == GROW:
                spec = comm.bcast_json()
                record = trainer.grow(int(spec["add"]), spec["reason"], spec["placement"], spec["init"])
                log.info("follower_grown", step=trainer.step_count, n_layer=record["new"]["n_layer"],
                         params=record["new"]["parameters"])
            elif code == HOLD:
                held = trainer.state_copy()
            elif code == UNHOLD:
                trainer.restore_state(held)
                held = None
            elif code == IDLE:
                digest = None
                if trainer is not None:
                    digest = params_digest(trainer.params)
                    trainer.close()
                trainer = None
                log.info("follower_idle", steps=steps, params_sha256=digest)
            elif code == STOP:
                log.info("follower_stopped", steps=steps)
                return 0
            else:
                log.error("follower_failed", error=f"unknown command {code}")
                return 1
    finally:
        if trainer is not None:
            trainer.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _replica(comm: Communicator, trainer_class):
    """The trainer rank 0 shares (Team.share), built on this rank."""
    shared = comm.bcast_json()
    model = ModelConfig.from_dict(shared["model"])
    train = TrainConfig.from_dict(shared["train"])
    trainer = trainer_class(model, train, step=int(shared["step"]), tokens_seen=int(shared["tokens_seen"]),
                            comm=comm, distributed=DistributedConfig.from_dict(shared["distributed"]))
    for buffer in (trainer.params, trainer.m, trainer.v):
        comm.bcast_array(buffer)  # in place: rank 0's values
    if trainer.averager is not None:
        np.copyto(trainer.averager.anchor, trainer.params)
    return trainer


def params_digest(params: np.ndarray) -> str:
    """sha256 of the parameters' bytes: equal on every rank when the replicas agree bit for bit."""
    return hashlib.sha256(np.ascontiguousarray(params, np.float32).tobytes()).hexdigest()
