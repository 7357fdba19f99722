"""Seal a weights message, open it as a receiving node would, and watch tampering fail.

    python examples/signed_messages.py
"""
import time

import numpy as np

from manymodels.protocol import Identity, RejectedMessage, ReplayGuard, Weights, open_envelope, seal

alice = Identity.generate()
now = int(time.time() * 1000)
payload = Weights(model="mlp", version=1, num_examples=120,
                  tensors=[np.zeros((64, 10), np.float32), np.zeros(10, np.float32)])
data = seal(alice, payload, seq=1, ts_ms=now)
print(f"{len(data)} bytes from {alice.peer_id}")

guard = ReplayGuard()
message = open_envelope(data, now_ms=now, guard=guard)
print("accepted:", message.kind, [t.shape for t in message.payload.tensors])

tampered = bytearray(data)
tampered[-1] ^= 1
for name, bad in (("replayed", data), ("tampered", bytes(tampered)), ("truncated", data[:100])):
    try:
        open_envelope(bad, now_ms=now, guard=guard)
    except RejectedMessage as exc:
        print(f"{name:>9}: rejected, reason {exc.reason.value}")
