"""One training step of a ViT on one image, recorded op by op from the textbook.

    step = record_step(model.state_dict(), model.config, image, label)   # image (C, H, W)
    step.ops          # the ops in forward order, each with its output, the gradient arriving
                      # at that output, its parameters' gradients and its own gradient check
    step.loss, step.probs, step.grads, step.updates   # the loss, softmax, every gradient, AdamW

Nothing here recomputes the model. ``record_step`` runs ``reference.vit_forward``, the
cross-entropy, ``reference.vit_backward`` and one ``reference.adamw_step`` (on copies of the
weights) in float64, while ``watching`` listens to every forward/backward pair of
numpyvit.reference: each forward call's arguments and output, and the gradient its backward
receives (the first argument, ``dout``) and returns. Backward calls are matched to their forward
calls in reverse order, as backpropagation runs them. The explorer page (explorer_page.py) shows
these numbers, so the page, docs/math.md and the tests that pin the fast layers all agree.

Each op's gradient check on this image: with the gradient g arriving at its output, the scalar
L(a) = <g, f(a)> has the gradient the op's backward returns for each input array a. Along a
random direction v (unit entries on average), the fourth-order central difference
    (8 (L(a + h v) - L(a - h v)) - (L(a + 2h v) - L(a - 2h v))) / (12 h),   h = 1e-4
must equal <backward's da, v>; the relative error |numeric - analytic| / max(|numeric|, |analytic|)
is the largest over CHECK_DIRECTIONS directions (a directional check: a few forward calls per
input instead of one per element, as PyTorch's fast gradcheck does).

Shapes: the batch is one image (B = 1); T tokens, D width, h heads, Dh head width, F MLP width.
"""
import contextlib
import functools
from dataclasses import dataclass, field

import numpy as np

from .. import reference
from ..backend import to_numpy

CHECK_DIRECTIONS = 3
CHECK_STEP = 1e-4
STENCIL = ((1, 8 / 12), (-1, -8 / 12), (2, -1 / 12), (-2, 1 / 12))   # (offset in h, weight)
# the pairs listened to: name_forward(...) -> (out, cache), name_backward(dout, cache) -> gradients
PAIRS = ("patch_embed", "linear", "position_table", "tokens", "layernorm", "attention", "scores",
         "softmax", "weighted_values", "activation", "mlp", "block", "pool", "cross_entropy")


@dataclass
class Call:
    """One forward call of a reference pair, and later what its backward received and returned."""
    pair: str
    args: tuple
    children: list = field(default_factory=list)       # the pairs it called, in order
    out: object = None
    cache: object = None
    dout: object = None                                  # the gradient arriving at ``out``
    grads: tuple = ()                                    # what the backward returned


@contextlib.contextmanager
def watching():
    """Within the block, every pair of numpyvit.reference records its calls; yields the root
    Call, whose ``children`` are the top-level calls in order. The functions are restored after."""
    root, stack, open_calls, originals = Call("step", ()), [], {name: [] for name in PAIRS}, {}
    stack.append(root)

    def watch_forward(name, forward):
        @functools.wraps(forward)
        def watched(*args):
            call = Call(name, args)
            stack[-1].children.append(call)
            stack.append(call)
            try:
                call.out, call.cache = forward(*args)
            finally:
                stack.pop()
            open_calls[name].append(call)
            return call.out, call.cache
        return watched

    def watch_backward(name, backward):
        @functools.wraps(backward)
        def watched(dout, cache, *rest):
            call = open_calls[name].pop()                # backpropagation: last forward, first back
            if call.cache is not cache:
                raise RuntimeError(f"{name}_backward got a cache its last forward did not make")
            call.dout = dout
            result = backward(dout, cache, *rest)
            call.grads = result if isinstance(result, tuple) else (result,)
            return result
        return watched

    for name in PAIRS:
        for half, watch in (("forward", watch_forward), ("backward", watch_backward)):
            attribute = f"{name}_{half}"
            originals[attribute] = getattr(reference, attribute)
            setattr(reference, attribute, watch(name, originals[attribute]))
    try:
        yield root
    finally:
        for attribute, function in originals.items():
            setattr(reference, attribute, function)


