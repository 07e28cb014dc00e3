"""Saving and loading weights and checkpoints as ``.npz``: no pickle, atomic writes.

A file holds named arrays plus one JSON document of metadata (stored as bytes under the
key ``__meta__``): the model's config, and for a training checkpoint the epoch, history and
random-generator states. Loading uses ``numpy.load(allow_pickle=False)``, so a file can never
run code; a file holding pickled objects is refused.

Writes go to a temporary file in the same folder, are flushed to disk, then renamed over
the target in one step (``os.replace``): a crash mid-write leaves the previous file intact.

Model weights are stored under ``model.<timm name>`` (e.g. ``model.blocks.0.attn.qkv.weight``).
"""
import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .backend import backend_name, to_numpy

META_KEY = "__meta__"
CHECKPOINT_NAME = "checkpoint.npz"
FORMAT = "numpyvit-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, unsafe, or belongs to another model."""


@contextlib.contextmanager
def atomic_file(path):
    """A binary file to write ``path`` through: a temporary file in the same folder, flushed to
    disk and renamed over ``path`` when the block ends without an error, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)                                    # mkstemp makes it private (0600)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as err:
        if "Object arrays cannot be loaded" in str(err):
            raise CheckpointError(f"{path} holds pickled Python objects; numpyvit never unpickles "
                                  "(allow_pickle=False), so it refuses this file") from err
        raise CheckpointError(f"{path} is not a readable .npz checkpoint ({err})") from err
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise CheckpointError(f"{path} is corrupt or truncated ({type(err).__name__}: {err}); "
                              "use an earlier checkpoint or train again") from err
    if META_KEY not in arrays:
        raise CheckpointError(f"{path} is an .npz file but not a numpyvit checkpoint (no {META_KEY!r} entry)")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} has unreadable metadata ({err})") from err
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
    from .model import VisionTransformer

    arrays, meta = load_arrays(path)
    if "config" not in meta:
        raise CheckpointError(f"{path} has no model config in its metadata")
    try:
        model = VisionTransformer(**dict(meta["config"], backend=backend_name(backend)))
        model.load_state_dict(prefixed(arrays, "model"))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {err}") from err
    return model, meta
