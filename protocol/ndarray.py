"""ndarrays on the wire as {dtype, shape, data}: an allow-list of little-endian dtypes, never pickle."""
from __future__ import annotations

import hashlib
import math
from typing import Any

import msgpack
import numpy as np

from .errors import Reason, RejectedMessage

# numpy dtype strings, always little-endian (or byte-order free for one-byte types).
ALLOWED_DTYPES = ("|b1", "|u1", "|i1", "<i2", "<i4", "<i8", "<f2", "<f4", "<f8")
MAX_NDIM = 8


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
    """A read-only array over the received bytes (no copy); learners copy what they keep."""
    if not isinstance(obj, dict) or set(obj) != {"dtype", "shape", "data"}:
        raise RejectedMessage(Reason.SCHEMA, "an ndarray is a map of exactly dtype, shape, data")
    dtype, shape, data = obj["dtype"], obj["shape"], obj["data"]
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise RejectedMessage(Reason.DTYPE_NOT_ALLOWED, f"dtype {dtype!r} is not in the allow-list")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(type(d) is int and 0 <= d < 2**40 for d in shape)):
        raise RejectedMessage(Reason.SCHEMA, "shape must be a list of at most 8 non-negative ints")
    if not isinstance(data, bytes):
        raise RejectedMessage(Reason.SCHEMA, "ndarray data must be bytes")
    itemsize = np.dtype(dtype).itemsize
    expected = math.prod(shape) * itemsize
    if expected != len(data):
        raise RejectedMessage(Reason.SHAPE_MISMATCH, f"shape {shape} of {dtype} needs {expected} bytes, got {len(data)}")
    # An empty array may still name huge dims ([0, 2**39, 2**39]); numpy refuses (ValueError) when
    # the product of the non-zero dims times the item size overflows its index type.
    if math.prod(d for d in shape if d) * itemsize > np.iinfo(np.intp).max:
        raise RejectedMessage(Reason.SHAPE_MISMATCH, f"shape {shape} is too big for any array")
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)


def array_digest(array: np.ndarray) -> bytes:
    """SHA-256 of an array's canonical bytes: msgpack of its wire form (little-endian, C order).
    Probe sets are named by this digest; nodes only combine signals computed on the same one."""
    return hashlib.sha256(msgpack.packb(encode_array(array), use_bin_type=True)).digest()
