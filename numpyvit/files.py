"""Where numpyvit keeps files, and how it writes them so that nothing is lost.

``atomic_file(path)``: writes go to a temporary file in the same folder, are flushed to disk, then
renamed over the target in one step (``os.replace``): a crash mid-write leaves the previous file
intact. ``cache_dir()``: the per-user folder for downloads and the engine's measurements.
"""
import contextlib
import os
import tempfile
from pathlib import Path


def cache_dir():
    """The per-user cache folder: ``$XDG_CACHE_HOME/numpyvit``, else ``~/.cache/numpyvit``."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "numpyvit"


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
