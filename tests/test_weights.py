"""numpyvit.weights: safetensors and JAX .npz files read exactly, hostile files refused with a clear
error, position embeddings resampled, and create_model(name, weights=FILE) as timm users expect.
(Parity with timm and PyTorch themselves: tests/test_timm_parity.py, where they are installed.)"""
import json
import struct

import numpy as np
import pytest

import numpyvit
from numpyvit.weights import (JaxCheckpointError, SafetensorsError, WeightsError, from_jax, read_jax_npz,
                              read_safetensors, resample_pos_embed, save_weights, to_jax, write_safetensors)
from numpyvit.weights.resample import cubic, resize_weights

TINY = dict(depth=2, seed=1)                                         # vit_tiny_patch16_224 with 2 blocks


def raw_file(path, header, data=b"", header_len=None):
    """A safetensors file from a header dict (or raw bytes) and data bytes, exactly as given."""
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded) if header_len is None else header_len) + encoded + data)
    return path


# ----- safetensors -------------------------------------------------------------------------------
def test_safetensors_round_trip_keeps_every_dtype_and_shape(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(5),
               "c": np.arange(6, dtype=np.int64).reshape(2, 3), "d": np.array(1.5, np.float16), "e": np.zeros((0, 3))}
    write_safetensors(tmp_path / "t.safetensors", tensors, {"note": "hello"})
    read, meta = read_safetensors(tmp_path / "t.safetensors")
    assert meta == {"note": "hello"} and set(read) == set(tensors)
    for name, value in tensors.items():
        expected = value.astype(np.float32) if value.dtype == np.float16 else value       # F16 widened
        assert read[name].dtype == expected.dtype and read[name].shape == value.shape, name
        np.testing.assert_array_equal(read[name], expected)
    header_len = struct.unpack("<Q", (tmp_path / "t.safetensors").read_bytes()[:8])[0]
    assert header_len % 8 == 0                                        # data 8-byte aligned, like the reference


def test_bfloat16_is_widened_exactly(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 1e-3, 65504.0, -0.0], np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2")               # bfloat16 = the top 16 bits
    raw_file(tmp_path / "bf.safetensors", {"w": {"dtype": "BF16", "shape": [6], "data_offsets": [0, 12]}},
             bits.tobytes())
    (read,), _ = zip(*[(t["w"], m) for t, m in [read_safetensors(tmp_path / "bf.safetensors")]])
    np.testing.assert_array_equal(read, (bits.astype(np.uint32) << 16).view(np.float32))
    assert read.dtype == np.float32 and abs(read[3] - 1e-3) < 1e-5


def test_reading_maps_the_file_instead_of_copying_it(tmp_path):
    write_safetensors(tmp_path / "m.safetensors", {"w": np.ones((256, 256), np.float32)})
    tensors, _ = read_safetensors(tmp_path / "m.safetensors")
    assert not tensors["w"].flags.writeable and not tensors["w"].flags.owndata       # a view of the mapping


GOOD = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}


@pytest.mark.parametrize("header, data, header_len, message", [
    (GOOD, b"\0" * 16, 10**6, r"header claims 1000000 bytes but the file has"),
    (b"{not json", b"", None, r"header is not valid JSON"),
    (b"[1, 2]", b"", None, r"header must be a JSON object"),
    ({"w": {"dtype": "F8", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2, None, r"tensor 'w': unknown dtype 'F8'"),
    ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 32]}}, b"\0" * 16, None,
     r"tensor 'w': data_offsets \[0, 32\] fall outside the 16 bytes"),
    ({"w": {"dtype": "F32", "shape": [3, 2], "data_offsets": [0, 16]}}, b"\0" * 16, None,
     r"tensor 'w': shape \[3, 2\] of F32 needs 24 bytes but data_offsets \[0, 16\] hold 16"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "v": {"dtype": "F32", "shape": [2],
                                                                         "data_offsets": [4, 12]}},
     b"\0" * 12, None, r"tensors 'w' and 'v' overlap"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b"", None, r"non-negative integers"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "code": "import os"}}, b"\0" * 4, None,
     r"needs exactly dtype, shape and data_offsets"),
    ({"__metadata__": {"a": 1}}, b"", None, r"__metadata__ must map strings to strings"),
])
def test_a_hostile_or_broken_safetensors_file_is_refused_by_name(tmp_path, header, data, header_len, message):
    path = raw_file(tmp_path / "bad.safetensors", header, data, header_len)
    with pytest.raises(SafetensorsError, match=message) as err:
        read_safetensors(path)
    assert str(path) in str(err.value)


