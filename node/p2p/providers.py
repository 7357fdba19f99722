"""Kad-DHT provider records: who claims to hold the blob with a given payload digest.

The DHT runs in server mode, values off, strict validation; its routing table holds only peers
that serve it (a client-mode peer, e.g. a js-libp2p home node, queries us but is never sent
``ADD_PROVIDER`` nor redialed for the table's sake). ``provide(digest)`` announces that we
hold the blob whose payload digest is ``digest`` (the DHT key is its sha2-256 multihash,
``provider_key``); ``find_providers(digest)`` returns the peer ids that claim to, deduplicated,
within ``lookup_timeout`` seconds, and puts their addresses in the peerstore so the transport can
dial them. py-libp2p binds a provider record to the Noise-authenticated sender, but the claim
itself is unverified: whatever is pulled must be digest-checked (the daemon's ``_pull`` does).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack

import trio
from libp2p.kad_dht.common import PROTOCOL_ID as DHT_PROTOCOL_ID
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.tools.anyio_service import background_trio_service

from .config import DiscoveryConfig, DiscoveryStats
from .logs import bound_libp2p_logs, quiet_clean_eof_warnings
from .upstream import guard_stream_handler, kad_servers_only, providers_from_peer, stop_providing

logger = logging.getLogger(__name__)

_ASK_CONCURRENCY = 10  # closest peers asked at once by find_providers
_ASK_MOST = 20  # closest peers asked at all
_ADDRS_PER_PROVIDER = 8


def provider_key(digest: bytes) -> str:
    """The DHT key (as py-libp2p's hex multihash string) for a 32-byte SHA-256 payload digest."""
    digest = bytes(digest)
    if len(digest) != 32:
        raise ValueError(f"a payload digest is 32 bytes, got {len(digest)}")
    return "1220" + digest.hex()


async def open_dht(stack: AsyncExitStack, host, on_stream_error: Callable[[], None]) -> KadDHT:
    """A Kad-DHT server on the host, its stream handler guarded, its warnings bounded, its
    routing table for peers that serve the DHT (``upstream.kad_servers_only``)."""
    quiet_clean_eof_warnings()
    bound_libp2p_logs()
    dht = KadDHT(host, DHTMode.SERVER, enable_values=False, strict_validation=True)
    kad_servers_only(dht, host)
    guard_stream_handler(host, [DHT_PROTOCOL_ID], dht.handle_stream, on_stream_error)
    await stack.enter_async_context(background_trio_service(dht))
    return dht


class Providers:
    """The provider part of ``Discovery`` (``dht`` is set once the DHT runs; None: no DHT)."""

    def __init__(self, transport, config: DiscoveryConfig, stats: DiscoveryStats) -> None:
        self.transport = transport
        self.config = config
        self.stats = stats
        self.dht: KadDHT | None = None
        self._provided: OrderedDict[bytes, None] = OrderedDict()

    async def provide(self, digest: bytes) -> bool:
        """Announce in the DHT that we hold the blob with this payload digest (bounded in time).
        The last ``max_provided`` digests are kept and re-announced by py-libp2p."""
        key = provider_key(digest)
        if self.dht is None:
            return False
        self._remember_provided(bytes(digest))
        ok = False
        with trio.move_on_after(self.config.provide_timeout):
            try:
                ok = bool(await self.dht.provide(key))
            except Exception as exc:  # noqa: BLE001
                logger.debug("provide failed: %s: %s", type(exc).__name__, exc)
        if ok:
            self.stats.provides += 1
        else:
            self.stats.provide_failures += 1
        return ok

    async def provide_quietly(self, digest: bytes) -> None:
        """provide(), counting a malformed digest as a failure instead of raising."""
        try:
            await self.provide(digest)
        except ValueError:
            self.stats.provide_failures += 1

    def unprovide(self, digest: bytes) -> None:
        """Stop announcing a digest (e.g. the blob was evicted); records already out expire."""
        self._provided.pop(bytes(digest), None)
        if self.dht is not None:
            stop_providing(self.dht, bytes.fromhex(provider_key(digest)))

    def _remember_provided(self, digest: bytes) -> None:
        self._provided[digest] = None
        self._provided.move_to_end(digest)
        while len(self._provided) > self.config.max_provided:
            self.unprovide(next(iter(self._provided)))

    async def find_providers(self, digest: bytes, *, timeout: float | None = None,
                             count: int | None = None) -> list[str]:
        """Peer ids (not ours) that claim in the DHT to hold the blob with this payload digest,
        deduplicated, best first (records held here, then the answers of the peers closest to
        the key); whatever was found when ``timeout`` seconds run out. Their addresses go to
        the peerstore, so ``transport.send`` can dial them.

        py-libp2p's own ``find_providers`` answers from the local store alone as soon as it
        holds one record for the key -- and it caches every record it finds there -- so a
        second lookup never sees providers that came later. This asks the closest peers each
        time: in Kademlia, provider records live at the k peers closest to the key."""
        key = bytes.fromhex(provider_key(digest))
        if self.dht is None:
            return []
        c = self.config
        self.stats.lookups += 1
        infos = list(self.dht.provider_store.get_providers(key))  # ours, pushed to us, or cached
        with trio.move_on_after(c.lookup_timeout if timeout is None else timeout) as scope:
            try:
                await self._ask_closest(key, infos)
            except Exception as exc:  # noqa: BLE001 - a peer's answer must not break the lookup
                logger.debug("find_providers failed: %s: %s", type(exc).__name__, exc)
        if scope.cancelled_caught:
            self.stats.lookup_timeouts += 1
        return self._remember(infos, c.max_providers if count is None else count)

    async def _ask_closest(self, key: bytes, infos: list) -> None:
        """Append the provider records of the peers closest to ``key`` to ``infos``, as they come."""
        closest = await self.dht.peer_routing.find_closest_peers_network(key)
        limiter = trio.CapacityLimiter(_ASK_CONCURRENCY)

        async def ask(pid) -> None:
            async with limiter:
                with trio.move_on_after(self.config.query_timeout):
                    infos.extend(await providers_from_peer(self.dht, pid, key))

        async with trio.open_nursery() as nursery:
            for pid in list(closest)[:_ASK_MOST]:
                if pid != self.dht.local_peer_id:
                    nursery.start_soon(ask, pid)

    def _remember(self, infos: Iterable, count: int) -> list[str]:
        """The first ``count`` distinct peer ids (not ours) of the records; their addresses to the peerstore."""
        found: dict[str, None] = {}
        peerstore = self.transport.host.get_peerstore()
        for info in infos:
            try:
                peer = info.peer_id.to_base58()
            except Exception:  # noqa: BLE001
                continue
            if peer == self.transport.address or peer in found:
                continue
            found[peer] = None
            addrs = list(info.addrs)[:_ADDRS_PER_PROVIDER]
            if addrs:
                try:
                    peerstore.add_addrs(info.peer_id, addrs, 3600)
                except Exception:  # noqa: BLE001
                    pass
            if len(found) >= count:
                break
        return list(found)
