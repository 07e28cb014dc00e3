"""Shards of the batch in worker processes (the data parallelism of ``numpyvit.engine.shards``).

Threads of one process share the interpreter lock: a thread holds it from the end of one NumPy
call to the start of the next, and a thread that finishes its call while the other holds it
waits to be woken. A shard of a small model makes thousands of NumPy calls of ~10-50 us a step,
so two threads spend a third of the step waiting for each other (mnist_tiny: 2,400 img/s on two
threads, 3,300 img/s in two processes). A worker process has an interpreter of its own.

Each worker is a ``python`` running ``numpyvit.engine.workers.main``, started when the model
first needs it and stopped with the model (or at exit). It builds a replica from the model's config
(a classifier's, or a masked autoencoder's around its encoder: ``replica_spec``), whose parameters
are views of one shared-memory file: the model copies its weights there before every command. Per
worker, a second shared-memory file holds its shard's arrays: images, and logits, dlogits and input
gradient (a classifier) or kept rows and hidden patches (an autoencoder), and, unless the forward
runs under no_grad, parameter gradients. Commands and replies are one
JSON line each on the worker's stdin and stdout; nothing is pickled. An exception in a worker
comes back as that worker's traceback. The files are deleted as soon as both sides have mapped
them, so nothing is left behind even if a process is killed (POSIX systems only; elsewhere
numpyvit uses threads). Each file's pages are reserved when it is made (``posix_fallocate``):
shared memory is a size-limited file system (Docker gives a container 64 MB), and touching a page
past its limit kills the process with SIGBUS. Reserving turns that into a SharedMemoryError up
front, on which the runner goes on without worker processes (numpyvit.engine.runner).
"""
import json
import mmap
import os
import signal
import subprocess
import sys
import tempfile
import traceback
import weakref
from pathlib import Path

import numpy as np

from ..grad_mode import grad_enabled, set_grad_enabled
from ..mae import MaskedAutoencoder
from ..model import VisionTransformer
from ..parallel import run_on_threads
from .shards import add_gradients, draw_seeds, seed_layers, shard_loss_step, split_rows

SUPPORTED = os.name == "posix"


class WorkerError(RuntimeError):
    """A worker process failed or died; the message holds its traceback or exit status."""


class SharedMemoryError(WorkerError):
    """The worker processes' files cannot be made in shared memory (no room, or not writable)."""


def _shared_file(nbytes):
    """(path, bytes as a uint8 array) of a new file in shared memory (/dev/shm where it exists),
    its pages reserved; SharedMemoryError if they do not fit or the file cannot be made."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    try:
        fd, path = tempfile.mkstemp(prefix="numpyvit-", dir=folder)
    except OSError as err:                                           # e.g. a read-only /dev/shm
        raise SharedMemoryError(f"numpyvit's worker processes cannot make a file in {folder} ({err}); "
                                "set NUMPYVIT_PARALLEL=threads") from err
    try:
        os.ftruncate(fd, max(1, nbytes))
        if hasattr(os, "posix_fallocate"):                           # Linux; elsewhere nothing to reserve
            os.posix_fallocate(fd, 0, max(1, nbytes))
    except OSError as err:
        os.unlink(path)
        stats = os.statvfs(folder)
        raise SharedMemoryError(
            f"numpyvit's worker processes need a file of {nbytes / 2**20:.0f} MB in shared memory "
            f"({folder}), which has {stats.f_bavail * stats.f_frsize / 2**20:.0f} MB free of "
            f"{stats.f_blocks * stats.f_frsize / 2**20:.0f} MB ({err.strerror}). "
            "Give it more (Docker: docker run --shm-size=2g ...; Kubernetes: an emptyDir volume with "
            "medium Memory at /dev/shm), or set NUMPYVIT_PARALLEL=threads") from err
    finally:
        os.close(fd)
    return path, _map(path, writable=True)


def _map(path, writable):
    """The file at ``path`` mapped into memory, as a plain uint8 array (not np.memmap, whose
    Python-level hooks would slow every operation on its views)."""
    with open(path, "r+b" if writable else "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
    return np.frombuffer(mapped, dtype=np.uint8)


def _layout(arrays):
    """{name: (offset in bytes, shape, dtype)} packing the named arrays ``arrays`` = {name: (shape,
    dtype)} one after another, each at a multiple of 64 bytes (a cache line); and the total size in
    bytes. JSON carries it to the worker as it is."""
    layout, offset = {}, 0
    for name, (shape, dtype) in arrays.items():
        shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        layout[name] = (offset, shape, dtype.str)
        offset += (int(np.prod(shape)) * dtype.itemsize + 63) // 64 * 64
    return layout, offset


def _views(buffer, layout):
    """{name: array} of the regions ``layout`` (see _layout) describes in a uint8 buffer."""
    views = {}
    for name, (offset, shape, dtype) in layout.items():
        dtype = np.dtype(dtype)
        views[name] = buffer[offset:offset + int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)
    return views


def replica_spec(model):
    """What a worker needs to build its copy of ``model`` (a VisionTransformer or a
    MaskedAutoencoder), as JSON: the ViT's config, and the autoencoder's around it."""
    if isinstance(model, MaskedAutoencoder):
        return dict(config=model.encoder.config, mae=model.config)
    return dict(config=model.config)


def build_replica(spec):
    """The worker's copy of a model from ``replica_spec`` (its weights are set from shared memory)."""
    model = VisionTransformer(**dict(spec["config"], backend="numpy"), init=False)
    return MaskedAutoencoder(model, **spec["mae"]) if "mae" in spec else model


