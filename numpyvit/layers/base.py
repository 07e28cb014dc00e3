"""The layer protocol: Parameter and Module.

A layer is a Module with ``forward(x) -> y`` and ``backward(dy) -> dx``:
- ``forward`` caches exactly what ``backward`` needs, except under ``numpyvit.no_grad()``
  (inference keeps no activations alive); ``module.eval()`` only switches dropout off, so
  gradients can be taken in eval mode too;
- ``backward`` takes that cache (freeing it), returns the gradient of the input and
  *adds* the parameter gradients into ``param.grad`` (zero them with ``zero_grad()``);
- neither ever writes into its input, its upstream gradient or a cached array.

Parameters are named by attribute path, as in PyTorch/timm: a Parameter stored as
``self.weight`` in the child ``self.proj`` of ``self.attn`` is ``attn.proj.weight``.
"""
import contextlib

import numpy as np

from ..backend import array_module, to_numpy
from ..grad_mode import grad_enabled, no_grad
from ..per_thread import PerThread


class BackwardBeforeForwardError(RuntimeError, ValueError):
    """``backward`` was called with nothing cached by a training-mode ``forward``."""


_initializing = PerThread(True)


def initialization(enabled):
    """With ``enabled`` False, layers built inside get uninitialized parameters (``empty``
    arrays, no random draws): for weights that are loaded right after. Per thread."""
    return _initializing.set(enabled)


def initializing():
    return _initializing.get()


def new_parameter(host_array, xp, dtype, weight_decay=True):
    """A Parameter holding ``host_array`` (initialized on the host with NumPy, so a seed gives
    the same weights on every backend) as an ``xp`` array of ``dtype``."""
    if not initializing():
        return Parameter(xp.empty(np.shape(host_array), dtype=dtype), weight_decay)
    return Parameter(xp.asarray(np.asarray(host_array), dtype=dtype), weight_decay)


def trunc_normal(rng, shape, std=0.02, dtype=np.float32):
    """Normal(0, std) samples of ``dtype``, redrawn until within two standard deviations."""
    if not initializing():
        return np.empty(shape, dtype=dtype)
    dtype = np.dtype(dtype) if np.dtype(dtype) in (np.float32, np.float64) else np.float64
    values = rng.standard_normal(shape, dtype=dtype)
    outside = np.abs(values) > 2
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()), dtype=dtype)
        outside = np.abs(values) > 2
    values *= std
    return values


class Parameter:
    """A trainable array ``data`` and its gradient ``grad`` (same shape, ``None`` until the
    first backward).

    ``weight_decay`` says whether AdamW should decay it by default (False for biases, norm
    weights, position embeddings and the class token). ``requires_grad = False`` freezes it:
    layers skip its gradient (and the work for it), and AdamW leaves it out. Layers always read
    ``param.data`` at call time and never keep the array itself, so an optimizer may re-home
    ``data`` and ``grad`` as views into one contiguous buffer (see ``numpyvit.optim``).
    """

    __slots__ = ("data", "grad", "weight_decay", "requires_grad")

    def __init__(self, data, weight_decay=True):
        self.data = data
        self.grad = None
        self.weight_decay = weight_decay
        self.requires_grad = True

    @property
    def shape(self):
        return self.data.shape

    def accumulate(self, value):
        """grad += value (the first gradient is stored without a copy); nothing when frozen."""
        if not self.requires_grad:
            return
        if self.grad is None:
            self.grad = value
        else:
            self.grad += value

    def __repr__(self):
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"


