"""numpyvit.data: IDX files, dataset lookup / download, batches and augmentation.

Every test builds its own tiny IDX files under tmp_path; ``urllib.request.urlopen`` is replaced
for all tests, so nothing here can reach the network. The one test on the real MNIST files
runs only where ``../shared/data`` sits beside the repository.
"""
import gzip
import hashlib
import io
import types
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from numpyvit.data import (Dataset, DatasetNotFoundError, IDXError, RandomAffine, RandomErasing, chain,
                           iterate_batches, load_dataset, normalize, read_idx, write_idx)
from numpyvit.data import datasets
from numpyvit.data.augment import affine_transform

FILES = datasets.FILES
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """A private cache, no $NUMPYVIT_DATA, and a urlopen that fails the test if called."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(datasets.ENV_VAR, raising=False)

    def no_network(url, *args, **kwargs):
        raise AssertionError(f"a test tried to open {url}")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def tiny_dataset(folder, n_train=6, n_test=3, seed=0):
    """Write the four MNIST-named .gz files into ``folder``; return {file: its bytes}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = (
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    )
    for file, array in zip(FILES, arrays):
        write_idx(folder / file, array)
    return {file: (folder / file).read_bytes() for file in FILES}


def trust(monkeypatch, blobs, name="mnist"):
    """Make ``blobs`` ({file: bytes}) the official files of ``name``."""
    for file, blob in blobs.items():
        monkeypatch.setitem(datasets.SHA256[name], file, hashlib.sha256(blob).hexdigest())


# ---------------------------------------------------------------- IDX files

@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_idx_round_trip(tmp_path, suffix, dtype):
    array = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")


def test_idx_header_is_big_endian(tmp_path):
    write_idx(tmp_path / "a", np.array([1, 256], dtype=np.int16))
    assert (tmp_path / "a").read_bytes() == bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0, 1, 1, 0])


def test_gzip_is_detected_by_content_not_name(tmp_path):
    array = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "real.gz", array)
    write_idx(tmp_path / "raw", array)
    (tmp_path / "real.gz").rename(tmp_path / "no-suffix")
    (tmp_path / "raw").rename(tmp_path / "raw.gz")
    np.testing.assert_array_equal(read_idx(tmp_path / "no-suffix"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "raw.gz"), array)


@pytest.mark.parametrize("content, words", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "bad magic"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x07", "unknown type code 0x07"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated header"),
    (b"\x00\x00", "too short"),
    (b"\x00\x00\x08\x03" + np.array([60000, 28, 28], ">u4").tobytes() + bytes(1000),
     "truncated: header says 60000x28x28 uint8 = 47,040,000 bytes of data, file has 1,000"),
    (b"\x00\x00\x08\x04" + np.array([65536] * 4, ">u4").tobytes(),          # 2^64 bytes: overflowed int64 once
     "the header says 65536x65536x65536x65536 uint8 = 18,446,744,073,709,551,616 bytes of data, more than"),
    (b"\x00\x00\x0e\x02" + np.array([2**31, 4], ">u4").tobytes(), "= 68,719,476,736 bytes of data, more than"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x02" + bytes(3), "trailing bytes: header says 2 uint8 = 2 bytes"),
    (b"\x00\x00\x0c\x01\x00\x00\x00\x02" + bytes(7), "truncated: header says 2 int32 = 8 bytes"),
])
@pytest.mark.parametrize("compress", [False, True])
def test_bad_idx_files_are_refused(tmp_path, content, words, compress):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(IDXError, match="bad-idx1-ubyte") as info:
        read_idx(path)
    assert words in str(info.value)


