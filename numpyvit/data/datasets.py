"""MNIST and Fashion-MNIST: find the four IDX files, download them if missing, load them.

Each dataset is four gzip-compressed IDX files (see ``idx.py``) with the same names:

    train-images-idx3-ubyte.gz  (60000, 28, 28) uint8    train-labels-idx1-ubyte.gz  (60000,) uint8
    t10k-images-idx3-ubyte.gz   (10000, 28, 28) uint8    t10k-labels-idx1-ubyte.gz   (10000,) uint8

Each file is looked for, in order, in the ``data_dir`` argument, in ``$NUMPYVIT_DATA`` and in
the per-user cache (``$XDG_CACHE_HOME/numpyvit``, else ``~/.cache/numpyvit``); in each folder
both ``<dir>/<file>`` and ``<dir>/<name>/<file>`` are accepted, so a folder holding the
dataset and a folder holding one subfolder per dataset both work. A ``.gz`` file found is
checked against the sha256 of the original. Missing files are downloaded from the mirrors
below, in order, verified, and moved into ``<cache>/<name>/`` only once complete.
"""
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import environment
from ..errors import InputError
from ..files import cache_dir, open_regular_file
from .idx import read_idx

MAX_FILE_BYTES = 2**27                 # a data set file larger than 128 MB is not one of these

FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
SHA256 = {
    "mnist": dict(zip(FILES, (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ))),
    "fashion-mnist": dict(zip(FILES, (
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    ))),
}
MIRRORS = {  # tried in order: single mirrors have gone 403 before
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
}
CLASSES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
}
MEAN_STD = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}  # of train pixels / 255
ENV_VAR = "NUMPYVIT_DATA"
TIMEOUT_S = 30


class DatasetNotFoundError(FileNotFoundError, InputError):
    """The dataset files are neither on disk nor downloadable."""


