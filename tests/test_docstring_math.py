"""The equations the docstrings state, evaluated as written on small float64 inputs.

Learners read the docstrings to learn the math, so each formula stated there that a short test
can evaluate is evaluated here, from the text's own symbols, independently of the layer code:
a gradient formula against central differences of the forward it belongs to, an identity on
random inputs, a constant or bound by direct computation. If a docstring changes its math, the
test named for it says which one. 17 tests evaluate 33 stated formulas.
"""
import math

import numpy as np
import pytest

from numpyvit import AdamW
from numpyvit.layers.activations import Q32
from numpyvit.layers.base import Parameter
from numpyvit.layers.tokens import sincos_table_2d
from numpyvit.special import P32, erf, horner
from finite_differences import central_differences


def numeric_grad(f, x, h=1e-6):
    """d f(x) / dx by central differences, element by element (f returns a scalar)."""
    return central_differences(lambda: f(x), x, h)


def softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ----- attention.py (4 formulas) -------------------------------------------------------------------
def test_attention_row_sum_is_do_dot_o_with_dropout(rng):
    """sum_k dp_ik p_ik = sum_k dp'_ik p'_ik = do_i . o_i, with p' = p m / (1 - r), dp = dp' m / (1 - r)."""
    N, d, r = 5, 3, 0.3
    p = softmax(rng.standard_normal((N, N)))
    m = rng.random((N, N)) >= r
    v, do = rng.standard_normal((N, d)), rng.standard_normal((N, d))
    p_dropped = p * m / (1 - r)
    o = p_dropped @ v
    dp_dropped = do @ v.T
    dp = dp_dropped * m / (1 - r)
    np.testing.assert_allclose((dp * p).sum(axis=1), (dp_dropped * p_dropped).sum(axis=1), rtol=1e-13)
    np.testing.assert_allclose((dp * p).sum(axis=1), (do * o).sum(axis=1), rtol=1e-12)


def test_attention_softmax_backward_is_the_jacobian_product(rng):
    """ds_ij = p_ij (dp_ij - sum_k dp_ik p_ik), the softmax Jacobian diag(p) - p p^T applied to dp."""
    s, dp = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    p = softmax(s)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    np.testing.assert_allclose(ds, numeric_grad(lambda s_: (softmax(s_) * dp).sum(), s.copy()), atol=1e-9)


def test_attention_backward_as_the_docstring_writes_it(rng):
    """dv = p'^T do, dp' = do v^T, dq = ds k / sqrt(d), dk = ds^T (q / sqrt(d)) (one head, no dropout)."""
    N, d = 4, 3
    q, k, v, do = (rng.standard_normal((N, d)) for _ in range(4))

    def forward(q_, k_, v_):
        return softmax((q_ / math.sqrt(d)) @ k_.T) @ v_

    p = softmax((q / math.sqrt(d)) @ k.T)
    dv, dp = p.T @ do, do @ v.T
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    dq, dk = ds @ k / math.sqrt(d), ds.T @ (q / math.sqrt(d))
    np.testing.assert_allclose(dq, numeric_grad(lambda x: (forward(x, k, v) * do).sum(), q.copy()), atol=1e-9)
    np.testing.assert_allclose(dk, numeric_grad(lambda x: (forward(q, x, v) * do).sum(), k.copy()), atol=1e-9)
    np.testing.assert_allclose(dv, numeric_grad(lambda x: (forward(q, k, x) * do).sum(), v.copy()), atol=1e-9)


def test_softmax_margins_are_far_from_float32_limits():
    """1 / sum stays a normal float32 up to ~8.5e37; exp(s) is normal down to ~1.2e-38 (the 1e30
    and 1e-20 bounds are margins)."""
    tiny = np.finfo(np.float32).tiny
    assert 1 / np.float32(8.5e37) >= tiny and 1 / np.float32(8.6e37) < tiny
    assert 1 / np.float32(1e30) > tiny * 1e7
    assert np.exp(np.float32(-87.0)) >= tiny and np.exp(np.float32(-88.0)) < tiny
    assert np.float32(1e-20) > tiny * 1e17


