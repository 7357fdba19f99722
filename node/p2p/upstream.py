"""Everything that depends on py-libp2p's internals, for exactly the version we pin
(``PINNED_VERSION``, as in pyproject.toml). Installing any of it on another version raises
:class:`UnsupportedLibp2p` with one line that says so: the private names used here
(``_write_frame``, ``_finalize_stream_locked``, ``_auto_tune_and_send_window_update``,
``_read_data_body``, ``_yamux_data_read_timeout``, ``_handle_dead_peer``,
``_query_single_peer_for_closest``, ``_get_providers_from_peer_with_closers``, the provider
store's tables) may change in any release.
Nothing in site-packages is patched: subclasses, and wrappers on our own instances.

**Throughput** (libp2p.py's hosts and streams).
On loopback (bench/bench_transfer.py), a bare py-libp2p stream moves 100-150 MB/s, 5-15 % of a
raw trio socket. The cipher is not the reason (ChaCha20-Poly1305 runs at 1.7-3 GB/s here);
profiling shows per-frame Python overhead and copies:

* **yamux frames are capped at 64 KiB** (module constant ``MAX_MESSAGE_SIZE``), and every frame
  costs ~20 trio reschedules and ~28 lock operations on the two sides together, plus a
  WINDOW_UPDATE frame back per read. A 64 KiB frame plus its 12-byte header is also 13 bytes over
  the Noise plaintext limit (65519), so each one becomes *two* Noise messages. ->
  :class:`BulkYamuxStream` writes DATA frames of up to 1 MiB (legal yamux: a frame may be as
  large as the receive window; py-libp2p's reader accepts up to 16 MiB), straight from a
  memoryview, and its ``read`` hands the muxer's receive buffer over instead of copying it twice.
  :class:`BulkYamux` reads each DATA frame's body with one call to the buffered Noise session
  instead of ``read_exactly`` (two copies fewer per frame, and no 100-short-reads limit).
* **a sender that runs out of window polls every 10 ms** (``trio.sleep(0.01)``). ->
  BulkYamuxStream is woken by the WINDOW_UPDATE itself (``send_window`` is a property whose
  setter fires an event), and the reader grants a 16 MiB window up front
  (:meth:`BulkYamuxStream.grow_recv_window`).
* **the Noise session reads each 2-byte length prefix and each body with separate ``recv``
  calls**, copies every message three times on the way (``read_exactly``, ``BytesIO``), and
  sends every Noise message with its own ``send``. -> :class:`BufferedNoiseTransport` (a drop-in
  for the Noise transport in ``sec_opt``) returns a session that asks the socket for up to 1 MiB
  at a time, decrypts straight out of that buffer through memoryviews, and sends one yamux
  frame's Noise messages with a single ``send``. Handshake and wire format are py-libp2p's own
  (``/noise``, XX).

What is left (see bench_transfer.py --profile) is mostly C: the two cipher passes, the socket
calls, joining Noise messages and the final message, and the copy into the yamux stream buffer.

Upstream changes that would make this part unnecessary: a configurable yamux max frame size;
``MuxerMultistream.new_conn`` honouring the class given in ``muxer_opt`` for yamux (it hard-codes
``Yamux``); a ``Yamux.stream_class`` attribute (streams are built inline in ``open_stream`` and
``handle_incoming``); an event instead of ``sleep(0.01)`` polling for window credit; a buffered
Noise reader. Until then a bulk stream is *adopted* (:func:`adopt_stream`): the ``YamuxStream``
object of one of our own protocol streams is given the subclass, and its connection (when it runs
over our Noise session) the BulkYamux reader, which behaves the same for every protocol. Streams of
other protocols (identify, ping, pubsub, DHT) keep upstream's stream class.

**Guards** (discovery's pubsub and DHT). py-libp2p runs stream handlers and ``push_msg`` as
service tasks, and a task that raises stops its service -- for a stream handler the swarm, the
whole host. A peer's bytes make them raise (an RPC that does not parse: protobuf's DecodeError; a
message ``key`` that does not deserialize), so :func:`guard_stream_handler` and
:func:`guard_push_msg` wrap them and count instead.

**DHT provider records**: :func:`providers_from_peer` (one peer's answer, which py-libp2p's own
``find_providers`` skips once it holds a record) and :func:`stop_providing`.

**DHT routing table**: :func:`kad_servers_only`. py-libp2p puts every peer that opens a
``/ipfs/kad/1.0.0`` stream to us into its routing table unchecked (``_do_handle_stream`` passes
``skip_server_mode_check``), and any peer whose identify has not come in yet. A DHT *client*
(js-libp2p's mode off a public address, a home node's) queries but serves nothing: once in the
table -- or merely in the peerstore, which a lookup falls back on while the table is small -- it
was queried and sent ``ADD_PROVIDER`` every period (refused: ``protocol not supported``, a log
line each), and its ephemeral port redialed after it left.
"""
from __future__ import annotations

