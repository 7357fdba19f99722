"""The test vectors in docs/PROTOCOL.md: the implementation reproduces each byte for byte, rejects each
rejection vector with its stated reason, and an independent encoder written from the document alone
(struct + hashlib + cryptography, no msgpack library, no manymodels.protocol) yields the same bytes."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from manymodels import protocol
from manymodels.protocol import (Announce, Coded, Hello, Identity, RejectedMessage, ReplayGuard, Weights, dense,
                                 digest, open_envelope, seal)
from manymodels.protocol.envelope import encode_payload, signed_bytes

SPEC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"
HEX_KEYS = {"seed", "public_key", "multihash", "pkcs8_der", "payload", "digest", "signed", "signature", "envelope",
            "canonical", "array_digest"}
INT_KEYS = {"seq", "ts", "now_ms"}


def parse_vectors(text: str) -> dict[str, dict]:
    vectors: dict[str, dict] = {}
    for name, body in re.findall(r"^```vector name=(\S+)\n(.*?)^```", text, flags=re.M | re.S):
        fields: dict[str, str] = {}
        key = None
        for line in body.splitlines():
            if line[:1].isspace() and key is not None:
                fields[key] += " " + line.strip()
            elif line.strip():
                key, _, value = line.partition(":")
                key = key.strip()
                fields[key] = value.strip()
        vec: dict = {}
        for k, v in fields.items():
            if k in HEX_KEYS:
                vec[k] = bytes.fromhex("".join(v.split()))
            elif k in INT_KEYS:
                vec[k] = int(v)
            elif k in ("fields", "array"):
                vec[k] = json.loads(v)
            else:
                vec[k] = v
        assert name not in vectors, f"vector {name} appears twice"
        vectors[name] = vec
    return vectors


VECTORS = parse_vectors(SPEC.read_text(encoding="utf-8"))
MESSAGE_VECTORS = [n for n, v in VECTORS.items() if "kind" in v]
OUTCOME_VECTORS = [n for n, v in VECTORS.items() if "result" in v]


def test_spec_has_the_vectors_the_brief_asks_for():
    for name in ("identity", "identity-2", "hello-envelope", "weights-envelope", "announce-envelope",
                 "reject-payload-byte-flipped", "reject-seq-changed", "reject-forged-signer",
                 "accept-noncanonical-envelope", "accept-map16-envelope", "probe-digest", "reject-duplicate-key",
                 "reject-small-order-key", "reject-noncanonical-key", "reject-s-not-below-l", "reject-small-order-r",
                 "reject-foreign-author", "announce-weights-envelope", "weights-coded-envelope",
                 "weights-qint-envelope", "logits-uint8-envelope", "reject-coded-unsorted-indices", "reject-coded-too-many-indices",
                 "reject-coded-huge-shape", "reject-coded-nan-scale", "reject-coded-unknown-codec"):
        assert name in VECTORS, name
    assert VECTORS["identity"]["seed"] == bytes(range(32))
    assert {VECTORS[n]["kind"] for n in MESSAGE_VECTORS} == set(protocol.KINDS)  # every kind has a vector
    assert {VECTORS[n]["result"] for n in OUTCOME_VECTORS} >= {
        "accept", "digest_mismatch", "bad_signature", "replayed", "stale", "malformed", "unknown_kind", "bad_key",
        "foreign_author", "too_large", "unknown_codec", "bad_coding"}
    dtypes = {t["dtype"] for n in MESSAGE_VECTORS for t in _ndarrays(VECTORS[n]["fields"])}
    assert dtypes >= {"<f2", "<f4", "<f8", "<i8"}
    envelopes = [VECTORS[n]["envelope"] for n in OUTCOME_VECTORS if VECTORS[n]["result"] == "accept"]
    assert any(e.startswith(b"\xde\x00\x08") for e in envelopes)  # a map16 envelope header
    payloads = [VECTORS[n]["payload"] for n in MESSAGE_VECTORS]
    assert any(b"\xd9" in p for p in payloads) and any(b"\xc5\x01\x00" in p for p in payloads)  # str8, bin16


def _ndarrays(value) -> list[dict]:
    if isinstance(value, dict) and "values" in value:
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [a for item in items for a in _ndarrays(item)]


# --- identity -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["identity", "identity-2"])
def test_identity_vector(name):
    vec = VECTORS[name]
    ident = Identity(vec["seed"])
    assert ident.public_key == vec["public_key"]
    assert ident.peer_id == vec["peer_id"]
    assert protocol.peer_id(vec["public_key"]) == vec["peer_id"]
    if "multihash" in vec:
        assert vec["multihash"] == bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20]) + vec["public_key"]
        assert independent_b58encode(vec["multihash"]) == vec["peer_id"]
    if "pkcs8_der" in vec:
        pem = ident.to_pem()
        lines = pem.decode().splitlines()
        assert lines[0] == "-----BEGIN PRIVATE KEY-----" and lines[-1] == "-----END PRIVATE KEY-----"
        assert base64.b64decode("".join(lines[1:-1])) == vec["pkcs8_der"]
        assert vec["pkcs8_der"] == bytes.fromhex("302e020100300506032b657004220420") + vec["seed"]
        assert Identity.from_pem(pem).seed == vec["seed"]


@pytest.mark.parametrize("name", ["identity", "identity-2"])
def test_peer_id_matches_libp2p(name):
    ed25519 = pytest.importorskip("libp2p.crypto.ed25519")
    peer = pytest.importorskip("libp2p.peer.id")
    vec = VECTORS[name]
    kp = ed25519.create_new_key_pair(vec["seed"])
    assert kp.public_key.to_bytes() == vec["public_key"]
    assert peer.ID.from_pubkey(kp.public_key).to_base58() == vec["peer_id"]
    assert Identity(vec["seed"]).peer_id == vec["peer_id"]


# --- messages, through the implementation -------------------------------------------------------


def payload_from_fields(kind: str, fields: dict):
    def value(v):
        if isinstance(v, dict) and set(v) == {"bin"}:
            return bytes.fromhex(v["bin"])
        if isinstance(v, dict) and set(v) == {"dtype", "shape", "values"}:
            return np.array(v["values"], dtype=np.dtype(v["dtype"])).reshape(v["shape"])
        if isinstance(v, dict) and set(v) == {"codec", "shape", "params", "parts"}:
            return Coded(v["codec"], tuple(v["shape"]), tuple(v["params"]), tuple(value(p) for p in v["parts"]))
        if isinstance(v, list):
            return [value(x) for x in v]
        if isinstance(v, dict):
            return {k: value(x) for k, x in v.items()}
        return v
    return protocol.KINDS[kind](**{k: value(v) for k, v in fields.items()})


@pytest.mark.parametrize("name", MESSAGE_VECTORS)
def test_message_vector_reproduced_byte_for_byte(name):
    vec = VECTORS[name]
    ident = Identity(vec["seed"])
    payload = payload_from_fields(vec["kind"], vec["fields"])
    body = encode_payload(payload)
    assert body == vec["payload"]
    assert digest(body) == hashlib.sha256(body).digest() == vec["digest"]
    sb = signed_bytes(protocol.PROTOCOL_VERSION, vec["kind"], ident.public_key, vec["seq"], vec["ts"], vec["digest"])
    assert sb == vec["signed"]
    assert ident.sign(sb) == vec["signature"]  # Ed25519 is deterministic
    assert seal(ident, payload, vec["seq"], vec["ts"]) == vec["envelope"]

    assert protocol.KINDS[vec["kind"]].SEQUENCED is (vec["kind"] not in ("blob_response", "error"))
    msg = open_envelope(vec["envelope"], now_ms=vec["now_ms"], guard=ReplayGuard())
    assert (msg.kind, msg.sender, msg.seq, msg.ts, msg.digest) == (
        vec["kind"], ident.public_key, vec["seq"], vec["ts"], vec["digest"])
    assert msg.size == len(vec["envelope"])
    assert encode_payload(msg.payload) == vec["payload"]


def test_vector_payload_types():
    hello = payload_from_fields("hello", VECTORS["hello-envelope"]["fields"])
    assert isinstance(hello, Hello) and hello.models == ["mlp"]
    weights = open_envelope(VECTORS["weights-envelope"]["envelope"], now_ms=VECTORS["weights-envelope"]["now_ms"]).payload
    assert isinstance(weights, Weights)
    assert [t.dtype.str for t in weights.tensors] == ["<f4", "<f4"]
    np.testing.assert_array_equal(weights.tensors[0], np.array([[0.5, -1.0], [2.0, 0.25]], np.float32))
    np.testing.assert_array_equal(weights.tensors[1], np.array([0.0, 1.5], np.float32))
    announce = open_envelope(VECTORS["announce-envelope"]["envelope"], now_ms=VECTORS["announce-envelope"]["now_ms"]).payload
    assert isinstance(announce, Announce)
    assert announce.digest == VECTORS["weights-envelope"]["digest"]
    assert announce.size == len(VECTORS["weights-envelope"]["payload"])  # written before §5 named whole envelopes
    announce = open_envelope(VECTORS["announce-weights-envelope"]["envelope"], now_ms=VECTORS["announce-weights-envelope"]["now_ms"]).payload
    assert announce.digest == VECTORS["weights-envelope"]["digest"]
    assert announce.size == len(VECTORS["weights-envelope"]["envelope"])  # the blob is the whole sealed envelope


def test_coded_vectors_decode_as_their_notes_say():
    vec = VECTORS["weights-coded-envelope"]
    tensors = open_envelope(vec["envelope"], now_ms=vec["now_ms"]).payload.tensors
    assert dense(tensors[0]).tolist() == [[63.5, -32.0, 0.0], [16.0, 31.75, -31.75]]
    assert dense(tensors[1], base=np.full(5, 7.0, np.float32)).tolist() == [7.0, 1.5, 7.0, -2.0, 7.0]
    assert dense(tensors[2]).tolist() == [0.125]
    vec = VECTORS["weights-qint-envelope"]
    assert dense(open_envelope(vec["envelope"], now_ms=vec["now_ms"]).payload.tensors[0]).tolist() == [
        [1.5, -1.0, 0.0], [0.5, 2.0, -6.0]]
    vec = VECTORS["logits-uint8-envelope"]
    logits = dense(open_envelope(vec["envelope"], now_ms=vec["now_ms"]).payload.logits)
    given = np.array([[4.0, -4.0, -1.0], [0.5, 4.0, -2.0]])
    log_probs = given - np.log(np.exp(given).sum(axis=1, keepdims=True))
    assert np.abs(logits - np.maximum(log_probs, -16)).max() <= 16 / 15 / 2 + 1e-6  # half a 4-bit level


def test_probe_and_card_digests():
    vec = VECTORS["probe-digest"]
    array = np.array(vec["array"]["values"], dtype=vec["array"]["dtype"]).reshape(vec["array"]["shape"])
    assert mp_ndarray(vec["array"]["dtype"], vec["array"]["shape"], vec["array"]["values"]) == vec["canonical"]
    assert hashlib.sha256(vec["canonical"]).digest() == vec["array_digest"] == protocol.array_digest(array)
    assert VECTORS["logits-envelope"]["fields"]["probe"] == {"bin": vec["array_digest"].hex()}
    fields = VECTORS["synthetic-envelope"]["fields"]
    x, y = (mp_ndarray(a["dtype"], a["shape"], a["values"]) for a in (fields["x"], fields["y"]))
    card = hashlib.sha256(hashlib.sha256(x).digest() + hashlib.sha256(y).digest()).hexdigest()
    assert fields["card"]["digest"] == {"bin": card}
    batch = payload_from_fields("synthetic", fields)
    assert batch.content_digest().hex() == card


@pytest.mark.parametrize("name", OUTCOME_VECTORS)
def test_outcome_vector(name):
    vec = VECTORS[name]
    guard = ReplayGuard()
    if "first" in vec:
        open_envelope(VECTORS[vec["first"]]["envelope"], now_ms=vec["now_ms"], guard=guard)
    author = vec.get("author")
    if vec["result"] == "accept":
        open_envelope(vec["envelope"], now_ms=vec["now_ms"], guard=guard, author=author)
        return
    with pytest.raises(RejectedMessage) as info:
        open_envelope(vec["envelope"], now_ms=vec["now_ms"], guard=guard, author=author)
    assert info.value.reason.value == vec["result"]


def test_rejection_vectors_differ_from_hello_as_their_notes_say():
    hello = VECTORS["hello-envelope"]["envelope"]
    flipped = VECTORS["reject-payload-byte-flipped"]["envelope"]
    assert len(flipped) == len(hello) and flipped[:-1] == hello[:-1] and flipped[-1] == hello[-1] ^ 0x01
    seq = VECTORS["reject-seq-changed"]["envelope"]
    diff = [i for i in range(len(hello)) if hello[i] != seq[i]]
    assert len(seq) == len(hello) and len(diff) == 1 and (hello[diff[0]], seq[diff[0]]) == (1, 2)
    assert VECTORS["reject-truncated"]["envelope"] == hello[:-1]
    assert VECTORS["reject-trailing-byte"]["envelope"] == hello + b"\xc0"


# --- an independent encoder, written from docs/PROTOCOL.md alone --------------------------------
# No msgpack library and nothing from manymodels.protocol: struct, hashlib and cryptography only.

B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def independent_b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = B58_ALPHABET[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def mp_uint(n: int) -> bytes:
    assert 0 <= n < 2**64
    if n < 0x80:
        return bytes([n])
    if n <= 0xFF:
        return b"\xcc" + struct.pack(">B", n)
    if n <= 0xFFFF:
        return b"\xcd" + struct.pack(">H", n)
    if n <= 0xFFFFFFFF:
        return b"\xce" + struct.pack(">I", n)
    return b"\xcf" + struct.pack(">Q", n)


def mp_str(s: str) -> bytes:
    raw = s.encode("utf-8")
    n = len(raw)
    if n < 32:
        return bytes([0xA0 | n]) + raw
    if n < 256:
        return b"\xd9" + struct.pack(">B", n) + raw
    if n < 65536:
        return b"\xda" + struct.pack(">H", n) + raw
    return b"\xdb" + struct.pack(">I", n) + raw


def mp_bin(b: bytes) -> bytes:
    n = len(b)
    if n < 256:
        return b"\xc4" + struct.pack(">B", n) + b
    if n < 65536:
        return b"\xc5" + struct.pack(">H", n) + b
    return b"\xc6" + struct.pack(">I", n) + b


def mp_array(items: list[bytes]) -> bytes:
    n = len(items)
    head = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)
    return head + b"".join(items)


def mp_map(pairs: list[tuple[str, bytes]]) -> bytes:
    n = len(pairs)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
    return head + b"".join(mp_str(k) + v for k, v in pairs)


def mp_value(v) -> bytes:
    """The spec's JSON `fields` form -> canonical msgpack bytes."""
    if isinstance(v, bool) or v is None:
        return {True: b"\xc3", False: b"\xc2", None: b"\xc0"}[v]
    if isinstance(v, int):
        return mp_uint(v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        return mp_str(v)
    if isinstance(v, list):
        return mp_array([mp_value(x) for x in v])
    if isinstance(v, dict) and set(v) == {"bin"}:
        return mp_bin(bytes.fromhex(v["bin"]))
    if isinstance(v, dict) and set(v) == {"dtype", "shape", "values"}:
        return mp_ndarray(v["dtype"], v["shape"], v["values"])
    if isinstance(v, dict):
        return mp_map([(k, mp_value(x)) for k, x in v.items()])
    raise TypeError(v)


def mp_ndarray(dtype: str, shape: list[int], values: list) -> bytes:
    # little-endian element data in C order (section 6)
    fmt = {"<f2": "e", "<f4": "f", "<f8": "d", "<i2": "h", "<i4": "i", "<i8": "q", "|i1": "b", "|u1": "B"}[dtype]
    data = struct.pack("<" + fmt * len(values), *values)
    return mp_map([("dtype", mp_str(dtype)), ("shape", mp_array([mp_uint(d) for d in shape])), ("data", mp_bin(data))])


DOMAIN_TAG = b"manymodels/envelope/v1\x00"


def independent_seal(seed: bytes, kind: str, seq: int, ts: int, fields: dict) -> dict[str, bytes]:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    sender = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    payload = mp_map([(k, mp_value(v)) for k, v in fields.items()])
    dg = hashlib.sha256(payload).digest()
    signed = DOMAIN_TAG + mp_array([mp_uint(1), mp_str(kind), mp_bin(sender), mp_uint(seq), mp_uint(ts), mp_bin(dg)])
    sig = key.sign(signed)
    envelope = mp_map([("v", mp_uint(1)), ("kind", mp_str(kind)), ("sender", mp_bin(sender)), ("seq", mp_uint(seq)),
                       ("ts", mp_uint(ts)), ("digest", mp_bin(dg)), ("sig", mp_bin(sig)), ("payload", mp_bin(payload))])
    return {"public_key": sender, "payload": payload, "digest": dg, "signed": signed, "signature": sig,
            "envelope": envelope}


@pytest.mark.parametrize("name", MESSAGE_VECTORS)
def test_independent_encoder_matches_vector(name):
    vec = VECTORS[name]
    got = independent_seal(vec["seed"], vec["kind"], vec["seq"], vec["ts"], vec["fields"])
    for key in ("payload", "digest", "signed", "signature", "envelope"):
        assert got[key] == vec[key], key
    assert independent_b58encode(b"\x00\x24\x08\x01\x12\x20" + got["public_key"]) == VECTORS["identity"]["peer_id"]


def test_independent_encoder_output_is_accepted_for_other_values():
    """Beyond the vectors: wider integer and string forms, built by the independent encoder, open."""
    fields = {"agent": "a" * 100, "addrs": ["/dns4/" + "x" * 40 + "/tcp/4001"] * 20,
              "capabilities": ["c"] * 17, "models": ["m"]}
    got = independent_seal(bytes(range(32)), "hello", 70000, 2**33 + 5, fields)
    msg = open_envelope(got["envelope"], now_ms=2**33, guard=ReplayGuard())
    assert msg.seq == 70000 and msg.payload.agent == "a" * 100 and len(msg.payload.addrs) == 20
    assert seal(Identity(bytes(range(32))), msg.payload, 70000, 2**33 + 5) == got["envelope"]
