"""Discovery on real Noise-only libp2p hosts over 127.0.0.1: gossipsub announcements validated
before relay, Kad-DHT provider records, peer discovery through the DHT, mDNS."""
from __future__ import annotations

import hashlib
import os
import time
from contextlib import AsyncExitStack

import msgpack
import pytest
import trio

libp2p = pytest.importorskip("libp2p")

from libp2p.peer.id import ID  # noqa: E402
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub  # noqa: E402
from libp2p.pubsub.pb import rpc_pb2  # noqa: E402
from libp2p.pubsub.pubsub import Pubsub  # noqa: E402
from libp2p.tools.anyio_service import background_trio_service  # noqa: E402

from manymodels.node.p2p.announcements import (  # noqa: E402
    ANNOUNCE_TOPIC,
    NOT_ANNOUNCE,
    ORIGIN_MISMATCH,
    PUSH_ERROR,
    STREAM_ERROR,
    announce_msg_id,
)
from manymodels.node.p2p.discovery import Discovery, DiscoveryConfig  # noqa: E402
from manymodels.node.p2p.libp2p import Libp2pTransport  # noqa: E402
from manymodels.protocol import Announce, Hello, Identity, Reason, seal  # noqa: E402
from waiting import async_wait_until  # noqa: E402

pytestmark = pytest.mark.slow

FAST = DiscoveryConfig(heartbeat_interval=0.2, refresh_fast=0.5, refresh_slow=2.0)


def run(test, *, seconds: float = 20):
    """Run an async test in trio, bounded in time."""
    async def bounded():
        with trio.fail_after(seconds):
            await test()
    trio.run(bounded)


def now_ms() -> int:
    return int(time.time() * 1000)


async def eventually(predicate, what: str, timeout: float = 10.0) -> float:
    """Wait until predicate() holds; returns the seconds it took."""
    start = trio.current_time()
    await async_wait_until(predicate, what, timeout)
    return trio.current_time() - start


def announce(identity: Identity, seq: int, *, version: int = 1, ts: int | None = None, model: str = "mlp") -> bytes:
    digest = hashlib.sha256(b"weights %d" % version).digest()
    return seal(identity, Announce(digest, "weights", model, version, 100, 12345), seq, now_ms() if ts is None else ts)


class Node:
    """A transport, its Discovery, and what the Discovery delivered."""

    def __init__(self, config: DiscoveryConfig = FAST) -> None:
        self.identity = Identity.generate()
        self.transport = Libp2pTransport(self.identity)
        self.got = []
        self.discovery = Discovery(self.transport, on_announce=self.got.append, config=config)

    @property
    def id(self) -> str:
        return self.identity.peer_id

    def addr(self) -> str:
        return self.transport.listen_addrs()[0]


async def start(stack: AsyncExitStack, *nodes: Node) -> None:
    for node in nodes:
        await stack.enter_async_context(node.transport.running())
        await stack.enter_async_context(node.discovery.running())


def in_mesh(a: Node, b: Node) -> bool:
    return b.transport.host.get_id() in a.discovery.router.mesh.get(ANNOUNCE_TOPIC, set())


class RawPeer:
    """A hostile peer: a Noise host with a bare gossipsub that publishes anything (no validator)."""

    def __init__(self) -> None:
        self.identity = Identity.generate()
        self.transport = Libp2pTransport(self.identity)

    async def start(self, stack: AsyncExitStack) -> None:
        await stack.enter_async_context(self.transport.running())
        host = self.transport.host
        self.router = GossipSub(protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11], degree=6, degree_low=4,
                                degree_high=12, heartbeat_interval=0.2,
                                spam_protection_enabled=False)  # it publishes in bursts
        self.pubsub = Pubsub(host, self.router, strict_signing=True, msg_id_constructor=announce_msg_id)
        await stack.enter_async_context(background_trio_service(self.pubsub))
        await stack.enter_async_context(background_trio_service(self.router))
        await self.pubsub.wait_until_ready()
        await self.pubsub.subscribe(ANNOUNCE_TOPIC)

    async def publish(self, data: bytes) -> None:
        await self.pubsub.publish(ANNOUNCE_TOPIC, data)


