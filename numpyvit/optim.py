"""AdamW, the warmup + cosine learning-rate schedule, and global-norm gradient clipping.
AdamW implements numpyvit.reference.adamw_step (docs/math.md, section 11).

AdamW (Loshchilov & Hutter 2019), with PyTorch's exact semantics, for step t = 1, 2, ...:
    p <- p * (1 - lr * wd)                         decoupled weight decay (skipped if wd = 0)
    m <- b1 * m + (1 - b1) * g                     first moment
    v <- b2 * v + (1 - b2) * g^2                   second moment
    p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
                                                   bias-corrected step, eps after the sqrt

Fused: each parameter group's parameters and gradients are moved into one contiguous
buffer (every ``param.data`` / ``param.grad`` becomes a view into it), so a step is a
handful of vectorized passes over all weights instead of a Python loop over ~100 tensors,
run on all CPU cores in cache-sized pieces (numpyvit.parallel.map_rows).
"""
import math

import numpy as np

from .backend import array_module
from .layers.base import Parameter
from .parallel import map_rows, single_threaded_blas


def check_setting(name, value, low=0.0, high=math.inf, high_open=False):
    """``value`` as a float if it is a finite real number in [low, high] (or [low, high)); ValueError
    naming the setting otherwise. Every optimizer, clipping and schedule setting enters here, so a
    NaN or infinite one never reaches the weights."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or not low <= value <= high or (high_open and value == high):
        bound = f"[{low:g}, {high:g}{')' if high_open else ']'}" if math.isfinite(high) else f">= {low:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


class ParamGroup:
    """Parameters sharing hyperparameters, flattened into buffers ``data`` and ``grad``."""

    def __init__(self, params, lr, weight_decay):
        self.params = params
        self.lr, self.weight_decay = check_setting("lr", lr), check_setting("weight_decay", weight_decay)
        dtypes = {p.data.dtype for p in params}
        if len(dtypes) != 1:
            raise ValueError(f"all parameters of a group must share one dtype, got {sorted(map(str, dtypes))}")
        xp = array_module(params[0].data)
        total = sum(int(p.data.size) for p in params)
        self.data = xp.empty(total, dtype=dtypes.pop())
        self.grad = xp.zeros_like(self.data)
        offset = 0
        for p in params:                                             # re-home as views
            n = int(p.data.size)
            self.data[offset:offset + n] = p.data.reshape(-1)
            if p.grad is not None:
                self.grad[offset:offset + n] = p.grad.reshape(-1)
            p.data = self.data[offset:offset + n].reshape(p.data.shape)
            p.grad = self.grad[offset:offset + n].reshape(p.data.shape)
            offset += n
        self.exp_avg = xp.zeros_like(self.data)
        self.exp_avg_sq = xp.zeros_like(self.data)


class AdamW:
    """``AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)``, then ``step()`` after
    each ``model.backward``.

    ``params`` is an iterable of Parameters (split into a decayed group and a group without
    weight decay by each Parameter's ``weight_decay`` flag: biases, norms, ``pos_embed`` and
    ``cls_token`` are not decayed) or of dicts ``{"params": [...], "weight_decay": wd, "lr": lr}``.
    Frozen Parameters (``requires_grad = False``) are left out.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        check_setting("lr", lr)
        check_setting("weight_decay", weight_decay)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be two numbers (beta1, beta2), got {betas!r}")
        self.betas = tuple(check_setting(f"beta{i}", b, 0.0, 1.0, high_open=True) for i, b in enumerate(betas, 1))
        self.eps, self.step_count = check_setting("eps", eps), 0
        params = list(params)
        if all(isinstance(p, Parameter) for p in params):
            params = [p for p in params if p.requires_grad]
            specs = [{"params": [p for p in params if p.weight_decay]},
                     {"params": [p for p in params if not p.weight_decay], "weight_decay": 0.0}]
        else:
            specs = [dict(spec, params=[p for p in spec["params"] if p.requires_grad]) for spec in params]
        if not any(spec["params"] for spec in specs):
            raise ValueError("AdamW got no parameters to optimize (none given, or all frozen)")
        self.groups = [ParamGroup(spec["params"], spec.get("lr", lr), spec.get("weight_decay", weight_decay))
                       for spec in specs if spec["params"]]

    @property
    def lr(self):
        return self.groups[0].lr

    @lr.setter
    def lr(self, value):
        value = check_setting("lr", value)
        for group in self.groups:
            group.lr = value

    def zero_grad(self):
        for group in self.groups:
            group.grad.fill(0)

    def step(self):
        self.step_count += 1
        b1, b2 = self.betas
        bias1 = 1 - b1 ** self.step_count
        bias2_sqrt = math.sqrt(1 - b2 ** self.step_count)
        for g in self.groups:
            scalar = g.data.dtype.type

            def update(r, g=g):                                      # elementwise: any piece r of the buffers
                p, m, v, grad = g.data[r], g.exp_avg[r], g.exp_avg_sq[r], g.grad[r]
                if g.weight_decay:
                    p *= scalar(1 - g.lr * g.weight_decay)
                m *= scalar(b1)
                m += scalar(1 - b1) * grad
                v *= scalar(b2)
                v += scalar(1 - b2) * grad * grad
                denom = array_module(v).sqrt(v)
                denom *= scalar(1 / bias2_sqrt)
                denom += scalar(self.eps)
                delta = m / denom
                delta *= scalar(g.lr / bias1)
                p -= delta

            map_rows(update, g.data.size, g.data.itemsize, array_module(g.data))

    # ----- resume ----------------------------------------------------------------------------
    def state_dict(self):
        """Everything needed to continue exactly: moments per group, step, learning rates."""
        state = {"step": np.asarray(self.step_count)}
        for i, g in enumerate(self.groups):
            state[f"groups.{i}.exp_avg"] = g.exp_avg
            state[f"groups.{i}.exp_avg_sq"] = g.exp_avg_sq
            state[f"groups.{i}.lr"] = np.asarray(g.lr)
            state[f"groups.{i}.weight_decay"] = np.asarray(g.weight_decay)
        return state

    def load_state_dict(self, state):
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError("optimizer state does not match this optimizer (different parameter groups); "
                             f"missing {sorted(expected - set(state))}, unexpected {sorted(set(state) - expected)}")
        for i, g in enumerate(self.groups):
            for name in ("exp_avg", "exp_avg_sq"):
                value = state[f"groups.{i}.{name}"]
                if tuple(value.shape) != tuple(g.data.shape):
                    raise ValueError(f"optimizer state groups.{i}.{name} has shape {tuple(value.shape)}, "
                                     f"expected {tuple(g.data.shape)} (a different model?)")
                getattr(g, name)[...] = array_module(g.data).asarray(value)
            g.lr = check_setting(f"optimizer state groups.{i}.lr", float(state[f"groups.{i}.lr"]))
            g.weight_decay = check_setting(f"optimizer state groups.{i}.weight_decay",
                                           float(state[f"groups.{i}.weight_decay"]))
        self.step_count = int(state["step"])


