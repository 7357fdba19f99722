"""Discovery for the daemon, next to its libp2p transport: who is out there, and who holds what.

    async with Libp2pTransport(identity).running() as transport:
        async with Discovery(transport, on_announce=remember, on_peer=greet).running() as discovery:
            await transport.connect(bootstrap)            # one peer is enough: the DHT finds the rest
            discovery.publish_announce(node.seal(Announce(digest, "weights", model, version, n, size)))
            discovery.provide_soon(digest)                 # or: await discovery.provide(digest)
            holders = await discovery.find_providers(digest)   # peer ids, deduplicated, bounded in time

* **Announcements** travel on the gossipsub topic ``/manymodels/announce/1``. A gossipsub message
  carries one sealed envelope (``protocol.seal``) of kind ``announce`` and nothing else, at most
  ``MAX_ANNOUNCE_BYTES``. Every node validates a message *before* it is delivered or relayed:
  size, then ``open_envelope`` (schema, signature, payload digest), the kind, the envelope's sender
  equal to the gossipsub message's ``from_id`` (which libp2p signs too, ``strict_signing``), then
  our own ``ReplayGuard`` (sequence window, clock skew). An invalid message is neither delivered
  nor relayed; it is counted by reason in ``stats.rejected`` (and by forwarder in
  ``stats.rejected_from``). The replay window is recorded only after the sender check, so a peer
  who re-publishes someone else's announcement under its own id cannot burn the author's sequence
  number. Valid announcements from others go to ``on_announce(message)`` (a verified
  ``protocol.Message``). ``publish_announce`` is paced: a token bucket of ``announce_burst``
  tokens refilled at ``announce_rate`` per second; beyond that, and for bytes that are not our own
  announcement, it drops and counts (``stats.publish_dropped``).
* **Message ids** are ``from_id + sha256(data)`` (``announce_msg_id``): a message id covers its
  bytes, so py-libp2p's validation cache can never vouch for other bytes under a known id (its
  default id is ``from_id + seqno``, and its cache outlives the seen-cache). Every node of the
  network must use the same function (it is fixed here). The validation cache is off (TTL 0):
  each arrival of a message id not yet seen is validated again.
* **Kad-DHT** (server mode, values off, strict validation): ``provide(digest)`` announces that we
  hold the blob whose payload digest is ``digest`` (the DHT key is its sha2-256 multihash,
  ``provider_key``), ``find_providers(digest)`` returns the peer ids that claim to, deduplicated,
  within ``lookup_timeout`` seconds (their addresses go to the peerstore so the transport can
  dial them). py-libp2p binds a provider record to the Noise-authenticated sender, but the claim
  itself is unverified: whatever is pulled must be digest-checked (the daemon's ``_pull`` does).
  The routing table is refreshed every ``refresh_fast`` seconds while it grows, backing off to
  ``refresh_slow`` when it stops, and peers it learns of are dialed (up to ``max_peers``
  connections): a node that joined through one bootstrap peer meets the others.
* **mDNS** (``mdns=True``; off by default): py-libp2p's zeroconf service; peers it finds are dialed.
* **Bounded**: every network wait has a timeout, every table a size, and every piece of code that a
  peer's bytes can reach is wrapped: our validator, py-libp2p's pubsub ``push_msg`` (a message
  whose ``key`` does not deserialize makes it raise, which would stop the pubsub service) and the
  pubsub and DHT stream handlers (an RPC that does not parse raises protobuf's DecodeError there,
  which would stop the swarm: the whole host). Such errors are counted under ``push_error`` and
  ``stream_error`` in ``stats.rejected``.
* **Not here**: py-libp2p's own ``AutoConnector`` (in the transport's host, ``connection_config``)
  also dials peerstore entries; ``max_peers`` bounds only what Discovery dials.

All in one trio run, the transport's. ``publish_announce`` and ``provide_soon`` may be called from
another thread too.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import trio
from libp2p.discovery.mdns.mdns import MDNSDiscovery
from libp2p.kad_dht.common import PROTOCOL_ID as DHT_PROTOCOL_ID
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from manymodels.protocol import Message, Reason, RejectedMessage, ReplayGuard, open_envelope

from .service import TrioService

logger = logging.getLogger(__name__)

ANNOUNCE_TOPIC = "/manymodels/announce/1"
MAX_ANNOUNCE_BYTES = 4 * 1024
NOT_ANNOUNCE = "not_announce"  # a valid envelope of another kind
ORIGIN_MISMATCH = "origin_mismatch"  # the envelope's sender is not the gossipsub message's author
VALIDATOR_ERROR = "validator_error"  # anything else our validator tripped on
PUSH_ERROR = "push_error"  # py-libp2p's own handling of a message raised (caught here)
STREAM_ERROR = "stream_error"  # py-libp2p's pubsub or DHT stream handler raised on a peer's bytes (caught here)
_MAX_PEER_COUNTS = 4096  # distinct forwarders kept in stats.rejected_from


def now_ms() -> int:
    return int(time.time() * 1000)


class _CleanEofFilter(logging.Filter):
    """py-libp2p 0.8.1's Kad-DHT server logs a WARNING each time a peer closes a DHT stream
    cleanly (its loop expects IncompleteReadError but gets StreamEOF): dozens a minute while
    the routing table is refreshed. Only that record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "Failed to read DHT message from stream: %s" and record.args
                    and type(record.args[0]) is StreamEOF)