def test_an_announcement_reaches_every_node_through_gossipsub_as_a_verified_message():
    async def main():
        a, b, c = Node(), Node(), Node()
        async with AsyncExitStack() as stack:
            await start(stack, a, b, c)
            await a.transport.connect(b.addr())  # a line: c hears a only through b's relay
            await b.transport.connect(c.addr())
            t_mesh = await eventually(lambda: in_mesh(a, b) and in_mesh(b, a) and in_mesh(b, c) and in_mesh(c, b),
                                      "the gossipsub mesh")
            calls = []

            def flaky(message):  # a callback that raises must not stop delivery
                calls.append(message)
                if len(calls) == 1:
                    raise RuntimeError("boom")
            b.discovery.on_announce = flaky

            data = announce(a.identity, 1)
            start_t = trio.current_time()
            assert a.discovery.publish_announce(data)
            await eventually(lambda: len(calls) == 1 and len(c.got) == 1, "b and c to get the announcement")
            t_deliver = trio.current_time() - start_t
            for got in (calls[0], c.got[0]):
                assert got.kind == "announce" and got.sender_id == a.id and got.seq == 1
                assert got.payload == Announce(hashlib.sha256(b"weights 1").digest(), "weights", "mlp", 1, 100, 12345)
            assert b.discovery.stats.callback_errors == 1

            assert a.discovery.publish_announce(announce(a.identity, 2, version=2))
            await eventually(lambda: len(calls) == 2 and len(c.got) == 2, "the second announcement")
            assert calls[1].payload.version == c.got[1].payload.version == 2
            await trio.sleep(0.3)
            assert a.got == []  # our own announcements are not handed back to us
            assert len(calls) == len(c.got) == 2  # exactly once each
            for node in (a, b, c):
                assert node.discovery.stats.rejected_total == 0
            assert a.discovery.stats.announces_published == 2
            print(f"\nmesh formed in {t_mesh:.2f} s; a->b->c delivery in {t_deliver * 1000:.0f} ms")
    run(main)


def test_invalid_announcements_are_rejected_counted_and_not_relayed():
    async def main():
        a, b, c = Node(), Node(), Node()
        hostile = RawPeer()
        async with AsyncExitStack() as stack:
            await start(stack, a, b, c)
            await hostile.start(stack)
            await a.transport.connect(b.addr())
            await b.transport.connect(c.addr())
            await hostile.transport.connect(b.addr())  # the hostile peer talks to b only
            hb = hostile.transport.host.get_id()
            await eventually(lambda: in_mesh(b, c) and in_mesh(c, b) and in_mesh(a, b) and in_mesh(b, a)
                             and hb in b.discovery.pubsub.peer_topics.get(ANNOUNCE_TOPIC, set())
                             and b.transport.host.get_id() in hostile.pubsub.peer_topics.get(ANNOUNCE_TOPIC, set()),
                             "meshes and subscriptions")
            h = hostile.identity
            own = announce(h, 10)  # the hostile peer's own valid announcement (delivered: it is valid)
            env = msgpack.unpackb(own, raw=False)

            def packed(**changes) -> bytes:
                return msgpack.packb({**env, **changes}, use_bin_type=True)

            a_unpublished = announce(a.identity, 7, version=7)
            cases = {
                Reason.BAD_SIGNATURE.value: [
                    packed(sender=a.identity.public_key),  # forged: claims to be a, signed by h
                    packed(seq=11),  # a signed header field changed
                ],
                Reason.DIGEST_MISMATCH.value: [
                    packed(payload=msgpack.packb({**msgpack.unpackb(env["payload"]), "version": 99}))],
                Reason.TOO_LARGE.value: [os.urandom(5000),
                                         seal(h, Hello("x" * 4500), 20, now_ms())],  # > 4 KiB, validly signed
                Reason.MALFORMED.value: [b"\xc1 not msgpack"],
                Reason.STALE.value: [announce(h, 21, ts=now_ms() - 3600_000)],
                NOT_ANNOUNCE: [seal(h, Hello("hostile/1"), 22, now_ms())],
                ORIGIN_MISMATCH: [a_unpublished],  # a's genuine envelope, re-published under h's id
            }
            await hostile.publish(own)
            await eventually(lambda: len(b.got) == 1 and len(c.got) == 1, "the hostile peer's valid announcement")
            for reason, items in cases.items():
                for data in items:
                    await hostile.publish(data)
            # The same signed envelope again, re-encoded (other bytes, so another gossipsub id):
            replay = msgpack.packb(dict(reversed(list(env.items()))), use_bin_type=True)
            assert replay != own
            await hostile.publish(replay)
            await hostile.publish(own)  # byte-identical: gossipsub's seen-cache drops it silently
            cases[Reason.REPLAYED.value] = [replay]
            expected = {reason: len(items) for reason, items in cases.items()}
            await eventually(lambda: b.discovery.stats.rejected_total >= sum(expected.values()),
                             f"b to count {expected}")
            assert dict(b.discovery.stats.rejected) == expected
            assert b.discovery.stats.rejected_from == {hostile.identity.peer_id: sum(expected.values())}

            # a's own publication of the envelope h tried to hijack still goes through (the
            # origin check comes before the replay window records anything).
            assert a.discovery.publish_announce(a_unpublished)
            await eventually(lambda: len(b.got) == 2 and len(c.got) == 2, "a's announcement after the hijack")
            assert [m.sender_id for m in c.got] == [hostile.identity.peer_id, a.id]
            assert c.got[1].payload.version == 7
            await trio.sleep(0.5)
            assert len(b.got) == len(c.got) == 2  # nothing invalid delivered, nothing twice
            assert c.discovery.stats.rejected_total == 0  # b relayed none of them
            assert a.discovery.stats.rejected_total == 0
    run(main, seconds=25)