import functools
import importlib.metadata
import logging
import struct
from collections import deque
from collections.abc import Callable

import trio
from libp2p.kad_dht.common import PROTOCOL_ID as DHT_PROTOCOL_ID
from libp2p.io.exceptions import ConnectionClosedError, IncompleteReadError
from libp2p.security.noise.io import NoiseTransportReadWriter
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.exceptions import MuxedStreamEOF, MuxedStreamError, MuxedStreamReset
from libp2p.stream_muxer.yamux.yamux import (
    DEFAULT_WINDOW_SIZE,
    MAX_WINDOW_SIZE,
    TYPE_DATA,
    YAMUX_HEADER_FORMAT,
    Yamux,
    YamuxStream,
    _yamux_data_read_timeout,
)


logger = logging.getLogger(__name__)

PINNED_VERSION = "0.8.1"  # the py-libp2p release this module is written against (pyproject.toml pins it)
NOISE_MAX_PLAINTEXT = 65535 - 16  # Noise message limit minus the Poly1305 tag
NOISE_READ_SIZE = 1 << 20  # bytes asked of the socket per recv
BULK_MAX_FRAME = 1 << 20  # largest yamux DATA frame a bulk stream writes
BULK_RECV_WINDOW = MAX_WINDOW_SIZE  # 16 MiB: what a bulk reader grants its sender
WINDOW_WAIT_TIMEOUT = 60.0  # a sender gives up after this long without any window credit
_CLOSE_POLL = 0.25  # how often a window-starved sender checks that the stream still lives

_HEADER = struct.Struct(YAMUX_HEADER_FORMAT)


class UnsupportedLibp2p(RuntimeError):
    """The installed py-libp2p is not the release this module's plumbing is written for."""


@functools.cache
def installed_version() -> str:
    return importlib.metadata.version("libp2p")


def require_pinned() -> None:
    """Raise UnsupportedLibp2p unless the installed py-libp2p is ``PINNED_VERSION``. Called by
    everything here that installs plumbing (a Noise transport, a pubsub guard, ...)."""
    version = installed_version()
    if version != PINNED_VERSION:
        raise UnsupportedLibp2p(f"py-libp2p {version} is installed, but manymodels' libp2p plumbing "
                                f"(node/p2p/upstream.py) is written for {PINNED_VERSION} only: "
                                f"pip install libp2p=={PINNED_VERSION}")


# --------------------------------------------------------------------------- Noise