def quiet_clean_eof_warnings() -> None:
    """Install ``_CleanEofFilter`` on py-libp2p's Kad-DHT logger (idempotent)."""
    dht_logger = logging.getLogger("libp2p.kad_dht.kad_dht")
    if not any(isinstance(f, _CleanEofFilter) for f in dht_logger.filters):
        dht_logger.addFilter(_CleanEofFilter())


class _RateLimit(logging.Filter):
    """At most ``burst`` records per ``period`` seconds from each line of code that logs; then
    one line says how many were left out. py-libp2p logs a warning per failed provide or stream
    to a peer, which hostile or departed peers would turn into an unbounded log."""

    def __init__(self, burst: int = 5, period: float = 60.0) -> None:
        super().__init__()
        self.burst, self.period = burst, period
        self._windows: OrderedDict[tuple, list] = OrderedDict()  # key -> [window start, count]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.pathname, record.lineno)  # py-libp2p formats its messages itself (f-strings)
        now = time.monotonic()
        window = self._windows.pop(key, None)
        if window is None or now - window[0] > self.period:
            if window is not None and window[1] > self.burst:
                record.msg = f"({window[1] - self.burst} like the next left out in {self.period:.0f} s) {record.msg}"
            window = [now, 0]
        self._windows[key] = window
        while len(self._windows) > 1024:
            self._windows.popitem(last=False)
        window[1] += 1
        return window[1] <= self.burst


