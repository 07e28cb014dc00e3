"""Bad input is refused with a ValueError or TypeError that says what was expected.

Each test names the mistake; the ``match`` fragments are the part of the message a user needs
to fix it. (Backend names are in test_backend.py, checkpoint files in test_io.py.)
"""
import re

import numpy as np
import pytest

from numpyvit import CrossEntropyLoss, VisionTransformer, create_model
from numpyvit.layers import BackwardBeforeForwardError, LayerNorm, Linear

SMALL = dict(img_size=(8, 12), patch_size=4, in_chans=3, num_classes=5, embed_dim=8, depth=1, num_heads=2)


@pytest.fixture
def model():
    return VisionTransformer(**SMALL)


# ----- images --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 8, 12), (2, 3, 8, 12, 1), (96,)], ids=["3d", "5d", "1d"])
def test_images_of_the_wrong_rank(model, shape):
    with pytest.raises(ValueError, match=re.escape(f"images must have shape (B, 3, 8, 12), got {shape}")):
        model(np.zeros(shape, np.float32))


def test_grayscale_images_without_a_channel_axis_get_a_hint():
    model = VisionTransformer(**{**SMALL, "in_chans": 1})
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 12\).*add the channel axis"):
        model(np.zeros((2, 8, 12), np.float32))


def test_channel_mismatch(model):
    with pytest.raises(ValueError, match=r"images must have 3 channel\(s\).*got 1 channels.*in_chans=1"):
        model(np.zeros((2, 1, 8, 12), np.float32))


@pytest.mark.parametrize("size", [(12, 8), (16, 16), (8, 13)])
def test_image_size_not_matching_the_model(model, size):
    with pytest.raises(ValueError, match=f"images must be 8x12 for this model, got {size[0]}x{size[1]}"):
        model(np.zeros((2, 3, *size), np.float32))


@pytest.mark.parametrize("img_size, patch_size", [(10, 4), ((8, 12), 5), ((8, 12), (4, 5))])
def test_image_size_not_divisible_by_the_patch_size(img_size, patch_size):
    with pytest.raises(ValueError, match="is not divisible by patch size"):
        VisionTransformer(**{**SMALL, "img_size": img_size, "patch_size": patch_size})


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.bool_, np.complex64])
def test_non_float_images(model, dtype):
    with pytest.raises(TypeError, match=f"images must be floating point, got {np.dtype(dtype).name}"):
        model(np.zeros((2, 3, 8, 12), dtype))


def test_images_that_are_not_an_array(model):
    with pytest.raises(TypeError, match="images must be a NumPy or CuPy array, got list"):
        model([[[[0.0] * 12] * 8] * 3] * 2)


def test_upstream_gradient_of_the_wrong_shape(model):
    model(np.zeros((2, 3, 8, 12), np.float32))
    with pytest.raises(ValueError, match=r"dlogits must have the logits' shape \(2, 5\), got \(2, 4\)"):
        model.backward(np.zeros((2, 4), np.float32))


# ----- model configuration ---------------------------------------------------------------------------
def test_embed_dim_not_divisible_by_num_heads():
    with pytest.raises(ValueError, match=r"embed_dim \(10\) must be divisible by num_heads \(4\)"):
        VisionTransformer(**{**SMALL, "embed_dim": 10, "num_heads": 4})


@pytest.mark.parametrize("key, value, fragment", [
    ("pos_embed", "rope", "pos_embed must be one of learned, learned_2d, sincos, got 'rope'"),
    ("global_pool", "max", "global_pool must be 'token' or 'avg', got 'max'"),
    ("act", "swish", "unknown activation 'swish'"),
    ("dtype", "float16", "dtype must be float32 or float64, got 'float16'"),
    ("depth", 0, "depth must be a positive integer, got 0"),
    ("num_classes", 2.5, "num_classes must be a positive integer, got 2.5"),
    ("embed_dim", 10, "sincos position embedding needs embed_dim divisible by 4"),
])
def test_bad_model_settings(key, value, fragment):
    config = {**SMALL, key: value}
    if key == "embed_dim":
        config.update(num_heads=2, pos_embed="sincos")
    with pytest.raises(ValueError, match=re.escape(fragment)):
        VisionTransformer(**config)


