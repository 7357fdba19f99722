"""`manymodels up`: a local network in one command, driven through the installed command. Three
daemons join through the first and learn from each other while one live table shows them; Ctrl-C (a
real SIGINT to its process group) stops them all: one line, exit 0, every daemon gone, its state
saved. Run again with --detach, `up` restarts the same nodes and leaves them running; `down` stops them."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from manymodels.node.runtime.control import NotRunning, request
from terminal import terminal_signals
from waiting import wait_until

EXE = Path(sys.executable).parent / "manymodels"
RECIPE = ["--period", "1", "--dataset", "digits", "--model", "logreg"]


def statuses(root: Path) -> list[dict | None]:
    def status(home: Path) -> dict | None:
        try:
            return request(home / "control.sock", "status", timeout=5)
        except (NotRunning, OSError):  # not up yet
            return None
    return [status(root / f"node-{i}") for i in range(3)]


def learning_together(seen: list[dict | None]) -> bool:
    """Every node has folded a peer's model; node-0 holds the connections of the two that joined through it."""
    return (all(s and s["version"] >= 1 and s["messages_accepted"] >= 1 and s["peers"] >= 1 for s in seen)
            and seen[0]["peers"] == 2)


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def assert_stopped_and_saved(root: Path, pids: list[int], versions: list[int]) -> None:
    for i, (pid, version) in enumerate(zip(pids, versions)):
        home = root / f"node-{i}"
        assert gone(pid) and not (home / "daemon.pid").exists()
        assert json.loads((home / "state.json").read_text())["version"] >= version
        assert (home / "daemon.log").read_text().splitlines()[-1].endswith("(state saved)")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_up_runs_a_network_in_one_live_table_ctrl_c_stops_it_and_up_restarts_it(tmp_path, cli):
    root = tmp_path / "net"
    out, err = tmp_path / "up.out", tmp_path / "up.err"
    # a session of its own: SIGINT to its process group is what a terminal's Ctrl-C sends; TTY_COMPATIBLE
    # makes the table live (redrawn in place) although stdout is a file
    with out.open("w") as stdout, err.open("w") as stderr:
        up = subprocess.Popen([str(EXE), "up", "3", "--home-root", str(root), "--interval", "1", *RECIPE],
                              stdout=stdout, stderr=stderr, start_new_session=True,
                              preexec_fn=terminal_signals,
                              env={**os.environ, "TTY_COMPATIBLE": "1", "COLUMNS": "100"})
    try:
        seen = wait_until(lambda: statuses(root), "three nodes learning together", 90, until=learning_together)
        ids = [json.loads(cli("node", "status", "--home", root / f"node-{i}", "--json").stdout)["id"]
               for i in range(3)]
        pids = [int((root / f"node-{i}" / "daemon.pid").read_text()) for i in range(3)]
        os.killpg(up.pid, signal.SIGINT)
        up.wait(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    shown, said = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.read_text()), err.read_text()  # no terminal codes
    assert up.returncode == 0, shown + said
    assert "Traceback" not in shown + said and said == ""
    assert shown.count(f"3 nodes in {root}") >= 2, shown  # the table, redrawn
    assert all(i[-8:] in shown for i in ids), shown
    assert shown.splitlines()[-1] == f"stopped 3 nodes in {root} (each saved its state)"
    assert_stopped_and_saved(root, pids, [s["version"] for s in seen])

    refused = cli("up", "2", "--home-root", root)  # partition i of 2 is not the data node i learnt from
    assert refused.returncode == 2 and refused.stderr.startswith(f"error: {root} holds a network of 3 nodes")
    again = cli("up", "3", "--home-root", root, "--detach", "--share", "reciprocal", "--compress", "int8",
                "--dp-noise", "1.0", "--dp-clip", "2", timeout=180)
    assert again.returncode == 0, again.stderr
    assert statuses(root)[0]["peers"] >= 1 and [s["id"] for s in statuses(root)] == ids
    assert all(s["share"] == "reciprocal" and s["compress"].startswith("int8") for s in statuses(root))
    spending = wait_until(lambda: statuses(root), "DP-SGD spending epsilon", 60,
                          until=lambda seen: all(s and (s["privacy"] or {}).get("epsilon") for s in seen))
    assert all(s["privacy"]["mechanism"] == "dp-sgd" and s["privacy"]["epsilon"] > 0 for s in spending)
    pids = [int((root / f"node-{i}" / "daemon.pid").read_text()) for i in range(3)]
    down = cli("down", "--home-root", root)
    assert down.returncode == 0 and down.stdout == f"stopped 3 nodes in {root}\n", down.stdout + down.stderr
    assert_stopped_and_saved(root, pids, [0, 0, 0])


@pytest.mark.slow
def test_a_node_that_fails_to_start_is_named_and_the_nodes_started_before_it_are_stopped(tmp_path, cli):
    pytest.importorskip("mnist1d", reason="the dataset whose 1-d inputs the cnn model refuses: pip install mnist1d")
    root = tmp_path / "net"
    result = cli("up", "2", "--home-root", root, "--dataset", "mnist1d", "--model", "logreg,cnn", "--period", "1",
                 timeout=180)
    assert result.returncode == 2
    assert result.stderr.startswith("error: node-1: the node's learner failed: ValueError: model cnn needs image "
                                    "input") and len(result.stderr.splitlines()) == 1, result.stderr
    started = re.fullmatch(r"node-0: node \S+ listening on \S+ \(pid (\d+)\)", result.stdout.strip())
    assert started, result.stdout
    assert_stopped_and_saved(root, [int(started[1])], [0])


@pytest.mark.parametrize("nodes", [0, 65])
def test_up_refuses_a_network_of_no_nodes_or_more_than_64(tmp_path, cli, nodes):
    result = cli("up", nodes, "--home-root", tmp_path / "net")
    assert result.returncode == 2
    assert result.stderr == f"error: N is how many nodes to start, 1 to 64; got {nodes}\n"
    assert not (tmp_path / "net").exists()
