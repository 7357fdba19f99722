"""Meeting peers: the DHT routing table refreshed, and the peers it (or mDNS) finds dialed.

The routing table is refreshed every ``refresh_fast`` seconds while it grows, backing off to
``refresh_slow`` when it stops, and peers it learns of are dialed (up to ``max_peers``
connections, ``dial_concurrency`` at once; a failed peer is tried again after ``dial_retry``
seconds, doubling up to ``dial_backoff``, and the next round comes no later than the next retry):
a node that joined through one bootstrap peer meets the others, and a peer that went away and came
back (a restarted daemon) is met again within seconds. mDNS (``mdns=True``, off by
default) is py-libp2p's zeroconf service; peers it finds are dialed too. py-libp2p's own
``AutoConnector`` (in the transport's host) also dials peerstore entries; ``max_peers`` bounds only
what is dialed here.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack

import trio
from libp2p.discovery.mdns.mdns import MDNSDiscovery
from libp2p.peer.id import ID

from .config import DiscoveryConfig, DiscoveryStats
from .upstream import serves_kad

logger = logging.getLogger(__name__)

_ADDRS_TRIED = 4  # addresses of one peer dialed before it counts as failed
_MAX_REMEMBERED = 4096  # peers in the dial backoff table, and mDNS peers counted as seen


class Dialing:
    """The dialing part of ``Discovery`` (``dht`` is set once the DHT runs; None: no DHT).
    ``on_peer(peer, addrs)`` hears of each peer found and connected; ``on_round(connected)`` is
    called with the connected peers (py-libp2p ids) at the start of each round."""

    def __init__(self, transport, config: DiscoveryConfig, stats: DiscoveryStats, *,
                 on_peer: Callable[[str, list[str]], None] | None = None,
                 on_round: Callable[[list], None] | None = None) -> None:
        self.transport = transport
        self.config = config
        self.stats = stats
        self.on_peer = on_peer
        self.on_round = on_round
        self.dht = None
        self.mdns = None
        self._dial_after: dict[str, float] = {}
        self._failures: dict[str, int] = {}  # failed dials of a peer in a row
        self._kick = trio.Event()

    async def open_mdns(self, stack: AsyncExitStack, host) -> None:
        self.mdns = _make_mdns(host)
        if self.mdns is not None:
            stack.push_async_callback(_stop_mdns, self.mdns)

    def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._maintenance_loop)
        if self.mdns is not None:
            nursery.start_soon(self._mdns_loop)

    def forget(self, peer: str) -> None:
        """A peer the transport blocked: out of the routing table, never dialed again."""
        self._dial_after[peer] = float("inf")
        if self.dht is not None:
            try:
                self.dht.routing_table.remove_peer(ID.from_base58(peer))
            except Exception:  # noqa: BLE001 -- not in the table
                pass

    def known_peers(self) -> list[str]:
        """The peer ids in the DHT routing table."""
        if self.dht is None:
            return []
        return sorted(p.to_base58() for p in self.dht.routing_table.get_peer_ids())

    def kick(self) -> None:
        """Run the next round now rather than at the next tick."""
        self._kick.set()

    async def refresh(self) -> int:
        """One round: every connected peer that serves the DHT into the routing table, those
        that turned out not to out of it (``on_round`` hears of every connected peer), a
        routing-table refresh, then dial the peers found. Returns how many new peers were connected."""
        connected = list(self.transport.host.get_connected_peers())
        if self.on_round is not None:
            self.on_round(connected)
        if self.dht is not None:
            await self._refresh_table(connected)
        if not self.config.auto_connect or self.dht is None:
            return 0
        return await self.connect_peers(self.known_peers())

    async def _refresh_table(self, connected: list) -> None:
        gate = self.transport.gate
        host = self.transport.host
        for pid in self.dht.routing_table.get_peer_ids():
            if not serves_kad(host, pid):  # identify came in after it was added: a DHT client
                self.dht.routing_table.remove_peer(pid)
        for pid in connected:
            if gate.is_blocked(pid.to_base58(), time.monotonic()):
                continue  # being disconnected: it must not come back into the table
            try:
                if not self.dht.routing_table.peer_in_table(pid):
                    await self.dht.add_peer(pid)
            except Exception as exc:  # noqa: BLE001
                logger.debug("adding %s to the routing table failed: %s", pid, exc)
        if self.dht.get_routing_table_size() > 0:
            self.stats.refreshes += 1
            with trio.move_on_after(self.config.refresh_timeout) as scope:
                try:
                    await self.dht.refresh_routing_table()
                except Exception as exc:  # noqa: BLE001
                    self.stats.refresh_failures += 1
                    logger.debug("routing-table refresh failed: %s: %s", type(exc).__name__, exc)
            if scope.cancelled_caught:
                self.stats.refresh_failures += 1

    async def connect_peers(self, peers: Iterable[str]) -> int:
        """Dial peers we are not connected to (addresses from the peerstore), a few at a time,
        up to ``max_peers`` connections, skipping those that failed within ``dial_backoff`` s."""
        c = self.config
        connected = set(self.transport.connected_peers())
        now = trio.current_time()
        if len(self._dial_after) > _MAX_REMEMBERED:
            self._dial_after = {p: t for p, t in self._dial_after.items() if now < t < float("inf")}
            self._failures = {p: n for p, n in self._failures.items() if p in self._dial_after}
        todo = [p for p in dict.fromkeys(peers)
                if p != self.transport.address and p not in connected and self._dial_after.get(p, 0) <= now]
        todo = todo[:max(0, c.max_peers - len(connected))]
        if not todo:
            return 0
        limiter = trio.CapacityLimiter(c.dial_concurrency)
        made = []

        async def dial(peer: str) -> None:
            async with limiter:
                if await self._dial(peer):
                    made.append(peer)

        async with trio.open_nursery() as nursery:
            for peer in todo:
                nursery.start_soon(dial, peer)
        return len(made)

    async def _dial(self, peer: str) -> bool:
        """Try a peer's first few addresses; tell ``on_peer`` when one connects."""
        addrs = _dialable(self.transport.peer_addrs(peer), peer)
        for addr in addrs[:_ADDRS_TRIED]:
            try:
                await self.transport.connect(addr)
            except (ValueError, ConnectionError, RuntimeError):
                continue
            self.stats.dials += 1
            self._dial_after.pop(peer, None)
            self._failures.pop(peer, None)
            if self.on_peer is not None:
                try:
                    self.on_peer(peer, addrs)
                except Exception:  # noqa: BLE001
                    self.stats.callback_errors += 1
                    logger.exception("on_peer raised")
            return True
        self.stats.dial_failures += 1
        failures = self._failures[peer] = self._failures.get(peer, 0) + 1
        wait = min(self.config.dial_backoff, self.config.dial_retry * 2 ** min(failures - 1, 32))
        self._dial_after[peer] = trio.current_time() + wait
        return False

    def _next_retry(self) -> float:
        """Seconds until the soonest failed peer may be dialed again (inf: none waits)."""
        now = trio.current_time()
        return min((t - now for t in self._dial_after.values() if now < t < float("inf")), default=float("inf"))

    async def _maintenance_loop(self) -> None:
        c = self.config
        interval = c.refresh_fast
        while True:
            before = (len(self.known_peers()), len(self.transport.connected_peers()))
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - a peer's answers must not stop discovery
                self.stats.refresh_failures += 1
                logger.warning("discovery round failed: %s: %s", type(exc).__name__, exc)
            after = (len(self.known_peers()), len(self.transport.connected_peers()))
            interval = c.refresh_fast if after != before else min(c.refresh_slow, interval * 2)
            self._kick = trio.Event()
            with trio.move_on_after(max(min(interval, self._next_retry()), c.refresh_fast)):
                await self._kick.wait()

    async def _mdns_loop(self) -> None:
        """Dial the peers zeroconf's thread has found (it writes their addresses to the
        peerstore); polling keeps every py-libp2p call on the trio thread."""
        with trio.move_on_after(10):
            await trio.to_thread.run_sync(self.mdns.broadcaster.register, abandon_on_cancel=True)
        seen: set[str] = set()
        cleaned = trio.current_time()
        while True:
            await trio.sleep(self.config.mdns_poll)
            try:
                found = [pid.to_base58() for pid, _ in list(self.mdns.listener.discovered_services.values())]
                if trio.current_time() - cleaned > 60:
                    cleaned = trio.current_time()
                    self.mdns.listener.cleanup_stale_entries(max_age=self.mdns.ttl * 2)
            except Exception:  # noqa: BLE001 - zeroconf's thread changes the dict meanwhile
                continue
            found = [p for p in dict.fromkeys(found) if p != self.transport.address]
            new = [p for p in found if p not in seen]
            if len(seen) > _MAX_REMEMBERED:
                seen.clear()
            seen.update(new)
            self.stats.mdns_found += len(new)
            if found and self.config.auto_connect:
                if await self.connect_peers(found):
                    self.kick()


