"""Who gets a node's knowledge (`--share`, issue 13 point 4): the policy on its own; a free-rider in
the simulator, under `all` and under `reciprocal`; and a real reciprocal daemon that stops sending
its model to a bare libp2p peer that never gives any, refuses it the blob, and keeps exchanging
with an honest reciprocal daemon."""
import json
import re

import pytest
import trio

from manymodels.node.core.sharing import TRIAL, WINDOW, SharePolicy, ShareError, Sharing
from manymodels.node.sim.simulator import SimulationConfig, run_simulation
from manymodels.protocol import BlobRequest, Identity, open_envelope, seal
from test_daemon import RECIPE, start, status, stop
from waiting import async_wait_until, wait_until

A_PEER = Identity(bytes(32)).peer_id


def test_parse_names_each_policy_and_refuses_what_cannot_work(tmp_path):
    assert SharePolicy.parse("all") == SharePolicy()
    assert SharePolicy.parse("reciprocal") == SharePolicy("reciprocal", 1)
    assert SharePolicy.parse("reciprocal:3").threshold == 3
    listed = tmp_path / "peers.txt"
    listed.write_text(f"# friends\n{A_PEER}  # alice\n\n")
    assert SharePolicy.parse(f"allowlist:{listed}").allow == {A_PEER}
    listed.write_text(f"{A_PEER}\nnot-a-peer\n")
    for text, message in (("some", "all, reciprocal[:N] or allowlist:FILE"), ("reciprocal:0", "N >= 1"),
                          ("reciprocal:x", "N >= 1"), (f"allowlist:{tmp_path / 'none'}", "cannot read it"),
                          (f"allowlist:{listed}", "line 2: 'not-a-peer' is not a peer id"), ("allowlist:", "allowlist:FILE")):
        with pytest.raises(ShareError, match=re.escape(message)):
            SharePolicy.parse(text)


def test_reciprocal_gives_a_trial_then_only_to_peers_that_gave_within_the_window():
    sharing = Sharing(SharePolicy("reciprocal", 2))
    assert [sharing.shares_with("rider", v) for v in range(10, 10 + TRIAL + 2)] == [True] * TRIAL + [False] * 2
    sharing.gave("giver", 10)
    assert sharing.shares_with("giver", 10)  # its trial
    sharing.gave("giver", 12)
    assert sharing.shares_with("giver", 10 + TRIAL)  # two within the window
    assert not sharing.shares_with("giver", 10 + WINDOW)  # the first has left the window
    sharing.gave("giver", 10 + WINDOW)
    assert sharing.shares_with("giver", 10 + WINDOW)
    allow = Sharing(SharePolicy("allowlist", allow=frozenset({A_PEER})))
    assert allow.shares_with(A_PEER, 0) and not allow.shares_with("other", 0)
    assert all(Sharing().shares_with("anyone", v) for v in range(20))


@pytest.mark.slow
def test_a_free_rider_folds_what_it_is_sent_under_all_and_almost_nothing_under_reciprocal():
    def run(share: str) -> dict:
        return run_simulation(SimulationConfig(nodes=6, rounds=8, partition="dirichlet:0.3", model="logreg",
                                               attacks=("freerider:0.2",), share=share))
    everyone, reciprocal = run("all"), run("reciprocal")
    rider = [i for i, n in enumerate(everyone["nodes"]) if n["attack"] == "freerider"]
    assert len(rider) == 1 and reciprocal["nodes"][rider[0]]["attack"] == "freerider"
    free, fair = everyone["nodes"][rider[0]], reciprocal["nodes"][rider[0]]
    assert free["bytes_sent"] == fair["bytes_sent"] == 0  # it gives nothing
    assert free["final_accuracy"] > free["local_only_accuracy"] + 0.1  # under `all` it gains as much as anyone
    assert fair["bytes_received"] < 0.6 * free["bytes_received"]  # under reciprocal: its trial only
    assert fair["final_accuracy"] < free["final_accuracy"] - 0.1
    assert reciprocal["summary"]["mean_accuracy"] >= everyone["summary"]["mean_accuracy"] - 0.01  # honest: no cost
    honest = [n for n in reciprocal["nodes"] if not n["attack"]]
    assert all(n["messages_withheld"] == 8 - TRIAL for n in honest)  # one per round after the rider's trial
    assert reciprocal["config"]["share"] == "reciprocal" and "share" not in everyone["config"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_reciprocal_daemon_starves_a_free_rider_and_keeps_exchanging_with_an_honest_peer(tmp_path):
    from manymodels.node.p2p.libp2p import Libp2pTransport

    homes = [tmp_path / "a", tmp_path / "b"]
    try:
        start(homes[0], *RECIPE, "--partition-id", "0", "--share", "reciprocal")
        start(homes[1], *RECIPE, "--partition-id", "1", "--share", "reciprocal",
              "--bootstrap", status(homes[0])["addrs"][0])
        received = trio.run(_free_ride, Libp2pTransport, status(homes[0]))
        weights = [version for kind, version in received if kind == "weights"]
        assert 1 <= len(weights) <= TRIAL, received  # its trial, then nothing
        assert ("error", "withheld") in received  # and the blob, asked for by digest, is refused
        honest = status(homes[1])["id"]
        wait_until(lambda: json.loads((homes[0] / "state.json").read_text())["provenance"][-1],
                   "a fold of the honest peer's model after the trial", 30,
                   until=lambda last: last["version"] > TRIAL + 2 and last["folded"] == [honest])
        assert status(homes[0])["withheld"] >= 2
    finally:
        for home in homes:
            stop(home)


async def _free_ride(transport_class, daemon: dict) -> list[tuple[str, object]]:
    """Connect to the daemon as a bare peer that gives nothing; for 8 s keep what arrives, as (kind,
    version) for knowledge and (kind, code) for errors; then ask for the daemon's latest blob."""
    rider = Identity.generate()
    transport = transport_class(rider, listen=["/ip4/127.0.0.1/tcp/0"])
    received: list[tuple[str, object]] = []
    messages = []
    transport.set_receiver(lambda sender, data: messages.append(open_envelope(data, now_ms=_now())))
    async with transport.running():
        await transport.connect(daemon["addrs"][0])
        await trio.sleep(8)
        latest = max((m for m in messages if m.kind == "weights"), key=lambda m: m.payload.version)
        transport.send(daemon["id"], seal(rider, BlobRequest(latest.digest, 0, 1 << 20), 1, _now()))
        await async_wait_until(lambda: any(m.kind == "error" for m in messages), "the daemon's answer", 10)
    for m in messages:
        received.append((m.kind, m.payload.version if m.kind == "weights" else getattr(m.payload, "code", None)))
    return received


def _now() -> int:
    import time

    return int(time.time() * 1000)