def test_bytes_that_make_py_libp2p_raise_stop_neither_pubsub_nor_the_host():
    """Two ways a peer's bytes make py-libp2p 0.8.1 raise where it would stop a service: a pubsub
    RPC that does not parse (its stream handler lets protobuf's DecodeError through, which stops
    the swarm -- the whole host) and a message whose `key` does not deserialize (push_msg raises,
    which stops the pubsub service). Discovery's guards count them and the node keeps working."""
    async def main():
        a, b = Node(), Node()
        hostile = RawPeer()
        async with AsyncExitStack() as stack:
            await start(stack, a, b)
            await hostile.start(stack)
            await a.transport.connect(b.addr())
            await hostile.transport.connect(b.addr())
            await eventually(lambda: in_mesh(a, b) and in_mesh(b, a)
                             and b.transport.host.get_id() in hostile.pubsub.peer_topics.get(ANNOUNCE_TOPIC, set()),
                             "meshes and subscriptions")
            bad = rpc_pb2.Message(data=b"x", topicIDs=[ANNOUNCE_TOPIC],
                                  from_id=bytes([0x12, 0x20]) + os.urandom(32),  # a hash, not a key
                                  seqno=os.urandom(8), key=b"garbage", signature=os.urandom(64))
            await hostile.router.publish(hostile.transport.host.get_id(), bad)  # bypasses its own checks
            await eventually(lambda: b.discovery.stats.rejected[PUSH_ERROR] == 1, "b to count the push error")

            b_id = ID.from_base58(b.id)
            for protocol in (PROTOCOL_ID_V12, PROTOCOL_ID_V11):  # an RPC that is not protobuf
                stream = await hostile.transport.host.new_stream(b_id, [protocol])
                await stream.write(bytes([50]) + b"\xff" * 50)
            await eventually(lambda: b.discovery.stats.rejected[STREAM_ERROR] == 2, "b to count the bad streams")

            assert a.discovery.publish_announce(announce(a.identity, 1))
            await eventually(lambda: len(b.got) == 1, "b to still receive announcements")
            assert b.discovery.pubsub.manager.is_running and b.transport.is_running
    run(main)


