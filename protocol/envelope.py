"""The signed envelope: seal a payload, and open received bytes into a verified message.

Wire form (docs/PROTOCOL.md): a msgpack map {v, kind, sender, seq, ts, digest, sig, payload}.
The signature covers DOMAIN_TAG + msgpack([v, kind, sender, seq, ts, digest]); `digest` is the
SHA-256 of the payload bytes, so a large payload costs one hash, not a large signature.
"""
from __future__ import annotations

import hashlib
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

import msgpack

from .errors import Reason, RejectedMessage
from .identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity, peer_id, verify
from .messages import DIGEST_SIZE, KINDS, Payload
from .replay import ReplayGuard

PROTOCOL_VERSION = 1
DOMAIN_TAG = b"manymodels/envelope/v1\x00"
HEADER_FIELDS = ("v", "kind", "sender", "seq", "ts", "digest")
ENVELOPE_FIELDS = HEADER_FIELDS + ("sig", "payload")
ENVELOPE_OVERHEAD = 512  # header bytes allowed beyond a kind's payload limit
MAX_ENVELOPE_BYTES = max(cls.MAX_BYTES for cls in KINDS.values()) + ENVELOPE_OVERHEAD
_U64 = 2**64 - 1


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def signed_bytes(v: int, kind: str, sender: bytes, seq: int, ts: int, payload_digest: bytes) -> bytes:
    return DOMAIN_TAG + msgpack.packb([v, kind, sender, seq, ts, payload_digest], use_bin_type=True)


def encode_payload(payload: Payload) -> bytes:
    return msgpack.packb(payload.to_wire(), use_bin_type=True)


def seal(identity: Identity, payload: Payload, seq: int, ts_ms: int) -> bytes:
    """Encode and sign one message. `seq` must grow per sender; `ts_ms` is Unix time in ms."""
    body = encode_payload(payload)
    dg = digest(body)
    sig = identity.sign(signed_bytes(PROTOCOL_VERSION, payload.KIND, identity.public_key, seq, ts_ms, dg))
    return msgpack.packb(
        {"v": PROTOCOL_VERSION, "kind": payload.KIND, "sender": identity.public_key, "seq": seq,
         "ts": ts_ms, "digest": dg, "sig": sig, "payload": body},
        use_bin_type=True,
    )


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


def _unpack(data: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except msgpack.ExtraData:
        raise RejectedMessage(Reason.MALFORMED, f"{what}: trailing bytes") from None
    # msgpack raises several types (OutOfData, FormatError, StackError, UnicodeDecodeError,
    # TypeError for unhashable keys); for peer bytes every one of them means "malformed".
    except Exception as exc:  # noqa: BLE001
        raise RejectedMessage(Reason.MALFORMED, f"{what}: {type(exc).__name__}") from None


def _header(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict) or set(obj) != set(ENVELOPE_FIELDS):
        raise RejectedMessage(Reason.SCHEMA, f"an envelope is a map of exactly {', '.join(ENVELOPE_FIELDS)}")
    checks = {
        "v": lambda x: type(x) is int,
        "kind": lambda x: isinstance(x, str),
        "sender": lambda x: isinstance(x, bytes) and len(x) == PUBLIC_KEY_SIZE,
        "seq": lambda x: type(x) is int and 0 <= x <= _U64,
        "ts": lambda x: type(x) is int and 0 <= x <= _U64,
        "digest": lambda x: isinstance(x, bytes) and len(x) == DIGEST_SIZE,
        "sig": lambda x: isinstance(x, bytes) and len(x) == SIGNATURE_SIZE,
        "payload": lambda x: isinstance(x, bytes),
    }
    for name, ok in checks.items():
        if not ok(obj[name]):
            raise RejectedMessage(Reason.SCHEMA, f"envelope field {name!r} has the wrong type or size")
    return obj


def open_envelope(
    data: bytes,
    *,
    now_ms: int,
    guard: ReplayGuard | None = None,
    banned: Container[bytes] = (),
    max_bytes: int = MAX_ENVELOPE_BYTES,
) -> Message:
    """Verify received bytes and return the message, or raise RejectedMessage.

    Order: size, decoding, header schema, version, kind, per-kind size, ban list, signature,
    payload digest, replay window and clock skew, payload schema. The guard records the
    sequence number only when every check has passed.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RejectedMessage(Reason.MALFORMED, "not bytes")
    if len(data) > max_bytes:
        raise RejectedMessage(Reason.TOO_LARGE, f"{len(data)} bytes > limit {max_bytes}")
    env = _header(_unpack(bytes(data), "envelope"))
    if env["v"] != PROTOCOL_VERSION:
        raise RejectedMessage(Reason.UNSUPPORTED_VERSION, f"version {env['v']}, this node speaks {PROTOCOL_VERSION}")
    cls = KINDS.get(env["kind"])
    if cls is None:
        raise RejectedMessage(Reason.UNKNOWN_KIND, repr(env["kind"][:64]))
    body = env["payload"]
    if len(body) > cls.MAX_BYTES:
        raise RejectedMessage(Reason.TOO_LARGE, f"{cls.KIND} payload {len(body)} bytes > limit {cls.MAX_BYTES}")
    sender = env["sender"]
    if sender in banned:
        raise RejectedMessage(Reason.BANNED, peer_id(sender))
    header = [env[name] for name in HEADER_FIELDS]
    if not verify(sender, env["sig"], signed_bytes(*header)):
        raise RejectedMessage(Reason.BAD_SIGNATURE, f"from {peer_id(sender)}")
    if digest(body) != env["digest"]:
        raise RejectedMessage(Reason.DIGEST_MISMATCH, f"payload does not hash to the signed digest")
    if guard is not None:
        guard.check(sender, env["seq"], env["ts"], now_ms)
    payload = cls.from_wire(_unpack(body, f"{cls.KIND} payload"))
    if guard is not None:
        guard.record(sender, env["seq"])
    return Message(cls.KIND, sender, env["seq"], env["ts"], env["digest"], payload, len(data))
