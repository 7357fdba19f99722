"""A deterministic in-memory network for the simulator: virtual time, latency with jitter,
bandwidth, random loss and offline nodes (churn), all drawn from one seeded generator.

A ``MemoryTransport`` is both a ``Transport`` and a ``PeerNetwork`` (node/core/transport.py): it
listens at ``/memory/<address>``; ``connect`` links two online nodes (both ways). Delivery does not
depend on links: the simulator's topology decides who sends to whom."""
from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core.transport import Receiver

MEMORY_PREFIX = "/memory/"
_BLOCK = 4096  # doubles drawn from the network's generator at a time


@dataclass(frozen=True)
class LinkModel:
    latency_ms: float = 20.0
    jitter_ms: float = 5.0
    bandwidth_bytes_per_ms: float = 12_500.0  # 100 Mbit/s
    loss: float = 0.0


@dataclass
class MemoryNetwork:
    seed: int = 0
    link: LinkModel = field(default_factory=LinkModel)
    now_ms: float = 0.0

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._doubles: list[float] = []  # drawn from _rng, not used yet from _next on
        self._next = 0
        self._receivers: dict[str, Receiver | None] = {}
        self._offline: set[str] = set()
        self._queue: list[tuple[float, int, str, str, bytes]] = []
        self._counter = 0  # ties in delivery time resolve in send order
        self._links: dict[str, set[str]] = {}
        self.dropped = 0
        self.sent = 0  # every send, dropped or not

    def attach(self, address: str) -> MemoryTransport:
        if address in self._receivers:
            raise ValueError(f"address {address} is already attached")
        self._receivers[address] = None
        return MemoryTransport(self, address)

    def set_online(self, address: str, online: bool) -> None:
        (self._offline.discard if online else self._offline.add)(address)

    def _send(self, src: str, dst: str, data: bytes) -> None:
        self.sent += 1
        if dst == src or dst not in self._receivers or src in self._offline or self._random() < self.link.loss:
            self.dropped += 1
            return
        # rng.uniform(0, jitter), computed as numpy does: low + (high - low) * the next double
        delay = (self.link.latency_ms + (0.0 + self.link.jitter_ms * self._random())
                 + len(data) / self.link.bandwidth_bytes_per_ms)
        self._counter += 1
        heapq.heappush(self._queue, (self.now_ms + delay, self._counter, src, dst, data))

    def _random(self) -> float:
        """The generator's next double, as rng.random() gives it: drawn a block at a time, the same
        numbers in the same order (a numpy call for each costs more than the rest of a send)."""
        if self._next == len(self._doubles):
            self._doubles, self._next = self._rng.random(_BLOCK).tolist(), 0
        self._next += 1
        return self._doubles[self._next - 1]

    def due(self, t_ms: float) -> list[bytes]:
        """The bytes that run_until(t_ms) will hand to a receiver (a copy for each)."""
        return [data for at, _, _, dst, data in self._queue
                if at <= t_ms and dst not in self._offline and self._receivers[dst] is not None]

    def run_until(self, t_ms: float, *, by_receiver: bool = False) -> int:
        """Deliver every message due by `t_ms` in time order; returns how many were delivered.
        `by_receiver`: each receiver's messages in time order, one receiver after another (in the
        order they were attached), for receivers that send nothing as they receive (a lock-step
        round's nodes): every receiver gets the same messages at the same virtual times, and its
        state is touched all at once instead of once per message scattered over the round (12 %
        of a 10,000-node round)."""
        delivered = 0
        if by_receiver:
            due = []
            while self._queue and self._queue[0][0] <= t_ms:
                due.append(heapq.heappop(self._queue))
            rank = {address: k for k, address in enumerate(self._receivers)}
            due.sort(key=lambda message: rank[message[3]])  # stable: each receiver's in time order
            sent = self.sent
            for message in due:
                delivered += self._deliver(*message)
            if self.sent != sent:
                raise RuntimeError("a receiver sent while the network delivered by receiver: deliver in time order")
        else:
            while self._queue and self._queue[0][0] <= t_ms:
                delivered += self._deliver(*heapq.heappop(self._queue))
        self.now_ms = max(self.now_ms, t_ms)
        return delivered

    def _deliver(self, at: float, _order: int, src: str, dst: str, data: bytes) -> int:
        """One queued message handed to its receiver at its time: 1, or 0 where none takes it."""
        self.now_ms = at
        receiver = self._receivers[dst]
        if dst in self._offline or receiver is None:
            self.dropped += 1
            return 0
        receiver(src, data)
        return 1

    def _link(self, a: str, b: str) -> None:
        if b not in self._receivers or b in self._offline:
            raise ConnectionError(f"no node listens at {MEMORY_PREFIX}{b}")
        self._links.setdefault(a, set()).add(b)
        self._links.setdefault(b, set()).add(a)

    def _linked(self, address: str) -> list[str]:
        if address in self._offline:
            return []
        return sorted(p for p in self._links.get(address, ()) if p not in self._offline)


@dataclass
class MemoryTransport:
    network: MemoryNetwork
    address: str
    known_addrs: dict[str, list[str]] = field(default_factory=dict)  # peer -> where it listens

    def send(self, peer: str, data: bytes) -> None:
        self.network._send(self.address, peer, data)

    def set_receiver(self, receiver: Receiver) -> None:
        self.network._receivers[self.address] = receiver

    async def connect(self, address: str) -> str:
        if not address.startswith(MEMORY_PREFIX) or len(address) == len(MEMORY_PREFIX):
            raise ValueError(f"not a {MEMORY_PREFIX} address: {address!r}")
        peer = address[len(MEMORY_PREFIX):]
        if peer == self.address:
            raise ValueError("that address is this node's own")
        self.network._link(self.address, peer)
        self.add_peer_addrs(peer, [address])
        return peer

    def connected_peers(self) -> list[str]:
        return self.network._linked(self.address)

    def listen_addrs(self) -> list[str]:
        return [MEMORY_PREFIX + self.address]

    def add_peer_addrs(self, peer: str, addrs: Sequence[str]) -> None:
        known = self.known_addrs.setdefault(peer, [])
        known.extend(a for a in addrs if a not in known)

    def peer_addrs(self, peer: str) -> list[str]:
        return list(self.known_addrs.get(peer, ()))
