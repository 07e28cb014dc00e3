"""The VisionTransformer as a whole: gradients end to end, inputs and outputs, modes, seeds,
parameters and their gradients, memory, and the timm presets.

Small models throughout (8x12 images, 4x4 patches, D=8, two blocks, two heads); only the
preset tests build real-size models, one at a time.
"""
import gc

import numpy as np
import pytest

import numpyvit
from numpyvit import VisionTransformer, create_model
from numpyvit.backend import to_numpy
from numpyvit.layers import BackwardBeforeForwardError, Parameter

SMALL = dict(img_size=(8, 12), patch_size=4, in_chans=3, num_classes=5, embed_dim=8, depth=2, num_heads=2)


def small_vit(backend="numpy", **overrides):
    return VisionTransformer(**{**SMALL, "backend": backend, **overrides})


def images(rng, xp=np, batch=2, dtype=np.float32, size=(8, 12)):
    return xp.asarray(rng.standard_normal((batch, 3, *size)), dtype=dtype)


# ----- gradients -----------------------------------------------------------------------------------
# Together these cover every position embedding, both pools and every activation; dropout,
# attention dropout and drop path are on (gradcheck re-seeds the masks before each forward).
GRADCHECK_CONFIGS = {
    "learned-token-gelu": dict(pos_embed="learned", global_pool="token", act="gelu"),
    "learned_2d-avg-gelu_tanh": dict(pos_embed="learned_2d", global_pool="avg", act="gelu_tanh"),
    "sincos-token-relu": dict(pos_embed="sincos", global_pool="token", act="relu"),
    "sincos-avg-gelu-no_qkv_bias": dict(pos_embed="sincos", global_pool="avg", act="gelu", qkv_bias=False),
}


@pytest.mark.parametrize("config", GRADCHECK_CONFIGS.values(), ids=GRADCHECK_CONFIGS.keys())
def test_gradients_match_finite_differences(config, xp, backend, rng, perturb, check_gradients):
    model = small_vit(backend, dtype="float64", drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.3,
                      seed=3, **config)
    perturb(model)
    check_gradients(model, images(rng, xp, dtype=np.float64), max_elements=30)


def test_cls_only_last_block_gives_the_full_models_logits_and_gradients(rng, perturb):
    # forward_stages runs the last block for the [CLS] token alone; here against every block in full
    model = perturb(small_vit(dtype="float64", seed=3))
    assert model._cls_only_last_block()
    x = images(rng, dtype=np.float64)
    dlogits = rng.standard_normal((2, SMALL["num_classes"]))

    def logits_and_gradients():
        model.zero_grad()
        logits = model(x)
        return logits, model.backward(dlogits), {name: p.grad.copy() for name, p in model.named_parameters()}

    fast = logits_and_gradients()
    model._cls_only_last_block = lambda: False
    full = logits_and_gradients()
    np.testing.assert_allclose(fast[0], full[0], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(fast[1], full[1], rtol=1e-12, atol=1e-15)
    for name in full[2]:
        np.testing.assert_allclose(fast[2][name], full[2][name], rtol=1e-12, atol=1e-15, err_msg=name)


# ----- input and output --------------------------------------------------------------------------
def test_logits_are_batch_by_classes_in_float32_by_default(xp, backend, rng):
    logits = small_vit(backend)(images(rng, xp, batch=3))
    assert tuple(logits.shape) == (3, 5)
    assert logits.dtype == np.float32
    assert isinstance(logits, xp.ndarray)


def test_float64_model_gives_float64_logits(xp, backend, rng):
    model = small_vit(backend, dtype="float64")
    assert all(p.data.dtype == np.float64 for p in model.parameters())
    assert small_vit(backend, dtype="float64")(images(rng, xp)).dtype == np.float64


def test_non_square_images(rng):
    model = small_vit(img_size=(8, 12))
    assert model.patch_embed.grid_size == (2, 3)
    assert model.pos_embed.shape == (1, 1 + 6, 8)
    assert model(images(rng, size=(8, 12))).shape == (2, 5)
    dx = model.backward(np.ones((2, 5), np.float32))
    assert dx.shape == (2, 3, 8, 12)


def test_numpy_input_is_accepted_on_every_backend(xp, backend, rng):
    logits = small_vit(backend)(images(rng))                        # a NumPy array, whatever the backend
    assert isinstance(logits, xp.ndarray) and logits.shape == (2, 5)


def test_float64_input_to_a_float32_model_is_cast(rng):
    model = small_vit().eval()
    x64 = images(rng, dtype=np.float64)
    logits = model(x64)
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(logits, model(x64.astype(np.float32)))
    assert x64.dtype == np.float64                                  # the caller's array is untouched


# ----- modes and seeds ---------------------------------------------------------------------------
def test_eval_is_deterministic_and_train_dropout_follows_the_seed(rng):
    model = small_vit(drop_rate=0.3, attn_drop_rate=0.3, drop_path_rate=0.3)
    x = images(rng)
    model.eval()
    first = model(x)
    np.testing.assert_array_equal(model(x), first)
    model.seed(123)
    np.testing.assert_array_equal(model(x), first)                  # eval ignores the masks

    model.train()
    a = model.seed(1)(x)
    b = model.seed(1)(x)
    c = model.seed(2)(x)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a, first)