# ----- the gradient check of one op -------------------------------------------------------------
def directional_check(forward, args, grads, dout, rng):
    """{argument index: relative error} for each array argument whose gradient the backward
    returned, ``forward(*args) -> (out, cache)``; see the module docstring."""
    errors = {}
    for i, (arg, grad) in enumerate(zip(args, grads)):
        if not isinstance(arg, np.ndarray) or not isinstance(grad, np.ndarray) or arg.shape != grad.shape:
            continue
        worst = 0.0
        for _ in range(CHECK_DIRECTIONS):
            v = rng.standard_normal(arg.shape)

            def objective(offset):
                moved = list(args)
                moved[i] = arg + offset * CHECK_STEP * v
                return float(np.sum(dout * forward(*moved)[0]))

            numeric = sum(weight * objective(offset) for offset, weight in STENCIL) / CHECK_STEP
            analytic = float(np.sum(grad * v))
            scale = max(abs(numeric), abs(analytic))
            worst = max(worst, abs(numeric - analytic) / scale if scale > 0 else 0.0)
        errors[i] = worst
    return errors


def _add_forward(x, branch):
    """The residual: x + branch (B, T, D); the reference writes it inline in block_forward."""
    return x + branch, None


def _add_backward(dy, cache):
    """Both summands get the sum's gradient (docs/math.md, section 0)."""
    return dy, dy


# ----- the ops of the page ----------------------------------------------------------------------
@dataclass
class Op:
    """One op of the step as the page shows it."""
    key: str                    # unique, e.g. "blocks.0.scores"
    kind: str                   # what it is: names its formulas and its layout (explorer_page.py)
    group: str                  # "embedding", "block 0", ..., "head"
    forward: object             # f(*args) -> (out, cache), for its gradient check
    args: tuple                 # f's arguments in this step
    grads: tuple                # its backward's gradients of those arguments
    out: np.ndarray             # the forward output, without the batch axis
    dout: np.ndarray            # the gradient arriving at it, the same shape
    param_names: tuple = ()     # per argument: the model parameter's name, or None
    check: dict = None          # {argument index: relative error}, once gradient_check ran

    def gradient_check(self, seed=0):
        """{argument index: relative error} of this op's backward on this step (see the module
        docstring), computed on first use: a page that details only some ops checks only those."""
        if self.check is None:
            dout = self.dout[None] if self.dout.ndim else self.dout          # the batch axis back
            self.check = directional_check(self.forward, self.args, self.grads, dout,
                                           np.random.default_rng(seed))
        return self.check

    def parameters(self):
        """{name: (value, gradient)} of the model parameters among the arguments."""
        return {name: (arg, grad) for name, arg, grad in zip(self.param_names, self.args, self.grads)
                if name is not None and isinstance(grad, np.ndarray)}


def _op(key, kind, group, call, forward=None, param_names=()):
    """An Op from a recorded call (the batch axis of output and gradient dropped)."""
    forward = forward or getattr(reference, f"{call.pair}_forward")
    return Op(key, kind, group, forward, call.args, call.grads, call.out[0], call.dout[0], param_names)


def _linear_names(prefix):
    return (None, prefix + ".weight", prefix + ".bias")


def _block_ops(block, i, config):
    """The 12 ops of block i: LN, qkv, scores, softmax, p v, projection, residual, LN, fc1,
    activation, fc2, residual."""
    prefix, group = f"blocks.{i}.", f"block {i}"
    ln1, attention, ln2, mlp = block.children
    qkv, scores, softmax, values, proj = attention.children
    fc1, activation, fc2 = mlp.children
    residual1 = Call("residual", (block.args[0], attention.out), out=ln2.args[0], dout=attention.dout,
                     grads=(attention.dout, attention.dout))
    residual2 = Call("residual", (ln2.args[0], mlp.out), out=block.out, dout=block.dout,
                     grads=(block.dout, block.dout))
    return [
        _op(prefix + "norm1", "layernorm", group, ln1, param_names=_linear_names(prefix + "norm1")),
        _op(prefix + "attn.qkv", "qkv", group, qkv, param_names=_linear_names(prefix + "attn.qkv")),
        _op(prefix + "attn.scores", "scores", group, scores),
        _op(prefix + "attn.softmax", "softmax", group, softmax),
        _op(prefix + "attn.weighted_values", "weighted_values", group, values),
        _op(prefix + "attn.proj", "proj", group, proj, param_names=_linear_names(prefix + "attn.proj")),
        _op(prefix + "residual1", "residual1", group, residual1, forward=_add_forward),
        _op(prefix + "norm2", "layernorm", group, ln2, param_names=_linear_names(prefix + "norm2")),
        _op(prefix + "mlp.fc1", "fc1", group, fc1, param_names=_linear_names(prefix + "mlp.fc1")),
        _op(prefix + "mlp.act", config["act"], group, activation),
        _op(prefix + "mlp.fc2", "fc2", group, fc2, param_names=_linear_names(prefix + "mlp.fc2")),
        _op(prefix + "residual2", "residual2", group, residual2, forward=_add_forward),
    ]


