"""The trust boundary of a real daemon process under a short flood (loopback): a victim daemon and
one honest daemon, and 10 hostile peers (bare libp2p transports with fresh keys, in another process)
sending garbage, oversize frame headers, foreign-author spam and blob_request floods for ~15 s.
The victim keeps folding its honest neighbour's messages, answers `status` within a second every
time, blocks attackers, and its memory stays bounded.

This is the short version for the suite (under a minute); the long one, with the measurements
against a baseline, churn and partition/heal, is bench/bench_hostile.py (which is also the
attacker process used here: `bench_hostile.py --attack`)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from manymodels.node.runtime.control import NotRunning, request
from waiting import WaitTimeout, wait_until

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]  # daemons and an attacker in processes of their own

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "manymodels"
RECIPE = ["--dataset", "digits", "--partition", "dirichlet:0.5", "--num-partitions", "2", "--model", "logreg",
          "--period", "1", "--exchange", "weights"]
FLOOD_S = 15
STATUS_LIMIT_S = 1.0
RSS_CAP_MIB = 200  # the victim daemon process may grow this much over its pre-flood RSS


def start(home: Path, *args: str) -> None:
    out = subprocess.run([str(EXE), "node", "start", "--home", str(home), "--detach", *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + (home / "daemon.log").read_text(errors="replace")


def status(home: Path) -> tuple[dict, float]:
    began = time.perf_counter()
    value = request(home / "control.sock", "status", timeout=10)
    return value, time.perf_counter() - began


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def accepted_from(home: Path, peer: str) -> int:
    return sum(p["accepted"] for p in request(home / "control.sock", "peers", timeout=10) if p["id"] == peer)


def stop(home: Path) -> None:
    pid_file = home / "daemon.pid"
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    try:
        request(home / "control.sock", "stop", timeout=10)
        wait_until(lambda: not pid_file.exists(), "the daemon to exit", 20, interval=0.1)
    except (NotRunning, OSError, WaitTimeout):
        pass
    if pid is not None and pid_file.exists():  # did not stop in time: this test's own process
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture
def pair(tmp_path):
    victim, honest = tmp_path / "victim", tmp_path / "honest"
    try:
        start(victim, *RECIPE, "--partition-id", "0")
        start(honest, *RECIPE, "--partition-id", "1", "--bootstrap", status(victim)[0]["addrs"][0])
        yield victim, honest
    finally:
        stop(victim)
        stop(honest)


@pytest.mark.timeout(150)
def test_a_daemon_under_a_flood_keeps_learning_from_its_honest_neighbour(pair):
    victim, honest = pair
    wait_until(lambda: (status(victim)[0]["peers"], status(victim)[0]["version"], status(honest)[0]["version"]),
               "the two daemons to connect and learn (victim's peers, victim's and honest's versions)", 60,
               until=lambda seen: seen[0] == 1 and min(seen[1:]) >= 2)
    honest_id = status(honest)[0]["id"]
    digest = next(r["digest"] for r in request(victim / "control.sock", "models", timeout=10) if r.get("local"))
    before = status(victim)[0]
    from_honest = accepted_from(victim, honest_id)
    pid = int((victim / "daemon.pid").read_text())
    rss_before = rss_mib(pid)

    attacker = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "bench_hostile.py"), "--attack", "--addr", before["addrs"][0],
         "--digest", digest, "--peers", "10", "--duration", str(FLOOD_S), "--model", "logreg",
         "--mix", "garbage,oversize,foreign,foreign,request,request", "--max-identities", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latencies, rss_max = [], rss_before
    try:
        deadline = time.monotonic() + FLOOD_S + 5
        while attacker.poll() is None and time.monotonic() < deadline:
            try:
                _, latency = status(victim)
            except NotRunning:
                log = (victim / "daemon.log").read_text(errors="replace")
                raise AssertionError("the victim daemon died under the flood:\n"
                                     + log[log.rfind("Traceback"):][-3000:]) from None
            latencies.append(latency)
            rss_max = max(rss_max, rss_mib(pid))
            time.sleep(0.25)
        out, err = attacker.communicate(timeout=45)
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.communicate()
    sent = json.loads(out.strip().splitlines()[-1])
    assert sent["frames_queued"] > 100 and sent["bytes_sent"] > 0, (sent, err[-2000:])

    after, _ = status(victim)
    # still folding the honest neighbour's messages during the flood
    assert after["version"] >= before["version"] + 3, (before["version"], after["version"])
    assert accepted_from(victim, honest_id) > from_honest
    assert after["messages_accepted"] > before["messages_accepted"]
    # control answers promptly every time it was asked
    assert latencies and max(latencies) < STATUS_LIMIT_S, max(latencies)
    # attackers blocked, foreign authors refused before any signature work
    assert after["gate"]["blocked"] >= 1, after["gate"]
    # frames refused before verification are counted where the operator looks
    assert after["frames_refused"]["too_large"] > 0, after["frames_refused"]
    assert after["rejected"].get("foreign_author", 0) > before["rejected"].get("foreign_author", 0), after["rejected"]
    # memory bounded
    assert rss_max - rss_before < RSS_CAP_MIB, (rss_before, rss_max)
    # nothing an attacker sent reached disk
    assert not any((victim / "blobs").glob("*")) if (victim / "blobs").exists() else True
    # and the honest daemon still counts its victim as a peer
    assert status(honest)[0]["peers"] >= 1
