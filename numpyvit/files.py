"""Where numpyvit keeps files, and how it writes them so that nothing is lost.

``atomic_file(path)``: writes go to a temporary file in the same folder, are flushed to disk, then
renamed over the target in one step (``os.replace``): a crash mid-write leaves the previous file
intact. ``cache_dir()``: the per-user folder for downloads and the engine's measurements.
``read_regular_file(path, max_bytes)``: the bytes of a regular file no larger than max_bytes, or
an InputError saying why not; a FIFO, a device or a folder is refused without blocking on it.
"""
import contextlib
import os
import stat
import tempfile
from pathlib import Path

from . import environment
from .errors import InputError


def cache_dir():
    """The per-user cache folder: ``$XDG_CACHE_HOME/numpyvit``, else ``~/.cache/numpyvit``."""
    return environment.cache_dir()


@contextlib.contextmanager
def atomic_file(path):
    """A binary file to write ``path`` through: a temporary file in the same folder, flushed to
    disk and renamed over ``path`` when the block ends without an error, removed otherwise."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder: name the file to write")
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


def open_regular_file(path, max_bytes, what="file"):
    """``path`` opened for reading (binary) if it is a regular file of at most ``max_bytes``;
    InputError otherwise (``what`` names the file in the message). Opened without blocking and
    checked through the open descriptor, so a FIFO or a device put in a file's place is refused,
    never waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise InputError(f"{what} {path} cannot be opened: {error.strerror}") from None
    info = os.fstat(fd)
    problem = ("is not a regular file (a FIFO, a device or a folder?)" if not stat.S_ISREG(info.st_mode) else
               f"is {info.st_size:,} bytes; numpyvit reads at most {max_bytes:,}" if info.st_size > max_bytes else None)
    if problem:
        os.close(fd)
        raise InputError(f"{what} {path} {problem}")
    return os.fdopen(fd, "rb")


def read_regular_file(path, max_bytes, what="file"):
    """The bytes of ``path``, opened by ``open_regular_file``."""
    with open_regular_file(path, max_bytes, what) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputError(f"{what} {path} grew past {max_bytes:,} bytes while it was read")
    return data
