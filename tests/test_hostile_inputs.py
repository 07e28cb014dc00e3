"""Hostile and careless inputs: every one ends in numpyvit's own InputError (or is handled right),
with a message naming the file and what was expected; nothing crashes, hangs on memory or passes
silently. Each case is one that once went wrong (a raw RecursionError, TypeError, OverflowError,
IndexError, MemoryError, ZeroDivisionError, a Pillow exception, or wrong weights without a word)."""
import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import numpyvit
from numpyvit.data import images as photos
from numpyvit.data import load_image_folder
from numpyvit.errors import ConfigError, InputError
from numpyvit.io import CheckpointError, save_arrays
from numpyvit.weights import JaxCheckpointError, SafetensorsError, read_jax_npz, read_safetensors
from numpyvit.weights import save_weights, to_jax, write_safetensors
from scripts import load_script

TINY = dict(depth=2, seed=1)                                         # vit_tiny_patch16_224 with 2 blocks


def raw_safetensors(path, header, data=b""):
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


# ----- safetensors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("header, message", [
    (b"[" * 10_000 + b"]" * 10_000, "nests JSON more than 64 deep"),
    ({"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, "unknown dtype \\['F32'\\]"),
    ({"w": {"dtype": {"a": 1}, "shape": [1], "data_offsets": [0, 4]}}, "unknown dtype"),
    ({"w": {"dtype": "F32", "shape": [2**64], "data_offsets": [0, 4]}}, "needs 73786976294838206464 bytes"),
    ({"w": {"dtype": "F32", "shape": [2**62 + 1, 4], "data_offsets": [0, 4]}}, "needs 73786976294838206480 bytes"),
    (b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
     b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', "names 'w' twice"),
], ids=["nested-10000", "dtype-list", "dtype-dict", "shape-2**64", "shape-overflows-int64", "duplicate-name"])
def test_a_hostile_safetensors_header_is_refused(tmp_path, header, message):
    path = raw_safetensors(tmp_path / "bad.safetensors", header, b"\0" * 4)
    with pytest.raises(SafetensorsError, match=f"bad.safetensors.*{message}"):
        read_safetensors(path)


def test_big_endian_arrays_are_written_as_the_same_numbers(tmp_path):
    values = np.arange(6, dtype=">f4").reshape(2, 3)
    write_safetensors(tmp_path / "be.safetensors", {"w": values})
    np.testing.assert_array_equal(read_safetensors(tmp_path / "be.safetensors")[0]["w"], values)
    with pytest.raises(SafetensorsError, match="tensor 'c' has dtype complex128; the format holds"):
        write_safetensors(tmp_path / "c.safetensors", {"c": np.zeros(2, complex)})


# ----- weight metadata --------------------------------------------------------------------------------
@pytest.fixture
def weights_with(tmp_path):
    """A tiny vit_tiny safetensors file whose metadata holds the given raw strings."""
    model = numpyvit.create_model("vit_tiny_patch16_224", **TINY)

    def write(**metadata):
        path = tmp_path / "w.safetensors"
        write_safetensors(path, model.state_dict(), dict(dict(config=json.dumps(model.config)), **metadata))
        return path
    return write


@pytest.mark.parametrize("metadata, message", [
    (dict(config=json.dumps(dict(numpyvit.presets.preset_config("vit_tiny_patch16_224"), depth=2, blocks=3))),
     "unknown model setting 'blocks'"),
    (dict(config="[1, 2]"), "config must be a mapping"),
    (dict(config="{not json"), "metadata 'config' is not valid JSON"),
    (dict(classes='"cat"'), "classes must be a list of class names"),
    (dict(crop_pct="0"), "crop_pct must be a number in \\[0.25, 1\\]"),
    (dict(crop_pct="1e-9"), "crop_pct must be a number in \\[0.25, 1\\]"),
    (dict(crop_pct="0.0005"), "crop_pct must be a number in \\[0.25, 1\\]"),
    (dict(mean="[0.5, 0.5]"), "mean must be one finite number or three"),
    (dict(std="[0.5, 0, 0.5]"), "std must be at least 0.001"),
    (dict(std="1e-300"), "std must be at least 0.001"),
    (dict(mean="NaN"), "mean must be one finite number or three"),
], ids=["config-unknown-key", "config-list", "config-not-json", "classes-string", "crop-0", "crop-1e-9",
        "crop-0.0005", "mean-two", "std-zero", "std-1e-300", "mean-nan"])
def test_weight_metadata_is_checked_before_use(weights_with, metadata, message):
    path = weights_with(**metadata)
    with pytest.raises(InputError, match=f"w.safetensors.*{message}"):
        numpyvit.create_model(None, weights=path)


def test_an_unknown_setting_for_create_model_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown model setting 'num_head' \\(did you mean 'num_heads'\\?\\)"):
        numpyvit.create_model("mnist_tiny", num_head=4)
    with pytest.raises(ConfigError, match="mlp_ratio must be a positive number, got 'wide'"):
        numpyvit.create_model("mnist_tiny", mlp_ratio="wide")
    with pytest.raises(ConfigError, match="dtype must be float32 or float64, got 'float16'"):
        numpyvit.create_model("mnist_tiny", dtype="float16")
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        numpyvit.create_model("mnist_tiny", num_heads=5)


# ----- JAX .npz ---------------------------------------------------------------------------------------
@pytest.fixture
def jax_arrays():
    state = {n: np.asarray(v) for n, v in numpyvit.create_model("vit_tiny_patch16_224", **TINY).state_dict().items()}
    return to_jax(state, num_heads=3)


QUERY = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/"


@pytest.mark.parametrize("name, change, message", [
    (QUERY + "kernel", lambda k: k.transpose(1, 2, 0), "query/kernel \\(3, 64, 192\\), expected \\(D, H, d\\)"),
    (QUERY + "bias", lambda b: b.T, "query/bias \\(64, 3\\), expected \\(3, 64\\)"),
    ("Transformer/encoderblock_1/LayerNorm_0/scale", lambda s: np.float32(1.0), "LayerNorm_0/scale \\(\\), expected"),
    ("Transformer/encoderblock_0/MultiHeadDotProductAttention_1/out/kernel", lambda k: k.reshape(192, 3, 64),
     "out/kernel \\(192, 3, 64\\), expected \\(3, 64, 192\\)"),
    (QUERY + "bias", lambda b: np.zeros(b.shape, "V4"), "tensors that are not numbers: .*query/bias \\(\\|V4\\)"),
], ids=["query-kernel-(H,d,D)", "qkv-bias-(d,H)", "layernorm-scale-0d", "out-kernel-(D,H,d)", "void-dtype (found by fuzzing)"])
def test_a_jax_tensor_in_another_layout_is_refused_not_loaded_wrong(tmp_path, jax_arrays, name, change, message):
    jax_arrays[name] = change(jax_arrays[name])
    np.savez(tmp_path / "j.npz", **jax_arrays)
    with pytest.raises(JaxCheckpointError, match=f"j.npz.*({message})"):
        read_jax_npz(tmp_path / "j.npz")


def test_a_jax_member_is_checked_before_it_is_inflated(tmp_path, jax_arrays, monkeypatch):
    """A 342 MB tensor of zeros compresses to a few hundred KB; its shape is refused from its header."""
    jax_arrays["embedding/bias"] = np.zeros(90_000_000, np.float32)
    np.savez_compressed(tmp_path / "bomb.npz", **jax_arrays)
    assert (tmp_path / "bomb.npz").stat().st_size < 6_000_000      # 360 MB inflated
    read = []
    monkeypatch.setattr(numpyvit.io, "_npy_data", lambda *a: read.append(a[2]))
    with pytest.raises(JaxCheckpointError, match="embedding/bias \\(90000000,\\), expected \\(192,\\)"):
        read_jax_npz(tmp_path / "bomb.npz")
    assert read == []                                                # no member was read


def test_a_member_whose_header_claims_terabytes_is_refused(tmp_path, jax_arrays):
    """An .npy header saying 8 TiB of float64 in front of 16 bytes: refused from the header."""
    import io
    import zipfile
    np.savez(tmp_path / "claim.npz", **jax_arrays)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, dict(descr="<f8", fortran_order=False, shape=(2**40,)))
    with zipfile.ZipFile(tmp_path / "claim.npz", "a") as archive:
        archive.writestr("pre_logits/kernel.npy", header.getvalue() + b"\0" * 16)
    with pytest.raises(JaxCheckpointError, match="claim.npz: array 'pre_logits/kernel': its header says float64 "
                                                 "\\(1099511627776,\\) \\(8796093022208 bytes\\) but the archive "
                                                 "declares 16 bytes"):
        read_jax_npz(tmp_path / "claim.npz")


