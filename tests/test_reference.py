"""The textbook (numpyvit.reference) checked two ways: its own backward passes against central
differences in float64, layer by layer and whole; and every fast path of the model pinned to it
(logits, the images' gradient and every parameter gradient within 1e-12 relative, float64) for
each variant the fast code has: LayerNorm folded into the next product or not, the [CLS]-only
last block or not, each way of running on the CPU, both poolings, each position embedding and
each activation. The same pins run in float32, the dtype training uses: the fast model in float32
against the textbook in float64 on the same (float32) weights and images, within PIN_RTOL_FLOAT32."""
import contextlib
import itertools

import numpy as np
import pytest

import numpyvit
from numpyvit import reference as ref
from numpyvit.engine import tuning
from numpyvit.backend import to_numpy
from numpyvit.layers import LayerNorm
from numpyvit.model import VisionTransformer
from finite_differences import central_differences

PIN_RTOL = 1e-12
# float32 (unit roundoff u = 2^-24 ~ 6e-8) through the whole model: sums of up to ~50 products
# chained through patch embedding, two blocks and the head, and back. Each stage's rounding is
# carried on, amplified by LayerNorm's 1/std and the softmax, so the bound is ~n u times the
# chain's condition: 2e-5 = 340 u, and 14 times the largest difference seen over every way,
# folding and architecture (4e-7 to 1.5e-6); a wrong float32-only term (GELU's slope off by
# up to 0.19) shows as ~1e-2.
PIN_RTOL_FLOAT32 = 2e-5
DTYPES = {"float64": PIN_RTOL, "float32": PIN_RTOL_FLOAT32}
WAYS = ("blas", "split", "threads", "processes")
SMALL = dict(img_size=(8, 12), patch_size=4, in_chans=2, num_classes=5, embed_dim=16, depth=2, num_heads=2,
             mlp_ratio=2.0, dtype="float64")


def numeric_grad(f, x, h=1e-5, sample=None, rng=None):
    """d f / d x by central differences at every element (or ``sample`` random ones): (indices, values)."""
    indices = np.arange(x.size) if sample is None or sample >= x.size else rng.choice(x.size, sample, False)
    return indices, central_differences(f, x, h, indices)


def assert_grad_matches(analytic, f, x, rng=None, sample=None, tol=1e-7):
    indices, numeric = numeric_grad(f, x, sample=sample, rng=rng)
    got = to_numpy(analytic).reshape(-1)[indices]
    scale = max(np.abs(numeric).max(), 1e-12)
    assert np.abs(got - numeric).max() / scale < tol


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ----- the reference's own gradient checks, layer by layer ------------------------------------------
def check_layer(forward, backward, inputs, rng, names):
    """forward(*inputs) -> (out, cache); backward(dout, cache) -> gradients of inputs ``names``."""
    out, cache = forward(*inputs)
    dout = rng.standard_normal(out.shape)
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    for index, grad in zip(names, grads):
        x = inputs[index]
        assert_grad_matches(grad, lambda: float((forward(*inputs)[0] * dout).sum()), x, rng)


def test_linear(rng):
    x, W, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    check_layer(ref.linear_forward, ref.linear_backward, [x, W, b], rng, [0, 1, 2])


def test_patch_embed(rng):
    x, W, b = rng.standard_normal((2, 3, 4, 6)), rng.standard_normal((5, 3, 2, 3)), rng.standard_normal(5)
    check_layer(ref.patch_embed_forward, ref.patch_embed_backward, [x, W, b], rng, [0, 1, 2])


def test_patchify_is_undone_by_unpatchify(rng):
    x = rng.standard_normal((2, 3, 4, 6))
    patches = ref.patchify(x, (2, 3))
    assert patches.shape == (2, 4, 18)
    np.testing.assert_array_equal(patches[0, 1].reshape(3, 2, 3), x[0, :, 0:2, 3:6])    # row 0, column 1
    np.testing.assert_array_equal(ref.unpatchify(patches, x.shape, (2, 3)), x)


def test_tokens(rng):
    patches, cls, table = rng.standard_normal((2, 3, 4)), rng.standard_normal((1, 1, 4)), rng.standard_normal((1, 4, 4))
    check_layer(ref.tokens_forward, ref.tokens_backward, [patches, cls, table], rng, [0, 1, 2])


def test_layernorm(rng):
    x, g, b = rng.standard_normal((2, 3, 6)), rng.standard_normal(6), rng.standard_normal(6)
    check_layer(ref.layernorm_forward, ref.layernorm_backward, [x, g, b], rng, [0, 1, 2])


