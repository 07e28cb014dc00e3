"""Saving and loading: identical logits after a round trip, atomic writes, and refusing files
that are unsafe (pickle), damaged (truncated, random bytes) or for another architecture.
"""
import json
import os

import numpy as np
import pytest

from numpyvit import VisionTransformer
from numpyvit.backend import to_numpy
from numpyvit.io import CheckpointError, load_arrays, load_model, save_arrays, save_model

SMALL = dict(img_size=(8, 12), patch_size=4, num_classes=5, embed_dim=8, depth=2, num_heads=2)


def small_vit(**overrides):
    return VisionTransformer(**{**SMALL, **overrides})


@pytest.fixture
def x(rng):
    return rng.standard_normal((2, 3, 8, 12)).astype(np.float32)


@pytest.fixture
def saved(tmp_path, perturb):
    """A trained-looking (perturbed) model saved to tmp_path/model.npz: (model, path)."""
    model = perturb(small_vit(seed=1))
    path = tmp_path / "model.npz"
    save_model(model, path, epoch=3)
    return model, path


# ----- round trip ------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [{}, dict(pos_embed="learned_2d", global_pool="avg", act="gelu_tanh"),
                                    dict(pos_embed="sincos", dtype="float64", qkv_bias=False)],
                         ids=["default", "learned_2d-avg", "sincos-float64"])
def test_round_trip_gives_identical_logits(tmp_path, perturb, x, config):
    model = perturb(small_vit(seed=1, **config))
    save_model(model, tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz")
    assert loaded.config == json.loads(json.dumps(model.config))      # tuples come back as lists
    for (name, a), (_, b) in zip(model.named_parameters(), loaded.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)
    np.testing.assert_array_equal(loaded.eval()(x), model.eval()(x))


def test_round_trip_onto_a_backend(saved, x, xp, backend):
    model, path = saved
    loaded = load_model(path, backend=backend)
    assert loaded.xp is xp
    np.testing.assert_allclose(to_numpy(loaded.eval()(xp.asarray(x))), model.eval()(x), rtol=1e-5, atol=1e-6)


def test_a_run_folder_holding_checkpoint_npz_loads(tmp_path, saved, x):
    model, path = saved
    os.replace(path, tmp_path / "checkpoint.npz")
    np.testing.assert_array_equal(load_model(tmp_path).eval()(x), model.eval()(x))


def test_files_hold_named_arrays_and_metadata(saved):
    model, path = saved
    arrays, meta = load_arrays(path)
    assert set(arrays) == {f"model.{name}" for name, _ in model.named_parameters()}
    assert meta["epoch"] == 3 and meta["config"]["embed_dim"] == 8


# ----- atomic writes -----------------------------------------------------------------------------------
def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temp_file(saved, monkeypatch, x):
    model, path = saved
    expected = model.eval()(x)
    before = path.read_bytes()

    def savez_that_dies_midway(file, **arrays):
        file.write(b"PK\x03\x04 half a zip archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", savez_that_dies_midway)
    with pytest.raises(OSError, match="disk full"):
        save_model(small_vit(seed=2), path)
    monkeypatch.undo()

    assert sorted(os.listdir(path.parent)) == [path.name]           # no temporary file left behind
    assert path.read_bytes() == before
    np.testing.assert_array_equal(load_model(path).eval()(x), expected)


def test_saving_over_an_existing_file_replaces_it(saved, x):
    _, path = saved
    other = small_vit(seed=5)
    save_model(other, path)
    np.testing.assert_array_equal(load_model(path).eval()(x), other.eval()(x))
    assert sorted(os.listdir(path.parent)) == [path.name]


# ----- unsafe or damaged files -------------------------------------------------------------------------
def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, **{"model.head.weight": np.array([{"run": "code"}], dtype=object),
                      "__meta__": np.frombuffer(b"{}", dtype=np.uint8)})
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(path)


def test_a_truncated_file_is_refused(saved):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(path)


def test_random_bytes_are_refused(tmp_path, rng):
    path = tmp_path / "noise.npz"
    path.write_bytes(rng.bytes(4096))
    with pytest.raises(CheckpointError, match=str(path)):
        load_model(path)


def test_random_bytes_are_not_reported_as_pickled_objects(tmp_path, rng):
    # np.load falls back to "pickled data" for anything that is neither .npy nor .npz;
    # telling the user that noise "holds pickled Python objects" sends them the wrong way
    path = tmp_path / "noise.npz"
    path.write_bytes(rng.bytes(4096))
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert "pickled Python objects" not in str(err.value), str(err.value)


def test_a_single_npy_array_is_refused(tmp_path):
    path = tmp_path / "weights.npy"
    np.save(path, np.zeros((3, 3), np.float32))
    with pytest.raises(CheckpointError, match="weights.npy"):
        load_model(path)


def test_an_npz_that_is_not_a_numpyvit_checkpoint_is_refused(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a numpyvit checkpoint"):
        load_model(path)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_model(tmp_path / "nothing.npz")


# ----- another architecture ----------------------------------------------------------------------------
def test_weights_of_another_architecture_are_refused_by_name():
    deeper = small_vit(depth=3, num_classes=7)
    with pytest.raises(ValueError, match=r"unexpected keys: blocks.2.*shape mismatch: head.weight: "
                                         r"checkpoint \(7, 8\) vs model \(5, 8\)"):
        small_vit().load_state_dict(deeper.state_dict())


def test_a_file_whose_weights_do_not_fit_its_config_is_refused(tmp_path):
    deeper = small_vit(depth=3)
    path = tmp_path / "mixed.npz"
    save_arrays(path, {f"model.{k}": v for k, v in deeper.state_dict().items()}, {"config": small_vit().config})
    with pytest.raises(CheckpointError, match=r"mixed.npz.*unexpected keys: blocks.2.attn.proj.bias"):
        load_model(path)
