"""How a model finds what runs it.

A VisionTransformer describes the computation: its layers, and their forward and backward on
whatever batch it is handed (``forward_stages``, ``backward_stages``). How that runs on a machine
(which cores, shards on threads or in worker processes, measured per machine) is the engine's
business (numpyvit.engine). The model never imports the engine: it asks this module once for its
runner, and the engine registers how to make one when numpyvit is imported. Without an engine a
model runs its stages right here, on the calling thread (``PlainRunner``).

A runner is bound to one model and has ``forward(x) -> (logits, token)``, ``backward(dlogits,
token) -> dx`` (the token says how the forward ran, so the backward runs the same way) and
``release()`` (stop whatever it started: threads' replicas, worker processes).
"""
_registered = dict(make=None)


def register(make):
    """Models made from now on get their runner from ``make(model)``."""
    _registered["make"] = make


def runner_for(model):
    """The runner for ``model``: the registered engine's, else a PlainRunner."""
    return (_registered["make"] or PlainRunner)(model)


class PlainRunner:
    """Runs the model's stages on the calling thread (the GPU, or no engine)."""

    def __init__(self, model):
        self.model = model

    def forward(self, x):
        return self.model.forward_stages(x), "plain"

    def backward(self, dlogits, token):
        return self.model.backward_stages(dlogits)

    def release(self, keep=None):
        """Nothing to stop."""
