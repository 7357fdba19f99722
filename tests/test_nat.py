"""Daemons behind real NAT (network namespaces, iptables MASQUERADE; see nat_network.py): a public
relay/bootstrap node and two home nodes that nobody can dial. The home nodes learn that they are
private, reserve a slot on the relay, find each other through it, exchange weights first over the
relay, then over a direct connection after a hole punch (DCUtR), and beat training alone."""
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from manymodels.node.runtime.control import request
from nat_network import RELAY_IP, NatNetwork, NatUnavailable, daemon_homes, start_daemons
from manymodels.node.learning.recipe import LearnerRecipe
from test_daemon import assert_provenance, start, status, stop
from waiting import wait_until

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

PORT = 4101


@pytest.fixture(scope="module")
def nat(tmp_path_factory):
    """The network and its three daemons: relay (partition 0), home_a (1) and home_b (2)."""
    try:
        net = NatNetwork(f"mm{os.getpid() % 100000}").__enter__()
    except NatUnavailable as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("nat")
    homes = daemon_homes(root)
    try:
        start_daemons(net, homes, PORT)
        yield net, homes
    finally:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(stop, homes.values()))
        net.__exit__()


def local_only_accuracy(partition_id: int, epochs: int) -> float:
    recipe = LearnerRecipe(dataset="digits", partition="dirichlet:0.1", partition_id=partition_id, num_partitions=3,
                           model="logreg")
    learner, data, _, _ = recipe.build()
    learner.fit(epochs)
    return learner.evaluate(data.x_test, data.y_test)["accuracy"]


def peers(home) -> dict[str, dict]:
    return {p["id"]: p for p in request(home / "control.sock", "peers")}


def test_nat_home_nodes_meet_through_the_relay_punch_a_hole_and_beat_local_only(nat):
    net, homes = nat
    a, b = homes["home_a"], homes["home_b"]
    ids = {name: status(home)["id"] for name, home in homes.items()}
    reach = wait_until(lambda: {n: status(h)["reach"]["reachability"] for n, h in homes.items()},
                       "the relay to be public and the home nodes private", 60,
                       until=lambda r: r == {"relay": "public", "home_a": "private", "home_b": "private"})
    assert reach
    for home in (a, b):  # reserved on the relay, reached through it
        addrs = status(home)["addrs"]
        assert any(x.startswith(f"/ip4/{RELAY_IP}/tcp/{PORT}/p2p/{ids['relay']}/p2p-circuit/") for x in addrs)
    # the home nodes find each other (peer exchange via the relay), first through the relay
    wait_until(lambda: peers(a).get(ids["home_b"], {}).get("bytes_by_path", {}),
               "home_a to hear from home_b", 60, until=lambda by: by.get("relayed_received", 0) > 0)
    # then DCUtR punches a hole in both NATs: the bytes move to the direct connection
    seen = wait_until(lambda: (peers(a).get(ids["home_b"], {}), peers(b).get(ids["home_a"], {})),
                      "a direct connection between the home nodes", 60,
                      until=lambda ps: all(p.get("path") == "direct" and p["bytes_by_path"].get("direct_received", 0)
                                           for p in ps))
    assert all(p["bytes_by_path"].get("direct_sent", 0) > 0 for p in seen)
    punched = sum(status(h)["reach"].get("punched", 0) for h in (a, b))
    assert punched >= 1
    relay = status(homes["relay"])["reach"]
    assert relay["relay_service"] and relay["reserved_here"] == 2
    # and learning: weights from the other home node went into each model; better than alone
    wait_until(lambda: [status(h)["version"] for h in homes.values()], "12 cycles on every node", 60,
               until=lambda versions: min(versions) >= 12)
    for i, name in enumerate(homes):
        s = status(homes[name])
        alone = local_only_accuracy(i, s["version"])
        assert s["accuracy"] > alone + 0.1, (name, s["accuracy"], alone)
        assert sum(s["rejected"].values()) == 0
    assert_provenance(a, {ids["relay"], ids["home_b"]})
    assert_provenance(b, {ids["relay"], ids["home_a"]})