def test_attention(rng):
    D, heads = 6, 2
    x = rng.standard_normal((2, 4, D))
    weights = [rng.standard_normal((3 * D, D)) * 0.5, rng.standard_normal(3 * D), rng.standard_normal((D, D)),
               rng.standard_normal(D)]
    check_layer(lambda *a: ref.attention_forward(*a, heads), ref.attention_backward, [x, *weights], rng,
                [0, 1, 2, 3, 4])


@pytest.mark.parametrize("pair", ["scores", "weighted_values"])
def test_attention_steps(rng, pair):
    """The two products inside attention, each a pair of its own (the explorer shows them)."""
    forward, backward = getattr(ref, f"{pair}_forward"), getattr(ref, f"{pair}_backward")
    first = rng.standard_normal((2, 3, 4, 5 if pair == "scores" else 4))    # q, or p (B, h, T, T)
    check_layer(forward, backward, [first, rng.standard_normal((2, 3, 4, 5))], rng, [0, 1])


def test_split_heads_is_undone_by_merge_heads(rng):
    B, T, heads, Dh = 2, 4, 3, 5
    qkv = rng.standard_normal((B, T, 3 * heads * Dh))
    q, k, v = ref.split_heads(qkv, heads)
    assert q.shape == (B, heads, T, Dh)
    np.testing.assert_array_equal(k[:, 1], qkv[..., heads * Dh + Dh:heads * Dh + 2 * Dh])   # k of head 1
    merged = np.concatenate([ref.merge_heads(q), ref.merge_heads(k), ref.merge_heads(v)], axis=-1)
    np.testing.assert_array_equal(merged, qkv)


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "relu"])
def test_mlp(rng, act):
    x = rng.standard_normal((2, 3, 4))
    weights = [rng.standard_normal((6, 4)), rng.standard_normal(6), rng.standard_normal((4, 6)), rng.standard_normal(4)]
    check_layer(lambda *a: ref.mlp_forward(*a, act), ref.mlp_backward, [x, *weights], rng, [0, 1, 2, 3, 4])


def test_softmax(rng):
    check_layer(ref.softmax_forward, ref.softmax_backward, [rng.standard_normal((2, 3, 5))], rng, [0])


def test_softmax_backward_is_the_full_jacobian_product(rng):
    s, dp = rng.standard_normal(6), rng.standard_normal(6)
    p, cache = ref.softmax_forward(s)
    jacobian = np.diag(p) - np.outer(p, p)                           # docs/math.md, section 5
    np.testing.assert_allclose(ref.softmax_backward(dp, cache), jacobian.T @ dp, rtol=1e-13)


@pytest.mark.parametrize("pair", ["dropout", "drop_path"])
def test_dropout_and_drop_path(rng, pair):
    forward, backward = getattr(ref, f"{pair}_forward"), getattr(ref, f"{pair}_backward")
    x = rng.standard_normal((4, 3, 5))
    keep = (rng.random(x.shape if pair == "dropout" else 4) >= 0.3).astype(np.float64)
    check_layer(lambda x_: forward(x_, keep, 0.3), backward, [x], rng, [0])
    if pair == "drop_path":                                          # whole images dropped, or nothing of them
        dropped = (forward(x, keep, 0.3)[0] == 0).reshape(4, -1)
        assert dropped.any() and (dropped.all(axis=1) == dropped.any(axis=1)).all()


@pytest.mark.parametrize("kind", ["token", "avg"])
def test_pool(rng, kind):
    check_layer(lambda z: ref.pool_forward(z, kind), ref.pool_backward, [rng.standard_normal((2, 4, 3))], rng, [0])


def test_cross_entropy(rng):
    logits, labels = rng.standard_normal((4, 5)), np.array([0, 4, 2, 2])
    loss, cache = ref.cross_entropy_forward(logits, labels, 0.1)
    assert_grad_matches(ref.cross_entropy_backward(1.0, cache),
                        lambda: float(ref.cross_entropy_forward(logits, labels, 0.1)[0]), logits, rng)
    ours = numpyvit.CrossEntropyLoss(label_smoothing=0.1)
    np.testing.assert_allclose(loss, ours(logits, labels), rtol=1e-14)


def perturbed_params(model, rng):
    """The model's weights moved to a generic point (LayerNorm near a constant vector is too
    curved for finite differences: see tests/conftest.py)."""
    params = {name: np.array(to_numpy(value)) for name, value in model.state_dict().items()}
    for value in params.values():
        value += rng.standard_normal(value.shape) * 0.3
    return params