class Module:
    """Base class: parameter discovery, train/eval mode, caching, state_dict."""

    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ----- structure -------------------------------------------------------------------
    def named_children(self):
        """(name, module) for each sub-module, in the order they were assigned."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def modules(self):
        """This module and every module below it, depth first."""
        yield self
        for _, child in self.named_children():
            yield from child.modules()

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter), each Parameter once (a shared one under its first name)."""
        seen = set()
        for name, param in self._named_parameters(prefix):
            if id(param) not in seen:
                seen.add(id(param))
                yield name, param

    def _named_parameters(self, prefix):
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, child in self.named_children():
            yield from child._named_parameters(f"{prefix}{name}.")

    def parameters(self):
        return [param for _, param in self.named_parameters()]

    def num_parameters(self):
        return sum(int(p.data.size) for p in self.parameters())

    # ----- modes and gradients ------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (dropout on) or, with False, eval mode (dropout off)."""
        for module in self.modules():
            module.training = mode
        return self

    def eval(self):
        return self.train(False)

    @contextlib.contextmanager
    def inference(self):
        """Inside: eval mode and numpyvit.no_grad() (no dropout, nothing cached); the previous
        mode comes back afterwards."""
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                yield self
        finally:
            self.train(was_training)

    def zero_grad(self):
        for param in self.parameters():
            if param.grad is not None:
                param.grad.fill(0)

    def seed(self, seed):
        """Give every random layer below this one its own generator derived from ``seed``.

        The same seed gives the same dropout masks, so a forward pass can be repeated
        exactly (the gradient checker relies on this).
        """
        stochastic = [m for m in self.modules() if hasattr(m, "rng")]
        for index, module in enumerate(stochastic):
            layer_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
            module.rng = module.xp.random.default_rng(layer_seed)
        return self

    # ----- cache ------------------------------------------------------------------------------
    _cache = None

    def _save_for_backward(self, *values):
        """Keep what backward needs; nothing is kept under numpyvit.no_grad()."""
        if grad_enabled():
            self._cache = values

    def _saved(self):
        """Take (and release) what forward kept."""
        cache = self._cache
        if cache is None:
            raise BackwardBeforeForwardError(
                f"{type(self).__name__}.backward() called with nothing cached: run forward() first, outside "
                "numpyvit.no_grad(), once per backward()"
            )
        self._cache = None
        return cache

    def has_cache(self):
        """True while some module below holds forward activations."""
        return any(m._cache is not None for m in self.modules())

    # ----- weights ------------------------------------------------------------------------------
    def state_dict(self):
        """{name: array} with timm's names and shapes (arrays stay on the model's device)."""
        return {name: param.data for name, param in self.named_parameters()}

    def load_state_dict(self, state_dict):
        """Copy arrays (NumPy or CuPy, from any device) into the parameters, in place; refuses
        missing, unexpected, mis-shaped or complex (or other non-real) entries, naming each one."""
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(state_dict), key=_natural)
        unexpected = sorted(set(state_dict) - set(params), key=_natural)
        mismatched = [
            f"{name}: checkpoint {tuple(state_dict[name].shape)} vs model {tuple(params[name].shape)}"
            for name in params
            if name in state_dict and tuple(state_dict[name].shape) != tuple(params[name].shape)
        ]
        not_real = [f"{name} ({state_dict[name].dtype})" for name in params
                    if name in state_dict and state_dict[name].dtype.kind not in "fiu"]
        problems = []
        if not_real:
            problems.append("not real numbers (copying would drop a part silently): " + _listed(not_real))
        if missing:
            problems.append("missing keys: " + _listed(missing))
        if unexpected:
            problems.append("unexpected keys: " + _listed(unexpected))
        if mismatched:
            problems.append("shape mismatch: " + _listed(mismatched, separator="; "))
        if problems:
            raise ValueError("load_state_dict refused the weights (" + " | ".join(problems) + ")")
        for name, param in params.items():
            xp = array_module(param.data)                            # arrays move to the model's device
            param.data[...] = to_numpy(state_dict[name]) if xp is np else xp.asarray(state_dict[name])


def _natural(name):
    """Sort key putting blocks.2 before blocks.10."""
    return [int(part) if part.isdigit() else part for part in name.split(".")]


def _listed(names, shown=10, separator=", "):
    more = f"{separator}... ({len(names) - shown} more)" if len(names) > shown else ""
    return separator.join(names[:shown]) + more