def test_unknown_preset_suggests_close_names():
    with pytest.raises(ValueError, match="unknown preset 'vit_tiny_patch16_225'. Did you mean vit_tiny_patch16_224"):
        create_model("vit_tiny_patch16_225")
    with pytest.raises(ValueError, match="unknown preset 'resnet50'.*Available: .*vit_base_patch16_224"):
        create_model("resnet50")


# ----- labels ----------------------------------------------------------------------------------------
@pytest.fixture
def logits():
    return np.zeros((3, 5), np.float32)


@pytest.mark.parametrize("labels", [[0, 1, 5], [-1, 0, 0]], ids=["too_big", "negative"])
def test_labels_out_of_range(logits, labels):
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\] for 5 classes"):
        CrossEntropyLoss()(logits, np.array(labels))


@pytest.mark.parametrize("labels", [np.zeros(2, int), np.zeros((3, 1), int), np.zeros((3, 5), int)],
                         ids=["too_few", "column", "one_hot"])
def test_labels_of_the_wrong_shape(logits, labels):
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        CrossEntropyLoss()(logits, labels)


@pytest.mark.parametrize("labels", [np.array([0.0, 1.0, 2.0]), np.array([True, False, True])], ids=["float", "bool"])
def test_non_integer_labels(logits, labels):
    with pytest.raises(TypeError, match="labels must be integer class indices"):
        CrossEntropyLoss()(logits, labels)


def test_logits_that_are_not_a_matrix():
    with pytest.raises(ValueError, match=r"logits must have shape \(B, num_classes\)"):
        CrossEntropyLoss()(np.zeros((3, 5, 1)), np.zeros(3, int))


# ----- backward before forward ---------------------------------------------------------------------
def test_backward_before_forward_error_is_a_runtime_and_value_error():
    assert issubclass(BackwardBeforeForwardError, RuntimeError)
    assert issubclass(BackwardBeforeForwardError, ValueError)


@pytest.mark.parametrize("module", [Linear(4, 3), LayerNorm(4), CrossEntropyLoss(), VisionTransformer(**SMALL)],
                         ids=["Linear", "LayerNorm", "CrossEntropyLoss", "VisionTransformer"])
def test_backward_before_forward(module):
    with pytest.raises(BackwardBeforeForwardError, match=f"{type(module).__name__}.backward\\(\\) called with "
                                                         "nothing cached.*run forward\\(\\) first, outside numpyvit.no_grad"):
        module.backward(np.zeros((2, 3), np.float32))


def test_a_second_backward_needs_a_second_forward(model):
    logits = model(np.zeros((2, 3, 8, 12), np.float32))
    model.backward(np.ones_like(logits))
    with pytest.raises(BackwardBeforeForwardError, match="once per backward"):
        model.backward(np.ones_like(logits))


# ----- load_state_dict -----------------------------------------------------------------------------
def test_load_state_dict_names_missing_keys(model):
    state = model.state_dict()
    del state["head.bias"], state["blocks.0.norm1.weight"]
    with pytest.raises(ValueError, match="missing keys: blocks.0.norm1.weight, head.bias"):
        model.load_state_dict(state)


def test_load_state_dict_names_unexpected_keys(model):
    state = {**model.state_dict(), "blocks.7.attn.qkv.weight": np.zeros((24, 8), np.float32)}
    with pytest.raises(ValueError, match="unexpected keys: blocks.7.attn.qkv.weight"):
        model.load_state_dict(state)


def test_load_state_dict_names_mis_shaped_keys(model):
    state = {**model.state_dict(), "head.weight": np.zeros((10, 8), np.float32)}
    with pytest.raises(ValueError, match=r"shape mismatch: head.weight: checkpoint \(10, 8\) vs model \(5, 8\)"):
        model.load_state_dict(state)


def test_load_state_dict_reports_every_problem_and_changes_nothing(model):
    before = {k: v.copy() for k, v in model.state_dict().items()}
    state = {k: v + 1 for k, v in model.state_dict().items()}
    del state["norm.bias"]
    state["extra"] = np.zeros(1)
    state["cls_token"] = np.zeros((1, 2, 8))
    with pytest.raises(ValueError, match=r"missing keys: norm.bias \| unexpected keys: extra \| shape mismatch: cls_token"):
        model.load_state_dict(state)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
