"""Property tests: nothing a peer sends makes open_envelope (or the payload / ndarray decoders) raise
anything but RejectedMessage, and nothing but an intact signed message is ever accepted."""
from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from manymodels.protocol import (ALLOWED_DTYPES, KINDS, Announce, BlobRequest, BlobResponse, Error, Hello,
                                 Identity, Logits, Message, RejectedMessage, ReplayGuard, SyntheticBatch, Weights,
                                 decode_array, digest, open_envelope, seal)
from manymodels.protocol.envelope import ENVELOPE_FIELDS, encode_payload, signed_bytes

pytestmark = pytest.mark.slow  # hundreds of examples a test: 35 s in all (test_protocol and test_vectors stay fast)

ALICE = Identity(bytes(range(32)))
BOB = Identity(bytes(range(32, 64)))
NOW = 1_700_000_000_000

FUZZ = settings(max_examples=400, deadline=500, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SMALL = settings(max_examples=300, deadline=500, suppress_health_check=[HealthCheck.too_slow])

CARD = {"licence": "CC0", "consent": "synthetic", "retention": "7d", "generator": "g", "source": "s",
        "digest": b"\x11" * 32}
PAYLOADS = [
    Hello(agent="fuzz", addrs=["/ip4/127.0.0.1/tcp/1"], capabilities=["weights", "logits"], models=["m"]),
    Announce(digest=b"\x01" * 32, content="weights", model="m", version=3, num_examples=10, size=300),
    Weights(model="m", version=1, num_examples=5,
            tensors=[np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float64)]),
    Logits(probe=b"\x02" * 32, model="m", version=1, temperature=1.0, logits=np.eye(3, dtype=np.float32),
           class_counts=[1, 2, 3]),
    SyntheticBatch(x=np.zeros((2, 2), np.float32), y=np.array([0, 1], np.int64), card=CARD),
    BlobRequest(digest=b"\x03" * 32, offset=0, length=100),
    BlobResponse(digest=b"\x04" * 32, offset=0, total=5, data=b"hello"),
    Error(code="e", message="oops"),
]
ORIGINALS = [seal(ALICE if i % 2 == 0 else BOB, p, 10 + i, NOW + i) for i, p in enumerate(PAYLOADS)]
HEADERS = {(m.kind, m.sender, m.seq, m.ts, m.digest) for m in
           (open_envelope(o, now_ms=NOW, guard=ReplayGuard()) for o in ORIGINALS)}


def open_checked(data: bytes, *, originals: list[bytes] = ORIGINALS) -> Message | None:
    """Open `data`; return the Message or None when rejected. Anything else fails the test."""
    try:
        msg = open_envelope(data, now_ms=NOW, guard=ReplayGuard())
    except RejectedMessage:
        return None
    # Accepted: then it must be one of the signed messages, header and payload both.
    assert (msg.kind, msg.sender, msg.seq, msg.ts, msg.digest) in HEADERS
    assert msg.size == len(data)
    return msg


# --- random bytes ---------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_are_rejected(data):
    assert open_checked(data) is None


@FUZZ_SMALL
@given(st.sampled_from([0x80 | 8, 0xDE, 0xDF, 0x88]), st.binary(max_size=600))
def test_random_bytes_behind_a_map_header_are_rejected(head, rest):
    assert open_checked(bytes([head]) + rest) is None


@FUZZ_SMALL
@given(st.integers(-128, -1), st.binary(max_size=20), st.sampled_from([b"", b"\x81\xa1v", b"\x91"]))
def test_reserved_ext_types_are_rejected(code, body, prefix):
    # ext -1 is msgpack's timestamp (4, 8 or 12 bytes); other negative codes are reserved
    ext = b"\xc7" + bytes([len(body), code & 0xFF]) + body
    assert open_checked(prefix + ext) is None


# --- mutated valid envelopes ----------------------------------------------------------------------

envelopes = st.sampled_from(ORIGINALS)


@st.composite
def mutated(draw):
    data = bytearray(draw(envelopes))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "splice", "append"]))
        if op in ("flip", "set", "delete") and not data:
            continue
        if op == "flip":
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            data = data[:draw(st.integers(0, len(data)))]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            i = draw(st.integers(0, len(data) - 1))
            del data[i:i + draw(st.integers(1, 16))]
        elif op == "splice":
            other = draw(envelopes)
            i = draw(st.integers(0, len(data)))
            j = draw(st.integers(0, len(other)))
            data = data[:i] + other[j:]
        else:
            data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_envelopes_are_rejected_unless_intact(data):
    msg = open_checked(data)  # if accepted, it is one of the signed messages (checked inside)
    if data in ORIGINALS:
        assert msg is not None