def test_without_dropout_train_and_eval_agree(rng):
    model = small_vit()
    x = images(rng)
    train_logits = model(x)
    model.backward(np.zeros_like(train_logits))
    np.testing.assert_array_equal(model.eval()(x), train_logits)


def test_the_same_seed_gives_the_same_weights():
    a, b, c = small_vit(seed=7), small_vit(seed=7), small_vit(seed=8)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(pa.data, pb.data, err_msg=name)
    assert not np.array_equal(a.head.weight.data, c.head.weight.data)


def test_init_follows_timm():
    model = small_vit(embed_dim=64)
    assert np.abs(model.cls_token.data).max() < 1e-4                # N(0, 1e-6)
    assert 0.01 < model.pos_embed.data.std() < 0.03                 # truncated N(0, 0.02)
    assert np.abs(model.pos_embed.data).max() <= 0.04
    assert 0.01 < model.blocks[0].attn.qkv.weight.data.std() < 0.03
    assert not model.blocks[0].attn.qkv.bias.data.any()
    np.testing.assert_array_equal(model.norm.weight.data, np.ones(64))


# ----- parameters and gradients ------------------------------------------------------------------
def test_named_parameters_yield_name_and_parameter(rng):
    model = small_vit()
    named = list(model.named_parameters())
    assert len({name for name, _ in named}) == len(named)
    for name, param in named:
        assert isinstance(name, str) and isinstance(param, Parameter)
        assert param.grad is None and param.data.dtype == np.float32
    y = model(images(rng))
    model.backward(np.ones_like(y))
    for name, param in model.named_parameters():
        assert param.grad.shape == param.data.shape and param.grad.dtype == param.data.dtype, name
    assert model.num_parameters() == sum(p.data.size for _, p in named)


