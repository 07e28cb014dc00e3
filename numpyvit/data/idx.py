"""Reading and writing IDX files, the format MNIST and Fashion-MNIST are shipped in.

An IDX file (often gzip-compressed) is a short header followed by one dense array:

    bytes 0-1   0x00 0x00
    byte  2     type code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
    byte  3     n, the number of dimensions (at least 1)
    4n bytes    the dimensions d_1 .. d_n, each a big-endian uint32
    the rest    d_1 * ... * d_n values, row-major, big-endian

The MNIST training images, for example, are 0x00000803 (uint8, 3 dims), then 60000, 28, 28,
then 47,040,000 pixel bytes. ``read_idx`` checks every part of that and names the file and
the problem in its ``IDXError``; gzip is recognised by its magic bytes 0x1f 0x8b, not by
the file name.
"""
import gzip
import math
import os
import zlib

import numpy as np

from ..errors import InputError
from ..files import open_regular_file

GZIP_MAGIC = b"\x1f\x8b"
TYPE_CODES = {  # type code -> big-endian dtype of the stored values
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF = {dtype.newbyteorder("="): code for code, dtype in TYPE_CODES.items()}
_SUPPORTED = "uint8, int8, int16, int32, float32, float64"
MAX_BYTES = 2**31                      # the largest array read_idx returns by default (MNIST's: 47 MB)
MAX_FILE_BYTES = 2**32                 # the largest file it opens (compressed or not)


class IDXError(InputError):
    """A file is not a valid IDX file (or an array cannot be written as one)."""


def read_idx(path, max_bytes=MAX_BYTES):
    """The array stored in the IDX file ``path`` (gzip-compressed or raw), in native byte order.

    Only a regular file is read (a FIFO or /dev/zero is refused without waiting on it). The header
    is read first and its size computed in exact integers; an array over ``max_bytes`` is refused
    before anything more is read, and decompression stops one byte past the size the header
    declares, so a gzip bomb costs at most that. Raises IDXError naming the file for a corrupt
    gzip stream, a bad magic number, an unknown type code, zero dimensions, or data shorter
    (truncated) or longer (trailing bytes) than the header promises.
    """
    try:
        raw = open_regular_file(path, MAX_FILE_BYTES, "the IDX file")
    except InputError as err:
        raise IDXError(str(err)) from None
    with raw:
        compressed = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw) if compressed else raw
        where = f"{path}" + (" (after gunzip)" if compressed else "")
        try:
            return _read_array(stream, where, max_bytes)
        except (OSError, EOFError, zlib.error) as err:
            raise IDXError(f"{path}: corrupt or truncated gzip data ({err})") from err


def _read_array(stream, where, max_bytes):
    """The header, then exactly the data it declares (and one byte more, to catch trailing bytes)."""
    head = stream.read(4)
    if len(head) < 4:
        raise IDXError(f"{where}: too short for an IDX header: {len(head)} bytes, need at least 4")
    if head[0] != 0 or head[1] != 0:
        raise IDXError(
            f"{where}: bad magic number 0x{head.hex()}: an IDX file starts with two zero bytes, "
            f"a type code and the number of dimensions (e.g. 0x00000803)"
        )
    code, ndim = head[2], head[3]
    if code not in TYPE_CODES:
        known = ", ".join(f"0x{c:02X} {d.newbyteorder('=')}" for c, d in TYPE_CODES.items())
        raise IDXError(f"{where}: unknown type code 0x{code:02X}; expected one of {known}")
    if ndim == 0:
        raise IDXError(f"{where}: the header says 0 dimensions; an IDX array has at least 1")
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise IDXError(f"{where}: truncated header: {ndim} dimensions need {4 + 4 * ndim} header bytes, "
                       f"file has {4 + len(dims)}")
    shape = tuple(int.from_bytes(dims[4 * i:4 * i + 4], "big") for i in range(ndim))
    dtype = TYPE_CODES[code]
    expected = math.prod(shape) * dtype.itemsize                     # exact: Python integers never overflow
    described = f"{'x'.join(map(str, shape))} {dtype.newbyteorder('=')} = {expected:,} bytes"
    if expected > max_bytes:
        raise IDXError(f"{where}: the header says {described} of data, more than numpyvit reads "
                       f"({max_bytes:,} bytes; MNIST's largest file holds 47,040,000)")
    data = stream.read(expected + 1)
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "trailing bytes"
        found = f"{len(data):,}" if len(data) < expected else "more"
        raise IDXError(f"{where}: {problem}: header says {described} of data, file has {found}")
    array = np.frombuffer(data, dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable native-endian copy


def write_idx(path, array):
    """Write ``array`` (uint8, int8, int16, int32, float32 or float64; at least 1-D) as an
    IDX file at ``path``, gzip-compressed when ``path`` ends with ".gz"."""
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODE_OF:
        raise IDXError(f"{path}: cannot store dtype {array.dtype} in IDX; use one of {_SUPPORTED}")
    if not 1 <= array.ndim <= 255:
        raise IDXError(f"{path}: IDX stores arrays with 1 to 255 dimensions, got shape {array.shape}")
    if max(array.shape) >= 2**32:
        raise IDXError(f"{path}: IDX dimensions must fit in uint32, got shape {array.shape}")

    header = bytes([0, 0, _CODE_OF[native], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=TYPE_CODES[_CODE_OF[native]]).tobytes()
    if os.fspath(path).endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)  # mtime=0: same array, same bytes
    with open(path, "wb") as f:
        f.write(payload)