def _dialable(addrs: Iterable[str], peer: str) -> list[str]:
    """Full /p2p multiaddrs for a peer, from peerstore entries with or without the suffix."""
    suffix = f"/p2p/{peer}"
    out = []
    for a in addrs:
        a = str(a)
        if "/p2p/" in a and not a.endswith(suffix):
            continue  # a relay or someone else's address
        full = a if a.endswith(suffix) else a + suffix
        if full not in out:
            out.append(full)
    return out


def _make_mdns(host):
    """py-libp2p's mDNS service, not yet registered (``_mdns_loop`` registers it from a worker
    thread: zeroconf's register blocks for about 1.7 s, probing, which must not stall the trio
    loop; and it does the stale-entry cleanup, whose py-libp2p task is not started).
    None if zeroconf cannot start here."""
    port = 4001
    for a in host.get_addrs():
        try:
            port = int(a.value_for_protocol("tcp"))
            break
        except Exception:  # noqa: BLE001
            continue
    try:
        mdns = MDNSDiscovery(host.get_network(), port=port, host=host)
    except Exception as exc:  # noqa: BLE001 - no multicast here, port 5353 refused, ...
        logger.warning("mDNS is not available: %s: %s", type(exc).__name__, exc)
        return None
    return mdns


async def _stop_mdns(mdns) -> None:
    def stop() -> None:
        try:
            mdns.broadcaster.unregister()
            mdns.listener.stop()
            mdns.zeroconf.close()
        except Exception as exc:  # noqa: BLE001
            logger.debug("stopping mDNS: %s", exc)

    with trio.CancelScope(shield=True), trio.move_on_after(5):
        await trio.to_thread.run_sync(stop, abandon_on_cancel=True)
