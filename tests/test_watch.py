"""`node status --watch` (issue 11): the live view built from a status and the peers, and the
installed command on a terminal against a running daemon: redrawn until Ctrl-C (exit 0, no
traceback) or until the node stops (one line, exit 0); not with --json."""
import os
import pty
import re
import select
import signal
import subprocess
import time

import pytest
from rich.console import Console

from manymodels.cli.watch import status_view
from test_cli_small import flat, read_more
from test_daemon import EXE, start, status, stop
from terminal import terminal_signals
from waiting import wait_until

PEER = "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB"
STATUS = {"id": "12D3KooWFHDBrb7mspzM2H5HYTkeph1pWnq8h6QFqsHMc2x2fpwg", "addrs": ["/ip4/127.0.0.1/tcp/4001/p2p/x"],
          "state": "running", "compress": "float32", "compress_logits": "float16", "peers": 1,
          "model": "mlp", "exchange": "weights", "rule": "fedavg", "version": 12, "accuracy": 0.9317,
          "uptime_s": 61.5, "home": "/n", "messages_accepted": 40, "rejected": {"bad_signature": 2, "replay": 1},
          "refused": {}, "bytes_sent": 123_456, "bytes_received": 4_500_000, "pulled": 3,
          "gate": {"blocked": 1, "throttled": 4, "blocked_now": 0, "inbound_dropped": 5}, "discovery": None,
          "frames_refused": {"too_large": 2, "truncated": 0, "in_flight": 0, "gate": 7, "stream_error": 0}}
PEERS = [{"id": PEER, "addrs": [], "first_seen": 1, "last_seen": 0, "accepted": 40, "offered": {"weights": "mlp"},
          "connected": True, "rejected": 3, "reputation": None, "banned": True}]


def shown(renderable) -> str:
    console = Console(record=True, width=200, file=open(os.devnull, "w"))
    console.print(renderable)
    return flat(console.export_text())


def test_the_live_view_shows_the_status_its_counters_by_reason_and_the_peers():
    text = shown(status_view(STATUS, PEERS))
    assert f"node {STATUS['id']} (mlp, weights, rule fedavg, compress float32)" in text
    assert "model version 12, held-out accuracy 0.932" in text and "40 messages accepted (3 pulled by digest)" in text
    assert "bytes sent 123.5 KB, received 4.5 MB" in text
    assert "rejected bad_signature 2, replay 1 refused none" in text
    assert "gate 0 peers blocked now, 5 frames dropped, blocked 1, throttled 4" in text
    assert "frames refused gate 7, too_large 2" in text
    assert f"{PEER} yes never weights mlp 40 3 banned" in text
    fresh = shown(status_view({**STATUS, "accuracy": None}))
    assert "held-out accuracy -" in fresh and "last seen" not in fresh  # no peers, no table
    reach = {"reachability": "private", "relayed_addrs": ["/ip4/198.51.100.1/tcp/4001/p2p/R/p2p-circuit/p2p/x"],
             "relay_service": False, "reserved_here": 0, "circuits_here": 0, "punched": 1, "punch_failed": 1}
    behind_nat = shown(status_view({**STATUS, "reach": reach}, [{**PEERS[0], "path": "relayed"}]))
    assert "reachability private; reached through 1 relays; 1 of 2 hole punches direct" in behind_nat
    assert f"{PEER} relayed never" in behind_nat
    loading = shown(status_view({**STATUS, "state": "loading"}))
    assert f"node {STATUS['id']} (mlp, weights, rule fedavg, compress float32); loading its learner" in loading


def test_watch_is_not_json(cli, tmp_path):
    out = cli("node", "status", "--home", tmp_path, "--watch", "--json")
    assert out.returncode == 2 and out.stderr.startswith("error: --watch is a live view") and "Traceback" not in out.stderr


class Watch:
    """`node status --watch` on a pseudo-terminal (rich draws it live, in place), stderr piped."""

    def __init__(self, home) -> None:
        self.terminal, other = pty.openpty()
        self.process = subprocess.Popen([str(EXE), "node", "status", "--home", str(home), "--watch", "--interval",
                                         "0.5"], stdout=other, stderr=subprocess.PIPE, text=True,
                                        preexec_fn=terminal_signals,
                                        env={**os.environ, "TERM": "xterm", "COLUMNS": "200"})
        os.close(other)
        self.read: list[bytes] = []

    def shown(self, what: str, until) -> str:
        return wait_until(lambda: read_more(self.terminal, self.read), what, 30, until=until, interval=0.1)

    def ended(self) -> tuple[int, str, str]:
        """Exit code, all it showed, its stderr."""
        deadline = time.monotonic() + 30
        # read while waiting: a full terminal would block the process's last writes, and so its exit
        while self.read[-1:] != [b""] and (self.process.poll() is None or select.select([self.terminal], [], [], 1)[0]):
            if time.monotonic() > deadline:
                raise AssertionError(f"node status --watch still runs 30 s after Ctrl-C: {b''.join(self.read)[-2000:]!r}")
            if select.select([self.terminal], [], [], 0.2)[0]:
                try:
                    self.read.append(os.read(self.terminal, 1 << 16))
                except OSError:  # the other side closed
                    self.read.append(b"")
        code = self.process.wait(5)
        os.close(self.terminal)
        return code, b"".join(self.read).decode(errors="replace"), self.process.stderr.read()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_watch_redraws_a_running_node_until_ctrl_c_or_until_it_stops(tmp_path):
    home = tmp_path / "a"
    start(home, "--dataset", "digits", "--model", "logreg", "--period", "1")
    try:
        s = wait_until(lambda: status(home), "a fold", 60, until=lambda s: s["accuracy"] is not None)
        watch = Watch(home)
        watch.shown("a few redraws", lambda text: text.count("Ctrl-C to stop") >= 3)
        watch.process.send_signal(signal.SIGINT)
        code, seen, err = watch.ended()
        assert code == 0 and "Traceback" not in err, err
        assert "\x1b[" in seen  # drawn in place on the terminal
        assert s["id"] in seen and "held-out accuracy 0." in seen and "model version " in seen
        watch = Watch(home)  # the node stops under a watch: one line, and the watch ends too
        watch.shown("the first view", lambda text: "Ctrl-C to stop" in text)
        stop(home)
        code, seen, err = watch.ended()
        assert code == 0 and "Traceback" not in err, err
        assert re.search(r"\nthe node stopped: .+\s*$", seen.replace("\x1b[?25h", "\n")), seen[-300:]
    finally:
        stop(home)