@pytest.mark.parametrize("damage", ["cut", "flip"])
def test_corrupt_gzip_is_an_idx_error(tmp_path, damage):
    path = tmp_path / "x.gz"
    write_idx(path, np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8))
    blob = bytearray(path.read_bytes())
    if damage == "cut":
        blob = blob[: len(blob) // 2]
    else:
        blob[len(blob) // 2] ^= 0xFF
        blob[-6] ^= 0xFF  # also break the CRC, in case the flipped bit still inflates
    path.write_bytes(bytes(blob))
    with pytest.raises(IDXError, match=r"x\.gz.*gzip"):
        read_idx(path)


def test_write_idx_refuses_what_idx_cannot_hold(tmp_path):
    with pytest.raises(IDXError, match="dtype bool"):
        write_idx(tmp_path / "b", np.zeros(3, dtype=bool))
    with pytest.raises(IDXError, match="1 to 255 dimensions"):
        write_idx(tmp_path / "s", np.uint8(3))


# ---------------------------------------------------------------- finding the files

def test_both_layouts_load(tmp_path, monkeypatch):
    blobs = tiny_dataset(tmp_path / "flat")
    tiny_dataset(tmp_path / "nested" / "mnist")
    trust(monkeypatch, blobs)
    for data_dir in (tmp_path / "flat", tmp_path / "nested"):
        ds = load_dataset("mnist", data_dir=data_dir, download=False)
        assert isinstance(ds, Dataset) and ds.name == "mnist"
        assert ds.train_images.shape == (6, 28, 28) and ds.train_images.dtype == np.uint8
        assert ds.train_labels.shape == (6,) and ds.test_images.shape == (3, 28, 28)
        assert ds.classes == tuple("0123456789") and (ds.mean, ds.std) == (0.1307, 0.3081)


def test_lookup_order_is_data_dir_then_env_then_cache(tmp_path, monkeypatch):
    trust(monkeypatch, tiny_dataset(tmp_path / "arg"))
    tiny_dataset(tmp_path / "env" / "mnist")
    tiny_dataset(tmp_path / "xdg" / "numpyvit" / "mnist")
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path / "env"))

    def found(data_dir):
        return datasets.find_file("mnist", FILES[0], datasets.search_dirs(data_dir))

    assert found(tmp_path / "arg") == tmp_path / "arg" / FILES[0]
    assert found(None) == tmp_path / "env" / "mnist" / FILES[0]
    monkeypatch.delenv(datasets.ENV_VAR)
    assert found(None) == tmp_path / "xdg" / "numpyvit" / "mnist" / FILES[0]
    assert load_dataset("mnist", download=False).train_images.shape == (6, 28, 28)