# ----- layernorm.py (2 formulas) -------------------------------------------------------------------
def layernorm(x, g, beta, eps=1e-6):
    mu = x.mean(axis=-1, keepdims=True)
    rstd = 1 / np.sqrt(((x - mu) ** 2).mean(axis=-1, keepdims=True) + eps)
    return (x - mu) * rstd * g + beta


def test_layernorm_dx_has_three_terms_with_means_per_row(rng):
    """dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = dy g, means over each row."""
    x, dy = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 3, 5))
    g, beta = rng.standard_normal(5), rng.standard_normal(5)
    mu = x.mean(axis=-1, keepdims=True)
    rstd = 1 / np.sqrt(((x - mu) ** 2).mean(axis=-1, keepdims=True) + 1e-6)
    xhat, dxhat = (x - mu) * rstd, dy * g
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    np.testing.assert_allclose(dx, numeric_grad(lambda x_: (layernorm(x_, g, beta) * dy).sum(), x.copy()), atol=1e-8)


def test_layernorm_dg_dbeta_sum_over_all_rows(rng):
    """dg = sum over all M rows of dy * xhat, dbeta = sum over all M rows of dy."""
    x, dy = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 3, 5))
    g, beta = rng.standard_normal(5), rng.standard_normal(5)
    xhat = layernorm(x, 1.0, 0.0)
    np.testing.assert_allclose((dy * xhat).reshape(-1, 5).sum(axis=0),
                               numeric_grad(lambda g_: (layernorm(x, g_, beta) * dy).sum(), g.copy()), atol=1e-8)
    np.testing.assert_allclose(dy.reshape(-1, 5).sum(axis=0),
                               numeric_grad(lambda b_: (layernorm(x, g, b_) * dy).sum(), beta.copy()), atol=1e-8)