def test_gradients_accumulate_over_two_backward_calls_and_zero_grad_clears_them(xp, backend, rng):
    model = small_vit(backend, dtype="float64")
    x, dy = images(rng, xp, dtype=np.float64), xp.asarray(rng.standard_normal((2, 5)))
    model(x)
    model.backward(dy)
    once = {name: to_numpy(p.grad).copy() for name, p in model.named_parameters()}
    model(x)
    model.backward(dy)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(to_numpy(p.grad), 2 * once[name], rtol=1e-12, atol=1e-15, err_msg=name)
    model.zero_grad()
    for name, p in model.named_parameters():
        assert not to_numpy(p.grad).any(), name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_training_step_keeps_the_model_dtype_everywhere(xp, backend, rng, dtype):
    """Every layer's output and input gradient, the loss, every gradient, the clipping norm and
    AdamW's state stay in the model's dtype, under NumPy 1.x's promotion rules as under 2.x's
    (1.x widens a float32 0-d array combined with a Python float to float64)."""
    import numpyvit
    from numpyvit.engine import tuning

    model = small_vit(backend, dtype=dtype, drop_rate=0.1, drop_path_rate=0.1, pos_embed="learned_2d")
    seen = []

    def checked(layer, method):
        inner = getattr(layer, method)

        def call(*args, **kwargs):
            out = inner(*args, **kwargs)
            seen.append((type(layer).__name__, method, out.dtype))
            return out
        return call

    for layer in model.modules():
        for method in ("forward", "backward", "normalize"):
            if hasattr(layer, method):
                setattr(layer, method, checked(layer, method))
    loss_fn, optimizer = numpyvit.CrossEntropyLoss(0.1), numpyvit.AdamW(model.parameters(), lr=1e-3)
    with tuning.forced("blas"):                                      # one copy of the layers: all are seen
        loss = loss_fn(model(images(rng, xp, dtype=np.dtype(dtype))), xp.asarray([0, 1]))
        dlogits = loss_fn.backward()
        model.backward(dlogits)
    norm = numpyvit.clip_grad_norm(optimizer, 0.5)
    optimizer.step()
    assert {str(d) for _, _, d in seen} == {dtype}, [s for s in seen if str(s[2]) != dtype]
    assert len(seen) > 50
    assert (loss.dtype, dlogits.dtype, norm.dtype) == (np.dtype(dtype),) * 3
    for name, p in model.named_parameters():
        assert p.data.dtype == dtype and p.grad.dtype == dtype, name
    for group in optimizer.groups:
        assert {group.data.dtype, group.grad.dtype, group.exp_avg.dtype, group.exp_avg_sq.dtype} == {np.dtype(dtype)}


def test_every_parameter_gets_a_nonzero_gradient(rng):
    model = small_vit(dtype="float64", pos_embed="learned_2d")
    model(images(rng, dtype=np.float64))
    model.backward(rng.standard_normal((2, 5)))
    for name, p in model.named_parameters():
        assert np.abs(p.grad).max() > 0, name


def test_weight_decay_flags_exclude_biases_norms_and_embeddings():
    for pos_embed in ("learned", "learned_2d"):
        for name, p in small_vit(pos_embed=pos_embed, global_pool="avg").named_parameters():
            decayed = name.endswith("weight") and len(p.shape) >= 2    # the matrices (and the patch kernel)
            assert p.weight_decay == decayed, name


# ----- memory ------------------------------------------------------------------------------------
def test_training_forward_caches_and_backward_releases(xp, backend, rng):
    model = small_vit(backend, drop_rate=0.1, drop_path_rate=0.1)
    assert not model.has_cache()
    logits = model(images(rng, xp))
    assert model.has_cache()
    model.backward(xp.ones_like(logits))
    assert not model.has_cache()


def test_no_grad_forward_caches_nothing_and_backward_then_refuses(xp, backend, rng):
    import numpyvit

    model = small_vit(backend)
    with numpyvit.no_grad():
        logits = model(images(rng, xp))
    assert not model.has_cache()
    with pytest.raises(BackwardBeforeForwardError, match="no_grad"):
        model.backward(xp.ones_like(logits))
    with model.inference():                                          # eval + no_grad, mode restored after
        model(images(rng, xp))
    assert model.training and not model.has_cache()


def test_gradients_in_eval_mode_are_those_of_the_model_without_dropout(rng):
    """eval() switches dropout and drop path off; backward still works (as in PyTorch), e.g. to
    explain a prediction with the gradient of a logit."""
    x, dy = images(rng, dtype=np.float64), rng.standard_normal((2, 5))
    noisy = small_vit(dtype="float64", drop_rate=0.3, drop_path_rate=0.3, attn_drop_rate=0.3).eval()
    clean = small_vit(dtype="float64")
    dx_noisy = (noisy(x), noisy.backward(dy))[1]
    dx_clean = (clean(x), clean.backward(dy))[1]
    np.testing.assert_allclose(dx_noisy, dx_clean, rtol=1e-12, atol=1e-15)
    for (name, p), q in zip(noisy.named_parameters(), clean.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-12, atol=1e-15, err_msg=name)


