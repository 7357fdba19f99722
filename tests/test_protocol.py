"""manymodels.protocol: every bad input is refused with its own reason; every kind round-trips."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import msgpack
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa

from manymodels import protocol
from manymodels.protocol import (ALLOWED_DTYPES, KINDS, MAX_ENVELOPE_BYTES, PROTOCOL_VERSION, Announce, BlobRequest, PeerExchange,
                                 BlobResponse, Error, Hello, Identity, Logits, Message, Reason, RejectedMessage,
                                 ReplayGuard, SyntheticBatch, Weights, decode_array, digest, encode_array,
                                 open_envelope, seal)
from manymodels.protocol.envelope import ENVELOPE_FIELDS, encode_payload, signed_bytes

ALICE = Identity(bytes(range(32)))
BOB = Identity(bytes(range(32, 64)))
NOW = 1_700_000_000_000
SKEW = ReplayGuard().max_skew_ms
CARD = {"licence": "CC-BY-4.0", "consent": "generated, no personal data", "retention": "30 days",
        "generator": "vae-v1", "source": "node-a", "digest": b"\x11" * 32}


def sample_payloads() -> list[protocol.Payload]:
    f32 = np.arange(6, dtype=np.float32).reshape(2, 3)
    return [
        Hello(agent="manymodels/test", addrs=["/ip4/127.0.0.1/tcp/1"], capabilities=["weights"], models=["mlp"]),
        Hello(agent=""),
        PeerExchange(addrs=["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB"]),
        Announce(digest=b"\x01" * 32, content="weights", model="mlp", version=7, num_examples=100, size=2**40),
        Weights(model="mlp", version=1, num_examples=64,
                tensors=[f32, np.ones(4, np.float16), np.zeros((), np.float64), np.zeros((0, 3), np.float32)]),
        Weights(model="empty", version=0, num_examples=0, tensors=[]),
        Logits(probe=b"\x02" * 32, model="mlp", version=2, temperature=2.5,
               logits=np.linspace(-1, 1, 10, dtype=np.float32).reshape(5, 2), class_counts=[3, 0]),
        SyntheticBatch(x=np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32),
                       y=np.array([0, 1, 2, 1], np.int64), card=dict(CARD)),
        SyntheticBatch(x=np.zeros((3,), np.float64), y=np.array([1, 2, 3], np.uint8), card=dict(CARD)),
        BlobRequest(digest=b"\x03" * 32, offset=0, length=16 * 1024 * 1024),
        BlobResponse(digest=b"\x04" * 32, offset=10, total=20, data=b"0123456789"),
        Error(code="busy", message="try later"),
    ]


def reason_of(data, **kwargs) -> Reason:
    kwargs.setdefault("now_ms", NOW)
    kwargs.setdefault("guard", ReplayGuard())
    with pytest.raises(RejectedMessage) as info:
        open_envelope(data, **kwargs)
    assert isinstance(info.value.reason, Reason)
    return info.value.reason


def accept(data, **kwargs) -> Message:
    kwargs.setdefault("now_ms", NOW)
    kwargs.setdefault("guard", ReplayGuard())
    return open_envelope(data, **kwargs)


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def envelope(body: bytes | object, *, kind="hello", seq=1, ts=NOW, v=PROTOCOL_VERSION, signer=ALICE,
             sender: bytes | None = None, payload_digest: bytes | None = None) -> dict:
    """A properly signed envelope map around arbitrary payload bytes (or an object packed to bytes)."""
    if not isinstance(body, bytes):
        body = pack(body)
    sender = signer.public_key if sender is None else sender
    dg = digest(body) if payload_digest is None else payload_digest
    sig = signer.sign(signed_bytes(v, kind, sender, seq, ts, dg))
    return {"v": v, "kind": kind, "sender": sender, "seq": seq, "ts": ts, "digest": dg, "sig": sig, "payload": body}


def tamper(data: bytes, **changes) -> bytes:
    env = msgpack.unpackb(data, raw=False)
    env.update(changes)
    return pack(env)


HELLO = Hello(agent="manymodels/test", addrs=["/ip4/10.0.0.1/tcp/4001"], capabilities=["logits"], models=["cnn"])
SEALED = seal(ALICE, HELLO, 1, NOW)


# --- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", sample_payloads(), ids=lambda p: p.KIND)
def test_every_kind_round_trips(payload):
    data = seal(ALICE, payload, 42, NOW)
    msg = accept(data)
    assert (msg.kind, msg.sender, msg.seq, msg.ts, msg.size) == (payload.KIND, ALICE.public_key, 42, NOW, len(data))
    assert msg.sender_id == ALICE.peer_id
    assert msg.digest == digest(encode_payload(payload))
    assert type(msg.payload) is type(payload)
    assert encode_payload(msg.payload) == encode_payload(payload)  # same bytes, so same digest
    for name, value in vars(payload).items():
        got = getattr(msg.payload, name)
        if isinstance(value, np.ndarray):
            assert got.dtype == value.dtype.newbyteorder("<") and got.shape == value.shape
            np.testing.assert_array_equal(got, value)
        elif name == "tensors":
            assert len(got) == len(value)
            for a, b in zip(got, value):
                assert a.dtype == b.dtype and a.shape == b.shape
                np.testing.assert_array_equal(a, b)
        else:
            assert got == value


def test_all_kinds_are_covered_by_the_round_trip():
    assert {p.KIND for p in sample_payloads()} == set(KINDS)


def test_received_arrays_are_read_only():
    msg = accept(seal(ALICE, sample_payloads()[4], 1, NOW))
    with pytest.raises(ValueError):
        msg.payload.tensors[0][0, 0] = 1.0


def test_accepts_bytearray_and_memoryview_and_refuses_other_types():
    assert accept(bytearray(SEALED)).seq == 1
    assert accept(memoryview(SEALED)).seq == 1
    assert reason_of("not bytes") is Reason.MALFORMED
    assert reason_of(None) is Reason.MALFORMED


def test_without_guard_there_is_no_replay_or_clock_check():
    assert open_envelope(SEALED, now_ms=0).seq == 1
    assert open_envelope(SEALED, now_ms=0).seq == 1


def test_default_max_bytes_is_the_largest_kind_plus_overhead():
    assert MAX_ENVELOPE_BYTES == max(cls.MAX_BYTES for cls in KINDS.values()) + 512


# --- signatures and header fields -----------------------------------------------------------------


def test_forged_signature_claiming_another_sender():
    forged = envelope(encode_payload(HELLO), signer=BOB, sender=ALICE.public_key)
    assert reason_of(pack(forged)) is Reason.BAD_SIGNATURE


def test_signature_bytes_changed():
    env = msgpack.unpackb(SEALED)
    for i in (0, 31, 63):
        sig = bytearray(env["sig"])
        sig[i] ^= 0x01
        assert reason_of(tamper(SEALED, sig=bytes(sig))) is Reason.BAD_SIGNATURE
    assert reason_of(tamper(SEALED, sig=bytes(64))) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("change, reason", [
    ({"kind": "error"}, Reason.BAD_SIGNATURE),  # another known kind: signed
    ({"kind": "announce"}, Reason.BAD_SIGNATURE),
    ({"kind": "gossip"}, Reason.UNKNOWN_KIND),  # an unknown kind is refused before the signature
    ({"seq": 2}, Reason.BAD_SIGNATURE),
    ({"seq": 0}, Reason.BAD_SIGNATURE),
    ({"ts": NOW + 1}, Reason.BAD_SIGNATURE),
    ({"sender": BOB.public_key}, Reason.BAD_SIGNATURE),
    ({"sender": bytes(32)}, Reason.BAD_KEY),  # small order (y = 0): refused before the signature
    ({"digest": bytes(32)}, Reason.BAD_SIGNATURE),
    ({"v": 2}, Reason.UNSUPPORTED_VERSION),  # the version is refused before the signature
    ({"v": 0}, Reason.UNSUPPORTED_VERSION),
], ids=lambda x: str(x))
def test_changed_header_field(change, reason):
    assert reason_of(tamper(SEALED, **change)) is reason


def test_version_is_covered_by_the_signature(monkeypatch):
    """Were this node to speak version 2, a v=1 signature relabelled v=2 must still fail."""
    monkeypatch.setattr(protocol.envelope, "PROTOCOL_VERSION", 2)
    assert reason_of(tamper(SEALED, v=2)) is Reason.BAD_SIGNATURE
    assert accept(pack(envelope(encode_payload(HELLO), v=2))).seq == 1


def test_payload_changed_and_digest_recomputed_breaks_the_signature():
    other = encode_payload(Hello(agent="evil"))
    assert reason_of(tamper(SEALED, payload=other)) is Reason.DIGEST_MISMATCH
    assert reason_of(tamper(SEALED, payload=other, digest=digest(other))) is Reason.BAD_SIGNATURE


def test_changed_payload_byte_is_digest_mismatch():
    for i in (-1, -5, len(SEALED) - len(encode_payload(HELLO))):
        data = bytearray(SEALED)
        data[i] ^= 0x20
        assert reason_of(bytes(data)) is Reason.DIGEST_MISMATCH


def test_payload_checks_the_signed_digest_over_the_exact_bytes():
    """A non-canonical payload encoding is accepted when signed as sent: the digest is over the bytes."""
    body = b"\x84" + b"".join(msgpack.packb(k) + b"\xd9" + bytes([len(v)]) + v.encode() if isinstance(v, str)
                              else msgpack.packb(k) + pack(v) for k, v in
                              [("models", []), ("agent", "x"), ("capabilities", []), ("addrs", [])])
    msg = accept(pack(envelope(body)))
    assert msg.payload == Hello(agent="x") and msg.digest == digest(body)


# --- replay window and clock --------------------------------------------------------------------


def test_replayed_sequence():
    guard = ReplayGuard()
    accept(SEALED, guard=guard)
    assert reason_of(SEALED, guard=guard) is Reason.REPLAYED
    # a different message with the same sequence number is a replay too
    assert reason_of(seal(ALICE, PeerExchange(addrs=[]), 1, NOW), guard=guard) is Reason.REPLAYED
    # another sender's counters are separate
    assert accept(seal(BOB, HELLO, 1, NOW), guard=guard).sender == BOB.public_key


def test_sequence_below_the_window():
    guard = ReplayGuard(window=1024)
    accept(seal(ALICE, HELLO, 5000, NOW), guard=guard)
    assert reason_of(seal(ALICE, HELLO, 5000 - 1024, NOW), guard=guard) is Reason.REPLAYED
    assert reason_of(seal(ALICE, HELLO, 0, NOW), guard=guard) is Reason.REPLAYED
    accept(seal(ALICE, HELLO, 5000 - 1023, NOW), guard=guard)  # oldest number still inside
    assert reason_of(seal(ALICE, HELLO, 5000 - 1023, NOW), guard=guard) is Reason.REPLAYED


def test_out_of_order_within_the_window_accepted_once_each():
    guard = ReplayGuard(window=16)
    order = [10, 3, 7, 11, 4, 9, 25, 12, 24, 10 + 16]
    for seq in order:
        accept(seal(ALICE, HELLO, seq, NOW), guard=guard)
    for seq in order:
        assert reason_of(seal(ALICE, HELLO, seq, NOW), guard=guard) is Reason.REPLAYED
    assert guard.highest(ALICE.public_key) == 26
    for seq in (13, 20, 14):  # never seen, inside the window (11..26)
        accept(seal(ALICE, HELLO, seq, NOW), guard=guard)
    assert reason_of(seal(ALICE, HELLO, 11, NOW), guard=guard) is Reason.REPLAYED  # oldest inside: seen
    assert reason_of(seal(ALICE, HELLO, 5, NOW), guard=guard) is Reason.REPLAYED  # never seen, but below


def test_huge_sequence_jump_is_cheap_and_correct():
    guard = ReplayGuard()
    accept(seal(ALICE, HELLO, 1, NOW), guard=guard)
    accept(seal(ALICE, HELLO, 2**64 - 1, NOW), guard=guard)
    assert guard.to_state()[ALICE.public_key] == (2**64 - 1, 1)
    accept(seal(ALICE, HELLO, 2**64 - 3, NOW), guard=guard)
    assert reason_of(seal(ALICE, HELLO, 2**64 - 3, NOW), guard=guard) is Reason.REPLAYED
    assert reason_of(seal(ALICE, HELLO, 2, NOW), guard=guard) is Reason.REPLAYED
    guard.record(ALICE.public_key, 5)  # recording below the window is a no-op, not a huge shift
    assert guard.to_state()[ALICE.public_key] == (2**64 - 1, 0b101)


@pytest.mark.parametrize("offset", [SKEW + 1, -(SKEW + 1), 10**12, -NOW])
def test_stale_or_far_future_timestamp(offset):
    assert reason_of(seal(ALICE, HELLO, 1, NOW + offset)) is Reason.STALE


@pytest.mark.parametrize("offset", [SKEW, -SKEW, 0])
def test_timestamp_within_the_skew(offset):
    assert accept(seal(ALICE, HELLO, 1, NOW + offset)).ts == NOW + offset


def test_a_rejected_message_consumes_no_sequence_number():
    guard = ReplayGuard()
    bad = pack(envelope({"agent": 5, "addrs": [], "capabilities": [], "models": []}, seq=7))
    assert reason_of(bad, guard=guard) is Reason.SCHEMA
    assert reason_of(seal(ALICE, HELLO, 7, NOW + 10 * SKEW), guard=guard) is Reason.STALE
    assert guard.highest(ALICE.public_key) is None
    accept(seal(ALICE, HELLO, 7, NOW), guard=guard)
    assert guard.highest(ALICE.public_key) == 7


def test_replay_guard_state_round_trip():
    guard = ReplayGuard(window=64, max_skew_ms=1000)
    for seq in (100, 90, 95, 120):
        guard.record(ALICE.public_key, seq)
    guard.record(BOB.public_key, 3)
    state = guard.to_state()
    assert state[ALICE.public_key] == (120, (1 << 0) | (1 << 20) | (1 << 25) | (1 << 30))
    # the state survives msgpack (tuples come back as lists)
    restored = ReplayGuard.from_state(msgpack.unpackb(pack(state)), window=64, max_skew_ms=1000)
    assert restored.to_state() == state and restored.window == 64 and restored.max_skew_ms == 1000
    for seq in (100, 90, 95, 120):
        assert reason_of(seal(ALICE, HELLO, seq, NOW), guard=restored) is Reason.REPLAYED
    assert reason_of(seal(ALICE, HELLO, 120 - 64, NOW), guard=restored) is Reason.REPLAYED
    accept(seal(ALICE, HELLO, 91, NOW), guard=restored)
    accept(seal(BOB, HELLO, 4, NOW), guard=restored)
    assert restored.highest(BOB.public_key) == 4 and guard.highest(BOB.public_key) == 3


def test_guard_check_records_nothing():
    guard = ReplayGuard()
    guard.check(ALICE.public_key, 1, NOW, NOW)
    guard.check(ALICE.public_key, 1, NOW, NOW)
    assert guard.to_state() == {}


# --- kinds, versions, bans ----------------------------------------------------------------------


def test_unknown_kind_validly_signed():
    assert reason_of(pack(envelope(encode_payload(HELLO), kind="gossip"))) is Reason.UNKNOWN_KIND
    assert reason_of(pack(envelope(encode_payload(HELLO), kind=""))) is Reason.UNKNOWN_KIND
    assert reason_of(pack(envelope(encode_payload(HELLO), kind="Hello"))) is Reason.UNKNOWN_KIND


@pytest.mark.parametrize("v", [0, 2, 255, 2**63])
def test_unsupported_version_validly_signed(v):
    assert reason_of(pack(envelope(encode_payload(HELLO), v=v))) is Reason.UNSUPPORTED_VERSION


def test_banned_sender():
    assert reason_of(SEALED, banned={ALICE.public_key}) is Reason.BANNED
    assert accept(SEALED, banned={BOB.public_key}).seq == 1
    # a banned sender is refused before any signature work, whoever signed
    forged = pack(envelope(encode_payload(HELLO), signer=BOB, sender=ALICE.public_key))
    assert reason_of(forged, banned=[ALICE.public_key]) is Reason.BANNED


# --- sizes ----------------------------------------------------------------------------------------


def test_oversized_overall():
    assert reason_of(SEALED, max_bytes=len(SEALED) - 1) is Reason.TOO_LARGE
    assert accept(SEALED, max_bytes=len(SEALED)).seq == 1
    assert reason_of(bytes(MAX_ENVELOPE_BYTES + 1)) is Reason.TOO_LARGE  # calloc'd: cheap


def test_oversized_hello_properly_signed():
    body = pack({"agent": "x" * (100 * 1024), "addrs": [], "capabilities": [], "models": []})
    assert len(body) > Hello.MAX_BYTES
    assert reason_of(pack(envelope(body))) is Reason.TOO_LARGE


def test_per_kind_limits_are_the_documented_ones():
    KiB, MiB = 1024, 1024 * 1024
    assert {kind: cls.MAX_BYTES for kind, cls in KINDS.items()} == {
        "hello": 64 * KiB, "peers": 32 * KiB, "announce": 4 * KiB, "weights": 512 * MiB, "logits": 64 * MiB, "synthetic": 64 * MiB,
        "blob_request": 1 * KiB, "blob_response": 16 * MiB + KiB, "error": 4 * KiB}


@pytest.mark.parametrize("cls", [c for c in KINDS.values() if c.MAX_BYTES <= 17 * 1024 * 1024], ids=lambda c: c.KIND)
def test_per_kind_payload_limit(cls):
    over = b"\xc0" * (cls.MAX_BYTES + 1)  # size is checked before the payload is decoded
    assert reason_of(pack(envelope(over, kind=cls.KIND))) is Reason.TOO_LARGE
    at = pack(b"\x00" * (cls.MAX_BYTES - (3 if cls.MAX_BYTES < 65536 + 3 else 5)))  # a bin exactly at the limit
    assert len(at) == cls.MAX_BYTES
    assert reason_of(pack(envelope(at, kind=cls.KIND))) is Reason.SCHEMA  # passes the size check


@pytest.mark.parametrize("kind", ["weights", "logits", "synthetic"])
def test_large_kind_payload_limit(kind, monkeypatch):
    """The same check for the large kinds, with the limit lowered so the test stays small."""
    monkeypatch.setattr(KINDS[kind], "MAX_BYTES", 4096)
    assert reason_of(pack(envelope(b"\xc0" * 4097, kind=kind))) is Reason.TOO_LARGE
    assert reason_of(pack(envelope(b"\xc0" * 4096, kind=kind))) is Reason.MALFORMED


def test_blob_response_large_chunk_at_the_limit():
    data = b"\x5a" * (16 * 1024 * 1024)
    payload = BlobResponse(digest=digest(data), offset=0, total=len(data), data=data)
    msg = accept(seal(ALICE, payload, 1, NOW))
    assert msg.payload.data == data
    body = pack({"digest": digest(data), "offset": 0, "total": len(data), "data": data + b"!"})
    assert reason_of(pack(envelope(body, kind="blob_response"))) is Reason.SCHEMA


# --- malformed bytes ------------------------------------------------------------------------------


def test_truncated_bytes():
    for n in range(len(SEALED)):
        assert reason_of(SEALED[:n]) is Reason.MALFORMED, n


def test_non_msgpack_bytes():
    for data in (b"", b"\xc1", b"\xc1\x00", b"\xd4", b"GET / HTTP/1.1\r\n\r\n", b"\xdf\xff\xff\xff\xff",
                 b"\x91" * 5000, b"\x91" * 1100 + b"\xc0", b"\xa2\xff\xfe" + b"\xc0"):
        assert reason_of(data) is Reason.MALFORMED, data


def test_a_str_is_decoded_only_where_the_schema_reads_one():
    """Invalid UTF-8 is malformed in a str the decoder reads (a key, a str field); a value of the wrong
    type is refused from its type byte, unread, so an invalid str there is `schema`."""
    assert reason_of(b"\xa2\xff\xfe") is Reason.SCHEMA
    bad_key = SEALED.replace(b"\xa4kind", b"\xa4kin\xff", 1)
    assert reason_of(bad_key) is Reason.MALFORMED
    bad_kind = SEALED.replace(b"\xa5hello", b"\xa5hell\xff", 1)
    assert reason_of(bad_kind) is Reason.MALFORMED


def test_trailing_bytes():
    assert reason_of(SEALED + b"\xc0") is Reason.MALFORMED
    assert reason_of(SEALED + SEALED) is Reason.MALFORMED


def test_payload_malformed_but_signed():
    for body in (b"", b"\xc1", pack({"agent": "a"})[:-1], encode_payload(HELLO) + b"\x00"):
        assert reason_of(pack(envelope(body))) is Reason.MALFORMED, body


def test_invalid_utf8_in_payload_string():
    body = b"\x84\xa5agent\xa2\xff\xfe\xa5addrs\x90\xaccapabilities\x90\xa6models\x90"
    assert reason_of(pack(envelope(body))) is Reason.MALFORMED


# --- envelope schema ------------------------------------------------------------------------------


def test_envelope_not_a_map():
    for obj in ([1, 2, 3], 5, "hello", b"bytes", None, [msgpack.unpackb(SEALED)]):
        assert reason_of(pack(obj)) is Reason.SCHEMA


@pytest.mark.parametrize("field", ENVELOPE_FIELDS)
def test_envelope_missing_field(field):
    env = msgpack.unpackb(SEALED)
    del env[field]
    assert reason_of(pack(env)) is Reason.SCHEMA


def test_envelope_extra_field():
    env = msgpack.unpackb(SEALED)
    assert reason_of(pack({**env, "nonce": 1})) is Reason.SCHEMA
    assert reason_of(pack({**env, b"v": 1})) is Reason.SCHEMA


def test_envelope_bytes_keys_instead_of_str():
    env = msgpack.unpackb(SEALED)
    assert reason_of(pack({k.encode(): v for k, v in env.items()})) is Reason.SCHEMA


@pytest.mark.parametrize("field, value", [
    ("v", "1"), ("v", 1.0), ("v", True), ("v", None),
    ("kind", b"hello"), ("kind", 1),
    ("sender", ALICE.public_key[:31]), ("sender", ALICE.public_key + b"\x00"), ("sender", ALICE.peer_id),
    ("seq", -1), ("seq", 1.0), ("seq", "1"), ("seq", False),
    ("ts", -1), ("ts", float(NOW)), ("ts", None),
    ("digest", b"\x00" * 31), ("digest", "00" * 32),
    ("sig", b"\x00" * 63), ("sig", b"\x00" * 65), ("sig", [0] * 64),
    ("payload", "text"), ("payload", {"agent": "x"}), ("payload", None),
], ids=lambda x: repr(x)[:20])
def test_envelope_field_wrong_type_or_size(field, value):
    assert reason_of(tamper(SEALED, **{field: value})) is Reason.SCHEMA


# --- payload schema -------------------------------------------------------------------------------


def signed_payload(kind: str, obj, **kwargs) -> bytes:
    return pack(envelope(obj, kind=kind, **kwargs))


def wire(payload: protocol.Payload) -> dict:
    return payload.to_wire()


@pytest.mark.parametrize("payload", sample_payloads(), ids=lambda p: p.KIND)
def test_payload_missing_and_extra_field(payload):
    obj = wire(payload)
    for name in obj:
        missing = {k: v for k, v in obj.items() if k != name}
        assert reason_of(signed_payload(payload.KIND, missing)) is Reason.SCHEMA, name
    assert reason_of(signed_payload(payload.KIND, {**obj, "extra": 1})) is Reason.SCHEMA
    assert reason_of(signed_payload(payload.KIND, [obj])) is Reason.SCHEMA
    assert reason_of(signed_payload(payload.KIND, None)) is Reason.SCHEMA


@pytest.mark.parametrize("kind, field, value", [
    ("hello", "agent", b"bytes"), ("hello", "agent", "a" * 129), ("hello", "agent", None),
    ("hello", "addrs", "/ip4/1.2.3.4"), ("hello", "addrs", [1]), ("hello", "addrs", ["a"] * 33),
    ("hello", "addrs", ["a" * 257]), ("hello", "capabilities", ["c"] * 65), ("hello", "models", ["m" * 65]),
    ("announce", "digest", b"\x00" * 31), ("announce", "version", -1), ("announce", "version", 2**63),
    ("announce", "version", True), ("announce", "version", 1.0), ("announce", "size", "10"),
    ("announce", "content", "c" * 65),
    ("weights", "tensors", [{"dtype": "<i4", "shape": [1], "data": b"\x00" * 4}]),  # not a float dtype
    ("weights", "tensors", {"0": None}), ("weights", "num_examples", None), ("weights", "model", 3),
    ("weights", "tensors", [[1.0, 2.0]]),
    ("logits", "temperature", 0.0), ("logits", "temperature", 1e4), ("logits", "temperature", math.nan),
    ("logits", "temperature", "1"), ("logits", "probe", b""),
    ("logits", "logits", {"dtype": "<f4", "shape": [4], "data": b"\x00" * 16}),  # must be 2-D
    ("synthetic", "y", {"dtype": "<f4", "shape": [4], "data": b"\x00" * 16}),  # labels are integers
    ("synthetic", "x", {"dtype": "<i8", "shape": [4], "data": b"\x00" * 32}),  # samples are floats
    ("synthetic", "card", {**CARD, "licence": None}), ("synthetic", "card", {k: v for k, v in CARD.items() if k != "consent"}),
    ("synthetic", "card", {**CARD, "extra": "x"}), ("synthetic", "card", "CC-BY"),
    ("blob_request", "length", 0), ("blob_request", "length", 16 * 1024 * 1024 + 1), ("blob_request", "offset", -5),
    ("blob_response", "data", "text"), ("blob_response", "total", None),
    ("error", "message", "m" * 1025), ("error", "code", ["busy"]),
], ids=lambda x: repr(x)[:24])
def test_payload_field_wrong_type_or_bound(kind, field, value):
    base = next(p for p in sample_payloads() if p.KIND == kind)
    obj = {**wire(base), field: value}
    assert reason_of(signed_payload(kind, obj)) is Reason.SCHEMA


@pytest.mark.parametrize("dtype", ["<c8", "<c16", "|O", ">f4", ">i4", "<u2", "<u4", "<u8", "<U1", "|S4",
                                   "<M8[s]", "|V4", "f4", "float32", "", "<f16"])
def test_disallowed_dtype_in_weights(dtype):
    tensor = {"dtype": dtype, "shape": [2], "data": b"\x00" * 8}
    obj = wire(Weights(model="m", version=1, num_examples=1, tensors=[]))
    obj["tensors"] = [tensor]
    assert reason_of(signed_payload("weights", obj)) is Reason.DTYPE_NOT_ALLOWED


def test_dtype_not_a_string():
    obj = wire(Weights(model="m", version=1, num_examples=1, tensors=[]))
    obj["tensors"] = [{"dtype": b"<f4", "shape": [1], "data": b"\x00" * 4}]
    assert reason_of(signed_payload("weights", obj)) is Reason.DTYPE_NOT_ALLOWED


@pytest.mark.parametrize("shape, nbytes", [([2], 4), ([2], 12), ([], 0), ([], 8), ([2, 3], 20), ([0], 4),
                                           ([2**20, 2**20], 0), ([0, 2**39, 2**39, 2**39], 0)])
def test_shape_and_byte_count_mismatch(shape, nbytes):
    obj = wire(Weights(model="m", version=1, num_examples=1, tensors=[]))
    obj["tensors"] = [{"dtype": "<f4", "shape": shape, "data": b"\x00" * nbytes}]
    assert reason_of(signed_payload("weights", obj)) is Reason.SHAPE_MISMATCH


@pytest.mark.parametrize("shape", [[-1], [1.0], [True], "2", [1] * 9, [2**40], None])
def test_bad_shape_is_schema(shape):
    obj = wire(Weights(model="m", version=1, num_examples=1, tensors=[]))
    obj["tensors"] = [{"dtype": "<f4", "shape": shape, "data": b"\x00" * 4}]
    assert reason_of(signed_payload("weights", obj)) is Reason.SCHEMA


def test_ndarray_map_with_wrong_keys_or_data_type():
    for tensor in ({"dtype": "<f4", "shape": [1]}, {"dtype": "<f4", "shape": [1], "data": b"\0" * 4, "x": 1},
                   {"dtype": "<f4", "shape": [1], "data": "abcd"}, [b"<f4", [1], b"\0" * 4]):
        obj = wire(Weights(model="m", version=1, num_examples=1, tensors=[]))
        obj["tensors"] = [tensor]
        assert reason_of(signed_payload("weights", obj)) is Reason.SCHEMA, tensor


def test_synthetic_batch_length_mismatch():
    good = wire(sample_payloads()[7])
    obj = {**good, "y": encode_array(np.array([0, 1, 2], np.int64))}  # 4 samples, 3 labels
    assert reason_of(signed_payload("synthetic", obj)) is Reason.SHAPE_MISMATCH
    obj = {**good, "x": encode_array(np.array(1.0, np.float32))}  # 0-d x has no samples
    assert reason_of(signed_payload("synthetic", obj)) is Reason.SHAPE_MISMATCH


# --- ndarray encoding ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, object, "<U3", "|S2", np.uint16, np.uint32,
                                   np.uint64, "datetime64[s]", "timedelta64[ms]", [("a", "<f4")]])
def test_encode_array_refuses_disallowed_dtypes(dtype):
    with pytest.raises(ValueError):
        encode_array(np.zeros(2, dtype=dtype))


def test_encode_array_refuses_too_many_dims():
    with pytest.raises(ValueError):
        encode_array(np.zeros((1,) * 9, np.float32))
    assert encode_array(np.zeros((1,) * 8, np.float32))["shape"] == [1] * 8


@pytest.mark.parametrize("dtype", ALLOWED_DTYPES)
def test_encode_decode_every_allowed_dtype(dtype):
    array = (np.arange(12) % 2).astype(dtype).reshape(3, 4)
    wire_form = encode_array(array)
    assert wire_form["dtype"] == dtype and wire_form["shape"] == [3, 4]
    assert len(wire_form["data"]) == 12 * np.dtype(dtype).itemsize
    np.testing.assert_array_equal(decode_array(wire_form), array)


def test_encode_array_converts_byte_order_and_layout():
    big = np.arange(6, dtype=">f4").reshape(2, 3)
    wire_form = encode_array(big)
    assert wire_form["dtype"] == "<f4" and wire_form["data"] == big.astype("<f4").tobytes()
    fortran = np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3))
    assert encode_array(fortran)["data"] == np.arange(6, dtype="<f8").tobytes()
    strided = np.arange(10, dtype=np.int32)[::2]
    np.testing.assert_array_equal(decode_array(encode_array(strided)), strided)
    assert encode_array([1.0, 2.0])["dtype"] == "<f8"


def test_zero_dim_array_keeps_its_shape():
    wire_form = encode_array(np.float32(2.5))
    assert wire_form["shape"] == [] and wire_form["data"] == np.float32(2.5).tobytes()
    decoded = decode_array(wire_form)
    assert decoded.shape == () and decoded == np.float32(2.5)


def test_decode_array_reasons():
    assert pytest.raises(RejectedMessage, decode_array, None).value.reason is Reason.SCHEMA
    bad = {"dtype": "|O", "shape": [1], "data": b"\x00" * 8}
    assert pytest.raises(RejectedMessage, decode_array, bad).value.reason is Reason.DTYPE_NOT_ALLOWED
    bad = {"dtype": "<f4", "shape": [3], "data": b"\x00" * 8}
    assert pytest.raises(RejectedMessage, decode_array, bad).value.reason is Reason.SHAPE_MISMATCH


# --- identity -----------------------------------------------------------------------------------


def test_identity_pem_round_trip():
    ident = Identity.generate()
    pem = ident.to_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n") and pem.endswith(b"-----END PRIVATE KEY-----\n")
    again = Identity.from_pem(pem)
    assert (again.seed, again.public_key, again.peer_id) == (ident.seed, ident.public_key, ident.peer_id)
    assert again.sign(b"x") == ident.sign(b"x")
    assert protocol.verify(ident.public_key, ident.sign(b"msg"), b"msg")
    assert not protocol.verify(ident.public_key, ident.sign(b"msg"), b"msg!")
    assert not protocol.verify(BOB.public_key, ident.sign(b"msg"), b"msg")
    assert repr(ident) == f"Identity({ident.peer_id})"


@pytest.mark.parametrize("make_key", [
    lambda: ec.generate_private_key(ec.SECP256R1()),
    lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
    lambda: ed448.Ed448PrivateKey.generate(),
], ids=["p256", "rsa", "ed448"])
def test_non_ed25519_pem_rejected(make_key):
    pem = make_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    with pytest.raises(ValueError, match="not Ed25519"):
        Identity.from_pem(pem)


def test_garbage_and_encrypted_pem_rejected():
    for data in (b"", b"not a pem", ALICE.to_pem()[:40]):
        with pytest.raises(ValueError):
            Identity.from_pem(data)
    encrypted = ALICE._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"pw"))
    with pytest.raises(ValueError):
        Identity.from_pem(encrypted)


def test_seed_and_public_key_sizes():
    for seed in (b"", bytes(31), bytes(33)):
        with pytest.raises(ValueError):
            Identity(seed)
    with pytest.raises(ValueError):
        protocol.peer_id(bytes(31))
    assert not protocol.verify(bytes(31), bytes(64), b"x")
    assert not protocol.verify(ALICE.public_key, bytes(10), b"x")


def test_peer_id_shape():
    for _ in range(5):
        assert Identity.generate().peer_id.startswith("12D3KooW")


def test_logits_class_counts_must_match_the_classes():
    good = wire(next(p for p in sample_payloads() if p.KIND == "logits"))
    obj = {**good, "class_counts": [1, 2, 3]}  # 2 classes of logits, 3 counts
    assert reason_of(signed_payload("logits", obj)) is Reason.SHAPE_MISMATCH
    obj = {**good, "class_counts": [1, -2]}
    assert reason_of(signed_payload("logits", obj)) is Reason.SCHEMA


# --- strict keys and signatures -------------------------------------------------------------------

P = 2**255 - 19


def _edwards_torsion_ys() -> set[int]:
    """The y of the 8 points of order dividing 8, computed from the curve (twisted Edwards, a = -1)."""
    d = -121665 * pow(121666, P - 2, P) % P

    def add(p1, p2):
        (x1, y1), (x2, y2) = p1, p2
        t = d * x1 * x2 * y1 * y2 % P
        return ((x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P, (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P)

    def x_of(y):
        u, v = (y * y - 1) % P, (d * y * y + 1) % P
        x = pow(u * pow(v, P - 2, P), (P + 3) // 8, P)
        if (x * x - u * pow(v, P - 2, P)) % P:
            x = x * pow(2, (P - 1) // 4, P) % P
        return x

    y8 = protocol.identity._Y_ORDER_8
    t = (x_of(y8), y8)
    points, q = [], (0, 1)
    for _ in range(8):
        points.append(q)
        q = add(q, t)
    assert q == (0, 1) and len(set(points)) == 8  # t has order exactly 8
    return {y for _, y in points}


def test_small_order_list_is_the_torsion_subgroup():
    assert _edwards_torsion_ys() == set(protocol.identity.SMALL_ORDER_Y)


@pytest.mark.parametrize("y", sorted(protocol.identity.SMALL_ORDER_Y) + list(range(P, 2**255)))
@pytest.mark.parametrize("sign", [0, 1])
def test_bad_keys(y, sign):
    key = (y | sign << 255).to_bytes(32, "little")
    assert not protocol.strict_public_key(key)
    assert reason_of(tamper(SEALED, sender=key)) is Reason.BAD_KEY


def test_small_order_key_forgery_that_openssl_alone_accepts():
    identity_point = bytes([1]) + bytes(31)
    sig = identity_point + bytes(32)  # R = identity, S = 0: [0]B = O + k*O for any message
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    Ed25519PublicKey.from_public_bytes(identity_point).verify(sig, b"anything")  # the bare check passes
    assert reason_of(tamper(SEALED, sender=identity_point, sig=sig)) is Reason.BAD_KEY


def test_s_not_below_l_is_bad_signature():
    env = msgpack.unpackb(SEALED, raw=False)
    s = int.from_bytes(env["sig"][32:], "little") + protocol.identity.L
    assert reason_of(tamper(SEALED, sig=env["sig"][:32] + s.to_bytes(32, "little"))) is Reason.BAD_SIGNATURE


def test_bad_key_comes_before_the_ban_list_and_author_after_it():
    small = bytes(32)
    assert reason_of(tamper(SEALED, sender=small), banned={small}, author=BOB.peer_id) is Reason.BAD_KEY
    assert reason_of(SEALED, banned={ALICE.public_key}, author=BOB.peer_id) is Reason.FOREIGN_AUTHOR


def test_author_binding():
    assert accept(SEALED, author=ALICE.peer_id).sender == ALICE.public_key
    guard = ReplayGuard()
    assert reason_of(SEALED, author=BOB.peer_id, guard=guard) is Reason.FOREIGN_AUTHOR
    accept(SEALED, guard=guard)  # the refusal used up nothing


# --- repeated keys ----------------------------------------------------------------------------------


def _pairs(*pairs) -> bytes:
    return bytes([0x80 | len(pairs)]) + b"".join(pack(k) + pack(v) for k, v in pairs)


def test_repeated_keys_are_malformed_everywhere():
    env = msgpack.unpackb(SEALED, raw=False)
    dup = _pairs(*[(k, env[k]) for k in ("v", "kind", "sender", "seq", "seq", "digest", "sig", "payload")])
    assert reason_of(dup) is Reason.MALFORMED
    hello = _pairs(("agent", "a"), ("addrs", []), ("agent", "b"), ("models", []))
    assert reason_of(signed_envelope("hello", hello)) is Reason.MALFORMED
    nd = _pairs(("dtype", "<f4"), ("dtype", "<f4"), ("data", b""))
    weights = _pairs(("model", "m"), ("version", 1), ("num_examples", 1))
    body = b"\x84" + weights[1:] + pack("tensors") + b"\x91" + nd
    assert reason_of(signed_envelope("weights", body)) is Reason.MALFORMED
    card = dict(CARD_FOR_TESTS)
    card_bytes = b"\x86" + b"".join(pack(k) + pack(v) for k, v in list(card.items())[:5]) + pack("licence") + pack("x")
    x, y = encode_array(np.zeros((1, 1), np.float32)), encode_array(np.zeros(1, np.int64))
    body = b"\x83" + pack("x") + pack(x) + pack("y") + pack(y) + pack("card") + card_bytes
    assert reason_of(signed_envelope("synthetic", body)) is Reason.MALFORMED


CARD_FOR_TESTS = {"licence": "CC0", "consent": "c", "retention": "r", "generator": "g", "source": "s",
                  "digest": bytes(32)}


def signed_envelope(kind: str, body: bytes, signer: Identity = ALICE, seq: int = 1, ts: int = NOW) -> bytes:
    dg = digest(body)
    sig = signer.sign(signed_bytes(1, kind, signer.public_key, seq, ts, dg))
    return pack({"v": 1, "kind": kind, "sender": signer.public_key, "seq": seq, "ts": ts, "digest": dg,
                 "sig": sig, "payload": body})


def test_ndarray_reasons_do_not_depend_on_key_order():
    nd = _pairs(("shape", "bad"), ("data", b""), ("dtype", "<c8"))
    body = _pairs(("model", "m"), ("version", 1), ("num_examples", 1), ("tensors", []))[:-1] + b"\x91" + nd
    assert reason_of(signed_envelope("weights", body)) is Reason.DTYPE_NOT_ALLOWED


def test_float32_temperature_is_accepted_and_nan_refused():
    logits = Logits(probe=bytes(32), model="m", version=1, temperature=0.5, logits=np.zeros((1, 2), np.float32),
                    class_counts=[1, 1])
    body = encode_payload(logits)
    f32 = body.replace(b"\xcb" + np.float64(0.5).byteswap().tobytes(), b"\xca" + np.float32(0.5).byteswap().tobytes())
    assert f32 != body and accept(signed_envelope("logits", f32)).payload.temperature == 0.5
    nan = body.replace(b"\xcb" + np.float64(0.5).byteswap().tobytes(), b"\xcb" + np.float64("nan").byteswap().tobytes())
    assert reason_of(signed_envelope("logits", nan)) is Reason.SCHEMA


# --- unsequenced replies ------------------------------------------------------------------------------


def test_replies_are_not_sequenced():
    assert not BlobResponse.SEQUENCED and not Error.SEQUENCED
    assert all(cls.SEQUENCED for cls in KINDS.values() if cls not in (BlobResponse, Error))
    guard = ReplayGuard()
    accept(SEALED, guard=guard)  # seq 1
    reply = seal(ALICE, BlobResponse(digest=bytes(32), offset=0, total=1, data=b"x"), 1, NOW)
    for _ in range(3):  # the same seq, even the same bytes: neither checked nor recorded
        accept(reply, guard=guard)
    assert guard.highest(ALICE.public_key) == 1
    assert reason_of(seal(ALICE, Error(code="e", message=""), 1, NOW + 400_000), guard=guard) is Reason.STALE
    fresh = ReplayGuard()
    accept(seal(ALICE, Error(code="e", message=""), 5, NOW), guard=fresh)
    assert fresh.highest(ALICE.public_key) is None


# --- the bounded replay guard -------------------------------------------------------------------------


def test_guard_evicts_the_least_recently_accepted_and_keeps_a_watermark():
    guard = ReplayGuard(max_senders=2)
    a, b, c = (bytes([i]) * 32 for i in (1, 2, 3))
    guard.record(a, 1, NOW)
    guard.record(b, 1, NOW + 10)
    guard.record(a, 2, NOW + 20)  # a is now the most recent: b is evicted next
    guard.record(c, 1, NOW + 5)
    assert guard.highest(b) is None and guard.highest(a) == 2 and guard.watermark == NOW + 10
    with pytest.raises(RejectedMessage) as info:  # b's old message, replayed after its eviction
        guard.check(b, 1, NOW + 10, NOW)
    assert info.value.reason is Reason.REPLAYED
    guard.check(b, 1, NOW + 11, NOW)  # newer than anything an evicted sender sent: fresh
    restored = ReplayGuard.from_state(guard.to_state(), max_senders=2)
    assert restored.watermark == NOW + 10 and restored.highest(a) == 2
    with pytest.raises(RejectedMessage):
        restored.check(b, 1, NOW + 10, NOW)
    old = {s: v for s, v in guard.to_state().items() if s}  # a state saved before the watermark
    assert ReplayGuard.from_state(old).watermark == -1


def test_guard_never_grows_past_its_bound():
    guard = ReplayGuard(max_senders=64)
    for i in range(1000):
        sender = Identity(i.to_bytes(32, "big")).public_key if i < 3 else i.to_bytes(32, "big")
        guard.check(sender, 1, NOW + i, NOW + i)
        guard.record(sender, 1, NOW + i)
    assert len(guard.to_state()) == 64 + 1  # the senders, and the watermark entry
    assert guard.watermark == NOW + 1000 - 64 - 1


def test_open_envelope_records_ts_for_the_watermark():
    guard = ReplayGuard(max_senders=1)
    accept(SEALED, guard=guard)
    accept(seal(BOB, HELLO, 1, NOW + 1), guard=guard)  # evicts ALICE
    assert guard.watermark == NOW
    assert reason_of(SEALED, guard=guard) is Reason.REPLAYED


# --- bounded decoding ---------------------------------------------------------------------------------


def _peak(data: bytes, **kwargs) -> tuple[int, str]:
    import tracemalloc
    tracemalloc.start()
    try:
        outcome = open_envelope(data, now_ms=NOW, **kwargs).kind
    except RejectedMessage as exc:
        outcome = exc.reason.value
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, outcome


def _nested(n: int, head: bytes) -> bytes:
    return b"\xdd" + n.to_bytes(4, "big") + head * (n - 1)


AMPLIFIERS = {
    "array of empty maps": _nested(2_000_000, b"\x80"),
    "array of empty arrays": _nested(2_000_000, b"\x90"),
    "envelope field holding a container": b"\x88\xa1v" + _nested(2_000_000, b"\x80"),
    "huge declared lengths": b"\xdf\xff\xff\xff\xff" + b"\xdb\xff\xff\xff\xff" * 1000,
}


@pytest.mark.parametrize("name", sorted(AMPLIFIERS))
def test_envelope_decoding_allocates_about_its_length(name):
    data = AMPLIFIERS[name]
    peak, outcome = _peak(data)
    assert outcome in ("malformed", "schema")
    assert peak <= 2 * len(data) + 64 * 1024, (peak, len(data))


@pytest.mark.parametrize("kind, field", [("weights", "tensors"), ("hello", "addrs"), ("logits", "class_counts"),
                                         ("synthetic", "card")])
def test_signed_payload_decoding_allocates_about_its_length(kind, field):
    """Keys are free: a fresh key signs a payload of junk where a list or map is expected."""
    junk = _nested(min(1_000_000, KINDS[kind].MAX_BYTES - 64), b"\x80")
    body = b"\x81" + pack(field) + junk
    peak, outcome = _peak(signed_envelope(kind, body, signer=Identity.generate()))
    assert outcome in ("schema", "malformed")
    assert peak <= 2 * len(body) + 64 * 1024, (peak, len(body))


def test_valid_large_payload_allocates_about_its_length():
    data = seal(ALICE, Weights("m", 1, 1, [np.zeros(2**22, np.float32)]), 1, NOW)
    peak, outcome = _peak(data)
    assert outcome == "weights" and peak <= 1.1 * len(data) + 64 * 1024
    data = seal(ALICE, BlobResponse(bytes(32), 0, 2**24, b"\x01" * 2**24), 1, NOW)
    peak, outcome = _peak(data)
    assert outcome == "blob_response" and peak <= 2.1 * len(data) + 64 * 1024  # data is copied out as bytes


def test_worst_valid_lists_cost_a_bounded_few_mib():
    """Lists of objects cost a Python object each: bounded by the schema's maxima, not by the input."""
    data = seal(ALICE, Logits(bytes(32), "m", 1, 1.0, np.zeros((1, 65536), np.float16), [2**40] * 65536), 1, NOW)
    peak, outcome = _peak(data)
    assert outcome == "logits" and peak <= 3 * len(data) + 4 * 2**20
    data = seal(ALICE, Weights("m", 1, 1, [np.zeros(0, np.float32)] * 4096), 1, NOW)
    peak, outcome = _peak(data)
    assert outcome == "weights" and peak <= 3 * len(data) + 1 * 2**20


