"""Daemon figures: time from `node start` to the first peer found (with a bootstrap address), to
the control socket answering (the node listens) and to the learner running; how long `node start
--detach` takes to return for each of `--detached` daemons started one after another (it returns
once the node listens, not once its worker has imported torch); and the memory of an idle daemon
(its process plus its worker process), from /proc."""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from manymodels.node.runtime.control import NotRunning, request

EXE = Path(sys.executable).parent / "manymodels"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def memory(pid: int) -> tuple[float, float]:
    """(the daemon's own RSS, the largest child's: its worker process), in MiB."""
    # every thread's children: the worker is started from a trio thread, not the main one
    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    return rss_mib(pid), max((rss_mib(c) for c in children), default=0.0)


def wait(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except NotRunning:
            pass
        time.sleep(0.05)
    raise TimeoutError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds to let the network idle before measuring")
    parser.add_argument("--detached", type=int, default=8, help="daemons started with --detach, one after another")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        recipe = ["--num-partitions", "8", "--period", "3600"]  # one cycle, then idle
        first = root / "first"
        process = subprocess.Popen([str(EXE), "node", "start", "--home", str(first), "--partition-id", "0", *recipe],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs = [process]
        try:
            addr = wait(lambda: request(first / "control.sock", "status")["addrs"][0])
            to_socket, to_running, to_peer = [], [], []
            for i in range(1, args.repeat + 1):
                home = root / f"n{i}"
                started = time.perf_counter()
                procs.append(subprocess.Popen(
                    [str(EXE), "node", "start", "--home", str(home), "--partition-id", str(i), *recipe,
                     "--bootstrap", addr], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                # the bootstrap peer sees the newcomer as soon as its network is up
                wait(lambda: request(first / "control.sock", "status")["peers"] >= i, timeout=120)
                to_peer.append(time.perf_counter() - started)
                wait(lambda: request(home / "control.sock", "status"))
                to_socket.append(time.perf_counter() - started)
                wait(lambda: request(home / "control.sock", "status")["state"] == "running")
                to_running.append(time.perf_counter() - started)
            time.sleep(args.idle)
            sizes = [memory(p.pid) for p in procs]
        finally:
            for home in [first, *(root / f"n{i}" for i in range(1, args.repeat + 1))]:
                try:
                    request(home / "control.sock", "stop")
                except (NotRunning, OSError):
                    pass
            for p in procs:
                p.wait(timeout=60)
    print(f"node start -> connected to its bootstrap peer: {min(to_peer):.2f} s best, {max(to_peer):.2f} s worst")
    print(f"node start -> listening, answering status:     {min(to_socket):.2f} s best, {max(to_socket):.2f} s worst")
    print(f"node start -> learner running:                 {min(to_running):.2f} s best, {max(to_running):.2f} s worst "
          f"(the worker process imports torch and loads its data)")
    returned, running = detached(args.detached)
    print(f"node start --detach, {args.detached} daemons one after another: returned in {min(returned):.2f}-"
          f"{max(returned):.2f} s, learner running {min(running):.2f}-{max(running):.2f} s after the start")
    own, worker = zip(*sizes)
    print(f"idle daemon memory over {len(sizes)} daemons: daemon process {min(own):.0f}-{max(own):.0f} MiB RSS, "
          f"worker process {min(worker):.0f}-{max(worker):.0f} MiB RSS")


def detached(count: int) -> tuple[list[float], list[float]]:
    """Seconds until each `node start --detach` returned, and until its learner ran (the next one
    starts as soon as the previous returned: the workers load side by side, as in a script)."""
    with tempfile.TemporaryDirectory() as tmp:
        homes = [Path(tmp) / f"d{i}" for i in range(count)]
        started, returned, running = {}, [], {}
        try:
            for i, home in enumerate(homes):
                started[home] = time.perf_counter()
                subprocess.run([str(EXE), "node", "start", "--home", str(home), "--detach", "--partition-id", str(i),
                                "--num-partitions", str(count), "--period", "3600"], check=True,
                               stdout=subprocess.DEVNULL)
                returned.append(time.perf_counter() - started[home])
            while len(running) < count:
                for home in homes:
                    if home not in running and request(home / "control.sock", "status")["state"] == "running":
                        running[home] = time.perf_counter() - started[home]
                time.sleep(0.05)
        finally:
            for home in homes:
                try:
                    request(home / "control.sock", "stop")
                except (NotRunning, OSError):
                    pass
            for home in homes:
                wait(lambda: not (home / "daemon.pid").exists(), timeout=60)
    return returned, list(running.values())


if __name__ == "__main__":
    main()