def test_attention_maps_are_probabilities_and_leave_no_cache(rng):
    model = small_vit()
    maps = model.attention_maps(images(rng))
    assert len(maps) == 2
    for p in maps:
        assert p.shape == (2, 2, 7, 7)                              # (B, heads, T, T)
        np.testing.assert_allclose(p.sum(axis=-1), 1, rtol=1e-5)
    assert model.training and not model.has_cache()


# ----- presets -----------------------------------------------------------------------------------
TIMM_COUNTS = {  # timm.create_model(name).num_params, 1000 classes
    "vit_tiny_patch16_224": 5_717_416,
    "vit_small_patch16_224": 22_050_664,
    "vit_base_patch16_224": 86_567_656,
    "vit_large_patch16_224": 304_326_632,
    "vit_huge_patch14_224": 632_045_800,
}


def timm_state_dict_shapes(depth, D, patch, C=3, img=224, classes=1000, mlp_ratio=4):
    """Names and shapes of timm's VisionTransformer state_dict (class token, learned pos_embed)."""
    N = (img // patch) ** 2
    shapes = {"cls_token": (1, 1, D), "pos_embed": (1, N + 1, D),
              "patch_embed.proj.weight": (D, C, patch, patch), "patch_embed.proj.bias": (D,)}
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({
            b + "norm1.weight": (D,), b + "norm1.bias": (D,),
            b + "attn.qkv.weight": (3 * D, D), b + "attn.qkv.bias": (3 * D,),
            b + "attn.proj.weight": (D, D), b + "attn.proj.bias": (D,),
            b + "norm2.weight": (D,), b + "norm2.bias": (D,),
            b + "mlp.fc1.weight": (mlp_ratio * D, D), b + "mlp.fc1.bias": (mlp_ratio * D,),
            b + "mlp.fc2.weight": (D, mlp_ratio * D), b + "mlp.fc2.bias": (D,),
        })
    shapes.update({"norm.weight": (D,), "norm.bias": (D,), "head.weight": (classes, D), "head.bias": (classes,)})
    return shapes


def check_preset(name, depth, D, patch):
    model = create_model(name)
    try:
        assert model.num_parameters() == TIMM_COUNTS[name]
        shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
        assert shapes == timm_state_dict_shapes(depth, D, patch)
        assert model.dtype == np.float32
    finally:
        del model
        gc.collect()


@pytest.mark.parametrize("name, depth, D, patch", [
    ("vit_tiny_patch16_224", 12, 192, 16),
    ("vit_small_patch16_224", 12, 384, 16),
    ("vit_base_patch16_224", 12, 768, 16),
])
def test_preset_matches_timm(name, depth, D, patch):
    check_preset(name, depth, D, patch)


@pytest.mark.parametrize("name, depth, D, patch", [
    ("vit_large_patch16_224", 24, 1024, 16),
    ("vit_huge_patch14_224", 32, 1280, 14),
])
def test_big_preset_matches_timm(name, depth, D, patch):
    """Builds 1.2 GB (large) and 2.5 GB (huge) of float32 weights, one model at a time."""
    check_preset(name, depth, D, patch)


def test_preset_keywords_can_be_overridden(rng):
    model = create_model("vit_tiny_patch16_224", img_size=32, num_classes=10, depth=1)
    assert model.head.weight.shape == (10, 192)
    assert model.pos_embed.shape == (1, 1 + 4, 192)
    assert model(rng.standard_normal((1, 3, 32, 32))).shape == (1, 10)


def test_every_preset_name_follows_timm():
    timm_names = {f"vit_{s}_patch{p}_224" for s, p in [("tiny", 16), ("small", 16), ("base", 16), ("large", 16),
                                                       ("huge", 14)]}
    assert timm_names <= set(numpyvit.PRESETS)
