"""The checkers of docs/tour.ipynb's exercises: each takes the learner's function, runs it on
random inputs, and raises AssertionError with a hint until it is right (then prints how close it
is). The notebook imports this file; tests/test_tour.py runs the checkers on the notebook's
hidden solutions (they pass) and on its empty exercises (they fail)."""
import math

import numpy as np

import numpyvit
from numpyvit import reference as ref
from numpyvit.layers import Parameter

RTOL = 1e-7


def central_differences(f, x, h=1e-6):
    """d f() / d x by central differences, element by element (f reads x, returns a scalar)."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        up = f()
        x[i] = old - h
        down = f()
        x[i] = old
        grad[i] = (up - down) / (2 * h)
    return grad


def relative_error(got, expected):
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-300))


def _call(exercise, fn, *args):
    try:
        return fn(*args)
    except NotImplementedError:
        raise AssertionError(f"exercise {exercise} is not written yet: replace the raise with your code") from None


def _verdict(exercise, errors, hint):
    worst = max(errors.values())
    report = ", ".join(f"{name} {error:.1e}" for name, error in errors.items())
    assert worst < RTOL, f"exercise {exercise} is not right yet (relative errors: {report}). Hint: {hint}"
    print(f"exercise {exercise}: correct (relative errors {report})")


def check_layernorm_backward(fn, seed=0):
    """Exercise 1: fn(dy, cache) -> dx, dgamma, dbeta, with cache = (xhat, rstd, gamma)."""
    rng = np.random.default_rng(seed)
    x, gamma, beta = rng.standard_normal((3, 4, 6)), rng.standard_normal(6), rng.standard_normal(6)
    y, cache = ref.layernorm_forward(x, gamma, beta)
    dy = rng.standard_normal(y.shape)
    got = _call(1, fn, dy, cache)
    loss = lambda: float((ref.layernorm_forward(x, gamma, beta)[0] * dy).sum())   # noqa: E731
    expected = [central_differences(loss, u) for u in (x, gamma, beta)]
    errors = {name: relative_error(np.asarray(g), e) for name, g, e in zip(("dx", "dgamma", "dbeta"), got, expected)}
    _verdict(1, errors, "dx has three terms: through x, through the row's mean, through rstd "
                        "(docs/math.md, section 4); dgamma and dbeta sum over every row")


def check_softmax_backward(fn, seed=1):
    """Exercise 2: fn(dp, p) -> ds for one row, without forming the n x n Jacobian."""
    rng = np.random.default_rng(seed)
    s, dp = rng.standard_normal(7), rng.standard_normal(7)
    p, _ = ref.softmax_forward(s)
    jacobian = np.diag(p) - np.outer(p, p)                           # dp_j / ds_k
    got = np.asarray(_call(2, fn, dp, p))
    _verdict(2, {"ds": relative_error(got, jacobian.T @ dp)},
             "ds_k = sum_j dp_j p_j (delta_jk - p_k); take p_k out of the sum (docs/math.md, section 5)")


def check_attention_row_sum(fn, seed=2):
    """Exercise 3: fn(do, o) -> R (T,), the row sums sum_k dP_ik P_ik computed from dO and O alone."""
    rng = np.random.default_rng(seed)
    q, k, v, do = (rng.standard_normal((5, 3)) for _ in range(4))
    p, _ = ref.softmax_forward(q @ k.T / math.sqrt(3))
    o, dp = p @ v, do @ v.T
    got = np.asarray(_call(3, fn, do, o))
    _verdict(3, {"R": relative_error(got, (dp * p).sum(axis=1))},
             "R_i = sum_k dP_ik P_ik with dP = dO v^T and O = P v: swap the two sums "
             "(docs/math.md, section 6)")


def check_adamw(fn, seed=3):
    """Exercise 4: fn(p, g, m, u, t, lr, betas, eps, weight_decay) -> new p, m, u: one AdamW step
    of a parameter p with gradient g at step t (1, 2, ...), decay applied."""
    rng = np.random.default_rng(seed)
    lr, betas, eps, wd = 0.01, (0.9, 0.999), 1e-8, 0.1
    p0, grads = rng.standard_normal(5), rng.standard_normal((4, 5))
    theirs = Parameter(p0.copy())
    opt = numpyvit.AdamW([theirs], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    p, m, u = p0.copy(), np.zeros(5), np.zeros(5)
    torch_like = _documented_adamw(p0, grads, lr, betas, eps, wd)
    for t, g in enumerate(grads, start=1):
        p, m, u = (np.asarray(a) for a in _call(4, fn, p, g, m, u, t, lr, betas, eps, wd))
        theirs.grad[...] = g
        opt.step()
    _verdict(4, {"against numpyvit.AdamW": relative_error(p, theirs.data),
                 "against PyTorch's documented algorithm": relative_error(p, torch_like)},
             "decay p by (1 - lr wd) first; m and u are running means of g and g^2; divide m by "
             "(1 - b1^t) and u by (1 - b2^t) before the step (docs/math.md, section 11)")


def _documented_adamw(p, grads, lr, betas, eps, wd):
    """torch.optim.AdamW's algorithm as its documentation writes it (amsgrad off, maximize off)."""
    b1, b2 = betas
    theta, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        theta = theta - lr * wd * theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta
