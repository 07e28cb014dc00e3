"""Whether a forward pass keeps what its backward needs: on by default, off inside ``no_grad()``.

    with numpyvit.no_grad():          # inference: no layer caches anything, memory stays flat
        logits = model(x)

As in PyTorch, this is separate from ``model.eval()``, which switches dropout and stochastic depth
off but still allows ``backward`` (gradients in eval mode, e.g. to explain a prediction). The
setting belongs to the thread that sets it; numpyvit's own threads and worker processes run
under the setting of the thread that started their work.
"""
from .per_thread import PerThread

_enabled = PerThread(True)


def grad_enabled():
    return _enabled.get()


def set_grad_enabled(enabled):
    """A context manager: inside, the grad mode of this thread is ``enabled``."""
    return _enabled.set(bool(enabled))


def no_grad():
    """Inside (a context manager), forward passes cache nothing, so ``backward`` cannot follow."""
    return set_grad_enabled(False)
