"""The engine: how a model's work runs on a machine, kept apart from what the model computes.

    tuning        which strategy each workload uses, measured once per machine and cached
    calibration   the piece sizes and split thresholds of numpyvit.parallel, measured
    shards        one shard of the batch per core on threads (ThreadShards); the shard splitter
                  and gradient sum that threads, processes and MPI share
    workers       the same shards in worker processes (ProcessShards), over shared memory
    runner        CpuRunner: runs one model by the chosen strategy (registered with numpyvit.execution)
    mae_steps     ShardedSteps: a masked autoencoder's training steps, one shard per core

The layers never import this package; they use the low floor numpyvit.parallel. Importing
numpyvit imports the engine, which registers its runner, so every NumPy model uses it.
"""
from . import tuning
from .runner import CpuRunner, make_runner

__all__ = ["CpuRunner", "make_runner", "tuning"]
