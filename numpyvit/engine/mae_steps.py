"""Training steps of a masked autoencoder (numpyvit.mae) on this machine's cores: the batch cut into
one shard per core, each shard's whole forward and backward run by one core with single-threaded
BLAS, in a worker process (numpyvit.engine.workers) or on a thread (numpyvit.engine.shards).

Each image's loss and gradients depend on that image alone, and every image hides the same number
of patches, so the batch's loss (a mean over its hidden patches) is the shards' mean losses weighted
by their shares B_s / B, and its gradients the shards' gradients of those weighted losses, summed:

    loss = sum_s (B_s / B) loss_s          grad = sum_s grad of (B_s / B) loss_s

Which kind of shard: worker processes where the system has them, since an MAE shard makes
thousands of small NumPy calls a step and two threads spend much of it waiting for each other's
interpreter lock (Fashion-MNIST's encoder, D 96, batch 128, on a 2-core Intel Xeon: 2,459 img/s
on threads, 3,250 in processes; demos/benchmark_mae.py). $NUMPYVIT_PARALLEL overrides it
(threads; split or blas: one shard, BLAS on every core). Where the processes' shared memory cannot
be had, threads, with the warning the classifier gives.
"""
import numpy as np

from ..parallel import num_threads, single_threaded_blas
from . import tuning
from .shards import ThreadShards
from .workers import ProcessShards, SharedMemoryError


class ShardedSteps:
    """``step(x, rows, hidden)`` -> the loss of a MaskedAutoencoder ``mae`` on images x (B, C, H, W)
    with the kept ``rows`` and ``hidden`` patches (numpyvit.layers.masking.random_keep), its
    gradients summed into the model's parameters; ``count`` shards (default: one per core on NumPy,
    one on CuPy)."""

    def __init__(self, mae, count=None):
        self.mae = mae
        self.count = (num_threads() if mae.xp is np else 1) if count is None else count
        self.shards = None

    def kind(self, batch):
        """'processes', 'threads' or 'one' (the model's own forward and backward, BLAS on every core)."""
        if self.count == 1 or batch < self.count:
            return "one"
        forced = tuning.forced_strategy()
        if forced:
            return forced if forced in ("processes", "threads") else "one"
        strategies = tuning.available_strategies(batch, self.count)
        return "processes" if "processes" in strategies else "threads" if "threads" in strategies else "one"

    def step(self, x, rows, hidden):
        kind = self.kind(x.shape[0])
        if kind == "one":
            loss = self.mae(x, rows, hidden)
            self.mae.backward()
            return float(loss)
        with single_threaded_blas():
            try:
                return self._shards(kind).loss_step(x, rows, hidden)
            except SharedMemoryError as error:                       # no room for the workers' files
                if tuning.forced_strategy():
                    raise
                tuning.refuse_processes(error)
                return self._shards("threads").loss_step(x, rows, hidden)

    def _shards(self, kind):
        """The shards of this kind, made on first use (the other kind's released)."""
        wanted = ProcessShards if kind == "processes" else ThreadShards
        if not isinstance(self.shards, wanted):
            self.close()
            self.shards = wanted(self.mae, self.count)
        return self.shards

    def close(self):
        """Stop the worker processes (or drop the replicas), if any."""
        if self.shards is not None:
            self.shards, shards = None, self.shards
            shards.close()
