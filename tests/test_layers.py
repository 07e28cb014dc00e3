"""The layers: what each computes, its hand-written backward, and what it refuses.

Part 1 checks the layer protocol for every layer at once (the table ``LAYERS``):
  - the analytic gradient of the input and of every parameter equals central differences in
    float64 (relative error <= 1e-6, random upstream gradient, at a random parameter point);
  - output and input-gradient shapes and dtypes (float32 and float64);
  - backward never writes into its upstream gradient or the forward's input;
  - forward caches only in training mode, backward releases the cache, and a backward with
    nothing cached raises BackwardBeforeForwardError;
  - parameter gradients accumulate across backward calls.
Part 2 has one section per layer: its forward against an independent reference written here
(loops, explicit formulas, math.erf, optionally PyTorch), its parameter names and shapes, and
the bad arguments or inputs it must refuse.
"""
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pytest

import numpyvit

from numpyvit import Block, CrossEntropyLoss, reference
from numpyvit.backend import to_numpy
from numpyvit.layers import (GELU, Attention, BackwardBeforeForwardError, ClassToken, DropPath, Dropout,
                             GELUTanh, GlobalPool, LayerNorm, LearnedPositionEmbedding,
                             LearnedPositionEmbedding2D, Linear, Mlp, Parameter, PatchEmbed, ReLU,
                             SinCosPositionEmbedding2D, attention_softmax, make_activation)


# ----------------------------------------------------------------------------------------------
# Part 1: the protocol, for every layer
# ----------------------------------------------------------------------------------------------
@dataclass
class Case:
    module: object
    in_shape: tuple
    out_shape: tuple
    args: tuple = ()                  # extra forward arguments (the loss's labels)
    away_from_zero: bool = False      # inputs kept off a kink (ReLU)


def table(xp, rng, shape, dtype):
    """A learned table handed to a token layer (the model owns these Parameters)."""
    return Parameter(xp.asarray(rng.standard_normal(shape), dtype=dtype), weight_decay=False)


