"""Codecs: how a tensor is compressed for the wire, and how a receiver checks and decodes it.

A codec turns a float array into what travels: a plain ndarray (§6: `float32` sends the array as it
is, `float16` as `<f2`) or a *coded tensor* (docs/PROTOCOL.md §6a), a map of the codec's name, the
dense shape, a few numbers and up to four ndarray parts:

>>> import numpy as np
>>> codec = get_codec("topk:0.25")
>>> coded = codec.encode(np.array([0.1, -3.0, 0.2, 2.0], np.float32))
>>> coded.codec, coded.shape, coded.parts[0].tolist(), coded.parts[1].tolist()
('topk', (4,), [1], [-3.0])
>>> dense(coded, base=np.ones(4, np.float32)).tolist()  # what a sparse message leaves out: the base's
[1.0, -3.0, 1.0, 1.0]

Receiving is bounded before anything is allocated: `check_coded` refuses a message whose coded
tensors would decode to more than the kind's payload limit, an unknown codec, and parts that break
their codec's rules (too many or unsorted indices, a non-finite scale), each with its typed reason;
only then may `dense` build the float32 array (a node first compares the declared shapes with its
own model's). Third-party codecs come through the entry-point group `manymodels.codecs`, parsed and
bound by the rules' machinery (aggregation/base.py): an entry point loads to a `CodecSpec`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import numpy as np

from manymodels.aggregation.base import Param, bind_params, entry_point_source, given_params, load_plugin

from .errors import Reason, RejectedMessage
from .ndarray import MAX_DIM, MAX_NDIM, encode_array, read_array
from .wire import Reader, schema

ENTRY_POINT_GROUP = "manymodels.codecs"
KINDS = ("weights", "logits")  # what a codec may compress: model tensors, logits on a probe set
CODED_FIELDS = ("codec", "shape", "params", "parts")
MAX_PARAMS, MAX_PARTS = 8, 4
_F32_MAX = float(np.finfo(np.float32).max)


class CodecError(ValueError):
    """A codec spec that does not parse; the message says why."""


@dataclass(frozen=True)
class Coded:
    """A coded tensor as it travels (§6a); `parts` are read-only views of the received bytes."""

    codec: str
    shape: tuple[int, ...]
    params: tuple[float, ...]
    parts: tuple[np.ndarray, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def to_wire(self) -> dict[str, Any]:
        return {"codec": self.codec, "shape": list(self.shape), "params": [float(p) for p in self.params],
                "parts": [encode_array(p) for p in self.parts]}


Tensor = np.ndarray | Coded


def read_coded(reader: Reader, where: str) -> Coded:
    """A coded tensor's structure from peer bytes; its codec's rules are checked later (`check_coded`)."""
    values = {key: _CODED_READERS[key](reader, f"{where}.{key}") for key in reader.fields(where, CODED_FIELDS)}
    return Coded(values["codec"], tuple(values["shape"]), tuple(values["params"]), tuple(values["parts"]))


_CODED_READERS: dict[str, Callable[[Reader, str], Any]] = {
    "codec": lambda r, where: r.str(where, 64),
    "shape": lambda r, where: [r.int(where, 0, MAX_DIM - 1) for _ in range(r.array(where, MAX_NDIM))],
    "params": lambda r, where: [r.number(where, -2.0**63, 2.0**63) for _ in range(r.array(where, MAX_PARAMS))],
    "parts": lambda r, where: [read_array(r, where) for _ in range(r.array(where, MAX_PARTS))],
}


@dataclass(frozen=True)
class CodecSpec:
    """A codec as the registry knows it; a plugin's entry point loads to one of these.

    `encode(array, rng, base, **params)` returns an ndarray or a `Coded`; `check(coded)` raises
    RejectedMessage for parts that break the codec's rules, allocating nothing of the dense size;
    `decode(coded, base)` returns the float32 array of `coded.shape`, and must succeed on whatever
    `check` passed (a plugin is code the node's operator installed, as a rule is). `base` is the array a
    *relative* codec (a sparse one) takes what it leaves out from: the sender's view of what it
    told, the receiver's own tensor; None means zeros."""

    name: str
    kinds: tuple[str, ...]
    encode: Callable[..., Tensor]
    check: Callable[[Coded], None] = lambda coded: None
    decode: Callable[[Coded, np.ndarray | None], np.ndarray] | None = None
    params: tuple[Param, ...] = ()
    description: str = ""
    relative: bool = False
    example: str = ""
    named_params: bool = False


@dataclass(frozen=True)
class Codec:
    """A codec with its parameters bound; build one with `get_codec(spec)`."""

    spec: str  # canonical: every parameter written out, e.g. "int8" -> "int8:0"
    params: dict[str, int | float] = field(hash=False)
    definition: CodecSpec = field(repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def relative(self) -> bool:
        return self.definition.relative

    @property
    def lossless(self) -> bool:
        return self.name == "float32"

    def __deepcopy__(self, memo: dict) -> Codec:
        """Immutable: a copy of what holds a codec (an exchange, replayed per fold) shares it."""
        return self

    def encode(self, array: np.ndarray, rng: np.random.Generator | None = None,
               base: np.ndarray | None = None) -> Tensor:
        return self.definition.encode(np.asarray(array), rng, base, **self.params)


def _bad(detail: str) -> RejectedMessage:
    return RejectedMessage(Reason.BAD_CODING, detail)


def _expect(coded: Coded, params: int, dtypes: tuple[tuple[str, ...], ...]) -> None:
    """`params` numbers and one part per entry of `dtypes`, each 1-D of one of its dtypes (schema)."""
    if len(coded.params) != params or len(coded.parts) != len(dtypes):
        raise schema(coded.codec, f"{params} params and {len(dtypes)} parts")
    for part, allowed in zip(coded.parts, dtypes):
        if part.ndim != 1 or part.dtype.str not in allowed:
            raise schema(coded.codec, f"1-D parts of dtypes {dtypes}")


def _length(coded: Coded, part: int, expected: int) -> None:
    if len(coded.parts[part]) != expected:
        raise RejectedMessage(Reason.SHAPE_MISMATCH, f"{coded.codec} part {part} has {len(coded.parts[part])} "
                                                      f"entries, shape {list(coded.shape)} needs {expected}")


def _integer(coded: Coded, value: float, lo: int, hi: int) -> int:
    if not (value == int(value) and lo <= value <= hi):
        raise schema(coded.codec, f"an integer parameter in [{lo}, {hi}]")
    return int(value)


def _base(base: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """A flat float32 copy of `base`, or zeros."""
    return np.zeros(math.prod(shape), np.float32) if base is None else np.array(base, np.float32).ravel()


# --- float32, float16: plain ndarrays (§6) ----------------------------------------------------------

def _float32(array, rng, base):
    return array


def _float16(array, rng, base):
    return np.clip(array, -65504, 65504).astype("<f2")  # beyond float16's range: its largest, not inf


# --- bfloat16: the top 16 bits of each float32 ------------------------------------------------------

_BF16_MAX = float(np.array(0x7F7F0000, np.uint32).view(np.float32))


def _bfloat16(array, rng, base):
    bits = np.clip(array, -_BF16_MAX, _BF16_MAX).astype(np.float32).ravel().view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # to nearest, ties to even
    return Coded("bfloat16", array.shape, (), (rounded.astype(np.uint16).view("<i2"),))


def _bfloat16_check(coded: Coded) -> None:
    _expect(coded, 0, (("<i2",),))
    _length(coded, 0, coded.size)
    if np.any((coded.parts[0].view(np.uint16) & 0x7F80) == 0x7F80):
        raise _bad("bfloat16 holds a NaN or an infinity")


def _bfloat16_decode(coded: Coded, base) -> np.ndarray:
    return (coded.parts[0].view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(coded.shape)


# --- working a chunk at a time ------------------------------------------------------------------

# Values a codec's pass works on at a time: 256 KB of float32, so its temporaries stay in the core's
# cache; whole-array temporaries make every step a trip to memory (and fault in fresh pages), several
# times slower on 10 M values (bench/bench_compression.py).
_CHUNK = 1 << 16


def _blockwise(op: np.ufunc, values: np.ndarray, scale: np.ndarray, block: int, start: int, out: np.ndarray) -> None:
    """out = op(values, scale of each value's block), for the values at flat positions start, start + 1,
    ...: the rest of the block `start` falls in, the whole blocks as rows, then the start of the next."""
    n = len(values)
    head = min(n, -start % block)
    first = -(-start // block)  # the first block that starts in this run
    whole = (n - head) // block
    end = head + whole * block
    if head:
        op(values[:head], scale[first - 1], out=out[:head])
    rows = (whole, block)
    op(values[head:end].reshape(rows), scale[first:first + whole, None], out=out[head:end].reshape(rows))
    if end < n:
        op(values[end:], scale[first + whole], out=out[end:])


# --- int8, qint: symmetric integers, one float32 scale per block ------------------------------------

def _quantise(array: np.ndarray, block: int, levels: int, offset: int,
              dtype: type) -> tuple[np.ndarray, np.ndarray, int]:
    """`array` rounded to integers in [-levels, levels], plus `offset`, as flat `dtype`; one scale per
    `block` values (0: one block), each the block's largest |value| / levels; and the block size used."""
    flat = np.asarray(array, np.float32).ravel()
    block = min(block or flat.size, flat.size) or 1
    whole = flat.size // block * block  # a shorter last block has a scale of its own
    grid, rest = flat[:whole].reshape(-1, block), flat[whole:].reshape(min(1, flat.size - whole), flat.size - whole)
    largest = np.concatenate([grid.max(axis=1, initial=0.0), rest.max(axis=1, initial=0.0)])
    smallest = np.concatenate([grid.min(axis=1, initial=0.0), rest.min(axis=1, initial=0.0)])
    scale = (np.maximum(largest, -smallest) / levels).astype("<f4")
    divisor = np.where(scale > 0, scale, np.float32(1))
    codes, work = np.empty(flat.size, dtype), np.empty(min(_CHUNK, flat.size), np.float32)
    for start in range(0, flat.size, _CHUNK):
        q = work[:flat.size - start]
        _blockwise(np.divide, flat[start:start + len(q)], divisor, block, start, q)
        np.rint(q, out=q)
        np.clip(q, -levels, levels, out=q)
        if offset:
            q += offset
        codes[start:start + len(q)] = q
    return codes, scale, block


def _dequantise(codes: np.ndarray, offset: int, scale: np.ndarray, block: int, shape: tuple[int, ...]) -> np.ndarray:
    """float32(code - offset) x its block's scale, for each code."""
    block = min(block, max(len(codes), 1))  # a block beyond the tensor is one scale
    out = np.empty(len(codes), np.float32)
    for start in range(0, len(out), _CHUNK):
        chunk = out[start:start + _CHUNK]
        chunk[...] = codes[start:start + _CHUNK]  # a plain cast: ~2x a ufunc's buffered mixed-type loop
        if offset:
            chunk -= np.float32(offset)
        _blockwise(np.multiply, chunk, scale, block, start, chunk)
    return out.reshape(shape)


def _check_scales(coded: Coded, part: int, block: int, largest: int) -> None:
    """One scale per block, each finite, >= 0 and small enough that `largest` x scale is finite."""
    _length(coded, part, -(-coded.size // block))
    scale = coded.parts[part]
    if not np.all((scale >= 0) & (scale <= _F32_MAX / largest)):  # NaN fails both
        raise _bad(f"{coded.codec} scales must be finite, >= 0 and <= float32's largest / {largest}")


def _int8(array, rng, base, block: int = 0):
    codes, scale, block = _quantise(array, block, 127, 0, np.int8)
    return Coded("int8", array.shape, (float(block),), (codes, scale))


def _int8_check(coded: Coded) -> None:
    _expect(coded, 1, (("|i1",), ("<f4",)))
    block = _integer(coded, coded.params[0], 1, 2**62)
    _length(coded, 0, coded.size)
    _check_scales(coded, 1, block, 127)


def _int8_decode(coded: Coded, base) -> np.ndarray:
    return _dequantise(coded.parts[0], 0, coded.parts[1], int(coded.params[0]), coded.shape)


def _qint(array, rng, base, bits: int, block: int = 0):
    """int8's scheme on 2^bits - 1 levels, packed: qint:4 is 4 bits a value and a scale per tensor."""
    levels = (1 << (bits - 1)) - 1
    codes, scale, block = _quantise(array, block, levels, levels, np.uint8)
    return Coded("qint", array.shape, (float(bits), float(block)), (_pack(codes, bits), scale))


def _qint_check(coded: Coded) -> None:
    _expect(coded, 2, (("|u1",), ("<f4",)))
    bits = _integer(coded, coded.params[0], 2, 8)
    block = _integer(coded, coded.params[1], 1, 2**62)
    _length(coded, 0, -(-coded.size * bits // 8))
    _check_scales(coded, 1, block, 1 << (bits - 1))  # a code decodes to at most 2^(bits-1) x its scale


def _qint_decode(coded: Coded, base) -> np.ndarray:
    bits, block = int(coded.params[0]), int(coded.params[1])
    codes = _unpack(coded.parts[0], coded.size, bits)
    return _dequantise(codes, (1 << (bits - 1)) - 1, coded.parts[1], block, coded.shape)


# --- topk, randk: sparse, relative to a base --------------------------------------------------------

def _index_dtype(size: int) -> str:
    return "<i4" if size < 2**31 else "<i8"


def _sparse(name: str, array: np.ndarray, index: np.ndarray) -> Coded:
    """The coded tensor of `array`'s values at `index` (sorted, of `_index_dtype`)."""
    return Coded(name, array.shape, (), (index, np.take(array.ravel(), index).astype("<f4")))


def _count(size: int, fraction: float) -> int:
    return min(size, max(1, math.ceil(fraction * size))) if size else 0


def _topk(array, rng, base, fraction: float):
    """The k entries that differ most from `base` (error feedback: what was told before)."""
    flat = np.asarray(array, np.float32).ravel()
    base = np.zeros(1, np.float32) if base is None else np.asarray(base).ravel()
    k = _count(flat.size, fraction)
    index = _largest_changes(flat, base, k).astype(_index_dtype(flat.size))
    return _sparse("topk", array, index)


def _largest_changes(flat: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
    """The sorted indices of the k largest |flat - base| (`base` of one value: against it everywhere;
    a NaN ranks largest, as numpy sorts it; of equal changes at the k-th, the first). One pass
    keeps the changes at or above a threshold that a strided sample puts a little below the k-th
    largest, and np.partition finds the k-th among those few (an argpartition of all 10 M values
    takes ~0.15 s). A threshold too high for k is followed by one of 0, which keeps everything."""
    if k == 0:
        return np.zeros(0, np.int64)
    stride = max(1, flat.size // _CHUNK)
    sample = np.abs(flat[::stride] - base[::stride])
    # the sample's expected count at or above the k-th largest, plus 5 % and 4 standard deviations
    above = min(sample.size, math.ceil(1.05 * k / stride + 4 * math.sqrt(k / stride)) + 8)
    for threshold in (np.partition(sample, sample.size - above)[sample.size - above], 0.0):
        index, change = _changes_from(flat, base, threshold)
        if len(index) >= k:
            break
    kth = np.partition(change, len(change) - k)[len(change) - k]
    if np.isnan(kth):
        return index[np.flatnonzero(np.isnan(change))[:k]]
    chosen = ~(change <= kth)  # above the k-th largest, and NaN
    chosen[np.flatnonzero(change == kth)[:k - np.count_nonzero(chosen)]] = True
    return index[chosen]


def _changes_from(flat: np.ndarray, base: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The indices (ascending) and values of the |flat - base| not below `threshold` (NaN included)."""
    indices, changes = [], []
    work = np.empty(min(_CHUNK, flat.size), np.result_type(flat, base))
    below = np.empty(len(work), bool)
    for start in range(0, flat.size, _CHUNK):
        part = slice(start, start + _CHUNK)
        change, low = work[:len(flat[part])], below[:len(flat[part])]
        np.abs(np.subtract(flat[part], base[part] if base.size > 1 else base, out=change), out=change)
        keep = np.flatnonzero(np.logical_not(np.less(change, threshold, out=low), out=low))
        changes.append(np.take(change, keep))
        indices.append(keep + start)
    return np.concatenate(indices), np.concatenate(changes)


def _randk(array, rng, base, fraction: float):
    """k entries drawn uniformly without replacement."""
    rng = rng if rng is not None else np.random.default_rng()
    index = rng.choice(array.size, _count(array.size, fraction), replace=False)
    return _sparse("randk", array, _ascending(index).astype(_index_dtype(array.size)))


def _ascending(index: np.ndarray) -> np.ndarray:
    """Distinct indices sorted; below 2^32 by two stable radix passes over their 16-bit halves, ~2.5x
    np.sort's comparison sort on 100,000 of them."""
    if len(index) == 0 or index.max() >= 2**32:
        return np.sort(index)
    index = index.astype(np.uint32)
    index = index[np.argsort((index & 0xFFFF).astype(np.uint16), kind="stable")]
    return index[np.argsort((index >> 16).astype(np.uint16), kind="stable")]


def _sparse_check(coded: Coded) -> None:
    _expect(coded, 0, (("<i4", "<i8"), ("<f2", "<f4", "<f8")))
    index, values = coded.parts
    _length(coded, 1, len(index))
    if len(index) > coded.size:
        raise _bad(f"{len(index)} indices for a tensor of {coded.size}")
    if len(index) and not (index[0] >= 0 and index[-1] < coded.size and np.all(index[1:] > index[:-1])):
        raise _bad(f"indices must be strictly increasing, in [0, {coded.size})")
    if not np.isfinite(values).all():
        raise _bad("sparse values must be finite")


def _sparse_decode(coded: Coded, base) -> np.ndarray:
    out = _base(base, coded.shape)
    index, values = coded.parts
    out[index] = values
    return out.reshape(coded.shape)


# --- packing: values of `bits` bits, little-endian bit order (uint8, qint) -------------------------

# Each 8 values travel in `bits` bytes, value j of a group at bit j x bits: as one little-endian uint64
# holding a value a byte, pushed together by three shift-and-mask steps (bytes into pairs, pairs into
# fours, fours into one), and apart again by the same steps backwards. Per step: the width of a lane,
# and how many values it holds in its low bits before it merges with its neighbour.
_STEPS = ((8, 1), (16, 2), (32, 4))


def _lanes(width: int, keep: int) -> int:
    """A uint64 mask of the low `keep` bits of every other `width`-bit lane."""
    return sum(((1 << keep) - 1) << (2 * width * i) for i in range(32 // width))


def _squeeze(words: np.ndarray, bits: int, apart: bool) -> None:
    """In place: a value a byte -> packed (apart=False), or back (apart=True)."""
    moved = np.empty_like(words)
    for width, step in reversed(_STEPS) if apart else _STEPS:
        mask = np.uint64(_lanes(width, step * bits if apart else width))
        np.bitwise_and(words, ~mask, out=moved)
        words &= mask
        if apart:
            moved <<= np.uint64(width - step * bits)
        else:
            moved >>= np.uint64(width - step * bits)
        words |= moved


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned uint8 `values` < 2^bits, value i at bit offset i x bits."""
    if bits == 8:
        return values
    groups = -(-len(values) // 8)
    words = np.zeros((groups, 8), np.uint8)
    words.ravel()[:len(values)] = values
    _squeeze(words.view("<u8").ravel(), bits, apart=False)
    packed = np.empty((groups, bits), np.uint8)
    for byte in range(bits):  # a column at a time: numpy copies a (groups, bits) slice row by row, ~6x slower
        packed[:, byte] = words[:, byte]
    return packed.ravel()[:-(-len(values) * bits // 8)]


def _unpack(packed: np.ndarray, count: int, bits: int) -> np.ndarray:
    """The `count` uint8 values of `_pack`."""
    if bits == 8:
        return packed
    groups = -(-count // 8)
    full = packed
    if len(packed) != groups * bits:
        full = np.zeros(groups * bits, np.uint8)
        full[:len(packed)] = packed
    words = np.zeros((groups, 8), np.uint8)
    for byte, column in enumerate(full.reshape(groups, bits).T):
        words[:, byte] = column
    _squeeze(words.view("<u8").ravel(), bits, apart=True)
    return words.ravel()[:count]


# --- uint8: log-probabilities quantised to `bits`, packed -----------------------------------------

LOG_FLOOR = -16.0  # log-probabilities below are sent as this: e^-16 is no opinion worth a level


def _uint8(array, rng, base, bits: int = 8):
    rows = array.reshape(math.prod(array.shape[:-1]), array.shape[-1])
    levels = (1 << bits) - 1
    codes = np.empty(rows.shape, np.uint8)
    per = max(1, _CHUNK // max(rows.shape[1], 1))
    for start in range(0, len(rows), per):
        chunk = rows[start:start + per]
        shifted = chunk.astype(np.float32) - _row_max(chunk)
        logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        codes[start:start + per] = np.rint((np.clip(logp, LOG_FLOOR, 0.0) - LOG_FLOOR) / -LOG_FLOOR * levels)
    return Coded("uint8", array.shape, (float(bits), LOG_FLOOR), (_pack(codes.ravel(), bits),))


def _row_max(rows: np.ndarray) -> np.ndarray:
    """Each row's largest value and 0, as a column. Short rows (a probe set's classes) a column at a
    time: numpy's reduce along a row of 10 costs ~40 ns a row, 8x this."""
    if rows.shape[1] > 32:
        return rows.max(axis=-1, keepdims=True, initial=0.0)
    largest = np.zeros((len(rows), 1), rows.dtype)
    for column in rows.T:
        np.maximum(largest[:, 0], column, out=largest[:, 0])
    return largest


def _uint8_check(coded: Coded) -> None:
    _expect(coded, 2, (("|u1",),))
    bits = _integer(coded, coded.params[0], 1, 8)
    if not -1e4 <= coded.params[1] < 0:
        raise schema(coded.codec, "a floor in [-1e4, 0)")
    _length(coded, 0, -(-coded.size * bits // 8))


def _uint8_decode(coded: Coded, base) -> np.ndarray:
    bits, floor = int(coded.params[0]), float(coded.params[1])
    q = _unpack(coded.parts[0], coded.size, bits).astype(np.float32)
    return (floor * (1 - q / ((1 << bits) - 1))).astype(np.float32).reshape(coded.shape)


# at most a quarter: 2 bytes a value with the indices, so a sparse message stays well under the float32
# one, which is what a receiver caps its frames by (PROTOCOL.md §11.2)
_FRACTION = Param("fraction", float, "in (0, 0.25]", lambda v: 0 < v <= 0.25)
BUILTINS: dict[str, CodecSpec] = {s.name: s for s in (
    CodecSpec("float32", KINDS, _float32, description="the array as it is (no compression)"),
    CodecSpec("float16", KINDS, _float16, description="IEEE half precision (<f2 ndarrays): 2 bytes a value"),
    CodecSpec("bfloat16", KINDS, _bfloat16, _bfloat16_check, _bfloat16_decode,
              description="the top 16 bits of each float32 (float32's range, 8 bits of mantissa)"),
    CodecSpec("int8", KINDS, _int8, _int8_check, _int8_decode,
              (Param("block", int, "0 (one scale per tensor) or >= 8", lambda v: v == 0 or v >= 8, default=0),),
              "symmetric 8-bit integers with one float32 scale per block of values", example="int8:256"),
    CodecSpec("qint", ("weights",), _qint, _qint_check, _qint_decode,
              (Param("bits", int, "in [2, 8]", lambda v: 2 <= v <= 8),
               Param("block", int, "0 (one scale per tensor) or >= 8", lambda v: v == 0 or v >= 8, default=0)),
              "symmetric BITS-bit integers, packed, with one float32 scale per block of values",
              example="qint:4"),
    CodecSpec("topk", ("weights",), _topk, _sparse_check, _sparse_decode, (_FRACTION,),
              "the fraction of values that changed most since last told, as (index, value)", relative=True,
              example="topk:0.01"),
    CodecSpec("randk", ("weights",), _randk, _sparse_check, _sparse_decode, (_FRACTION,),
              "a random fraction of the values, as (index, value)", relative=True, example="randk:0.01"),
    CodecSpec("uint8", ("logits",), _uint8, _uint8_check, _uint8_decode,
              (Param("bits", int, "in [1, 8]", lambda v: 1 <= v <= 8, default=8),),
              f"log-probabilities in [{LOG_FLOOR:g}, 0] on 2^bits levels, packed", example="uint8:4"),
)}


def _plugins() -> list[EntryPoint]:
    # Read afresh on every call, so plugins installed while a node runs (or a test's sys.path) show up.
    return list(entry_points(group=ENTRY_POINT_GROUP))


def _load(ep: EntryPoint) -> CodecSpec:
    """The CodecSpec behind a plugin entry point; any failure becomes a CodecError saying why."""
    spec = load_plugin(ep, "codec", CodecError)
    if not isinstance(spec, CodecSpec) or spec.name != ep.name or not set(spec.kinds) <= set(KINDS):
        raise CodecError(f"codec plugin '{ep.name}' from {entry_point_source(ep)} is not a CodecSpec named "
                         f"'{ep.name}' whose kinds are among {', '.join(KINDS)}")
    return spec


def _find(name: str) -> CodecSpec:
    if name in BUILTINS:
        return BUILTINS[name]
    plugins = _plugins()
    for ep in plugins:
        if ep.name == name:
            return _load(ep)
    raise CodecError(f"unknown codec '{name}'; available: {', '.join([*BUILTINS, *(ep.name for ep in plugins)])}")


def get_codec(spec: str) -> Codec:
    """The codec `spec` names: "name" or "name:p1", e.g. "int8", "int8:256", "topk:0.01", "uint8:4".
    The one place a codec spec is parsed; everything else passes the Codec on."""
    text = spec.strip()
    name, *raw = text.split(":")
    definition = _find(name)
    params = bind_params(definition, given_params(definition, raw, spec, "codec", CodecError), spec, "codec",
                         CodecError)
    return Codec(":".join([name, *map(str, params.values())]), params, definition)


def list_codecs() -> list[dict[str, Any]]:
    """Every codec, JSON-ready: built-ins, then plugins; a plugin that cannot be used has an "error"."""
    def row(spec: CodecSpec | None, name: str, source: str, error: str | None = None) -> dict[str, Any]:
        return {"name": name, "kinds": list(spec.kinds) if spec else None, "description": spec.description if spec
                else "", "params": [p.to_json() for p in spec.params] if spec else [], "source": source,
                "error": error}
    rows = [row(spec, name, "builtin") for name, spec in BUILTINS.items()]
    for ep in _plugins():
        try:
            rows.append(row(_load(ep) if ep.name not in BUILTINS else None, ep.name, entry_point_source(ep),
                            None if ep.name not in BUILTINS else f"the name '{ep.name}' is already taken"))
        except CodecError as exc:
            rows.append(row(None, ep.name, entry_point_source(ep), str(exc)))
    return rows


# --- receiving ------------------------------------------------------------------------------------

def check_coded(tensors: list[Tensor], limit: int) -> None:
    """The checks of §6a over a payload's tensors, before anything of their dense size is built:
    the coded tensors' float32 bytes within the kind's `limit` (`too_large`), each codec known
    (`unknown_codec`), each codec's own rules (`schema`, `shape_mismatch`, `bad_coding`)."""
    coded = [t for t in tensors if isinstance(t, Coded)]
    dense_bytes = 4 * sum(t.size for t in coded)
    if dense_bytes > limit:
        raise RejectedMessage(Reason.TOO_LARGE, f"coded tensors decode to {dense_bytes} bytes > limit {limit}")
    for tensor in coded:
        spec = codec_of(tensor)
        try:
            spec.check(tensor)
        except RejectedMessage:
            raise
        except Exception as exc:  # plugin code: nothing a peer sends raises anything but RejectedMessage
            raise _bad(f"{tensor.codec} check failed: {type(exc).__name__}") from None


def codec_of(tensor: Coded) -> CodecSpec:
    """The codec a checked coded tensor names (RejectedMessage `unknown_codec` if none)."""
    try:
        spec = _find(tensor.codec)
    except CodecError:
        spec = None
    if spec is None or spec.decode is None:
        raise RejectedMessage(Reason.UNKNOWN_CODEC, repr(tensor.codec))
    return spec


def dense(tensor: Tensor, base: np.ndarray | None = None) -> np.ndarray:
    """The float32 array a checked tensor stands for (a plain float32 one as it is, not copied). A
    relative codec takes what it leaves out from `base` (a weights receiver's: the sender's tensor as
    last heard; None: zeros)."""
    if isinstance(tensor, np.ndarray):
        return np.asarray(tensor, np.float32)
    return codec_of(tensor).decode(tensor, base)
