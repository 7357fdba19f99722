"""Pulls by digest between two nodes on real libp2p transports (loopback, one process): a model of
several chunks arrives whole with requests in flight, only the peer asked may answer, and a
holder that answers wrongly makes the pull fail with a reason."""
import time

import numpy as np
import pytest
import trio

from manymodels.aggregation import get_rule
from manymodels.node.runtime.daemon import BLOB_CHUNK, DaemonNode
from manymodels.node.core.exchange import WeightGossip
from manymodels.node.learning.models import build_model
from manymodels.node.learning.torch_learner import TorchLearner
from manymodels.node.core.reputation import Reputation
from manymodels.node.p2p.libp2p import Libp2pTransport
from manymodels.protocol import BlobRequest, BlobResponse, Identity, Weights, open_envelope
from waiting import async_wait_until


def node(identity: Identity, transport: Libp2pTransport, cls=DaemonNode) -> DaemonNode:
    x = np.zeros((4, 4), np.float32)
    learner = TorchLearner(build_model("logreg", (4,), 2, seed=0), x, np.zeros(4, np.int64), architecture="logreg")
    return cls(identity, learner, transport, WeightGossip(get_rule("fedavg")), num_classes=2,
               clock=lambda: int(time.time() * 1000), reputation=Reputation())


def pull(holder_cls=DaemonNode, *, intruder: bool = False) -> dict:
    """For a model of about 2.5 chunks: what the holder keeps ("sealed"), what the puller fetched or
    why not ("fetched"), and how many forged chunks reached the puller during the pull ("fakes")."""
    ids = [Identity(bytes([i]) * 32) for i in (1, 2, 3)]
    tensor = np.arange(int(2.5 * BLOB_CHUNK) // 4, dtype=np.float32)
    out = {}

    async def main() -> None:
        transports = [Libp2pTransport(i) for i in ids]
        async with transports[0].running(), transports[1].running(), transports[2].running():
            holder, puller = node(ids[0], transports[0], holder_cls), node(ids[1], transports[1])
            await transports[1].connect(transports[0].listen_addrs()[0])
            sealed = holder.seal(Weights("logreg", 1, 10, [tensor]))
            digest = holder.keep_blob(sealed)
            if intruder:  # a third peer answers too, with the right digest and wrong bytes
                mallory = node(ids[2], transports[2])
                await transports[2].connect(transports[1].listen_addrs()[0])
                fake = BlobResponse(digest, 0, len(sealed), b"\0" * BLOB_CHUNK)

                async def interfere() -> None:
                    while True:
                        transports[2].send(ids[1].peer_id, mallory.seal(fake))
                        await trio.sleep(0.01)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(interfere)
                    await async_wait_until(lambda: set(puller.peers), "the intruder's fakes to arrive",
                                           until=lambda peers: ids[2].peer_id in peers)
                    before = puller.peers[ids[2].peer_id]["accepted"]
                    out["fetched"] = await puller.fetch(ids[0].peer_id, digest)
                    out["fakes"] = puller.peers[ids[2].peer_id]["accepted"] - before
                    nursery.cancel_scope.cancel()
            else:
                try:
                    out["fetched"] = await puller.fetch(ids[0].peer_id, digest)
                except ValueError as exc:  # raised in this task, as the daemon's callers see it
                    out["fetched"] = exc
            out["sealed"] = sealed
    trio.run(main)
    return out


@pytest.mark.slow
def test_a_model_of_several_chunks_arrives_whole():
    out = pull()
    sealed, fetched = out["sealed"], out["fetched"]
    assert len(sealed) > 2 * BLOB_CHUNK and fetched == sealed
    assert open_envelope(fetched, now_ms=int(time.time() * 1000)).payload.tensors[0][-1] == int(2.5 * BLOB_CHUNK) // 4 - 1


@pytest.mark.slow
def test_only_the_peer_asked_answers_a_pull():
    out = pull(intruder=True)
    assert out["fakes"] > 0  # forged chunks for the same digest were verified and delivered meanwhile
    assert out["fetched"] == out["sealed"]


class ShortChunks(DaemonNode):
    """A holder that answers every request with one byte less than it should."""

    def _serve_blob(self, sender_address: str, request: BlobRequest) -> None:
        blob = self.blobs[request.digest]
        end = min(len(blob), request.offset + min(request.length, BLOB_CHUNK)) - 1
        self.transport.send(sender_address, self.seal(BlobResponse(request.digest, request.offset, len(blob),
                                                                   blob[request.offset:end])))


def test_a_chunk_of_the_wrong_length_fails_the_pull():
    failed = pull(ShortChunks)["fetched"]
    assert isinstance(failed, ValueError) and "wrong length" in str(failed)
