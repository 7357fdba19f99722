"""The signed envelope: seal a payload, and open received bytes into a verified message.

Wire form (docs/PROTOCOL.md): a msgpack map {v, kind, sender, seq, ts, digest, sig, payload}.
The signature covers DOMAIN_TAG + msgpack([v, kind, sender, seq, ts, digest]); `digest` is the
SHA-256 of the payload bytes, so a large payload costs one hash, not a large signature.

The receiver hands in its clock and, to refuse replays, its ReplayGuard:

>>> import numpy as np
>>> from manymodels.protocol import Identity, ReplayGuard, Weights, open_envelope, seal
>>> alice, now, guard = Identity(bytes(32)), 1_700_000_000_000, ReplayGuard()
>>> sealed = seal(alice, Weights("mlp", 1, 100, [np.ones(2, np.float32)]), seq=1, ts_ms=now)
>>> message = open_envelope(sealed, now_ms=now, guard=guard)
>>> message.kind, message.sender_id == alice.peer_id, message.payload.tensors[0].tolist()
('weights', True, [1.0, 1.0])
>>> open_envelope(sealed, now_ms=now, guard=guard)
Traceback (most recent call last):
...
manymodels.protocol.errors.RejectedMessage: replayed: sequence 1 was already seen
>>> open_envelope(sealed[:-1] + bytes([sealed[-1] ^ 1]), now_ms=now)  # one bit of the payload changed
Traceback (most recent call last):
...
manymodels.protocol.errors.RejectedMessage: digest_mismatch: payload does not hash to the signed digest
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from .errors import Reason, RejectedMessage
from .identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity, peer_id, strict_public_key, verify
from .messages import DIGEST_SIZE, KINDS, Payload
from .replay import ReplayGuard
from .wire import Reader, decode

PROTOCOL_VERSION = 1
DOMAIN_TAG = b"manymodels/envelope/v1\x00"
HEADER_FIELDS = ("v", "kind", "sender", "seq", "ts", "digest")
ENVELOPE_FIELDS = HEADER_FIELDS + ("sig", "payload")
ENVELOPE_OVERHEAD = 512  # header bytes allowed beyond a kind's payload limit
MAX_ENVELOPE_BYTES = max(cls.MAX_BYTES for cls in KINDS.values()) + ENVELOPE_OVERHEAD
MAX_KIND_CHARS = 64  # longer than any kind: refused as `schema` unread
_U64 = 2**64 - 1
_U32 = 2**32 - 1


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# packb's default 256 KiB buffer would be most of what opening a small envelope allocates.
_HEADER_PACKER = {"use_bin_type": True, **({"buf_size": 256} if msgpack.version >= (1, 1) else {})}


def signed_bytes(v: int, kind: str, sender: bytes, seq: int, ts: int, payload_digest: bytes) -> bytes:
    return DOMAIN_TAG + msgpack.Packer(**_HEADER_PACKER).pack([v, kind, sender, seq, ts, payload_digest])


def encode_payload(payload: Payload) -> bytes:
    return msgpack.packb(payload.to_wire(), use_bin_type=True)


def seal(identity: Identity, payload: Payload, seq: int, ts_ms: int) -> bytes:
    """Encode and sign one message. `seq` must grow per sender; `ts_ms` is Unix time in ms."""
    return seal_all([(identity, payload, seq, ts_ms)])[0]


Sealing = tuple[Identity, Payload, int, int]  # seal()'s arguments


def seal_all(jobs: list[Sealing], each: Callable[[Callable[[tuple[Identity, bytes]], bytes],
                                                  list[tuple[Identity, bytes]]], list[bytes]] | None = None
             ) -> list[bytes]:
    """seal() of each job. The payloads are encoded and the envelopes packed on this thread, the
    headers signed by `each(sign, items)`: the simulator's signs on a thread per core, since Ed25519
    signing lets go of the GIL, with no encoding (which holds it) in between: threads that wait for
    the GIL while another encodes are slower than one."""
    bodies = [encode_payload(payload) for _, payload, _, _ in jobs]
    digests = [digest(body) for body in bodies]
    headers = [(identity, signed_bytes(PROTOCOL_VERSION, payload.KIND, identity.public_key, seq, ts_ms, dg))
               for (identity, payload, seq, ts_ms), dg in zip(jobs, digests)]
    sign = lambda job: job[0].sign(job[1])  # noqa: E731
    signatures = each(sign, headers) if each is not None else [sign(job) for job in headers]
    return [msgpack.packb({"v": PROTOCOL_VERSION, "kind": payload.KIND, "sender": identity.public_key, "seq": seq,
                           "ts": ts_ms, "digest": dg, "sig": sig, "payload": body}, use_bin_type=True)
            for (identity, payload, seq, ts_ms), dg, sig, body in zip(jobs, digests, signatures, bodies)]


@dataclass(frozen=True)
class Message:
    kind: str
    sender: bytes  # Ed25519 public key
    seq: int
    ts: int
    digest: bytes
    payload: Payload
    size: int  # bytes on the wire

    @property
    def sender_id(self) -> str:
        return peer_id(self.sender)


def _read_header(r: Reader) -> dict[str, Any]:
    """The envelope map: exactly the eight fields, scalar values only (a container is `schema`
    from its type byte, unbuilt); the payload is a view of the input, not a copy."""
    return {key: _HEADER_FIELDS[key](r, key) for key in r.fields("envelope", ENVELOPE_FIELDS)}


_HEADER_FIELDS = {
    "v": lambda r, key: r.int(key, -2**63, _U64),
    "kind": lambda r, key: r.str(key, MAX_KIND_CHARS),
    "sender": lambda r, key: bytes(r.bin(key, PUBLIC_KEY_SIZE, PUBLIC_KEY_SIZE)),
    "seq": lambda r, key: r.int(key, 0, _U64),
    "ts": lambda r, key: r.int(key, 0, _U64),
    "digest": lambda r, key: bytes(r.bin(key, DIGEST_SIZE, DIGEST_SIZE)),
    "sig": lambda r, key: bytes(r.bin(key, SIGNATURE_SIZE, SIGNATURE_SIZE)),
    "payload": lambda r, key: r.bin(key, 0, _U32),
}


class _Reading:
    """What one message's bytes say, whoever receives them: each stage of §7 that depends on the
    bytes alone, run once when first asked for and kept, its failure included."""

    __slots__ = ("data", "_header", "_cls", "_authentic", "_payload")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._header = self._cls = self._authentic = self._payload = None

    @staticmethod
    def _once(stage: Any, run: Callable[[], Any]) -> tuple[Any, tuple[Reason, str] | None]:
        if stage is not None:
            return stage
        try:
            return run(), None
        except RejectedMessage as exc:  # kept as (reason, detail): an exception would keep its frames
            return None, (exc.reason, exc.detail)

    @staticmethod
    def _result(stage: tuple[Any, tuple[Reason, str] | None]) -> Any:
        value, failure = stage
        if failure is not None:  # a fresh exception for each receiver
            raise RejectedMessage(*failure)
        return value

    def header(self) -> dict[str, Any]:
        """Decoding, the header's schema, the sender key."""
        self._header = self._once(self._header, self._read_header)
        return self._result(self._header)

    def _read_header(self) -> dict[str, Any]:
        env = decode(memoryview(self.data), _read_header, "envelope")
        if not strict_public_key(env["sender"]):
            raise RejectedMessage(Reason.BAD_KEY,
                                  f"sender key {env['sender'].hex()} is not canonical or has small order")
        return env

    def kind(self) -> type[Payload]:
        """The version, the kind, the kind's payload limit."""
        self._cls = self._once(self._cls, self._read_kind)
        return self._result(self._cls)

    def _read_kind(self) -> type[Payload]:
        env = self.header()
        if env["v"] != PROTOCOL_VERSION:
            raise RejectedMessage(Reason.UNSUPPORTED_VERSION, f"version {env['v']}, this node speaks {PROTOCOL_VERSION}")
        cls = KINDS.get(env["kind"])
        if cls is None:
            raise RejectedMessage(Reason.UNKNOWN_KIND, repr(env["kind"]))
        if len(env["payload"]) > cls.MAX_BYTES:
            raise RejectedMessage(Reason.TOO_LARGE, f"{cls.KIND} payload {len(env['payload'])} bytes > limit {cls.MAX_BYTES}")
        return cls

    def authenticate(self) -> None:
        """The signature over the header, the payload's digest."""
        self._authentic = self._once(self._authentic, self._check_signature)
        self._result(self._authentic)

    def _check_signature(self) -> bool:
        env = self.header()
        if not verify(env["sender"], env["sig"], signed_bytes(*(env[name] for name in HEADER_FIELDS))):
            raise RejectedMessage(Reason.BAD_SIGNATURE, f"from {peer_id(env['sender'])}")
        if digest(env["payload"]) != env["digest"]:
            raise RejectedMessage(Reason.DIGEST_MISMATCH, "payload does not hash to the signed digest")
        return True

    def payload(self) -> Payload:
        self._payload = self._once(self._payload, lambda: self.kind().from_bytes(self.header()["payload"]))
        return self._result(self._payload)