# --- a memo shared by the receivers of the same bytes (the simulator) -------------------------------


def _outcome(data, **kwargs):
    try:
        return accept(data, **kwargs).payload
    except RejectedMessage as exc:
        return exc.reason


@pytest.mark.parametrize("ahead", [False, True], ids=["lazily", "read-ahead"])
def test_a_memo_gives_every_receiver_what_it_would_get_alone(monkeypatch, ahead):
    """Each distinct message is verified once; the author, ban list and replay window stay each
    receiver's own, and a rejection is the same for every receiver (a fresh exception each time).
    Read ahead on two threads (the simulator's, before delivery), the receivers find the same."""
    calls = []
    real = protocol.envelope.verify
    monkeypatch.setattr(protocol.envelope, "verify", lambda *a: calls.append(1) or real(*a))
    forged = pack(envelope(encode_payload(HELLO), signer=BOB, sender=ALICE.public_key))
    cases = [SEALED, forged, tamper(SEALED, v=2), tamper(SEALED, sender=bytes(32)), SEALED[:-3],
             tamper(SEALED, payload=encode_payload(Hello(agent="evil"))), seal(BOB, HELLO, 7, NOW)]
    alone = [_outcome(data) for data in cases]
    calls.clear()
    memo = protocol.ReadingMemo()
    if ahead:
        with ThreadPoolExecutor(2) as pool:
            memo.read_ahead(cases * 2, lambda check, readings: list(pool.map(check, readings)))
        assert len(calls) == 4 and memo.distinct == len(cases)
    for receiver in range(3):
        assert [_outcome(data, memo=memo) for data in cases] == alone
    assert len(calls) == 4  # SEALED, forged, the changed payload, BOB's: the others fail before the signature
    guard = ReplayGuard()
    assert accept(SEALED, memo=memo, guard=guard).payload is accept(SEALED, memo=memo).payload  # shared, read-only
    assert reason_of(SEALED, memo=memo, guard=guard) is Reason.REPLAYED
    assert reason_of(SEALED, memo=memo, banned={ALICE.public_key}) is Reason.BANNED
    assert reason_of(SEALED, memo=memo, author=BOB.peer_id) is Reason.FOREIGN_AUTHOR
    assert reason_of(SEALED, memo=memo, max_bytes=len(SEALED) - 1) is Reason.TOO_LARGE
    assert len(calls) == 4


def test_a_memo_holds_at_most_its_bytes():
    memo = protocol.ReadingMemo(max_bytes=3 * len(SEALED))
    messages = [seal(ALICE, HELLO, seq, NOW) for seq in range(1, 11)]
    for data in messages:
        accept(data, memo=memo)
    assert sum(len(r.data) for r in memo._readings.values()) <= 3 * len(SEALED) + 8
    assert messages[-1] in memo._readings and messages[0] not in memo._readings


def test_seal_all_on_two_threads_is_seal_one_by_one():
    """The simulator seals a round's messages together, the signatures on a thread per core: the
    same bytes, in the jobs' order, as sealing each alone."""
    jobs = [(signer, payload, seq, NOW + seq) for seq in range(1, 9)
            for signer, payload in ((ALICE, HELLO), (BOB, Hello(agent=f"b{seq}")))]
    with ThreadPoolExecutor(2) as pool:
        together = protocol.seal_all(jobs, lambda sign, items: list(pool.map(sign, items)))
    assert together == [seal(*job) for job in jobs] == protocol.seal_all(jobs)
    assert len(set(together)) == len(jobs)
