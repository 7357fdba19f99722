"""Two home nodes behind real NAT (tests/nat_network.py: namespaces, iptables MASQUERADE) and a
public relay: how long until they talk, and what the relay costs. Root, iproute2 and iptables.

  timeline    three daemons (logreg on digits, period 0.5 s): the relay/bootstrap node, then the two
              home nodes side by side. From the moment both home nodes listen: when home_a knows it
              is private, holds a reservation, is first connected to home_b (through the relay),
              first folds a message of home_b's, is connected directly (after the DCUtR hole punch)
              and first folds a message of home_b's that came directly.
  throughput  our transport moving MB-sized frames from home_b (the sender clocks from the first
              byte to a one-frame ack) to: a node behind home_a's router that does not listen
              (so the connection stays relayed), one that listens (after the punch: direct through
              both NATs), and a node on the public segment (direct, through one NAT).
  relay cost  the relay process's CPU seconds per MB relayed (/proc/PID/stat) and its resident
              memory (VmRSS) per idle circuit (with --circuits senders connected through it).

    sudo python bench/bench_nat.py --json nat.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the NAT network and the daemon helpers are the tests'

MB = 1_000_000
FRAME = 4 << 20
PORT = 4201


# --------------------------------------------------------------------------- the timeline, with daemons

def timeline(net, root: Path) -> dict:
    from manymodels.node.runtime.control import request
    from nat_network import daemon_homes, start_daemons
    from test_daemon import status, stop

    homes = daemon_homes(root)
    try:
        start_daemons(net, homes, 4101)
        t0 = time.time()
        b_id = status(homes["home_b"])["id"]
        seen: dict[str, float] = {}
        deadline = time.monotonic() + 180
        while "first_fold_direct" not in seen and time.monotonic() < deadline:
            now = time.time() - t0
            s = status(homes["home_a"])
            peer = {p["id"]: p for p in request(homes["home_a"] / "control.sock", "peers")}.get(b_id, {})
            marks = {"private": s["reach"]["reachability"] == "private", "reserved": bool(s["reach"]["relayed_addrs"]),
                     "connected": peer.get("connected"), "direct": peer.get("path") == "direct"}
            for mark, now_true in marks.items():
                if now_true and mark not in seen:
                    seen[mark] = now
            state = homes["home_a"] / "state.json"  # written at the first fold
            provenance = json.loads(state.read_text()).get("provenance", []) if state.exists() else []
            folds = [e["time"] / 1000 - t0 for e in provenance if b_id in e["folded"]]
            if folds:
                seen.setdefault("first_fold", folds[0])
                if "direct" in seen and folds[-1] > seen["direct"] + 1.0:  # a period after the punch
                    seen["first_fold_direct"] = min(f for f in folds if f > seen["direct"] + 1.0)
            time.sleep(0.25)
        punched = sum(status(homes[h])["reach"].get("punched", 0) for h in ("home_a", "home_b"))
        return {**{f"{k}_s": round(v, 2) for k, v in seen.items()}, "punches": punched}
    finally:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(stop, homes.values()))


# --------------------------------------------------------------------------- throughput and relay cost

def serve(role: str, listen: str, relay: str) -> None:
    """A child process in a namespace: `relay` (relays, and receives as a public node), `sinks` (a
    hidden and an open receiver behind home_a's router) or `sender` (home_b: measures)."""
    import trio

    from manymodels.node.p2p.libp2p import Libp2pTransport
    from manymodels.node.p2p.reach import Reach, ReachConfig
    from manymodels.protocol import Identity

    big = dict(relay_circuit_bytes=1 << 40, relay_circuit_seconds=3600, relay_circuits=64, relay_bulk=1 << 40)

    def say(**what) -> None:
        print(json.dumps(what), flush=True)

    def acking(transport):
        counts = {}

        def receive(peer: str, data: bytes) -> None:
            counts[peer] = counts.get(peer, 0) + len(data)
            if data == b"done":
                transport.send(peer, b"ack")
        return receive

    async def node(stack, listen_on: list[str], **config):
        t = Libp2pTransport(Identity.generate(), listen=listen_on)
        t.set_receiver(acking(t))
        await stack.enter_async_context(t.running())
        await stack.enter_async_context(Reach(t, ReachConfig(check_s=2, **{**big, **config})).running())
        return t

    async def main():
        from contextlib import AsyncExitStack
        async with AsyncExitStack() as stack:
            if role == "relay":
                t = await node(stack, [listen], relay=True)
                say(addr=t.listen_addrs()[0])
                await trio.sleep_forever()
            nodes = [await node(stack, x) for x in ([[], [listen]] if role == "sinks" else [[listen]])]
            for t in nodes:
                await t.connect(relay)
            if role == "sinks":
                for t in nodes:
                    while not t.relayed_addrs:
                        await trio.sleep(0.2)
                say(hidden=nodes[0].relayed_addrs[0], open=nodes[1].relayed_addrs[0])
                await trio.sleep_forever()
            await sender(stack, nodes[0], node, say)
    trio.run(main)


async def sender(stack, t, node, say) -> None:
    """Reads the targets from stdin (a JSON line), measures, says each result."""
    import trio

    targets = json.loads(await trio.to_thread.run_sync(sys.stdin.readline))
    acks = trio.Event()
    t.set_receiver(lambda peer, data: acks.set() if data == b"ack" else None)

    async def transfer(addr: str, mb: int) -> float:
        nonlocal acks
        peer = await t.connect(addr)
        acks = trio.Event()
        start = time.perf_counter()
        for _ in range(mb * MB // FRAME):
            t.send(peer, os.urandom(FRAME))
        t.send(peer, b"done")
        with trio.fail_after(300):
            await acks.wait()
        return time.perf_counter() - start

    mb = targets["mb"]
    for name in ("public", "hidden", "open"):
        if name == "open":  # wait for the hole punch
            peer = await t.connect(targets[name])
            with trio.move_on_after(60):
                while t.path(peer) != "direct":
                    await trio.sleep(0.2)
        say(phase=name, path=None)
        seconds = await transfer(targets[name], mb)
        say(phase=name, seconds=seconds, mb=mb * MB // FRAME * FRAME / MB, path=t.path(await t.connect(targets[name])))
    say(phase="circuits", path=None)
    extra = [await node(stack, []) for _ in range(targets["circuits"])]
    for x in extra:
        await x.connect(targets["relay"])
        await x.connect(targets["hidden"])
    await trio.sleep(2)
    say(phase="circuits", opened=sum(x.path(targets["hidden"].rsplit("/p2p/", 1)[-1]) == "relayed" for x in extra))


def proc(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and resident bytes of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = next(int(line.split()[1]) * 1024 for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return cpu, rss


def throughput(net, mb: int, circuits: int) -> dict:
    from nat_network import RELAY_IP

    me = [sys.executable, str(Path(__file__).resolve()), "--serve"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = []

    def spawn(host: str, role: str, listen: str, relay: str = "") -> subprocess.Popen:
        p = subprocess.Popen([*net.prefix(host), *me, role, listen, relay], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
        started.append(p)
        return p

    def line(p) -> dict:
        return json.loads(p.stdout.readline())
    try:
        relay = spawn("relay", "relay", f"/ip4/{RELAY_IP}/tcp/{PORT}")
        relay_addr = line(relay)["addr"]
        sinks = spawn("home_a", "sinks", f"/ip4/{net.home_ip('a')}/tcp/{PORT}", relay_addr)
        targets = {**line(sinks), "public": relay_addr, "relay": relay_addr, "mb": mb, "circuits": circuits}
        sender = spawn("home_b", "sender", f"/ip4/{net.home_ip('b')}/tcp/{PORT}", relay_addr)
        sender.stdin.write(json.dumps(targets) + "\n")
        sender.stdin.flush()
        rows, before = {}, None
        while len(rows) < 4:
            said = line(sender)
            if "seconds" in said or "opened" in said:
                cpu, rss = proc(relay.pid)
                rows[said["phase"]] = {**said, "relay_cpu_s": round(cpu - before[0], 2),
                                       "relay_rss_delta_mb": round((rss - before[1]) / MB, 2)}
            else:
                before = proc(relay.pid)
        for name in ("public", "hidden", "open"):
            r = rows[name]
            r["mb_per_s"] = round(r["mb"] / r["seconds"], 1)
        rows["relay_cpu_s_per_relayed_mb"] = round(rows["hidden"]["relay_cpu_s"] / rows["hidden"]["mb"], 4)
        opened = rows["circuits"]["opened"]
        rows["relay_rss_mb_per_circuit"] = round(rows["circuits"]["relay_rss_delta_mb"] / max(opened, 1), 2)
        return rows
    finally:
        for p in started:
            p.kill()
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=32, help="MB moved over each path")
    parser.add_argument("--circuits", type=int, default=8, help="idle circuits opened to measure the relay's memory")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(*args.serve)
    import tempfile

    from nat_network import NatNetwork
    with NatNetwork(f"mb{os.getpid() % 100000}") as net, tempfile.TemporaryDirectory() as root:
        results = {"timeline": timeline(net, Path(root)), "throughput": throughput(net, args.mb, args.circuits)}
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
