"""Typed message kinds. Each payload is a msgpack map with a fixed set of fields; `from_wire`
checks every field before anything else may look at it."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from .errors import Reason, RejectedMessage
from .ndarray import array_digest, decode_array, encode_array

DIGEST_SIZE = 32
MAX_TENSORS = 4096
KiB, MiB = 1024, 1024 * 1024


def _fail(kind: str, name: str, want: str) -> RejectedMessage:
    return RejectedMessage(Reason.SCHEMA, f"{kind}.{name}: expected {want}")


def _str(max_len: int):
    def check(kind, name, v):
        if not isinstance(v, str) or len(v) > max_len:
            raise _fail(kind, name, f"a string of at most {max_len} characters")
        return v
    return check


def _int(lo: int = 0, hi: int = 2**63 - 1):
    def check(kind, name, v):
        if type(v) is not int or not lo <= v <= hi:
            raise _fail(kind, name, f"an integer in [{lo}, {hi}]")
        return v
    return check


def _float(lo: float, hi: float):
    def check(kind, name, v):
        if type(v) not in (int, float) or not lo <= v <= hi:
            raise _fail(kind, name, f"a number in [{lo}, {hi}]")
        return float(v)
    return check


def _bytes(size: int | None = None, max_len: int = 2**32):
    def check(kind, name, v):
        if not isinstance(v, bytes) or (size is not None and len(v) != size) or len(v) > max_len:
            raise _fail(kind, name, f"{size} bytes" if size is not None else "bytes")
        return v
    return check


def _list(item, max_len: int):
    def check(kind, name, v):
        if not isinstance(v, list) or len(v) > max_len:
            raise _fail(kind, name, f"a list of at most {max_len} items")
        return [item(kind, name, x) for x in v]
    return check


def _array(ndim: int | None = None, kinds: str = "biuf"):
    def check(kind, name, v):
        array = decode_array(v)
        if (ndim is not None and array.ndim != ndim) or array.dtype.kind not in kinds:
            raise _fail(kind, name, f"an ndarray with {ndim or 'any'} dims of kind {kinds!r}")
        return array
    return check


def _map(spec: dict[str, Any]):
    def check(kind, name, v):
        if not isinstance(v, dict) or set(v) != set(spec):
            raise _fail(kind, name, f"a map of exactly {sorted(spec)}")
        return {k: spec[k](kind, f"{name}.{k}", v[k]) for k in spec}
    return check


_DIGEST = _bytes(DIGEST_SIZE)
_NAME = _str(64)


@dataclass(frozen=True)
class Payload:
    KIND: ClassVar[str]
    MAX_BYTES: ClassVar[int]
    SCHEMA: ClassVar[dict[str, Any]]

    def to_wire(self) -> dict[str, Any]:
        return {f.name: _to_wire(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_wire(cls, obj: Any) -> Payload:
        checked = _map(cls.SCHEMA)(cls.KIND, "payload", obj)
        return cls(**checked)


def _to_wire(value: Any) -> Any:
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
    KIND = "weights"
    MAX_BYTES = 512 * MiB
    SCHEMA = {"model": _NAME, "version": _int(), "num_examples": _int(),
              "tensors": _list(_array(kinds="f"), MAX_TENSORS)}
    model: str
    version: int
    num_examples: int
    tensors: list[np.ndarray]


@dataclass(frozen=True)
class Logits(Payload):
    """Predictions on the probe set whose canonical bytes hash to `probe`, and how many private
    examples of each class the model was trained on (so receivers can weigh each model's opinion
    on a class by how much it has seen of it)."""
    KIND = "logits"
    MAX_BYTES = 64 * MiB
    SCHEMA = {"probe": _DIGEST, "model": _NAME, "version": _int(), "temperature": _float(1e-3, 1e3),
              "logits": _array(ndim=2, kinds="f"), "class_counts": _list(_int(), 65536)}
    probe: bytes
    model: str
    version: int
    temperature: float
    logits: np.ndarray
    class_counts: list[int]

    @classmethod
    def from_wire(cls, obj: Any) -> Logits:
        msg = super().from_wire(obj)
        if len(msg.class_counts) != msg.logits.shape[1]:
            raise RejectedMessage(Reason.SHAPE_MISMATCH,
                                  f"{len(msg.class_counts)} class counts for {msg.logits.shape[1]} classes")
        return msg


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

    @classmethod
    def from_wire(cls, obj: Any) -> SyntheticBatch:
        batch = super().from_wire(obj)
        if batch.x.ndim < 1 or batch.x.shape[0] != batch.y.shape[0]:
            raise RejectedMessage(Reason.SHAPE_MISMATCH, f"{batch.x.shape[:1]} samples but {batch.y.shape[0]} labels")
        return batch


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
    MAX_BYTES = 16 * MiB + KiB
    SCHEMA = {"digest": _DIGEST, "offset": _int(), "total": _int(), "data": _bytes(max_len=16 * MiB)}
    digest: bytes
    offset: int
    total: int
    data: bytes


@dataclass(frozen=True)
class Error(Payload):
    KIND = "error"
    MAX_BYTES = 4 * KiB
    SCHEMA = {"code": _NAME, "message": _str(1024)}
    code: str
    message: str


KINDS: dict[str, type[Payload]] = {
    cls.KIND: cls for cls in (Hello, PeerExchange, Announce, Weights, Logits, SyntheticBatch, BlobRequest, BlobResponse, Error)
}
