"""Frames from peers, verified off the network loop.

The transport hands each frame to `submit` on the trio thread; it waits in a bounded queue
(messages and bytes, per peer and in all: one peer cannot fill it for the others) until one
verifier thread has opened it (`Node.verify`: size, schema, author, signature, digest, replay).
The verified message is then handled back on the loop. A frame that does not fit is dropped and
counted (`busy`), not read further; a slow decode never stalls the loop or other peers' reads."""
from __future__ import annotations

import functools
import logging
from collections import Counter, deque

import trio

from ..core.node import Node

MiB = 1 << 20
logger = logging.getLogger(__name__)


class Inbound:
    def __init__(self, node: Node, *, max_messages: int = 256, max_per_peer: int = 16,
                 max_bytes: int = 1024 * MiB) -> None:
        self.node = node
        self.max_messages = max_messages
        self.max_per_peer = max_per_peer
        self.max_bytes = max_bytes
        self.dropped = 0  # frames that found the queue full
        self._queue: deque[tuple[str, bytes]] = deque()
        self._bytes = 0
        self._per_peer: Counter = Counter()
        self._wake = trio.Event()
        self._thread = trio.CapacityLimiter(1)  # one verifier: the replay guard sees one order

    def submit(self, peer: str, data: bytes) -> None:
        """The transport's receiver: queue the frame, or drop it when its peer's share or the
        whole queue is full."""
        over_share = self._per_peer[peer] >= self.max_per_peer
        if over_share or len(self._queue) >= self.max_messages or self._bytes + len(data) > self.max_bytes:
            self.dropped += 1
            self.node.refuse("inbound_busy")
            if over_share:  # sending faster than it can be verified: the peer's doing, mildly
                self.node.on_reject(peer, "inbound_busy")
            return
        self._queue.append((peer, data))
        self._bytes += len(data)
        self._per_peer[peer] += 1
        self._wake.set()

    async def run(self) -> None:
        while True:
            if not self._queue:
                self._wake = trio.Event()
                await self._wake.wait()
            peer, data = self._queue.popleft()
            try:
                # a message on a direct stream is its sender's own: author = the Noise-authenticated peer
                message = await trio.to_thread.run_sync(
                    functools.partial(self.node.verify, peer, data, author=peer), limiter=self._thread)
            finally:
                self._bytes -= len(data)
                self._per_peer[peer] -= 1
                if not self._per_peer[peer]:
                    del self._per_peer[peer]
            del data
            if message is None:
                continue
            try:
                self.node.handle(peer, message)
            except Exception:  # a bug in handling one message must not stop the node from serving
                logger.exception("handling a %s message from %s failed", message.kind, peer)
                self.node.refuse("not_handled")
