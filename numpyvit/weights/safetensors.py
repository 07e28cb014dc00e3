"""The safetensors format (timm's and Hugging Face's weight files), read and written with NumPy.

The whole layout of a file:

    8 bytes   N: the length of the header, an unsigned 64-bit little-endian integer
    N bytes   the header, a JSON object (UTF-8), padded with spaces:
              {name: {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}, ...,
               "__metadata__": {str: str}}                       (the metadata is optional)
    the rest  the tensors' bytes, row-major and little-endian; a tensor's offsets count from the
              end of the header, and end - begin = product(shape) x the dtype's size

Reading maps the file into memory (``mmap``), so a 350 MB file is not read twice: a
float32 tensor is a view of the mapped bytes until the model copies it. Every field of the header
is checked against the file before any byte is used (types, dtypes, exact byte counts in Python
integers, offsets, overlaps, duplicate names, JSON nesting), and a bad file is refused with a
SafetensorsError that names the file and the tensor. Nothing in the file is ever executed: the
format holds only numbers. Not checked: a file changed on disk while arrays read from it are still
in use (its pages are read lazily; truncating it then ends the process with SIGBUS, as with any
memory-mapped file).

The parser is numpyvit's own, not Hugging Face's ``safetensors`` package: that package is a
compiled extension (the core depends on NumPy alone), and it cannot hand NumPy a BF16 tensor.
The format is small enough to validate completely here, and tests/test_fuzz.py mutates valid files
byte by byte and field by field to keep it so.

NumPy has no bfloat16: BF16 (the upper 16 bits of a float32) is widened to float32 exactly by
shifting its bits into place; F16 is widened to float32 too.
"""
import json
import math
import mmap
from pathlib import Path

import numpy as np

from ..backend import to_numpy
from ..io import atomic_file
from .errors import WeightsError

# safetensors dtype -> NumPy dtype (BF16 is read as its uint16 bits, then widened)
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
          "I8": "i1", "U8": "u1", "BOOL": "?"}
WRITTEN = {np.dtype(v): k for k, v in DTYPES.items() if k != "BF16"}
MAX_HEADER = 100 * 2**20               # the reference implementation refuses larger headers too
MAX_NESTING = 64                       # JSON depth: a header is {name: {field: [ints]}}, depth 3


class SafetensorsError(WeightsError):
    """A safetensors file is corrupt, truncated or malformed; the message names file and tensor."""


def read_safetensors(path):
    """({name: array}, metadata) of a safetensors file: F32/F64/integer tensors as read-only views
    of the mapped file, F16 and BF16 widened to float32; metadata is the header's
    ``__metadata__`` ({} if none)."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise SafetensorsError(f"{path}: {size} bytes, too short for a safetensors file (8-byte header length)")
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if header_len > min(size - 8, MAX_HEADER):
            raise SafetensorsError(f"{path}: the header claims {header_len} bytes but the file has {size - 8} after "
                                   "its length field (truncated, or not a safetensors file)")
        raw = f.read(header_len)
    try:
        text = raw.decode("utf-8")
        if _nesting(text) > MAX_NESTING:
            raise SafetensorsError(f"{path}: the header nests JSON more than {MAX_NESTING} deep (a safetensors "
                                   "header is {name: {dtype, shape, data_offsets}})")
        header = json.loads(text, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SafetensorsError(f"{path}: the header is not valid JSON ({err})") from err
    except _DuplicateKey as err:
        raise SafetensorsError(f"{path}: the header names {err.args[0]!r} twice") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header must be a JSON object, got {type(header).__name__}")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError(f"{path}: __metadata__ must map strings to strings")
    data_start, data_size = 8 + header_len, size - 8 - header_len
    entries = {name: _check_entry(path, name, entry, data_size) for name, entry in header.items()}
    _check_no_overlap(path, entries)
    mapped = _map(path)[data_start:] if data_size else np.zeros(0, np.uint8)
    tensors = {}
    for name, (dtype, shape, begin, end) in entries.items():
        raw_tensor = mapped[begin:end]
        array = raw_tensor.view(DTYPES[dtype]).reshape(shape)
        if dtype == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)    # bfloat16 = a float32's top half
        elif dtype == "F16":
            array = array.astype(np.float32)
        tensors[name] = array
    return tensors, metadata


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs):
    """A JSON object as a dict, refusing a key that appears twice (json.loads keeps the last)."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _nesting(text):
    """The deepest nesting of [ and { in JSON text, counted outside strings (no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _map(path):
    """The file mapped into memory, read-only, as a uint8 array (no copy, no read)."""
    with open(path, "rb") as f:
        return np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)


def _check_entry(path, name, entry, data_size):
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise SafetensorsError(f"{where}: needs exactly dtype, shape and data_offsets, got {entry!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise SafetensorsError(f"{where}: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise SafetensorsError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise SafetensorsError(f"{where}: data_offsets must be [begin, end], got {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise SafetensorsError(f"{where}: data_offsets {offsets} fall outside the {data_size} bytes of data "
                               "(truncated or corrupt file)")
    expected = math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize     # exact: Python integers
    if end - begin != expected:
        raise SafetensorsError(f"{where}: shape {shape} of {dtype} needs {expected} bytes but data_offsets "
                               f"{offsets} hold {end - begin}")
    return dtype, tuple(shape), begin, end


def _check_no_overlap(path, entries):
    spans = sorted((begin, end, name) for name, (_, _, begin, end) in entries.items() if end > begin)
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise SafetensorsError(f"{path}: tensors {first!r} and {second!r} overlap in the file")


def write_safetensors(path, tensors, metadata=None):
    """Write {name: array} (NumPy or CuPy; float64/32/16 and integer dtypes) and optional
    string metadata as a safetensors file, atomically (a temporary file renamed over ``path``)."""
    arrays = {name: np.require(to_numpy(value), requirements="C") for name, value in tensors.items()}
    arrays = {name: array.astype(array.dtype.newbyteorder("<")) if array.dtype.byteorder == ">" else array
              for name, array in arrays.items()}                     # big-endian: the same numbers, little-endian
    header, offset = {}, 0
    for name, array in arrays.items():
        if array.dtype not in WRITTEN:
            raise SafetensorsError(f"write_safetensors: tensor {name!r} has dtype {array.dtype}; the format holds "
                                   f"{', '.join(str(np.dtype(d)) for d in WRITTEN)} (convert it, e.g. .astype(float32))")
        header[name] = dict(dtype=WRITTEN[array.dtype], shape=list(array.shape),
                            data_offsets=[offset, offset + array.nbytes])
        offset += array.nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)                            # the data starts 8-byte aligned
    with atomic_file(path) as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for array in arrays.values():
            f.write(np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False)).data)  # no copy
