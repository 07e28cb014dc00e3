"""Saving and loading weights and checkpoints as ``.npz``: no pickle, atomic writes.

A file holds named arrays plus one JSON document of metadata (stored as bytes under the
key ``__meta__``): the model's config, and for a training checkpoint the epoch, history and
random-generator states. Loading (``read_npz``) reads each array's .npy header before its data and never unpickles,
so a file can never run code (one holding pickled objects is refused) and a hostile one cannot
make numpyvit allocate what its header claims.

Writes are atomic (numpyvit.files.atomic_file): a crash mid-write leaves the previous file intact.

Model weights are stored under ``model.<timm name>`` (e.g. ``model.blocks.0.attn.qkv.weight``).
"""
import json
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .backend import backend_name, to_numpy
from .data.loader import check_normalization
from .errors import InputError
from .files import atomic_file
from .model import VisionTransformer

META_KEY = "__meta__"
CHECKPOINT_NAME = "checkpoint.npz"
FORMAT = "numpyvit-checkpoint-v1"


class CheckpointError(InputError):
    """A checkpoint file is missing, corrupt, unsafe, or belongs to another model."""


def read_npz(path, check=None, error=None):
    """{name: array} of an .npz archive, read member by member without ``numpy.load``, so that
    nothing is decompressed or allocated before it is checked: each member's .npy header (dtype,
    shape) is read first; object arrays (pickles) are refused; the bytes the shape needs, counted
    in Python integers, must be what the zip entry declares; then ``check({name: (shape, dtype)})``
    may refuse the file or return the names to read (None: all). ``error`` is the exception class
    (CheckpointError by default); its message names the file and the member."""
    error = error or CheckpointError
    try:
        with zipfile.ZipFile(path) as archive:
            headers = {}
            for info in archive.infolist():
                headers[_member_name(path, info, error)] = _npy_header(path, archive, info, error)
            wanted = check({name: h[:2] for name, h in headers.items()}) if check else None
            return {name: _npy_data(path, archive, name, headers[name], error) for name in (wanted or headers)}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as err:
        raise error(f"{path} is corrupt or truncated ({type(err).__name__}: {err})") from None


def _member_name(path, info, error):
    if not info.filename.endswith(".npy"):
        raise error(f"{path}: member {info.filename!r} is not an .npy array (an .npz holds only arrays)")
    return info.filename[:-4]


def _npy_header(path, archive, info, error):
    """(shape, dtype, fortran order, header bytes, data bytes) of one member, from its first bytes."""
    where = f"{path}: array {info.filename[:-4]!r}"
    with archive.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
        except (ValueError, SyntaxError, TypeError) as err:
            raise error(f"{where} has no valid .npy header ({err})") from None
        offset = f.tell()
    if dtype.hasobject:
        raise error(f"{where} holds pickled Python objects; numpyvit never unpickles (allow_pickle=False), so it "
                    "refuses this file")
    nbytes = math.prod(shape) * dtype.itemsize                       # exact: Python integers
    if info.file_size != offset + nbytes:
        raise error(f"{where}: its header says {dtype} {shape} ({nbytes} bytes) but the archive declares "
                    f"{info.file_size - offset} bytes of data (corrupt or hostile file)")
    return tuple(shape), dtype, fortran, offset, nbytes


def _npy_data(path, archive, name, header, error):
    shape, dtype, fortran, offset, nbytes = header
    array = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    with archive.open(name + ".npy") as f:
        f.read(offset)
        done = f.readinto(memoryview(array.reshape(-1, order="A")).cast("B")) if nbytes else 0
    if done != nbytes:
        raise error(f"{path}: array {name!r} is truncated ({done} of {nbytes} bytes)")
    return array


def save_arrays(path, arrays, meta):
    """Atomically write ``arrays`` ({name: array}, any backend) and ``meta`` (JSON-able)."""
    payload = {name: to_numpy(value) for name, value in arrays.items()}
    payload[META_KEY] = np.frombuffer(json.dumps(dict(meta, format=FORMAT)).encode(), dtype=np.uint8)
    with atomic_file(path) as f:
        np.savez(f, **payload)


def load_arrays(path):
    """(arrays, meta) from a file written by ``save_arrays``; CheckpointError otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":                                      # every .npz is a zip archive
        raise CheckpointError(f"{path} is not an .npz archive (corrupt, truncated at the start, "
                              "or another format such as a single .npy array)")
    arrays = read_npz(path)
    if META_KEY not in arrays:
        raise CheckpointError(f"{path} is an .npz file but not a numpyvit checkpoint (no {META_KEY!r} entry)")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path} has unreadable metadata ({err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} has metadata of the wrong kind ({type(meta).__name__}, not a mapping)")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return arrays, meta


def prefixed(arrays, prefix):
    """{name: array} for the entries named ``prefix.name``."""
    start = len(prefix) + 1
    return {name[start:]: value for name, value in arrays.items() if name.startswith(prefix + ".")}


def save_model(model, path, **meta):
    """Write a model's weights and config (plus any JSON-able ``meta``) to ``path``."""
    arrays = {f"model.{name}": value for name, value in model.state_dict().items()}
    save_arrays(path, arrays, dict(meta, config=model.config))


def load_model(path, backend=None):
    """Rebuild the model saved at ``path`` (a .npz file or a run folder holding
    checkpoint.npz) on ``backend`` (default: $NUMPYVIT_BACKEND, else numpy, whatever backend
    it was trained on)."""
    return load_model_and_meta(path, backend)[0]


def load_model_and_meta(path, backend=None):
    """(model, metadata) from one read of ``path``; see ``load_model``."""
    arrays, meta = load_arrays(path)
    if "config" not in meta:
        raise CheckpointError(f"{path} has no model config in its metadata")
    data = meta.get("data")
    if isinstance(data, dict) and ("mean" in data or "std" in data):
        check_normalization(data.get("mean"), data.get("std"), f"{path}: the images' normalization")
    try:
        model = VisionTransformer(**dict(meta["config"], backend=backend_name(backend)))
        model.load_state_dict(prefixed(arrays, "model"))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {err}") from err
    return model, meta