@FUZZ_SMALL
@given(envelopes, st.data())
def test_one_byte_flip_is_always_rejected(data, draw):
    i = draw.draw(st.integers(0, len(data) - 1))
    bit = draw.draw(st.integers(0, 7))
    flipped = bytearray(data)
    flipped[i] ^= 1 << bit
    assert open_checked(bytes(flipped)) is None


def test_originals_are_accepted():
    for data in ORIGINALS:
        assert open_checked(data) is not None


# --- random msgpack objects -----------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=True)
           | st.text(max_size=40) | st.binary(max_size=64)
           | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=16))
           | st.builds(msgpack.Timestamp, st.integers(-(2**63), 2**63 - 1), st.integers(0, 999_999_999)))
keys = st.text(max_size=12) | st.binary(max_size=8) | st.sampled_from(list(ENVELOPE_FIELDS) + ["dtype", "shape", "data"])
objects = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(keys, children, max_size=6),
    max_leaves=30,
)


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@FUZZ
@given(objects)
def test_random_msgpack_objects_are_rejected(obj):
    assert open_checked(pack(obj)) is None


shallow = scalars | st.lists(scalars, max_size=3)


@FUZZ_SMALL
@given(st.fixed_dictionaries({name: shallow for name in ENVELOPE_FIELDS}))
def test_random_envelope_field_values_are_rejected(env):
    assert open_checked(pack(env)) is None


@st.composite
def near_envelopes(draw):
    """A real envelope with one field replaced by a random object or dropped, or an extra field added."""
    env = msgpack.unpackb(draw(envelopes), raw=False)
    name = draw(st.sampled_from(ENVELOPE_FIELDS))
    action = draw(st.sampled_from(["replace", "drop", "extra"]))
    if action == "replace":
        env[name] = draw(objects)
    elif action == "drop":
        del env[name]
    else:
        env[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in ENVELOPE_FIELDS))] = draw(objects)
    return env


@FUZZ
@given(near_envelopes())
def test_near_envelopes_are_rejected_unless_unchanged(env):
    open_checked(pack(env))  # an unchanged replacement may be accepted; anything else raises RejectedMessage


def signed(kind: str, body: bytes, signer: Identity = ALICE, seq: int = 1) -> bytes:
    dg = digest(body)
    sig = signer.sign(signed_bytes(1, kind, signer.public_key, seq, NOW, dg))
    return pack({"v": 1, "kind": kind, "sender": signer.public_key, "seq": seq, "ts": NOW, "digest": dg,
                 "sig": sig, "payload": body})


@FUZZ
@given(st.sampled_from(sorted(KINDS)), objects | st.binary(max_size=64))
def test_signed_random_payloads_never_crash(kind, obj):
    body = obj if isinstance(obj, bytes) else pack(obj)
    try:
        msg = open_envelope(signed(kind, body), now_ms=NOW, guard=ReplayGuard())
    except RejectedMessage:
        return
    assert msg.kind == kind and msg.digest == digest(body)


# --- payload classes ------------------------------------------------------------------------------


@st.composite
def near_payloads(draw):
    """A valid payload's wire map with one field (or one nested field) replaced by a random object."""
    payload = draw(st.sampled_from(PAYLOADS))
    obj = msgpack.unpackb(encode_payload(payload), raw=False)
    name = draw(st.sampled_from(sorted(obj)))
    target = obj
    if isinstance(obj[name], dict) and draw(st.booleans()):
        target = obj[name]
        name = draw(st.sampled_from(sorted(target)))
    elif isinstance(obj[name], list) and obj[name] and isinstance(obj[name][0], dict) and draw(st.booleans()):
        target = obj[name][0]
        name = draw(st.sampled_from(sorted(target)))
    target[name] = draw(objects | ndarray_wire())
    return type(payload), obj


@FUZZ
@given(near_payloads())
def test_from_wire_near_valid(case):
    cls, obj = case
    try:
        payload = cls.from_wire(obj)
    except RejectedMessage:
        return
    assert isinstance(payload, cls)
    cls.from_wire(msgpack.unpackb(encode_payload(payload), raw=False))  # what it accepts, it can re-encode


@FUZZ_SMALL
@given(st.sampled_from(list(KINDS.values())), objects)
def test_from_wire_random_objects(cls, obj):
    try:
        assert isinstance(cls.from_wire(obj), cls)
    except RejectedMessage:
        pass