def test_publishing_is_paced_and_only_our_own_small_announcements_go_out():
    async def main():
        node = Node(DiscoveryConfig(announce_rate=0.5, announce_burst=3, dht=False))
        other = Identity.generate()
        async with AsyncExitStack() as stack:
            await start(stack, node)
            d = node.discovery
            results = [d.publish_announce(announce(node.identity, seq)) for seq in range(1, 11)]
            assert results == [True] * 3 + [False] * 7
            assert not d.publish_announce(announce(other, 1))
            assert not d.publish_announce(seal(node.identity, Hello("me"), 50, now_ms()))
            assert not d.publish_announce(os.urandom(5000))
            assert dict(d.stats.publish_dropped) == {"rate": 7, "not_ours": 1, NOT_ANNOUNCE: 1, "oversize": 1}
            await eventually(lambda: d.stats.announces_published == 3, "the three to go out")
            # from another thread: handed to the trio thread, which applies the same rules
            await trio.to_thread.run_sync(d.publish_announce, announce(node.identity, 60))
            await eventually(lambda: d.stats.publish_dropped["rate"] == 8, "the pace to apply across threads")
        assert not d.publish_announce(announce(node.identity, 70))  # closed
        assert d.stats.publish_dropped["not_running"] == 1
    run(main)


def test_dht_provide_and_find_providers():
    async def main():
        nodes = [Node() for _ in range(4)]
        async with AsyncExitStack() as stack:
            await start(stack, *nodes)
            for node in nodes[1:]:
                await node.transport.connect(nodes[0].addr())
                node.discovery.kick()
            await eventually(lambda: all(len(n.discovery.known_peers()) == 3 for n in nodes), "routing tables")
            digest = hashlib.sha256(b"a 100 MB model").digest()
            t0 = trio.current_time()
            assert await nodes[3].discovery.provide(digest)
            t_provide = trio.current_time() - t0
            t0 = trio.current_time()
            found = await nodes[1].discovery.find_providers(digest)
            t_find = trio.current_time() - t0
            assert found == [nodes[3].id]  # deduplicated (py-libp2p returns the provider once per answer)
            assert any(a.endswith(f"/p2p/{nodes[3].id}") or "/tcp/" in a
                       for a in nodes[1].transport.peer_addrs(nodes[3].id))
            assert await nodes[2].discovery.find_providers(digest) == [nodes[3].id]
            # a second provider; the lookup at a third node returns both, once each
            assert await nodes[2].discovery.provide(digest)
            assert sorted(await nodes[1].discovery.find_providers(digest)) == sorted([nodes[2].id, nodes[3].id])
            # nobody holds this one: an empty answer, bounded in time
            t0 = trio.current_time()
            assert await nodes[1].discovery.find_providers(os.urandom(32), timeout=3) == []
            t_none = trio.current_time() - t0
            assert t_none < 3.5
            with pytest.raises(ValueError):
                await nodes[1].discovery.find_providers(b"short")
            print(f"\nprovide {t_provide * 1000:.0f} ms, find_providers {t_find * 1000:.0f} ms, "
                  f"unknown digest {t_none * 1000:.0f} ms")
    run(main)


def test_nodes_that_join_through_one_bootstrap_peer_find_each_other_through_the_dht():
    async def main():
        nodes = [Node() for _ in range(4)]
        found = {n.id: [] for n in nodes}
        for n in nodes:
            n.discovery.on_peer = lambda peer, addrs, n=n: found[n.id].append(peer)
        async with AsyncExitStack() as stack:
            await start(stack, *nodes)
            t0 = trio.current_time()
            for node in nodes[1:]:  # each knows node 0 only; no peer exchange runs here
                await node.transport.connect(nodes[0].addr())
                node.discovery.kick()
            everyone = {n.id for n in nodes}

            def knows_all(n: Node) -> bool:
                return set(n.discovery.known_peers()) == everyone - {n.id}

            def connected_to_all(n: Node) -> bool:
                return set(n.transport.connected_peers()) >= everyone - {n.id}

            t_known = await eventually(lambda: all(knows_all(n) for n in nodes), "every routing table to hold all")
            await eventually(lambda: all(connected_to_all(n) for n in nodes), "every node to connect to all")
            t_connected = trio.current_time() - t0
            # each joining node's kicked refresh ran (it may finish after the tables are full)
            await eventually(lambda: all(n.discovery.stats.refreshes >= 1 for n in nodes[1:]), "every refresh")
            # the DHT's own lookups dial too; whatever it did not connect, discovery dialed
            dialed = sum(n.discovery.stats.dials for n in nodes)

        # The control: the same join without the DHT, and nodes 1..3 never meet.
        control = [Node(DiscoveryConfig(dht=False, heartbeat_interval=0.2)) for _ in range(3)]
        async with AsyncExitStack() as stack:
            await start(stack, *control)
            for node in control[1:]:
                await node.transport.connect(control[0].addr())
            await trio.sleep(1.5)
            assert [len(n.transport.connected_peers()) for n in control] == [2, 1, 1]
        print(f"\n4 nodes bootstrapped to node 0: all routing tables full after {t_known:.2f} s, "
              f"fully connected after {t_connected:.2f} s ({dialed} dials by discovery; the DHT's "
              f"lookups dial too); without the DHT: no links after 1.5 s")
    run(main)


