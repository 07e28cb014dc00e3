"""Fuzzing the file readers: valid safetensors, JAX .npz and checkpoint files mutated byte by byte
and field by field; whatever comes in, only numpyvit's InputError may come out (or a clean load).

Hypothesis draws the mutations. CI runs FUZZ_EXAMPLES examples per test (about 30 s in all on
2 cores); a longer hunt: NUMPYVIT_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz.py.
"""
import json
import os
import zipfile

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import numpyvit  # noqa: E402
from numpyvit.errors import InputError  # noqa: E402
from numpyvit.io import load_arrays, load_model, save_arrays, save_model  # noqa: E402
from numpyvit.weights import read_jax_npz, read_safetensors, save_weights, to_jax  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("NUMPYVIT_FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                derandomize="NUMPYVIT_FUZZ_EXAMPLES" not in os.environ,      # CI: the same examples every run
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SMALL = dict(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=1, num_heads=2)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
byte_edits = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8)


def mutate_bytes(raw, edits, cut):
    """``raw`` with bytes overwritten at relative positions, then truncated to ``cut`` of its length."""
    data = bytearray(raw)
    for where, value in edits:
        data[int(where * len(data))] = value
    return bytes(data[:max(1, int(cut * len(data)))])


def only_input_errors(load):
    """Run ``load``; any exception other than numpyvit's InputError fails the test."""
    try:
        load()
    except InputError:
        pass


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("valid")
    model = numpyvit.VisionTransformer(**SMALL)
    save_weights(model, folder / "w.safetensors", mean=[0.5], std=[0.5], classes=["a", "b", "c"])
    state = {name: np.asarray(value) for name, value in model.state_dict().items()}
    np.savez(folder / "jax.npz", **to_jax(state, num_heads=2))
    save_model(model, folder / "model.npz", note="fuzz")
    return {name: (folder / name).read_bytes() for name in ("w.safetensors", "jax.npz", "model.npz")}


def load_weights(path):
    read_safetensors(path)
    numpyvit.create_model(None, weights=path)


READERS = {"w.safetensors": load_weights, "jax.npz": read_jax_npz, "model.npz": load_model}


@pytest.mark.parametrize("name", sorted(READERS))
@FUZZ
@given(edits=byte_edits, cut=st.floats(0.5, 1.0))
def test_mutated_bytes(files, tmp_path, name, edits, cut):
    path = tmp_path / name
    path.write_bytes(mutate_bytes(files[name], edits, cut))
    only_input_errors(lambda: READERS[name](path))


@FUZZ
@given(data=st.data(), value=json_values)
def test_safetensors_header_fields(files, tmp_path, data, value):
    raw = files["w.safetensors"]
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    name = data.draw(st.sampled_from(sorted(header)))
    if name == "__metadata__":
        key = data.draw(st.sampled_from(sorted(header[name])))
        header[name][key] = json.dumps(value) if data.draw(st.booleans()) else value
    else:
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
        header[name][field] = value
    encoded = json.dumps(header).encode()
    path = tmp_path / "f.safetensors"
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + raw[8 + length:])
    only_input_errors(lambda: load_weights(path))


arrays = st.builds(lambda shape, dtype: np.zeros(shape, dtype),
                   st.lists(st.integers(0, 5), max_size=4).map(tuple),
                   st.sampled_from(["<f4", ">f4", "<f8", "<i8", "u1", "?", "<c8", "<U3", "V4"]))


@FUZZ
@given(data=st.data(), array=arrays)
def test_jax_npz_arrays(files, tmp_path, data, array):
    source = tmp_path / "src.npz"
    source.write_bytes(files["jax.npz"])
    with np.load(source) as archive:
        contents = {name: archive[name] for name in archive.files}
    name = data.draw(st.sampled_from(sorted(contents) + ["unknown/extra"]))
    contents[name] = array
    np.savez(tmp_path / "f.npz", **contents)
    only_input_errors(lambda: read_jax_npz(tmp_path / "f.npz"))


@FUZZ
@given(data=st.data(), value=json_values, array=arrays)
def test_checkpoint_fields(files, tmp_path, data, value, array):
    source = tmp_path / "src.npz"
    source.write_bytes(files["model.npz"])
    contents, meta = load_arrays(source)
    if data.draw(st.booleans()):                                     # a metadata field
        key = data.draw(st.sampled_from(sorted(meta)))
        if key == "config" and data.draw(st.booleans()):
            meta["config"][data.draw(st.sampled_from(sorted(meta["config"])))] = value
        else:
            meta[key] = value
    else:                                                            # an array
        contents[data.draw(st.sampled_from(sorted(contents)))] = array
    meta.pop("format")
    save_arrays(tmp_path / "f.npz", contents, meta)
    only_input_errors(lambda: load_model(tmp_path / "f.npz"))


def test_the_fuzzed_files_load_unmutated(files, tmp_path):
    """The starting points are valid, so the mutations above test the checks, not a broken file."""
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
    load_weights(tmp_path / "w.safetensors")
    read_jax_npz(tmp_path / "jax.npz")
    assert load_model(tmp_path / "model.npz").config["embed_dim"] == 8
    assert zipfile.is_zipfile(tmp_path / "jax.npz")