# ----- linear.py (2 formulas) ----------------------------------------------------------------------
def test_linear_plain_backward(rng):
    """dx = dy W, dW = dy^T x, db = sum(dy) for y = x W^T + b."""
    x, W, b, dy = rng.standard_normal((6, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3), \
        rng.standard_normal((6, 3))
    np.testing.assert_allclose(dy @ W, numeric_grad(lambda x_: ((x_ @ W.T + b) * dy).sum(), x.copy()), atol=1e-8)
    np.testing.assert_allclose(dy.T @ x, numeric_grad(lambda W_: ((x @ W_.T + b) * dy).sum(), W.copy()), atol=1e-8)
    np.testing.assert_allclose(dy.sum(axis=0), numeric_grad(lambda b_: ((x @ W.T + b_) * dy).sum(), b.copy()),
                               atol=1e-8)


def test_linear_folded_layernorm_chain_rule(rng):
    """y = xhat W'^T + b', W' = W diag(g), b' = b + W beta; dW = dW' diag(g) + outer(db', beta),
    dg[i] = sum_o dW'[o, i] W[o, i], dbeta = W^T db'."""
    xhat, dy = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    W, b, g, beta = rng.standard_normal((3, 4)), rng.standard_normal(3), rng.standard_normal(4), rng.standard_normal(4)

    def loss(W_=W, g_=g, beta_=beta):
        return (((xhat * g_ + beta_) @ W_.T + b) * dy).sum()

    folded = xhat @ (W * g).T + (b + W @ beta)
    np.testing.assert_allclose(folded, (xhat * g + beta) @ W.T + b, rtol=1e-12)
    dW_folded, db_folded = dy.T @ xhat, dy.sum(axis=0)
    np.testing.assert_allclose(dW_folded * g + np.outer(db_folded, beta),
                               numeric_grad(lambda W_: loss(W_=W_), W.copy()), atol=1e-8)
    np.testing.assert_allclose((dW_folded * W).sum(axis=0), numeric_grad(lambda g_: loss(g_=g_), g.copy()), atol=1e-8)
    np.testing.assert_allclose(W.T @ db_folded, numeric_grad(lambda b_: loss(beta_=b_), beta.copy()), atol=1e-8)


# ----- activations.py and special.py (5 formulas) --------------------------------------------------
def test_exact_gelu_slope_is_phi_plus_x_times_density():
    """f(x) = x Phi(x), f'(x) = Phi(x) + x phi(x)."""
    x = np.linspace(-5, 5, 41)
    Phi = 0.5 * (1 + erf(x / math.sqrt(2)))
    phi = np.exp(-x**2 / 2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(Phi + x * phi, numeric_grad(lambda x_: (x_ * 0.5 * (1 + erf(x_ / math.sqrt(2)))).sum(),
                                                           x.copy()), atol=1e-8)


def test_tanh_gelu_slope():
    """f'(x) = (1 + t) / 2 + x (1 - t^2) / 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2), t = tanh(u)."""
    x = np.linspace(-5, 5, 41)
    c = math.sqrt(2 / math.pi)

    def f(x_):
        return (x_ * (1 + np.tanh(c * (x_ + 0.044715 * x_**3))) / 2).sum()

    t = np.tanh(c * (x + 0.044715 * x**3))
    slope = (1 + t) / 2 + x * (1 - t**2) / 2 * c * (1 + 3 * 0.044715 * x**2)
    np.testing.assert_allclose(slope, numeric_grad(f, x.copy()), atol=1e-8)


def test_float32_gelu_polynomial_is_erf_of_x_over_sqrt2():
    """erf(x / sqrt 2) = tanh(x Q(x^2)) with Q(s) = P(s / 2) / sqrt 2, P numpyvit.special's float32 fit."""
    x = np.linspace(-6, 6, 2001)
    Q = [p / (2.0**k * math.sqrt(2.0)) for k, p in enumerate(P32)]
    np.testing.assert_allclose(Q32, np.float32(Q), rtol=0)
    np.testing.assert_allclose(np.tanh(x * horner(x * x, Q)), [math.erf(v / math.sqrt(2)) for v in x], atol=2e-7)


def test_float32_gelu_needs_no_clip():
    """x Q(x^2) >= 6.29 for every x >= 4.5; float32 tanh(6.29) = 1 - 6.9e-6 (true erf(4.5/sqrt 2):
    1 - 6.8e-6); tanh is exactly 1 from 10 on, reached at |x| ~ 5.75; x Q(x^2) overflows past ~4360."""
    x = np.concatenate([np.linspace(4.5, 10, 20001), np.geomspace(10, 4300, 20001)]).astype(np.float32)
    with np.errstate(over="ignore"):
        values = x * horner(x * x, Q32)
    assert values.min() >= np.float32(6.29)
    np.testing.assert_allclose(1 - np.tanh(np.float32(6.29)), 6.9e-6, rtol=0.02)
    np.testing.assert_allclose(1 - math.erf(4.5 / math.sqrt(2)), 6.8e-6, rtol=0.01)
    grid = np.arange(9.0, 11.0, 0.001).astype(np.float32)
    assert grid[np.argmax(np.tanh(grid) == 1)] == pytest.approx(10.0, abs=0.01)
    crossing = x[np.argmax(values >= 10)]
    assert crossing == pytest.approx(5.75, abs=0.01)
    with np.errstate(over="ignore"):
        big = np.float32([4350, 4370])
        assert np.isfinite(big[0] * horner(big[:1] ** 2, Q32)).all()
        assert np.isinf(big[1] * horner(big[1:] ** 2, Q32)).all() and np.tanh(np.float32(np.inf)) == 1


def test_relu_slope():
    """f(x) = max(x, 0), f'(x) = 1 if x > 0 else 0 (away from 0)."""
    x = np.array([-2.0, -0.5, 0.3, 1.7])
    np.testing.assert_allclose((x > 0).astype(float), numeric_grad(lambda x_: np.maximum(x_, 0).sum(), x.copy()))


# ----- tokens.py (2 formulas) ----------------------------------------------------------------------
def mae_sincos_table(dim, Gh, Gw):
    """MAE's get_2d_sincos_pos_embed (its meshgrid puts the column coordinate in the first half)."""
    grid = np.stack(np.meshgrid(np.arange(Gw, dtype=float), np.arange(Gh, dtype=float)))   # (2, Gh, Gw)

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=float) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)   # (N, D)