@FUZZ_SMALL
@given(st.data())
def test_from_wire_random_maps_with_the_right_keys(data):
    cls = data.draw(st.sampled_from(list(KINDS.values())))
    obj = data.draw(st.fixed_dictionaries({name: shallow | ndarray_wire() for name in cls.SCHEMA}))
    try:
        assert isinstance(cls.from_wire(obj), cls)
    except RejectedMessage:
        pass


# --- ndarrays -------------------------------------------------------------------------------------

dims = st.integers(0, 4) | st.integers(-3, 2**41) | st.sampled_from([0, 2**32, 2**39, 2**40 - 1, 2**40, 2**63])


@st.composite
def ndarray_wire(draw):
    dtype = draw(st.sampled_from(ALLOWED_DTYPES + ("<c8", "|O", ">f4", "<u2", "f4", "", "<V4")) | st.text(max_size=6))
    shape = draw(st.lists(dims, max_size=10) | objects
                 | st.lists(st.sampled_from([0, 1, 2**32, 2**39, 2**40 - 1]), min_size=2, max_size=8))
    n = None
    if dtype in ALLOWED_DTYPES and isinstance(shape, list) and all(type(d) is int and 0 <= d < 2**40 for d in shape):
        n = math.prod(shape) * np.dtype(dtype).itemsize  # 0 for any shape with a 0 dim, however big the rest
    if n is not None and n <= 512 and draw(st.integers(0, 3)) > 0:
        data = draw(st.binary(min_size=n, max_size=n))
    else:
        data = draw(st.binary(max_size=64) | objects)
    obj = {"dtype": dtype, "shape": shape, "data": data}
    if draw(st.integers(0, 9)) == 0:
        obj[draw(st.sampled_from(["x", "dtype", "shape", "data"]))] = draw(objects)
    return obj


@FUZZ
@given(ndarray_wire())
def test_decode_array_structured(obj):
    try:
        array = decode_array(obj)
    except RejectedMessage:
        return
    assert array.dtype.str == obj["dtype"] and list(array.shape) == obj["shape"]
    assert array.nbytes == len(obj["data"]) and not array.flags.writeable


@FUZZ_SMALL
@given(objects)
def test_decode_array_random_objects(obj):
    try:
        decode_array(obj)
    except RejectedMessage:
        pass


@FUZZ_SMALL
@given(ndarray_wire())
def test_decode_array_through_a_signed_weights_message(tensor):
    body = pack({"model": "m", "version": 1, "num_examples": 1, "tensors": [tensor]})
    try:
        msg = open_envelope(signed("weights", body), now_ms=NOW, guard=ReplayGuard())
    except RejectedMessage:
        return
    assert msg.payload.tensors[0].dtype.kind == "f"


# --- the replay guard against a model -----------------------------------------------------------

seqs = st.integers(0, 40) | st.integers(0, 2**64 - 1) | st.sampled_from([2**64 - 1, 2**63, 2**40, 1023, 1024, 1025])


@FUZZ_SMALL
@given(st.lists(st.tuples(st.sampled_from([ALICE.public_key, BOB.public_key]), seqs), max_size=40),
       st.sampled_from([1, 8, 1024]))
def test_replay_guard_matches_a_set_model(events, window):
    guard = ReplayGuard(window=window)
    accepted: dict[bytes, set[int]] = {}
    for sender, seq in events:
        seen = accepted.setdefault(sender, set())
        fresh = not seen or seq > max(seen) or (max(seen) - seq < window and seq not in seen)
        try:
            guard.check(sender, seq, NOW, NOW)
        except RejectedMessage as exc:
            assert not fresh and exc.reason.value == "replayed"
            continue
        assert fresh
        guard.record(sender, seq)
        seen.add(seq)
        assert guard.highest(sender) == max(seen)
    restored = ReplayGuard.from_state(guard.to_state(), window=window)
    for sender, seq in events:
        try:
            restored.check(sender, seq, NOW, NOW)
        except RejectedMessage:
            continue
        raise AssertionError(f"{seq} was accepted once, so the restored guard must refuse it")


# --- the fuzz bench, seeded and short: nothing but RejectedMessage, and the memory bound ---------


def test_bench_fuzz_quick():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "bench" / "bench_fuzz.py"
    spec = importlib.util.spec_from_file_location("bench_fuzz", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.run(3000, seed=1)  # asserts the bound (3 x len + 1 MiB) for every input
    assert sum(result["reasons"].values()) == 3000 and result["worst_of_bound"] <= 1
    assert {r for r in result["reasons"] if r.startswith("accept:")} == {f"accept:{k}" for k in KINDS}