def build(name, xp, dtype, rng):
    """The layer called ``name`` on backend ``xp`` in ``dtype``, with its input and output shapes.
    Sizes are tiny: B=2, N (tokens)=7, D=8, two heads."""
    kw = dict(xp=xp, dtype=dtype)
    if name == "linear":
        return Case(Linear(5, 4, rng=rng, **kw), (2, 3, 5), (2, 3, 4))
    if name == "linear_no_bias":
        return Case(Linear(5, 4, bias=False, rng=rng, **kw), (2, 3, 5), (2, 3, 4))
    if name == "layernorm":
        return Case(LayerNorm(6, **kw), (2, 3, 6), (2, 3, 6))
    if name == "gelu":
        return Case(GELU(), (2, 3, 5), (2, 3, 5))
    if name == "gelu_tanh":
        return Case(GELUTanh(), (2, 3, 5), (2, 3, 5))
    if name == "relu":
        return Case(ReLU(), (2, 3, 5), (2, 3, 5), away_from_zero=True)
    if name == "attention":
        return Case(Attention(8, 2, qkv_bias=True, attn_drop=0.3, proj_drop=0.2, rng=rng, **kw), (2, 7, 8), (2, 7, 8))
    if name == "attention_no_qkv_bias":
        return Case(Attention(8, 2, qkv_bias=False, rng=rng, **kw), (2, 7, 8), (2, 7, 8))
    if name == "dropout":
        return Case(Dropout(0.3, xp=xp), (2, 3, 5), (2, 3, 5))
    if name == "drop_path":
        return Case(DropPath(0.5, xp=xp), (6, 3, 5), (6, 3, 5))
    if name == "patch_embed":
        return Case(PatchEmbed((8, 12), 4, 3, 8, rng=rng, **kw), (2, 3, 8, 12), (2, 6, 8))
    if name == "class_token":
        return Case(ClassToken(table(xp, rng, (1, 1, 8), dtype)), (2, 6, 8), (2, 7, 8))
    if name == "pos_embed_learned":
        return Case(LearnedPositionEmbedding(table(xp, rng, (1, 7, 8), dtype)), (2, 7, 8), (2, 7, 8))
    if name == "pos_embed_learned_2d":
        row, col = table(xp, rng, (1, 2, 8), dtype), table(xp, rng, (1, 3, 8), dtype)
        return Case(LearnedPositionEmbedding2D(row, col), (2, 7, 8), (2, 7, 8))
    if name == "pos_embed_sincos":
        return Case(SinCosPositionEmbedding2D((2, 3), 8, **kw), (2, 7, 8), (2, 7, 8))
    if name == "pool_token":
        return Case(GlobalPool("token"), (2, 7, 8), (2, 8))
    if name == "pool_avg":
        return Case(GlobalPool("avg"), (2, 7, 8), (2, 8))
    if name == "mlp":
        return Case(Mlp(8, 16, "gelu", drop=0.2, rng=rng, **kw), (2, 7, 8), (2, 7, 8))
    if name == "mlp_gelu_tanh":
        return Case(Mlp(8, 16, "gelu_tanh", rng=rng, **kw), (2, 7, 8), (2, 7, 8))
    if name == "block":
        block = Block(8, 2, mlp_ratio=2.0, qkv_bias=True, drop=0.1, attn_drop=0.2, drop_path=0.4,
                      act="gelu", rng=rng, **kw)
        return Case(block, (3, 7, 8), (3, 7, 8))
    if name == "block_folded":                                      # 14 rows >= qkv's 12 outputs: g, b folded
        block = Block(4, 2, mlp_ratio=2.0, drop=0.1, attn_drop=0.2, drop_path=0.4, rng=rng, **kw)
        return Case(block, (2, 7, 4), (2, 7, 4))
    if name == "block_first_tokens":                                 # the model's last block: [CLS] only
        block = Block(8, 2, mlp_ratio=2.0, drop=0.1, attn_drop=0.2, drop_path=0.4, rng=rng, **kw)
        return Case(block, (3, 7, 8), (3, 2, 8), args=(2,))
    if name == "cross_entropy":
        return Case(CrossEntropyLoss(label_smoothing=0.1), (4, 5), (), args=(np.array([0, 4, 2, 2]),))
    if name == "cross_entropy_no_smoothing":
        return Case(CrossEntropyLoss(), (4, 5), (), args=(np.array([1, 0, 3, 4]),))
    raise KeyError(name)


LAYERS = ["linear", "linear_no_bias", "layernorm", "gelu", "gelu_tanh", "relu", "attention",
          "attention_no_qkv_bias", "dropout", "drop_path", "patch_embed", "class_token",
          "pos_embed_learned", "pos_embed_learned_2d", "pos_embed_sincos", "pool_token", "pool_avg",
          "mlp", "mlp_gelu_tanh", "block", "block_folded", "block_first_tokens", "cross_entropy", "cross_entropy_no_smoothing"]
WITH_PARAMETERS = [name for name in LAYERS if list(build(name, np, np.float64, np.random.default_rng(0))
                                                   .module.named_parameters())]


def make_input(case, xp, dtype, rng):
    x = rng.standard_normal(case.in_shape)
    if case.away_from_zero:
        x = np.sign(x) * (0.1 + np.abs(x))                           # |x| >= 0.1, far from the kink
    return xp.asarray(x, dtype=dtype)


def run_forward(case, x, seed=0):
    case.module.seed(seed)                                           # same dropout masks each time
    return case.module(x, *case.args)


@pytest.mark.parametrize("name", LAYERS)
def test_gradients_match_finite_differences(name, xp, rng, perturb, check_gradients):
    case = build(name, xp, np.float64, rng)
    perturb(case.module)
    x = make_input(case, xp, np.float64, rng)
    check_gradients(case.module, x, *case.args)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", LAYERS)
def test_output_and_input_gradient_shapes_and_dtypes(name, dtype, xp, rng):
    case = build(name, xp, dtype, rng)
    x = make_input(case, xp, dtype, rng)
    y = run_forward(case, x)
    assert tuple(y.shape) == case.out_shape
    assert y.dtype == dtype
    dx = case.module.backward(xp.asarray(rng.standard_normal(y.shape), dtype=dtype))
    assert tuple(dx.shape) == case.in_shape
    assert dx.dtype == dtype
    for pname, p in case.module.named_parameters():
        assert p.grad is not None and tuple(p.grad.shape) == tuple(p.shape), pname
        assert p.grad.dtype == dtype, pname


