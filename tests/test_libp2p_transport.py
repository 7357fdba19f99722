"""The libp2p transport on real hosts over 127.0.0.1: identity, Noise only, framing limits, delivery."""
from __future__ import annotations

import hashlib
import os
import socket
import time
from contextlib import asynccontextmanager

import pytest
import trio

libp2p = pytest.importorskip("libp2p")

import multiaddr  # noqa: E402
from libp2p import new_host  # noqa: E402
from libp2p.network.exceptions import SwarmException  # noqa: E402
from libp2p.network.stream.exceptions import StreamReset  # noqa: E402
from libp2p.peer.peerinfo import info_from_p2p_addr  # noqa: E402
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport  # noqa: E402
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID  # noqa: E402
from libp2p.stream_muxer.yamux.yamux import Yamux  # noqa: E402

from manymodels.node.p2p.libp2p import (  # noqa: E402
    FRAME_HEADER,
    MSG_PROTOCOL,
    Libp2pTransport,
    key_pair_from_seed,
    noise_only_host,
)
from manymodels.protocol import Hello, Identity, ReplayGuard, open_envelope, seal  # noqa: E402
from waiting import async_wait_until  # noqa: E402

pytestmark = pytest.mark.slow

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
MiB = 1 << 20


def run(test, *, seconds: float = 20):
    """Run an async test in trio, bounded in time."""
    async def bounded():
        with trio.fail_after(seconds):
            await test()
    trio.run(bounded)