@pytest.mark.parametrize("variant", [dict(), dict(pos_embed="learned_2d", global_pool="avg", act="gelu_tanh"),
                                     dict(pos_embed="sincos", act="relu", qkv_bias=False)],
                         ids=["learned-token-gelu", "learned_2d-avg-gelu_tanh", "sincos-relu-no_qkv_bias"])
def test_whole_model(rng, variant):
    model = VisionTransformer(**dict(SMALL, **variant))
    params, x = perturbed_params(model, rng), rng.standard_normal((2, 2, 8, 12))
    logits, cache = ref.vit_forward(params, x, model.config)
    dlogits = rng.standard_normal(logits.shape)
    grads, dx = ref.vit_backward(dlogits, cache, input_grad=True)
    assert set(grads) == set(params)

    def loss():
        return float((ref.vit_forward(params, x, model.config)[0] * dlogits).sum())
    assert_grad_matches(dx, loss, x, rng, sample=40)
    for name, value in params.items():
        assert_grad_matches(grads[name], loss, value, rng, sample=12)


def test_adamw_step_is_numpyvits(rng):
    model = VisionTransformer(**SMALL)
    params = {name: np.array(value) for name, value in model.state_dict().items()}
    opt = numpyvit.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    state = {}
    named = dict(model.named_parameters())
    for _ in range(3):
        grads = {name: rng.standard_normal(value.shape) for name, value in params.items()}
        for name, p in named.items():
            p.grad[...] = grads[name]
        opt.step()
        ref.adamw_step(params, grads, state, lr=0.01, weight_decay=0.1)
    for name, p in named.items():
        np.testing.assert_allclose(p.data, params[name], rtol=1e-13, atol=1e-15, err_msg=name)