@pytest.mark.parametrize("name", LAYERS)
def test_backward_never_writes_into_its_input_or_upstream_gradient(name, xp, rng):
    case = build(name, xp, np.float64, rng)
    x = make_input(case, xp, np.float64, rng)
    x_before = to_numpy(x).copy()
    y = run_forward(case, x)
    dy = xp.asarray(rng.standard_normal(y.shape))
    dy_before = to_numpy(dy).copy()
    case.module.backward(dy)
    np.testing.assert_array_equal(to_numpy(x), x_before)
    np.testing.assert_array_equal(to_numpy(dy), dy_before)


@pytest.mark.parametrize("name", LAYERS)
def test_cache_is_released_by_backward_and_never_kept_under_no_grad(name, xp, rng):
    case = build(name, xp, np.float64, rng)
    x = make_input(case, xp, np.float64, rng)
    assert not case.module.has_cache()
    y = run_forward(case, x)
    assert case.module.has_cache()
    case.module.backward(xp.ones(y.shape))
    assert not case.module.has_cache()
    with pytest.raises(BackwardBeforeForwardError, match="nothing cached"):
        case.module.backward(xp.ones(y.shape))                      # one backward per forward

    with numpyvit.no_grad():
        y = run_forward(case, x)
    assert not case.module.has_cache()
    with pytest.raises(BackwardBeforeForwardError, match="no_grad"):
        case.module.backward(xp.ones(y.shape))

    case.module.eval()                                               # eval: dropout off, gradients still there
    y = run_forward(case, x)
    assert case.module.has_cache()
    case.module.backward(xp.ones(y.shape))
    assert not case.module.has_cache()


@pytest.mark.parametrize("name", WITH_PARAMETERS)
def test_parameter_gradients_accumulate_until_zero_grad(name, xp, rng):
    case = build(name, xp, np.float64, rng)
    x = make_input(case, xp, np.float64, rng)
    dy = xp.asarray(rng.standard_normal(case.out_shape))
    run_forward(case, x)
    case.module.backward(dy)
    once = {n: to_numpy(p.grad).copy() for n, p in case.module.named_parameters()}
    run_forward(case, x)
    case.module.backward(dy)
    for pname, p in case.module.named_parameters():
        np.testing.assert_allclose(to_numpy(p.grad), 2 * once[pname], rtol=1e-12, atol=1e-14, err_msg=pname)
    case.module.zero_grad()
    for pname, p in case.module.named_parameters():
        assert not to_numpy(p.grad).any(), pname


# ----------------------------------------------------------------------------------------------
# Part 2: each layer's math, names and refusals
# ----------------------------------------------------------------------------------------------
class TestLinear:
    def test_computes_x_times_weight_transposed_plus_bias(self, rng):
        layer = Linear(5, 4, dtype=np.float64, rng=rng)
        layer.bias.data[...] = rng.standard_normal(4)
        x = rng.standard_normal((2, 3, 5))
        assert layer.weight.shape == (4, 5)                         # (out, in), as in PyTorch
        np.testing.assert_allclose(layer(x), np.einsum("bti,oi->bto", x, layer.weight.data) + layer.bias.data,
                                   rtol=1e-13)

    def test_without_bias_has_only_a_weight(self):
        assert [n for n, _ in Linear(5, 4, bias=False).named_parameters()] == ["weight"]

    def test_refuses_input_of_the_wrong_width(self):
        with pytest.raises(ValueError, match=r"last axis is 5, got shape \(2, 3, 6\)"):
            Linear(5, 4)(np.zeros((2, 3, 6), np.float32))