@dataclass
class Dataset:
    """One dataset in memory: images (N, H, W) or (N, C, H, W) uint8, labels (N,) integers in
    0..K-1, the K class names, and the mean/std of the training pixels scaled to [0, 1] (one
    value, or one per channel; for ``normalize``)."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple
    mean: float
    std: float


def load_dataset(name, data_dir=None, download=True):
    """Load "mnist" or "fashion-mnist", downloading missing files into the cache when
    ``download`` is true; raises DatasetNotFoundError when some file can be neither found
    nor downloaded."""
    name = str(name).strip().lower()
    if name not in SHA256:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(SHA256)}")
    dirs = search_dirs(data_dir)
    paths, failures = {}, []
    for file in FILES:
        paths[file] = find_file(name, file, dirs)
        if paths[file] is None and download and not failures:
            paths[file], failures = download_file(name, file)
    missing = [file for file in FILES if paths[file] is None]
    if missing:
        raise DatasetNotFoundError(_not_found_message(name, dirs, missing, download, failures))

    arrays = {file: read_idx(path) for file, path in paths.items()}
    splits = [_check_split(arrays, paths, split, len(CLASSES[name])) for split in ("train", "t10k")]
    mean, std = MEAN_STD[name]
    return Dataset(name, *splits[0], *splits[1], CLASSES[name], mean, std)


def search_dirs(data_dir=None):
    """(source, folder) pairs to look in, in order: ``data_dir``, ``$NUMPYVIT_DATA``, the cache."""
    given = (("data_dir", data_dir), ("$" + ENV_VAR, environment.data_dir()))
    return [(source, Path(d).expanduser()) for source, d in given if d] + [("cache", cache_dir())]


def find_file(name, file, dirs):
    """The first existing ``<dir>/<file>`` or ``<dir>/<name>/<file>`` of the ``search_dirs``
    pairs, checked against its sha256 (ValueError if it is not the original), or None."""
    for path in (c for _, d in dirs for c in (d / file, d / name / file)):
        if path.is_file():
            _verify(path, name, file)
            return path
    return None


def download_file(name, file):
    """Fetch ``file`` from the mirrors of ``name`` in order into ``<cache>/<name>/<file>``.

    Returns ``(path, [])`` on success, ``(None, reasons)`` with one "url: error" per mirror
    when all fail (HTTP errors, timeouts, no network, or a wrong checksum all fall through
    to the next mirror)."""
    dest = cache_dir() / name / file
    dest.parent.mkdir(parents=True, exist_ok=True)
    reasons = []
    for mirror in MIRRORS[name]:
        url = mirror + file
        try:
            _fetch(url, dest, SHA256[name][file])
            return dest, []
        except (OSError, http.client.HTTPException, ValueError) as err:  # URLError is an OSError
            reasons.append(f"{url}: {err}")
            sys.stderr.write(f"download failed: {reasons[-1]}\n")
    return None, reasons


def _fetch(url, dest, sha256):
    """Stream ``url`` into a temporary file beside ``dest``, then rename it to ``dest`` if its
    sha256 matches; on any failure the temporary file is removed and ``dest`` is untouched."""
    tmp = tempfile.NamedTemporaryFile(dir=dest.parent, prefix=dest.name + ".", suffix=".part",
                                      delete=False)
    try:
        with tmp, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0)
            digest, done = hashlib.sha256(), 0
            try:
                while chunk := response.read(1 << 16):
                    tmp.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    _progress(url, done, total)
            finally:
                sys.stderr.write("\n")  # end the progress line, also when the transfer breaks off
        if digest.hexdigest() != sha256:
            raise ValueError(f"downloaded data has sha256 {digest.hexdigest()}, expected {sha256}")
        os.replace(tmp.name, dest)
    finally:
        if os.path.exists(tmp.name):
            os.remove(tmp.name)


def _progress(url, done, total):
    """One stderr line, rewritten in place: percent (when the size is known) and MB."""
    mb = f"{done / 1e6:.1f}" + (f"/{total / 1e6:.1f}" if total else "")
    percent = f"{100 * done / total:3.0f}% " if total else ""
    sys.stderr.write(f"\rdownloading {url}  {percent}{mb} MB")
    sys.stderr.flush()


def _verify(path, name, file):
    sha256 = hashlib.sha256()
    with open_regular_file(path, MAX_FILE_BYTES, f"the {name} file") as f:   # the largest is 26 MB
        for chunk in iter(lambda: f.read(2**20), b""):
            sha256.update(chunk)
    digest = sha256.hexdigest()
    if digest == SHA256[name][file]:
        return
    other = [n for n, sums in SHA256.items() if sums.get(file) == digest]
    if other:
        raise ValueError(
            f"{path} is the {other[0]} file, not the {name} one: point --data-dir / {ENV_VAR} "
            f"at the folder holding {name}, or at its parent"
        )
    raise ValueError(
        f"{path} is corrupt or not the original {name} file (sha256 {digest}, expected "
        f"{SHA256[name][file]}): delete it and run again to re-download it, or replace it with "
        f"the original"
    )


def _check_split(arrays, paths, split, num_classes):
    """(images, labels) of one split, after checking shapes, dtypes, the label range and that the
    counts agree."""
    images_file, labels_file = f"{split}-images-idx3-ubyte.gz", f"{split}-labels-idx1-ubyte.gz"
    images, labels = arrays[images_file], arrays[labels_file]
    if images.ndim != 3 or images.dtype != np.uint8:
        got = f"{images.shape} {images.dtype}"
        raise ValueError(f"{paths[images_file]}: expected (N, H, W) uint8 images, got {got}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        got = f"{labels.shape} {labels.dtype}"
        raise ValueError(f"{paths[labels_file]}: expected (N,) uint8 labels, got {got}")
    if labels.size and labels.max() >= num_classes:
        raise InputError(f"{paths[labels_file]}: a label is {labels.max()}, but the data set has {num_classes} "
                         f"classes (labels 0 to {num_classes - 1}): the file is damaged or from another data set")
    if len(images) != len(labels):
        raise ValueError(
            f"{paths[images_file]} has {len(images)} images but {paths[labels_file]} has "
            f"{len(labels)} labels; the counts must agree"
        )
    return images, labels


def _not_found_message(name, dirs, missing, download, failures):
    places = "\n".join(f"  {d}  (or {d / name}; {source})" for source, d in dirs)
    if not download:
        why = "download=False, so nothing was downloaded."
    else:
        why = "Downloading failed from every mirror:\n" + "\n".join(f"  {r}" for r in failures)
    return (
        f"{name}: missing {', '.join(missing)}.\n"
        f"Looked in:\n{places}\n{why}\n"
        f"Put the four files {', '.join(FILES)} into one of these folders, "
        f"or pass --data-dir / set {ENV_VAR} to the folder that holds them."
    )