@single_threaded_blas()
def clip_grad_norm(optimizer, max_norm):
    """Scale all gradients so their global L2 norm is at most ``max_norm``; returns the norm
    before clipping (a 0-d array on the device: no host sync unless you ``float()`` it).
        norm = sqrt(sum over all gradients of g^2);  g <- g * min(1, max_norm / (norm + 1e-6))
    """
    max_norm = check_setting("max_norm", max_norm)
    if max_norm == 0:
        raise ValueError("max_norm must be above 0 (0 would zero every gradient; pass no clipping instead)")
    grads = [g.grad for g in optimizer.groups]
    xp = array_module(grads[0])
    c = grads[0].dtype.type                                          # NumPy 1.x would widen Python floats
    norm = xp.sqrt(sum((xp.dot(g, g) for g in grads), c(0)))
    coef = xp.minimum(c(max_norm) / (norm + c(1e-6)), c(1.0))
    for g in grads:
        g *= coef
    return norm


def warmup_cosine(step, total_steps, base_lr, warmup_steps=0, min_lr=0.0):
    """Learning rate at ``step`` (0-based): linear warmup to ``base_lr`` over ``warmup_steps``,
    then cosine decay to ``min_lr`` at ``total_steps``."""
    check_setting("base_lr", base_lr)
    check_setting("min_lr", min_lr)
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))
