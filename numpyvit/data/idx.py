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
import os
import zlib

import numpy as np

from ..errors import InputError

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


class IDXError(InputError):
    """A file is not a valid IDX file (or an array cannot be written as one)."""


def read_idx(path):
    """The array stored in the IDX file ``path`` (gzip-compressed or raw), in native byte order.

    Raises IDXError naming the file for a corrupt gzip stream, a bad magic number, an unknown
    type code, zero dimensions, or data shorter (truncated) or longer (trailing bytes) than
    the header promises.
    """
    with open(path, "rb") as f:
        raw = f.read()
    data = raw
    if raw[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise IDXError(f"{path}: corrupt or truncated gzip data ({err})") from err
    where = f"{path}" + (" (after gunzip)" if data is not raw else "")

    if len(data) < 4:
        raise IDXError(f"{where}: too short for an IDX header: {len(data)} bytes, need at least 4")
    if data[0] != 0 or data[1] != 0:
        raise IDXError(
            f"{where}: bad magic number 0x{data[:4].hex()}: an IDX file starts with two zero bytes, "
            f"a type code and the number of dimensions (e.g. 0x00000803)"
        )
    code, ndim = data[2], data[3]
    if code not in TYPE_CODES:
        known = ", ".join(f"0x{c:02X} {d.newbyteorder('=')}" for c, d in TYPE_CODES.items())
        raise IDXError(f"{where}: unknown type code 0x{code:02X}; expected one of {known}")
    if ndim == 0:
        raise IDXError(f"{where}: the header says 0 dimensions; an IDX array has at least 1")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IDXError(
            f"{where}: truncated header: {ndim} dimensions need {header_len} header bytes, "
            f"file has {len(data)}"
        )

    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = TYPE_CODES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header_len
    if found != expected:
        problem = "truncated" if found < expected else "trailing bytes"
        dims = "x".join(str(d) for d in shape)
        raise IDXError(
            f"{where}: {problem}: header says {dims} {dtype.newbyteorder('=')} = {expected} bytes "
            f"of data, file has {found}"
        )
    array = np.frombuffer(data, dtype, offset=header_len).reshape(shape)
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
