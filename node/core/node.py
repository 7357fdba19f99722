"""A node: identity, learner and exchange, talking only through a transport.

Every inbound message is opened by the protocol layer (size, schema, signature, digest,
replay, skew) before the exchange sees it; every rejection is counted by reason. The exchange
sees the node through a `NodeView`; what the node sends passes its outbound filter (`sealed`
for an honest node; the simulator's attackers write their own)."""
from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from manymodels.protocol import (Identity, Message, Payload, ReadingMemo, Reason, RejectedMessage, ReplayGuard,
                                 Sealing, open_envelope, peer_id, seal, seal_all)

from .exchange import Exchange, Folded, NodeView
from ..learning.learner import Learner
from .reputation import Reputation, outlier_ratios
from .sharing import KNOWLEDGE, Sharing
from .transport import Transport


@dataclass
class NodeStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_accepted: int = 0
    sent_by_kind: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)  # protocol rejections, by reason
    refused: Counter = field(default_factory=Counter)  # valid messages the exchange would not use, by reason
    rejected_from: Counter = field(default_factory=Counter)  # protocol rejections, by transport address
    withheld: int = 0  # knowledge messages not sent to a neighbour the sharing policy leaves out

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    # what a daemon keeps across restarts (rejected_from is per connection: not kept)
    KEPT = ("bytes_sent", "bytes_received", "messages_accepted", "sent_by_kind", "rejected", "refused", "withheld")

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in self.KEPT}

    def restore(self, value: dict) -> None:
        """Take the counters of a to_json() (a restarted daemon's saved state); missing ones stay."""
        for name in self.KEPT:
            if name in value:
                setattr(self, name, Counter(value[name]) if isinstance(value[name], dict) else int(value[name]))


log = logging.getLogger("manymodels.node")

MAX_COUNTED_PEERS = 4096  # transport addresses kept in stats.rejected_from

Outbound = Callable[["Node", list[Payload]], list[tuple[bytes, str]]]  # payloads -> (sealed bytes, kind) to send


def sealed(node: Node, payloads: list[Payload]) -> list[tuple[bytes, str]]:
    """The honest outbound filter: each payload signed once, sent as what it is."""
    return sealed_together([(node, payloads)])[0]


def sealed_together(jobs: list[tuple[Node, list[Payload]]], each: Callable | None = None
                    ) -> list[list[tuple[bytes, str]]]:
    """sealed() of each (node, payloads), numbered node by node and sealed by one protocol
    seal_all (`each`: how it signs, e.g. on a thread per core)."""
    data = iter(seal_all([node.sealing(payload) for node, payloads in jobs for payload in payloads], each))
    return [[(next(data), payload.KIND) for payload in payloads] for _, payloads in jobs]