class TestLayerNorm:
    def test_normalizes_the_last_axis_with_eps_1e_6(self, rng):
        layer = LayerNorm(6, dtype=np.float64)
        assert layer.eps == 1e-6
        layer.weight.data[...] = rng.standard_normal(6)
        layer.bias.data[...] = rng.standard_normal(6)
        x = 1e-3 * rng.standard_normal((2, 3, 6)) + 5.0           # variance ~1e-6: eps matters
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        expected = (x - mean) / np.sqrt(var + 1e-6) * layer.weight.data + layer.bias.data
        np.testing.assert_allclose(layer(x), expected, rtol=1e-10)

    def test_starts_as_the_identity_affine_map(self):
        layer = LayerNorm(6)
        np.testing.assert_array_equal(layer.weight.data, np.ones(6))
        np.testing.assert_array_equal(layer.bias.data, np.zeros(6))

    def test_refuses_input_of_the_wrong_width(self):
        with pytest.raises(ValueError, match=r"last axis is 6, got shape \(2, 3, 5\)"):
            LayerNorm(6)(np.zeros((2, 3, 5), np.float32))


class TestActivations:
    X = np.linspace(-7, 7, 1401)

    def test_gelu_is_exact_x_times_normal_cdf(self):
        expected = np.array([x * 0.5 * (1 + math.erf(x / math.sqrt(2))) for x in self.X])
        np.testing.assert_allclose(GELU()(self.X.copy()), expected, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(GELU()(self.X.astype(np.float32)), expected, rtol=1e-5, atol=1e-6)

    def test_gelu_tanh_is_the_tanh_approximation(self):
        x = self.X
        expected = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
        np.testing.assert_allclose(GELUTanh()(x.copy()), expected, rtol=1e-14, atol=1e-15)

    def test_the_two_gelus_are_different_functions(self):
        assert np.abs(GELU()(self.X.copy()) - GELUTanh()(self.X.copy())).max() > 1e-4

    def test_relu_is_max_x_0(self):
        np.testing.assert_array_equal(ReLU()(self.X.copy()), np.maximum(self.X, 0))

    @pytest.mark.parametrize("name, cls", [("gelu", GELU), ("gelu_tanh", GELUTanh), ("relu", ReLU)])
    def test_make_activation_by_name(self, name, cls):
        assert type(make_activation(name)) is cls

    def test_unknown_activation_is_refused_with_the_choices(self):
        with pytest.raises(ValueError, match="unknown activation 'swish'.*gelu, gelu_tanh, relu"):
            make_activation("swish")


def naive_attention(layer, x):
    """The textbook's attention (numpyvit.reference, no dropout) with the layer's weights."""
    bias = layer.qkv.bias.data if layer.qkv.bias is not None else None
    return reference.attention_forward(x, layer.qkv.weight.data, bias, layer.proj.weight.data, layer.proj.bias.data,
                                       layer.num_heads)[0]


class TestAttention:
    @pytest.mark.parametrize("qkv_bias", [True, False], ids=["qkv_bias", "no_qkv_bias"])
    def test_equals_a_head_by_head_reference(self, rng, perturb, qkv_bias):
        layer = perturb(Attention(8, 2, qkv_bias=qkv_bias, dtype=np.float64, rng=rng))
        x = rng.standard_normal((2, 7, 8))
        np.testing.assert_allclose(layer(x), naive_attention(layer, x), rtol=1e-12, atol=1e-13)

    def test_parameters_are_a_fused_qkv_and_an_output_projection(self):
        shapes = {n: p.shape for n, p in Attention(8, 2).named_parameters()}
        assert shapes == {"qkv.weight": (24, 8), "qkv.bias": (24,), "proj.weight": (8, 8), "proj.bias": (8,)}
        assert "qkv.bias" not in dict(Attention(8, 2, qkv_bias=False).named_parameters())

    def test_attention_dropout_acts_in_training_only(self, rng):
        layer = Attention(8, 2, attn_drop=0.5, rng=rng, dtype=np.float64)
        x = rng.standard_normal((2, 7, 8))
        train_out = layer.seed(0)(x)
        layer.backward(np.ones_like(train_out))
        layer.eval()
        assert not np.allclose(train_out, layer(x))
        np.testing.assert_allclose(layer(x), naive_attention(layer, x), rtol=1e-12, atol=1e-13)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
    def test_softmax_is_exact_for_rows_of_very_different_scale(self, dtype):
        s = np.array([[[0.0, 1.0, 2.0, 3.0], [-40.0, -41.0, -42.0, -40.5], [-1000.0, -1001.0, -1002.0, -999.0],
                       [500.0, 0.0, -500.0, 499.0]]], dtype=dtype)            # one (N, N) block of scores
        expected = np.exp(s - s.max(axis=-1, keepdims=True).astype(np.float64))
        expected /= expected.sum(axis=-1, keepdims=True)
        p = attention_softmax(s.copy())
        assert p.dtype == dtype and np.isfinite(p).all()
        np.testing.assert_allclose(p, expected, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-30)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
    @pytest.mark.parametrize("top", [63.0, 75.0, 100.0, 1000.0])
    def test_softmax_without_the_max_subtraction_is_exact_too(self, dtype, top):
        """exp(s) is tried without the subtraction; a row whose sum overflows or passes 1e30
        (top >= 75), or one far below the others that underflows, is redone with its own max,
        without an overflow warning."""
        s = np.array([[[0.0, 1.0, 2.0, top], [-200.0, -201.0, -202.0, -200.5], [-3.0, 0.0, 3.0, 0.5],
                       [10.0, 10.0, 10.0, 10.0]]], dtype=dtype)
        expected = np.exp(s - s.max(axis=-1, keepdims=True).astype(np.float64))
        expected /= expected.sum(axis=-1, keepdims=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            p = attention_softmax(s.copy())
        assert np.isfinite(p).all()
        np.testing.assert_allclose(p, expected, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-30)

    def test_softmax_keeps_nan_in_its_block(self):
        """A nan score makes its (image, head) block nan (its max is nan) and leaves the others."""
        s = np.array([[[0.0, np.nan, 1.0], [0.0, 1.0, 2.0], [5.0, 5.0, 5.0]],
                      [[0.0, 1.0, 2.0], [90.0, 0.0, 0.0], [5.0, 5.0, 5.0]]], dtype=np.float32)
        p = attention_softmax(s)
        assert np.isnan(p[0, 0]).all() and np.isfinite(p[1]).all()
        np.testing.assert_allclose(p[1, 2], 1 / 3, rtol=1e-6)
        np.testing.assert_allclose(p[1, 1], [1, 0, 0], atol=1e-30)

    def test_refuses_embed_dim_not_divisible_by_heads(self):
        with pytest.raises(ValueError, match=r"embed_dim \(10\) must be divisible by num_heads \(4\)"):
            Attention(10, 4)

    def test_refuses_input_without_a_token_axis(self):
        with pytest.raises(ValueError, match=r"tokens of shape \(B, N, 8\), got \(2, 8\)"):
            Attention(8, 2)(np.zeros((2, 8), np.float32))


class TestDropout:
    def test_eval_is_the_identity(self, rng):
        x = rng.standard_normal((4, 5))
        for layer in (Dropout(0.5), DropPath(0.5)):
            np.testing.assert_array_equal(layer.eval()(x), x)

    def test_zeroes_a_fraction_p_and_scales_the_rest_by_1_over_1_minus_p(self):
        x = np.ones((200, 500))
        y = Dropout(0.3).seed(0)(x)
        assert set(np.unique(y)) <= {0.0, 1 / 0.7}
        assert abs((y == 0).mean() - 0.3) < 0.01

    def test_drop_path_drops_whole_samples(self):
        x = np.ones((400, 3, 5))
        y = DropPath(0.25).seed(0)(x)
        per_sample = y.reshape(400, -1)
        assert (per_sample == per_sample[:, :1]).all()              # one decision per sample
        assert set(np.unique(per_sample)) == {0.0, 1 / 0.75}
        assert abs((per_sample[:, 0] == 0).mean() - 0.25) < 0.07

    def test_the_seed_fixes_the_mask(self, rng):
        x = rng.standard_normal((20, 30))
        layer = Dropout(0.5)
        first = layer.seed(3)(x)
        np.testing.assert_array_equal(layer.seed(3)(x), first)
        assert not np.array_equal(layer.seed(4)(x), first)

    @pytest.mark.parametrize("cls", [Dropout, DropPath])
    @pytest.mark.parametrize("p", [-0.1, 1.0])
    def test_refuses_a_probability_outside_0_1(self, cls, p):
        with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
            cls(p)


def convolve_kernel_equals_stride(x, weight, bias):
    """A direct loop over output positions of a convolution with kernel = stride = patch."""
    B, C, H, W = x.shape
    D, _, Ph, Pw = weight.shape
    Gh, Gw = H // Ph, W // Pw
    out = np.empty((B, Gh * Gw, D))
    for b in range(B):
        for i in range(Gh):
            for j in range(Gw):
                window = x[b, :, i * Ph:(i + 1) * Ph, j * Pw:(j + 1) * Pw]          # (C, Ph, Pw)
                for d in range(D):
                    out[b, i * Gw + j, d] = (window * weight[d]).sum() + bias[d]
    return out


class TestPatchEmbed:
    def test_weight_is_stored_like_a_convolution_kernel(self):
        layer = PatchEmbed((8, 12), 4, 3, 16)
        shapes = {n: p.shape for n, p in layer.named_parameters()}
        assert shapes == {"proj.weight": (16, 3, 4, 4), "proj.bias": (16,)}
        assert layer.grid_size == (2, 3) and layer.num_patches == 6

    @pytest.mark.parametrize("img_size, patch_size", [(8, 4), ((8, 12), 4), ((8, 12), (4, 3))],
                             ids=["square", "wide_image", "wide_image_rect_patch"])
    def test_equals_a_convolution_with_kernel_equal_to_stride(self, rng, img_size, patch_size):
        layer = PatchEmbed(img_size, patch_size, 3, 5, dtype=np.float64, rng=rng)
        H, W = layer.img_size
        x = rng.standard_normal((2, 3, H, W))
        expected = convolve_kernel_equals_stride(x, layer.proj.weight.data, layer.proj.bias.data)
        np.testing.assert_allclose(layer(x), expected, rtol=1e-12, atol=1e-13)

    def test_refuses_an_image_not_divisible_by_the_patch(self):
        with pytest.raises(ValueError, match="image size 10x12 is not divisible by patch size 4x4"):
            PatchEmbed((10, 12), 4, 3, 8)

    @pytest.mark.parametrize("img_size", [0, (8,), (8, 8, 8), (8, 0), 8.0])
    def test_refuses_a_malformed_image_size(self, img_size):
        with pytest.raises((ValueError, TypeError), match="img_size must be a positive int or a pair"):
            PatchEmbed(img_size, 4, 3, 8)

    def test_refuses_the_wrong_number_of_channels(self):
        with pytest.raises(ValueError, match=r"images of shape \(B, 3, 8, 12\), got \(2, 1, 8, 12\)"):
            PatchEmbed((8, 12), 4, 3, 8)(np.zeros((2, 1, 8, 12), np.float32))

    @pytest.mark.parametrize("shape", [(2, 3, 12, 8), (2, 3, 16, 6)], ids=["transposed", "same_pixel_count"])
    def test_refuses_an_image_of_another_size(self, shape):
        # these hold as many pixels as an 8x12 image, so a reshape alone does not notice
        with pytest.raises(ValueError, match="8x12|8, 12"):
            PatchEmbed((8, 12), 4, 3, 8)(np.zeros(shape, np.float32))


class TestTokens:
    def test_class_token_is_prepended_to_every_image(self, rng):
        token = table(np, rng, (1, 1, 8), np.float64)
        x = rng.standard_normal((3, 6, 8))
        y = ClassToken(token)(x)
        assert y.shape == (3, 7, 8)
        np.testing.assert_array_equal(y[:, 0], np.broadcast_to(token.data[0], (3, 8)))
        np.testing.assert_array_equal(y[:, 1:], x)

    def test_learned_1d_adds_one_vector_per_token(self, rng):
        pos = table(np, rng, (1, 7, 8), np.float64)
        x = rng.standard_normal((2, 7, 8))
        np.testing.assert_array_equal(LearnedPositionEmbedding(pos)(x), x + pos.data)

    def test_learned_2d_adds_row_plus_column_and_nothing_to_cls(self, rng):
        row, col = table(np, rng, (1, 2, 8), np.float64), table(np, rng, (1, 3, 8), np.float64)
        E = LearnedPositionEmbedding2D(row, col).table()
        assert E.shape == (1, 7, 8)
        np.testing.assert_array_equal(E[0, 0], np.zeros(8))
        for r in range(2):
            for c in range(3):
                np.testing.assert_array_equal(E[0, 1 + r * 3 + c], row.data[0, r] + col.data[0, c])

    def test_sincos_2d_is_row_half_then_column_half(self):
        D, (Gh, Gw) = 16, (3, 4)
        layer = SinCosPositionEmbedding2D((Gh, Gw), D, dtype=np.float64)
        assert list(layer.named_parameters()) == []
        E = layer.table()
        assert E.shape == (1, 1 + Gh * Gw, D)
        np.testing.assert_array_equal(E[0, 0], np.zeros(D))
        for r in range(Gh):
            for c in range(Gw):
                expected = []
                for pos in (r, c):                                   # first half rows, second half columns
                    w = [10000 ** (-i / (D // 4)) for i in range(D // 4)]
                    expected += [math.sin(pos * wi) for wi in w] + [math.cos(pos * wi) for wi in w]
                np.testing.assert_allclose(E[0, 1 + r * Gw + c], expected, rtol=1e-14, atol=1e-15)

    def test_sincos_refuses_a_width_not_divisible_by_4(self):
        with pytest.raises(ValueError, match="divisible by 4, got 10"):
            SinCosPositionEmbedding2D((2, 2), 10)

    def test_pools(self, rng):
        x = rng.standard_normal((2, 7, 8))
        np.testing.assert_array_equal(GlobalPool("token")(x), x[:, 0])
        np.testing.assert_allclose(GlobalPool("avg")(x), x[:, 1:].mean(axis=1), rtol=1e-14)

    def test_pool_refuses_an_unknown_kind(self):
        with pytest.raises(ValueError, match="global_pool must be 'token' or 'avg', got 'max'"):
            GlobalPool("max")


class TestMlpAndBlock:
    @pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "relu"])
    def test_mlp_is_fc2_of_act_of_fc1(self, rng, perturb, act):
        mlp = perturb(Mlp(8, 16, act, dtype=np.float64, rng=rng))
        x = rng.standard_normal((2, 7, 8))
        hidden = x @ mlp.fc1.weight.data.T + mlp.fc1.bias.data
        expected = make_activation(act).eval()(hidden) @ mlp.fc2.weight.data.T + mlp.fc2.bias.data
        np.testing.assert_allclose(mlp(x), expected, rtol=1e-12, atol=1e-13)

    def test_block_parameter_names_follow_timm(self):
        shapes = {n: p.shape for n, p in Block(8, 2, mlp_ratio=4.0).named_parameters()}
        assert shapes == {
            "norm1.weight": (8,), "norm1.bias": (8,),
            "attn.qkv.weight": (24, 8), "attn.qkv.bias": (24,), "attn.proj.weight": (8, 8), "attn.proj.bias": (8,),
            "norm2.weight": (8,), "norm2.bias": (8,),
            "mlp.fc1.weight": (32, 8), "mlp.fc1.bias": (32,), "mlp.fc2.weight": (8, 32), "mlp.fc2.bias": (8,),
        }

    def test_block_is_two_pre_norm_residual_branches(self, rng, perturb):
        block = perturb(Block(8, 2, mlp_ratio=2.0, dtype=np.float64, rng=rng)).eval()
        x = rng.standard_normal((2, 7, 8))
        h = x + naive_attention(block.attn, block.norm1(x))
        expected = h + block.mlp(block.norm2(h))
        np.testing.assert_allclose(block(x), expected, rtol=1e-12, atol=1e-13)

    @pytest.mark.parametrize("rows", [3, 30], ids=["applied", "folded"])
    def test_layernorm_then_linear_folded_or_not_is_the_plain_composition(self, rng, perturb, rows):
        norm, linear = perturb(LayerNorm(5, dtype=np.float64)), perturb(Linear(5, 6, dtype=np.float64, rng=rng))
        x, dy = rng.standard_normal((rows, 5)), rng.standard_normal((rows, 6))
        z, folded_norm = norm.input_for(x, linear)
        assert (folded_norm is norm) == (rows >= 6)
        y = linear(z, folded_norm)
        dx = norm.backward(linear.backward(dy))
        h, norm_cache = reference.layernorm_forward(x, norm.weight.data, norm.bias.data, norm.eps)   # the textbook
        y_plain, linear_cache = reference.linear_forward(h, linear.weight.data, linear.bias.data)
        np.testing.assert_allclose(y, y_plain, rtol=1e-12, atol=1e-13)
        dh, dW, db = reference.linear_backward(dy, linear_cache)
        dx_plain, dg, dbeta = reference.layernorm_backward(dh, norm_cache)
        np.testing.assert_allclose(dx, dx_plain, rtol=1e-10, atol=1e-12)
        grads = {"linear.weight": dW, "linear.bias": db, "norm.weight": dg, "norm.bias": dbeta}
        for name, p in [("linear.weight", linear.weight), ("linear.bias", linear.bias),
                        ("norm.weight", norm.weight), ("norm.bias", norm.bias)]:
            np.testing.assert_allclose(p.grad, grads[name], rtol=1e-10, atol=1e-12, err_msg=name)

    def test_block_for_the_first_tokens_is_those_rows_of_the_full_block(self, rng, perturb):
        block = perturb(Block(8, 2, mlp_ratio=2.0, dtype=np.float64, rng=rng))
        x, dy = rng.standard_normal((2, 7, 8)), rng.standard_normal((2, 7, 8))
        dy[:, 3:] = 0                                                # only the first 3 rows are used
        y_full = block(x)
        dx_full = block.backward(dy)
        grads_full = {name: p.grad.copy() for name, p in block.named_parameters()}
        block.zero_grad()
        y = block(x, 3)
        np.testing.assert_allclose(y, y_full[:, :3], rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(block.backward(dy[:, :3]), dx_full, rtol=1e-12, atol=1e-14)
        for name, p in block.named_parameters():
            np.testing.assert_allclose(p.grad, grads_full[name], rtol=1e-12, atol=1e-14, err_msg=name)


def reference_cross_entropy(logits, labels, smoothing):
    """-(1/B) sum_b sum_k q[b, k] log softmax(z)[b, k] with q = (1 - eps) onehot + eps / K."""
    B, K = logits.shape
    total = 0.0
    for b in range(B):
        log_p = logits[b] - math.log(sum(math.exp(z) for z in logits[b]))
        q = np.full(K, smoothing / K)
        q[labels[b]] += 1 - smoothing
        total -= (q * log_p).sum()
    return total / B


class TestCrossEntropyLoss:
    @pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
    def test_equals_the_label_smoothed_formula(self, rng, smoothing):
        logits, labels = 3 * rng.standard_normal((6, 5)), rng.integers(0, 5, 6)
        loss = CrossEntropyLoss(label_smoothing=smoothing)(logits, labels)
        assert np.shape(loss) == ()
        np.testing.assert_allclose(float(loss), reference_cross_entropy(logits, labels, smoothing), rtol=1e-13)

    def test_is_stable_for_huge_logits(self):
        logits = np.array([[1000.0, 0.0], [0.0, -1000.0]])
        assert float(CrossEntropyLoss()(logits, np.array([0, 0]))) == 0.0

    @pytest.mark.parametrize("smoothing", [0.0, 0.1])
    def test_equals_pytorch(self, rng, smoothing, torch):
        logits, labels = rng.standard_normal((6, 5)), rng.integers(0, 5, 6)
        z = torch.tensor(logits, requires_grad=True)
        expected = torch.nn.functional.cross_entropy(z, torch.tensor(labels), label_smoothing=smoothing)
        expected.backward()
        loss_fn = CrossEntropyLoss(label_smoothing=smoothing)
        np.testing.assert_allclose(float(loss_fn(logits, labels)), expected.item(), rtol=1e-13)
        np.testing.assert_allclose(loss_fn.backward(), z.grad.numpy(), rtol=1e-12, atol=1e-15)

    @pytest.mark.parametrize("smoothing", [-0.1, 1.0])
    def test_refuses_label_smoothing_outside_0_1(self, smoothing):
        with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
            CrossEntropyLoss(label_smoothing=smoothing)
