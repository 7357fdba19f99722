"""Churn and partitions on real daemons (separate processes, loopback): the short versions of
bench/bench_hostile.py's churn and partition/heal runs.

- Churn: half of a four-node network, the bootstrap node among them, is killed with SIGKILL and
  restarted from its home; each comes back with its id, its model and its address, the network
  closes again around it, and learning goes on.
- Partition and heal: two pairs that cannot reach each other learn apart; one `connect` joins them,
  and the four models converge."""
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from test_daemon import start, status, stop
from waiting import wait_until as wait_for

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]  # daemons in processes of their own

EXE = Path(sys.executable).parent / "manymodels"
RECIPE = ["--dataset", "digits", "--partition", "dirichlet:0.3", "--num-partitions", "4", "--model", "logreg",
          "--period", "1"]


def kill9(home: Path) -> None:
    pid = int((home / "daemon.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0,
             f"{home.name} to die", 30)


def test_killed_nodes_come_back_at_their_address_and_the_network_closes_around_them(tmp_path):
    homes = [tmp_path / name for name in "abcd"]
    try:
        start(homes[0], *RECIPE, "--partition-id", "0")
        boot = status(homes[0])["addrs"][0]
        for i, home in enumerate(homes[1:], 1):
            start(home, *RECIPE, "--partition-id", str(i), "--bootstrap", boot)
        wait_for(lambda: all(status(h)["peers"] == 3 for h in homes), "a full mesh of four", 120)
        before = {h.name: status(h) for h in homes}
        for home in homes[:2]:  # the bootstrap node and one other
            kill9(home)
        for home in homes[:2]:
            start(home)
        after = {h.name: status(h) for h in homes}
        assert all(after[k]["id"] == before[k]["id"] and after[k]["addrs"] == before[k]["addrs"] for k in "ab")
        # they redial the peers they knew, and those redial them: no wait for py-libp2p's 60 s
        # refusal of a peer that failed once, nor for a 30 s backoff
        wait_for(lambda: all(status(h)["peers"] == 3 for h in homes), "the mesh to close again", 30)
        wait_for(lambda: all(status(h)["version"] >= before[h.name]["version"] + 3 for h in homes),
                 "three more cycles on every node", 90)
        # the restarted nodes fold their neighbours again: messages accepted since their restart
        wait_for(lambda: all(status(h)["messages_accepted"] > 0 for h in homes[:2]), "messages after restart", 60)
    finally:
        for home in homes:
            stop(home)


def test_two_halves_learn_apart_and_converge_once_connected(tmp_path):
    groups = [[tmp_path / f"g{g}n{i}" for i in range(2)] for g in range(2)]
    try:
        boots = []
        for g, (first, second) in enumerate(groups):
            start(first, *RECIPE, "--partition-id", str(2 * g))
            boots.append(status(first)["addrs"][0])
            start(second, *RECIPE, "--partition-id", str(2 * g + 1), "--bootstrap", boots[g])
        everyone = [h for group in groups for h in group]
        wait_for(lambda: all(status(h)["version"] >= 8 for h in everyone), "eight cycles apart", 120)
        assert all(status(h)["peers"] == 1 for h in everyone)  # the halves never met

        def gap() -> float:
            acc = [statistics.mean(status(h)["accuracy"] for h in group) for group in groups]
            return abs(acc[0] - acc[1])
        apart = gap()
        out = subprocess.run([str(EXE), "connect", boots[1], "--home", str(groups[0][0])], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        wait_for(lambda: all(status(h)["peers"] == 3 for h in everyone), "one network of four", 90)
        joined = {h: status(h)["version"] for h in everyone}
        wait_for(lambda: all(status(h)["version"] >= joined[h] + 5 for h in everyone), "five cycles together", 90)
        # with FedAvg over one full mesh the four models become one: their accuracies agree
        accs = [status(h)["accuracy"] for h in everyone]
        assert max(accs) - min(accs) <= 0.03, (accs, apart)
        assert gap() <= max(apart, 0.03), (gap(), apart)
    finally:
        for home in [h for group in groups for h in group]:
            stop(home)
