"""Check a layer's (or a whole model's) hand-written backward against finite differences.

For a module f with input x and parameters theta, pick a random upstream gradient g (the
shape of f's output) and the scalar L = sum(g * f(x)). Then
    analytic:   dL/dx = f.backward(g),   dL/dtheta = theta.grad
    numeric:    central differences for each element u_i, by default the fourth-order stencil
                dL/du_i ~ (8 (L(u_i + h) - L(u_i - h)) - (L(u_i + 2h) - L(u_i - 2h))) / (12 h)
                whose error is O(h^4), so a fairly large h = 1e-4 keeps both truncation and
                float64 rounding (~1e-16 |L| / h) tiny; ``order=2`` gives the classic
                (L(u_i + h) - L(u_i - h)) / (2h), error O(h^2), best near h = 1e-6
    error:      ||analytic - numeric|| / max(||analytic||, ||numeric||)   per tensor
Random layers (dropout, drop path) are re-seeded before every evaluation, so each forward
uses the same masks.

    >>> report = numpyvit.gradcheck(layer, x)        # layer and x in float64
    >>> print(report)                                # one line per tensor, PASS/FAIL
    >>> assert report.passed
"""
import math
from dataclasses import dataclass, field

import numpy as np

from .backend import array_module, to_numpy


@dataclass
class TensorCheck:
    name: str
    shape: tuple
    checked: int                      # how many elements were perturbed
    rel_error: float


@dataclass
class GradcheckReport:
    tol: float
    tensors: list = field(default_factory=list)

    @property
    def passed(self):
        return all(t.rel_error <= self.tol for t in self.tensors)

    @property
    def max_error(self):
        return max(t.rel_error for t in self.tensors)

    def __str__(self):
        lines = [f"{'tensor':<32} {'shape':<18} {'checked':>8} {'rel. error':>11}"]
        for t in self.tensors:
            verdict = "ok" if t.rel_error <= self.tol else "FAIL"
            lines.append(f"{t.name:<32} {str(t.shape):<18} {t.checked:>8} {t.rel_error:>11.2e}  {verdict}")
        lines.append(f"{'PASS' if self.passed else 'FAIL'}: max relative error {self.max_error:.2e} "
                     f"(tolerance {self.tol:.0e})")
        return "\n".join(lines)


STENCILS = {  # order: [(offset in units of h, weight)], derivative = sum(weight * L(u + offset h)) / h
    2: [(1, 1 / 2), (-1, -1 / 2)],
    4: [(1, 8 / 12), (-1, -8 / 12), (2, -1 / 12), (-2, 1 / 12)],
}


def gradcheck(module, x, *args, eps=None, order=4, tol=1e-6, seed=0, max_elements=None, check_input=True):
    """Compare ``module.backward`` with central differences; returns a GradcheckReport.

    ``module`` and ``x`` must be float64. Extra ``args`` are passed to forward unchanged
    (e.g. the labels of a loss). ``eps`` is the step h (default 1e-4 for order 4, 1e-6 for 2). ``max_elements`` checks that many randomly chosen
    elements per tensor instead of all of them (for big tensors).
    """
    xp = array_module(x)
    if order not in STENCILS:
        raise ValueError(f"order must be one of {sorted(STENCILS)}, got {order}")
    eps = eps if eps is not None else {2: 1e-6, 4: 1e-4}[order]
    for name, value in (("eps", eps), ("tol", tol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"gradcheck's {name} must be a finite number above 0, got {value!r}")
    if max_elements is not None and (isinstance(max_elements, bool) or not isinstance(max_elements, int)
                                     or max_elements < 1):
        raise ValueError(f"max_elements must be a whole number >= 1 or None (every element), got {max_elements!r}")
    params = module.named_parameters()
    tensors = ([("input", x)] if check_input else []) + [(name, p.data) for name, p in params]
    if not tensors:
        raise ValueError(f"nothing to check: {type(module).__name__} has no parameters and check_input=False")
    for name, value in tensors:
        if value.dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 ({name} is {value.dtype}): build the layer with "
                            "dtype=np.float64 and pass float64 inputs")
    rng = np.random.default_rng(seed)
    module.train()
    has_random_layers = any(hasattr(m, "rng") for m in module.modules())

    def forward():
        if has_random_layers:
            module.seed(seed)
        return module.forward(x, *args)

    out = forward()
    upstream = xp.asarray(rng.standard_normal(out.shape))
    module.zero_grad()
    analytic = {"input": module.backward(upstream)}
    for name, p in module.named_parameters():
        analytic[name] = p.grad if p.grad is not None else xp.zeros_like(p.data)
    analytic = {name: g.copy() for name, g in analytic.items()}

    def objective():
        return float((upstream * forward()).sum())

    report = GradcheckReport(tol)
    for name, value in tensors:
        flat = value.reshape(-1)                                     # a view: perturbing it perturbs the tensor
        count = flat.size if max_elements is None else min(flat.size, max_elements)
        indices = np.arange(flat.size) if count == flat.size else rng.choice(flat.size, count, replace=False)
        numeric = np.empty(count)
        for j, i in enumerate(indices):
            original = flat[i].copy()
            total = 0.0
            for offset, weight in STENCILS[order]:
                flat[i] = original + offset * eps
                total += weight * objective()
            flat[i] = original
            numeric[j] = total / eps
        exact = to_numpy(analytic[name]).reshape(-1)[indices]
        scale = max(np.linalg.norm(exact), np.linalg.norm(numeric), 1e-300)
        report.tensors.append(TensorCheck(name, tuple(value.shape), count,
                                          float(np.linalg.norm(exact - numeric) / scale)))
    for m in module.modules():                                       # drop the last forward's cache
        m._cache = None
    return report
