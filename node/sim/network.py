"""A deterministic in-memory network for the simulator: virtual time, latency with jitter,
bandwidth, random loss and offline nodes (churn), all drawn from one seeded generator."""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from ..core.transport import Receiver


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
        self._receivers: dict[str, Receiver | None] = {}
        self._offline: set[str] = set()
        self._queue: list[tuple[float, int, str, str, bytes]] = []
        self._counter = 0  # ties in delivery time resolve in send order
        self.dropped = 0

    def attach(self, address: str) -> MemoryTransport:
        if address in self._receivers:
            raise ValueError(f"address {address} is already attached")
        self._receivers[address] = None
        return MemoryTransport(self, address)

    def set_online(self, address: str, online: bool) -> None:
        (self._offline.discard if online else self._offline.add)(address)

    def _send(self, src: str, dst: str, data: bytes) -> None:
        if dst not in self._receivers or src in self._offline or self._rng.random() < self.link.loss:
            self.dropped += 1
            return
        delay = (self.link.latency_ms + self._rng.uniform(0, self.link.jitter_ms)
                 + len(data) / self.link.bandwidth_bytes_per_ms)
        self._counter += 1
        heapq.heappush(self._queue, (self.now_ms + delay, self._counter, src, dst, data))

    def run_until(self, t_ms: float) -> int:
        """Deliver every message due by `t_ms` in time order; returns how many were delivered."""
        delivered = 0
        while self._queue and self._queue[0][0] <= t_ms:
            at, _, src, dst, data = heapq.heappop(self._queue)
            self.now_ms = at
            receiver = self._receivers[dst]
            if dst in self._offline or receiver is None:
                self.dropped += 1
                continue
            receiver(src, data)
            delivered += 1
        self.now_ms = max(self.now_ms, t_ms)
        return delivered


@dataclass
class MemoryTransport:
    network: MemoryNetwork
    address: str

    def send(self, peer: str, data: bytes) -> None:
        self.network._send(self.address, peer, data)

    def set_receiver(self, receiver: Receiver) -> None:
        self.network._receivers[self.address] = receiver