class Inbox:
    """A receiver callback that collects (sender, bytes) and lets a test wait for them."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self._changed = trio.Event()

    def __call__(self, sender: str, data: bytes) -> None:
        self.items.append((sender, data))
        self._changed.set()

    async def wait_for(self, count: int) -> list[tuple[str, bytes]]:
        while len(self.items) < count:
            self._changed = trio.Event()
            await self._changed.wait()
        return self.items


async def eventually(predicate, what: str, timeout: float = 10.0) -> None:
    await async_wait_until(predicate, what, timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_peer_id_is_the_identity_and_messages_flow_both_ways():
    async def main():
        ida, idb = Identity.generate(), Identity.generate()
        a, b = Libp2pTransport(ida, listen=LOOPBACK), Libp2pTransport(idb, listen=LOOPBACK)
        inbox_a, inbox_b = Inbox(), Inbox()
        a.set_receiver(inbox_a)
        b.set_receiver(inbox_b)
        async with a.running(), b.running():
            assert a.address == ida.peer_id == a.host.get_id().to_base58()
            assert b.address == idb.peer_id == b.host.get_id().to_base58()
            assert key_pair_from_seed(ida.seed).public_key.to_bytes() == ida.public_key
            assert all(addr.endswith(f"/p2p/{b.address}") for addr in b.listen_addrs())

            assert await a.connect(b.listen_addrs()[0]) == b.address
            await eventually(lambda: a.address in b.connected_peers(), "b to see a")
            assert a.connected_peers() == [b.address]

            for i in range(5):
                a.send(b.address, b"a->b %d" % i)
                b.send(a.address, b"b->a %d" % i)
            got_b = await inbox_b.wait_for(5)
            got_a = await inbox_a.wait_for(5)
            assert got_b == [(a.address, b"a->b %d" % i) for i in range(5)]  # in order, from a's id
            assert got_a == [(b.address, b"b->a %d" % i) for i in range(5)]

            # The sender a Node checks (the envelope's key) is the peer Noise authenticated.
            b.send(a.address, seal(idb, Hello(agent="test"), 1, int(time.time() * 1000)))
            sender, data = (await inbox_a.wait_for(6))[5]
            message = open_envelope(data, now_ms=int(time.time() * 1000), guard=ReplayGuard())
            assert message.sender_id == sender == b.address

            # send() from a worker thread is handed to the trio thread
            await trio.to_thread.run_sync(a.send, b.address, b"from a thread")
            assert (await inbox_b.wait_for(6))[5] == (a.address, b"from a thread")
            assert a.stats.messages_sent == 6 and b.stats.messages_received == 6
            assert a.stats.dropped_total == b.stats.dropped_total == 0
    run(main)


def test_a_20_mb_message_arrives_intact():
    async def main():
        a, b = Libp2pTransport(Identity.generate()), Libp2pTransport(Identity.generate())
        inbox = Inbox()
        b.set_receiver(inbox)
        payload = os.urandom(20 * 1000 * 1000)
        async with a.running(), b.running():
            await a.connect(b.listen_addrs()[0])
            a.send(b.address, payload)
            a.send(b.address, b"small")  # a lane of its own: need not wait for the 20 MB
            items = await inbox.wait_for(2)
            (sender, data), = [item for item in items if len(item[1]) > 5]
            assert sender == a.address and len(data) == len(payload)
            assert hashlib.sha256(data).digest() == hashlib.sha256(payload).digest()
            assert (a.address, b"small") in items
            assert b.stats.bytes_received == len(payload) + 5
    run(main, seconds=30)


def test_an_oversized_frame_is_refused_and_counted_and_the_transport_keeps_serving():
    async def main():
        b = Libp2pTransport(Identity.generate(), max_frame=1 * MiB)
        a = Libp2pTransport(Identity.generate())  # its own limit is larger
        inbox = Inbox()
        b.set_receiver(inbox)
        hostile = noise_only_host(os.urandom(32), LOOPBACK)
        async with a.running(), b.running(), hostile.run([multiaddr.Multiaddr(LOOPBACK[0])]):
            # A hostile peer announces a 1 TB frame: refused from the header alone.
            info = info_from_p2p_addr(multiaddr.Multiaddr(b.listen_addrs()[0]))
            await hostile.connect(info)
            stream = await hostile.new_stream(info.peer_id, [MSG_PROTOCOL])
            await stream.write(FRAME_HEADER.pack(10**12) + b"x" * 1000)
            await eventually(lambda: b.stats.rejected_oversize == 1, "the refusal")
            assert b.stats.rejected_by_peer[hostile.get_id().to_base58()] == 1

            # An honest peer with a larger limit sends 2 MiB: refused too; what follows still arrives.
            await a.connect(b.listen_addrs()[0])
            a.send(b.address, b"before")
            await inbox.wait_for(1)
            a.send(b.address, os.urandom(2 * MiB))
            a.send(b.address, b"after")
            await eventually(lambda: b.stats.rejected_oversize == 2, "the second refusal")
            items = await inbox.wait_for(2)
            assert items == [(a.address, b"before"), (a.address, b"after")]
            assert b.stats.rejected_by_peer[a.address] == 1

            # The hostile peer's connection is still usable for a well-formed frame.
            stream = await hostile.new_stream(info.peer_id, [MSG_PROTOCOL])
            await stream.write(FRAME_HEADER.pack(2) + b"ok")
            items = await inbox.wait_for(3)
            assert items[2] == (hostile.get_id().to_base58(), b"ok")

            # Our own sender never puts an oversized frame on the wire.
            b.send(a.address, os.urandom(1 * MiB + 1))
            assert b.stats.dropped_oversize == 1
            await hostile.close()
    run(main, seconds=30)


def test_a_plaintext_only_dial_is_refused_and_a_noise_dial_works():
    async def main():
        b = Libp2pTransport(Identity.generate())
        key_pair = key_pair_from_seed(os.urandom(32))
        plaintext = new_host(key_pair=key_pair, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)},
                             muxer_opt={YAMUX_PROTOCOL_ID: Yamux})
        stock = new_host(key_pair=key_pair_from_seed(os.urandom(32)))  # py-libp2p's defaults
        noise = noise_only_host(os.urandom(32), LOOPBACK)
        listen = [multiaddr.Multiaddr(LOOPBACK[0])]
        async with b.running(), plaintext.run(listen), stock.run(listen), noise.run(listen):
            ours = info_from_p2p_addr(multiaddr.Multiaddr(b.listen_addrs()[0]))
            # Control: a host left at py-libp2p's defaults lets the plaintext peer in.
            with trio.fail_after(10):
                await plaintext.connect(info_from_p2p_addr(stock.get_addrs()[0]))
            assert plaintext.get_id() in stock.get_connected_peers()

            with pytest.raises(SwarmException):
                with trio.fail_after(10):
                    await plaintext.connect(ours)
            assert b.connected_peers() == []

            # ...and our transport will not dial a plaintext-only peer either.
            with pytest.raises(ConnectionError):
                await b.connect(str(plaintext.get_addrs()[0]))
            assert b.connected_peers() == []

            await noise.connect(ours)
            await eventually(lambda: b.connected_peers() == [noise.get_id().to_base58()], "the Noise peer")
            for host in (plaintext, stock, noise):
                await host.close()
    run(main)


def test_send_to_unknown_or_unreachable_peers_neither_raises_nor_blocks():
    async def main():
        a = Libp2pTransport(Identity.generate(), dial_timeout=3.0, queue_messages=2)
        a.send(Identity.generate().peer_id, b"before run")  # not running yet: dropped, counted
        assert a.stats.dropped_not_running == 1
        async with a.running():
            unknown = Identity.generate().peer_id  # valid id, no address anywhere
            unreachable = Identity.generate().peer_id
            a.add_peer_addrs(unreachable, [f"/ip4/127.0.0.1/tcp/{free_port()}"])  # nothing listens there
            started = time.perf_counter()
            a.send("not a peer id", b"x")
            a.send(a.address, b"to myself")
            a.send(unknown, b"x")
            for _ in range(5):
                a.send(unreachable, b"y")  # 2 fit the queue, 3 are refused at once
            assert time.perf_counter() - started < 0.1  # nothing waited on the network
            assert a.stats.dropped_unreachable == 2
            assert a.stats.dropped_queue_full == 3
            await eventually(lambda: a.stats.dropped_unreachable == 5, "the failed dials", timeout=12)
            assert a.queued(unknown) == a.queued(unreachable) == 0
            assert a.stats.messages_sent == 0
        a.send(unknown, b"after close")
        assert a.stats.dropped_not_running == 2
    run(main)


@asynccontextmanager
async def _hostile_peer_of(b: Libp2pTransport):
    """`b` running with an inbox, and a bare py-libp2p host connected to it: (inbox, host, b's info)."""
    inbox = Inbox()
    b.set_receiver(inbox)
    hostile = noise_only_host(os.urandom(32), LOOPBACK)
    async with b.running(), hostile.run([multiaddr.Multiaddr(LOOPBACK[0])]):
        info = info_from_p2p_addr(multiaddr.Multiaddr(b.listen_addrs()[0]))
        await hostile.connect(info)
        yield inbox, hostile, info
        await hostile.close()


def test_hostile_framing_is_bounded_and_counted():
    async def main():
        b = Libp2pTransport(Identity.generate(), inbound_bytes=1 * MiB, inbound_streams_per_peer=3,
                            read_timeout=2.0)
        async with _hostile_peer_of(b) as (inbox, hostile, info):

            async def stream_with(data: bytes):
                stream = await hostile.new_stream(info.peer_id, [MSG_PROTOCOL])
                await stream.write(data)
                return stream

            # Idle streams wait for a header without a deadline, but only so many per peer.
            idle = [await stream_with(b"") for _ in range(3)]
            try:
                await stream_with(b"")  # reset as soon as it opens: the open itself may fail
            except Exception:
                pass
            await eventually(lambda: b.stats.rejected_busy == 1, "the stream cap")
            for stream in idle:
                await stream.close()

            # Announced lengths cost nothing: two 900 KB frames announced, a byte of each sent.
            announced = [await stream_with(FRAME_HEADER.pack(900_000) + b"x") for _ in range(2)]
            await trio.sleep(0.3)
            assert b.stats.rejected_busy == 1
            for stream in announced:
                await stream.close()
            await eventually(lambda: b.stats.truncated == 2, "the two announced frames, ended early")

            # Bytes that arrived count: 800 KB held back, then 300 KB more would pass the 1 MiB budget.
            await stream_with(FRAME_HEADER.pack(900_000) + b"x" * 800_000)
            await trio.sleep(0.3)
            await stream_with(FRAME_HEADER.pack(900_000) + b"x" * 300_000)
            await eventually(lambda: b.stats.rejected_busy == 2, "the byte budget")

            # A frame that ends early, and the 800 KB one that stalls past read_timeout: both
            # truncated, and the bytes the stalled one holds are free again.
            await (await stream_with(FRAME_HEADER.pack(100) + b"x" * 10)).close()
            await eventually(lambda: b.stats.truncated == 4, "truncated frames")
            await (await stream_with(FRAME_HEADER.pack(900_000) + b"y" * 900_000)).close()
            assert (await inbox.wait_for(1))[0][1] == b"y" * 900_000
            assert b.stats.receiver_errors == b.stats.stream_errors == 0
    run(main)


def test_frames_that_stall_in_the_header_or_trickle_are_truncated():
    """A header cut off mid-way stalls like a body; a body trickled a byte at a time is cut off at
    the frame's deadline though it never stalls; one written a byte at a time, but promptly, arrives;
    a stream on which no frame begins for twice the idle timeout is reset."""
    async def main():
        b = Libp2pTransport(Identity.generate(), read_timeout=1.0, idle_timeout=0.5)
        async with _hostile_peer_of(b) as (inbox, hostile, info):
            idle = await hostile.new_stream(info.peer_id, [MSG_PROTOCOL])
            await idle.write(b"")
            half = await hostile.new_stream(info.peer_id, [MSG_PROTOCOL])
            await half.write(FRAME_HEADER.pack(100)[:4])
            trickle = await hostile.new_stream(info.peer_id, [MSG_PROTOCOL])
            prompt = await hostile.new_stream(info.peer_id, [MSG_PROTOCOL])
            frame = FRAME_HEADER.pack(200) + bytes(range(200))
            started = trio.current_time()
            for k in range(len(frame)):
                await prompt.write(frame[k:k + 1])
            await prompt.close()
            await trickle.write(FRAME_HEADER.pack(4096))
            for _ in range(8):  # a byte every 0.3 s: never a 1 s stall; reset at the deadline
                try:
                    await trickle.write(b"t")
                except StreamReset:
                    break
                await trio.sleep(0.3)
            await eventually(lambda: b.stats.truncated == 2, "the cut-off header and the trickle")
            await eventually(lambda: b.stats.idle_closed == 1, "the stream on which no frame began")
            assert trio.current_time() - started < 3.5
            assert (await inbox.wait_for(1))[0][1] == bytes(range(200))
            assert b.stats.stream_errors == 0
    run(main)


def test_buffered_noise_session_reassembles_messages_split_anywhere():
    """The buffered Noise reader against every way the socket may cut the byte stream."""
    import random

    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    from manymodels.node.p2p.upstream import NOISE_MAX_PLAINTEXT, BufferedNoiseSession

    key = ChaCha20Poly1305(os.urandom(32))
    nonces = {"enc": 0, "dec": 0}

    def cipher(name, fn):
        def apply(ad, data):
            nonce = b"\0" * 4 + nonces[name].to_bytes(8, "little")
            nonces[name] += 1
            return fn(nonce, data, ad)
        return apply

    class Wire:
        def __init__(self):
            self.data = bytearray()
            self.pos = 0
            self.rng = random.Random(7)

        async def write(self, data):
            self.data += data

        async def read(self, n):
            size = min(n, self.rng.choice([1, 2, 3, 17, 1000, 65537, 300_000]), len(self.data) - self.pos)
            chunk = bytes(self.data[self.pos:self.pos + size])
            self.pos += size
            return chunk

    async def main():
        wire = Wire()
        session = object.__new__(BufferedNoiseSession)
        session._init_io(cipher("enc", key.encrypt), cipher("dec", key.decrypt), wire)
        messages = [os.urandom(n) for n in (0, 1, 12, NOISE_MAX_PLAINTEXT, NOISE_MAX_PLAINTEXT + 1, 3 * MiB + 5)]
        for m in messages:
            await session.write(memoryview(m))
        expected = b"".join(messages)
        got = bytearray()
        rng = random.Random(1)
        while len(got) < len(expected):
            got += await session.read(rng.choice([1, 12, 4096, 1 << 20]))
        assert got == expected
        with pytest.raises(Exception):  # end of the wire with nothing buffered
            await session.read(1)
        # A flipped bit is an authentication failure, and the session stays failed.
        wire.data = bytearray(wire.data[:0])
        wire.pos = 0
        await session.write(b"hello")
        wire.data[5] ^= 1
        with pytest.raises(Exception, match="decryption failed"):
            await session.read(5)
        with pytest.raises(Exception, match="decryption failed"):
            await session.read(5)
    run(main)


def test_the_plumbing_refuses_a_py_libp2p_it_was_not_written_for(monkeypatch):
    """upstream.py uses py-libp2p's private names: on another release, installing any of it
    fails with one line that says which version is needed."""
    import tomllib
    from pathlib import Path

    from manymodels.node.p2p import upstream

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert f"libp2p=={upstream.PINNED_VERSION}" in pyproject["project"]["dependencies"]
    assert upstream.installed_version() == upstream.PINNED_VERSION  # what the other tests run on
    upstream.require_pinned()

    monkeypatch.setattr(upstream, "installed_version", lambda: "0.9.0")
    installs = [lambda: trio.run(Libp2pTransport(Identity.generate()).run),  # a host with our Noise session
                lambda: upstream.BufferedNoiseTransport(None),
                lambda: upstream.guard_push_msg(object(), lambda: None),
                lambda: upstream.adopt_stream(object())]
    for install in installs:
        with pytest.raises(upstream.UnsupportedLibp2p) as info:
            install()
        message = str(info.value)
        assert "\n" not in message and "0.9.0" in message and f"libp2p=={upstream.PINNED_VERSION}" in message