class ProcessShards:
    """Shard 0 on this thread, shards 1.. in ``count - 1`` worker processes. A classifier's shards
    run ``forward`` then ``backward``; a MaskedAutoencoder's run whole steps (``loss_step``)."""

    def __init__(self, model, count):
        self.model, self.params = model, model.parameters()
        self.param_layout, total = _layout({f"p{i}": (p.shape, model.dtype) for i, p in enumerate(self.params)})
        path, self.param_buffer = _shared_file(total)
        self.param_views = list(_views(self.param_buffer, self.param_layout).values())
        self.workers = []
        self._finalizer = weakref.finalize(self, _stop_all, self.workers)
        try:
            for _ in range(count - 1):
                self.workers.append(_Worker())
            for worker in self.workers:
                worker.send(op="setup", model=replica_spec(model), params=path, layout=self.param_layout)
            for worker in self.workers:
                worker.reply()
        finally:
            os.unlink(path)
        self.rows = None

    def forward(self, x):
        model = self.model
        grads = self.params if grad_enabled() else []                # gradients only if a backward may follow
        self._start(x, dict(logits=((model.num_classes,), model.dtype), dlogits=((model.num_classes,), model.dtype),
                            dx=(x.shape[1:], model.dtype)), grads)
        for worker, rows in zip(self.workers, self.rows[1:]):
            worker.send(op="forward", training=model.training, seeds=draw_seeds(model) if model.training else [],
                        grad=grad_enabled(), errors=np.geterr())
        try:
            logits = run_on_threads([lambda: model.forward_stages(x[self.rows[0]])])
        finally:
            self._collect()
        return np.concatenate(logits + [worker.io["logits"].copy() for worker in self.workers])

    def backward(self, dlogits):
        model = self.model
        for worker, rows in zip(self.workers, self.rows[1:]):
            worker.io["dlogits"][...] = dlogits[rows]
            worker.send(op="backward", errors=np.geterr(), trainable=[p.requires_grad for p in self.params])
        try:
            dx = run_on_threads([lambda: model.backward_stages(dlogits[self.rows[0]])])
        finally:
            self._collect()
        self._sum_gradients()
        return np.concatenate(dx + [worker.io["dx"].copy() for worker in self.workers])

    def loss_step(self, x, rows, hidden):
        """A MaskedAutoencoder's forward and backward of images x with the kept ``rows`` and the
        ``hidden`` patches (numpyvit.layers.masking.random_keep): the batch's loss (a float), and every
        gradient summed into the model's parameters. Each shard's loss and gradients are weighted by
        its share of the batch, B_s / B (numpyvit.engine.mae_steps says why that is exact)."""
        model, B = self.model, x.shape[0]
        self._start(x, dict(rows=(rows.shape[1:], rows.dtype), hidden=(hidden.shape[1:], hidden.dtype)), self.params)
        shares = [(part.stop - part.start) / B for part in self.rows]
        for worker, part, share in zip(self.workers, self.rows[1:], shares[1:]):
            worker.io["rows"][...], worker.io["hidden"][...] = rows[part], hidden[part]
            worker.send(op="loss_step", share=share, training=model.training,
                        seeds=draw_seeds(model) if model.training else [], errors=np.geterr(),
                        trainable=[p.requires_grad for p in self.params])
        own = self.rows[0]
        try:
            (loss,) = run_on_threads([lambda: shard_loss_step(model, x[own], rows[own], hidden[own], shares[0])])
        finally:
            replies = self._collect()
        self._sum_gradients()
        return loss * shares[0] + sum(reply["loss"] * share for reply, share in zip(replies, shares[1:]))

    def _start(self, x, per_image, grads):
        """Before a command: the weights as they are now in shared memory, the batch cut into shards,
        each worker's file holding its shard's images, ``per_image`` = {name: (shape of one image's
        array, dtype)} and the gradients of ``grads``."""
        for param, view in zip(self.params, self.param_views):
            view[...] = param.data
        self.rows = split_rows(x.shape[0], len(self.workers) + 1)
        for worker, rows in zip(self.workers, self.rows[1:]):        # every file first: if one fails,
            n = rows.stop - rows.start                               # no worker is busy
            arrays = dict(x=(x.shape[1:], self.model.dtype), **per_image)
            arrays = {name: ((n, *shape), dtype) for name, (shape, dtype) in arrays.items()}
            worker.prepare(dict(arrays, **{f"g{i}": (p.shape, self.model.dtype) for i, p in enumerate(grads)}))
        for worker, rows in zip(self.workers, self.rows[1:]):
            worker.io["x"][...] = x[rows]

    def _sum_gradients(self):
        for worker in self.workers:                                  # shared memory: copied, not kept
            add_gradients(self.params, [worker.io[f"g{index}"] for index in range(len(self.params))])

    def _collect(self):
        """Every worker's reply (so that none is left unread for the next command), then the first
        error among them, if any; else the replies."""
        replies, errors = [], []
        for worker in self.workers:
            try:
                replies.append(worker.reply())
            except WorkerError as err:
                errors.append(err)
        if errors:
            raise errors[0]
        return replies

    def close(self):
        self._finalizer()


