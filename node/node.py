"""A node: identity, learner and exchange, talking only through a transport.

Every inbound message is opened by the protocol layer (size, schema, signature, digest,
replay, skew) before the exchange sees it; every rejection is counted by reason."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from manymodels.protocol import (Identity, Message, Payload, Reason, RejectedMessage, ReplayGuard, open_envelope,
                                 peer_id, seal)

from .exchange import Exchange
from .learning.learner import Learner
from .reputation import Reputation, outlier_ratios
from .transport.base import Transport


@dataclass
class NodeStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_accepted: int = 0
    sent_by_kind: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)  # protocol rejections, by reason
    refused: Counter = field(default_factory=Counter)  # valid messages the exchange would not use, by reason
    rejected_from: Counter = field(default_factory=Counter)  # protocol rejections, by transport address

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class Node:
    def __init__(self, identity: Identity, learner: Learner, transport: Transport, exchange: Exchange,
                 *, num_classes: int, clock: Callable[[], int], guard: ReplayGuard | None = None,
                 reputation: Reputation | None = None) -> None:
        self.identity = identity
        self.learner = learner
        self.transport = transport
        self.exchange = exchange
        self.num_classes = num_classes
        self.clock = clock  # Unix time in ms; virtual in the simulator
        self.guard = guard or ReplayGuard()
        self.banned: set[bytes] = set()
        self.reputation = reputation or Reputation()
        self.neighbours: list[str] = []
        self.version = 0
        self.seq = 0
        self.stats = NodeStats()
        self.tensor_specs = [(w.shape, w.dtype) for w in learner.get_weights()]
        transport.set_receiver(self.on_bytes)

    @property
    def id(self) -> str:
        return self.identity.peer_id

    def train(self, epochs: int) -> dict[str, float]:
        return self.learner.fit(epochs, extra=self.exchange.extra())

    def publish(self) -> None:
        """Sign what the exchange offers once each, and send the same bytes to every neighbour."""
        self.version += 1
        for payload in self.exchange.publish(self):
            self.send_to_neighbours(self.seal(payload), payload.KIND)

    def send_to_neighbours(self, data: bytes, kind: str) -> None:
        for peer in self.neighbours:
            self.transport.send(peer, data)
            self.stats.bytes_sent += len(data)
            self.stats.sent_by_kind[kind] += len(data)

    def seal(self, payload: Payload, *, ts_ms: int | None = None) -> bytes:
        """Sign a payload with the next sequence number. The node's own guard records it, so a copy
        of its own message replayed back to it is rejected like any other replay."""
        self.seq += 1
        self.guard.record(self.identity.public_key, self.seq)
        return seal(self.identity, payload, self.seq, self.clock() if ts_ms is None else ts_ms)

    def on_bytes(self, sender_address: str, data: bytes, digest: bytes | None = None) -> None:
        """Verify bytes from a peer and handle the message. `digest`: a pulled message, named by the
        announcement it was pulled for; that announcement passed the replay window and clock check
        when it arrived, and the digest binds the message to it, so the message itself may be as old
        as the pull took (its bytes were counted chunk by chunk)."""
        pulled = digest is not None
        self.stats.bytes_received += 0 if pulled else len(data)
        try:
            message = open_envelope(data, now_ms=self.clock(), guard=None if pulled else self.guard,
                                    banned=self.banned)
            if pulled and message.digest != digest:
                raise RejectedMessage(Reason.DIGEST_MISMATCH, "not the message that was asked for")
        except RejectedMessage as exc:
            self.stats.rejected[exc.reason.value] += 1
            self.stats.rejected_from[sender_address] += 1
            return
        self.stats.messages_accepted += 1
        self.handle(sender_address, message)

    def handle(self, sender_address: str, message: Message) -> None:
        """A verified message: the exchange's to keep (a daemon also answers blob requests here)."""
        self.exchange.receive(self, message)

    def refuse(self, reason: str) -> None:
        self.stats.refused[reason] += 1

    def judge(self, own: np.ndarray, contributions: dict[bytes, np.ndarray], min_scale: float = 1e-12) -> None:
        """Score each peer's contribution against the robust consensus of all; ban a peer whose
        reputation falls below the threshold."""
        if not contributions:
            return
        ratios = outlier_ratios([own, *contributions.values()], min_scale)
        for peer, ratio in zip(contributions, ratios[1:]):
            if np.isfinite(ratio) and self.reputation.observe(peer, float(ratio)):
                self.banned.add(peer)

    def banned_neighbours(self) -> int:
        """Banned peers among the neighbours: known Byzantine inputs (keys cost nothing, so bans of
        strangers do not count)."""
        neighbours = set(self.neighbours)
        return sum(peer_id(key) in neighbours for key in self.banned)

    def fold(self) -> bool:
        return self.exchange.fold(self)
