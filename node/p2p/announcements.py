"""Signed announcements over gossipsub, validated before they are delivered or relayed.

A gossipsub message on ``ANNOUNCE_TOPIC`` carries one sealed envelope (``protocol.seal``) of kind
``announce`` and nothing else, at most ``max_announce_bytes``. The validator checks, in order:
size, ``open_envelope`` (schema, signature, payload digest), the kind, the envelope's sender equal
to the gossipsub message's ``from_id`` (which libp2p signs too, ``strict_signing``), then the
bounded ``ReplayGuard`` (sequence window, clock skew), and for an author the guard does not hold
yet, the forwarder's budget of new authors (``PeerGate.may_introduce``). The replay window is
recorded only after all of them, so a peer who re-publishes someone else's announcement under its
own id cannot burn the author's sequence number, and fresh keys relayed by one peer cannot churn
the guard (its evictions raise the watermark that refuses evicted authors). A rejection is counted
by reason (``stats.rejected``) and by forwarder (``stats.rejected_from``), and strikes the
forwarder at the transport's gate — honest peers validate before they relay — unless the reason is
the author's standing here (replayed, stale, banned), which a relay with another view cannot know.

Message ids are ``from_id + sha256(data)`` (``announce_msg_id``), so py-libp2p's validation cache
can never vouch for other bytes under a known id; every node of the network must use the same
function. Our own announcements are paced by a token bucket (``announce_rate``, ``announce_burst``).
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from manymodels.protocol import Message, Reason, RejectedMessage, ReplayGuard, open_envelope

from .config import DiscoveryConfig, DiscoveryStats
from .gate import NEW_AUTHORS
from .upstream import guard_pubsub, speaks

logger = logging.getLogger(__name__)

ANNOUNCE_TOPIC = "/manymodels/announce/1"
NOT_ANNOUNCE = "not_announce"  # a valid envelope of another kind
ORIGIN_MISMATCH = "origin_mismatch"  # the envelope's sender is not the gossipsub message's author
VALIDATOR_ERROR = "validator_error"  # anything else our validator tripped on
PUSH_ERROR = "push_error"  # py-libp2p's own handling of a message raised (caught here)
STREAM_ERROR = "stream_error"  # py-libp2p's pubsub or DHT stream handler raised on a peer's bytes (caught here)
# Reasons about the author as this node knows it, not about the bytes: a relay that validated the
# announcement against its own replay window (another state: it restarted, it saw other paths first)
# or that does not ban the author is honest. Counted, not struck: under churn, striking them blocked
# honest neighbours (gossip replays after a restart, hundreds per node).
_AUTHOR_STANDING = frozenset({Reason.REPLAYED.value, Reason.STALE.value, Reason.BANNED.value})
_MAX_PEER_COUNTS = 4096  # distinct forwarders kept in stats.rejected_from
_MAX_VERIFIED = 256  # validated messages waiting for the delivery loop


def announce_msg_id(msg) -> bytes:
    """The gossipsub message id on our topic: the author's peer id and the hash of the bytes."""
    return bytes(msg.from_id) + hashlib.sha256(msg.data).digest()


def make_pubsub(host, c: DiscoveryConfig):
    """Gossipsub (v1.2, v1.1) with strict signing and our message ids, on our topic only."""
    router = GossipSub(protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11], degree=c.degree, degree_low=c.degree_low,
                       degree_high=c.degree_high, heartbeat_interval=c.heartbeat_interval,
                       max_messages_per_topic_per_second=c.relay_limit)
    pubsub = Pubsub(host, router, strict_signing=True, msg_id_constructor=announce_msg_id,
                    validation_cache_ttl=0, max_inbound_rpc_size=c.max_rpc_bytes,
                    allowed_topics={ANNOUNCE_TOPIC})
    return router, pubsub


