"""The libp2p transport for the daemon: real hosts, Noise only, yamux, and our own bulk stream protocol.

    async with Libp2pTransport(identity, listen=["/ip4/0.0.0.0/tcp/4001"]).running() as transport:
        node = Node(identity, learner, transport, rule, exchange, clock=...)   # sets the receiver
        await transport.connect("/ip4/10.0.0.2/tcp/4001/p2p/12D3KooW...")
        node.neighbours = transport.connected_peers()
        node.publish()                      # transport.send(): queued, never blocks or raises

* **Identity.** The host key is the node's Ed25519 seed, so ``transport.address`` (the node id)
  is the libp2p peer id; inbound messages are attributed to the peer id that Noise authenticated.
* **Security: Noise only.** py-libp2p's default host also offers ``/plaintext/2.0.0`` (where a
  peer just *claims* a public key), TLS and SECIO; this host offers and accepts ``/noise`` alone.
  Muxer: yamux alone. A ``/udp/.../quic-v1`` listen address adds py-libp2p's QUIC transport,
  whose own TLS 1.3 (libp2p certificate extension) and streams replace Noise and yamux there.
* **Messages** travel on ``/manymodels/msg/1.0.0``: a stream carries a sequence of frames, each an
  8-byte big-endian length then that many bytes. A reader refuses a length above ``max_frame``
  before reading any of it (the stream is reset and ``stats.rejected_oversize`` counted; the
  connection and everything else keep working). Payloads go out and come in ``chunk_size`` at a
  time with backpressure; reads use our own loop, not py-libp2p's ``read_exactly`` (which gives up
  after 100 short reads). The transport does not verify signatures -- the node does
  (``protocol.open_envelope``) -- but it does enforce sizes.
* **Outbound**: ``send`` puts bytes on a bounded per-peer queue (count and bytes) served by one
  trio task, which dials if needed and opens or reuses one stream. Each peer has two such lanes,
  for messages up to ``small_frame`` bytes and for larger ones, so a hello or an announcement
  does not wait behind a 100 MB model (order is kept within a lane; the node's replay window
  tolerates the rest). A full queue, an unknown or unreachable peer, or a closed transport drops
  the message and counts it. Inbound, the bytes being read at once (``inbound_bytes``, counted as
  they arrive) and the open message streams per peer (``inbound_streams_per_peer``) are bounded
  too; a frame must arrive within ``read_timeout`` plus SECONDS_PER_MIB a MiB, and an inbound
  stream on which no frame begins for twice ``idle_timeout`` is reset (its sender, idle that
  long, has closed it; one that has not writes on a new stream).
* **The gate** (``gate.PeerGate``): before a frame's body is read, its peer must be admitted
  (not blocked, not throttled, within its frame rate); a refused frame's stream is reset unread.
  Oversize and truncated frames strike the peer, and so does the receiver for frames that fail
  verification (``strike``). A blocked peer is disconnected, dropped from the peerstore, reported
  to ``on_block`` listeners (the daemon's peer table, the DHT), and its new connections are closed
  as they open, until the block ends. One log line per block, none per frame.
* **Writes** time out (``write_timeout``, plus a second per MiB): a peer that stops reading
  cannot hold a lane.
* **Relays** (set up by ``reach.Reach``): ``connect`` dials ``/p2p-circuit`` addresses through a
  relay; ``listen_addrs`` includes our addresses through relays; ``path(peer)`` says whether we are
  connected directly or only through a relay, and ``path_bytes`` counts the bytes sent and received
  by path, per peer. A frame above ``small_frame`` crosses a relayed connection only if
  ``admit_relayed_bulk`` allows it (else ``stats.dropped_relay_budget``). Once a peer is also
  connected directly (a punched hole), its lanes move their streams to the direct connection.
* **Throughput**: see ``upstream`` (bigger yamux frames, event-driven window credit, a
  buffered Noise session): bench/bench_transfer.py measures it.

The whole transport lives in one trio run. ``send`` and ``set_receiver`` may be called from
another thread too; the receiver callback is always called in the trio thread.
"""
from __future__ import annotations