def test_connect_peers_dials_known_addresses_with_bounds_and_backoff():
    async def main():
        config = DiscoveryConfig(dht=False, max_peers=3, dial_backoff=30)
        x, y, z, w = Node(config), Node(config), Node(config), Node(config)
        met = []
        x.discovery.on_peer = lambda peer, addrs: met.append((peer, addrs))
        async with AsyncExitStack() as stack:
            await start(stack, x, y, z, w)
            dead = Identity.generate().peer_id
            x.transport.add_peer_addrs(y.id, y.transport.listen_addrs())
            x.transport.add_peer_addrs(dead, ["/ip4/127.0.0.1/tcp/1"])  # nobody listens there
            made = await x.discovery.connect_peers([y.id, y.id, x.id, dead, "not-a-peer-id"])
            assert made == 1 and x.transport.connected_peers() == [y.id]
            assert met == [(y.id, [f"{a}" for a in y.transport.listen_addrs()])]
            assert x.discovery.stats.dial_failures == 2  # dead, and the id with no address
            assert await x.discovery.connect_peers([dead, y.id]) == 0  # backoff, already connected
            assert x.discovery.stats.dial_failures == 2
            await trio.sleep(config.dial_retry + 0.1)  # the first retry comes after dial_retry ...
            assert await x.discovery.connect_peers([dead]) == 0 and x.discovery.stats.dial_failures == 3
            await trio.sleep(config.dial_retry + 0.1)  # ... the next after twice as long
            assert await x.discovery.connect_peers([dead]) == 0 and x.discovery.stats.dial_failures == 3
            for other in (z, w):
                x.transport.add_peer_addrs(other.id, other.transport.listen_addrs())
            x.discovery.config.max_peers = 2
            assert await x.discovery.connect_peers([z.id, w.id]) == 1  # max_peers=2 connections
            assert len(x.transport.connected_peers()) == 2
    run(main)


def test_the_validator_never_raises_and_a_hijack_does_not_burn_the_authors_sequence():
    discovery = Discovery(Libp2pTransport(Identity.generate()), config=DiscoveryConfig(max_senders=2))
    alice, mallory = Identity.generate(), Identity.generate()

    def gossip(author: Identity, data: bytes):
        return rpc_pb2.Message(data=data, topicIDs=[ANNOUNCE_TOPIC], seqno=os.urandom(8),
                               from_id=ID.from_base58(author.peer_id).to_bytes())

    forwarder = type("Forwarder", (), {"to_base58": lambda self: "peer"})()
    data = announce(alice, 5)
    assert not discovery.announcements._validate(forwarder, gossip(mallory, data))  # hijack: origin mismatch
    assert discovery.announcements._validate(forwarder, gossip(alice, data))  # alice's own copy still passes
    assert not discovery.announcements._validate(forwarder, gossip(alice, data))  # then it is a replay
    assert not discovery.announcements._validate(forwarder, None)  # anything at all: rejected, never raised
    assert dict(discovery.stats.rejected) == {ORIGIN_MISMATCH: 1, Reason.REPLAYED.value: 1, "validator_error": 1}
    assert discovery.stats.rejected_from == {"peer": 3}
    # the hijack and the garbage strike the forwarder; the replay does not (its relay may have had
    # another view of alice's sequence: it restarted, or heard her by another path first)
    assert discovery.transport.gate.standing("peer", time.monotonic())["strikes"] == pytest.approx(2.0, abs=0.01)
    # keys are free, so the replay guard is bounded: beyond max_senders authors the least recently
    # heard is evicted, and an evicted author's old announcement is still a replay (the watermark)
    for i in range(3):
        author = Identity.generate()
        assert discovery.announcements._validate(forwarder, gossip(author, announce(author, 1, ts=now_ms() + 10 + i)))
    assert len(discovery.guard.to_state()) <= 3  # two senders and the watermark entry
    assert not discovery.announcements._validate(forwarder, gossip(alice, data))
    assert discovery.stats.rejected[Reason.REPLAYED.value] == 2


