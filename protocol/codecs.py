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


# --- int8, qint: symmetric integers, one float32 scale per block ------------------------------------

def _blocks(array: np.ndarray, block: int, levels: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """`array` rounded to integers in [-levels, levels] plus `offset` (flat float32, whole numbers, for
    the caller to cast in one pass) and one scale per `block` values (0: one block), each the block's
    largest |value| / levels; and the block size used."""
    flat = np.asarray(array, np.float32).ravel()
    block = min(block or flat.size, flat.size) or 1
    blocks = -(-flat.size // block)
    if flat.size != blocks * block:  # a shorter last block: padded with zeros, which change no scale
        flat = np.concatenate([flat, np.zeros(blocks * block - flat.size, np.float32)])
    grid = flat.reshape(blocks, block)
    scale = np.maximum(grid.max(axis=1, initial=0.0), -grid.min(axis=1, initial=0.0)) / levels
    q = grid / np.where(scale > 0, scale, 1)[:, None]
    np.rint(q, out=q)
    np.clip(q, -levels, levels, out=q)
    if offset:
        q += offset
    return q.ravel()[:array.size], scale.astype("<f4"), block


def _scaled(values: np.ndarray, scale: np.ndarray, block: int) -> np.ndarray:
    """float32(values[i]) x scale[i // block]: whole blocks as rows, then the shorter last one (in place
    when `values` is a float32 array of the caller's own)."""
    out = values.astype(np.float32, copy=not values.flags.writeable or values.dtype != np.float32)
    block = min(block, max(len(out), 1))  # a block beyond the tensor is one scale
    whole = len(out) // block * block
    out[:whole].reshape(-1, block)[...] *= scale[:whole // block, None]
    out[whole:] *= scale[-1] if whole < len(out) else 1
    return out


def _check_scales(coded: Coded, part: int, block: int, largest: int) -> None:
    """One scale per block, each finite, >= 0 and small enough that `largest` x scale is finite."""
    _length(coded, part, -(-coded.size // block))
    scale = coded.parts[part]
    if not np.all((scale >= 0) & (scale <= _F32_MAX / largest)):  # NaN fails both
        raise _bad(f"{coded.codec} scales must be finite, >= 0 and <= float32's largest / {largest}")


def _int8(array, rng, base, block: int = 0):
    q, scale, block = _blocks(array, block, 127)
    return Coded("int8", array.shape, (float(block),), (q.astype(np.int8), scale))


def _int8_check(coded: Coded) -> None:
    _expect(coded, 1, (("|i1",), ("<f4",)))
    block = _integer(coded, coded.params[0], 1, 2**62)
    _length(coded, 0, coded.size)
    _check_scales(coded, 1, block, 127)


def _int8_decode(coded: Coded, base) -> np.ndarray:
    return _scaled(coded.parts[0], coded.parts[1], int(coded.params[0])).reshape(coded.shape)


def _qint(array, rng, base, bits: int, block: int = 0):
    """int8's scheme on 2^bits - 1 levels, packed: qint:4 is 4 bits a value and a scale per tensor."""
    levels = (1 << (bits - 1)) - 1
    q, scale, block = _blocks(array, block, levels, offset=levels)
    return Coded("qint", array.shape, (float(bits), float(block)), (_pack(q.astype(np.uint8), bits), scale))


def _qint_check(coded: Coded) -> None:
    _expect(coded, 2, (("|u1",), ("<f4",)))
    bits = _integer(coded, coded.params[0], 2, 8)
    block = _integer(coded, coded.params[1], 1, 2**62)
    _length(coded, 0, -(-coded.size * bits // 8))
    _check_scales(coded, 1, block, 1 << (bits - 1))  # a code decodes to at most 2^(bits-1) x its scale


def _qint_decode(coded: Coded, base) -> np.ndarray:
    bits, block = int(coded.params[0]), int(coded.params[1])
    levels = (1 << (bits - 1)) - 1
    if bits in _BYTE_VALUES:  # each byte straight to its values as float32, less the offset: one gather
        values = np.take(_BYTE_VALUES[bits].astype(np.float32) - levels, coded.parts[0], axis=0).ravel()[:coded.size]
    else:
        values = _unpack(coded.parts[0], coded.size, bits).astype(np.float32) - levels
    return _scaled(values, coded.parts[1], block).reshape(coded.shape)


# --- topk, randk: sparse, relative to a base --------------------------------------------------------

def _index_dtype(size: int) -> str:
    return "<i4" if size < 2**31 else "<i8"


def _sparse(name: str, array: np.ndarray, index: np.ndarray) -> Coded:
    index = np.sort(index).astype(_index_dtype(array.size))
    return Coded(name, array.shape, (), (index, array.ravel()[index].astype("<f4")))


def _count(size: int, fraction: float) -> int:
    return min(size, max(1, math.ceil(fraction * size))) if size else 0


def _topk(array, rng, base, fraction: float):
    """The k entries that differ most from `base` (error feedback: what was told before)."""
    flat = np.asarray(array, np.float32).ravel()
    change = np.abs(flat - base.ravel() if base is not None else flat)
    k = _count(change.size, fraction)
    return _sparse("topk", array, np.argpartition(change, change.size - k)[change.size - k:] if k
                   else np.zeros(0, np.int64))


def _randk(array, rng, base, fraction: float):
    """k entries drawn uniformly without replacement."""
    rng = rng if rng is not None else np.random.default_rng()
    return _sparse("randk", array, rng.choice(array.size, _count(array.size, fraction), replace=False))


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

def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned `values` < 2^bits, value i at bit offset i x bits: where bits divides 8, each byte holds
    8 / bits values; otherwise each 8 values fill `bits` bytes, built as one little-endian uint64."""
    if 8 % bits == 0:
        per = 8 // bits
        padded = values
        if len(values) % per or values.dtype != np.uint8:
            padded = np.zeros(-(-len(values) // per) * per, np.uint8)
            padded[:len(values)] = values
        out = padded[0::per].copy()
        for j in range(1, per):
            out |= padded[j::per] << (j * bits)
        return out
    groups = np.zeros(-(-len(values) // 8) * 8, np.uint64)
    groups[:len(values)] = values
    columns = groups.reshape(-1, 8)
    words = columns[:, 0].copy()
    for j in range(1, 8):  # a column at a time: numpy's reduce over a short axis is ~5x slower
        words |= columns[:, j] << _SHIFTS[bits][j]
    return words.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :bits].ravel()[:-(-len(values) * bits // 8)]


def _unpack(packed: np.ndarray, count: int, bits: int) -> np.ndarray:
    """The `count` unsigned values of `_pack` (uint8 where bits divides 8: a table lookup per byte)."""
    if bits == 8:
        return packed
    if 8 % bits == 0:
        return np.take(_BYTE_VALUES[bits], packed, axis=0).ravel()[:count]  # take: ~4x fancy indexing's speed
    groups = -(-count // 8)
    flat = np.zeros(groups * bits, np.uint8)
    flat[:len(packed)] = packed
    words = np.zeros((groups, 8), np.uint8)
    words[:, :bits] = flat.reshape(groups, bits)
    return ((words.view("<u8") >> _SHIFTS[bits]) & np.uint64((1 << bits) - 1)).ravel()[:count].astype(np.uint16)


# the 8 / bits values each byte holds, for the bits that divide 8
_BYTE_VALUES = {bits: ((np.arange(256)[:, None] >> (np.arange(8 // bits) * bits)) & ((1 << bits) - 1)).astype(np.uint8)
                for bits in (1, 2, 4)}
_SHIFTS = {bits: np.arange(8, dtype=np.uint64) * np.uint64(bits) for bits in range(1, 8)}


# --- uint8: log-probabilities quantised to `bits`, packed -----------------------------------------

LOG_FLOOR = -16.0  # log-probabilities below are sent as this: e^-16 is no opinion worth a level


def _uint8(array, rng, base, bits: int = 8):
    shifted = array.astype(np.float32) - array.max(axis=-1, keepdims=True, initial=0.0)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    levels = (1 << bits) - 1
    q = np.rint((np.clip(logp, LOG_FLOOR, 0.0) - LOG_FLOOR) / -LOG_FLOOR * levels).astype(np.uint16).ravel()
    return Coded("uint8", array.shape, (float(bits), LOG_FLOOR), (_pack(q, bits),))


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