def test_cache_falls_back_to_home(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert datasets.cache_dir() == tmp_path / ".cache" / "numpyvit"


def test_checksum_mismatch_says_how_to_fix(tmp_path, monkeypatch):
    trust(monkeypatch, tiny_dataset(tmp_path / "good"))
    tiny_dataset(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz is corrupt or not the original") as info:
        load_dataset("mnist", data_dir=tmp_path / "other", download=False)
    assert "delete it" in str(info.value)


def test_the_other_datasets_file_is_named(tmp_path, monkeypatch):
    trust(monkeypatch, tiny_dataset(tmp_path / "data" / "mnist"))
    with pytest.raises(ValueError, match="is the mnist file, not the fashion-mnist one"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "data" / "mnist", download=False)


def test_image_and_label_counts_must_agree(tmp_path, monkeypatch):
    blobs = tiny_dataset(tmp_path)
    write_idx(tmp_path / FILES[1], np.zeros(5, dtype=np.uint8))
    trust(monkeypatch, {**blobs, FILES[1]: (tmp_path / FILES[1]).read_bytes()})
    with pytest.raises(ValueError, match="6 images but .* has 5 labels"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="choose one of mnist, fashion-mnist"):
        load_dataset("cifar10")


# ---------------------------------------------------------------- downloading

class FakeResponse(io.BytesIO):
    """What urlopen returns, enough for the downloader: read(n), headers, a context manager."""

    def __init__(self, blob, on_read=lambda: None):
        super().__init__(blob)
        self.headers = {"Content-Length": str(len(blob))}
        self.on_read = on_read

    def read(self, size=-1):
        self.on_read()
        return super().read(size)


def test_download_falls_through_a_403_and_lands_atomically(tmp_path, monkeypatch, capsys):
    blobs = tiny_dataset(tmp_path / "server")
    trust(monkeypatch, blobs)
    cache = tmp_path / "xdg" / "numpyvit" / "mnist"
    first, second = datasets.MIRRORS["mnist"][:2]
    opened = []

    def not_in_place_yet(file):
        assert not (cache / file).exists(), "the final name appeared before the data was complete"

    def urlopen(url, timeout=None):
        opened.append(url)
        if url.startswith(first):
            raise urllib.error.HTTPError(url, 403, "Forbidden", None, None)
        file = url[len(second):]
        return FakeResponse(blobs[file], on_read=lambda: not_in_place_yet(file))

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    ds = load_dataset("mnist")
    assert opened == [m + f for f in FILES for m in (first, second)]
    assert sorted(p.name for p in cache.iterdir()) == sorted(FILES)  # no partial files left
    assert all((cache / f).read_bytes() == blobs[f] for f in FILES)
    assert ds.test_labels.shape == (3,)
    err = capsys.readouterr().err
    assert "100%" in err and "MB" in err and "\r" in err and "403" in err


def test_bad_or_broken_downloads_leave_nothing(tmp_path, monkeypatch):
    blobs = tiny_dataset(tmp_path / "server")
    trust(monkeypatch, blobs)
    cache = tmp_path / "xdg" / "numpyvit" / "mnist"

    def broken():
        raise ConnectionResetError("connection reset by peer")

    def urlopen(url, timeout=None):
        if url.startswith(datasets.MIRRORS["mnist"][0]):
            return FakeResponse(b"not the file")
        return FakeResponse(b"half", on_read=broken)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist")
    assert "expected " + datasets.SHA256["mnist"][FILES[0]] in str(info.value)
    assert "connection reset" in str(info.value)
    assert list(cache.iterdir()) == []


def test_offline_error_names_the_files_and_places(tmp_path, monkeypatch):
    def urlopen(url, timeout=None):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path / "mine")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert all(file in message for file in FILES)
    assert str(tmp_path / "mine") in message and str(tmp_path / "xdg" / "numpyvit") in message
    assert "--data-dir" in message and datasets.ENV_VAR in message
    assert "name resolution" in message


def test_no_download_when_told_not_to(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="download=False"):
        load_dataset("mnist", data_dir=tmp_path, download=False)  # urlopen would fail the test


# ---------------------------------------------------------------- batches

def test_normalize_values_and_shape():
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)  # (1, 2, 2)
    x = normalize(images, 0.5, 0.25)
    assert x.shape == (1, 1, 2, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], (images[0] / 255 - 0.5) / 0.25, rtol=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        normalize(images.astype(np.float32), 0.5, 0.25)


def labelled(n=10):
    """n images whose pixels all equal their label, so a batch shows which samples it holds."""
    labels = np.arange(n, dtype=np.uint8)
    return np.repeat(labels, 4 * 4).reshape(n, 4, 4), labels


def test_batches_shapes_dtypes_and_last_batch():
    images, labels = labelled(10)
    batches = list(iterate_batches(images, labels, 4, shuffle=False, mean=0.0, std=1.0))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.shape == (4, 1, 4, 4) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(x[:, 0, 0, 0], y / 255, rtol=1e-6)
    dropped = list(iterate_batches(images, labels, 4, shuffle=False, drop_last=True, mean=0, std=1))
    assert [len(y) for _, y in dropped] == [4, 4]


def test_shuffling_is_a_seeded_permutation():
    images, labels = labelled(10)

    def epoch(seed):
        rng = np.random.default_rng(seed)
        batches = iterate_batches(images, labels, 3, shuffle=True, rng=rng, mean=0, std=1 / 255)
        return np.concatenate([y for _, y in batches])

    order = epoch(0)
    np.testing.assert_array_equal(np.sort(order), np.arange(10))  # every sample exactly once
    np.testing.assert_array_equal(epoch(0), order)
    assert not np.array_equal(epoch(1), order)
    rng = np.random.default_rng(0)
    for x, y in iterate_batches(images, labels, 3, shuffle=True, rng=rng, mean=0, std=1 / 255):
        np.testing.assert_allclose(x[:, 0, 0, 0], y)  # images travel with their labels