def _passes(stage: Callable[[], Any]) -> bool:
    """Whether a stage of a reading holds (what it finds is kept in the reading either way)."""
    try:
        stage()
    except RejectedMessage:
        return False
    return True


class ReadingMemo:
    """For many receivers of the same bytes in one process (the simulator, where a node sends one
    message to all its neighbours): each distinct message is decoded, its signature and digest
    checked and its payload read once. What depends on the receiver (the author the transport
    authenticated, its ban list, replay window and clock) is still checked by each. Payload arrays
    are read-only, so receivers can share them. Holds up to `max_bytes` of messages, oldest out first."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._readings: dict[bytes, _Reading] = {}
        self._held = 0
        self.distinct = 0  # messages read so far

    def reading(self, data: bytes) -> _Reading:
        reading = self._readings.get(data)
        if reading is None:
            reading = self._readings[data] = _Reading(data)
            self._held += len(data)
            self.distinct += 1
            while self._held > self.max_bytes and len(self._readings) > 1:
                self._held -= len(self._readings.pop(next(iter(self._readings))).data)
        return reading

    def read_ahead(self, messages: Iterable[bytes],
                   each: Callable[[Callable[[_Reading], bool], list[_Reading]], list[bool]]) -> None:
        """Read the messages not read yet before their receivers ask, each stage of §7 that depends
        on the bytes alone, up to the first that fails: decoding, sender key and kind; then the
        signature and digest by `each(check, readings)`; then the payload. The simulator's `each`
        runs the signatures on a thread per core, since Ed25519 verification lets go of the GIL;
        the decoding, which holds it, runs before and after on this thread alone, so that no
        thread waits for the GIL while another decodes (with both at once, a round read ahead
        slower than on one thread). Receivers still run every stage in order (their own checks
        come between these, and cannot change what these find). No more than half the memo's
        bytes are read ahead, so none is dropped before use."""
        fresh: list[_Reading] = []
        size = 0
        for data in messages:
            if data in self._readings or size + len(data) > self.max_bytes // 2:
                continue
            fresh.append(self.reading(data))
            size += len(data)
        decoded = [reading for reading in fresh if _passes(reading.kind)]
        authentic = each(lambda reading: _passes(reading.authenticate), decoded)
        for reading, ok in zip(decoded, authentic):
            if ok:
                _passes(reading.payload)


def open_envelope(
    data: bytes,
    *,
    now_ms: int,
    guard: ReplayGuard | None = None,
    banned: Container[bytes] = (),
    max_bytes: int = MAX_ENVELOPE_BYTES,
    author: str | None = None,
    memo: ReadingMemo | None = None,
) -> Message:
    """Verify received bytes and return the message, or raise RejectedMessage.

    Order (docs/PROTOCOL.md §7): size, decoding, header schema, sender key, author, version, kind,
    per-kind size, ban list, signature, payload digest, clock skew and replay window, payload.
    `author` is the peer id the transport authenticated, when the message came straight from its
    author. The guard records the sequence number only when every check has passed, and never
    for an unsequenced kind (a reply). `memo`: where the stages that depend on the bytes alone
    are kept for other receivers of the same bytes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RejectedMessage(Reason.MALFORMED, "not bytes")
    if len(data) > max_bytes:
        raise RejectedMessage(Reason.TOO_LARGE, f"{len(data)} bytes > limit {max_bytes}")
    data = bytes(data)  # a no-op for bytes; received arrays must not alias a caller's mutable buffer
    reading = memo.reading(data) if memo is not None else _Reading(data)
    env = reading.header()
    sender = env["sender"]
    if author is not None and peer_id(sender) != author:
        raise RejectedMessage(Reason.FOREIGN_AUTHOR, f"signed by {peer_id(sender)}, sent by {author}")
    cls = reading.kind()
    if sender in banned:
        raise RejectedMessage(Reason.BANNED, peer_id(sender))
    reading.authenticate()
    if guard is not None:
        if cls.SEQUENCED:
            guard.check(sender, env["seq"], env["ts"], now_ms)
        else:
            guard.check_clock(env["ts"], now_ms)
    payload = reading.payload()
    if guard is not None and cls.SEQUENCED:
        guard.record(sender, env["seq"], env["ts"])
    return Message(cls.KIND, sender, env["seq"], env["ts"], env["digest"], payload, len(data))
