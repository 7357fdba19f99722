"""Fuzz open_envelope: nothing a peer sends may raise anything but RejectedMessage, or allocate more
than a small multiple of its length while being decoded.

Inputs, per round: valid envelopes of every kind whose payload is mutated and then RE-SIGNED (by the
original or a fresh key: keys are free), so they reach payload decoding; header mutations;
truncations; random bytes; crafted amplifiers (nested empty maps and arrays, huge declared lengths),
both as envelopes and as signed payloads. Peak traced memory per input must stay under
3 x its length + 1 MiB.

    .venv/bin/python bench/bench_fuzz.py            # 100000 inputs (about 35 s, one core)
    .venv/bin/python bench/bench_fuzz.py --n 5000   # quick
"""
from __future__ import annotations

import argparse
import collections
import random
import sys
import time
import tracemalloc
from collections.abc import Iterator

import msgpack
import numpy as np

from manymodels.protocol import (KINDS, Announce, BlobRequest, BlobResponse, Error, Hello, Identity, Logits,
                                 PeerExchange, RejectedMessage, ReplayGuard, SyntheticBatch, Weights, digest,
                                 open_envelope, seal)
from manymodels.protocol.envelope import encode_payload, signed_bytes

NOW = 1_700_000_000_000
ALICE = Identity(bytes(range(32)))
CARD = {"licence": "CC0", "consent": "synthetic", "retention": "7d", "generator": "g", "source": "s",
        "digest": b"\x11" * 32}
PAYLOADS = [
    Hello(agent="fuzz", addrs=["/ip4/127.0.0.1/tcp/1"], capabilities=["weights"], models=["m"]),
    PeerExchange(addrs=["/ip4/10.0.0.1/tcp/4001/p2p/" + ALICE.peer_id]),
    Announce(digest=b"\x01" * 32, content="weights", model="m", version=3, num_examples=10, size=300),
    Weights(model="m", version=1, num_examples=5,
            tensors=[np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float64)]),
    Logits(probe=b"\x02" * 32, model="m", version=1, temperature=1.0, logits=np.eye(3, dtype=np.float16),
           class_counts=[1, 2, 300]),
    SyntheticBatch(x=np.zeros((2, 2), np.float32), y=np.array([0, 1], np.int64), card=CARD),
    BlobRequest(digest=b"\x03" * 32, offset=0, length=100),
    BlobResponse(digest=b"\x04" * 32, offset=0, total=5, data=b"hello"),
    Error(code="e", message="oops"),
]
assert {p.KIND for p in PAYLOADS} == set(KINDS)
BODIES = [(p.KIND, encode_payload(p)) for p in PAYLOADS]
ORIGINALS = [seal(ALICE, p, 1, NOW) for p in PAYLOADS]
FRESH_KEYS = [Identity(bytes([i]) * 32) for i in range(1, 9)]
BOUND = "3 x len + 1 MiB"


def bound(n: int) -> int:
    return 3 * n + 2**20


