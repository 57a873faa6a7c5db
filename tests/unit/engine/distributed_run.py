"""Run by tests/unit/engine/test_distributed.py under mpiexec: each rank trains a tiny model on
its rows of fixed batches and writes its parameters after every step to OUT/rank-R.npy.

Usage: distributed_run.py OUT MODE STEPS ROWS [SYNC_EVERY [GROW_AT]]  (ROWS: each rank's rows per
step; GROW_AT: every rank adds two blocks after that many steps, and the file then holds the
parameters of the steps after it)
"""

import sys
from pathlib import Path

import numpy as np

from engine import DistributedConfig, ModelConfig, TrainConfig, Trainer
from engine.distributed import world

out, mode, steps, rows = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sync_every = int(sys.argv[5]) if len(sys.argv) > 5 else 2
grow_at = int(sys.argv[6]) if len(sys.argv) > 6 else None
comm = world()
model = ModelConfig(vocab_size=61, context_length=12, d_model=16, n_layer=2, n_head=2)
train = TrainConfig(batch_size=rows, seq_len=12, threads=2, warmup_steps=1, schedule="constant")
trainer = Trainer(model, train, comm=comm, distributed=DistributedConfig(mode=mode, sync_every=sync_every))
history = []
for step in range(steps):
    if step == grow_at:
        trainer.grow(2, reason="test")
        history = []
    everything = np.random.default_rng([5, step]).integers(0, 61, (rows * comm.size, 13))  # (N*rows, T+1)
    mine = everything[comm.rank * rows : (comm.rank + 1) * rows]
    stats = trainer.step(mine[:, :-1], mine[:, 1:])
    history.append(trainer.params.copy())
np.save(out / f"rank-{comm.rank}.npy", np.stack(history), allow_pickle=False)
trainer.close()
