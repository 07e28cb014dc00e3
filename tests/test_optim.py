"""AdamW, the warmup + cosine schedule, global-norm clipping, and resuming an optimizer.

AdamW is checked against the textbook's (numpyvit.reference.adamw_step: the paper / PyTorch docs,
one parameter at a time in float64, bias-corrected moments, eps added after the square root,
decoupled weight decay), and against torch.optim.AdamW where PyTorch is installed.
"""
import math

import numpy as np
import pytest

from numpyvit import AdamW, CrossEntropyLoss, VisionTransformer, clip_grad_norm, reference, warmup_cosine
from numpyvit.layers import Parameter

LR, BETAS, EPS, WD = 3e-3, (0.9, 0.98), 1e-8, 0.1
STEPS = 5


def small_vit(**overrides):
    return VisionTransformer(**{**dict(img_size=8, patch_size=4, num_classes=4, embed_dim=8, depth=1,
                                       num_heads=2, dtype="float64"), **overrides})


def decayed_by_default(name, shape):
    """timm's rule, stated independently of the package: decay the matrices (and the patch
    kernel); never biases, norm weights, pos_embed or cls_token."""
    return name.endswith(".weight") and len(shape) >= 2


def adamw_reference(initial, grads_per_step, decayed, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD):
    """numpyvit.reference.adamw_step (Loshchilov & Hutter's AdamW as written in PyTorch's docs,
    one parameter at a time, in float64), with ``decayed`` {name: bool} for the decay rule."""
    params, state = {name: theta.astype(np.float64) for name, theta in initial.items()}, {}
    for grads in grads_per_step:
        reference.adamw_step(params, grads, state, lr, betas, eps, weight_decay,
                             decayed=lambda name, value: decayed[name])
    return params


def train_and_record(model, opt, rng, steps=STEPS):
    """Run ``steps`` optimizer steps on random batches; return the gradients fed to each step."""
    loss_fn = CrossEntropyLoss(label_smoothing=0.1)
    recorded = []
    for _ in range(steps):
        x, labels = rng.standard_normal((3, 3, 8, 8)), rng.integers(0, 4, 3)
        opt.zero_grad()
        loss_fn(model(x), labels)
        model.backward(loss_fn.backward())
        recorded.append({name: p.grad.copy() for name, p in model.named_parameters()})
        opt.step()
    return recorded


@pytest.fixture
def trained(rng, perturb):
    """A model trained STEPS steps with AdamW: (initial params, grads per step, final params, names->shape)."""
    model = perturb(small_vit(pos_embed="learned", global_pool="token"))
    initial = {name: p.data.copy() for name, p in model.named_parameters()}
    opt = AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    grads = train_and_record(model, opt, rng)
    final = {name: p.data.copy() for name, p in model.named_parameters()}
    shapes = {name: p.shape for name, p in model.named_parameters()}
    return initial, grads, final, shapes


def test_adamw_equals_the_closed_form_update(trained):
    initial, grads, final, shapes = trained
    decayed = {name: decayed_by_default(name, shape) for name, shape in shapes.items()}
    assert any(decayed.values()) and not all(decayed.values())
    expected = adamw_reference(initial, grads, decayed)
    for name in initial:
        np.testing.assert_allclose(final[name], expected[name], rtol=1e-12, atol=1e-15, err_msg=name)


def test_adamw_does_not_decay_biases_norms_pos_embed_or_cls_token(trained):
    initial, grads, final, shapes = trained
    decay_everything = adamw_reference(initial, grads, {name: True for name in shapes})
    for name in ("cls_token", "pos_embed", "patch_embed.proj.bias", "blocks.0.norm1.weight",
                 "blocks.0.attn.qkv.bias", "norm.weight", "head.bias"):
        assert not np.allclose(final[name], decay_everything[name], rtol=1e-9, atol=0), name
    for name in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "head.weight"):
        np.testing.assert_allclose(final[name], decay_everything[name], rtol=1e-12, atol=1e-15, err_msg=name)


def test_adamw_param_groups_take_their_own_lr_and_weight_decay(rng):
    a = Parameter(rng.standard_normal((3, 4)))
    b = Parameter(rng.standard_normal(5))
    opt = AdamW([{"params": [a], "lr": 0.01, "weight_decay": 0.5}, {"params": [b], "weight_decay": 0.0}],
                lr=0.002, betas=BETAS, eps=EPS)
    initial = {"a": a.data.copy(), "b": b.data.copy()}
    grads = []
    for _ in range(3):
        step = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
        a.grad[...], b.grad[...] = step["a"], step["b"]
        opt.step()
        grads.append(step)
    expected_a = adamw_reference({"a": initial["a"]}, grads, {"a": True}, lr=0.01, weight_decay=0.5)["a"]
    expected_b = adamw_reference({"b": initial["b"]}, grads, {"b": False}, lr=0.002, weight_decay=0.0)["b"]
    np.testing.assert_allclose(a.data, expected_a, rtol=1e-12)
    np.testing.assert_allclose(b.data, expected_b, rtol=1e-12)


