"""Discovery for the daemon, next to its libp2p transport: who is out there, and who holds what.

    async with Libp2pTransport(identity).running() as transport:
        async with Discovery(transport, on_announce=remember, on_peer=greet).running() as discovery:
            await transport.connect(bootstrap)            # one peer is enough: the DHT finds the rest
            discovery.publish_announce(node.seal(Announce(digest, "weights", model, version, n, size)))
            discovery.provide_soon(digest)                 # or: await discovery.provide(digest)
            holders = await discovery.find_providers(digest)   # peer ids, deduplicated, bounded in time

One service over three parts, each in a module of its own: ``announcements`` (signed announce
messages over gossipsub, validated before delivery or relay, the bounded replay guard and the
per-forwarder budget of new authors), ``providers`` (Kad-DHT provider records) and ``dialing``
(routing-table refresh, dialing the peers found, optional mDNS). py-libp2p's internals that they
need are in ``upstream``; its warnings are rate-limited (``logs``).

**Bounded**: every network wait has a timeout, every table a size, and every piece of code that a
peer's bytes can reach is wrapped: our validator, py-libp2p's pubsub ``push_msg`` and the pubsub
and DHT stream handlers (errors counted under ``push_error`` and ``stream_error`` in
``stats.rejected``).

All in one trio run, the transport's. ``publish_announce`` and ``provide_soon`` may be called from
another thread too.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack

import trio

from manymodels.protocol import Message, ReplayGuard

from .announcements import Announcements
from .config import DiscoveryConfig, DiscoveryStats
from .dialing import Dialing
from .providers import Providers, open_dht
from .service import TrioService

__all__ = ["Discovery", "DiscoveryConfig", "DiscoveryStats"]


def now_ms() -> int:
    return int(time.time() * 1000)


def _part_attribute(part: str, name: str) -> property:
    """An attribute of the facade that is one of a part's."""
    return property(lambda self: getattr(getattr(self, part), name),
                    lambda self, value: setattr(getattr(self, part), name, value))


class Discovery(TrioService):
    """Gossipsub announcements, Kad-DHT provider records and peer discovery, optional mDNS, for a
    running ``Libp2pTransport``. Use ``async with Discovery(...).running()`` inside the
    transport's ``running()``, or ``await nursery.start(discovery.run)``."""

    on_announce = _part_attribute("announcements", "on_announce")
    banned = _part_attribute("announcements", "banned")
    guard = _part_attribute("announcements", "guard")
    pubsub = _part_attribute("announcements", "pubsub")
    router = _part_attribute("announcements", "router")
    on_peer = _part_attribute("dialing", "on_peer")
    mdns = _part_attribute("dialing", "mdns")
    dht = _part_attribute("providers", "dht")

    def __init__(self, transport, *, on_announce: Callable[[Message], None] | None = None,
                 on_peer: Callable[[str, list[str]], None] | None = None,
                 config: DiscoveryConfig | None = None, clock: Callable[[], int] = now_ms,
                 guard: ReplayGuard | None = None, banned=()) -> None:
        super().__init__()
        self.transport = transport
        self.config = config or DiscoveryConfig()
        self.stats = DiscoveryStats()
        self.address: str = transport.address
        self.announcements = Announcements(transport, self.config, self.stats, clock=clock, guard=guard,
                                           on_announce=on_announce, banned=banned)
        self.providers = Providers(transport, self.config, self.stats)
        self.dialing = Dialing(transport, self.config, self.stats, on_peer=on_peer,
                               on_round=self.announcements.meet)

    async def _open(self, stack: AsyncExitStack) -> None:
        """Pubsub (subscribed, validator set), the DHT and mDNS, on the transport's host."""
        host = self.transport.host
        if host is None or not self.transport.is_running:
            raise RuntimeError("start the transport first (Discovery runs inside transport.running())")
        await self.announcements.open(stack, host)
        if self.config.dht:
            dht = await open_dht(stack, host, self.announcements.count_stream_error)
            self.providers.dht = self.dialing.dht = dht
        if self.config.mdns:
            await self.dialing.open_mdns(stack, host)

    def _start(self, nursery: trio.Nursery) -> None:
        self.announcements.start(nursery)
        self.dialing.start(nursery)

    # ---- announcements

    def publish_announce(self, sealed: bytes) -> bool:
        """Queue our own sealed ``announce`` envelope for gossipsub. Never blocks or raises: returns
        False, counting the reason in ``stats.publish_dropped``, when the bytes are too large, not
        an announcement of ours, over the pace, or the queue is full or closed. From another
        thread: True once handed to the trio thread, which counts what it drops."""
        return self.call_in_loop(self._publish, bytes(sealed), ended=self._not_publishing)

    def _publish(self, sealed: bytes) -> bool:
        return self.announcements.publish(sealed) if self.is_running else self._not_publishing()

    def _not_publishing(self) -> bool:
        self.stats.publish_dropped["not_running"] += 1
        return False

    # ---- provider records

    async def provide(self, digest: bytes) -> bool:
        """See ``Providers.provide``."""
        return await self.providers.provide(digest)

    def provide_soon(self, digest: bytes) -> None:
        """provide() in the background; never blocks or raises."""
        self.call_in_loop(self._provide_soon, bytes(digest), ended=self._not_providing)

    def _provide_soon(self, digest: bytes) -> None:
        if self.is_running:
            self._nursery.start_soon(self.providers.provide_quietly, digest)
        else:
            self._not_providing()

    def _not_providing(self) -> None:
        self.stats.provide_failures += 1

    def unprovide(self, digest: bytes) -> None:
        """Stop announcing a digest (e.g. the blob was evicted); records already out expire."""
        self.providers.unprovide(digest)

    async def find_providers(self, digest: bytes, *, timeout: float | None = None,
                             count: int | None = None) -> list[str]:
        """See ``Providers.find_providers``."""
        return await self.providers.find_providers(digest, timeout=timeout, count=count)

    # ---- peers

    def forget(self, peer: str) -> None:
        """A peer the transport blocked: out of the routing table and the counts, not dialed."""
        self.stats.rejected_from.pop(peer, None)
        self.dialing.forget(peer)

    def known_peers(self) -> list[str]:
        """The peer ids in the DHT routing table."""
        return self.dialing.known_peers()

    def kick(self) -> None:
        """Refresh the routing table (and dial what it finds) now rather than at the next tick,
        e.g. after connecting to a bootstrap peer."""
        self.dialing.kick()

    async def refresh(self) -> int:
        """See ``Dialing.refresh``."""
        return await self.dialing.refresh()

    async def connect_peers(self, peers: Iterable[str]) -> int:
        """See ``Dialing.connect_peers``."""
        return await self.dialing.connect_peers(peers)
