"""Bulk transfer on loopback: our libp2p transport vs a plain trio TCP socket vs a bare py-libp2p stream.

Every method moves the same random payload from a sender to a receiver that must end up holding the
whole message as one bytes object (what a node needs before it can check a digest), then answers
with a one-byte ack; the sender's clock runs from the first byte written to the ack. Connections and
streams are set up before any clock starts, and the methods take turns (one transfer each, round
after round), so a noisy neighbour on a shared machine slows all of them alike. Best and median of
the rounds are reported; ratios are best against best. With --inproc every end runs in this one
process, so its CPU time per transfer is the whole cost, and is printed too (a figure that a busy
machine disturbs much less than wall time).

  raw          trio TCP socket: send_all(payload); the receiver joins receive_some(1 MiB) chunks
  raw-discard  the same, but the receiver only counts bytes (an upper bound no node can use)
  bare-libp2p  a py-libp2p host as shipped (Noise, yamux), one stream: stream.write(payload),
               the receiver joins stream.read(1 MiB) chunks
  ours         manymodels Libp2pTransport: send() -> /manymodels/msg/1.0.0 -> receiver callback

By default the receivers are separate processes (two daemons on one machine); --inproc puts every
end in one trio loop (one core does both ends). --ablate adds `ours` with one fix off at a time:
  ours:stock-noise     py-libp2p's Noise session instead of the buffered one
  ours:64k-frames      yamux DATA frames of 64 KiB (py-libp2p's size) instead of 1 MiB
  ours:default-window  no up-front 16 MiB window grant (py-libp2p's 256 KiB, auto-tuned)
--quic adds `ours` over QUIC (docs/NETWORK.md):
  ours:quic            both ends listen on /ip4/127.0.0.1/udp/0/quic-v1 (py-libp2p's QUIC: aioquic,
                       TLS 1.3, QUIC's own streams; no Noise, no yamux); slow, so use small sizes
--profile prints a cProfile of `ours` moving the largest payload in one process, then exits.

    python bench/bench_transfer.py                        # 10 MB and 100 MB, 5 rounds, two processes
    python bench/bench_transfer.py --inproc --ablate --json transfer.json
    python bench/bench_transfer.py --sizes 5 --rounds 2 --methods raw,ours --quic
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import AsyncExitStack

import trio

MB = 1_000_000
ACK = b"k"
CHUNK = 1 << 20
METHODS = ("raw", "raw-discard", "bare-libp2p", "ours")
ABLATIONS = ("ours:stock-noise", "ours:64k-frames", "ours:default-window")
QUIC = "ours:quic"
BARE_PROTOCOL = "/bench/bare/1.0.0"


def _ours_options(method: str) -> dict:
    from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE, HEADER_SIZE, MAX_MESSAGE_SIZE
    return {"ours": {},
            "ours:stock-noise": {"buffered_noise": False},
            "ours:64k-frames": {"yamux_frame": MAX_MESSAGE_SIZE - HEADER_SIZE},
            "ours:default-window": {"recv_window": DEFAULT_WINDOW_SIZE},
            QUIC: {"listen": ["/ip4/127.0.0.1/udp/0/quic-v1"]}}[method]


# --------------------------------------------------------------------------- receivers


async def serve(method: str, size: int, ready) -> None:
    """Receive payloads of `size` bytes and ack each, until cancelled; ready(address) once listening."""
    if method in ("raw", "raw-discard"):
        keep = method == "raw"

        async def handler(stream):
            while True:
                parts, n = [], 0
                while n < size:
                    chunk = await stream.receive_some(CHUNK)
                    if not chunk:
                        return
                    n += len(chunk)
                    if keep:
                        parts.append(chunk)
                if keep:
                    message = b"".join(parts)
                    assert len(message) == size
                    del message, parts
                await stream.send_all(ACK)

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            ready(str(listeners[0].socket.getsockname()[1]))
            await trio.sleep_forever()

    elif method == "bare-libp2p":
        import multiaddr

        from manymodels.node.p2p.libp2p import noise_only_host

        host = noise_only_host(os.urandom(32), ["/ip4/127.0.0.1/tcp/0"], buffered_noise=False)

        async def handler(stream):
            while True:
                parts, n = [], 0
                while n < size:
                    chunk = await stream.read(CHUNK)
                    if not chunk:
                        return
                    parts.append(chunk)
                    n += len(chunk)
                message = b"".join(parts)
                assert len(message) == size
                del message, parts
                await stream.write(ACK)

        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            host.set_stream_handler(BARE_PROTOCOL, handler)
            ready(str(host.get_addrs()[0]))
            await trio.sleep_forever()

    else:
        from manymodels.node.p2p.libp2p import Libp2pTransport
        from manymodels.protocol import Identity

        transport = Libp2pTransport(Identity.generate(), **_ours_options(method))

        def receive(sender, data):
            if len(data) == size:
                transport.send(sender, ACK)

        transport.set_receiver(receive)
        async with transport.running():
            ready(transport.listen_addrs()[0])
            await trio.sleep_forever()


# --------------------------------------------------------------------------- senders


async def open_sender(method: str, address: str, stack: AsyncExitStack):
    """Connect to a receiver; returns `async transfer(payload) -> seconds`."""
    if method in ("raw", "raw-discard"):
        stream = await trio.open_tcp_stream("127.0.0.1", int(address))
        stack.push_async_callback(stream.aclose)

        async def transfer(payload):
            started = time.perf_counter()
            await stream.send_all(payload)
            assert await stream.receive_some(1) == ACK
            return time.perf_counter() - started
        return transfer

    if method == "bare-libp2p":
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        from manymodels.node.p2p.libp2p import noise_only_host

        host = noise_only_host(os.urandom(32), ["/ip4/127.0.0.1/tcp/0"], buffered_noise=False)
        await stack.enter_async_context(host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]))
        stack.push_async_callback(host.close)
        info = info_from_p2p_addr(multiaddr.Multiaddr(address))
        await host.connect(info)
        stream = await host.new_stream(info.peer_id, [BARE_PROTOCOL])

        async def transfer(payload):
            started = time.perf_counter()
            await stream.write(payload)
            assert await stream.read(1) == ACK
            return time.perf_counter() - started
        return transfer

    from manymodels.node.p2p.libp2p import Libp2pTransport
    from manymodels.protocol import Identity

    transport = Libp2pTransport(Identity.generate(), **_ours_options(method))
    acked = trio.Semaphore(0)
    transport.set_receiver(lambda sender, data: acked.release())
    await stack.enter_async_context(transport.running())
    peer = await transport.connect(address)

    async def transfer(payload):
        started = time.perf_counter()
        transport.send(peer, payload)
        with trio.fail_after(300):
            await acked.acquire()
        return time.perf_counter() - started

    return transfer


# --------------------------------------------------------------------------- driver


async def run_size(methods, size: int, rounds: int, inproc: bool) -> dict[str, list[float]]:
    payload = os.urandom(size)
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}  # (wall, this process's cpu)
    children = []
    async with trio.open_nursery() as nursery:  # receivers (in-process) live in here
        try:
            async with AsyncExitStack() as stack:  # senders, closed before the receivers go
                addresses = {}
                for method in methods:
                    if inproc:
                        ready = trio.Event()

                        def on_ready(address, method=method, ready=ready):
                            addresses[method] = address
                            ready.set()
                        nursery.start_soon(serve, method, size, on_ready)
                        await ready.wait()
                    else:
                        child = subprocess.Popen([sys.executable, __file__, "--serve", method, "--size", str(size)],
                                                 stdout=subprocess.PIPE, text=True)
                        children.append(child)
                        addresses[method] = (await trio.to_thread.run_sync(child.stdout.readline)).strip()
                        if not addresses[method]:
                            raise RuntimeError(f"the {method} receiver did not start")
                senders = {m: await open_sender(m, addresses[m], stack) for m in methods}
                for send in senders.values():  # one untimed transfer each: buffers and code paths warm
                    await send(payload)
                for _ in range(rounds):
                    for method, send in senders.items():
                        cpu = time.process_time()
                        wall = await send(payload)
                        times[method].append((wall, time.process_time() - cpu))
        finally:
            for child in children:
                child.kill()
                child.wait()
            nursery.cancel_scope.cancel()
    return times


def profile(size: int) -> None:
    import cProfile
    import pstats

    from manymodels.node.p2p.libp2p import Libp2pTransport
    from manymodels.protocol import Identity

    payload = os.urandom(size)

    async def main():
        a, b = Libp2pTransport(Identity.generate()), Libp2pTransport(Identity.generate())
        got = trio.Semaphore(0)
        b.set_receiver(lambda sender, data: got.release())
        async with a.running(), b.running():
            await a.connect(b.listen_addrs()[0])
            a.send(b.address, payload)
            await got.acquire()
            profiler = cProfile.Profile()
            started = time.perf_counter()
            profiler.enable()
            a.send(b.address, payload)
            await got.acquire()
            profiler.disable()
            print(f"ours, one process, {size / MB:.0f} MB under cProfile: "
                  f"{size / MB / (time.perf_counter() - started):.0f} MB/s")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    trio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100", help="payload sizes in MB (10^6 bytes)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--inproc", action="store_true", help="every end in one trio loop")
    parser.add_argument("--ablate", action="store_true", help="also run ours with one fix off at a time")
    parser.add_argument("--quic", action="store_true", help="also run ours over QUIC")
    parser.add_argument("--profile", action="store_true", help="cProfile ours on the largest size, then exit")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return trio.run(serve, args.serve, args.size, lambda address: print(address, flush=True))
    sizes = [int(float(s) * MB) for s in args.sizes.split(",")]
    if args.profile:
        return profile(max(sizes))
    methods = args.methods.split(",") + (list(ABLATIONS) if args.ablate else []) + ([QUIC] if args.quic else [])
    where = "one process" if args.inproc else "receivers in their own processes"
    load = os.getloadavg()[0]
    print(f"# bulk transfer on loopback, {where}; best and median of {args.rounds} interleaved rounds; "
          f"python {platform.python_version()}, {os.cpu_count()} cpus, load {load:.1f} at start")
    rows = []
    for size in sizes:
        results = trio.run(run_size, methods, size, args.rounds, args.inproc)
        best = {m: min(w for w, _ in r) for m, r in results.items()}
        cpu = {m: min(c for _, c in r) for m, r in results.items()}
        cpu_note = f"{'cpu MB/s':>10}{'vs raw':>9}" if args.inproc else ""
        print(f"\n{size / MB:g} MB{'':16}{'best MB/s':>10}{'median':>10}{'vs raw':>9}{cpu_note}")
        for method, r in results.items():
            wall_best = size / MB / best[method]
            median = size / MB / statistics.median(w for w, _ in r)
            ratio = best["raw"] / best[method] if "raw" in best else float("nan")
            line = f"  {method:22}{wall_best:10.0f}{median:10.0f}{ratio:9.1%}"
            row = {"size_mb": size / MB, "method": method, "mode": where, "best_mb_s": round(wall_best, 1),
                   "median_mb_s": round(median, 1), "ratio_vs_raw": round(ratio, 4),
                   "seconds": [round(w, 4) for w, _ in r]}
            if args.inproc:  # every end is in this process: its cpu time is the whole cost
                cpu_ratio = cpu["raw"] / cpu[method] if "raw" in cpu else float("nan")
                line += f"{size / MB / cpu[method]:10.0f}{cpu_ratio:9.1%}"
                row.update(cpu_mb_s=round(size / MB / cpu[method], 1), cpu_ratio_vs_raw=round(cpu_ratio, 4))
            print(line)
            rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
