"""Typed message kinds. Each payload is a msgpack map with a fixed set of fields; `from_bytes`
walks the bytes against the kind's SCHEMA, checking every field before anything else may look at it."""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import msgpack
import numpy as np

from .codecs import CODED_FIELDS, Coded, Tensor, check_coded, read_coded
from .errors import Reason, RejectedMessage
from .ndarray import array_digest, encode_array, read_array
from .wire import Reader, decode, schema

DIGEST_SIZE = 32
MAX_TENSORS = 4096
KiB, MiB = 1024, 1024 * 1024


# A field is read by a function (reader, where) -> value that walks the field's bytes (wire.py).
Field = Callable[[Reader, str], Any]


def _str(max_chars: int) -> Field:
    return lambda r, where: r.str(where, max_chars)


def _int(lo: int = 0, hi: int = 2**63 - 1) -> Field:
    return lambda r, where: r.int(where, lo, hi)


def _float(lo: float, hi: float) -> Field:
    return lambda r, where: r.number(where, lo, hi)


def _bytes(size: int | None = None, max_len: int = 2**32) -> Field:
    lo, hi = (size, size) if size is not None else (0, max_len)
    return lambda r, where: bytes(r.bin(where, lo, hi))


def _list(item: Field, max_len: int) -> Field:
    return lambda r, where: [item(r, where) for _ in range(r.array(where, max_len))]


def _array(ndim: int | None = None, kinds: str = "biuf") -> Field:
    def read(r: Reader, where: str) -> np.ndarray:
        array = read_array(r, where)
        if (ndim is not None and array.ndim != ndim) or array.dtype.kind not in kinds:
            raise schema(where, f"an ndarray with {ndim or 'any'} dims of kind {kinds!r}")
        return array
    return read


def _tensor(ndim: int | None = None) -> Field:
    """A float ndarray, or a coded tensor (§6a: a map of four entries) with `ndim` dims."""
    plain = _array(ndim, kinds="f")

    def read(r: Reader, where: str) -> np.ndarray | Coded:
        if r.map_size() != len(CODED_FIELDS):
            return plain(r, where)
        coded = read_coded(r, where)
        if ndim is not None and len(coded.shape) != ndim:
            raise schema(where, f"a coded tensor with {ndim} dims")
        return coded
    return read


def _map(spec: dict[str, Field]) -> Field:
    names = tuple(spec)

    def read(r: Reader, where: str) -> dict[str, Any]:
        values = {key: spec[key](r, f"{where}.{key}") for key in r.fields(where, names)}
        return {key: values[key] for key in names}
    return read


_DIGEST = _bytes(DIGEST_SIZE)
_NAME = _str(64)


