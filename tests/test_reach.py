"""Reach on real hosts over 127.0.0.1: dial-back reachability, a relay reservation, a relayed
connection with bytes counted by path, the bulk-over-relay budget, and a relay's limits. (The same
across real NAT, with hole punching: test_nat.py.)"""
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


def run(test, seconds: float = 60) -> None:
    async def bounded():
        with trio.fail_after(seconds):
            await test()
    trio.run(bounded)


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

    run(main)


def test_a_relay_keeps_to_its_limits_on_reservations_and_circuit_bytes():
    received = []

    async def main():
        relay_t = Libp2pTransport(Identity.generate(), listen=LOOPBACK)
        hidden_ts = [Libp2pTransport(Identity.generate(), listen=[]) for _ in range(2)]
        dialer_t = Libp2pTransport(Identity.generate(), listen=LOOPBACK)
        for t in hidden_ts:
            t.set_receiver(lambda peer, data: received.append(len(data)))
        limits = ReachConfig(relay=True, check_s=1, relay_reservations=1, relay_circuit_bytes=256 * 1024)
        async with relay_t.running(), hidden_ts[0].running(), hidden_ts[1].running(), dialer_t.running(), \
                Reach(relay_t, limits).running() as relay, \
                Reach(hidden_ts[0], ReachConfig(check_s=1)).running() as a, \
                Reach(hidden_ts[1], ReachConfig(check_s=1)).running() as b, \
                Reach(dialer_t, ReachConfig(check_s=1, relay_bulk=8 * MiB)).running():
            for t in (*hidden_ts, dialer_t):
                await t.connect(relay_t.listen_addrs()[0])
            # one reservation at a time: the second node is refused
            def outcomes():  # (reserved, refused) for each hidden node
                return [(bool(t.relayed_addrs), r.counts["reservations_failed"] > 0) for t, r in zip(hidden_ts, (a, b))]
            await async_wait_until(lambda: sorted(outcomes()), "one reservation and one refusal",
                                   until=lambda seen: seen == [(False, True), (True, False)])
            assert relay.status()["reserved_here"] == 1
            reserved = next(t for t in hidden_ts if t.relayed_addrs)
            await dialer_t.connect(reserved.relayed_addrs[0])
            dialer_t.send(reserved.address, b"small")
            await async_wait_until(lambda: received, "the small message through the relay")
            # a circuit carries 256 KiB at most: a 1 MiB frame resets it, and never arrives
            dialer_t.send(reserved.address, b"z" * MiB)
            await async_wait_until(lambda: dialer_t.path(reserved.address), "the circuit to be reset",
                                   until=lambda path: path is None)
            assert received == [5]

    run(main)