class Announcements:
    """The announcement part of ``Discovery``: our own published, others' validated and delivered
    to ``on_announce(message)`` (a verified ``protocol.Message``). Runs in the transport's trio
    thread; ``Discovery`` hands calls from other threads over."""

    def __init__(self, transport, config: DiscoveryConfig, stats: DiscoveryStats, *, clock: Callable[[], int],
                 guard: ReplayGuard | None = None, on_announce: Callable[[Message], None] | None = None,
                 banned=()) -> None:
        self.transport = transport
        self.config = config
        self.stats = stats
        self.clock = clock
        self.guard = guard or ReplayGuard(window=config.replay_window, max_skew_ms=config.max_skew_ms,
                                          max_senders=config.max_senders)
        self.on_announce = on_announce
        self.banned = banned  # a container of public keys whose announcements are refused
        self.router = None
        self.pubsub = None
        self._subscription = None
        self._nursery: trio.Nursery | None = None
        self._verified: OrderedDict[bytes, Message] = OrderedDict()  # message id -> validated, to deliver
        self._tokens = float(config.announce_burst)
        self._tokens_at = time.monotonic()
        self._pubsub_pending: set = set()
        self._publish_send, self._publish_recv = trio.open_memory_channel(config.publish_queue)

    async def open(self, stack: AsyncExitStack, host) -> None:
        """Start pubsub on the host, with our validator, subscribed to the topic."""
        self.router, self.pubsub = make_pubsub(host, self.config)
        guard_pubsub(host, self.pubsub, self.router.get_protocols(), self._push_error, self.count_stream_error)
        await stack.enter_async_context(background_trio_service(self.pubsub))
        await stack.enter_async_context(background_trio_service(self.router))
        with trio.fail_after(10):
            await self.pubsub.wait_until_ready()
        self.pubsub.set_topic_validator(ANNOUNCE_TOPIC, self._validate, False)
        self._subscription = await self.pubsub.subscribe(ANNOUNCE_TOPIC)

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        nursery.start_soon(self._deliver_loop)
        nursery.start_soon(self._publish_loop)

    # ---- ours

    def publish(self, sealed: bytes) -> bool:
        """Queue our own sealed ``announce`` envelope; False (the reason counted in
        ``stats.publish_dropped``) when too large, not an announcement of ours, over the pace,
        or the queue is full."""
        dropped = self.stats.publish_dropped
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
        if message.sender_id != self.transport.address:
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

    # ---- others'

    def _validate(self, forwarder, msg) -> bool:
        """py-libp2p's topic validator (sync, so no await between its seen-check and ours):
        True lets the message be delivered and relayed. Never raises."""
        try:
            peer = forwarder.to_base58()
        except Exception:  # noqa: BLE001
            peer = "?"
        try:
            reason = self._check(msg, peer)
        except Exception as exc:  # noqa: BLE001 - whatever a peer sent, it is a rejection
            logger.debug("announcement validator raised %s: %s", type(exc).__name__, exc)
            reason = VALIDATOR_ERROR
        if reason is None:
            self.stats.announces_valid += 1
            return True
        self.stats.rejected[reason] += 1
        by_peer = self.stats.rejected_from
        if peer in by_peer or len(by_peer) < _MAX_PEER_COUNTS:
            by_peer[peer] += 1
        logger.debug("rejected an announcement forwarded by %s: %s", peer, reason)
        if peer != "?" and reason not in _AUTHOR_STANDING:  # honest peers validate before they relay
            self.transport.strike(peer, reason)
        return False

    def _check(self, msg, forwarder: str) -> str | None:
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
        if (self.guard.highest(message.sender) is None
                and not self.transport.gate.may_introduce(forwarder, time.monotonic())):
            return NEW_AUTHORS
        self.guard.record(message.sender, message.seq, message.ts)
        self._verified[announce_msg_id(msg)] = message
        while len(self._verified) > _MAX_VERIFIED:
            self._verified.popitem(last=False)
        return None

    def _push_error(self) -> None:
        self.stats.rejected[PUSH_ERROR] += 1

    def count_stream_error(self) -> None:
        self.stats.rejected[STREAM_ERROR] += 1

    async def _deliver_loop(self) -> None:
        while True:
            msg = await self._subscription.get()
            message = self._verified.pop(announce_msg_id(msg), None)
            if message is None:
                continue  # not validated by us just now (e.g. a stale cache hit): never delivered
            if message.sender_id == self.transport.address or self.on_announce is None:
                continue
            self.stats.announces_delivered += 1
            try:
                self.on_announce(message)
            except Exception:  # noqa: BLE001
                self.stats.callback_errors += 1
                logger.exception("on_announce raised")

    # ---- peers

    def meet(self, peers: Iterable) -> None:
        """Open a pubsub stream to each connected peer (py-libp2p ids) pubsub does not know yet
        and that speaks gossipsub: a connection made before pubsub started fires no notifee."""
        if self.pubsub is None or self._nursery is None:
            return
        protocols = self.router.get_protocols()
        for pid in peers:  # not a peer whose identify names no gossipsub: it would refuse each round
            if (pid not in self.pubsub.peers and pid not in self._pubsub_pending
                    and speaks(self.pubsub.host, pid, protocols)):
                self._pubsub_pending.add(pid)
                self._nursery.start_soon(self._ensure_pubsub_peer, pid)

    async def _ensure_pubsub_peer(self, pid) -> None:
        try:
            with trio.move_on_after(10):
                await self.pubsub.ensure_peer_stream(pid, timeout=10.0)
        except Exception as exc:  # noqa: BLE001
            logger.debug("no pubsub stream to %s: %s", pid, exc)
        finally:
            self._pubsub_pending.discard(pid)