class BufferedNoiseSession(SecureSession):
    """A Noise transport session with buffered, low-copy reads and one ``send`` per write.

    Built from the session the stock handshake returns, so the handshake, peer ids and keys are
    exactly py-libp2p's; only the post-handshake read/write path differs."""

    def __init__(self, base: SecureSession) -> None:
        super().__init__(
            local_peer=base.local_peer,
            local_private_key=base.local_private_key,
            remote_peer=base.remote_peer,
            remote_permanent_pubkey=base.remote_permanent_pubkey,
            is_initiator=base.is_initiator,
            conn=base.conn,
        )
        rw = base.conn
        protocol = rw.noise_state.noise_protocol
        # NoiseConnection.encrypt/decrypt insist on `bytes`; the cipher states take memoryviews.
        self._init_io(protocol.cipher_state_encrypt.encrypt_with_ad,
                      protocol.cipher_state_decrypt.decrypt_with_ad,
                      rw.read_writer.read_write_closer)

    def _init_io(self, encrypt, decrypt, raw) -> None:
        """``encrypt(ad, plaintext)`` / ``decrypt(ad, ciphertext)`` advance the session's nonces;
        ``raw`` is the connection under Noise (``read(n)``, ``write(data)``)."""
        self._encrypt = encrypt
        self._decrypt = decrypt
        self._raw = raw
        self._pending = bytearray()  # an incomplete Noise message (with its length prefix)
        self._plain: deque[bytes] = deque()  # decrypted, not yet read
        self._plain_len = 0
        self._offset = 0  # bytes of _plain[0] already read
        self._write_lock = trio.Lock()
        self._broken: Exception | None = None

    def _push(self, plaintext: bytes) -> None:
        if plaintext:
            self._plain.append(plaintext)
            self._plain_len += len(plaintext)

    def _open(self, ciphertext) -> bytes:
        try:
            return self._decrypt(None, ciphertext)
        except Exception as exc:  # InvalidTag: the connection is corrupt or forged
            self._broken = ConnectionClosedError(f"Noise decryption failed: {type(exc).__name__}")
            raise self._broken from exc

    async def _fill(self) -> bool:
        """Read once from the socket and decrypt every complete Noise message; False at EOF."""
        if self._broken is not None:
            raise self._broken
        data = await self._raw.read(NOISE_READ_SIZE)
        if not data:
            return False
        n = len(data)
        pos = 0
        with memoryview(data) as mv:
            pending = self._pending
            if pending:  # finish the message that straddled the previous read
                if len(pending) < 2:
                    take = min(2 - len(pending), n)
                    pending += mv[:take]
                    pos = take
                if len(pending) >= 2:
                    need = 2 + ((pending[0] << 8) | pending[1]) - len(pending)
                    take = min(need, n - pos)
                    pending += mv[pos:pos + take]
                    pos += take
                    if take == need:
                        with memoryview(pending) as pmv:
                            plaintext = self._open(pmv[2:])
                        pending.clear()
                        self._push(plaintext)
            while n - pos >= 2:
                length = (data[pos] << 8) | data[pos + 1]
                if n - pos - 2 < length:
                    break
                self._push(self._open(mv[pos + 2:pos + 2 + length]))
                pos += 2 + length
            if pos < n:
                pending += mv[pos:]
        return True

    def _take(self, k: int) -> bytes:
        parts = []
        need = k
        while need:
            piece = self._plain[0]
            avail = len(piece) - self._offset
            if avail <= need:
                parts.append(piece if self._offset == 0 else memoryview(piece)[self._offset:])
                self._plain.popleft()
                self._offset = 0
                need -= avail
            else:
                parts.append(memoryview(piece)[self._offset:self._offset + need])
                self._offset += need
                need = 0
        self._plain_len -= k
        if len(parts) == 1 and type(parts[0]) is bytes:
            return parts[0]
        return b"".join(parts)

    async def read(self, n: int | None = None) -> bytes:
        """Up to ``n`` bytes (all buffered bytes for None); like SecureSession, waits for ``n``
        bytes unless the connection ends first, and raises if it ended with nothing buffered."""
        if n == 0:
            return b""
        while self._plain_len == 0:
            if not await self._fill():
                raise ConnectionClosedError("Connection closed")
        if n is None or n < 0:
            return self._take(self._plain_len)
        while self._plain_len < n:
            if not await self._fill():
                break
        return self._take(min(n, self._plain_len))

    async def write(self, data: bytes) -> None:
        with memoryview(data) as mv:
            if mv.ndim != 1 or mv.itemsize != 1:
                mv = mv.cast("B")
            async with self._write_lock:  # nonces must go out in the order they were used
                parts = []
                for i in range(0, len(mv), NOISE_MAX_PLAINTEXT):
                    ciphertext = self._encrypt(None, mv[i:i + NOISE_MAX_PLAINTEXT])
                    parts.append(len(ciphertext).to_bytes(2, "big"))
                    parts.append(ciphertext)
                if parts:
                    await self._raw.write(b"".join(parts))