def test_sincos_is_maes_table_with_its_halves_swapped():
    """E = [sin(r w), cos(r w), sin(c w), cos(c w)], w_i = 10000^(-i / (D/4)): the row half first."""
    D, Gh, Gw = 16, 3, 5
    ours = sincos_table_2d((Gh, Gw), D)[0, 1:]
    mae = mae_sincos_table(D, Gh, Gw)
    np.testing.assert_allclose(ours, np.concatenate([mae[:, D // 2:], mae[:, :D // 2]], axis=1), atol=1e-15)
    assert not np.allclose(ours, mae)


def test_learned_2d_position_gradient_sums_rows_and_columns(rng):
    """E[(r, c)] = row[r] + col[c]: drow[r] = sum_c dE[(r, c)], dcol[c] = sum_r dE[(r, c)]."""
    Gh, Gw, D = 2, 3, 4
    row, col, dE = rng.standard_normal((Gh, D)), rng.standard_normal((Gw, D)), rng.standard_normal((Gh, Gw, D))
    np.testing.assert_allclose(dE.sum(axis=1), numeric_grad(lambda r: ((r[:, None] + col[None]) * dE).sum(), row.copy()),
                               atol=1e-8)
    np.testing.assert_allclose(dE.sum(axis=0), numeric_grad(lambda c: ((row[:, None] + c[None]) * dE).sum(), col.copy()),
                               atol=1e-8)


# ----- losses.py (2 formulas) ----------------------------------------------------------------------
def test_label_smoothed_loss_and_its_gradient(rng):
    """sum_k q log p = (1 - eps) log p[y] + (eps / K) sum_k log p; dz = (p - q) / B."""
    B, K, eps = 3, 5, 0.1
    z, y = rng.standard_normal((B, K)), np.array([0, 3, 4])
    q = (1 - eps) * np.eye(K)[y] + eps / K

    def loss(z_):
        log_p = z_ - z_.max(axis=1, keepdims=True)
        log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
        return -(q * log_p).sum() / B

    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    np.testing.assert_allclose((q * log_p).sum(axis=1),
                               (1 - eps) * log_p[np.arange(B), y] + eps / K * log_p.sum(axis=1), rtol=1e-13)
    np.testing.assert_allclose((np.exp(log_p) - q) / B, numeric_grad(loss, z.copy()), atol=1e-9)


# ----- optim.py (1 formula) ------------------------------------------------------------------------
ADAMW = dict(lr=0.01, weight_decay=0.1, betas=(0.9, 0.999), eps=1e-8)


def adamw_by_hand():
    """Three steps of the update as the docstring writes it: (initial p, gradients, final p)."""
    rng = np.random.default_rng(1)
    p0, grads = rng.standard_normal(5), rng.standard_normal((3, 5))
    lr, wd, (b1, b2), eps = ADAMW["lr"], ADAMW["weight_decay"], ADAMW["betas"], ADAMW["eps"]
    p, m, v = p0.copy(), np.zeros(5), np.zeros(5)
    for t, g in enumerate(grads, start=1):
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        p = p - (lr / (1 - b1**t)) * m / (np.sqrt(v) / math.sqrt(1 - b2**t) + eps)
    return p0, grads, p


def test_adamw_update_as_written():
    """p <- p (1 - lr wd); m, v moments; p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps),
    against numpyvit's fused AdamW."""
    p0, grads, p = adamw_by_hand()
    ours = Parameter(p0.copy())
    opt = AdamW([ours], **ADAMW)
    for g in grads:
        ours.grad[...] = g
        opt.step()
    np.testing.assert_allclose(p, ours.data, rtol=1e-13)


def test_adamw_update_as_written_is_pytorchs(torch):
    """The same update by torch.optim.AdamW (its documented algorithm)."""
    p0, grads, p = adamw_by_hand()
    theirs = torch.tensor(p0, requires_grad=True)
    opt = torch.optim.AdamW([theirs], **ADAMW)
    for g in grads:
        theirs.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(p, theirs.detach().numpy(), rtol=1e-13)