def page_ops(root, x, dx, config):
    """The page's ops, in forward order, from the calls ``watching`` recorded during one
    vit_forward, cross_entropy_forward/backward and vit_backward(input_grad=True)."""
    calls = list(root.children)
    patch_embed, _, tokens = calls[:3]                     # (the table's gradient is the tokens')
    blocks = [c for c in calls if c.pair == "block"]
    after = calls[3 + len(blocks):]                        # [norm], pool, [fc_norm], head, loss
    patch_linear = patch_embed.children[0]                 # the Linear on the patches
    patch_size, _ = reference.patch_grid(config)                    # (Ph, Pw)
    image = Call("image", (x,), out=x, dout=dx)
    patches = Call("patches", (x,), out=patch_linear.args[0], dout=patch_linear.grads[0],
                   grads=(dx,))
    ops = [_op("image", "image", "embedding", image, forward=lambda a: (a, None)),
           _op("patches", "patches", "embedding", patches,
               forward=lambda a: (reference.patchify(a, patch_size), None)),
           _op("patch_embed", "patch_embed", "embedding", patch_linear,
               param_names=(None, "patch_embed.proj.weight", "patch_embed.proj.bias")),
           _op("tokens", "tokens", "embedding", tokens,
               param_names=(None, "cls_token", "pos_embed" if config["pos_embed"] == "learned" else None))]
    for i, block in enumerate(blocks):
        ops += _block_ops(block, i, config)
    for call in after:
        if call.pair == "layernorm":
            name = "norm" if config["global_pool"] == "token" else "fc_norm"
            ops.append(_op(name, "final_norm", "head", call, param_names=_linear_names(name)))
        elif call.pair == "pool":
            ops.append(_op("pool", "pool_" + config["global_pool"], "head", call))
        elif call.pair == "linear":
            ops.append(_op("head", "head", "head", call, param_names=_linear_names("head")))
        else:
            loss = Op("loss", "loss", "head", reference.cross_entropy_forward, call.args, call.grads,
                      np.asarray(call.out), np.asarray(call.dout))
            ops.append(loss)
    return ops


# ----- the whole step ---------------------------------------------------------------------------
@dataclass
class Step:
    """One recorded training step (float64, one image)."""
    config: dict
    image: np.ndarray           # (C, H, W), as the model sees it (normalized)
    label: int                  # the target
    loss: float
    probs: np.ndarray           # (K,) the softmax of the logits
    ops: list                   # Op, in forward order
    params: dict                # {name: value} before the step
    grads: dict                 # {name: gradient}, from vit_backward
    updates: dict               # {name: new value - old value}, one reference.adamw_step
    settings: dict              # lr, weight_decay, label_smoothing, clip_norm; grad_norm (before clipping)


def record_step(params, config, image, label, lr=1e-3, weight_decay=0.05, label_smoothing=0.0,
                clip_norm=None):
    """The Step of ``params`` ({timm name: array}, NumPy or CuPy) and ``config`` (``model.config``)
    on ``image`` (C, H, W) with target class ``label``: forward, the label-smoothed loss,
    backward, and AdamW's first step (zero moments) with ``lr`` and
    ``weight_decay`` after the gradients are clipped to a global norm of ``clip_norm`` (if given)
    as training does (numpyvit.optim.clip_grad_norm)."""
    params = {name: np.array(to_numpy(value), dtype=np.float64) for name, value in params.items()}
    x = np.asarray(image, dtype=np.float64)[None]                   # (1, C, H, W)
    with watching() as root:
        logits, cache = reference.vit_forward(params, x, config)
        loss, loss_cache = reference.cross_entropy_forward(logits, np.array([label]), label_smoothing)
        dlogits = reference.cross_entropy_backward(1.0, loss_cache)
        grads, dx = reference.vit_backward(dlogits, cache, input_grad=True)
    ops = page_ops(root, x, dx, config)
    grad_norm = float(np.sqrt(sum(np.sum(g * g) for g in grads.values())))
    coef = 1.0 if clip_norm is None else min(1.0, clip_norm / (grad_norm + 1e-6))
    trained = {name: params[name].copy() for name in grads}
    reference.adamw_step(trained, {name: g * coef for name, g in grads.items()}, {}, lr=lr,
                         weight_decay=weight_decay)
    updates = {name: trained[name] - params[name] for name in grads}
    settings = dict(lr=lr, weight_decay=weight_decay, label_smoothing=label_smoothing,
                    clip_norm=clip_norm, grad_norm=grad_norm)
    return Step(dict(config), x[0], int(label), float(loss), loss_cache[0][0], ops,
                {name: params[name] for name in grads}, grads, updates, settings)
