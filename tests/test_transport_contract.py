"""The two network contracts (node/core/transport.py), each test run over both implementations:
the simulator's memory network and real Noise-only libp2p hosts on 127.0.0.1. Every wait is
bounded."""
from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio

from manymodels.node.core.transport import PeerNetwork, Transport
from manymodels.node.sim.network import LinkModel, MemoryNetwork
from manymodels.protocol import Identity

WAIT_S = 10.0


class Memory:
    """Memory transports; virtual time moves on whenever a test waits."""

    def __init__(self, stack: AsyncExitStack) -> None:
        self.network = MemoryNetwork(seed=0, link=LinkModel(latency_ms=5.0, jitter_ms=1.0))
        self.count = 0

    async def make(self):
        self.count += 1
        return self.network.attach(f"node{self.count}")

    def unreachable(self) -> str:
        return "/memory/nobody"

    async def tick(self) -> None:
        self.network.run_until(self.network.now_ms + 50)
        await trio.sleep(0)


class Libp2p:
    """Libp2p transports on loopback, each running until the test ends."""

    def __init__(self, stack: AsyncExitStack) -> None:
        pytest.importorskip("libp2p")
        self.stack = stack

    async def make(self):
        from manymodels.node.p2p.libp2p import Libp2pTransport

        transport = Libp2pTransport(Identity.generate(), dial_timeout=5.0)
        await self.stack.enter_async_context(transport.running())
        return transport

    def unreachable(self) -> str:
        return f"/ip4/127.0.0.1/tcp/1/p2p/{Identity.generate().peer_id}"  # nobody listens on port 1

    async def tick(self) -> None:
        await trio.sleep(0.02)


@pytest.fixture(params=[Memory, Libp2p], ids=["memory", "libp2p"])
def kind(request):
    return request.param


def run(kind, test) -> None:
    """Run ``test(net)`` in trio, bounded in time, with ``net`` the implementation's harness."""
    async def main():
        with trio.fail_after(60):
            async with AsyncExitStack() as stack:
                await test(kind(stack))
    trio.run(main)


async def eventually(net, predicate, what: str) -> None:
    with trio.move_on_after(WAIT_S):
        while not predicate():
            await net.tick()
        return
    raise AssertionError(f"timed out after {WAIT_S} s waiting for {what}")


def inbox(transport) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    transport.set_receiver(lambda sender, data: got.append((sender, bytes(data))))
    return got


def test_both_interfaces_are_implemented(kind):
    async def test(net):
        t = await net.make()
        assert isinstance(t, Transport) and isinstance(t, PeerNetwork)
        assert t.address and t.listen_addrs() and t.connected_peers() == []
    run(kind, test)


def test_connect_links_both_ways_and_refuses_what_it_cannot_dial(kind):
    async def test(net):
        a, b, c = await net.make(), await net.make(), await net.make()
        assert await a.connect(b.listen_addrs()[0]) == b.address
        assert await c.connect(b.listen_addrs()[0]) == b.address
        await eventually(net, lambda: a.connected_peers() == [b.address]
                         and b.connected_peers() == sorted([a.address, c.address]), "both ends to see the links")
        assert c.connected_peers() == [b.address]  # c and a never met
        for bad in ("garbage", a.listen_addrs()[0]):  # malformed; our own
            with pytest.raises(ValueError):
                await a.connect(bad)
        with pytest.raises(ConnectionError):
            await a.connect(net.unreachable())
    run(kind, test)


def test_messages_arrive_once_each_with_their_sender_both_ways(kind):
    # Order is not part of the contract: latency depends on size in memory, and libp2p sends small
    # and large messages on lanes of their own; the node's replay window tolerates reordering.
    async def test(net):
        a, b = await net.make(), await net.make()
        got_a, got_b = inbox(a), inbox(b)
        await a.connect(b.listen_addrs()[0])
        messages = [b"hello", b"x" * 100_000, b"", b"last"]
        for m in messages:
            a.send(b.address, m)
        b.send(a.address, b"reply")
        await eventually(net, lambda: len(got_b) == len(messages) and got_a, "the messages")
        assert sorted(got_b) == sorted((a.address, m) for m in messages)
        for _ in range(10):
            await net.tick()
        assert len(got_b) == len(messages)  # nothing twice
        assert got_a == [(b.address, b"reply")]
    run(kind, test)


def test_sending_to_an_unknown_peer_or_ourselves_neither_raises_nor_delivers(kind):
    async def test(net):
        a, b = await net.make(), await net.make()
        got_a, got_b = inbox(a), inbox(b)
        await a.connect(b.listen_addrs()[0])
        for peer in (Identity.generate().peer_id, "not a peer", a.address):
            a.send(peer, b"lost")
        a.send(b.address, b"found")  # the transport still works afterwards
        await eventually(net, lambda: got_b, "the message to b")
        for _ in range(10):
            await net.tick()
        assert got_b == [(a.address, b"found")] and got_a == []
    run(kind, test)


def test_a_peer_whose_addresses_are_known_can_be_dialed_and_sent_to(kind):
    async def test(net):
        a, b = await net.make(), await net.make()
        got_b = inbox(b)
        a.add_peer_addrs(b.address, b.listen_addrs())
        known = a.peer_addrs(b.address)
        assert known and all(any(full.startswith(k) for full in b.listen_addrs()) for k in known)
        assert a.peer_addrs(Identity.generate().peer_id) == []
        a.send(b.address, b"by address")  # no connect() first
        await eventually(net, lambda: got_b, "the message")
        assert got_b == [(a.address, b"by address")]
    run(kind, test)