@dataclass(frozen=True)
class Payload:
    KIND: ClassVar[str]
    MAX_BYTES: ClassVar[int]
    SCHEMA: ClassVar[dict[str, Field]]
    # A sequenced kind uses up a sequence number and runs the receiver's replay window. Replies
    # (blob_response, error) are not: a node serving blobs would otherwise burn numbers for every
    # chunk; a reply is matched to the request the receiver made, a pulled blob by its own signature.
    SEQUENCED: ClassVar[bool] = True

    def to_wire(self) -> dict[str, Any]:
        return {f.name: _to_wire(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_bytes(cls, body: bytes | memoryview) -> Payload:
        """Decode and check a received payload (§5, §6) without building anything its schema does
        not allow. ndarrays are read-only views of `body`."""
        payload = cls(**decode(memoryview(body), lambda r: _map(cls.SCHEMA)(r, cls.KIND), f"{cls.KIND} payload"))
        payload.check_consistency()
        return payload

    @classmethod
    def from_wire(cls, obj: Any) -> Payload:
        """The same checks for an already decoded map (e.g. one read back from our own store)."""
        try:
            body = msgpack.packb(obj, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise RejectedMessage(Reason.SCHEMA, f"{cls.KIND} payload: {type(exc).__name__}") from None
        return cls.from_bytes(body)

    def check_consistency(self) -> None:
        """Checks across fields, after each field passed its own."""


def _to_wire(value: Any) -> Any:
    if isinstance(value, Coded):
        return value.to_wire()
    if isinstance(value, np.ndarray):
        return encode_array(value)
    if isinstance(value, (list, tuple)):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Hello(Payload):
    """Who I am and what I can do; the first message on a new connection."""
    KIND = "hello"
    MAX_BYTES = 64 * KiB
    SCHEMA = {"agent": _str(128), "addrs": _list(_str(256), 32), "capabilities": _list(_str(64), 64),
              "models": _list(_NAME, 32)}
    agent: str
    addrs: list[str] = field(default_factory=list)
    capabilities: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PeerExchange(Payload):
    """Peers I know, as full multiaddrs ending in /p2p/<peer id>: a node that joined through one
    bootstrap peer learns the others from it."""
    KIND = "peers"
    MAX_BYTES = 32 * KiB
    SCHEMA = {"addrs": _list(_str(256), 64)}
    addrs: list[str]


@dataclass(frozen=True)
class Announce(Payload):
    """I hold a blob (model weights, logits, probe set) with this digest; pull it by digest."""
    KIND = "announce"
    MAX_BYTES = 4 * KiB
    SCHEMA = {"digest": _DIGEST, "content": _NAME, "model": _NAME, "version": _int(),
              "num_examples": _int(), "size": _int()}
    digest: bytes
    content: str
    model: str
    version: int
    num_examples: int
    size: int


@dataclass(frozen=True)
class Weights(Payload):
    """One model's parameter tensors: float ndarrays, or coded tensors (§6a) that decode to float32."""
    KIND = "weights"
    MAX_BYTES = 512 * MiB
    SCHEMA = {"model": _NAME, "version": _int(), "num_examples": _int(),
              "tensors": _list(_tensor(), MAX_TENSORS)}
    model: str
    version: int
    num_examples: int
    tensors: list[Tensor]

    def check_consistency(self) -> None:
        check_coded(self.tensors, self.MAX_BYTES)

    @functools.cached_property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(t.shape) for t in self.tensors)

    @functools.cached_property
    def finite(self) -> bool:
        """No NaN or infinity in a plain tensor (a coded one is finite, or the protocol refused it);
        worked out once for all the receivers that share this payload (the simulator's memo)."""
        return all(np.isfinite(t).all() for t in self.tensors if isinstance(t, np.ndarray))


@dataclass(frozen=True)
class Logits(Payload):
    """Predictions on the probe set whose canonical bytes hash to `probe`, and how many private
    examples of each class the model was trained on (so receivers can weigh each model's opinion
    on a class by how much it has seen of it)."""
    KIND = "logits"
    MAX_BYTES = 64 * MiB
    SCHEMA = {"probe": _DIGEST, "model": _NAME, "version": _int(), "temperature": _float(1e-3, 1e3),
              "logits": _tensor(ndim=2), "class_counts": _list(_int(), 65536)}
    probe: bytes
    model: str
    version: int
    temperature: float
    logits: Tensor
    class_counts: list[int]

    def check_consistency(self) -> None:
        check_coded([self.logits], self.MAX_BYTES)
        if len(self.class_counts) != self.logits.shape[1]:
            raise RejectedMessage(Reason.SHAPE_MISMATCH,
                                  f"{len(self.class_counts)} class counts for {self.logits.shape[1]} classes")


_CARD = {"licence": _NAME, "consent": _str(256), "retention": _str(256), "generator": _str(256),
         "source": _str(128), "digest": _DIGEST}


@dataclass(frozen=True)
class SyntheticBatch(Payload):
    """Generated samples with their data card (licence, consent, retention, generator, source, digest)."""
    KIND = "synthetic"
    MAX_BYTES = 64 * MiB
    SCHEMA = {"x": _array(kinds="f"), "y": _array(ndim=1, kinds="iu"), "card": _map(_CARD)}
    x: np.ndarray
    y: np.ndarray
    card: dict[str, Any]

    def content_digest(self) -> bytes:
        """What the card's `digest` must be: SHA-256 over the canonical-bytes digests of x and y."""
        return hashlib.sha256(array_digest(self.x) + array_digest(self.y)).digest()

    def check_consistency(self) -> None:
        if self.x.ndim < 1 or self.x.shape[0] != self.y.shape[0]:
            raise RejectedMessage(Reason.SHAPE_MISMATCH, f"{self.x.shape[:1]} samples but {self.y.shape[0]} labels")


@dataclass(frozen=True)
class BlobRequest(Payload):
    KIND = "blob_request"
    MAX_BYTES = 1 * KiB
    SCHEMA = {"digest": _DIGEST, "offset": _int(), "length": _int(1, 16 * MiB)}
    digest: bytes
    offset: int
    length: int


@dataclass(frozen=True)
class BlobResponse(Payload):
    """One chunk of a blob; the receiver checks the whole blob's digest before use."""
    KIND = "blob_response"
    SEQUENCED = False
    MAX_BYTES = 16 * MiB + KiB
    SCHEMA = {"digest": _DIGEST, "offset": _int(), "total": _int(), "data": _bytes(max_len=16 * MiB)}
    digest: bytes
    offset: int
    total: int
    data: bytes


@dataclass(frozen=True)
class Error(Payload):
    KIND = "error"
    SEQUENCED = False
    MAX_BYTES = 4 * KiB
    SCHEMA = {"code": _NAME, "message": _str(1024)}
    code: str
    message: str


KINDS: dict[str, type[Payload]] = {
    cls.KIND: cls for cls in (Hello, PeerExchange, Announce, Weights, Logits, SyntheticBatch, BlobRequest, BlobResponse, Error)
}