import logging
import math
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.abc import INotifee
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from manymodels.protocol import MAX_ENVELOPE_BYTES, Identity

from ..core.transport import Receiver
from .gate import BLOCKED, OK, PeerGate
from .logs import RateLimit
from .service import TrioService
from .upstream import BULK_MAX_FRAME, BULK_RECV_WINDOW, BufferedNoiseTransport, adopt_stream

logger = logging.getLogger(__name__)
logger.addFilter(RateLimit())  # a line per blocked peer, and peer ids cost nothing

MSG_PROTOCOL = "/manymodels/msg/1.0.0"
FRAME_HEADER = struct.Struct(">Q")
MiB = 1 << 20

DEFAULT_MAX_FRAME = MAX_ENVELOPE_BYTES  # the largest envelope the protocol allows
DEFAULT_CHUNK = 1 * MiB
SECONDS_PER_MIB = 4.0  # a frame's body may take read_timeout plus this per MiB (256 KiB/s)
DEFAULT_SMALL_FRAME = 256 * 1024  # up to this size a message takes the small lane to its peer


class FrameTooLarge(Exception):
    def __init__(self, length: int, detail: str) -> None:
        super().__init__(detail)
        self.length = length


class Truncated(Exception):
    pass


class Busy(Exception):
    """Too many bytes or streams in flight from peers: the frame is refused, not read."""


class Idle(Exception):
    """No frame began on an inbound stream for a while: it is reset (not the peer's fault)."""


class Refused(Exception):
    """The gate did not admit the peer's frame (throttled, over its rate, or blocked)."""


@dataclass
class Libp2pStats:
    messages_sent: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    bytes_received: int = 0
    dropped_queue_full: int = 0  # send() found the peer's queue full
    dropped_oversize: int = 0  # send() was given more than max_frame bytes
    dropped_unreachable: int = 0  # bad peer id, no address, dial or write failed
    dropped_not_running: int = 0  # send() before run() or after close()
    rejected_oversize: int = 0  # a peer announced a frame above max_frame
    rejected_busy: int = 0  # inbound_bytes or inbound_streams_per_peer would have been exceeded
    idle_closed: int = 0  # inbound streams reset after 2 * idle_timeout with no frame begun
    truncated: int = 0  # a peer's stream ended or stalled in the middle of a frame
    refused_by_gate: int = 0  # frames dropped unread: the peer was throttled, over its rate or blocked
    dropped_relay_budget: int = 0  # bulk frames not sent over a relayed connection: over the relay bulk budget
    blocked_connections: int = 0  # connections of blocked peers closed as they opened
    stream_errors: int = 0  # other inbound stream failures
    receiver_errors: int = 0  # the receiver callback raised
    rejected_by_peer: Counter = field(default_factory=Counter)  # peer id -> frames refused

    def frames_refused(self) -> dict[str, int]:
        """Inbound frames refused before verification, by why (none of them reach `rejected`)."""
        return {"too_large": self.rejected_oversize, "truncated": self.truncated, "in_flight": self.rejected_busy,
                "gate": self.refused_by_gate, "stream_error": self.stream_errors}

    @property
    def dropped_total(self) -> int:
        return (self.dropped_queue_full + self.dropped_oversize + self.dropped_unreachable
                + self.dropped_not_running)


_SENT, _WRITE_FAILED, _NO_STREAM, _OVER_RELAY_BUDGET = "sent", "write failed", "no stream", "over relay budget"
RELAYED, DIRECT = "relayed", "direct"
MAX_PATH_PEERS = 4096  # peers whose bytes by path are kept (least recently counted dropped)


@dataclass
class _Outbox:
    queue: deque = field(default_factory=deque)
    queued_bytes: int = 0
    wake: trio.Event = field(default_factory=trio.Event)
    stream: object | None = None


def key_pair_from_seed(seed: bytes):
    """The libp2p Ed25519 key pair for a 32-byte identity seed (same key, same peer id)."""
    return create_new_key_pair(bytes(seed))


