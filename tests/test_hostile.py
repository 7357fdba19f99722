"""The trust boundary over real libp2p connections (loopback, one process): a victim DaemonNode
behind `bind` (gate, off-loop verification, author binding, metered serving) and a hostile peer
that is a bare transport writing whatever bytes it likes."""
import resource
import time

import msgpack
import numpy as np
import pytest
import trio

from manymodels.aggregation import get_rule
from manymodels.node.core.exchange import WeightGossip
from manymodels.node.core.reputation import Reputation
from manymodels.node.learning.models import build_model
from manymodels.node.learning.torch_learner import TorchLearner
from manymodels.node.p2p.gate import GateConfig, PeerGate
from manymodels.node.p2p.libp2p import Libp2pTransport
from manymodels.node.runtime.daemon import BLOB_CHUNK, DaemonNode, bind, largest_accepted
from manymodels.protocol import Announce, BlobRequest, BlobResponse, Error, Identity, Weights, open_envelope, seal
from waiting import async_wait_until, unchanged

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
MiB = 1 << 20


def now_ms() -> int:
    return int(time.time() * 1000)


def victim_node(transport: Libp2pTransport) -> DaemonNode:
    x = np.zeros((4, 4), np.float32)
    learner = TorchLearner(build_model("logreg", (4,), 2, seed=0), x, np.zeros(4, np.int64), architecture="logreg")
    return DaemonNode(transport.identity, learner, transport, WeightGossip(get_rule("fedavg")), num_classes=2,
                      clock=now_ms, reputation=Reputation())


def run(scenario, gate: GateConfig | None = None) -> None:
    """scenario(victim_node, victim_transport, attacker_transport, attacker_identity) in one trio run."""
    async def main() -> None:
        victim_t = Libp2pTransport(Identity.generate(), listen=LOOPBACK, gate=PeerGate(gate or GateConfig()))
        mallory = Identity.generate()
        attacker_t = Libp2pTransport(mallory, listen=LOOPBACK)
        async with victim_t.running(), attacker_t.running(), trio.open_nursery() as nursery:
            node = victim_node(victim_t)
            bind(node, victim_t, nursery)
            await attacker_t.connect(victim_t.listen_addrs()[0])
            await scenario(node, victim_t, attacker_t, mallory)
            nursery.cancel_scope.cancel()
    trio.run(main)


def weights(tensor_value: float) -> Weights:
    return Weights("logreg", 1, 10, [np.full((2, 4), tensor_value, np.float32), np.zeros(2, np.float32)])