class _Worker:
    """One worker process, seen from the model's side."""

    def __init__(self):
        package_parent = str(Path(__file__).resolve().parents[2])       # the folder holding numpyvit/
        env = dict(os.environ, NUMPYVIT_THREADS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
                       [package_parent] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        self.process = subprocess.Popen([sys.executable, "-c", "from numpyvit.engine.workers import main; main()"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.arrays, self.io, self.buffer = None, None, None

    def send(self, **command):
        try:
            self.process.stdin.write(json.dumps(command).encode() + b"\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as err:
            raise self._died() from err

    def reply(self):
        line = self.process.stdout.readline()
        if not line:
            raise self._died()
        answer = json.loads(line)
        if "error" in answer:
            raise WorkerError(f"numpyvit worker process {self.process.pid} failed on its shard of the batch:\n"
                              + answer["error"])
        return answer

    def _died(self):
        code = self.process.poll()
        return WorkerError(f"numpyvit worker process {self.process.pid} stopped unexpectedly "
                           f"({'exit status ' + str(code) if code is not None else 'not answering'}); "
                           "set NUMPYVIT_PARALLEL=threads to train without worker processes")

    def prepare(self, arrays):
        """Map a shared-memory file holding ``arrays`` = {name: (shape, dtype)} (a new one if they
        changed)."""
        if arrays == self.arrays:
            return
        layout, total = _layout(arrays)
        path, self.buffer = _shared_file(total)
        try:
            self.send(op="io", path=path, layout=layout)
            self.reply()
        finally:
            os.unlink(path)
        self.arrays, self.io = arrays, _views(self.buffer, layout)


def _stop_all(workers):
    for worker in workers:
        try:
            worker.process.stdin.close()                             # the worker exits at end of input
            worker.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            worker.process.kill()


# ----- the worker's side -----------------------------------------------------------------------------
def serve(commands, replies):
    """Answer commands (JSON lines) until the input ends."""
    state = {}
    for line in commands:
        try:
            answer = _handle(json.loads(line), state)
        except Exception:  # noqa: BLE001 -- any failure goes back to the model's process
            answer = {"error": traceback.format_exc()}
        replies.write(json.dumps(answer).encode() + b"\n")
        replies.flush()


def _handle(command, state):
    with np.errstate(**command.get("errors", {})):                  # the model's process's settings
        return _run_command(command, state)


def _run_command(command, state):
    op = command["op"]
    if op == "setup":
        model = build_replica(command["model"])                      # weights: shared below
        for param, view in zip(model.parameters(), _views(_map(command["params"], writable=False),
                                                           command["layout"]).values()):
            if view.shape != param.shape:
                raise ValueError(f"parameter layout mismatch: {view.shape} vs {param.shape}")
            param.data = view
        state["model"] = model
        return {"ok": True}
    if op == "io":
        state["io"] = _views(_map(command["path"], writable=True), command["layout"])
        return {"ok": True}
    model, io = state["model"], state["io"]
    if op == "forward":
        model.train(command["training"])
        seed_layers(model, command["seeds"])
        with set_grad_enabled(command["grad"]):
            io["logits"][...] = model(io["x"])
    elif op == "backward":
        _gradients_into(io, model, command["trainable"])
        io["dx"][...] = model.backward(io["dlogits"])
    elif op == "loss_step":                                          # a MaskedAutoencoder's shard
        model.train(command["training"])
        seed_layers(model, command["seeds"])
        _gradients_into(io, model, command["trainable"])
        return {"ok": True, "loss": shard_loss_step(model, io["x"], io["rows"], io["hidden"], command["share"])}
    else:
        raise ValueError(f"unknown command {op!r}")
    return {"ok": True}


def _gradients_into(io, model, trainable):
    """The model's parameter gradients accumulate, from zero, into the shared file's g0, g1, ..."""
    for index, (param, flag) in enumerate(zip(model.parameters(), trainable)):
        param.grad, param.requires_grad = io[f"g{index}"], flag
        param.grad.fill(0)


def main():
    """A worker process's life: commands on stdin, replies on stdout, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)                     # Ctrl-C is the model's process's to handle
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())                # stray prints go to stderr
    serve(sys.stdin.buffer, protocol_out)