def signed_gossip(author: Identity, data: bytes):
    """A gossipsub message on our topic authored (and signed, as strict_signing wants) by ``author``."""
    from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX

    from manymodels.node.p2p.libp2p import key_pair_from_seed

    keys = key_pair_from_seed(author.seed)
    msg = rpc_pb2.Message(data=data, topicIDs=[ANNOUNCE_TOPIC], seqno=os.urandom(8),
                          from_id=ID.from_pubkey(keys.public_key).to_bytes())
    signature = keys.private_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
    msg.key, msg.signature = keys.public_key.serialize(), signature
    return msg


FLOOD_AUTHORS = 500
FUTURE_MS = 4 * 60 * 1000  # within the clock skew allowed: an evicted author's ts raises the watermark this far


def test_fresh_keys_relayed_by_one_peer_cannot_churn_the_replay_guard():
    """One forwarder relays announcements by 500 fresh keys, stamped 4 minutes ahead. Without a
    bound, they would evict every author from the guard (64 places here) and raise its watermark
    into the future, so the honest peer's next announcement is refused as a replay (the control,
    through the validator). With the gate's budget of new authors per forwarder, at most its burst
    enter the guard, the rest are refused with a mild strike (which gets the flooder blocked), and
    the honest peer's announcements keep arriving."""
    from manymodels.node.p2p.gate import NEW_AUTHORS, GateConfig, PeerGate

    flood = [Identity.generate() for _ in range(FLOOD_AUTHORS)]
    config = DiscoveryConfig(heartbeat_interval=0.2, refresh_fast=0.5, refresh_slow=2.0, max_senders=64, dht=False)
    burst, rate_per_s = int(GateConfig().new_authors_burst), GateConfig().new_authors_per_min / 60

    # The control: the same flood through a validator whose gate lets any number of new authors in.
    unbounded = Libp2pTransport(Identity.generate(), gate=PeerGate(GateConfig(new_authors_burst=1e9)))
    control = Discovery(unbounded, config=config)
    honest = Identity.generate()
    forwarder = type("Forwarder", (), {"to_base58": lambda self: "flooder"})()
    assert control.announcements._validate(forwarder, signed_gossip(honest, announce(honest, 1)))
    for author in flood:
        control.announcements._validate(forwarder, signed_gossip(author, announce(author, 1, ts=now_ms() + FUTURE_MS)))
    assert not control.announcements._validate(forwarder, signed_gossip(honest, announce(honest, 2)))
    assert control.stats.rejected == {Reason.REPLAYED.value: 1}

    async def main():
        victim, peer = Node(config), Node(config)
        hostile = RawPeer()
        async with AsyncExitStack() as stack:
            await start(stack, victim, peer)
            await hostile.start(stack)
            await peer.transport.connect(victim.addr())
            await hostile.transport.connect(victim.addr())
            v_id = victim.transport.host.get_id()
            await eventually(lambda: in_mesh(victim, peer) and in_mesh(peer, victim)
                             and v_id in hostile.pubsub.peer_topics.get(ANNOUNCE_TOPIC, set()),
                             "meshes and subscriptions")
            assert peer.discovery.publish_announce(announce(peer.identity, 1))
            await eventually(lambda: len(victim.got) == 1, "the honest peer's first announcement")

            t0 = trio.current_time()
            h_id, hostile_peer = hostile.transport.host.get_id(), hostile.identity.peer_id
            gate = victim.transport.gate
            for author in flood:
                if gate.is_blocked(hostile_peer, time.monotonic()):
                    break
                try:
                    await hostile.router.publish(h_id, signed_gossip(author, announce(author, 1, ts=now_ms() + FUTURE_MS)))
                except Exception:  # noqa: BLE001 -- the victim let it go
                    break
                await trio.sleep(0.002)  # py-libp2p's outbound queue to a peer is bounded
            await eventually(lambda: gate.is_blocked(hostile_peer, time.monotonic()), "the flooder to be blocked")
            took = trio.current_time() - t0

            assert peer.discovery.publish_announce(announce(peer.identity, 2, version=2))
            assert peer.discovery.publish_announce(announce(peer.identity, 3, version=3))

            def from_peer() -> list[int]:
                return [m.seq for m in victim.got if m.sender_id == peer.id]
            await eventually(lambda: len(from_peer()) == 3, "the honest peer's announcements after the flood")
            assert from_peer() == [1, 2, 3]
            admitted = sum(victim.discovery.guard.highest(a.public_key) is not None for a in flood)
            assert len(victim.got) == 3 + admitted
            assert admitted <= burst + int(rate_per_s * (trio.current_time() - t0)) + 1  # the burst and the rate
            refused = victim.discovery.stats.rejected[NEW_AUTHORS]
            assert refused >= 100 and gate.events["new_authors_refused"] == refused
            assert victim.discovery.stats.rejected_from[hostile_peer] == refused
            await eventually(lambda: hostile_peer not in victim.transport.connected_peers(), "the flooder to be let go")
            print(f"\nflood of fresh authors: {admitted} admitted, {refused} refused, the flooder blocked "
                  f"after {took:.2f} s; the honest peer's announcements kept arriving")
    run(main, seconds=40)