def sign(kind: str, body: bytes, key: Identity) -> bytes:
    dg = digest(body)
    sig = key.sign(signed_bytes(1, kind, key.public_key, 1, NOW, dg))
    return msgpack.packb({"v": 1, "kind": kind, "sender": key.public_key, "seq": 1, "ts": NOW, "digest": dg,
                          "sig": sig, "payload": body}, use_bin_type=True)


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 4)):
        op = rng.choice((0, 0, 0, 1, 1, 1, 2, 3, 4, 5))
        i = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[min(i, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[min(i, len(out) - 1)] = rng.choice((0x00, 0x7F, 0x80, 0x8F, 0x90, 0xC0, 0xC1, 0xC4, 0xC6, 0xCA,
                                                    0xCB, 0xCF, 0xD9, 0xDC, 0xDD, 0xDE, 0xDF, 0xFF, rng.randrange(256)))
        elif op == 2:
            del out[i:]
        elif op == 3:
            out[i:i] = rng.randbytes(rng.randint(1, 9))
        elif op == 4:
            del out[i:i + rng.randint(1, 9)]
        else:
            other = rng.choice(BODIES)[1]
            out = out[:i] + other[rng.randrange(len(other) + 1):]
    return bytes(out)


ODD_VALUES = [None, True, -1, 2**64 - 1, 1.5, float("nan"), "", "x" * 300, b"", b"\x00" * 32, [], [1], {}, {"a": 1},
              {"dtype": "<f4", "shape": [1], "data": b"\x00" * 4}, {"dtype": "<c8", "shape": [], "data": b""},
              {"dtype": "<f4", "shape": [2**39, 0, 2**39], "data": b""}, ["x"] * 70]


def replace_field(rng: random.Random, body: bytes) -> bytes:
    """A valid payload with one field (or one field of a nested map) replaced, dropped or doubled."""
    obj = msgpack.unpackb(body, raw=False)
    target = obj
    nested = [k for k, v in obj.items() if isinstance(v, dict)]
    if nested and rng.random() < 0.3:
        target = obj[rng.choice(nested)]
    key = rng.choice(sorted(target))
    action = rng.randrange(3)
    if action == 0:
        target[key] = rng.choice(ODD_VALUES)
    elif action == 1:
        del target[key]
    else:
        target[key + "_"] = target[key]
    return msgpack.packb(obj, use_bin_type=True)


def amplifier(rng: random.Random) -> bytes:
    n = rng.choice((1000, 100_000, 1_000_000))
    head = rng.choice((b"\xdd" + n.to_bytes(4, "big"), b"\xdf" + n.to_bytes(4, "big"), b"\xdd\xff\xff\xff\xff",
                       b"\xdf\xff\xff\xff\xff"))
    body = rng.choice((b"\x80", b"\x90", b"\x91", b"\x81\x80", b"\xc0", b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff"))
    return head + body * rng.randint(1, n)


def inputs(rng: random.Random, n: int) -> Iterator[bytes]:
    for _ in range(n):
        r = rng.random()
        if r < 0.6:  # payload mutated, then re-signed: reaches payload decoding
            kind, body = rng.choice(BODIES)
            body = replace_field(rng, body) if rng.random() < 0.4 else mutate(rng, body)
            yield sign(kind, body, rng.choice([ALICE] + FRESH_KEYS))
        elif r < 0.8:
            yield mutate(rng, rng.choice(ORIGINALS))
        elif r < 0.88:
            data = rng.choice(ORIGINALS)
            yield data[:rng.randrange(len(data))]
        elif r < 0.95:
            yield rng.randbytes(rng.randint(0, 300))
        elif r < 0.975:
            yield amplifier(rng)
        else:  # an amplifier as a signed payload, where a list or map is expected
            kind = rng.choice(("weights", "logits", "synthetic", "hello"))
            junk = amplifier(rng)[:KINDS[kind].MAX_BYTES - 64]
            field = {"weights": "tensors", "logits": "class_counts", "synthetic": "card", "hello": "addrs"}[kind]
            yield sign(kind, b"\x81" + msgpack.packb(field) + junk, rng.choice(FRESH_KEYS))


def run(n: int, seed: int = 0) -> dict:
    """Open n inputs; return the reasons histogram, the largest peak and the worst peak / bound."""
    rng = random.Random(seed)
    reasons: collections.Counter[str] = collections.Counter()
    worst_ratio, peak_max, largest = 0.0, 0, 0
    tracemalloc.start()
    try:
        for data in inputs(rng, n):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            try:
                msg = open_envelope(data, now_ms=NOW, guard=ReplayGuard())
                reasons["accept:" + msg.kind] += 1
            except RejectedMessage as exc:
                reasons[exc.reason.value] += 1
            peak = tracemalloc.get_traced_memory()[1] - base
            peak_max, largest = max(peak_max, peak), max(largest, len(data))
            worst_ratio = max(worst_ratio, peak / bound(len(data)))
            assert peak <= bound(len(data)), f"{peak} bytes for an input of {len(data)}: {data[:64].hex()}"
    finally:
        tracemalloc.stop()
    return {"reasons": reasons, "peak": peak_max, "largest": largest, "worst_of_bound": worst_ratio}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = run(args.n, args.seed)
    seconds = time.perf_counter() - start
    print(f"{args.n} inputs in {seconds:.1f} s: {args.n / seconds:.0f} inputs/s (under tracemalloc), nothing raised "
          f"but RejectedMessage")
    print(f"peak traced memory: {result['peak'] / 2**20:.2f} MiB (largest input {result['largest'] / 2**20:.2f} MiB); "
          f"worst input used {100 * result['worst_of_bound']:.1f}% of its bound ({BOUND})")
    for reason, count in result["reasons"].most_common():
        print(f"  {reason:24s} {count}")


if __name__ == "__main__":
    sys.exit(main())
