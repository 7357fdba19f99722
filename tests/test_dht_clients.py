"""A Kad-DHT client (a peer that queries the DHT but does not serve /ipfs/kad/1.0.0, as a home node
does) is answered by a daemon's DHT and never asked: it stays out of the routing table, and no
lookup or ADD_PROVIDER goes to it (upstream.kad_servers_only); nor, speaking no gossipsub, is it
offered a pubsub stream every round. tests/test_interop_js.py checks the
same with a js-libp2p client; this one needs no node."""
from __future__ import annotations

import hashlib
import logging
from contextlib import AsyncExitStack

import pytest
import trio

libp2p = pytest.importorskip("libp2p")

from libp2p.kad_dht.kad_dht import DHTMode, KadDHT  # noqa: E402
from libp2p.tools.anyio_service import background_trio_service  # noqa: E402

from manymodels.node.p2p.discovery import Discovery, DiscoveryConfig  # noqa: E402
from manymodels.node.p2p.libp2p import Libp2pTransport  # noqa: E402
from manymodels.node.p2p.providers import provider_key  # noqa: E402
from manymodels.protocol import Identity  # noqa: E402

pytestmark = pytest.mark.slow

FAST = DiscoveryConfig(heartbeat_interval=0.2, refresh_fast=0.5, refresh_slow=2.0)


def test_a_dht_client_is_answered_but_never_asked(caplog):
    caplog.set_level(logging.WARNING, logger="libp2p")
    client_id = []

    async def main():
        server, client = Libp2pTransport(Identity.generate()), Libp2pTransport(Identity.generate())
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(server.running())
            discovery = await stack.enter_async_context(Discovery(server, config=FAST).running())
            await stack.enter_async_context(client.running())
            client_dht = KadDHT(client.host, DHTMode.CLIENT, enable_values=False)
            await stack.enter_async_context(background_trio_service(client_dht))
            client_id.append(client.address)
            await client.connect(server.listen_addrs()[0])
            digest = hashlib.sha256(b"a model").digest()
            await discovery.provide(digest)
            # the client asks (a kad stream to the server), and is answered
            found = await client_dht.provider_store._get_providers_from_peer_with_closers(
                server.host.get_id(), bytes.fromhex(provider_key(digest)))
            assert [info.peer_id.to_base58() for info in found[0]] == [server.address]
            for round_ in range(3):  # maintenance rounds and provides while the client stays connected
                discovery.kick()
                await discovery.provide(hashlib.sha256(b"model %d" % round_).digest())
                await trio.sleep(0.6)
            assert client.address in server.connected_peers()
            assert discovery.known_peers() == []

    async def bounded():
        with trio.fail_after(30):
            await main()

    trio.run(bounded)
    # asked, the client would refuse: "Failed to send ADD_PROVIDER to <it>", "protocols not supported"
    about_client = [r.getMessage() for r in caplog.records if client_id[0] in r.getMessage()]
    assert [m for m in about_client if "ADD_PROVIDER" in m or "/ipfs/kad" in m] == []
    # nor is it offered gossipsub each round (py-libp2p's pubsub tries once as it connects)
    assert len([m for m in about_client if "/meshsub/" in m]) <= 2