class Node:
    def __init__(self, identity: Identity, learner: Learner, transport: Transport, exchange: Exchange,
                 *, num_classes: int, clock: Callable[[], int], guard: ReplayGuard | None = None,
                 reputation: Reputation | None = None, outbound: Outbound = sealed,
                 sharing: Sharing | None = None, privacy_budget: float = 0.0) -> None:
        self.identity = identity
        self.learner = learner
        self.transport = transport
        self.exchange = exchange
        self.outbound = outbound
        self.sharing = sharing or Sharing()  # who gets this node's knowledge
        self.num_classes = num_classes
        self.clock = clock  # Unix time in ms; virtual in the simulator
        self.guard = guard or ReplayGuard()
        self.banned: set[bytes] = set()
        self.reputation = reputation or Reputation()
        self.neighbours: list[str] = []
        self.memo: ReadingMemo | None = None  # shared with the other receivers of the same bytes (the simulator)
        self.version = 0
        self.seq = 0
        self.stats = NodeStats()
        self.on_reject: Callable[[str, str], None] = lambda sender_address, reason: None
        self.privacy_budget = privacy_budget  # ε; past it the node publishes no more (0: no budget)
        self.privacy: dict[str, float] | None = None  # DP-SGD's spent epsilon, noise_multiplier, dp_steps (None: no DP)
        self.budget_spent_at: int | None = None  # the version it would have published when it stopped
        self._guard_lock = threading.Lock()  # seal() runs in the learning thread, verify() in the network's
        self.tensor_specs = [(w.shape, w.dtype) for w in learner.get_weights()]
        self.view = NodeView(identity.peer_id, learner, num_classes, self.tensor_specs, self.banned, self.judge,
                             self.banned_neighbours)
        exchange.start(self.view)
        transport.set_receiver(self.on_bytes)

    @property
    def id(self) -> str:
        return self.identity.peer_id

    def train(self, epochs: int) -> dict[str, float]:
        metrics = self.learner.fit(epochs, extra=self.exchange.extra())
        if "epsilon" in metrics:  # a DP-SGD learner's privacy spent so far
            self.privacy = {key: metrics[key] for key in ("epsilon", "noise_multiplier", "dp_steps")}
        return metrics

    def publication(self) -> list[tuple[bytes, str]]:
        """The next version: what the exchange offers, through the outbound filter, as (bytes, kind);
        nothing once the privacy budget is spent (the node still folds what it receives)."""
        payloads = self.next_payloads()
        return [] if payloads is None else self.outbound(self, payloads)

    def next_payloads(self) -> list[Payload] | None:
        """The next version's payloads, unsealed; None once the privacy budget is spent."""
        if self.privacy_budget and self.privacy and self.privacy["epsilon"] > self.privacy_budget:
            if self.budget_spent_at is None:
                self.budget_spent_at = self.version + 1
                log.warning("privacy budget spent (epsilon %.3g > %.3g): this node publishes no more",
                            self.privacy["epsilon"], self.privacy_budget)
            return None
        self.version += 1
        return self.exchange.publish(self.view, self.version)

    def publish(self) -> None:
        """Send the next version's messages, the same bytes to every neighbour."""
        for data, kind in self.publication():
            self.send_to_neighbours(data, kind)

    def send_to_neighbours(self, data: bytes, kind: str) -> None:
        """To every neighbour; knowledge only to those the sharing policy gives it to."""
        peers = neighbours = self.neighbours
        if kind in KNOWLEDGE:
            peers = [peer for peer in neighbours if self.sharing.shares_with(peer, self.version)]
            self.stats.withheld += len(neighbours) - len(peers)
        if peers:
            send = self.transport.send
            for peer in peers:
                send(peer, data)
            self.stats.bytes_sent += len(data) * len(peers)
            self.stats.sent_by_kind[kind] += len(data) * len(peers)

    def seal(self, payload: Payload, *, ts_ms: int | None = None) -> bytes:
        """Sign a payload with the next sequence number. The node's own guard records it, so a copy
        of its own message replayed back to it is rejected like any other replay. Replies (blob
        chunks, errors) are not sequenced: they carry the current number and do not use one up."""
        return seal(*self.sealing(payload, ts_ms=ts_ms))

    def sealing(self, payload: Payload, *, ts_ms: int | None = None) -> Sealing:
        """What seal() signs: the payload numbered (the number used up, as seal() does), to be
        sealed by protocol's seal_all with others."""
        with self._guard_lock:
            if payload.SEQUENCED:
                self.seq += 1
                self.guard.record(self.identity.public_key, self.seq)
            seq = self.seq
        return self.identity, payload, seq, self.clock() if ts_ms is None else ts_ms

    def on_bytes(self, sender_address: str, data: bytes) -> None:
        """Verify bytes from a peer and handle the message."""
        message = self.verify(sender_address, data)
        if message is not None:
            self.handle(sender_address, message)

    def verify(self, sender_address: str, data: bytes, *, author: str | None = None,
               digest: bytes | None = None) -> Message | None:
        """The verified message, or None (the rejection counted by reason and reported to
        `on_reject`). `author`: the peer id that must have signed it (on the real network, the peer
        Noise authenticated, or the author of the announcement a pulled message was pulled for);
        `digest`: the payload digest a pulled message must have. Safe to call from another thread
        than the one that seals."""
        self.stats.bytes_received += 0 if digest is not None else len(data)  # a pull's chunks were counted
        try:
            with self._guard_lock:
                message = open_envelope(data, now_ms=self.clock(), guard=self.guard, banned=self.banned,
                                        author=author, memo=self.memo)
            if digest is not None and message.digest != digest:
                raise RejectedMessage(Reason.DIGEST_MISMATCH, "not the message that was asked for")
        except RejectedMessage as exc:
            self.stats.rejected[exc.reason.value] += 1
            if len(self.stats.rejected_from) < MAX_COUNTED_PEERS or sender_address in self.stats.rejected_from:
                self.stats.rejected_from[sender_address] += 1
            self.on_reject(sender_address, exc.reason.value)
            return None
        self.stats.messages_accepted += 1
        return message

    def handle(self, sender_address: str, message: Message) -> None:
        """A verified message: the exchange's to keep (a daemon also answers blob requests here)."""
        reason = self.exchange.receive(self.view, message)
        if reason:
            self.refuse(reason)
        elif message.kind in KNOWLEDGE and self.sharing.counts_gifts:
            self.sharing.gave(message.sender_id, self.version)

    def refuse(self, reason: str) -> None:
        self.stats.refused[reason] += 1

    def judge(self, own: np.ndarray, contributions: dict[bytes, np.ndarray], min_scale: float = 1e-12) -> None:
        """Score each peer's contribution against the robust consensus of all; ban a peer whose
        reputation falls below the threshold."""
        if contributions:
            self.score(list(contributions), outlier_ratios([own, *contributions.values()], min_scale)[1:])

    def score(self, peers: list[bytes], ratios: np.ndarray) -> None:
        """Each peer's outlier ratio (judge's) into its reputation; a peer that falls below is banned."""
        for peer, ratio, finite in zip(peers, ratios.tolist(), np.isfinite(ratios).tolist()):
            if finite and self.reputation.observe(peer, ratio):
                self.banned.add(peer)

    def banned_neighbours(self) -> int:
        """Banned peers among the neighbours: known Byzantine inputs (keys cost nothing, so bans of
        strangers do not count)."""
        neighbours = set(self.neighbours)
        return sum(peer_id(key) in neighbours for key in self.banned)

    def fold(self) -> Folded:
        """Fold what the exchange received into the model; what the fold refused is counted."""
        folded = self.exchange.fold(self.view)
        for reason in folded.refused:
            self.refuse(reason)
        return folded