# ----- every fast path pinned to the reference --------------------------------------------------------
def relative_difference(a, b):
    a, b = to_numpy(a), to_numpy(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@contextlib.contextmanager
def folding(mode):
    """'auto' as the model decides; 'on' / 'off' forces LayerNorm's folding into the next product."""
    if mode == "auto":
        yield
        return
    original = LayerNorm.input_for

    def forced(self, x, linear):
        return (self.normalize(x), self) if mode == "on" else (self.forward(x), None)
    LayerNorm.input_for = forced
    try:
        yield
    finally:
        LayerNorm.input_for = original


@contextlib.contextmanager
def all_rows_in_last_block(on):
    """The last block computes every token's output, not the [CLS] row alone."""
    original = VisionTransformer._cls_only_last_block
    if on:
        VisionTransformer._cls_only_last_block = lambda self: False
    try:
        yield
    finally:
        VisionTransformer._cls_only_last_block = original


def pin(xp, variant, way="blas", fold="auto", cls_only=True, batch=4, dtype="float64"):
    """Largest relative difference between the fast model (in ``dtype``) and the reference (in
    float64, on the same weights and images) over the logits, the images' gradient and every
    parameter gradient."""
    model = VisionTransformer(**dict(SMALL, backend=xp.__name__, **variant, dtype=dtype))
    rng = np.random.default_rng(1)
    with numpyvit.no_grad():
        for _, p in model.named_parameters():
            p.data[...] = p.data + xp.asarray(rng.standard_normal(p.shape) * 0.3, dtype=dtype)
    x = rng.standard_normal((batch, 2, 8, 12)).astype(dtype)
    dlogits = rng.standard_normal((batch, 5)).astype(dtype)
    strategy = tuning.forced(way) if xp is np else contextlib.nullcontext()
    with strategy, folding(fold), all_rows_in_last_block(not cls_only):
        assert xp is not np or model.runner.strategy(batch) == way
        logits = model(xp.asarray(x))
        dx = model.backward(xp.asarray(dlogits))
    params = {name: to_numpy(v).astype(np.float64) for name, v in model.state_dict().items()}
    expected, cache = ref.vit_forward(params, x.astype(np.float64), dict(model.config, dtype="float64"))
    grads, expected_dx = ref.vit_backward(dlogits.astype(np.float64), cache, input_grad=True)
    differences = [relative_difference(logits, expected), relative_difference(dx, expected_dx)]
    differences += [relative_difference(p.grad, grads[name]) for name, p in model.named_parameters()]
    model.runner.release()
    return max(differences)


CORE_VARIANTS = list(itertools.product(WAYS, ["on", "off"], [True, False]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("way,fold,cls_only", CORE_VARIANTS,
                         ids=[f"{w}-fold_{f}-{'cls_only' if c else 'all_rows'}" for w, f, c in CORE_VARIANTS])
def test_fast_model_equals_reference_each_way(way, fold, cls_only, dtype):
    assert pin(np, {}, way, fold, cls_only, dtype=dtype) <= DTYPES[dtype]


ARCHITECTURES = list(itertools.product(["learned", "learned_2d", "sincos"], ["token", "avg"],
                                       ["gelu", "gelu_tanh", "relu"]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos_embed,pool,act", ARCHITECTURES, ids=["-".join(a) for a in ARCHITECTURES])
def test_fast_model_equals_reference_each_architecture(xp, pos_embed, pool, act, dtype):
    variant = dict(pos_embed=pos_embed, global_pool=pool, act=act, qkv_bias=act != "relu")
    assert pin(xp, variant, dtype=dtype) <= DTYPES[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_fast_model_equals_reference_with_automatic_choices(xp, dtype):
    """As the model decides for itself (folding by size, the way as measured)."""
    assert pin(xp, {}, batch=3, dtype=dtype) <= DTYPES[dtype]


# ----- the reference's own pairs that the model does not call, pinned to the fast layers ------------------
@pytest.mark.parametrize("shape", [(2, 3, 7, 7), (5, 4)])
def test_fast_softmax_equals_the_reference(rng, shape):
    from numpyvit.layers import attention_softmax
    s = rng.standard_normal(shape) * 5
    p, cache = ref.softmax_forward(s)
    assert relative_difference(attention_softmax(s), p) <= PIN_RTOL


@pytest.mark.parametrize("layer", ["Dropout", "DropPath"])
def test_fast_dropout_layers_equal_the_reference_with_their_mask(rng, layer):
    """The fast layer draws its mask; the reference takes it (recovered from the output): the
    same output and the same input gradient."""
    import numpyvit.layers
    module = getattr(numpyvit.layers, layer)(0.4).seed(3)
    x = rng.standard_normal((6, 3, 5)) + 10.0                         # no zero inputs: y == 0 only where dropped
    y = module(x)
    keep = (y != 0).astype(np.float64)
    keep = keep if layer == "Dropout" else keep[:, 0, 0]
    forward, backward = (ref.dropout_forward, ref.dropout_backward) if layer == "Dropout" else \
        (ref.drop_path_forward, ref.drop_path_backward)
    expected, cache = forward(x, keep, 0.4)
    dy = rng.standard_normal(y.shape)
    assert 0 < keep.mean() < 1
    assert relative_difference(y, expected) <= PIN_RTOL
    assert relative_difference(module.backward(dy), backward(dy, cache)) <= PIN_RTOL


def test_math_md_section_9_the_final_layernorm_is_in_the_path(rng):
    """docs/math.md, section 9: with [CLS] pooling, dz_L[:, 0] is the final LayerNorm's backward of
    dc (dc = dlogits W_head), and the other tokens get nothing; dz_L[:, 0] = dc (the earlier text)
    skips the LayerNorm and is wrong."""
    B, T, D, K = 3, 5, 6, 4
    z_L, gamma, beta = rng.standard_normal((B, T, D)), rng.standard_normal(D), rng.standard_normal(D)
    W_head, b_head, dlogits = rng.standard_normal((K, D)), rng.standard_normal(K), rng.standard_normal((B, K))

    def loss():
        c = ref.layernorm_forward(z_L, gamma, beta)[0][:, 0]           # c = LN(z_L)[:, 0]
        return float(((c @ W_head.T + b_head) * dlogits).sum())

    _, cls_cache = ref.layernorm_forward(z_L[:, 0], gamma, beta)      # the [CLS] rows alone
    dc = dlogits @ W_head                                             # the head's backward
    formula = np.zeros_like(z_L)
    formula[:, 0] = ref.layernorm_backward(dc, cls_cache)[0]
    numeric = central_differences(loss, z_L, 1e-6, np.arange(z_L.size)).reshape(z_L.shape)
    assert np.abs(formula - numeric).max() / np.abs(numeric).max() < 1e-7
    assert np.abs(numeric[:, 1:]).max() < 1e-8                        # the patch tokens get no gradient
    skipped = np.zeros_like(z_L)
    skipped[:, 0] = dc
    assert np.abs(skipped - numeric).max() / np.abs(numeric).max() > 0.1
