"""Pull vs push of one big model between two daemons' nodes on loopback, in two processes.

A daemon pushes a message of at most --push-limit bytes to its neighbours; a larger one is announced
and each neighbour pulls it by digest in 4 MiB blob_request/blob_response chunks (every chunk a
signed message) before its fold. This measures what that costs against a push of the same sealed
weights over the same libp2p transports, in one run, methods taking turns round after round. The
holder runs in a child process; this process asks it for a fresh model (a `hello` naming the method)
and the clock runs from that request until this node has verified and handled the model:

  push       the holder seals the weights and sends them
  pull:W     the holder seals them, keeps them and sends an `announce`; this node fetches them by
             digest with W chunk requests in flight, then verifies (is it the digest asked for too)

Both include sealing the whole model once and verifying it once. Best and median of the rounds;
ratios best against best.

    python bench/bench_pull.py                      # 10 MB and 100 MB, 3 rounds, windows 1 and 4
    python bench/bench_pull.py --sizes 100 --rounds 5 --windows 1,2,4,8
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import numpy as np
import trio

from manymodels.aggregation import get_rule
from manymodels.node.runtime.daemon import DaemonNode
from manymodels.node.core.exchange import WeightGossip
from manymodels.node.learning.models import build_model
from manymodels.node.learning.torch_learner import TorchLearner
from manymodels.node.core.reputation import Reputation
from manymodels.node.p2p.libp2p import Libp2pTransport
from manymodels.protocol import Announce, Hello, Identity, Message, Weights


class Holder(DaemonNode):
    """Answers a `hello` whose agent names a method with a fresh model: pushed, or announced."""

    tensors: dict[str, np.ndarray] = {}  # by size: made once, outside the clock's concern

    def handle(self, sender_address: str, message: Message) -> None:
        hello = message.payload
        if not isinstance(hello, Hello) or not hello.agent.startswith("bench/"):
            return super().handle(sender_address, message)
        method, size = hello.agent.split("/")[1:]
        tensor = self.tensors.get(size)
        if tensor is None:
            tensor = self.tensors[size] = np.random.default_rng(0).standard_normal(
                int(size) * 1_000_000 // 4).astype(np.float32)
        self.version += 1
        data = self.seal(Weights("big", self.version, 1, [tensor]))
        if method == "push":
            self.transport.send(sender_address, data)
        else:
            digest = self.keep_blob(data)
            self.transport.send(sender_address, self.seal(Announce(digest, "weights", "big", self.version, 1, len(data))))


class Puller(DaemonNode):
    """Keeps the announcements it receives for the bench to pull."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.announced = trio.open_memory_channel(8)

    def handle(self, sender_address: str, message: Message) -> None:
        if isinstance(message.payload, Announce):
            return self.announced[0].send_nowait(message.payload)
        super().handle(sender_address, message)


def make_node(cls, identity: Identity, transport: Libp2pTransport) -> DaemonNode:
    x = np.zeros((4, 4), np.float32)
    learner = TorchLearner(build_model("logreg", (4,), 2, seed=0), x, np.zeros(4, np.int64), architecture="logreg")
    return cls(identity, learner, transport, WeightGossip(get_rule("fedavg")), num_classes=2,
               clock=lambda: int(time.time() * 1000), reputation=Reputation())


def serve_holder() -> None:
    """The child process: a holder on loopback; prints its address, serves until killed."""
    async def main() -> None:
        identity = Identity.generate()
        transport = Libp2pTransport(identity)
        async with transport.running():
            make_node(Holder, identity, transport)
            print(transport.listen_addrs()[0], flush=True)
            await trio.sleep_forever()
    trio.run(main)


def handled(node: DaemonNode) -> int:
    return node.stats.messages_accepted + sum(node.stats.rejected.values())


async def run(sizes_mb: list[int], windows: list[int], rounds: int) -> None:
    child = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        address = child.stdout.readline().strip()
        holder_id = address.rsplit("/p2p/", 1)[1]
        identity = Identity.generate()
        transport = Libp2pTransport(identity)
        async with transport.running():
            puller = make_node(Puller, identity, transport)
            await transport.connect(address)
            methods = ["push", *(f"pull:{w}" for w in windows)]
            print(f"{'size':>7} {'method':>8} {'best MB/s':>10} {'median':>8} {'vs push':>8}")
            for size in sizes_mb:
                times: dict[str, list[float]] = {m: [] for m in methods}
                for round_ in range(rounds + 1):  # round 0 warms up (the holder makes the tensor)
                    for method in methods:
                        before = handled(puller)
                        started = time.perf_counter()
                        agent = f"bench/{method.split(':')[0]}/{size}"
                        transport.send(holder_id, puller.seal(Hello(agent, [], [], [])))
                        if method != "push":
                            announce = await puller.announced[1].receive()
                            data = await puller.fetch(holder_id, announce.digest, window=int(method.split(":")[1]))
                            message = puller.verify(holder_id, data, author=holder_id, digest=announce.digest)
                            puller.handle(holder_id, message)
                        while handled(puller) == before:
                            await trio.sleep(0.001)
                        if round_:
                            times[method].append(time.perf_counter() - started)
                mb = size * 1.0
                best_push = mb / min(times["push"])
                for method in methods:
                    best, median = mb / min(times[method]), mb / statistics.median(times[method])
                    print(f"{mb:>5.0f}MB {method:>8} {best:>10.1f} {median:>8.1f} {best / best_push:>7.2f}x", flush=True)
    finally:
        child.kill()
        child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100", help="payload sizes in MB")
    parser.add_argument("--windows", default="1,4", help="chunk requests in flight, per pull method")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the holder's process
    args = parser.parse_args()
    if args.serve:
        return serve_holder()
    trio.run(run, [int(s) for s in args.sizes.split(",")], [int(w) for w in args.windows.split(",")], args.rounds)


if __name__ == "__main__":
    main()
