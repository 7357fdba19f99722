"""Real daemons in separate processes on loopback (and on test hosts in network namespaces):
joined through one bootstrap peer, they find each other, exchange signed weights (one of them as
int8), beat training alone, survive a kill -9, and reject a hostile peer's messages while the network keeps working."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from manymodels.node.runtime.control import NotRunning, request
from manymodels.node.learning.recipe import LearnerRecipe
from waiting import wait_until

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow,  # daemons in processes of their own
              pytest.mark.usefixtures("one_torch_thread")]  # local-only baselines train as a worker does

EXE = Path(sys.executable).parent / "manymodels"
RECIPE = ["--dataset", "digits", "--partition", "dirichlet:0.1", "--num-partitions", "3", "--model", "mlp",
          "--period", "1"]


def start(home: Path, *args: str, prefix: tuple[str, ...] = ()) -> str:
    out = subprocess.run([*prefix, str(EXE), "node", "start", "--home", str(home), "--detach", *args],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr + (home / "daemon.log").read_text(errors="replace")
    return out.stdout


def status(home: Path) -> dict:
    return request(home / "control.sock", "status")


def stop(home: Path) -> None:
    try:
        request(home / "control.sock", "stop")
    except NotRunning:
        return
    wait_until(lambda: not (home / "daemon.pid").exists(), "the daemon to exit", 60)


def assert_provenance(home: Path, peers: set[str]) -> None:
    """The saved provenance names what each fold took in: messages from these peers, by digest."""
    provenance = json.loads((home / "state.json").read_text())["provenance"]
    assert {p for entry in provenance for p in entry["folded"]} == peers
    assert all(len(entry["digests"]) >= len(entry["folded"]) > 0 for entry in provenance)
    assert all(len(bytes.fromhex(d)) == 32 for entry in provenance for d in entry["digests"])


def local_only_accuracy(partition_id: int, epochs: int) -> float:
    recipe = LearnerRecipe(dataset="digits", partition="dirichlet:0.1", partition_id=partition_id, num_partitions=3)
    learner, data, _, _ = recipe.build()
    learner.fit(epochs)
    return learner.evaluate(data.x_test, data.y_test)["accuracy"]


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    root = tmp_path_factory.mktemp("net")
    homes = [root / name for name in "abc"]
    start(homes[0], *RECIPE, "--partition-id", "0", "--reputation", "0.7", "--compress", "int8")  # int8 weights
    bootstrap = status(homes[0])["addrs"][0]
    # b announces its weights and never pushes them: a and c pull them by digest before each fold
    start(homes[1], *RECIPE, "--partition-id", "1", "--bootstrap", bootstrap, "--push-limit", "0")
    start(homes[2], *RECIPE, "--partition-id", "2", "--bootstrap", bootstrap)
    yield homes
    for home in homes:
        stop(home)


def test_daemons_joined_through_one_bootstrap_find_each_other_and_beat_local_only(network):
    # c only knows a; it must learn about b through peer exchange (and b about c)
    wait_until(lambda: [status(h)["peers"] for h in network], "every node to have two peers",
               until=lambda peers: all(n == 2 for n in peers))
    wait_until(lambda: [status(h)["version"] for h in network], "15 learning cycles on every node", 240,
               until=lambda versions: min(versions) >= 15)
    # announcements over gossipsub reach every node
    wait_until(lambda: [status(h)["discovery"]["announces_received"] for h in network], "announcements",
               until=all)
    for i, home in enumerate(network):
        s = status(home)
        alone = local_only_accuracy(i, s["version"])
        assert s["accuracy"] > alone + 0.1, (i, s["accuracy"], alone)
        assert s["messages_accepted"] > 0 and sum(s["rejected"].values()) == 0
        peers = request(home / "control.sock", "peers")
        assert sum(p["connected"] for p in peers) == 2
        assert all(p["offered"].get("weights") == "mlp" for p in peers)
        assert (s["pulled"] > 0) == (i != 1)  # b's weights came by pull, a's and c's by push
        assert s["compress"] == ("int8" if i == 0 else "float32")  # and the others decode a's
        assert json.loads((home / "config.json").read_text())["compress"] == s["compress"]
        assert_provenance(home, {status(h)["id"] for h in network} - {s["id"]})


def test_a_killed_daemon_restarts_with_its_id_and_its_last_model(network):
    home = network[2]
    before = status(home)
    wait_until(lambda: status(home)["version"], "a saved cycle", until=lambda v: v > before["version"] + 1)
    os.kill(int((home / "daemon.pid").read_text()), signal.SIGKILL)
    wait_until(lambda: subprocess.run(["kill", "-0", (home / "daemon.pid").read_text().strip()],
                                      capture_output=True).returncode != 0, "the process to die", 30)
    state = json.loads((home / "state.json").read_text())
    saved = {h["version"]: h for h in state["history"]}
    start(home)  # the saved config: same data, same bootstrap peer
    after = status(home)
    assert after["id"] == before["id"]
    # the counters run on from the saved state, not from zero
    assert after["messages_accepted"] >= state["stats"]["messages_accepted"] > 0
    assert after["bytes_sent"] >= state["stats"]["bytes_sent"] > 0 and after["pulled"] >= state["stats"]["pulled"]
    assert after["addrs"] == before["addrs"]  # its port kept: the peers that knew it can dial it again
    assert after["version"] >= max(saved)
    history = wait_until(lambda: json.loads((home / "state.json").read_text())["history"],
                         "the first save after the restart",
                         until=lambda history: any(e.get("restored") for e in history))
    restored = [e for e in history if e.get("restored")][-1]
    # the checkpoint came back: the restored model scores exactly what it scored when it was saved
    assert restored["accuracy"] == saved[restored["version"]]["accuracy"]
    wait_until(lambda: status(home)["peers"], "the restarted node to rejoin", until=lambda n: n == 2)


def test_hostile_peer_messages_are_rejected_and_counted_and_the_network_keeps_working(network):
    import trio

    from manymodels.node.p2p.libp2p import Libp2pTransport
    from manymodels.protocol import Identity, Weights, seal

    target = status(network[0])
    before = target["rejected"]
    mallory, victim = Identity.generate(), Identity.generate()

    async def attack():
        transport = Libp2pTransport(mallory)
        async with transport.running():
            peer = await transport.connect(target["addrs"][0])
            now = int(time.time() * 1000)
            good = seal(mallory, Weights("mlp", 1, 10, []), 1, now)
            tampered = bytearray(good)
            tampered[-2] ^= 1
            forged = bytearray(seal(mallory, Weights("mlp", 1, 10, []), 2, now))
            start = forged.index(mallory.public_key)
            forged[start:start + 32] = victim.public_key  # another author on mallory's connection
            bad_sig = bytearray(seal(mallory, Weights("mlp", 4, 10, []), 4, now))
            bad_sig[bad_sig.index(b"\xa3sig\xc4\x40") + 10] ^= 1
            for data in (b"\x93garbage", good, good, bytes(tampered), bytes(forged), bytes(bad_sig),
                         seal(mallory, Weights("mlp", 3, 10, []), 3, now - 3_600_000)):
                transport.send(peer, data)
            await trio.sleep(2)
    trio.run(attack)
    after = wait_until(lambda: status(network[0]), "the rejections to be counted", 30,
                       until=lambda s: sum(s["rejected"].values()) >= sum(before.values()) + 6)
    gained = {k: v - before.get(k, 0) for k, v in after["rejected"].items()}
    assert gained == {"malformed": 1, "replayed": 1, "digest_mismatch": 1, "foreign_author": 1, "bad_signature": 1,
                      "stale": 1}
    hostile = [p for p in request(network[0] / "control.sock", "peers") if p["id"] == mallory.peer_id]
    assert hostile and hostile[0]["rejected"] == 6 and hostile[0]["strikes"] > 4  # six failures, decaying
    version = after["version"]
    wait_until(lambda: status(network[0])["version"], "learning to go on", until=lambda v: v >= version + 2)


def test_a_poisonous_peer_is_banned_by_reputation_and_then_rejected(network):
    import numpy as np
    import trio

    from manymodels.node.p2p.libp2p import Libp2pTransport
    from manymodels.protocol import Identity, Weights, seal

    target = status(network[0])  # a runs with --reputation 0.7
    learner = LearnerRecipe(dataset="digits", partition="dirichlet:0.1", num_partitions=3).build()[0]
    poison = [np.full(t.shape, 1000.0, dtype=t.dtype) for t in learner.get_weights()]
    mallory = Identity.generate()
    banned = lambda: [p for p in request(network[0] / "control.sock", "peers")  # noqa: E731
                      if p["id"] == mallory.peer_id and p["banned"]]

    async def attack():
        transport = Libp2pTransport(mallory)
        async with transport.running():
            peer = await transport.connect(target["addrs"][0])
            with trio.move_on_after(60):
                for seq in range(1, 10_000):
                    transport.send(peer, seal(mallory, Weights("mlp", seq, 100, poison), seq, int(time.time() * 1000)))
                    await trio.sleep(0.5)
                    if seq % 4 == 0 and await trio.to_thread.run_sync(banned):
                        # one more after the ban: the protocol layer stops it
                        transport.send(peer, seal(mallory, Weights("mlp", seq + 1, 100, poison), seq + 1,
                                                  int(time.time() * 1000)))
                        await trio.sleep(1)
                        return
    trio.run(attack)
    entry = banned()
    assert entry and entry[0]["reputation"] < 0.7
    assert status(network[0])["rejected"].get("banned", 0) >= 1
    honest = [p for p in request(network[0] / "control.sock", "peers") if p["id"] != mallory.peer_id]
    assert honest and not any(p["banned"] for p in honest)


def test_cli_network_commands(network, cli):
    home = network[0]
    out = cli("node", "status", "--home", home, "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["id"].startswith("12D3KooW")
    config = (home / "config.json").read_bytes()
    again = cli("node", "start", "--home", home, "--period", "7")
    assert again.returncode == 2 and "already running" in again.stderr
    assert (home / "config.json").read_bytes() == config  # the running node's config is left as it runs
    models = json.loads(cli("models", "--home", home, "--json").stdout)
    remote = sorted((m for m in models if not m.get("local")), key=lambda m: -m["received"])
    assert len(remote) >= 2
    pulled = cli("pull", remote[0]["peer"], remote[0]["digest"], "--home", home)
    assert pulled.returncode == 0, pulled.stderr
    blob = home / "blobs" / f"{remote[0]['digest']}.msg"
    check = cli("verify", blob, "--json")
    assert json.loads(check.stdout)["sender"] == remote[0]["peer"]
    # 'any': whoever announced it (gossipsub) or provides it (DHT); the author's signature is checked.
    # The digest comes from b's own listing, read now: authors keep only their newest messages.
    seen = [m for m in json.loads(cli("models", "--home", network[1], "--json").stdout) if not m.get("local")]
    newest = max(seen, key=lambda m: m["received"])
    again = cli("pull", "any", newest["digest"], "--home", network[1], "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["author"] == newest["peer"]
    # a digest the node holds itself is answered from its own store
    own = json.loads(cli("models", "--home", network[1], "--json").stdout)[0]
    mine = cli("pull", "any", own["digest"], "--home", network[1], "--json")
    assert mine.returncode == 0 and json.loads(mine.stdout)["author"] == own["peer"], mine.stderr
    gone = cli("pull", remote[0]["peer"], "00" * 32, "--home", home)
    assert gone.returncode == 2 and "does not hold" in gone.stderr
    bad = cli("connect", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB",
              "--home", home)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.strip().count("\n") == 0


def test_commands_without_a_daemon_are_one_clear_line(cli, tmp_path):
    for args in (["node", "status"], ["node", "stop"], ["peers"], ["models"]):
        out = cli(*args, "--home", tmp_path / "nothing")
        assert out.returncode == 2
        assert "no node is running" in out.stderr and "Traceback" not in out.stderr


def _netns(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", *args], capture_output=True, text=True)


@pytest.fixture
def two_hosts():
    """Two test hosts, each in its own network namespace, joined by a veth pair."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed")
    names = [f"mm{os.getpid()}a", f"mm{os.getpid()}b"]
    made = _netns("add", names[0])
    if made.returncode != 0:
        pytest.skip(f"cannot create network namespaces here: {made.stderr.strip()}")
    try:
        _netns("add", names[1])
        steps = [
            ["ip", "link", "add", f"v{names[0]}", "type", "veth", "peer", "name", f"v{names[1]}"],
            ["ip", "link", "set", f"v{names[0]}", "netns", names[0]],
            ["ip", "link", "set", f"v{names[1]}", "netns", names[1]],
            ["ip", "-n", names[0], "addr", "add", "10.77.0.1/24", "dev", f"v{names[0]}"],
            ["ip", "-n", names[1], "addr", "add", "10.77.0.2/24", "dev", f"v{names[1]}"],
            *(["ip", "-n", n, "link", "set", dev, "up"] for n in names for dev in ("lo", f"v{n}")),
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot wire the test hosts: {' '.join(step)}: {done.stderr.strip()}")
        yield names
    finally:
        for name in names:
            _netns("delete", name)


def test_daemons_on_separate_test_hosts(two_hosts, tmp_path):
    homes = [tmp_path / "a", tmp_path / "b"]
    try:
        start(homes[0], *RECIPE, "--partition-id", "0", "--listen", "/ip4/10.77.0.1/tcp/4101",
              prefix=("ip", "netns", "exec", two_hosts[0]))
        addr = [a for a in status(homes[0])["addrs"] if "10.77.0.1" in a][0]
        start(homes[1], *RECIPE, "--partition-id", "1", "--listen", "/ip4/10.77.0.2/tcp/4101",
              "--bootstrap", addr, prefix=("ip", "netns", "exec", two_hosts[1]))
        wait_until(lambda: [(s["peers"], s["messages_accepted"]) for s in map(status, homes)],
                   "the two hosts to exchange messages (peers, messages accepted)",
                   until=lambda seen: all(peers == 1 and accepted >= 3 for peers, accepted in seen))
        peers = request(homes[1] / "control.sock", "peers")
        assert peers[0]["id"] == status(homes[0])["id"]
    finally:
        for home in homes:
            stop(home)


def test_daemons_of_different_architectures_learn_from_each_other_by_distillation(tmp_path):
    """A logistic regression, a CNN and a scikit-learn forest: no weights could be shared."""
    homes = [tmp_path / m for m in ("logreg", "cnn", "forest")]
    recipe = [*RECIPE, "--exchange", "distill"]
    try:
        start(homes[0], *recipe, "--partition-id", "0", "--model", "logreg")
        addr = status(homes[0])["addrs"][0]
        for i, (home, model) in enumerate(zip(homes[1:], ("cnn", "forest")), start=1):
            start(home, *recipe, "--partition-id", str(i), "--model", model, "--bootstrap", addr)
        wait_until(lambda: [status(h)["version"] for h in homes], "12 cycles on every node", 300,
                   until=lambda versions: min(versions) >= 12)
        for i, (home, model) in enumerate(zip(homes, ("logreg", "cnn", "forest"))):
            s = status(home)
            recipe_alone = LearnerRecipe(dataset="digits", partition="dirichlet:0.1", partition_id=i,
                                         num_partitions=3, model=model)
            learner, data, _, _ = recipe_alone.build()
            learner.fit(s["version"])
            alone = learner.evaluate(data.x_test, data.y_test)["accuracy"]
            assert s["accuracy"] > alone + 0.1, (model, s["accuracy"], alone)
            assert s["refused"] == {} and sum(s["rejected"].values()) == 0
            offered = {p["offered"].get("logits") for p in request(home / "control.sock", "peers")}
            assert offered == {"logreg", "cnn", "forest"} - {model}
            assert_provenance(home, {status(h)["id"] for h in homes} - {s["id"]})
    finally:
        for home in homes:
            stop(home)