class BufferedNoiseTransport(NoiseTransport):
    """``/noise`` (XX) exactly as py-libp2p does it, with :class:`BufferedNoiseSession` after the
    handshake. Use it in ``new_host(sec_opt={NOISE_PROTOCOL_ID: BufferedNoiseTransport(...)})``."""

    def __init__(self, *args, **kwargs) -> None:
        require_pinned()
        super().__init__(*args, **kwargs)

    @staticmethod
    def _wrap(session):
        if isinstance(session, SecureSession) and isinstance(session.conn, NoiseTransportReadWriter):
            return BufferedNoiseSession(session)
        return session  # an upstream change we do not know: keep its own session

    async def secure_inbound(self, conn):
        return self._wrap(await super().secure_inbound(conn))

    async def secure_outbound(self, conn, peer_id):
        return self._wrap(await super().secure_outbound(conn, peer_id))


# --------------------------------------------------------------------------- yamux


class BulkYamuxStream(YamuxStream):
    """A yamux stream that writes large frames and waits for window credit on an event."""

    max_frame = BULK_MAX_FRAME
    window_wait_timeout = WINDOW_WAIT_TIMEOUT

    # The muxer's reader does `stream.send_window += increment` under window_lock; as a property
    # that assignment also wakes a writer waiting for credit.
    @property
    def send_window(self) -> int:
        return self._bulk_send_window

    @send_window.setter
    def send_window(self, value: int) -> None:
        self._bulk_send_window = value
        if value > 0:
            self._bulk_window_event.set()

    async def write(self, data: bytes) -> None:
        with memoryview(data) as mv:
            if mv.ndim != 1 or mv.itemsize != 1:
                mv = mv.cast("B")
            total = len(mv)
            sent = 0
            while sent < total:
                frame = None
                async with self.rw_lock.write_lock():
                    if self.send_closed:
                        raise MuxedStreamError("Stream is closed for sending")
                    async with self.window_lock:
                        if self.closed:
                            raise MuxedStreamError("Stream is closed")
                        window = self._bulk_send_window
                        if window > 0:
                            size = min(window, self.max_frame, total - sent)
                            self._bulk_send_window = window - size
                            frame = _HEADER.pack(0, TYPE_DATA, 0, self.stream_id, size) + mv[sent:sent + size]
                        else:
                            self._bulk_window_event = trio.Event()
                if frame is None:
                    await self._wait_for_window()
                    continue
                await self.conn._write_frame(frame)
                sent += size

    async def read(self, n: int | None = -1) -> bytes:
        """Up to ``n`` bytes, as upstream's ``read(n)``, but when the caller takes everything
        buffered the buffer itself is handed over instead of copied twice (``bytes(buf[:n])``).
        Returns a bytes-like object (a bytearray when handed over)."""
        if n is None or n < 0:
            return await super().read(n)
        if n == 0:
            return b""
        conn, sid = self.conn, self.stream_id
        while True:
            async with conn.streams_lock:
                if sid not in conn.streams or conn.event_shutting_down.is_set():
                    raise MuxedStreamEOF("Stream closed")
                buffer = conn.stream_buffers.get(sid)
                if buffer is None:
                    if self.reset_received:
                        raise MuxedStreamReset("Stream was reset")
                    raise MuxedStreamEOF("Stream buffer closed")
                if buffer and (self.recv_closed or not self.reset_received):
                    if n >= len(buffer):
                        data = buffer
                        conn.stream_buffers[sid] = bytearray()
                    else:
                        data = buffer[:n]
                        del buffer[:n]
                    if self.closed and not conn.stream_buffers[sid]:
                        conn._finalize_stream_locked(self, fully_closed=True)
                    break
                if self.reset_received:
                    raise MuxedStreamReset("Stream was reset")
                if self.recv_closed:
                    raise MuxedStreamEOF("Stream is closed for receiving")
                if self.closed:
                    raise MuxedStreamReset("Stream is reset or closed")
            try:
                await conn.stream_events[sid].wait()
                conn.stream_events[sid] = trio.Event()
            except KeyError:
                raise MuxedStreamEOF("Stream was removed") from None
        await self._auto_tune_and_send_window_update(bytes_read=len(data))
        return data

    async def _wait_for_window(self) -> None:
        self._zero_window_waits += 1
        deadline = trio.current_time() + self.window_wait_timeout
        while self._bulk_send_window <= 0:
            if self.closed or self.send_closed or self.conn.event_shutting_down.is_set():
                raise MuxedStreamError("Stream closed while waiting for window update")
            if trio.current_time() >= deadline:
                raise MuxedStreamError(f"No window update for {self.window_wait_timeout:.0f} s")
            with trio.move_on_after(_CLOSE_POLL):
                await self._bulk_window_event.wait()

    async def grow_recv_window(self, target: int = BULK_RECV_WINDOW) -> None:
        """Let the sender have up to ``target`` bytes in flight (yamux WINDOW_UPDATE)."""
        target = min(target, MAX_WINDOW_SIZE)
        async with self.window_lock:
            delta = target - self.recv_window
            if delta <= 0:
                return
            self.recv_window += delta
            self.target_recv_window = max(self.target_recv_window, target)
        await self.send_window_update(delta)