@pytest.mark.slow
def test_the_frame_cap_is_the_largest_message_this_node_accepts():
    async def scenario(node, victim_t, attacker_t, mallory):
        assert victim_t.max_frame == largest_accepted(node) < BLOB_CHUNK + 8192  # a logreg's weights are tiny
        attacker_t.send(victim_t.address, b"\x80" * (9 * MiB + MiB // 2))  # 9.5 MiB of empty maps
        await async_wait_until(lambda: victim_t.stats.rejected_oversize, "the oversize frame to be refused",
                               until=lambda refused: refused == 1)
        assert victim_t.stats.bytes_received == 0  # refused from the header, never read
    run(scenario)


def test_amplification_frames_cost_no_more_than_their_size():
    """Frames under the cap made of empty containers (msgpack's cheapest objects): before the fix,
    9.5 MiB of them cost +695 MiB; now decoding stops at the first byte that is not a map of 8."""
    frames = [b"\x80" * (3 * MiB), b"\x91" * (3 * MiB) + b"\xc0",  # empty maps; arrays nested 3 M deep
              b"\xdc\xff\xff" + b"\x90" * (3 * MiB)]  # one array16 of 65535 empty arrays, then more

    async def scenario(node, victim_t, attacker_t, mallory):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(5):
            for frame in frames:
                attacker_t.send(victim_t.address, frame)
        # every frame the attacker's transport did send (on a loaded machine its queue or link may drop some)
        await async_wait_until(lambda: sum(node.stats.rejected.values()) + victim_t.stats.refused_by_gate,
                               "the frames sent rejected or refused by the gate",
                               until=lambda refused: refused >= 15 - attacker_t.stats.dropped_total > 10)
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert grown_mib < 64, f"{grown_mib:.0f} MiB for 45 MiB of hostile frames"
        assert set(node.stats.rejected) <= {"malformed", "schema"}
        assert node.stats.messages_accepted == 0
    run(scenario, GateConfig(block_at=1000, throttle_at=1000))


def test_one_connection_cannot_speak_for_other_identities_and_is_let_go():
    """2,000 fresh keys through one socket were all accepted before; now every one is refused as
    foreign_author before any signature work, and the peer is blocked and forgotten."""
    async def scenario(node, victim_t, attacker_t, mallory):
        for i in range(200):
            sybil = Identity.generate()
            attacker_t.send(victim_t.address, seal(sybil, weights(-100.0), 1, now_ms()))
            if i % 20 == 19:
                await trio.sleep(0.05)
        await async_wait_until(lambda: victim_t.gate.is_blocked(mallory.peer_id, time.monotonic()),
                               "the attacker to be blocked")
        assert node.stats.messages_accepted == 0
        # the first ten are verified (and refused); then the peer is throttled: dropped unread
        assert dict(node.stats.rejected) == {"foreign_author": node.stats.rejected["foreign_author"]}
        assert node.stats.rejected["foreign_author"] >= 10 and victim_t.stats.refused_by_gate > 0
        assert not node.exchange._inbox and not node.senders
        await async_wait_until(victim_t.connected_peers, "the attacker's connection to close",
                               until=lambda peers: mallory.peer_id not in peers)
        assert mallory.peer_id not in node.peers  # forgotten
        with trio.move_on_after(5):  # it may dial back: the connection is closed as it opens
            try:
                await attacker_t.connect(victim_t.listen_addrs()[0])
            except ConnectionError:
                pass
        await async_wait_until(victim_t.connected_peers, "the attacker's connection to close",
                               until=lambda peers: mallory.peer_id not in peers)
        attacker_t.send(victim_t.address, seal(mallory, weights(-100.0), 1, now_ms()))
        await trio.sleep(0.5)
        assert node.stats.messages_accepted == 0
    run(scenario)


def test_a_pulled_message_is_checked_for_author_and_replay():
    """A neighbour announces (directly, signed by itself) a message it did not write, or its own
    old one again: the pull fetches it and the victim refuses it as foreign_author / replayed."""
    async def scenario(node, victim_t, attacker_t, mallory):
        honest = Identity.generate()
        stolen = seal(honest, weights(5.0), 7, now_ms())
        own_old = seal(mallory, weights(1.0), 3, now_ms())
        served = {}

        def answer(peer, data):  # mallory serves whatever is asked of the two blobs
            request = open_envelope(data, now_ms=now_ms()).payload
            if isinstance(request, BlobRequest):
                blob = served[request.digest]
                attacker_t.send(peer, seal(mallory, BlobResponse(request.digest, 0, len(blob), blob), 100, now_ms()))
        attacker_t.set_receiver(answer)
        attacker_t.send(victim_t.address, own_old)  # pushed once: accepted
        await async_wait_until(lambda: node.stats.messages_accepted, "the pushed message to be accepted",
                               until=lambda accepted: accepted == 1)
        seq = 10
        for blob in (stolen, own_old):
            digest = open_envelope(blob, now_ms=now_ms()).digest
            served[digest] = blob
            seq += 1
            attacker_t.send(victim_t.address, seal(mallory, Announce(digest, "weights", "logreg", seq, 10, len(blob)),
                                                   seq, now_ms()))
            await async_wait_until(lambda: set(node.unpushed), "the announcement to be noted for a pull",
                                   until=lambda unpushed: (mallory.peer_id, "weights") in unpushed)
            await node.pull_unpushed(period=5.0)
        assert node.pulled == 2
        assert node.stats.rejected["foreign_author"] == 1 and node.stats.rejected["replayed"] == 1
        assert list(node.exchange._inbox) == [mallory.public_key]  # only the pushed message
    run(scenario)


@pytest.mark.slow
def test_blob_requests_are_metered_and_do_not_use_up_sequence_numbers():
    """A 1 KiB request used to queue 4 MiB, unmetered, and burn a sequence number: 500 requests now
    get at most the gate's byte budget, the rest `busy`, and the victim's seq does not move."""
    async def scenario(node, victim_t, attacker_t, mallory):
        blob = node.seal(Weights("logreg", 1, 10, [np.zeros(BLOB_CHUNK // 4, np.float32)]))  # one full chunk
        digest = node.keep_blob(blob)
        seq = node.seq
        answers = {"chunks": 0, "busy": 0}

        def count(peer, data):
            payload = open_envelope(data, now_ms=now_ms()).payload
            if isinstance(payload, BlobResponse):
                answers["chunks"] += 1
            elif isinstance(payload, Error) and payload.code == "busy":
                answers["busy"] += 1
        attacker_t.set_receiver(count)
        started = time.monotonic()
        for i in range(500):
            attacker_t.send(victim_t.address, seal(mallory, BlobRequest(digest, 0, BLOB_CHUNK), i + 1, now_ms()))
            if i % 50 == 49:
                await trio.sleep(0.05)
        await async_wait_until(lambda: answers["chunks"] + answers["busy"], "the answers to stop coming", 60,
                               until=unchanged(), interval=1.5)
        elapsed = time.monotonic() - started
        budget = (16 * MiB + 8 * MiB * elapsed) / BLOB_CHUNK + 1  # burst + rate of the config below
        assert 0 < answers["chunks"] <= budget, (answers, elapsed)
        assert node.stats.refused["serve_busy"] > 0
        assert node.seq == seq  # serving used up no sequence number
    run(scenario, GateConfig(serve_burst=16 * MiB, serve_bytes_per_s=8 * MiB, frame_burst=1000, frames_per_s=1000))


def test_garbage_gets_a_peer_blocked_while_an_honest_peer_is_served():
    async def scenario(node, victim_t, attacker_t, mallory):
        honest = Libp2pTransport(Identity.generate(), listen=LOOPBACK)
        async with honest.running():
            await honest.connect(victim_t.listen_addrs()[0])
            with trio.fail_after(30):  # a reset stream makes a lane give up: send until blocked
                for i in range(2000):
                    attacker_t.send(victim_t.address, msgpack.packb({"v": 1, "junk": i}))
                    await trio.sleep(0.005)
                    if victim_t.gate.is_blocked(mallory.peer_id, time.monotonic()):
                        break
            assert victim_t.gate.is_blocked(mallory.peer_id, time.monotonic())
            honest.send(victim_t.address, seal(honest.identity, weights(2.0), 1, now_ms()))
            await async_wait_until(lambda: node.stats.messages_accepted, "the honest message to be accepted",
                                   until=lambda accepted: accepted == 1)
            assert list(node.exchange._inbox) == [honest.identity.public_key]
            assert victim_t.gate.events["blocked"] == 1 and mallory.peer_id not in node.peers
    run(scenario)


def test_a_peer_written_from_the_spec_alone_pulls_a_blob():
    """PROTOCOL.md §11 as a second implementation reads it: a stock py-libp2p host (Noise, yamux),
    frames of an 8-byte length and an envelope made by the hand-rolled encoder of test_vectors, the
    answers read from a stream the daemon opens back; the reassembled blob is the sealed message."""
    import struct

    import multiaddr
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.security.noise.transport import Transport as NoiseTransport
    from libp2p.stream_muxer.yamux.yamux import Yamux
    from test_vectors import independent_seal

    seed = bytes(range(100, 132))
    key_pair = create_new_key_pair(seed)
    chunks: dict[int, bytes] = {}

    async def read_exactly(stream, n: int) -> bytes:
        data = b""
        while len(data) < n:
            part = await stream.read(n - len(data))
            if not part:
                raise EOFError
            data += part
        return data

    async def answers(stream) -> None:  # the daemon's replies arrive on a stream it opened
        while True:
            try:
                (length,) = struct.unpack(">Q", await read_exactly(stream, 8))
            except EOFError:
                return
            envelope = msgpack.unpackb(await read_exactly(stream, length))
            reply = msgpack.unpackb(envelope["payload"])
            assert envelope["kind"] == "blob_response", reply
            chunks[reply["offset"]] = reply["data"]

    async def main() -> None:
        victim_t = Libp2pTransport(Identity.generate(), listen=LOOPBACK)
        host = new_host(key_pair=key_pair, muxer_opt={"/yamux/1.0.0": Yamux},
                        sec_opt={"/noise": NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)},
                        listen_addrs=[multiaddr.Multiaddr(LOOPBACK[0])])
        async with victim_t.running(), host.run([multiaddr.Multiaddr(LOOPBACK[0])]), trio.open_nursery() as nursery:
            node = victim_node(victim_t)
            bind(node, victim_t, nursery)
            tensor = np.arange(int(1.5 * BLOB_CHUNK) // 4, dtype=np.float32)
            sealed = node.seal(Weights("logreg", 1, 10, [tensor]))
            digest = node.keep_blob(sealed)
            host.set_stream_handler("/manymodels/msg/1.0.0", answers)
            await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(victim_t.listen_addrs()[0])))
            stream = await host.new_stream(info_from_p2p_addr(multiaddr.Multiaddr(victim_t.listen_addrs()[0])).peer_id,
                                           ["/manymodels/msg/1.0.0"])
            for i, offset in enumerate((0, BLOB_CHUNK)):
                request = independent_seal(seed, "blob_request", i + 1, now_ms(),
                                           {"digest": {"bin": digest.hex()}, "offset": offset, "length": BLOB_CHUNK})
                await stream.write(struct.pack(">Q", len(request["envelope"])) + request["envelope"])
            await async_wait_until(lambda: sorted(chunks), "both chunks' offsets",
                                   until=lambda offsets: len(offsets) == 2)
            assert chunks[0] + chunks[BLOB_CHUNK] == sealed
            nursery.cancel_scope.cancel()
    trio.run(main)
