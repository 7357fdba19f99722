"""Bulk transfer on loopback: our libp2p transport vs a plain trio TCP socket vs a bare py-libp2p stream.

Every method moves the same random payload from a sender to a receiver that must end up holding the
whole message as one bytes object (what a node needs before it can check a digest), then answers
with a one-byte ack; the sender's clock runs from the first byte written to the ack. Connections
(and streams, where a method keeps one) are set up before the clock starts.

  raw          trio TCP socket: send_all(payload); receiver joins receive_some(1 MiB) chunks
  raw-discard  the same, but the receiver only counts bytes (an upper bound nobody can use)
  bare-libp2p  py-libp2p host as shipped (Noise, yamux), one stream: stream.write(payload),
               receiver joins stream.read(1 MiB) chunks
  ours         manymodels Libp2pTransport: send() -> /manymodels/msg/1.0.0 -> receiver callback

By default sender and receiver are separate processes (two daemons on one machine); --inproc runs
both in one trio loop (one core does both ends). --ablate adds rows for `ours` with one fix
turned off at a time. --profile prints a cProfile of `ours` moving the largest payload in-process.

    python bench/bench_transfer.py                 # 10 MB and 100 MB, 3 repetitions, two processes
    python bench/bench_transfer.py --inproc --ablate --json transfer.json
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

import trio

MB = 1_000_000
ACK = b"k"
CHUNK = 1 << 20
METHODS = ("raw", "raw-discard", "bare-libp2p", "ours")
ABLATIONS = ("ours:stock-noise", "ours:64k-frames", "ours:default-window")


# --------------------------------------------------------------------------- receivers


async def serve(method: str, size: int, reps: int, ready) -> None:
    """Receive `reps` payloads of `size` bytes, ack each; call ready(address) once listening."""
    if method in ("raw", "raw-discard"):
        keep = method == "raw"

        async def handler(stream):
            for _ in range(reps):
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
                    del message
                await stream.send_all(ACK)

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            ready(str(listeners[0].socket.getsockname()[1]))
            await trio.sleep_forever()

    elif method == "bare-libp2p":
        import multiaddr

        from manymodels.node.transport.libp2p import noise_only_host

        host = noise_only_host(os.urandom(32), ["/ip4/127.0.0.1/tcp/0"], buffered_noise=False)

        async def handler(stream):
            for _ in range(reps):
                parts, n = [], 0
                while n < size:
                    chunk = await stream.read(CHUNK)
                    if not chunk:
                        return
                    parts.append(chunk)
                    n += len(chunk)
                message = b"".join(parts)
                assert len(message) == size
                del message
                await stream.write(ACK)

        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            host.set_stream_handler("/bench/bare/1.0.0", handler)
            ready(str(host.get_addrs()[0]))
            await trio.sleep_forever()

    else:
        from manymodels.node.transport.libp2p import Libp2pTransport
        from manymodels.protocol import Identity

        transport = Libp2pTransport(Identity.generate(), **_variant_options(method))

        def receive(sender, data):
            if len(data) >= size:
                transport.send(sender, ACK)

        transport.set_receiver(receive)
        async with transport.running():
            ready(transport.listen_addrs()[0])
            await trio.sleep_forever()


def _variant_options(method: str) -> dict:
    if method == "ours:stock-noise":
        return {"buffered_noise": False}
    if method == "ours:default-window":
        from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE
        return {"recv_window": DEFAULT_WINDOW_SIZE}
    if method == "ours:64k-frames":
        from libp2p.stream_muxer.yamux.yamux import HEADER_SIZE, MAX_MESSAGE_SIZE

        from manymodels.node.transport.libp2p_fast import BulkYamuxStream
        BulkYamuxStream.max_frame = MAX_MESSAGE_SIZE - HEADER_SIZE  # upstream's frame size
    return {}


# --------------------------------------------------------------------------- senders


async def send(method: str, address: str, payload: bytes, reps: int) -> list[float]:
    """Send `payload` `reps` times to a receiver at `address`; seconds per transfer."""
    times = []
    if method in ("raw", "raw-discard"):
        stream = await trio.open_tcp_stream("127.0.0.1", int(address))
        for _ in range(reps):
            started = time.perf_counter()
            await stream.send_all(payload)
            assert await stream.receive_some(1) == ACK
            times.append(time.perf_counter() - started)
        await stream.aclose()

    elif method == "bare-libp2p":
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        from manymodels.node.transport.libp2p import noise_only_host

        host = noise_only_host(os.urandom(32), ["/ip4/127.0.0.1/tcp/0"], buffered_noise=False)
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            info = info_from_p2p_addr(multiaddr.Multiaddr(address))
            await host.connect(info)
            stream = await host.new_stream(info.peer_id, ["/bench/bare/1.0.0"])
            for _ in range(reps):
                started = time.perf_counter()
                await stream.write(payload)
                assert await stream.read(1) == ACK
                times.append(time.perf_counter() - started)
            await stream.close()
            await host.close()

    else:
        from manymodels.node.transport.libp2p import Libp2pTransport
        from manymodels.protocol import Identity

        transport = Libp2pTransport(Identity.generate(), **_variant_options(method))
        acked = trio.Semaphore(0)
        transport.set_receiver(lambda sender, data: acked.release())
        async with transport.running():
            peer = await transport.connect(address)
            transport.send(peer, b"warm-up")  # opens our stream before the clock starts
            await trio.sleep(0.2)
            for _ in range(reps):
                started = time.perf_counter()
                transport.send(peer, payload)
                with trio.fail_after(300):
                    await acked.acquire()
                times.append(time.perf_counter() - started)
    return times


# --------------------------------------------------------------------------- drivers


def measure_two_process(method: str, size: int, reps: int, payload: bytes) -> list[float]:
    child = subprocess.Popen([sys.executable, __file__, "--serve", method, "--size", str(size), "--reps", str(reps)],
                             stdout=subprocess.PIPE, text=True)
    try:
        address = child.stdout.readline().strip()
        if not address:
            raise RuntimeError(f"the {method} receiver did not start")
        return trio.run(send, method, address, payload, reps)
    finally:
        child.kill()
        child.wait()


def measure_in_process(method: str, size: int, reps: int, payload: bytes) -> list[float]:
    async def main():
        async with trio.open_nursery() as nursery:
            address = trio.Event()
            box = {}

            def ready(a):
                box["a"] = a
                address.set()

            nursery.start_soon(serve, method, size, reps + 1, ready)
            await address.wait()
            times = await send(method, box["a"], payload, reps)
            nursery.cancel_scope.cancel()
        return times
    return trio.run(main)


def child_main(method: str, size: int, reps: int) -> None:
    def ready(address):
        print(address, flush=True)
    trio.run(serve, method, size, reps + 1, ready)


def profile(size: int) -> None:
    import cProfile
    import pstats

    payload = os.urandom(size)

    async def main():
        from manymodels.node.transport.libp2p import Libp2pTransport
        from manymodels.protocol import Identity

        a, b = Libp2pTransport(Identity.generate()), Libp2pTransport(Identity.generate())
        got = trio.Semaphore(0)
        b.set_receiver(lambda sender, data: got.release())
        async with a.running(), b.running():
            await a.connect(b.listen_addrs()[0])
            a.send(b.address, b"warm-up")
            await got.acquire()
            profiler = cProfile.Profile()
            started = time.perf_counter()
            profiler.enable()
            a.send(b.address, payload)
            await got.acquire()
            profiler.disable()
            print(f"ours, in-process, {size / MB:.0f} MB under cProfile: "
                  f"{size / MB / (time.perf_counter() - started):.0f} MB/s")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    trio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100", help="payload sizes in MB (10^6 bytes)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--inproc", action="store_true", help="sender and receiver in one trio loop")
    parser.add_argument("--ablate", action="store_true", help="also run ours with one fix off at a time")
    parser.add_argument("--profile", action="store_true", help="cProfile ours on the largest size, then exit")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return child_main(args.serve, args.size, args.reps)
    sizes = [int(float(s) * MB) for s in args.sizes.split(",")]
    if args.profile:
        return profile(max(sizes))
    methods = args.methods.split(",") + (list(ABLATIONS) if args.ablate else [])
    measure = measure_in_process if args.inproc else measure_two_process
    where = "one process" if args.inproc else "two processes"
    print(f"# bulk transfer on loopback, {where}, best and median of {args.reps}; "
          f"python {platform.python_version()}, {os.cpu_count()} cpus")
    rows = []
    for size in sizes:
        payload = os.urandom(size)
        results = {}
        for method in methods:
            results[method] = measure(method, size, args.reps, payload)
            if method == "ours:64k-frames":  # _variant_options changed a class attribute here
                from manymodels.node.transport.libp2p_fast import BULK_MAX_FRAME, BulkYamuxStream
                BulkYamuxStream.max_frame = BULK_MAX_FRAME
        raw_best = size / min(results["raw"]) if "raw" in results else None
        print(f"\n{size / MB:.0f} MB{'':8}{'best MB/s':>10}{'median':>10}{'vs raw':>9}")
        for method, times in results.items():
            best, median = size / MB / min(times), size / MB / statistics.median(times)
            ratio = (size / min(times)) / raw_best if raw_best else float("nan")
            print(f"  {method:20}{best:10.0f}{median:10.0f}{ratio:9.1%}")
            rows.append({"size_mb": size / MB, "method": method, "mode": where, "best_mb_s": round(best, 1),
                         "median_mb_s": round(median, 1), "ratio_vs_raw": round(ratio, 4),
                         "seconds": [round(t, 4) for t in times]})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