class BulkYamux(Yamux):
    """A yamux connection over a :class:`BufferedNoiseSession` that reads each DATA frame's body
    with one call to the session (which waits for all of it), instead of ``read_exactly``: two
    copies fewer per frame, and no 100-short-reads limit."""

    async def _read_data_body(self, length: int) -> bytes:
        with trio.fail_after(_yamux_data_read_timeout()):
            data = await self.secured_conn.read(length)
        if len(data) != length:
            raise IncompleteReadError(f"Connection closed during a DATA frame: expected {length} bytes "
                                      f"but received {len(data)}", expected_bytes=length,
                                      received_bytes=len(data))
        return data


def adopt_connection(muxed_conn) -> bool:
    """Give a yamux connection over our buffered Noise session the :class:`BulkYamux` reader.
    The reader task picks the new method up at its next frame; the behaviour is the same."""
    if isinstance(muxed_conn, BulkYamux):
        return True
    if type(muxed_conn) is Yamux and isinstance(muxed_conn.secured_conn, BufferedNoiseSession):
        muxed_conn.__class__ = BulkYamux
        return True
    return False


def adopt_stream(net_stream, *, max_frame: int | None = None) -> BulkYamuxStream | None:
    """Give a libp2p stream's yamux stream the bulk behaviour; None if it is not yamux."""
    require_pinned()
    muxed = getattr(net_stream, "muxed_stream", None)
    adopt_connection(getattr(muxed, "conn", None))
    if type(muxed) is YamuxStream:
        state = muxed.__dict__
        # No await between these lines, so no other task sees a half-adopted stream.
        muxed._bulk_send_window = state.pop("send_window", DEFAULT_WINDOW_SIZE)
        muxed._bulk_window_event = trio.Event()
        muxed.__class__ = BulkYamuxStream
    if not isinstance(muxed, BulkYamuxStream):
        return None
    if max_frame is not None:
        muxed.max_frame = max(1, min(max_frame, MAX_WINDOW_SIZE))
    return muxed