# ----- photos -------------------------------------------------------------------------------------------
def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def forged_png(path, width, height):
    """A ~100-byte PNG whose header claims width x height 8-bit gray pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + png_chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    path = forged_png(tmp_path / "bomb.png", 30000, 30000)
    assert path.stat().st_size < 200
    with pytest.raises(photos.ImageError, match="bomb.png has more pixels than numpyvit reads \\(1 to 64 megapixels"):
        photos.load_image(path)


@pytest.mark.parametrize("width", [30000, 3000])
def test_an_extreme_strip_is_refused_before_the_resize(tmp_path, width):
    Image.new("L", (width, 1), 128).save(tmp_path / "strip.png")
    with pytest.raises(photos.ImageError, match=f"strip.png is {width} x 1 pixels: covering 248 x 248 would resize"):
        photos.eval_transform(tmp_path / "strip.png", 224, 0.5, 0.5)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    gray = np.asarray(photos.load_image(tmp_path / "deep.png", channels=1))
    np.testing.assert_allclose(gray, np.rint(ramp / 257.0), atol=1)
    assert 0 < np.median(gray) < 255


def test_classify_reports_a_bad_photo_in_one_line_and_goes_on(tmp_path, capsys):
    classify = load_script("demos/classify.py")
    model = numpyvit.create_model("vit_tiny_patch16_224", depth=1, num_classes=3, img_size=32)
    save_weights(model, tmp_path / "w.safetensors")
    forged_png(tmp_path / "bomb.png", 30000, 30000)
    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "ok.png")
    assert classify.main(["--weights", str(tmp_path / "w.safetensors"), str(tmp_path / "bomb.png"),
                          str(tmp_path / "ok.png")]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "bomb.png has more pixels than" in err and "Traceback" not in err
    assert "ok.png:" in out                                          # the next photo is still classified


# ----- image folders ---------------------------------------------------------------------------------------
@pytest.fixture
def two_classes(tmp_path):
    for name, colour in (("cats", (200, 0, 0)), ("dogs", (0, 200, 0))):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (12, 12), colour).save(tmp_path / "data" / name / f"{i}.png")
    return tmp_path / "data"


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "birds").mkdir(), "class folder .*birds holds no images"),
    (lambda root: ((root / "birds").mkdir(), (root / "birds" / "notes.txt").write_text("x")),
     "class folder .*birds holds no images"),
    (lambda root: os.symlink(root / "birds", root / "birds"), "class folder .*birds cannot be listed"),
    (lambda root: forged_png(root / "dogs" / "9.png", 30000, 30000), "9.png has more pixels than"),
    (lambda root: forged_png(root / "dogs" / "7.png", 9000, 9000), "7.png is 9000 x 9000 pixels"),
    (lambda root: (root / "dogs" / "8.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken"), "8.png could not be read"),
], ids=["empty-class", "no-images", "symlink-loop", "bomb-inside", "81-megapixels-inside", "truncated-inside"])
def test_a_broken_image_folder_is_refused_naming_the_culprit(two_classes, damage, message):
    damage(two_classes)
    with pytest.raises(InputError, match=message):
        load_image_folder(two_classes, img_size=8)


# ----- checkpoints and runs ----------------------------------------------------------------------------
@pytest.fixture
def interrupted_run(tmp_path):
    """A run of 2 epochs stopped mid-epoch (a checkpoint with train.order), and how to resume it."""
    from test_train import tiny_dataset
    ds = tiny_dataset()
    config = numpyvit.train.TrainConfig(epochs=2, batch_size=8, eval_batch_size=16, lr=1e-3, log_every=1)

    def model():
        return numpyvit.VisionTransformer(img_size=28, patch_size=7, in_chans=1, num_classes=len(ds.classes),
                                          embed_dim=8, depth=1, num_heads=2)
    numpyvit.train.fit(model(), ds, config, tmp_path / "run", log=None)
    path = tmp_path / "run" / "checkpoint.npz"
    arrays, meta = numpyvit.io.load_arrays(path)
    meta["epoch_step"], meta["partial"] = 1, dict(loss_sum=1.0, correct=1, seen=8, seconds=0.1)
    arrays["train.order"] = np.random.default_rng(0).permutation(len(ds.train_labels))

    def resume_with(**changes):
        edited, extra = dict(meta), dict(arrays)
        for key, value in changes.items():
            if key == "order":
                extra["train.order"] = value
            else:
                edited[key] = value
        save_arrays(path, extra, {k: v for k, v in edited.items() if k != "format"})
        return numpyvit.train.fit(model(), ds, config, tmp_path / "run", resume=True, log=None)
    return resume_with


@pytest.mark.parametrize("change, message", [
    (dict(order=np.array(-1)), "train.order must be an ordering of the"),
    (dict(order=np.zeros(40, np.int64)), "train.order must be an ordering of the"),
    (dict(epoch="three"), "epoch must be a whole number >= 0"),
    (dict(history={"a": 1}), "history must be a list"),
    (dict(rng={"data": [1, 2, 3], "dropout": None, "ranks": None}), "random-generator states are damaged"),
    (dict(partial=None), "partial must hold"),
    (dict(epoch_step=10**6), "past the .* steps of an epoch"),
    (dict(config=[1, 2]), "config must be a mapping"),
], ids=["order-scalar", "order-not-a-permutation", "epoch-string", "history-dict", "rng-garbage", "partial-none",
        "epoch-step-too-far", "config-list"])
def test_a_damaged_training_state_is_refused(interrupted_run, change, message):
    with pytest.raises(CheckpointError, match=f"checkpoint.npz.*{message}"):
        interrupted_run(**change)


def test_finetune_writes_nothing_when_it_refuses_the_run(tmp_path, capsys):
    finetune = load_script("demos/finetune.py")
    out = tmp_path / "ft"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes(b"an earlier run")
    (out / "finetune.json").write_text('{"data": "earlier"}')
    model = numpyvit.create_model("vit_tiny_patch16_224", depth=1, num_classes=2, img_size=32)
    save_weights(model, tmp_path / "w.safetensors")
    assert finetune.main(["--weights", str(tmp_path / "w.safetensors"), "--data", "mnist", "--out", str(out)]) == 2
    assert (out / "finetune.json").read_text() == '{"data": "earlier"}'
    assert "already holds a checkpoint" in capsys.readouterr().err