def test_prenormalized_images_and_augment_and_xp():
    images, labels = labelled(5)
    calls = []
    xp = types.SimpleNamespace(asarray=lambda a: calls.append(a.shape) or a)

    pre = normalize(images, 0.2, 0.5)
    got = list(iterate_batches(pre, labels, 2, shuffle=False, rng=np.random.default_rng(0),
                               augment=lambda x, rng: x + 1, xp=xp))
    want = list(iterate_batches(images, labels, 2, shuffle=False, mean=0.2, std=0.5))
    for (x, y), (x_ref, y_ref) in zip(got, want):
        np.testing.assert_array_equal(x, x_ref + 1)
        np.testing.assert_array_equal(y, y_ref)
    assert calls == [(2, 1, 4, 4), (2,), (2, 1, 4, 4), (2,), (1, 1, 4, 4), (1,)]  # one transfer each


def test_batch_arguments_are_checked():
    images, labels = labelled(4)
    with pytest.raises(ValueError, match="rng="):
        next(iterate_batches(images, labels, 2, shuffle=True, mean=0, std=1))
    with pytest.raises(ValueError, match="mean= and std="):
        next(iterate_batches(images, labels, 2, shuffle=False))
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        next(iterate_batches(images, labels[:3], 2, shuffle=False, mean=0, std=1))
    with pytest.raises(ValueError, match="positive integer"):
        next(iterate_batches(images, labels, 0, shuffle=False, mean=0, std=1))


# ---------------------------------------------------------------- augmentation

def shifted(x, dx, dy, fill):
    """x (H, W) moved right by dx and down by dy, uncovered pixels set to fill."""
    out = np.full_like(x, fill)
    H, W = x.shape
    out[max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
        x[max(-dy, 0):H - max(dy, 0), max(-dx, 0):W - max(dx, 0)]
    return out


def test_integer_shift_moves_pixels_and_fills():
    x = np.random.default_rng(0).standard_normal((4, 2, 7, 9)).astype(np.float32)
    shifts = np.array([[2, 0], [-3, 1], [0, -7], [1, -2]])
    out = affine_transform(x, np.zeros(4), np.ones(4), shifts, fill=-0.5)
    for b, (dx, dy) in enumerate(shifts):
        for c in range(2):
            np.testing.assert_array_equal(out[b, c], shifted(x[b, c], dx, dy, -0.5))


def test_zero_ranges_are_the_identity():
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    aug = RandomAffine(max_translate=0, max_rotate=0, scale=(1, 1), fill=7.0)
    np.testing.assert_array_equal(aug(x, np.random.default_rng(0)), x)


def test_quarter_turn_is_clockwise_on_screen():
    x = np.random.default_rng(0).standard_normal((1, 1, 6, 6)).astype(np.float32)
    out = affine_transform(x, [90.0], [1.0], [[0, 0]])
    np.testing.assert_allclose(out, np.rot90(x, k=-1, axes=(2, 3)), atol=1e-5)


def test_random_affine_shape_dtype_and_seed():
    x = np.random.default_rng(0).standard_normal((5, 1, 28, 28))  # float64 in, float32 out
    aug = RandomAffine(max_translate=3, max_rotate=20, scale=(0.8, 1.2), fill=-0.42)
    out = aug(x, np.random.default_rng(3))
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, aug(x, np.random.default_rng(3)))
    assert not np.array_equal(out, aug(x, np.random.default_rng(4)))
    angle, scale, shift = aug.sample(5, np.random.default_rng(3))
    np.testing.assert_array_equal(out, affine_transform(x, angle, scale, shift, fill=-0.42))
    assert np.all(np.abs(angle) <= 20) and np.all((0.8 <= scale) & (scale <= 1.2))
    assert np.all(np.abs(shift) <= 3)


