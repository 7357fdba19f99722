r"""ndarrays on the wire as {dtype, shape, data}: an allow-list of little-endian dtypes, never pickle.

>>> import numpy as np
>>> wire = encode_array(np.array([1.0, 2.0], dtype=">f4"))  # big-endian in memory
>>> wire  # little-endian on the wire
{'dtype': '<f4', 'shape': [2], 'data': b'\x00\x00\x80?\x00\x00\x00@'}
>>> decode_array(wire).tolist()
[1.0, 2.0]
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import msgpack
import numpy as np

from .errors import Reason, RejectedMessage
from .wire import ARRAY, BIN, INT, STR, Reader

# numpy dtype strings, always little-endian (or byte-order free for one-byte types).
ALLOWED_DTYPES = ("|b1", "|u1", "|i1", "<i2", "<i4", "<i8", "<f2", "<f4", "<f8")
MAX_NDIM = 8
MAX_DIM = 2**40
ARRAY_FIELDS = ("dtype", "shape", "data")


def encode_array(array: np.ndarray) -> dict[str, Any]:
    array = np.asarray(array)
    dtype = array.dtype if array.dtype.itemsize == 1 else array.dtype.newbyteorder("<")
    if dtype.str not in ALLOWED_DTYPES:
        raise ValueError(f"dtype {array.dtype} is not allowed on the wire; allowed: {', '.join(ALLOWED_DTYPES)}")
    if array.ndim > MAX_NDIM:
        raise ValueError(f"at most {MAX_NDIM} dimensions travel, got {array.ndim}")
    data = np.asarray(array, dtype=dtype, order="C")  # not ascontiguousarray: it turns 0-d into shape (1,)
    return {"dtype": dtype.str, "shape": list(data.shape), "data": data.tobytes()}


def decode_array(obj: Any) -> np.ndarray:
    """An ndarray from its decoded wire map (a trusted local map, e.g. the worker's IPC)."""
    if not isinstance(obj, dict) or set(obj) != set(ARRAY_FIELDS):
        raise RejectedMessage(Reason.SCHEMA, "an ndarray is a map of exactly dtype, shape, data")
    dtype, shape, data = obj["dtype"], obj["shape"], obj["data"]
    shape_ok = isinstance(shape, list) and len(shape) <= MAX_NDIM and all(type(d) is int and 0 <= d < MAX_DIM
                                                                          for d in shape)
    return from_parts(dtype if isinstance(dtype, str) else None, shape if shape_ok else None,
                      data if isinstance(data, bytes) else None)


def read_array(reader: Reader, where: str) -> np.ndarray:
    """An ndarray from peer bytes. Its three values are read (or skipped, when of the wrong type)
    before any is judged, so the reasons come in the order of §6 whatever the key order."""
    parts: dict[str, Any] = {}
    for key in reader.fields(where, ARRAY_FIELDS):
        parts[key] = _PART_READERS[key](reader, f"{where}.{key}")
    return from_parts(parts["dtype"], parts["shape"], parts["data"])


def _read_shape(reader: Reader, where: str) -> list[int] | None:
    def items() -> list[int] | None:
        dims = [reader.optional(INT, 0, lambda: reader.int(where, -2**63, 2**64)) for _ in range(reader.array(where, MAX_NDIM))]
        return dims if all(d is not None and 0 <= d < MAX_DIM for d in dims) else None
    return reader.optional(ARRAY, MAX_NDIM, items)


_LONGEST_DTYPE = max(map(len, ALLOWED_DTYPES))
_PART_READERS = {
    "dtype": lambda r, where: r.optional(STR, _LONGEST_DTYPE, lambda: r.str(where, _LONGEST_DTYPE)),
    "shape": _read_shape,
    "data": lambda r, where: r.optional(BIN, 2**32, lambda: r.bin(where, 0, 2**32)),
}


def from_parts(dtype: str | None, shape: list[int] | None, data: bytes | memoryview | None) -> np.ndarray:
    """The checks of §6 in their order; None stands for a value of the wrong type. The array is a
    read-only view of `data` (no copy); learners copy what they keep."""
    if dtype not in ALLOWED_DTYPES:
        raise RejectedMessage(Reason.DTYPE_NOT_ALLOWED, f"dtype {dtype!r} is not in the allow-list")
    if shape is None:
        raise RejectedMessage(Reason.SCHEMA, f"shape must be a list of at most {MAX_NDIM} ints in [0, 2**40)")
    if data is None:
        raise RejectedMessage(Reason.SCHEMA, "ndarray data must be a bin")
    itemsize = np.dtype(dtype).itemsize
    expected = math.prod(shape) * itemsize
    if expected != len(data):
        raise RejectedMessage(Reason.SHAPE_MISMATCH, f"shape {shape} of {dtype} needs {expected} bytes, got {len(data)}")
    # An empty array may still name huge dims ([0, 2**39, 2**39]); numpy refuses (ValueError) when
    # the product of the non-zero dims times the item size overflows its index type.
    if math.prod(d for d in shape if d) * itemsize > np.iinfo(np.intp).max:
        raise RejectedMessage(Reason.SHAPE_MISMATCH, f"shape {shape} is too big for any array")
    array = np.ndarray(shape, np.dtype(dtype), buffer=data)
    array.flags.writeable = False
    return array


def array_digest(array: np.ndarray) -> bytes:
    """SHA-256 of an array's canonical bytes: msgpack of its wire form (little-endian, C order).
    Probe sets are named by this digest; nodes only combine signals computed on the same one."""
    return hashlib.sha256(msgpack.packb(encode_array(array), use_bin_type=True)).digest()
