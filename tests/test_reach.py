"""Reach on real hosts over 127.0.0.1: dial-back reachability, a relay reservation, a relayed
connection with bytes counted by path, and the bulk-over-relay budget. (The same across real NAT,
with hole punching: test_nat.py.)"""
from __future__ import annotations

import pytest
import trio

pytest.importorskip("libp2p")

from manymodels.node.p2p.libp2p import RELAYED, Libp2pTransport  # noqa: E402
from manymodels.node.p2p.reach import PRIVATE, PUBLIC, Reach, ReachConfig  # noqa: E402
from manymodels.protocol import Identity  # noqa: E402
from waiting import async_wait_until  # noqa: E402

pytestmark = pytest.mark.slow

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
MiB = 1 << 20


def test_a_node_that_cannot_be_dialed_is_reached_through_a_relay_within_its_bulk_budget():
    received = []

    async def main():
        relay_t = Libp2pTransport(Identity.generate(), listen=LOOPBACK)
        hidden_t = Libp2pTransport(Identity.generate(), listen=[])  # dials out, cannot be dialed
        dialer_t = Libp2pTransport(Identity.generate(), listen=LOOPBACK)
        hidden_t.set_receiver(lambda peer, data: received.append((peer, len(data))))
        async with relay_t.running(), hidden_t.running(), dialer_t.running(), \
                Reach(relay_t, ReachConfig(relay=True, check_s=1)).running() as relay, \
                Reach(hidden_t, ReachConfig(check_s=1)).running() as hidden, \
                Reach(dialer_t, ReachConfig(check_s=1, relay_bulk=int(1.5 * MiB))).running() as dialer:
            for t in (hidden_t, dialer_t):
                await t.connect(relay_t.listen_addrs()[0])
            # the relay is dialed back by the others at the address they see it at: public
            await async_wait_until(lambda: relay.reachability, "the relay to know it is public",
                                   until=lambda r: r == PUBLIC)
            # a node without a listen address is private, reserves a slot and advertises its circuit
            addrs = await async_wait_until(lambda: hidden_t.listen_addrs(), "a relayed address",
                                           until=lambda a: any("/p2p-circuit" in x for x in a))
            assert hidden.reachability == PRIVATE and relay.status()["reserved_here"] == 1
            assert relay.status()["dialbacks"] >= 1  # and the dial-backs left no connection behind
            assert sorted(relay_t.connected_peers()) == sorted([hidden_t.address, dialer_t.address])
            await dialer_t.connect(addrs[0])
            assert dialer_t.path(hidden_t.address) == RELAYED
            dialer_t.send(hidden_t.address, b"hello")
            dialer_t.send(hidden_t.address, b"x" * MiB)  # bulk: within the budget of 1.5 MiB
            dialer_t.send(hidden_t.address, b"y" * MiB)  # over it: dropped and counted
            await async_wait_until(lambda: len(received), "two messages through the relay",
                                   until=lambda n: n >= 2)
            await async_wait_until(lambda: dialer_t.stats.dropped_relay_budget, "the budget to refuse one")
            assert sorted(n for _, n in received) == [5, MiB]
            assert dialer_t.path_bytes[hidden_t.address] == {"relayed_sent": MiB + 5}
            assert hidden_t.path_bytes[dialer_t.address] == {"relayed_received": MiB + 5}
            assert dialer.status()["relay_bulk_per_hour"] == int(1.5 * MiB)

    async def bounded():
        with trio.fail_after(60):
            await main()
    trio.run(bounded)