def test_mdns_finds_a_peer_on_the_lan_when_enabled():
    async def main():
        config = DiscoveryConfig(mdns=True, dht=False, heartbeat_interval=0.2)
        a, b = Node(config), Node(config)
        async with AsyncExitStack() as stack:
            await start(stack, a, b)
            if a.discovery.mdns is None or b.discovery.mdns is None:
                pytest.skip("zeroconf cannot start here (no multicast socket)")
            try:
                took = await eventually(lambda: b.id in a.transport.connected_peers(), "mDNS to connect a and b",
                                        timeout=10)
            except AssertionError:
                pytest.skip("no mDNS answer within 10 s here (multicast filtered on this host?)")
            assert a.discovery.stats.mdns_found + b.discovery.stats.mdns_found >= 1
            print(f"\nmDNS: connected after {took:.2f} s")
        assert Node().discovery.config.mdns is False  # off by default
    run(main, seconds=25)


def test_libp2p_warnings_are_rate_limited_per_line_of_code_and_its_info_lines_left_out():
    import io
    import logging

    from manymodels.node.p2p.logs import bound_libp2p_logs

    bound_libp2p_logs()
    bound_libp2p_logs()  # idempotent: one handler of ours (pytest may add its own)
    assert len([h for h in logging.getLogger("libp2p").handlers if h.filters]) == 1
    out = io.StringIO()
    ours = logging.StreamHandler(out)  # as the daemon's one handler: libp2p's records reach it, bounded
    logging.getLogger().addHandler(ours)
    try:
        log = logging.getLogger("libp2p.kad_dht.provider_store")
        for i in range(100):  # as py-libp2p does for every failed provide: a formatted message each time
            log.warning(f"Failed to send ADD_PROVIDER to peer{i}")
        chatty = logging.getLogger("libp2p.network.auto_connector")  # py-libp2p sets INFO on it
        chatty.setLevel(logging.INFO)
        chatty.info("AUTO_CONNECTOR_STATE: num_connections=0")
    finally:
        logging.getLogger().removeHandler(ours)
    assert out.getvalue().splitlines() == [f"Failed to send ADD_PROVIDER to peer{i}" for i in range(5)]
