"""The trust boundary on the wire, under load: real daemon processes on loopback, and hostile peers
(bare libp2p transports, each with its own fresh key) flooding one of them.

    .venv/bin/python bench/bench_hostile.py [--quick]

1. **Flood.** Three honest daemons (digits, dirichlet:0.5 over 3 partitions, --period 2, weights)
   learn for a baseline window; then N hostile peers in separate processes connect to ONE victim
   and, for a fixed time, send random garbage frames (1 B - 64 KiB), oversize frame headers,
   validly signed spam (weights sealed by foreign keys, and by their own key at a high rate) and
   blob_request floods for a digest the victim serves. A hostile peer that gets blocked comes
   back with a fresh key (keys cost nothing), a bounded number of times. Measured in the same run,
   flood against baseline: each daemon's learning cycles per period and accepted messages, the
   control socket's `status` latency, the victim's RSS growth per attacker byte, its reject and
   gate counters, and that nothing an attacker sent reached the victim's disk.
2. **Churn** (not with --quick): 8 small daemons; each round about 30 % are killed with SIGKILL
   and restarted from the same home; mean accuracy per round, every node advanced, no id changed.
3. **Partition and heal** (not with --quick): two groups of 3 daemons bootstrapped only inside
   their group learn apart, then `manymodels connect` joins them; accuracy per period.

The attackers run at the lowest CPU priority (nice 19): on a machine with few cores they stand in
for a remote attacker, whose CPU the victim does not share. Loopback only; every loop is bounded in
count and time. `--attack` is the attacker process's own entry point (used by
tests/test_hostile_daemon.py too)."""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXE = Path(sys.executable).parent / "manymodels"
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
MiB = 1 << 20
GOALS = {"throughput": 0.8, "status_s": 1.0, "rss_per_byte": 2.0}


# --------------------------------------------------------------------------- daemons