def bound_libp2p_logs() -> None:
    """py-libp2p's warnings (it installs no handler of its own) to stderr, rate-limited (idempotent)."""
    libp2p_logger = logging.getLogger("libp2p")
    if not any(isinstance(f, _RateLimit) for h in libp2p_logger.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.addFilter(_RateLimit())
        libp2p_logger.addHandler(handler)


def announce_msg_id(msg) -> bytes:
    """The gossipsub message id on our topic: the author's peer id and the hash of the bytes."""
    return bytes(msg.from_id) + hashlib.sha256(msg.data).digest()


def provider_key(digest: bytes) -> str:
    """The DHT key (as py-libp2p's hex multihash string) for a 32-byte SHA-256 payload digest."""
    digest = bytes(digest)
    if len(digest) != 32:
        raise ValueError(f"a payload digest is 32 bytes, got {len(digest)}")
    return "1220" + digest.hex()


@dataclass
class DiscoveryConfig:
    # gossipsub
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    heartbeat_interval: float = 1.0
    relay_limit: float = 50.0  # messages per second per forwarder on the topic (py-libp2p's default is 10)
    max_rpc_bytes: int = 256 * 1024  # a peer's pubsub RPC above this resets its stream
    max_announce_bytes: int = MAX_ANNOUNCE_BYTES
    announce_rate: float = 1.0  # our own announcements: tokens per second ...
    announce_burst: int = 4  # ... and at most this many at once
    publish_queue: int = 16
    publish_timeout: float = 5.0
    max_skew_ms: int = 5 * 60 * 1000
    replay_window: int = 1024
    max_senders: int = 10_000  # authors in the replay guard; beyond, the least recently heard is evicted
    # Kad-DHT
    dht: bool = True
    lookup_timeout: float = 10.0  # find_providers, all of it
    query_timeout: float = 5.0  # one peer's answer to it
    provide_timeout: float = 20.0
    max_providers: int = 20
    max_provided: int = 256  # digests we announce as provider at once (oldest dropped)
    refresh_fast: float = 1.0  # seconds between routing-table refreshes while it grows ...
    refresh_slow: float = 60.0  # ... backing off to this when it does not
    refresh_timeout: float = 15.0
    # dialing what we find
    auto_connect: bool = True
    max_peers: int = 32  # stop dialing found peers at this many connections
    dial_concurrency: int = 4
    dial_backoff: float = 30.0  # seconds before a failed peer is dialed again
    # mDNS
    mdns: bool = False
    mdns_poll: float = 0.5


@dataclass
class DiscoveryStats:
    announces_published: int = 0  # handed to gossipsub
    publish_dropped: Counter = field(default_factory=Counter)  # reason -> count (rate, queue_full, ...)
    announces_delivered: int = 0  # valid, from others, given to on_announce
    announces_valid: int = 0  # passed validation (own ones included)
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    rejected_from: Counter = field(default_factory=Counter)  # forwarding peer -> count
    callback_errors: int = 0
    provides: int = 0
    provide_failures: int = 0
    lookups: int = 0
    lookup_timeouts: int = 0
    refreshes: int = 0
    refresh_failures: int = 0
    dials: int = 0  # peers found (DHT or mDNS) and connected to
    dial_failures: int = 0
    mdns_found: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class Discovery(TrioService):
    """Gossipsub announcements, Kad-DHT provider records and peer discovery, optional mDNS, for a
    running ``Libp2pTransport``. Use ``async with Discovery(...).running()`` inside the
    transport's ``running()``, or ``await nursery.start(discovery.run)``."""

    def __init__(self, transport, *, on_announce: Callable[[Message], None] | None = None,
                 on_peer: Callable[[str, list[str]], None] | None = None,
                 config: DiscoveryConfig | None = None, clock: Callable[[], int] = now_ms,
                 guard: ReplayGuard | None = None, banned=()) -> None:
        self.transport = transport
        self.config = config or DiscoveryConfig()
        self.on_announce = on_announce
        self.on_peer = on_peer  # (peer id, addresses) of a peer we found and connected to
        self.clock = clock
        self.guard = guard or ReplayGuard(window=self.config.replay_window, max_skew_ms=self.config.max_skew_ms,
                                          max_senders=self.config.max_senders)
        self.banned = banned  # a container of public keys whose announcements are refused
        self.stats = DiscoveryStats()
        self.address: str = transport.address
        self.pubsub = None
        self.router = None
        self.dht = None
        self.mdns = None
        self._verified: OrderedDict[bytes, Message] = OrderedDict()  # message id -> validated, to deliver
        self._tokens = float(self.config.announce_burst)
        self._tokens_at = time.monotonic()
        self._provided: OrderedDict[bytes, None] = OrderedDict()
        self._dial_after: dict[str, float] = {}
        self._pubsub_pending: set = set()
        self._kick = trio.Event()
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self._running = False
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: int | None = None
        self._publish_send, self._publish_recv = trio.open_memory_channel(self.config.publish_queue)

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self._running

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Start pubsub (subscribed, validator set), the DHT and mDNS; serve until close()."""
        host = self.transport.host
        if host is None or not getattr(self.transport, "is_running", False):
            raise RuntimeError("start the transport first (Discovery runs inside transport.running())")
        if self.pubsub is not None:
            raise RuntimeError("a Discovery runs once")
        c = self.config
        try:
            async with AsyncExitStack() as stack:
                self.router, self.pubsub = _make_pubsub(host, c, self._push_error, self._stream_error)
                await stack.enter_async_context(background_trio_service(self.pubsub))
                await stack.enter_async_context(background_trio_service(self.router))
                with trio.fail_after(10):
                    await self.pubsub.wait_until_ready()
                self.pubsub.set_topic_validator(ANNOUNCE_TOPIC, self._validate, False)
                subscription = await self.pubsub.subscribe(ANNOUNCE_TOPIC)
                if c.dht:
                    quiet_clean_eof_warnings()
                    bound_libp2p_logs()
                    self.dht = KadDHT(host, DHTMode.SERVER, enable_values=False, strict_validation=True)
                    _guard_stream_handler(host, [DHT_PROTOCOL_ID], self.dht.handle_stream, self._stream_error)
                    await stack.enter_async_context(background_trio_service(self.dht))
                if c.mdns:
                    self.mdns = _make_mdns(host)
                    if self.mdns is not None:
                        stack.push_async_callback(_stop_mdns, self.mdns)
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._token = trio.lowlevel.current_trio_token()
                    self._thread = threading.get_ident()
                    nursery.start_soon(self._deliver_loop, subscription)
                    nursery.start_soon(self._publish_loop)
                    nursery.start_soon(self._maintenance_loop)
                    if self.mdns is not None:
                        nursery.start_soon(self._mdns_loop)
                    self._running = True
                    task_status.started()
                    try:
                        await self._stop.wait()
                    finally:
                        self._running = False
                        nursery.cancel_scope.cancel()
        finally:
            self._running = False
            self._stopped.set()

    async def close(self) -> None:
        self._stop.set()
        if self.pubsub is not None:
            await self._stopped.wait()

    # ---- announcements ---------------------------------------------------------------------

    def publish_announce(self, sealed: bytes) -> bool:
        """Queue our own sealed ``announce`` envelope for gossipsub. Never blocks or raises: returns
        False, counting the reason in ``stats.publish_dropped``, when the bytes are too large, not
        an announcement of ours, over the pace, or the queue is full or closed."""
        if self._thread is not None and threading.get_ident() != self._thread:
            try:
                self._token.run_sync_soon(self._publish_now, bytes(sealed))
            except Exception:  # the run has ended
                self.stats.publish_dropped["not_running"] += 1
                return False
            return True  # queued for the trio thread, which counts what it drops
        return self._publish_now(sealed)

    def _publish_now(self, sealed: bytes) -> bool:
        dropped = self.stats.publish_dropped
        if not self._running:
            dropped["not_running"] += 1
            return False
        if len(sealed) > self.config.max_announce_bytes:
            dropped["oversize"] += 1
            return False
        try:
            message = open_envelope(sealed, now_ms=self.clock(), max_bytes=self.config.max_announce_bytes)
        except RejectedMessage as exc:
            dropped[exc.reason.value] += 1
            return False
        if message.kind != "announce":
            dropped[NOT_ANNOUNCE] += 1
            return False
        if message.sender_id != self.address:
            dropped["not_ours"] += 1
            return False
        if not self._take_token():
            dropped["rate"] += 1
            return False
        try:
            self._publish_send.send_nowait(bytes(sealed))
        except trio.WouldBlock:
            dropped["queue_full"] += 1
            return False
        return True

    def _take_token(self) -> bool:
        c = self.config
        now = time.monotonic()
        self._tokens = min(float(c.announce_burst), self._tokens + (now - self._tokens_at) * c.announce_rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    async def _publish_loop(self) -> None:
        async for data in self._publish_recv:
            try:
                with trio.fail_after(self.config.publish_timeout):
                    await self.pubsub.publish(ANNOUNCE_TOPIC, data)
                self.stats.announces_published += 1
            except trio.TooSlowError:
                self.stats.publish_dropped["timeout"] += 1
            except Exception as exc:  # noqa: BLE001
                self.stats.publish_dropped["error"] += 1
                logger.warning("publishing an announcement failed: %s: %s", type(exc).__name__, exc)

    def _validate(self, forwarder, msg) -> bool:
        """py-libp2p's topic validator (sync, so no await between its seen-check and ours):
        True lets the message be delivered and relayed. Never raises."""
        try:
            reason = self._check(msg)
        except Exception as exc:  # noqa: BLE001 - whatever a peer sent, it is a rejection
            logger.debug("announcement validator raised %s: %s", type(exc).__name__, exc)
            reason = VALIDATOR_ERROR
        if reason is None:
            self.stats.announces_valid += 1
            return True
        self.stats.rejected[reason] += 1
        try:
            peer = forwarder.to_base58()
        except Exception:  # noqa: BLE001
            peer = "?"
        by_peer = self.stats.rejected_from
        if peer in by_peer or len(by_peer) < _MAX_PEER_COUNTS:
            by_peer[peer] += 1
        logger.debug("rejected an announcement forwarded by %s: %s", peer, reason)
        strike = getattr(self.transport, "strike", None)
        if strike is not None and peer != "?":  # honest peers validate before they relay
            strike(peer, reason)
        return False

    def _check(self, msg) -> str | None:
        """None if the gossipsub message carries a valid announcement; else the reason."""
        data = msg.data
        c = self.config
        if len(data) > c.max_announce_bytes:
            return Reason.TOO_LARGE.value
        try:
            message = open_envelope(data, now_ms=self.clock(), banned=self.banned, max_bytes=c.max_announce_bytes)
        except RejectedMessage as exc:
            return exc.reason.value
        if message.kind != "announce":
            return NOT_ANNOUNCE
        if message.sender_id != ID(msg.from_id).to_base58():
            return ORIGIN_MISMATCH
        try:  # only now: a message that failed above must not consume the author's sequence number
            self.guard.check(message.sender, message.seq, message.ts, self.clock())
        except RejectedMessage as exc:
            return exc.reason.value
        self.guard.record(message.sender, message.seq, message.ts)
        self._verified[announce_msg_id(msg)] = message
        while len(self._verified) > 256:
            self._verified.popitem(last=False)
        return None

    def _push_error(self) -> None:
        self.stats.rejected[PUSH_ERROR] += 1

    def _stream_error(self) -> None:
        self.stats.rejected[STREAM_ERROR] += 1

    async def _deliver_loop(self, subscription) -> None:
        while True:
            msg = await subscription.get()
            message = self._verified.pop(announce_msg_id(msg), None)
            if message is None:
                continue  # not validated by us just now (e.g. a stale cache hit): never delivered
            if message.sender_id == self.address or self.on_announce is None:
                continue
            self.stats.announces_delivered += 1
            try:
                self.on_announce(message)
            except Exception:  # noqa: BLE001
                self.stats.callback_errors += 1
                logger.exception("on_announce raised")

    # ---- the DHT ----------------------------------------------------------------------------

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

    def provide_soon(self, digest: bytes) -> None:
        """provide() in the background; never blocks or raises."""
        if self._thread is not None and threading.get_ident() != self._thread:
            try:
                self._token.run_sync_soon(self.provide_soon, bytes(digest))
            except Exception:  # noqa: BLE001
                self.stats.provide_failures += 1
            return
        if not self._running:
            self.stats.provide_failures += 1
            return
        self._nursery.start_soon(self._provide_quietly, bytes(digest))

    async def _provide_quietly(self, digest: bytes) -> None:
        try:
            await self.provide(digest)
        except ValueError:
            self.stats.provide_failures += 1

    def unprovide(self, digest: bytes) -> None:
        """Stop announcing a digest (e.g. the blob was evicted); records already out expire."""
        self._provided.pop(bytes(digest), None)
        if self.dht is not None:
            key = bytes.fromhex(provider_key(digest))
            store = self.dht.provider_store
            store.providing_keys.discard(key)
            records = store.providers.get(key)
            if records is not None:
                records.pop(str(self.dht.local_peer_id), None)

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
        count = c.max_providers if count is None else count
        self.stats.lookups += 1
        store = self.dht.provider_store
        infos = list(store.get_providers(key))  # ours, pushed to us, or cached
        with trio.move_on_after(c.lookup_timeout if timeout is None else timeout) as scope:
            try:
                closest = await self.dht.peer_routing.find_closest_peers_network(key)
                answers: list[list] = []
                limiter = trio.CapacityLimiter(10)

                async def ask(pid) -> None:
                    async with limiter:
                        with trio.move_on_after(c.query_timeout):
                            providers, _ = await store._get_providers_from_peer_with_closers(pid, key)
                            answers.append(providers)

                async with trio.open_nursery() as nursery:
                    for pid in list(closest)[:20]:
                        if pid != self.dht.local_peer_id:
                            nursery.start_soon(ask, pid)
                for providers in answers:
                    infos.extend(providers)
            except Exception as exc:  # noqa: BLE001 - a peer's answer must not break the lookup
                logger.debug("find_providers failed: %s: %s", type(exc).__name__, exc)
        if scope.cancelled_caught:
            self.stats.lookup_timeouts += 1
        found: dict[str, None] = {}
        peerstore = self.transport.host.get_peerstore()
        for info in infos:
            try:
                peer = info.peer_id.to_base58()
            except Exception:  # noqa: BLE001
                continue
            if peer == self.address or peer in found:
                continue
            found[peer] = None
            addrs = list(info.addrs)[:8]
            if addrs:
                try:
                    peerstore.add_addrs(info.peer_id, addrs, 3600)
                except Exception:  # noqa: BLE001
                    pass
            if len(found) >= count:
                break
        return list(found)

    def forget(self, peer: str) -> None:
        """A peer the transport blocked: out of the routing table and the counts, not dialed."""
        self.stats.rejected_from.pop(peer, None)
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
        """Refresh the routing table (and dial what it finds) now rather than at the next tick,
        e.g. after connecting to a bootstrap peer."""
        self._kick.set()

    async def refresh(self) -> int:
        """One round: every connected peer into the routing table and pubsub, a routing-table
        refresh, then dial the peers found. Returns how many new peers were connected."""
        host = self.transport.host
        c = self.config
        connected = list(host.get_connected_peers())
        for pid in connected:
            if pid not in self.pubsub.peers and pid not in self._pubsub_pending and self._nursery is not None:
                self._pubsub_pending.add(pid)
                self._nursery.start_soon(self._ensure_pubsub_peer, pid)
        if self.dht is not None:
            gate = getattr(self.transport, "gate", None)
            for pid in connected:
                if gate is not None and gate.is_blocked(pid.to_base58(), time.monotonic()):
                    continue  # being disconnected: it must not come back into the table
                try:
                    if not self.dht.routing_table.peer_in_table(pid):
                        await self.dht.add_peer(pid)
                except Exception as exc:  # noqa: BLE001
                    logger.debug("adding %s to the routing table failed: %s", pid, exc)
            if self.dht.get_routing_table_size() > 0:
                self.stats.refreshes += 1
                with trio.move_on_after(c.refresh_timeout) as scope:
                    try:
                        await self.dht.refresh_routing_table()
                    except Exception as exc:  # noqa: BLE001
                        self.stats.refresh_failures += 1
                        logger.debug("routing-table refresh failed: %s: %s", type(exc).__name__, exc)
                if scope.cancelled_caught:
                    self.stats.refresh_failures += 1
        if not c.auto_connect or self.dht is None:
            return 0
        return await self.connect_peers(self.known_peers())

    async def _ensure_pubsub_peer(self, pid) -> None:
        """A connection made before pubsub started fires no notifee: open its stream here."""
        try:
            with trio.move_on_after(10):
                await self.pubsub.ensure_peer_stream(pid, timeout=10.0)
        except Exception as exc:  # noqa: BLE001
            logger.debug("no pubsub stream to %s: %s", pid, exc)
        finally:
            self._pubsub_pending.discard(pid)

    async def connect_peers(self, peers: Iterable[str]) -> int:
        """Dial peers we are not connected to (addresses from the peerstore), a few at a time,
        up to ``max_peers`` connections, skipping those that failed within ``dial_backoff`` s."""
        c = self.config
        connected = set(self.transport.connected_peers())
        now = trio.current_time()
        if len(self._dial_after) > 4096:
            self._dial_after = {p: t for p, t in self._dial_after.items() if now < t < float("inf")}
        todo = [p for p in dict.fromkeys(peers)
                if p != self.address and p not in connected and self._dial_after.get(p, 0) <= now]
        todo = todo[:max(0, c.max_peers - len(connected))]
        if not todo:
            return 0
        made = 0
        limiter = trio.CapacityLimiter(c.dial_concurrency)

        async def dial(peer: str) -> None:
            nonlocal made
            async with limiter:
                addrs = _dialable(self.transport.peer_addrs(peer), peer)
                for addr in addrs[:4]:
                    try:
                        await self.transport.connect(addr)
                    except (ValueError, ConnectionError, RuntimeError):
                        continue
                    made += 1
                    self.stats.dials += 1
                    self._dial_after.pop(peer, None)
                    if self.on_peer is not None:
                        try:
                            self.on_peer(peer, addrs)
                        except Exception:  # noqa: BLE001
                            self.stats.callback_errors += 1
                            logger.exception("on_peer raised")
                    return
                self.stats.dial_failures += 1
                self._dial_after[peer] = trio.current_time() + c.dial_backoff

        async with trio.open_nursery() as nursery:
            for peer in todo:
                nursery.start_soon(dial, peer)
        return made

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
            with trio.move_on_after(interval):
                await self._kick.wait()

    # ---- mDNS ------------------------------------------------------------------------------

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
            found = [p for p in dict.fromkeys(found) if p != self.address]
            new = [p for p in found if p not in seen]
            if len(seen) > 4096:
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


def _make_pubsub(host, c: DiscoveryConfig, on_push_error: Callable[[], None],
                 on_stream_error: Callable[[], None]):
    router = GossipSub(protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11], degree=c.degree, degree_low=c.degree_low,
                       degree_high=c.degree_high, heartbeat_interval=c.heartbeat_interval,
                       max_messages_per_topic_per_second=c.relay_limit)
    pubsub = Pubsub(host, router, strict_signing=True, msg_id_constructor=announce_msg_id,
                    validation_cache_ttl=0, max_inbound_rpc_size=c.max_rpc_bytes,
                    allowed_topics={ANNOUNCE_TOPIC})
    _guard_push_msg(pubsub, on_push_error)

    def dead(stream) -> None:
        pubsub._handle_dead_peer(stream.muxed_conn.peer_id)
    _guard_stream_handler(host, router.get_protocols(), pubsub.stream_handler, on_stream_error, dead)
    return router, pubsub


def _guard_stream_handler(host, protocols, handler, on_error: Callable[[], None], cleanup=None) -> None:
    """Register ``handler`` for ``protocols`` wrapped so that nothing it raises escapes. py-libp2p
    runs stream handlers in the swarm's own service: an exception there (its pubsub reader lets
    protobuf's DecodeError through for an RPC that does not parse) stops the whole host -- the
    transport and everything on it. Wrapped, the stream is reset and the error counted."""
    async def guarded(stream) -> None:
        try:
            await handler(stream)
        except trio.Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001
            on_error()
            logger.debug("a %s stream handler raised %s: %s", protocols, type(exc).__name__, exc)
            try:
                await stream.reset()
            except Exception:  # noqa: BLE001
                pass
            if cleanup is not None:
                try:
                    cleanup(stream)
                except Exception:  # noqa: BLE001
                    pass

    for protocol in protocols:
        host.set_stream_handler(protocol, guarded)


def _guard_push_msg(pubsub, on_error: Callable[[], None]) -> None:
    """py-libp2p runs ``push_msg`` for each received message as a service task, and a task that
    raises stops the whole pubsub service. It can raise on a peer's bytes (e.g. a ``key`` field
    that does not deserialize), so this instance's ``push_msg`` swallows and logs instead."""
    push_msg = pubsub.push_msg

    async def guarded(msg_forwarder, msg) -> None:
        try:
            await push_msg(msg_forwarder, msg)
        except trio.Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001
            on_error()
            logger.debug("pubsub push_msg from %s raised %s: %s", msg_forwarder, type(exc).__name__, exc)

    pubsub.push_msg = guarded


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