def noise_only_host(seed: bytes, listen: Sequence[str] = (), *, buffered_noise: bool = True, **options):
    """A py-libp2p host with our key that speaks Noise and yamux only (no plaintext, TLS, SECIO,
    mplex). ``options`` go to ``libp2p.new_host`` (e.g. ``enable_mDNS=True``,
    ``bootstrap=[multiaddr, ...]``, ``connection_config``); mDNS and bootstrap are off unless given."""
    key_pair = key_pair_from_seed(seed)
    noise_cls = BufferedNoiseTransport if buffered_noise else NoiseTransport
    security = {NOISE_PROTOCOL_ID: noise_cls(key_pair, noise_privkey=create_x25519_key_pair().private_key)}
    for forbidden in ("key_pair", "sec_opt", "muxer_opt", "muxer_preference", "psk"):
        if forbidden in options:
            raise ValueError(f"{forbidden} is fixed by noise_only_host")
    options = {"enable_mDNS": False, "bootstrap": None, **options}
    return new_host(key_pair=key_pair, sec_opt=security, muxer_opt={YAMUX_PROTOCOL_ID: Yamux},
                    listen_addrs=[multiaddr.Multiaddr(a) for a in listen] or None, **options)


# --------------------------------------------------------------------------- framing


async def _read_some(stream, n: int) -> bytes:
    try:
        return await stream.read(n)
    except EOFError:  # StreamEOF / MuxedStreamEOF
        return b""


async def read_frame(stream, max_frame: int, *, chunk_size: int = DEFAULT_CHUNK, read_timeout: float = 60.0,
                     idle_timeout: float = math.inf, on_length=None, on_part=None) -> bytes | None:
    """One length-prefixed frame from a stream; None on a clean end of stream between frames;
    Idle when no frame begins within ``idle_timeout`` seconds.

    Raises FrameTooLarge before reading the body when the announced length is above
    ``max_frame``, and Truncated when the stream ends inside a frame, stalls inside one (its
    header or body) for ``read_timeout`` seconds, or has not brought the whole frame within
    ``read_timeout`` plus SECONDS_PER_MIB a MiB (a peer trickling a byte a minute cannot hold a
    frame's buffer for ever). ``on_length(n)``, if given, is called with the announced length
    before the body is read, and ``on_part(n)`` with the length of each part read before it is
    kept; either may raise to refuse the frame. Reads in chunks of at most ``chunk_size`` with
    no retry limit, into one buffer (a part kept apart costs ~40 bytes of overhead, so a body
    sent a byte at a time would cost 40 times its size)."""
    with trio.move_on_after(idle_timeout) as idle:
        first = await _read_some(stream, FRAME_HEADER.size)
    if idle.cancelled_caught:
        raise Idle(f"no frame begun in {idle_timeout:.0f} s")
    if not first:
        return None
    header = bytearray(first)
    deadline = trio.current_time() + read_timeout
    while len(header) < FRAME_HEADER.size:
        header += await _read_by(stream, FRAME_HEADER.size - len(header), deadline, read_timeout,
                                 f"inside a frame header ({len(header)} bytes)")
    (length,) = FRAME_HEADER.unpack(header)
    if on_length is not None:  # before the size check: a peer's header spam is metered too
        on_length(length)
    if length > max_frame:
        raise FrameTooLarge(length, f"frame of {length} bytes > limit {max_frame}")
    deadline = trio.current_time() + read_timeout + SECONDS_PER_MIB * length / MiB
    body = bytearray()
    while len(body) < length:
        part = await _read_by(stream, min(length - len(body), chunk_size), deadline, read_timeout,
                              f"with {length - len(body)} of {length} bytes to go")
        if on_part is not None:
            on_part(len(part))
        if not body and len(part) == length and type(part) is bytes:
            return part  # the whole body in one read: kept as it came, no copy
        body += part
    return bytes(body)