def test_random_affine_refuses_bad_ranges():
    with pytest.raises(ValueError, match="scale"):
        RandomAffine(scale=(1.1, 0.9))
    with pytest.raises(ValueError, match=">= 0"):
        RandomAffine(max_rotate=-1)


def test_random_erasing_replaces_one_rectangle_in_about_p_of_the_images():
    x = np.full((400, 2, 28, 28), 7.0, dtype=np.float32)             # 7 never comes from N(0, 1) in practice
    out = RandomErasing(p=0.5)(x, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == np.float32
    changed = out != 7.0                                             # (B, C, H, W)
    np.testing.assert_array_equal(changed[:, 0], changed[:, 1])     # one rectangle through all channels
    erased = changed.any(axis=(1, 2, 3))
    assert 160 < erased.sum() < 240
    for mask in changed[erased, 0]:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all() and mask.sum() == len(rows) * len(cols)
        assert mask.sum() <= 0.4 * 28 * 28 * 1.15 + 2 * 28           # area <= 0.4 up to rounding and clipping
    noise = out[changed]
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05
    np.testing.assert_array_equal(out, RandomErasing(p=0.5)(x, np.random.default_rng(0)))


def test_random_erasing_edge_cases_and_bad_settings():
    x = np.zeros((8, 1, 4, 4), dtype=np.float32)
    np.testing.assert_array_equal(RandomErasing(p=0.0)(x, np.random.default_rng(0)), x)
    full = RandomErasing(p=1.0, area=(1.0, 1.0), ratio=(1.0, 1.0))(x, np.random.default_rng(0))
    assert np.all(full != 0)                                         # the whole image is noise
    for bad, says in ((dict(p=1.5), "share of images erased"), (dict(area=(0.5, 0.2)), r"area=\(0.5, 0.2\)"),
                      (dict(area=(0.0, 0.3)), r"area=\(0.0, 0.3\)"), (dict(ratio=(2.0, 1.0)), r"ratio=\(2.0, 1.0\)")):
        with pytest.raises(ValueError, match=says):
            RandomErasing(**bad)


def test_chain_applies_augmentations_in_order():
    def add(value):
        return lambda x, rng: x + value
    assert chain([]) is None
    x = np.ones((2, 1, 3, 3), dtype=np.float32)
    np.testing.assert_array_equal(chain([add(1), lambda x, rng: x * 10])(x, None), x * 20)


# ---------------------------------------------------------------- the real files

@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason=f"no MNIST files in {SHARED_DATA}")
def test_real_mnist():
    ds = load_dataset("mnist", data_dir=SHARED_DATA, download=False)
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.uint8
    assert np.bincount(ds.train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918,
                                                     6265, 5851, 5949]
    assert np.bincount(ds.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                                    974, 1009]
    counts = np.bincount(ds.train_images.ravel(), minlength=256)  # pixel histogram: no float copy
    levels = np.arange(256) / 255
    mean = counts @ levels / counts.sum()
    std = np.sqrt(counts @ (levels - mean) ** 2 / counts.sum())
    assert abs(mean - ds.mean) < 1e-4 and abs(std - ds.std) < 1e-4


def test_random_affine_hflip_mirrors_about_half_the_images():
    rng = np.random.default_rng(0)
    x = rng.random((200, 1, 5, 7)).astype(np.float32)
    out = RandomAffine(max_translate=0, max_rotate=0, scale=(1, 1), hflip=True)(x, np.random.default_rng(1))
    same = np.array([np.array_equal(o, i) for o, i in zip(out, x)])
    mirrored = np.array([np.array_equal(o, i[:, :, ::-1]) for o, i in zip(out, x)])
    assert np.all(same ^ mirrored)                                   # each image: one or the other
    assert 70 < mirrored.sum() < 130
