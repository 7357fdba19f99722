"""Interop with another libp2p implementation: a js-libp2p 2.10 peer (tests/interop/js, Node >= 20)
joins a real daemon on loopback. It dials it (Noise, yamux, identify), verifies its gossipsub
announcements and its messages on /manymodels/msg/1.0.0 with a verifier written from
docs/PROTOCOL.md alone, finds it as the DHT provider of an announced digest, and is dialed by it.
Being a DHT client (as a home node is), it must stay out of the daemon's routing table: no
ADD_PROVIDER pushed to it, and its ports not redialed after it left.

The JS packages come from `npm ci --prefix tests/interop/js` (the Makefile runs it where npm exists);
without node or them the tests skip and say so."""
import json
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from manymodels.node.runtime.control import request
from waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "tests" / "interop" / "js"
EXE = Path(sys.executable).parent / "manymodels"
NODE = shutil.which("node")


def _missing() -> str | None:
    if NODE is None:
        return "node is not installed: the js-libp2p interop peer cannot run"
    if not (JS / "node_modules" / "libp2p").is_dir():
        return "the JS peer's packages are not installed (npm ci --prefix tests/interop/js, run by make)"
    return None


pytestmark = [pytest.mark.skipif(_missing() is not None, reason=str(_missing())), pytest.mark.slow,
              pytest.mark.multiprocess]


def test_the_js_verifier_agrees_with_the_protocol_vectors():
    out = subprocess.run([NODE, "vectors.mjs", str(ROOT / "docs" / "PROTOCOL.md")], cwd=JS, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    blocks = re.findall(r"```vector name=(\S+)\n(.*?)```", (ROOT / "docs" / "PROTOCOL.md").read_text(), re.S)
    expected = {name: m.group(1) for name, body in blocks if (m := re.search(r"^result: (\S+)", body, re.M))}
    # the signature layer (§3, §4) is what the verifier checks: replay, payload schemas and codecs are not its part
    signature_layer = {name: r for name, r in expected.items()
                       if name in results and r in {"accept", "digest_mismatch", "bad_signature", "bad_key"}}
    assert len(signature_layer) >= 20
    assert {name: results.get(name) for name in signature_layer} == signature_layer


class Lines:
    """The JSON lines a process prints, read in a thread so a wait can time out."""

    def __init__(self, process: subprocess.Popen) -> None:
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self._lines.put(line) for line in process.stdout], daemon=True).start()

    def next(self, event: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                seen = json.loads(self._lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no {event!r} line from the JS peer within {timeout:.0f} s") from None
            assert seen["event"] != "error", seen
            if seen["event"] == event:
                return seen


@pytest.fixture
def daemon(tmp_path):
    home = tmp_path / "node"
    out = subprocess.run([str(EXE), "node", "start", "--home", str(home), "--detach", "--dataset", "digits",
                          "--model", "logreg", "--period", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    yield home
    subprocess.run([str(EXE), "node", "stop", "--home", str(home)], capture_output=True, timeout=60)


def test_a_js_libp2p_peer_joins_a_daemon(daemon, cli, tmp_path):
    status = wait_until(lambda: request(daemon / "control.sock", "status"), "the daemon's first period", 60,
                        until=lambda s: s["version"] >= 1)
    me = status["id"]
    js = subprocess.Popen([NODE, "peer.mjs", status["addrs"][0]], cwd=JS, stdout=subprocess.PIPE,
                          stderr=(tmp_path / "js.log").open("w"), text=True)
    try:
        lines = Lines(js)
        listening = lines.next("listening", 15)
        seen = lines.next("hung_up", 40)
        # Noise, yamux, and identify naming our protocols
        assert seen["connection"] == {"encryption": "/noise", "multiplexer": "/yamux/1.0.0", "direction": "outbound"}
        assert {"/manymodels/msg/1.0.0", "/ipfs/kad/1.0.0", "/meshsub/1.1.0"} <= set(seen["identify"]["protocols"])
        # gossipsub announcements under our message-id rule, each signature checked by the JS verifier
        announcements = seen["announcements"]
        assert announcements["valid"] >= 1 and announcements["invalid"] == 0, announcements
        assert announcements["origin_matches"] and announcements["first"]["author"] == me
        assert announcements["first"]["content"] == "weights" and announcements["first"]["model"] == "logreg"
        # the daemon's messages on its own streams, signed by the connection's peer
        messages = seen["messages"]
        assert messages["invalid"] == 0 and messages["author_matches"], messages
        assert {"hello", "peers"} <= set(messages["kinds"])
        # the DHT names the daemon as the provider of a digest it announced
        assert me in seen["providers"]
        # the daemon dials the JS peer
        connected = cli("connect", listening["addrs"][0], "--home", daemon)
        assert connected.returncode == 0 and listening["id"] in connected.stdout, connected.stderr
        dialed = lines.next("dialed", 20)
        assert (dialed["by"], dialed["direction"]) == (me, "inbound")
        assert dialed["messages"] >= 1 and dialed["invalid"] == 0  # and messages come over that connection
        assert js.wait(timeout=10) == 0
    finally:
        js.kill()
    # a DHT client queried the daemon: not in its routing table, no ADD_PROVIDER pushed to it, and
    # its ports not redialed once it left (four periods later)
    version = request(daemon / "control.sock", "status")["version"]
    wait_until(lambda: request(daemon / "control.sock", "status"), "four more periods", 30,
               until=lambda s: s["version"] >= version + 4)
    assert request(daemon / "control.sock", "status")["discovery"]["dht_peers"] == 0
    log = (daemon / "daemon.log").read_text(errors="replace")
    assert "ADD_PROVIDER" not in log and "protocol not supported: /ipfs/kad" not in log, log[-3000:]
    assert "Failed to open TCP stream" not in log, log[-3000:]  # the JS peer is the daemon's only peer
