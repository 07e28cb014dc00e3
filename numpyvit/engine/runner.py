"""Runs a NumPy model on this machine's CPU cores, by the strategy ``numpyvit.engine.tuning`` chose.

The strategies (numpyvit.parallel explains them): 'processes' and 'threads' cut the batch into
one shard per core (numpyvit.engine.workers, numpyvit.engine.shards), 'split' and 'blas' run the
stages here and split the big products. BLAS runs single-threaded except for 'blas'.

Where worker processes cannot get shared memory (a full or read-only /dev/shm: SharedMemoryError),
the runner warns once (numpyvit.engine.tuning.refuse_processes) and goes on with the fastest other
strategy, unless processes were forced. Recording attention maps runs 'split' (one copy of the
layers, so the maps are the model's own).
"""
import contextlib

import numpy as np

from ..execution import PlainRunner, register
from ..parallel import num_threads, single_threaded_blas
from . import tuning
from .shards import ThreadShards
from .workers import ProcessShards, SharedMemoryError

SHARDED = {"threads": ThreadShards, "processes": ProcessShards}


class CpuRunner:
    """The runner of one NumPy model (numpyvit.execution): strategy, shards, and their release."""

    def __init__(self, model):
        self.model = model
        self.shard_sets = {}                                         # (strategy, threads) -> shards

    def strategy(self, batch):
        """'processes', 'threads', 'split' or 'blas' for a forward of ``batch`` images."""
        model = self.model
        if num_threads() == 1:
            return "blas"
        if any(block.attn.record for block in model.blocks):
            return "split"                                           # attention maps: one copy of the layers
        return tuning.choose_strategy(model, batch)

    def forward(self, x):
        """(logits, the strategy used)."""
        strategy = self.strategy(x.shape[0])
        try:
            return self._run(strategy, "forward", x), strategy
        except SharedMemoryError as error:                          # worker processes' files cannot be made
            if tuning.forced_strategy():
                raise
            tuning.refuse_processes(error)
            self.release(keep="threads")
            strategy = self.strategy(x.shape[0])
            return self._run(strategy, "forward", x), strategy

    def backward(self, dlogits, strategy):
        return self._run(strategy, "backward", dlogits)

    def _run(self, strategy, direction, x):
        with contextlib.nullcontext() if strategy == "blas" else single_threaded_blas():
            if strategy in SHARDED:
                return getattr(self.shards(strategy), direction)(x)
            return getattr(self.model, f"{direction}_stages")(x)

    def shards(self, kind):
        """One shard of the batch per thread ('threads') or process ('processes'), made on first use."""
        key = (kind, num_threads())
        if key not in self.shard_sets:
            self.shard_sets[key] = SHARDED[kind](self.model, num_threads())
        return self.shard_sets[key]

    def release(self, keep=None):
        """Stop the worker processes and drop the replicas of every strategy but ``keep``."""
        for key in [key for key in self.shard_sets if key[0] != keep]:
            self.shard_sets.pop(key).close()


def make_runner(model):
    """A CpuRunner for a NumPy model; CuPy models run plainly (the GPU is already parallel)."""
    return CpuRunner(model) if model.xp is np else PlainRunner(model)


register(make_runner)