# --------------------------------------------------------------------------- pubsub and DHT


def guard_stream_handler(host, protocols, handler, on_error: Callable[[], None], cleanup=None) -> None:
    """Register ``handler`` for ``protocols`` wrapped so that nothing it raises escapes (it would
    stop the swarm: the whole host). A stream whose handler raised is reset, the error counted
    (``on_error()``) and ``cleanup(stream)`` called."""
    require_pinned()

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


def guard_pubsub(host, pubsub, protocols, on_push_error: Callable[[], None],
                 on_stream_error: Callable[[], None]) -> None:
    """A pubsub whose ``push_msg`` and stream handler (for ``protocols``) never raise; a peer
    whose pubsub stream failed is dropped from pubsub's tables, as py-libp2p does when a stream
    ends normally."""
    guard_push_msg(pubsub, on_push_error)

    def dead(stream) -> None:
        pubsub._handle_dead_peer(stream.muxed_conn.peer_id)
    guard_stream_handler(host, protocols, pubsub.stream_handler, on_stream_error, dead)


def guard_push_msg(pubsub, on_error: Callable[[], None]) -> None:
    """This pubsub instance's ``push_msg`` (run for each received message as a service task)
    swallows and counts what it raises instead of stopping the pubsub service."""
    require_pinned()
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


async def providers_from_peer(dht, peer_id, key: bytes) -> list:
    """The provider records (PeerInfo) one peer answers for a DHT key."""
    require_pinned()
    providers, _closer = await dht.provider_store._get_providers_from_peer_with_closers(peer_id, key)
    return providers


def speaks(host, peer_id, protocols) -> bool:
    """Whether a peer may be asked for one of ``protocols``: identify lists one of them; or we are
    not connected to it, so identify could not tell (e.g. a DHT server named by another server's
    answer); never a connected peer whose identify has not come in yet."""
    try:
        known = host.get_peerstore().get_protocols(peer_id)
    except Exception:  # noqa: BLE001 -- not in the peerstore
        known = []
    if known:
        return any(str(p) in known for p in protocols)
    return not host.get_network().get_connections(peer_id)


def serves_kad(host, peer_id) -> bool:
    """Whether a peer may be in the DHT's routing table (``speaks`` the kad protocol)."""
    return speaks(host, peer_id, [DHT_PROTOCOL_ID])


def kad_servers_only(dht, host) -> None:
    """Only peers that ``serves_kad`` go into the DHT's routing table, whoever adds them, and
    only they are asked in a lookup (whose fallback, while the table is small, takes every
    connected peer and every peerstore entry) or sent ``ADD_PROVIDER`` (sent to what a lookup found)."""
    require_pinned()
    table, routing = dht.routing_table, dht.peer_routing
    add_peer, find_closest, ask_one = table.add_peer, routing.find_closest_peers_network, \
        routing._query_single_peer_for_closest

    async def add_server(peer, *, skip_server_mode_check: bool = False) -> bool:
        if not serves_kad(host, getattr(peer, "peer_id", peer)):
            return False
        return await add_peer(peer, skip_server_mode_check=skip_server_mode_check)

    async def ask_server(peer, target_key: bytes, new_peers: list) -> None:
        if serves_kad(host, peer):
            await ask_one(peer, target_key, new_peers)

    async def closest_servers(target_key: bytes, count: int = 20) -> list:
        return [p for p in await find_closest(target_key, count) if serves_kad(host, p)]

    table.add_peer = add_server
    routing._query_single_peer_for_closest = ask_server
    routing.find_closest_peers_network = closest_servers


def stop_providing(dht, key: bytes) -> None:
    """Stop re-announcing a DHT key and drop our own record for it; records already out expire."""
    require_pinned()
    store = dht.provider_store
    store.providing_keys.discard(key)
    records = store.providers.get(key)
    if records is not None:
        records.pop(str(dht.local_peer_id), None)