async def _read_by(stream, n: int, deadline: float, stall: float, where: str) -> bytes:
    """Up to n bytes (at least one), or Truncated: the stream ended, stalled for `stall` seconds,
    or passed the frame's `deadline` (trio time)."""
    with trio.move_on_at(min(deadline, trio.current_time() + stall)) as scope:
        part = await _read_some(stream, n)
    if scope.cancelled_caught:
        raise Truncated(f"no data for {stall:.0f} s, or past the frame's deadline, {where}")
    if not part:
        raise Truncated(f"stream ended {where}")
    return part


async def write_frame(stream, data: bytes, *, chunk_size: int = DEFAULT_CHUNK) -> None:
    """Write one frame, awaiting each chunk (the muxer's flow control is the backpressure)."""
    with memoryview(data) as mv:
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        total = len(mv)
        first = min(total, chunk_size - FRAME_HEADER.size)
        await stream.write(FRAME_HEADER.pack(total) + mv[:first])
        for i in range(first, total, chunk_size):
            await stream.write(mv[i:i + chunk_size])


# --------------------------------------------------------------------------- transport


class Libp2pTransport(TrioService):
    """The Transport and PeerNetwork interfaces (node/core/transport.py) over a real libp2p host."""

    def __init__(self, identity: Identity, *, listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
                 max_frame: int = DEFAULT_MAX_FRAME, chunk_size: int = DEFAULT_CHUNK,
                 queue_messages: int = 64, queue_bytes: int = 1024 * MiB,
                 dial_timeout: float = 10.0, read_timeout: float = 60.0, idle_timeout: float = 60.0,
                 inbound_bytes: int = 2048 * MiB, inbound_streams_per_peer: int = 8,
                 small_frame: int = DEFAULT_SMALL_FRAME,
                 recv_window: int = BULK_RECV_WINDOW, yamux_frame: int = BULK_MAX_FRAME,
                 buffered_noise: bool = True, host_options: dict | None = None, gate: PeerGate | None = None,
                 write_timeout: float = 30.0) -> None:
        super().__init__()
        self.identity = identity
        self.address: str = identity.peer_id
        self.max_frame = max_frame
        self.chunk_size = chunk_size
        self.queue_messages = queue_messages
        self.queue_bytes = queue_bytes
        self.small_frame = small_frame
        self.dial_timeout = dial_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.inbound_bytes = inbound_bytes
        self.inbound_streams_per_peer = inbound_streams_per_peer
        self.recv_window = recv_window
        self.yamux_frame = yamux_frame
        self.stats = Libp2pStats()
        self.gate = gate or PeerGate()
        self.write_timeout = write_timeout
        self.on_block: list[Callable[[str], None]] = []  # called with a peer id once it is blocked
        self.host = None  # the py-libp2p host, once run() has started (for pubsub, DHT, ...)
        # set by reach.Reach: dialing /p2p-circuit addresses, our relayed addresses, the bulk budget
        self.circuit_dialer: Callable | None = None  # async (multiaddr) -> connection through a relay
        self.relayed_addrs: list[str] = []
        self.admit_relayed_bulk: Callable[[str, int], bool] = lambda peer, nbytes: True
        self.path_bytes: dict[str, Counter] = {}  # peer id -> {"relayed_sent": n, "direct_received": n, ...}
        self._listen = list(listen)
        self._buffered_noise = buffered_noise
        self._host_options = dict(host_options or {})
        self._receiver: Receiver | None = None
        self._outboxes: dict[tuple[str, bool], _Outbox] = {}  # (peer id, small lane?) -> queue
        self._peer_ids: dict[str, ID] = {}
        self._inbound_reserved = 0  # bytes of frames being read right now, all peers together
        self._inbound_streams: Counter = Counter()  # peer id -> open inbound message streams

    # ---- the Transport interface

    def set_receiver(self, receiver: Receiver) -> None:
        self._receiver = receiver

    def send(self, peer: str, data: bytes) -> None:
        """Queue ``data`` for ``peer`` (a peer id); never blocks, never raises for a bad peer."""
        data = data if isinstance(data, bytes) else bytes(data)  # it may cross to the trio thread
        self.call_in_loop(self._enqueue, peer, data, ended=self._dropped_after_close)

    def _dropped_after_close(self) -> None:
        self.stats.dropped_not_running += 1

    # ---- lifecycle (TrioService: run, close, running, is_running)

    async def _open(self, stack) -> None:
        """The host, listening."""
        self.host = noise_only_host(self.identity.seed, self._listen, buffered_noise=self._buffered_noise,
                                    **self._host_options)
        if self.host.get_id().to_base58() != self.address:
            raise RuntimeError("libp2p derived a different peer id from our key")  # never, if keys agree
        await stack.enter_async_context(self.host.run([multiaddr.Multiaddr(a) for a in self._listen]))
        stack.push_async_callback(self._close_host)

    def _start(self, nursery: trio.Nursery) -> None:
        self.host.set_stream_handler(MSG_PROTOCOL, self._on_msg_stream)
        self.host.get_network().register_notifee(_Bouncer(self))

    def _closed(self) -> None:
        """Queued messages are dropped (counted)."""
        for ob in self._outboxes.values():
            self.stats.dropped_not_running += len(ob.queue)
            ob.queue.clear()
        self._outboxes.clear()

    async def _close_host(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self.host.close()

    # ---- the PeerNetwork interface, and what the daemon needs besides

    def listen_addrs(self) -> list[str]:
        """Our full multiaddrs, each ending in /p2p/<our peer id>."""
        if self.host is None:
            return []
        suffix = f"/p2p/{self.address}"
        return [a if a.endswith(suffix) else a + suffix for a in map(str, self.host.get_addrs())] + self.relayed_addrs

    async def connect(self, address: str) -> str:
        """Dial a peer at a multiaddr ending in /p2p/<peer id>; returns that peer id.

        Raises ValueError for a malformed address and ConnectionError when the dial fails
        (unreachable, refused, not Noise, or the key behind the address is another peer's)."""
        self._require_running()
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(address))
        except Exception as exc:
            raise ValueError(f"not a /p2p multiaddr: {address!r} ({exc})") from None
        if info.peer_id.to_base58() == self.address:
            raise ValueError("that address is this node's own")
        relayed = "/p2p-circuit" in address
        if relayed and self.circuit_dialer is None:
            raise ConnectionError(f"dialing {address}: this node does not dial through relays")
        try:
            with trio.fail_after(self.dial_timeout):
                if relayed:
                    await self.circuit_dialer(multiaddr.Multiaddr(address))
                else:
                    # py-libp2p refuses for 60 s any peer whose addresses all failed once (its
                    # swarm's negative cache), also one that restarted since; our callers keep
                    # their own backoff, so a dial we ask for is tried
                    self.host.get_network().unblock_peer(info.peer_id)
                    await self.host.connect(info)
        except trio.TooSlowError:
            raise ConnectionError(f"dialing {address} timed out after {self.dial_timeout:.0f} s") from None
        except Exception as exc:
            raise ConnectionError(f"dialing {address} failed: {type(exc).__name__}: {exc}") from None
        return info.peer_id.to_base58()

    def add_peer_addrs(self, peer: str, addrs: Sequence[str], ttl: int = 3600) -> None:
        """Remember where a peer listens so send() can dial it (e.g. from a bootstrap list)."""
        self._require_running()
        self.host.get_peerstore().add_addrs(ID.from_base58(peer), [multiaddr.Multiaddr(a) for a in addrs], ttl)

    def connected_peers(self) -> list[str]:
        if self.host is None:
            return []
        return sorted(p.to_base58() for p in self.host.get_connected_peers())

    def path(self, peer: str) -> str | None:
        """How we are connected to a peer now: DIRECT (any direct connection), RELAYED, or None."""
        pid = self._peer_id(peer)
        conns = self.host.get_network().get_connections(pid) if self.host is not None and pid else []
        if not conns:
            return None
        return RELAYED if all(_is_relayed(c) for c in conns) else DIRECT

    def peer_addrs(self, peer: str) -> list[str]:
        if self.host is None:
            return []
        try:
            return [str(a) for a in self.host.get_peerstore().addrs(ID.from_base58(peer))]
        except Exception:
            return []

    async def disconnect(self, peer: str) -> None:
        self._require_running()
        await self.host.disconnect(ID.from_base58(peer))

    def queued(self, peer: str) -> int:
        """Messages waiting for ``peer`` (both lanes)."""
        return sum(len(ob.queue) for (p, _), ob in self._outboxes.items() if p == peer)

    def queued_bytes(self, peer: str | None = None) -> int:
        """Bytes waiting for ``peer`` (both lanes), or for every peer."""
        return sum(ob.queued_bytes for (p, _), ob in self._outboxes.items() if peer is None or p == peer)

    def strike(self, peer: str, reason: str) -> None:
        """A frame from ``peer`` failed (the receiver's verdict): count it; block the peer if due.
        May be called from another thread (a verifier's)."""
        self.call_in_loop(self._strike, peer, reason)

    def _strike(self, peer: str, reason: str) -> None:
        if self.gate.strike(peer, reason, time.monotonic()) == BLOCKED:
            self._block(peer)

    def _block(self, peer: str) -> None:
        logger.warning("blocked %s for %.0f s: its frames kept failing", peer, self.gate.config.block_s)
        for key in [k for k in self._outboxes if k[0] == peer]:
            ob = self._outboxes[key]
            while len(ob.queue) > 1:  # the head may be being written: its lane's task pops it
                ob.queued_bytes -= len(ob.queue.pop())
        pid = self._peer_id(peer)
        if pid is not None and self.host is not None:
            try:
                self.host.get_peerstore().clear_addrs(pid)
            except Exception:  # noqa: BLE001 -- a peerstore without the peer
                pass
            self._nursery.start_soon(_quietly, self.host.disconnect(pid))
        for listener in self.on_block:
            listener(peer)

    # ---- internals: outbound

    def _require_running(self) -> None:
        if not self._running:
            raise RuntimeError("the transport is not running (use `async with transport.running()`)")

    def _peer_id(self, peer: str) -> ID | None:
        pid = self._peer_ids.get(peer)
        if pid is None:
            try:
                pid = ID.from_base58(peer)
            except Exception:
                return None
            if len(self._peer_ids) > 65536:
                self._peer_ids.clear()
            self._peer_ids[peer] = pid
        return pid

    def _enqueue(self, peer: str, data: bytes) -> None:
        stats = self.stats
        if not self._running:
            stats.dropped_not_running += 1
            return
        if len(data) > self.max_frame:
            stats.dropped_oversize += 1
            return
        if peer == self.address or self._peer_id(peer) is None:
            stats.dropped_unreachable += 1
            return
        key = (peer, len(data) <= self.small_frame)
        ob = self._outboxes.get(key)
        if ob is None:
            ob = self._outboxes[key] = _Outbox()
            self._nursery.start_soon(self._serve_peer, key, ob)
        if len(ob.queue) >= self.queue_messages or ob.queued_bytes + len(data) > self.queue_bytes:
            stats.dropped_queue_full += 1
            return
        ob.queue.append(data)
        ob.queued_bytes += len(data)
        ob.wake.set()

    async def _serve_peer(self, key: tuple[str, bool], ob: _Outbox) -> None:
        pid = self._peer_id(key[0])
        stats = self.stats
        try:
            while True:
                if not ob.queue:
                    ob.wake = trio.Event()
                    with trio.move_on_after(self.idle_timeout):
                        await ob.wake.wait()
                    if not ob.queue:
                        return
                data = ob.queue[0]
                outcome = await self._deliver(pid, ob, data)
                ob.queue.popleft()
                ob.queued_bytes -= len(data)
                if outcome is _SENT:
                    stats.messages_sent += 1
                    stats.bytes_sent += len(data)
                elif outcome is _OVER_RELAY_BUDGET:
                    stats.dropped_relay_budget += 1
                elif outcome is _WRITE_FAILED:  # this message only (e.g. the peer refused its size)
                    stats.dropped_unreachable += 1
                else:  # no stream at all: what is queued behind would fail the same way
                    stats.dropped_unreachable += 1 + len(ob.queue)
                    ob.queue.clear()
                    ob.queued_bytes = 0
                    return
        finally:
            if self._outboxes.get(key) is ob:
                del self._outboxes[key]
            stats.dropped_not_running += len(ob.queue)  # only non-empty when cancelled
            ob.queue.clear()
            stream, ob.stream = ob.stream, None
            if stream is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await _quietly(stream.close())

    async def _deliver(self, pid: ID, ob: _Outbox, data: bytes):
        """Write one frame, on the peer's open stream if there is one. A reused stream may have
        been closed by the peer meanwhile: then one retry on a fresh stream."""
        while True:
            if ob.stream is not None and _is_relayed(ob.stream.swarm_conn) and self.path(pid.to_base58()) == DIRECT:
                stream, ob.stream = ob.stream, None  # a hole was punched: new streams take the direct connection
                await _quietly(stream.close())
            reused = ob.stream is not None
            if not reused:
                try:
                    with trio.fail_after(self.dial_timeout):
                        stream = await self.host.new_stream(pid, [MSG_PROTOCOL])
                except Exception as exc:  # includes TooSlowError
                    logger.debug("cannot open a stream to %s: %s: %s", pid, type(exc).__name__, exc)
                    return _NO_STREAM
                adopt_stream(stream, max_frame=self.yamux_frame)
                ob.stream = stream
            peer, relayed = pid.to_base58(), _is_relayed(ob.stream.swarm_conn)
            if relayed and len(data) > self.small_frame and not self.admit_relayed_bulk(peer, len(data)):
                return _OVER_RELAY_BUDGET
            try:
                with trio.fail_after(self.write_timeout + len(data) / MiB):
                    await write_frame(ob.stream, data, chunk_size=self.chunk_size)
                self._count_path(peer, relayed, "sent", len(data))
                return _SENT
            except Exception as exc:
                logger.debug("writing to %s failed: %s: %s", pid, type(exc).__name__, exc)
                stream, ob.stream = ob.stream, None
                await _quietly(stream.reset())
                if not reused:
                    return _WRITE_FAILED

    # ---- internals: inbound

    async def _on_msg_stream(self, stream) -> None:
        try:
            peer = stream.muxed_conn.peer_id.to_base58()  # authenticated by Noise
        except Exception:
            await _quietly(stream.reset())
            return
        stats = self.stats
        blocked = self.gate.is_blocked(peer, time.monotonic())
        if blocked or self._inbound_streams[peer] >= self.inbound_streams_per_peer:
            if blocked:
                stats.refused_by_gate += 1
            else:
                stats.rejected_busy += 1
                stats.rejected_by_peer[peer] += 1
            await _quietly(stream.reset())
            return
        self._inbound_streams[peer] += 1
        try:
            bulk = adopt_stream(stream, max_frame=self.yamux_frame)
            if bulk is not None:
                await bulk.grow_recv_window(self.recv_window)
            await self._read_frames(stream, peer)
        except trio.Cancelled:
            raise
        except Exception as exc:
            self._refused(peer, exc)
            await _quietly(stream.reset())
            return
        finally:
            self._inbound_streams[peer] -= 1
            if self._inbound_streams[peer] <= 0:
                del self._inbound_streams[peer]
        await _quietly(stream.close())

    async def _read_frames(self, stream, peer: str) -> None:
        """Frames until a clean end of stream, each admitted by the gate before its body is read,
        its bytes counted against the budget of bytes being read from all peers as they arrive
        (not as announced: an announced length costs nothing, so throwaway keys announcing big
        frames and sending nothing cannot use up the budget and shut honest peers out), then
        handed to the receiver."""
        stats = self.stats
        reserved = 0

        def admit(length: int) -> None:
            standing = self.gate.admit(peer, time.monotonic())
            if standing != OK:
                raise Refused(standing)

        def reserve(size: int) -> None:
            nonlocal reserved
            if self._inbound_reserved + size > self.inbound_bytes:
                raise Busy(f"{reserved + size} bytes of a frame read, {self._inbound_reserved} already in flight")
            self._inbound_reserved += size
            reserved += size

        while True:
            try:
                data = await read_frame(stream, self.max_frame, chunk_size=self.chunk_size,
                                        read_timeout=self.read_timeout, idle_timeout=2 * self.idle_timeout,
                                        on_length=admit, on_part=reserve)
            except Idle:  # a sender closes its idle streams after idle_timeout: this one is forgotten,
                stats.idle_closed += 1  # reset so that a sender still holding it writes on a new one
                await _quietly(stream.reset())
                return
            finally:
                self._inbound_reserved -= reserved
                reserved = 0
            if data is None:
                return
            stats.messages_received += 1
            stats.bytes_received += len(data)
            self._count_path(peer, _is_relayed(stream.swarm_conn), "received", len(data))
            receiver = self._receiver
            if receiver is None:
                continue
            try:
                receiver(peer, data)
            except Exception:
                stats.receiver_errors += 1
                logger.exception("the receiver raised on a message from %s", peer)
            del data

    def _count_path(self, peer: str, relayed: bool, way: str, nbytes: int) -> None:
        counts = self.path_bytes.pop(peer, None) or Counter()
        counts[f"{RELAYED if relayed else DIRECT}_{way}"] += nbytes
        self.path_bytes[peer] = counts  # most recently counted last
        while len(self.path_bytes) > MAX_PATH_PEERS:
            del self.path_bytes[next(iter(self.path_bytes))]

    def _refused(self, peer: str, exc: Exception) -> None:
        """Count why a peer's stream was reset; strike the peer where it is at fault."""
        stats = self.stats
        if isinstance(exc, Refused):
            stats.refused_by_gate += 1
            if exc.args[0] == BLOCKED:
                self._block(peer)
            return
        if isinstance(exc, Busy):  # not the peer's fault alone: no strike
            stats.rejected_busy += 1
        elif isinstance(exc, (FrameTooLarge, Truncated)):
            stats.rejected_oversize += isinstance(exc, FrameTooLarge)
            stats.truncated += isinstance(exc, Truncated)
            # a frame within the protocol's limit but over this node's is refused unread (free):
            # an honest peer may offer what this node does not take (a bigger model's weights)
            self.strike(peer, "truncated" if isinstance(exc, Truncated) else
                        "too_large" if exc.length > MAX_ENVELOPE_BYTES else "unwanted_size")
        else:
            stats.stream_errors += 1
        if len(stats.rejected_by_peer) < 4096 or peer in stats.rejected_by_peer:
            stats.rejected_by_peer[peer] += 1
        logger.debug("a stream from %s failed: %s: %s", peer, type(exc).__name__, exc)


class _Bouncer(INotifee):
    """Closes a blocked peer's connection as it opens (its dials and ours alike)."""

    def __init__(self, transport: Libp2pTransport) -> None:
        self.transport = transport

    async def connected(self, network, conn) -> None:
        peer = conn.muxed_conn.peer_id
        if self.transport.gate.is_blocked(peer.to_base58(), time.monotonic()):
            self.transport.stats.blocked_connections += 1
            await _quietly(network.close_peer(peer))

    async def opened_stream(self, network, stream) -> None:
        pass

    async def closed_stream(self, network, stream) -> None:
        pass

    async def disconnected(self, network, conn) -> None:
        pass

    async def listen(self, network, multiaddr) -> None:
        pass

    async def listen_close(self, network, multiaddr) -> None:
        pass


def _is_relayed(conn) -> bool:
    """Whether a swarm connection runs through a relay (its transport address is a /p2p-circuit one)."""
    try:
        return any("/p2p-circuit" in str(a) for a in conn.get_transport_addresses())
    except Exception:  # noqa: BLE001 -- a connection without transport addresses is a direct one here
        return False


async def _quietly(awaitable) -> None:
    try:
        await awaitable
    except trio.Cancelled:
        raise
    except Exception:
        pass

