"""Data parallelism inside one training step: each core runs the whole model on a shard of the batch.

Splitting every operation across threads (``numpyvit.parallel.map_rows`` / ``matmul``) hands
work to the other cores hundreds of times a step, and each hand-off costs about as much as a
small operation. Every image's forward and backward are independent of the others', so the
batch can instead be cut into one shard per core, each core running all layers on its shard
with single-threaded BLAS:

    logits = concat_s(model_s(x_s))                      x_s: the s-th slice of the batch
    dx     = concat_s(model_s.backward(dlogits_s))
    grad   = sum_s grad_s

The sum is exact, not an approximation: the loss is computed on the concatenated logits, so
dlogits already carries the 1/B of the batch mean, and each parameter's gradient is a sum
over images, which splits into a sum over shards.

model_0 is always the model itself. The other shards run either on threads of this process
(``ThreadShards``: replicas whose parameters read the model's arrays) or in worker processes
(``numpyvit.engine.workers.ProcessShards``: no shared interpreter lock, so small models scale too).
Both run a classifier's ``forward`` and ``backward`` (numpyvit.engine.runner) and a masked
autoencoder's whole ``loss_step`` (numpyvit.engine.mae_steps).
A shard's dropout generators are re-seeded from the model's generators at every training
forward, so a seeded run is reproducible for a given number of shards (the masks differ
between shard counts, as they would between batch orders).
"""
import copy

import numpy as np

from ..layers.base import Module, Parameter
from ..parallel import run_on_threads


class SharedParameter(Parameter):
    """A Parameter whose ``data`` is always ``source.data`` (read at call time, so it follows the
    optimizer re-homing the array), with a gradient of its own."""

    __slots__ = ("source",)

    def __init__(self, source):
        self.source, self.grad = source, None

    @property
    def data(self):
        return self.source.data

    @property
    def weight_decay(self):
        return self.source.weight_decay

    @property
    def requires_grad(self):
        return self.source.requires_grad


def replicate(module, memo=None):
    """A copy of ``module``'s layer tree sharing its parameters (see SharedParameter), with empty
    caches. Attributes that are neither Modules nor Parameters are shared as they are (sizes,
    fixed tables, the array module), except those a class lists in ``_per_model`` (left None)."""
    memo = {} if memo is None else memo
    twin = copy.copy(module)
    for name, value in vars(module).items():
        if isinstance(value, Parameter):
            setattr(twin, name, memo.setdefault(id(value), SharedParameter(value)))
        elif isinstance(value, Module):
            setattr(twin, name, replicate(value, memo))
        elif isinstance(value, (list, tuple)) and any(isinstance(item, Module) for item in value):
            setattr(twin, name, type(value)(replicate(item, memo) if isinstance(item, Module) else item
                                            for item in value))
    twin._cache = None
    for name in getattr(module, "_per_model", ()):
        setattr(twin, name, None)
    return twin


def split_rows(n, shards):
    """``shards`` contiguous slices covering range(n), sizes differing by at most one: how threads,
    worker processes and MPI ranks all cut a batch (or the test set)."""
    bounds = [n * i // shards for i in range(shards + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(shards)]


def add_gradients(params, grads, keep=False):
    """param.grad += grad for every trainable parameter (``grads`` in ``params``' order, None where a
    shard has none): the sum of the shards' gradients, which threads and worker processes share
    (MPI ranks sum theirs with an all-reduce: numpyvit.distributed). ``keep``: the arrays may be
    kept as the first gradient (else a first gradient is copied, e.g. out of shared memory)."""
    for param, grad in zip(params, grads):
        if grad is None or not param.requires_grad:
            continue
        if param.grad is None:
            param.grad = grad if keep else grad.copy()
        else:
            param.grad += grad


def shard_loss_step(model, x, rows, hidden, share):
    """One shard of a MaskedAutoencoder's step: its mean loss over its hidden patches (a float),
    and its gradients, those of ``share`` x that loss, added into its parameters' ``grad``."""
    loss = float(model(x, rows, hidden))
    model.backward(share)
    return loss


def random_layers(model):
    """The layers of ``model`` that draw random numbers in training (dropout with p > 0)."""
    return [m for m in model.modules() if hasattr(m, "rng") and getattr(m, "p", 0.0) > 0.0]


def draw_seeds(model):
    """One seed per random layer, drawn from that layer's generator in ``model``: a shard seeds
    its own copy of the layer with it."""
    return [int(layer.rng.integers(2**63)) for layer in random_layers(model)]


def seed_layers(model, seeds):
    for layer, seed in zip(random_layers(model), seeds):
        layer.rng = np.random.default_rng(seed)


class ThreadShards:
    """Shards on threads of this process: shard 0 is the model, the others are replicas."""

    def __init__(self, model, count):
        self.models = [model] + [replicate(model) for _ in range(count - 1)]
        self.params = [m.parameters() for m in self.models]         # the same objects every step
        self.rows = None

    def forward(self, x):
        """Logits of the whole batch x."""
        self.rows = split_rows(x.shape[0], len(self.models))
        self.follow_model()
        outputs = run_on_threads([(lambda m=m, r=r: m.forward_stages(x[r])) for m, r in zip(self.models, self.rows)])
        return np.concatenate(outputs)

    def backward(self, dlogits):
        """dx of the whole batch; every shard's parameter gradients end up summed in the model's."""
        dxs = run_on_threads([(lambda m=m, r=r: m.backward_stages(dlogits[r]))
                              for m, r in zip(self.models, self.rows)])
        self.sum_gradients()
        return np.concatenate(dxs)

    def loss_step(self, x, rows, hidden):
        """A MaskedAutoencoder's forward and backward (see ProcessShards.loss_step): the batch's loss,
        every shard's gradients summed into the model's, each weighted by the shard's share B_s / B."""
        B = x.shape[0]
        self.follow_model()
        parts = split_rows(B, len(self.models))
        shares = [(part.stop - part.start) / B for part in parts]
        losses = run_on_threads([(lambda m=m, r=r, s=s: shard_loss_step(m, x[r], rows[r], hidden[r], s))
                                 for m, r, s in zip(self.models, parts, shares)])
        self.sum_gradients()
        return sum(loss * share for loss, share in zip(losses, shares))

    def follow_model(self):
        """The replicas in the model's mode, their dropout seeded from the model's generators."""
        main = self.models[0]
        for replica in self.models[1:]:
            replica.train(main.training)
            if main.training:
                seed_layers(replica, draw_seeds(main))

    def sum_gradients(self):
        """The replicas' parameter gradients added into the model's, and cleared."""
        for shared in self.params[1:]:
            add_gradients(self.params[0], [p.grad for p in shared], keep=True)
            for p in shared:
                p.grad = None

    def close(self):
        for replica in self.models[1:]:
            for module in replica.modules():
                module._cache = None                                 # drops any pending activations