def test_adamw_equals_pytorch(trained, torch):
    initial, grads, final, shapes = trained
    tensors = {name: torch.nn.Parameter(torch.tensor(value)) for name, value in initial.items()}
    groups = [{"params": [t for n, t in tensors.items() if decayed_by_default(n, shapes[n])]},
              {"params": [t for n, t in tensors.items() if not decayed_by_default(n, shapes[n])], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    for step in grads:
        for name, t in tensors.items():
            t.grad = torch.tensor(step[name])
        opt.step()
    for name, t in tensors.items():
        np.testing.assert_allclose(final[name], t.detach().numpy(), rtol=1e-12, atol=1e-15, err_msg=name)


def test_adamw_float32_equals_pytorch_float32(rng, torch):
    p = Parameter(rng.standard_normal((4, 6)).astype(np.float32))
    t = torch.nn.Parameter(torch.tensor(p.data.copy()))
    opt = AdamW([p], lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    ref = torch.optim.AdamW([t], lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    for _ in range(STEPS):
        g = rng.standard_normal((4, 6)).astype(np.float32)
        p.grad[...] = g
        t.grad = torch.tensor(g)
        opt.step()
        ref.step()
    assert p.data.dtype == np.float32
    np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-1.0), r"lr must be a finite number >= 0, got -1.0"),
    (dict(lr=float("nan")), r"lr must be a finite number >= 0, got nan"),
    (dict(lr=float("inf")), r"lr must be a finite number >= 0, got inf"),
    (dict(lr="0.1"), r"lr must be a finite number >= 0, got '0.1'"),
    (dict(betas=(0.9, 1.0)), r"beta2 must be a finite number \[0, 1\), got 1.0"),
    (dict(betas=(float("nan"), 0.9)), r"beta1 must be a finite number \[0, 1\), got nan"),
    (dict(betas=0.9), r"betas must be two numbers"),
    (dict(eps=-1e-8), r"eps must be a finite number >= 0"),
    (dict(eps=float("nan")), r"eps must be a finite number >= 0, got nan"),
    (dict(weight_decay=-0.1), r"weight_decay must be a finite number >= 0"),
    (dict(weight_decay=float("nan")), r"weight_decay must be a finite number >= 0, got nan"),
], ids=["lr-negative", "lr-nan", "lr-inf", "lr-string", "beta2-1", "beta1-nan", "betas-scalar", "eps-negative",
        "eps-nan", "wd-negative", "wd-nan"])
def test_adamw_refuses_invalid_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdamW([Parameter(np.zeros(3))], **kwargs)


def test_adamw_refuses_no_parameters_and_a_bad_learning_rate_later():
    with pytest.raises(ValueError, match="no parameters"):
        AdamW([])
    opt = AdamW([Parameter(np.zeros(3))])
    with pytest.raises(ValueError, match="lr must be a finite number >= 0, got nan"):
        opt.lr = float("nan")


@pytest.mark.parametrize("max_norm, message", [(float("nan"), "got nan"), (-1.0, "got -1.0"), (0.0, "above 0"),
                                               (float("inf"), "got inf")])
def test_clipping_refuses_a_max_norm_that_is_not_a_positive_finite_number(max_norm, message):
    p = Parameter(np.ones(3))
    opt = AdamW([p])
    p.grad[...] = 1.0
    with pytest.raises(ValueError, match=f"max_norm must .*{message}"):
        clip_grad_norm(opt, max_norm)
    np.testing.assert_array_equal(p.grad, 1.0)                       # the gradients untouched


# ----- schedule ----------------------------------------------------------------------------------
def test_warmup_cosine_values():
    base, low, warmup, total = 1e-3, 1e-5, 10, 110
    lr = [warmup_cosine(step, total, base, warmup_steps=warmup, min_lr=low) for step in range(total + 1)]
    assert lr[0] == pytest.approx(base / warmup)                    # start: first warmup step
    assert lr[warmup - 1] == pytest.approx(base)                    # end of warmup
    assert lr[warmup] == pytest.approx(base)                        # cosine starts at the top
    assert lr[warmup + 50] == pytest.approx((base + low) / 2)       # half way down the cosine
    assert lr[total] == pytest.approx(low)                          # end
    assert warmup_cosine(total + 50, total, base, warmup, low) == pytest.approx(low)
    assert all(a < b for a, b in zip(lr[:warmup], lr[1:warmup]))
    assert all(a >= b for a, b in zip(lr[warmup:], lr[warmup + 1:]))
    for step in range(warmup, total + 1):
        progress = (step - warmup) / (total - warmup)
        assert lr[step] == pytest.approx(low + (base - low) * (1 + math.cos(math.pi * progress)) / 2)