def start(home: Path, *args: str, timeout: float = 180) -> None:
    out = subprocess.run([str(EXE), "node", "start", "--home", str(home), "--detach", *args],
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        log = (home / "daemon.log").read_text(errors="replace")[-2000:] if (home / "daemon.log").exists() else ""
        raise RuntimeError(f"node start {home.name}: {out.stderr.strip()}\n{log}")


def start_many(homes_args: list[tuple[Path, list[str]]], timeout: float = 240) -> None:
    """`node start --detach` for several homes at once (each waits for its daemon's answer)."""
    procs = [(home, subprocess.Popen([str(EXE), "node", "start", "--home", str(home), "--detach", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
             for home, args in homes_args]
    deadline = time.monotonic() + timeout
    failed = []
    for home, p in procs:
        try:
            _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            err = "timed out"
        if p.returncode != 0:
            failed.append(f"{home.name}: {err.strip()[-300:]}")
    if failed:
        raise RuntimeError("node start failed: " + "; ".join(failed))


def status(home: Path, timeout: float = 30.0) -> tuple[dict | None, float]:
    """(status, seconds the control socket took to answer); (None, seconds) if it did not."""
    from manymodels.node.runtime.control import request

    started = time.perf_counter()
    try:
        value = request(home / "control.sock", "status", timeout=timeout)
    except Exception:  # noqa: BLE001 -- not running, timed out: the caller counts it
        value = None
    return value, time.perf_counter() - started


def daemon_pid(home: Path) -> int | None:
    try:
        return int((home / "daemon.pid").read_text())
    except (OSError, ValueError):
        return None


def stop(home: Path, wait: float = 30.0) -> None:
    from manymodels.node.runtime.control import request

    pid = daemon_pid(home)
    try:
        request(home / "control.sock", "stop", timeout=10)
    except Exception:  # noqa: BLE001
        pass
    deadline = time.monotonic() + wait
    while (home / "daemon.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid is not None and alive(pid):
        kill9(pid)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def kill9(pid: int) -> None:
    """SIGKILL a daemon and its worker process (our own children, by pid)."""
    for child in children(pid):
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def children(pid: int) -> list[int]:
    """Child processes of any of the daemon's threads (the worker is started from a thread)."""
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                found += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return found


def rss_mib(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / MiB
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 -- gone
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def memory(home: Path) -> tuple[float, float]:
    """(the daemon process's RSS, its worker's: the largest child), MiB."""
    pid = daemon_pid(home)
    return rss_mib(pid), max((rss_mib(c) for c in children(pid)), default=0.0) if pid else 0.0


def local_digest(home: Path) -> str:
    """The digest of the newest message the daemon serves (`manymodels models --json`, the local row)."""
    out = subprocess.run([str(EXE), "models", "--home", str(home), "--json"], capture_output=True, text=True,
                         timeout=60)
    rows = json.loads(out.stdout)
    return next(r["digest"] for r in rows if r.get("local"))


def honest_accepted(home: Path, honest_ids: set[str]) -> int:
    """Messages the daemon accepted from these peers (its `peers` table)."""
    from manymodels.node.runtime.control import request

    try:
        return sum(p["accepted"] for p in request(home / "control.sock", "peers", timeout=10) if p["id"] in honest_ids)
    except Exception:  # noqa: BLE001
        return 0


def log_lines(path: Path, offset: int, top: int = 5) -> list[tuple[int, str]]:
    """The most frequent kinds of line written to a log after `offset` (numbers and ids masked)."""
    import re
    from collections import Counter

    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read(64 * MiB).decode(errors="replace")
    except OSError:
        return []
    kinds = Counter(re.sub(r"12D3KooW\w+|[0-9a-f]{16,}|\d+", "#", line)[:110] for line in text.splitlines())
    return [(n, line) for line, n in kinds.most_common(top)]


def files(home: Path) -> dict[str, int]:
    return {str(p.relative_to(home)): p.stat().st_size for p in home.rglob("*") if p.is_file()}


class Sampler:
    """Polls status (and memory) of a set of daemons; bounded by the caller's window."""

    def __init__(self, homes: list[Path]) -> None:
        self.homes = homes

    def window(self, seconds: float, every: float = 0.5) -> dict:
        rows = {h.name: {"t": [], "version": [], "accepted": [], "latency": [], "rss": [], "worker": [],
                         "failed": 0} for h in self.homes}
        deadline = time.monotonic() + seconds
        for _ in range(int(seconds / every) + 2):
            if time.monotonic() > deadline:
                break
            for h in self.homes:
                s, latency = status(h, timeout=10)
                r = rows[h.name]
                r["latency"].append(latency)
                if s is None:
                    r["failed"] += 1
                    continue
                r["t"].append(time.monotonic())
                r["version"].append(s["version"])
                r["accepted"].append(s["messages_accepted"])
                own, worker = memory(h)
                r["rss"].append(own)
                r["worker"].append(worker)
                r["last"] = s
            time.sleep(max(0.0, every - 0.01 * len(self.homes)))
        return rows


def rates(row: dict, period: float) -> dict:
    span = (row["t"][-1] - row["t"][0]) if len(row["t"]) > 1 else float("nan")
    periods = span / period
    return {"cycles_per_period": (row["version"][-1] - row["version"][0]) / periods if periods else float("nan"),
            "accepted_per_period": (row["accepted"][-1] - row["accepted"][0]) / periods if periods else float("nan"),
            "status_max": max(row["latency"]), "status_median": statistics.median(row["latency"]),
            "rss_max": max(row["rss"], default=0.0), "worker_max": max(row["worker"], default=0.0),
            "failed": row["failed"]}


def diff(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if isinstance(v, (int, float)) and v != before.get(k, 0)}


# --------------------------------------------------------------------------- attacker process


def attack(args) -> None:
    """N hostile peers in this process, against one address, for a fixed time; a JSON summary on stdout."""
    import numpy as np
    import trio

    from manymodels.node.p2p.libp2p import FRAME_HEADER, MSG_PROTOCOL, Libp2pTransport
    from manymodels.protocol import BlobRequest, Identity, Weights, seal
    from libp2p.peer.id import ID

    try:
        os.nice(19)  # a remote attacker's CPU is not the victim's
    except OSError:
        pass
    rng = random.Random(args.seed)
    digest = bytes.fromhex(args.digest) if args.digest else os.urandom(32)
    foreign = [Identity.generate() for _ in range(16)]
    spam_tensors = [np.random.default_rng(0).standard_normal(2048).astype(np.float32)]
    mix = [m for m in args.mix.split(",") if m]
    totals = {"identities": 0, "connect_failed": 0, "disconnected": 0, "frames_queued": 0, "bytes_queued": 0,
              "bytes_sent": 0, "oversize_headers": 0, "replies": 0, "reply_bytes": 0, "by_kind": {}}
    deadline = time.monotonic() + args.duration

    def now_ms() -> int:
        return int(time.time() * 1000)

    async def oversize(transport: Libp2pTransport, peer: str) -> int:
        """A frame header far above any cap, then a few bytes: refused unread."""
        try:
            with trio.fail_after(2):
                stream = await transport.host.new_stream(ID.from_base58(peer), [MSG_PROTOCOL])
                data = FRAME_HEADER.pack(rng.choice([1 << 62, 10 << 30, (512 << 20) + 1])) + os.urandom(64)
                await stream.write(data)
                await stream.close()
                return len(data)
        except Exception:  # noqa: BLE001 -- reset, blocked, gone
            return 0

    async def slot(i: int) -> None:
        for _ in range(args.max_identities):
            if time.monotonic() >= deadline:
                return
            me = Identity.generate()
            totals["identities"] += 1
            transport = Libp2pTransport(me, listen=[LOOPBACK], dial_timeout=5, idle_timeout=5, write_timeout=5)

            def received(peer: str, data: bytes) -> None:
                totals["replies"] += 1
                totals["reply_bytes"] += len(data)
            transport.set_receiver(received)
            raw = 0
            async with transport.running():
                try:
                    peer = await transport.connect(args.addr)
                except (ConnectionError, ValueError):
                    totals["connect_failed"] += 1
                    await trio.sleep(0.5)
                    continue
                seq = 0
                for n in range(1_000_000):
                    if time.monotonic() >= deadline:
                        break
                    if n % 20 == 0 and peer not in transport.connected_peers():
                        totals["disconnected"] += 1
                        break
                    kind = rng.choice(mix)
                    seq += 1
                    if kind == "garbage":
                        data = os.urandom(rng.choice([1, rng.randint(1, 1024), rng.randint(1, 64 * 1024)]))
                    elif kind == "foreign":
                        data = seal(rng.choice(foreign), Weights(args.model, seq, 10, spam_tensors), seq, now_ms())
                    elif kind == "own":
                        data = seal(me, Weights(args.model, seq, 10, spam_tensors), seq, now_ms())
                    elif kind == "request":
                        data = seal(me, BlobRequest(digest, 0, 4 << 20), seq, now_ms())
                    elif kind == "oversize":
                        raw += await oversize(transport, peer)
                        totals["oversize_headers"] += 1
                        totals["by_kind"][kind] = totals["by_kind"].get(kind, 0) + 1
                        continue
                    else:
                        raise ValueError(f"unknown attack {kind!r}")
                    transport.send(peer, data)
                    totals["frames_queued"] += 1
                    totals["bytes_queued"] += len(data) + 8
                    totals["by_kind"][kind] = totals["by_kind"].get(kind, 0) + 1
                    await trio.sleep(args.interval)
            totals["bytes_sent"] += transport.stats.bytes_sent + 8 * transport.stats.messages_sent + raw

    async def main() -> None:
        with trio.move_on_after(args.duration + 30):  # closing the transports is bounded too
            async with trio.open_nursery() as nursery:
                for i in range(args.peers):
                    nursery.start_soon(slot, i)
                    await trio.sleep(0.02)  # not all handshakes in one instant

    trio.run(main)
    print(json.dumps(totals), flush=True)


def launch_attackers(addr: str, digest: str, peers: int, duration: float, processes: int, model: str,
                     mix: str = "garbage,oversize,foreign,own,own,request,request", interval: float = 0.005,
                     max_identities: int = 20) -> list[subprocess.Popen]:
    share = [peers // processes + (i < peers % processes) for i in range(processes)]
    return [subprocess.Popen([sys.executable, __file__, "--attack", "--addr", addr, "--digest", digest,
                              "--peers", str(n), "--duration", str(duration), "--model", model, "--mix", mix,
                              "--interval", str(interval), "--max-identities", str(max_identities),
                              "--seed", str(i)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i, n in enumerate(share) if n]


def collect_attackers(procs: list[subprocess.Popen], timeout: float) -> dict:
    total: dict = {}
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        try:
            summary = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            print(f"an attacker process said: {err[-1000:]}", file=sys.stderr)
            continue
        for k, v in summary.items():
            if isinstance(v, dict):
                for kk, vv in v.items():
                    total.setdefault(k, {})[kk] = total.get(k, {}).get(kk, 0) + vv
            else:
                total[k] = total.get(k, 0) + v
    return total


# --------------------------------------------------------------------------- scenarios


def flood(root: Path, args) -> dict:
    period = 2.0
    recipe = ["--dataset", "digits", "--partition", "dirichlet:0.5", "--num-partitions", "3", "--model", args.model,
              "--period", str(period), "--exchange", "weights"]
    homes = [root / f"honest{i}" for i in range(3)]
    verdicts = {}
    try:
        start(homes[0], *recipe, "--partition-id", "0")
        boot = status(homes[0])[0]["addrs"][0]
        start_many([(h, [*recipe, "--partition-id", str(i), "--bootstrap", boot]) for i, h in enumerate(homes) if i])
        victim = homes[0]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ss = [status(h)[0] for h in homes]
            if all(s and s["peers"] >= 2 and s["version"] >= 2 for s in ss):
                break
            time.sleep(1)
        else:
            raise RuntimeError("the honest network did not form within 90 s")
        sampler = Sampler(homes)
        print(f"baseline: {args.window:.0f} s, 3 honest daemons ({args.model}, period {period:.0f} s)", flush=True)
        honest_ids = {status(h)[0]["id"] for h in homes[1:]}
        t0, from_honest0 = time.monotonic(), honest_accepted(victim, honest_ids)
        base = sampler.window(args.window)
        before = status(victim)[0]
        t1, from_honest1 = time.monotonic(), honest_accepted(victim, honest_ids)
        files_before = files(victim)
        digest = local_digest(victim)
        print(f"flood: {args.peers} hostile peers in {args.processes} process(es) on {victim.name} for "
              f"{args.duration:.0f} s", flush=True)
        procs = launch_attackers(before["addrs"][0], digest, args.peers, args.duration, args.processes, args.model)
        try:
            time.sleep(min(3.0, args.duration / 5))  # the handshakes
            during = sampler.window(args.duration - min(3.0, args.duration / 5))
        finally:
            attackers = collect_attackers(procs, 60)
        after = status(victim)[0]
        t2, from_honest2 = time.monotonic(), honest_accepted(victim, honest_ids)
        time.sleep(2)
        files_after = files(victim)
    finally:
        for h in homes:
            stop(h)

    period_rates = {h.name: (rates(base[h.name], period), rates(during[h.name], period)) for h in homes}
    print(f"\n{'daemon':10} {'cycles/period':>22} {'accepted/period':>22} {'status s max/med':>24} "
          f"{'daemon RSS MiB':>18} {'worker RSS MiB':>18}")
    print(f"{'':10} {'base -> flood (ratio)':>22} {'base -> flood (ratio)':>22} {'base | flood':>24} "
          f"{'base -> flood':>18} {'base -> flood':>18}")
    for name, (b, d) in period_rates.items():
        tag = f"{name}{'*' if name == homes[0].name else ''}"
        print(f"{tag:10} {b['cycles_per_period']:6.2f} -> {d['cycles_per_period']:5.2f} "
              f"({d['cycles_per_period'] / b['cycles_per_period']:4.2f}) "
              f"{b['accepted_per_period']:6.2f} -> {d['accepted_per_period']:5.2f} "
              f"({d['accepted_per_period'] / max(b['accepted_per_period'], 1e-9):4.2f}) "
              f"{b['status_max']:5.3f}/{b['status_median']:5.3f} | {d['status_max']:5.3f}/{d['status_median']:5.3f} "
              f"{b['rss_max']:7.0f} -> {d['rss_max']:6.0f} {b['worker_max']:7.0f} -> {d['worker_max']:6.0f}")
    print("(* the victim; cycles/period: model versions per --period; status: control-socket round trip)")

    honest_base = (from_honest1 - from_honest0) / ((t1 - t0) / period)
    honest_flood = (from_honest2 - from_honest1) / ((t2 - t1) / period)
    print(f"victim: messages accepted from its honest neighbours per period {honest_base:.2f} -> {honest_flood:.2f} "
          f"({honest_flood / max(honest_base, 1e-9):.2f})")
    sent = max(attackers.get("bytes_sent", 0), 1)
    v_base, v_flood = period_rates[homes[0].name]
    grown = max(0.0, v_flood["rss_max"] - v_base["rss_max"]) * MiB
    print(f"\nattackers: {attackers.get('identities', 0)} identities, {attackers.get('frames_queued', 0)} frames "
          f"queued ({attackers.get('bytes_queued', 0) / MiB:.1f} MiB), {attackers.get('bytes_sent', 0) / MiB:.1f} MiB "
          f"written, {attackers.get('oversize_headers', 0)} oversize headers, "
          f"{attackers.get('connect_failed', 0)} dials refused, {attackers.get('disconnected', 0)} disconnected; "
          f"replies {attackers.get('replies', 0)} ({attackers.get('reply_bytes', 0) / MiB:.1f} MiB)")
    print(f"attack mix sent: {attackers.get('by_kind', {})}")
    print(f"victim rejected (during the flood): {diff(after['rejected'], before['rejected'])}")
    print(f"victim refused  (during the flood): {diff(after['refused'], before['refused'])}")
    print(f"victim gate     (during the flood): {diff(after['gate'], before['gate'])}; blocked now "
          f"{after['gate'].get('blocked_now', 0)}")
    grew = {k: files_after.get(k, 0) - files_before.get(k, 0) for k in files_after
            if files_after.get(k, 0) - files_before.get(k, 0) > 4096 and k not in ("state.json", "daemon.log")}
    new_blobs = [k for k in files_after if k.startswith("blobs/") and k not in files_before]
    print(f"victim home: files grown > 4 KiB (besides state.json, daemon.log): {grew or 'none'}; new in blobs/: "
          f"{new_blobs or 'none'}; daemon.log {files_before.get('daemon.log', 0)} -> {files_after.get('daemon.log', 0)} B")

    print("victim daemon.log during the flood, most frequent lines:")
    for n, line in log_lines(victim / "daemon.log", files_before.get("daemon.log", 0)):
        print(f"  {n:6d}  {line}")
    honest = [d["cycles_per_period"] / b["cycles_per_period"] for b, d in period_rates.values()]
    honest.append(honest_flood / max(honest_base, 1e-9))
    status_max = max(d["status_max"] for _, d in period_rates.values())
    per_byte = grown / sent
    verdicts = {
        f"throughput ratio min {min(honest):.2f} >= {GOALS['throughput']} (cycles of every daemon, "
        "the victim's accepted from honest peers)": min(honest) >= GOALS["throughput"],
        f"status max {status_max:.3f} s < {GOALS['status_s']} s (median "
        f"{v_flood['status_median']:.3f} s on the victim)": status_max < GOALS["status_s"],
        f"victim RSS growth {grown / MiB:.1f} MiB / {sent / MiB:.1f} MiB sent = {per_byte:.3f} per byte "
        f"<= {GOALS['rss_per_byte']}": per_byte <= GOALS["rss_per_byte"],
        "an attacker was blocked": diff(after["gate"], before["gate"]).get("blocked", 0) >= 1,
        "foreign_author among the rejections": diff(after["rejected"], before["rejected"]).get("foreign_author", 0) > 0,
        "nothing attackers sent reached disk": not grew and not new_blobs,
        "every status answered": all(d["failed"] == 0 for _, d in period_rates.values()),
    }
    print()
    for what, ok in verdicts.items():
        print(f"  [{'ok' if ok else 'MISSED'}] {what}")
    return verdicts


def churn(root: Path, args) -> dict:
    period = 2.0
    n = args.churn_nodes
    recipe = ["--dataset", "digits", "--partition", "dirichlet:0.5", "--num-partitions", str(n), "--model", "logreg",
              "--period", str(period)]
    homes = [root / f"churn{i}" for i in range(n)]
    rng = random.Random(1)
    try:
        start(homes[0], *recipe, "--partition-id", "0")
        boot = status(homes[0])[0]["addrs"][0]
        start_many([(h, [*recipe, "--partition-id", str(i), "--bootstrap", boot]) for i, h in enumerate(homes) if i])
        ids = {h.name: status(h)[0]["id"] for h in homes}
        first = {h.name: status(h)[0]["version"] for h in homes}
        print(f"\nchurn: {n} daemons (logreg, period {period:.0f} s), {args.churn_rounds} rounds killing "
              f"{args.churn_kill:.0%} with SIGKILL and restarting them", flush=True)
        print(f"{'round':>5} {'killed':>7} {'mean accuracy':>14} {'min version':>12} {'mean peers':>11} {'round s':>8}")
        curve = []
        for r in range(args.churn_rounds):
            began = time.monotonic()
            victims = rng.sample(homes, round(args.churn_kill * n))
            for h in victims:
                pid = daemon_pid(h)
                if pid is not None:
                    kill9(pid)
            for h in victims:
                pid = daemon_pid(h)
                for _ in range(50):
                    if pid is None or not alive(pid):
                        break
                    time.sleep(0.1)
            start_many([(h, []) for h in victims])
            time.sleep(period)
            ss = [status(h)[0] for h in homes]
            accs = [s["accuracy"] for s in ss if s and s["accuracy"] is not None]
            curve.append(statistics.mean(accs) if accs else float("nan"))
            print(f"{r:5d} {len(victims):7d} {statistics.mean(accs) if accs else float('nan'):14.3f} "
                  f"{min(s['version'] for s in ss if s):12d} {statistics.mean(s['peers'] for s in ss if s):11.1f} "
                  f"{time.monotonic() - began:8.1f}", flush=True)
        time.sleep(2 * period)
        final = {h.name: status(h)[0] for h in homes}
        for name, s in final.items():
            if s:
                print(f"  {name}: peers {s['peers']}, rejected {s['rejected']}, gate {s['gate']}, "
                      f"announcements rejected {s['discovery']['announces_rejected']}")
    finally:
        for h in homes:
            stop(h)
    stuck = [k for k, s in final.items() if s is None or s["version"] <= first[k]]
    changed = [k for k, s in final.items() if s is not None and s["id"] != ids[k]]
    blocked = sum(s["gate"].get("blocked", 0) for s in final.values() if s)
    half = max(1, len(curve) // 2)
    early, late = statistics.mean(curve[:half]), statistics.mean(curve[half:] or curve)
    verdicts = {f"no node stuck ({stuck or 'all advanced'})": not stuck, f"no id changed ({changed or 'none'})": not changed,
                f"no honest peer blocked ({blocked})": not blocked,
                f"accuracy rises: first half of the rounds {early:.3f} -> second half {late:.3f}": late > early}
    for what, ok in verdicts.items():
        print(f"  [{'ok' if ok else 'MISSED'}] {what}")
    return verdicts


def partition_heal(root: Path, args) -> dict:
    period = 2.0
    recipe = ["--dataset", "digits", "--partition", "dirichlet:0.3", "--num-partitions", "6", "--model", "logreg",
              "--period", str(period)]
    groups = [[root / f"g{g}n{i}" for i in range(3)] for g in range(2)]
    rows = []
    try:
        boots = []
        for g, group in enumerate(groups):
            start(group[0], *recipe, "--partition-id", str(3 * g))
            boots.append(status(group[0])[0]["addrs"][0])
            start_many([(h, [*recipe, "--partition-id", str(3 * g + i), "--bootstrap", boots[g]])
                        for i, h in enumerate(group) if i])
        print(f"\npartition and heal: two groups of 3 (logreg), {args.split_periods} periods apart, then "
              f"`manymodels connect`, {args.heal_periods} periods together", flush=True)
        print(f"{'period':>6} {'phase':>6} {'group A acc':>12} {'group B acc':>12} {'peers A/B':>10}")

        def row(p: int, phase: str) -> None:
            ss = [[status(h)[0] for h in group] for group in groups]
            acc = [statistics.mean(s["accuracy"] for s in g if s and s["accuracy"] is not None) for g in ss]
            peers = [statistics.mean(s["peers"] for s in g if s) for g in ss]
            rows.append((phase, acc))
            print(f"{p:6d} {phase:>6} {acc[0]:12.3f} {acc[1]:12.3f} {peers[0]:4.1f}/{peers[1]:3.1f}", flush=True)
        for p in range(args.split_periods):
            time.sleep(period)
            row(p, "split")
        out = subprocess.run([str(EXE), "connect", boots[1], "--home", str(groups[0][0])], capture_output=True,
                             text=True, timeout=60)
        print(f"connect: {(out.stdout or out.stderr).strip()}")
        for p in range(args.heal_periods):
            time.sleep(period)
            row(args.split_periods + p, "healed")
    finally:
        for h in [*groups[0], *groups[1]]:
            stop(h)
    gap_split = abs(rows[args.split_periods - 1][1][0] - rows[args.split_periods - 1][1][1])
    gap_healed = abs(rows[-1][1][0] - rows[-1][1][1])
    verdicts = {f"groups converge: accuracy gap {gap_split:.3f} split -> {gap_healed:.3f} healed":
                gap_healed <= gap_split + 0.02}
    for what, ok in verdicts.items():
        print(f"  [{'ok' if ok else 'MISSED'}] {what}")
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer peers, shorter windows, no churn nor partition")
    parser.add_argument("--peers", type=int, default=None, help="hostile peers (default 50, --quick 10)")
    parser.add_argument("--duration", type=float, default=None, help="flood seconds (default 60, --quick 15)")
    parser.add_argument("--window", type=float, default=None, help="baseline seconds (default 30, --quick 12)")
    parser.add_argument("--processes", type=int, default=2, help="attacker processes")
    parser.add_argument("--model", default="mlp", choices=["mlp", "logreg"])
    parser.add_argument("--churn-nodes", type=int, default=8)
    parser.add_argument("--churn-rounds", type=int, default=10)
    parser.add_argument("--churn-kill", type=float, default=0.3, help="fraction of daemons killed each round")
    parser.add_argument("--split-periods", type=int, default=6)
    parser.add_argument("--heal-periods", type=int, default=10)
    parser.add_argument("--skip", default="", help="comma-separated: flood, churn, partition")
    # the attacker process
    parser.add_argument("--attack", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--addr", help=argparse.SUPPRESS)
    parser.add_argument("--digest", default="", help=argparse.SUPPRESS)
    parser.add_argument("--mix", default="garbage,oversize,foreign,own,request", help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, default=0.005, help=argparse.SUPPRESS)
    parser.add_argument("--max-identities", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        args.duration = args.duration or 15.0
        args.peers = args.peers or 1
        return attack(args)
    args.peers = args.peers or (10 if args.quick else 50)
    args.duration = args.duration or (15.0 if args.quick else 60.0)
    args.window = args.window or (12.0 if args.quick else 30.0)
    skip = set(filter(None, args.skip.split(",")))
    if args.quick:
        skip |= {"churn", "partition"}
    started = time.monotonic()
    verdicts = {}
    with tempfile.TemporaryDirectory(prefix="mm-hostile-") as tmp:
        root = Path(tmp)
        if "flood" not in skip:
            verdicts.update(flood(root, args))
        if "churn" not in skip:
            verdicts.update(churn(root, args))
        if "partition" not in skip:
            verdicts.update(partition_heal(root, args))
    missed = [k for k, ok in verdicts.items() if not ok]
    print(f"\n{len(verdicts) - len(missed)}/{len(verdicts)} goals met in {time.monotonic() - started:.0f} s"
          + (f"; missed: {'; '.join(missed)}" if missed else ""))


if __name__ == "__main__":
    main()