def test_a_file_shorter_than_its_length_field_is_refused(tmp_path):
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(SafetensorsError, match="too short"):
        read_safetensors(tmp_path / "short.safetensors")


# ----- the original JAX layout -------------------------------------------------------------------------
def test_each_jax_conversion_on_a_hand_made_example():
    """D = 4, H = 2 heads of d = 2, F = 3, P = 2, C = 1, K = 2, one block."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((4, 2, 2)) for _ in range(3))            # (D, H, d)
    qb, kb, vb = (rng.standard_normal((2, 2)) for _ in range(3))             # (H, d)
    out, patch = rng.standard_normal((2, 2, 4)), rng.standard_normal((2, 2, 1, 4))
    jax = {"embedding/kernel": patch, "embedding/bias": np.zeros(4), "cls": np.ones((1, 1, 4)),
           "Transformer/posembed_input/pos_embedding": np.ones((1, 5, 4)),
           "Transformer/encoder_norm/scale": np.ones(4), "Transformer/encoder_norm/bias": np.zeros(4),
           "head/kernel": rng.standard_normal((4, 2)), "head/bias": np.zeros(2),
           "pre_logits/kernel": np.zeros((4, 4))}
    block = "Transformer/encoderblock_0/"
    for name, kernel, bias in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
        jax[f"{block}MultiHeadDotProductAttention_1/{name}/kernel"] = kernel
        jax[f"{block}MultiHeadDotProductAttention_1/{name}/bias"] = bias
    jax[f"{block}MultiHeadDotProductAttention_1/out/kernel"], jax[f"{block}MultiHeadDotProductAttention_1/out/bias"] = \
        out, np.zeros(4)
    for norm in ("LayerNorm_0", "LayerNorm_2"):
        jax[f"{block}{norm}/scale"], jax[f"{block}{norm}/bias"] = np.ones(4), np.zeros(4)
    fc1, fc2 = rng.standard_normal((4, 3)), rng.standard_normal((3, 4))
    jax.update({f"{block}MlpBlock_3/Dense_0/kernel": fc1, f"{block}MlpBlock_3/Dense_0/bias": np.zeros(3),
                f"{block}MlpBlock_3/Dense_1/kernel": fc2, f"{block}MlpBlock_3/Dense_1/bias": np.zeros(4)})
    state = from_jax({"opt/target/" + name: value for name, value in jax.items()})      # a prefix is removed
    x = rng.standard_normal(4)
    # q = x @ W_q in JAX (per head, then heads side by side) must equal the first D rows of qkv
    np.testing.assert_allclose(state["blocks.0.attn.qkv.weight"] @ x,
                               np.concatenate([np.einsum("i,ihd->hd", x, w).reshape(-1) for w in (q, k, v)]))
    np.testing.assert_allclose(state["blocks.0.attn.qkv.bias"], np.concatenate([qb.ravel(), kb.ravel(), vb.ravel()]))
    o = rng.standard_normal((2, 2))                                   # one token's heads (H, d)
    np.testing.assert_allclose(state["blocks.0.attn.proj.weight"] @ o.reshape(-1), np.einsum("hd,hdo->o", o, out))
    np.testing.assert_allclose(state["blocks.0.mlp.fc1.weight"] @ x, x @ fc1)
    np.testing.assert_allclose(state["head.weight"] @ x, x @ jax["head/kernel"])
    p = rng.standard_normal((2, 2, 1))                                # one patch (P, P, C)
    np.testing.assert_allclose(np.einsum("dcij,ijc->d", state["patch_embed.proj.weight"], p),
                               np.einsum("ijc,ijcd->d", p, patch))    # the conv of a patch, both layouts
    assert "pre_logits" not in " ".join(state)
    back = to_jax(state, num_heads=2)
    for name, value in back.items():
        np.testing.assert_allclose(value, jax[name], err_msg=name)


def test_a_model_written_in_the_jax_layout_loads_back_to_the_same_logits(tmp_path, rng):
    model = numpyvit.create_model("vit_tiny_patch16_224", **TINY)
    state = {name: np.asarray(value) for name, value in model.state_dict().items()}
    np.savez(tmp_path / "ViT-Ti_16.npz", **to_jax(state, num_heads=3))
    loaded = numpyvit.create_model("vit_tiny_patch16_224", weights=tmp_path / "ViT-Ti_16.npz", depth=2)
    x = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    with model.inference(), loaded.inference():
        np.testing.assert_array_equal(loaded(x), model(x))


def test_a_jax_file_with_unknown_or_missing_tensors_is_refused(tmp_path, rng):
    state = {n: np.asarray(v) for n, v in numpyvit.create_model("vit_tiny_patch16_224", **TINY).state_dict().items()}
    jax = to_jax(state, num_heads=3)
    np.savez(tmp_path / "extra.npz", **jax, **{"Transformer/encoderblock_0/Adapter/kernel": np.zeros(3)})
    with pytest.raises(JaxCheckpointError, match=r"extra.npz: tensors numpyvit's ViT does not have: .*Adapter"):
        read_jax_npz(tmp_path / "extra.npz")
    del jax["Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias"]
    np.savez(tmp_path / "missing.npz", **jax)
    with pytest.raises(JaxCheckpointError, match=r"missing.npz: missing tensor .*encoderblock_1/MlpBlock_3/Dense_1/bias"):
        read_jax_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "pickled.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(WeightsError, match="pickled.npz"):
        numpyvit.create_model("vit_tiny_patch16_224", weights=tmp_path / "pickled.npz")


# ----- position embeddings ------------------------------------------------------------------------------
def test_resampling_to_the_same_grid_is_the_identity(rng):
    table = rng.standard_normal((1, 1 + 14 * 14, 8)).astype(np.float32)
    assert resample_pos_embed(table, (14, 14)) is table
    np.testing.assert_allclose(resize_weights(9, 9), np.eye(9), atol=1e-15)


def test_resampling_weights_follow_the_antialiased_bicubic_formula():
    W = resize_weights(4, 2)                                          # shrink 2x: support 4, kernel stretched 2x
    for i, center in enumerate((1.0, 3.0)):
        w = cubic((np.arange(4) + 0.5 - center) / 2.0)
        np.testing.assert_allclose(W[i], w / w.sum())
    np.testing.assert_allclose(resize_weights(5, 13).sum(axis=1), 1.0)
    assert cubic(np.array([0.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.0]
    # Keys' kernel with a = -0.5 (PIL's and PyTorch's antialiased bicubic; a = -0.75 is OpenCV's and
    # PyTorch's plain one) at known points: k(1/2) = 9/16, k(3/2) = -1/16, k(1/4) = 111/128
    assert cubic(np.array([0.5, 1.5, 0.25, -1.25])).tolist() == [9 / 16, -1 / 16, 111 / 128, -9 / 128]
    np.testing.assert_allclose(resize_weights(2, 4)[0], np.array([111, -9]) / 102, rtol=1e-15)   # 2 -> 4
    up = resize_weights(2, 4) @ np.array([1.0, 1.0])                  # a constant stays constant
    np.testing.assert_allclose(up, 1.0)


# timm's outputs for table = (arange(10) ** 2 / 10).reshape(1, 10, 1), a 3x3 grid after [CLS], made once
# (timm 1.0.31, torch 2.14.1) by resample_abs_pos_embed(torch.from_numpy(table), new, [3, 3],
# num_prefix_tokens=1); timm interpolates in float32, hence the 1e-6.
TIMM_RESAMPLED = {
    (5, 4): [0.0, -0.02651361562311649, 0.114534892141819, 0.42910152673721313, 0.7199803590774536,
             0.453096479177475, 0.7334856390953064, 1.2510122060775757, 1.6812318563461304, 1.5529851913452148,
             2.0869035720825195, 2.9737136363983154, 3.6574625968933105, 3.740933656692505, 4.52838134765625,
             5.784475326538086, 6.7217535972595215, 5.068332672119141, 5.995121002197266, 7.454174995422363,
             8.530794143676758],
    (2, 2): [0.0, 0.6349496245384216, 1.4437012672424316, 4.204535961151123, 6.156619071960449],
}


@pytest.mark.parametrize("new", TIMM_RESAMPLED, ids=["3x3_to_5x4", "3x3_to_2x2"])
def test_resampling_gives_timms_stored_outputs(new):
    table = (np.arange(10.0) ** 2 / 10).reshape(1, 10, 1)
    np.testing.assert_allclose(resample_pos_embed(table, new, (3, 3))[0, :, 0], TIMM_RESAMPLED[new], atol=1e-6)


def test_resampling_keeps_the_prefix_and_resizes_the_grid(rng):
    table = rng.standard_normal((1, 1 + 4 * 6, 3))
    out = resample_pos_embed(table, (8, 3), old_grid=(4, 6))
    assert out.shape == (1, 1 + 24, 3)
    np.testing.assert_array_equal(out[:, 0], table[:, 0])
    grid = table[0, 1:].reshape(4, 6, 3)
    expected = np.einsum("ai,ijd,bj->abd", resize_weights(4, 8), grid, resize_weights(6, 3))
    np.testing.assert_allclose(out[0, 1:].reshape(8, 3, 3), expected)
    with pytest.raises(ValueError, match="a 5x5 grid needs 25"):
        resample_pos_embed(table, (2, 2), old_grid=(5, 5))


# ----- create_model(name, weights=...) --------------------------------------------------------------------
@pytest.fixture
def tiny_weights(tmp_path):
    model = numpyvit.create_model("vit_tiny_patch16_224", **TINY)
    save_weights(model, tmp_path / "model.safetensors", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    return model, tmp_path / "model.safetensors"


def test_weights_load_to_identical_logits_and_carry_their_preprocessing(tiny_weights, rng, backend, xp):
    model, path = tiny_weights
    loaded = numpyvit.create_model("vit_tiny_patch16_224", weights=path, depth=2, backend=backend)
    x = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    with model.inference(), loaded.inference():
        np.testing.assert_allclose(numpyvit.to_numpy(loaded(x)), model(x), rtol=1e-5, atol=1e-6)
    assert loaded.pretrained_cfg["mean"] == [0.485, 0.456, 0.406] and loaded.pretrained_cfg["crop_pct"] == 0.9


def test_another_number_of_classes_gets_a_fresh_head_and_another_size_resampled_positions(tiny_weights):
    model, path = tiny_weights
    new = numpyvit.create_model("vit_tiny_patch16_224", weights=path, depth=2, num_classes=7, img_size=(160, 256))
    assert new.head.weight.shape == (7, 192) and new.pos_embed.shape == (1, 1 + 10 * 16, 192)
    np.testing.assert_array_equal(new.head.bias.data, 0)
    assert 0.005 < new.head.weight.data.std() < 0.03                 # trunc_normal(0.02), like a new model
    np.testing.assert_array_equal(new.blocks[1].mlp.fc2.weight.data, model.blocks[1].mlp.fc2.weight.data)
    expected = resample_pos_embed(model.pos_embed.data, (10, 16))
    np.testing.assert_allclose(new.pos_embed.data, expected, rtol=1e-6)
    gray = numpyvit.create_model("vit_tiny_patch16_224", weights=path, depth=2, in_chans=1)
    np.testing.assert_allclose(gray.patch_embed.proj.weight.data, model.patch_embed.proj.weight.data.sum(axis=1,
                               keepdims=True), rtol=1e-6)


def test_weights_that_do_not_fit_are_refused_naming_the_tensor(tiny_weights, tmp_path):
    model, path = tiny_weights
    with pytest.raises(WeightsError, match=r"another architecture than vit_tiny_patch16_224: depth 12 \(preset\) "
                                           r"vs 2 \(file\)"):
        numpyvit.create_model("vit_tiny_patch16_224", weights=path)   # the file's config says 2 blocks
    write_safetensors(tmp_path / "bare.safetensors", model.state_dict())          # tensors only, as timm's
    with pytest.raises(WeightsError, match=r"missing keys: blocks\.2\..*\(\d+ more\)"):
        numpyvit.create_model("vit_tiny_patch16_224", weights=tmp_path / "bare.safetensors")
    with pytest.raises(WeightsError, match=r"shape mismatch: cls_token: checkpoint \(1, 1, 192\) vs model \(1, 1, 384\).*"
                                            r"\(\d+ more\)"):
        numpyvit.create_model("vit_small_patch16_224", weights=tmp_path / "bare.safetensors", depth=2)
    with pytest.raises(WeightsError, match="no weights file at"):
        numpyvit.create_model("vit_tiny_patch16_224", weights=tmp_path / "nowhere.safetensors")
    with pytest.raises(ValueError, match="unknown preset 'vit_tiny_patch16'. Did you mean"):
        numpyvit.create_model("vit_tiny_patch16", weights=path)


def test_a_numpyvit_checkpoint_is_weights_too(tmp_path, rng):
    model = numpyvit.create_model("mnist_tiny", depth=1)
    numpyvit.io.save_model(model, tmp_path / "run" / "checkpoint.npz")
    loaded = numpyvit.create_model(None, weights=tmp_path / "run", num_classes=3)
    assert loaded.config["depth"] == 1 and loaded.head.weight.shape == (3, 64)
    np.testing.assert_array_equal(loaded.blocks[0].attn.qkv.weight.data, model.blocks[0].attn.qkv.weight.data)


def test_init_false_draws_nothing_and_costs_no_memory():
    model = numpyvit.create_model("mnist_tiny", init=False)
    assert "init" not in model.config
    assert all(p.data.shape for p in model.parameters())
    seeded = numpyvit.create_model("mnist_tiny")                     # the generator was not consumed either
    assert np.array_equal(seeded.head.weight.data, numpyvit.create_model("mnist_tiny").head.weight.data)