def test_warmup_cosine_without_warmup_starts_at_base_lr():
    assert warmup_cosine(0, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(100, 100, 0.1) == pytest.approx(0.0, abs=1e-15)


# ----- clipping ----------------------------------------------------------------------------------
def optimizer_with_grads(*grads):
    params = [Parameter(np.zeros_like(g)) for g in grads]
    opt = AdamW(params)
    for p, g in zip(params, grads):
        p.grad[...] = g
    return params, opt


def test_clip_grad_norm_returns_the_norm_and_scales_to_max_norm():
    params, opt = optimizer_with_grads(np.array([3.0, 0.0]), np.array([[4.0]]))   # global norm 5
    norm = clip_grad_norm(opt, max_norm=1.0)
    assert float(norm) == pytest.approx(5.0)
    clipped = math.sqrt(sum(float((p.grad ** 2).sum()) for p in params))
    assert clipped == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(params[0].grad, [0.6, 0.0], rtol=1e-5)          # direction kept
    np.testing.assert_allclose(params[1].grad, [[0.8]], rtol=1e-5)


def test_clip_grad_norm_leaves_small_gradients_alone():
    params, opt = optimizer_with_grads(np.array([3.0, 0.0]), np.array([[4.0]]))
    assert float(clip_grad_norm(opt, max_norm=10.0)) == pytest.approx(5.0)
    np.testing.assert_array_equal(params[0].grad, [3.0, 0.0])
    np.testing.assert_array_equal(params[1].grad, [[4.0]])


def test_clip_grad_norm_on_a_model_matches_numpy_norm(rng):
    model = small_vit()
    opt = AdamW(model.parameters())
    model(rng.standard_normal((2, 3, 8, 8)))
    model.backward(rng.standard_normal((2, 4)))
    expected = np.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))
    norm = clip_grad_norm(opt, max_norm=expected / 2)
    assert float(norm) == pytest.approx(expected, rel=1e-12)
    after = np.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))
    assert after == pytest.approx(expected / 2, rel=1e-5)


# ----- resuming ----------------------------------------------------------------------------------
def test_state_dict_round_trip_continues_bit_identically():
    """Train 6 steps in one go; train 3, save model + optimizer, rebuild both, load, train 3 more."""
    def batches():
        data_rng = np.random.default_rng(5)
        return [(data_rng.standard_normal((3, 3, 8, 8)), data_rng.integers(0, 4, 3)) for _ in range(6)]

    def step(model, opt, x, labels, index):
        loss_fn = CrossEntropyLoss()
        opt.lr = warmup_cosine(index, 6, LR, warmup_steps=2)
        opt.zero_grad()
        loss_fn(model(x), labels)
        model.backward(loss_fn.backward())
        clip_grad_norm(opt, 1.0)
        opt.step()

    config = dict(dtype="float32")
    data = batches()
    straight = small_vit(**config)
    opt = AdamW(straight.parameters(), lr=LR, weight_decay=WD)
    for i, (x, labels) in enumerate(data):
        step(straight, opt, x, labels, i)

    first = small_vit(**config)
    opt = AdamW(first.parameters(), lr=LR, weight_decay=WD)
    for i, (x, labels) in enumerate(data[:3]):
        step(first, opt, x, labels, i)
    model_state = {k: np.array(v, copy=True) for k, v in first.state_dict().items()}
    opt_state = {k: np.array(v, copy=True) for k, v in opt.state_dict().items()}
    del first, opt

    resumed = small_vit(seed=99, **config)                          # different init: the load must overwrite it
    resumed_opt = AdamW(resumed.parameters(), lr=0.5, weight_decay=0.0)   # and the settings
    resumed.load_state_dict(model_state)
    resumed_opt.load_state_dict(opt_state)
    assert resumed_opt.step_count == 3
    for i, (x, labels) in enumerate(data[3:], start=3):
        step(resumed, resumed_opt, x, labels, i)

    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)


def test_load_state_dict_refuses_another_optimizer_layout():
    a = AdamW([Parameter(np.zeros(3))])
    b = AdamW([Parameter(np.zeros(4))])
    with pytest.raises(ValueError, match=r"groups.0.exp_avg has shape \(3,\), expected \(4,\)"):
        b.load_state_dict(a.state_dict())
    two_groups = AdamW([Parameter(np.zeros((2, 2))), Parameter(np.zeros(2), weight_decay=False)])
    with pytest.raises(ValueError, match="different parameter groups"):
        two_groups.load_state_dict(a.state_dict())
