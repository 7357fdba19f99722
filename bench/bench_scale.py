"""How a simulation grows with the number of nodes, and what batched training and the
protocol-only mode buy: logistic regression on a random topology (about K neighbours each).

Parts, each case in its own process so its peak memory is its own, ratios from the same run:
  sizes     digits, Dirichlet 0.5, sizes 50,100,200: seconds and memory against the smallest size.
  training  training alone (no messages): --compare learners one epoch, one by one and batched.
  batched   the same network trained one by one (today's way) and batched: ms per node-round.
  big       --big logistic nodes (10,000) on MNIST-1D generated with --per-node training examples each
            (an iid partition, here and in `batched`: every node gets that many), against its floor:
            one Ed25519 signature and one verification per node, timed apart.
  protocol  --big protocol-only nodes: seconds a round, messages verified a second, and the share of
            the round's CPU that Ed25519 verification alone takes (its cost timed apart, times the
            distinct messages: the receivers of the same bytes share one check, docs/SIMULATION.md).
Seconds per round are the mean time between the reports of rounds 1 to R-1 (no building of the
network, no baselines, no dataset generation; a round is reported once evaluated, which with
batching happens while the next round runs, so the last round's report comes only a moment after
the one before), in wall time and in this process's CPU time (what
to read on a shared machine); peak RSS covers the whole run. --profile prints
where a case's time goes (cProfile, top functions by own time)."""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(case: dict) -> None:
    from manymodels.node.sim.simulator import SimulationConfig, run_simulation

    ends: list[float] = []
    cpu: list[float] = []
    config = SimulationConfig(**case["config"])
    started = time.perf_counter()

    def on_round(r: int, accuracy: float) -> None:
        ends.append(time.perf_counter())
        cpu.append(time.process_time())

    if case.get("profile"):
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        report = profiler.runcall(run_simulation, config, on_round=on_round)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    else:
        report = run_simulation(config, on_round=on_round)
    s = report["summary"]
    print(json.dumps({
        "nodes": config.nodes,
        "seconds": time.perf_counter() - started,
        "per_round": (ends[-2] - ends[0]) / (len(ends) - 2),
        "cpu_per_round": (cpu[-2] - cpu[0]) / (len(cpu) - 2),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mean_accuracy": s.get("mean_accuracy"),
        "messages": sum(n["messages_accepted"] + n["rejected_messages"] for n in report["nodes"]),
        "distinct": s.get("messages_distinct"),
        "rounds": config.rounds,
        "crypto_us": _crypto_us(),
    }))


def _crypto_us(count: int = 2000) -> tuple[float, float]:
    """Microseconds for one Ed25519 signature and one verification of a 200-byte message, each timed
    alone on one core, as the protocol makes them (protocol/identity.py): the floor of a round is
    one of each per node."""
    from manymodels.protocol import Identity, verify

    key, message = Identity(bytes(32)), b"x" * 200
    signature = key.sign(message)
    started = time.perf_counter()
    for _ in range(count):
        key.sign(message)
    signed = time.perf_counter()
    for _ in range(count):
        verify(key.public_key, signature, message)
    return (signed - started) / count * 1e6, (time.perf_counter() - signed) / count * 1e6


def run(case: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], capture_output=True, text=True,
                         check=False)
    if out.returncode:
        raise SystemExit(f"case {case} failed:\n{out.stderr[-3000:]}")
    if case.get("profile"):
        print(out.stderr, file=sys.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def sizes(args) -> None:
    rows = [run({"config": dict(nodes=n, rounds=args.rounds, model="logreg", topology=args.topology)})
            for n in map(int, args.sizes.split(","))]
    base = rows[0]
    print(f"{'nodes':>6} {'s/round':>8} {'x time':>7} {'peak MiB':>9} {'x mem':>6} {'messages':>9} {'mean acc':>9}")
    for r in rows:
        print(f"{r['nodes']:>6} {r['per_round']:>8.3f} {r['per_round'] / base['per_round']:>7.2f} "
              f"{r['peak_rss_mib']:>9.0f} {r['peak_rss_mib'] / base['peak_rss_mib']:>6.2f} {r['messages']:>9} "
              f"{r['mean_accuracy']:>9.3f}")
    print(f"(x = relative to {base['nodes']} nodes; digits; {args.rounds} rounds)\n")


def batched(args) -> None:
    config = dict(nodes=args.compare, rounds=args.rounds, model="logreg", topology=args.topology,
                  dataset=f"mnist1d:{args.compare * args.per_node * 5 // 4}", max_test=args.max_test, partition="iid")
    one, many = (run({"config": {**config, "batched": b}, "profile": args.profile}) for b in (False, True))
    cost = [r["per_round"] / r["nodes"] * 1e3 for r in (one, many)]
    print(f"{args.compare} logistic nodes, MNIST-1D, {args.per_node} examples each, {args.topology}: "
          f"one by one {cost[0]:.3f} ms per node-round, batched {cost[1]:.3f} ({cost[0] / cost[1]:.1f}x); "
          f"peak {one['peak_rss_mib']:.0f} -> {many['peak_rss_mib']:.0f} MiB; "
          f"accuracy {one['mean_accuracy']} = {many['mean_accuracy']}\n")


def training(args) -> None:
    """Training alone, in this process: --compare learners one epoch each, one by one and batched."""
    import torch

    from manymodels.node.learning.batched import fit_all
    from manymodels.node.learning.datasets import load_dataset
    from manymodels.node.learning.recipe import make_learner

    torch.set_num_threads(1)
    data = load_dataset(f"mnist1d:{args.compare * args.per_node * 5 // 4}")
    seconds = []
    for batched in (False, True):
        learners = [make_learner("logreg", data.x_train[i::args.compare], data.y_train[i::args.compare], data,
                                 init_seed=0, seed=i) for i in range(args.compare)]
        started = time.perf_counter()
        for _ in range(args.rounds):
            if batched:
                fit_all(learners, 1)
            else:
                for one in learners:
                    one.fit(1)
        seconds.append((time.perf_counter() - started) / args.rounds / args.compare * 1e3)
    print(f"training alone, {args.compare} logistic learners x {args.per_node} examples, one epoch: one by one "
          f"{seconds[0]:.3f} ms per node, batched {seconds[1]:.3f} ({seconds[0] / seconds[1]:.1f}x)\n")


def big(args) -> None:
    samples = args.big * args.per_node * 5 // 4  # MNIST-1D keeps 80 % for training
    r = run({"config": dict(nodes=args.big, rounds=args.rounds, model="logreg", topology=args.topology,
                            dataset=f"mnist1d:{samples}", max_test=args.max_test, partition="iid"),
             "profile": args.profile})
    print(f"{args.big} logistic nodes (MNIST-1D {samples} samples, {args.per_node} training examples each, "
          f"{args.max_test} test, {args.topology}): {r['per_round']:.2f} s/round "
          f"({r['per_round'] / args.big * 1e3:.3f} ms per node-round; {r['cpu_per_round']:.2f} s of CPU), "
          f"peak {r['peak_rss_mib']:.0f} MiB, "
          f"whole run {r['seconds']:.0f} s (dataset, baselines), mean accuracy {r['mean_accuracy']}")
    sign, verify = r["crypto_us"]
    floor = args.big * (sign + verify) / 1e6
    print(f"  its floor on this machine: one Ed25519 signature ({sign:.0f} us) and one verification ({verify:.0f} us) "
          f"per node = {floor:.2f} s of CPU a round, {floor / 2:.2f} s on two cores; the round takes "
          f"{r['cpu_per_round'] / floor:.1f}x that CPU\n")


def protocol(args) -> None:
    r = run({"config": dict(nodes=args.big, rounds=args.rounds, model="logreg", topology=args.topology,
                            dataset="mnist1d", protocol_only=True), "profile": args.profile})
    per_round, distinct = r["messages"] / r["rounds"], r["distinct"] / r["rounds"]
    verify_share = distinct * r["crypto_us"][1] / 1e6 / r["cpu_per_round"]
    print(f"{args.big} protocol-only nodes ({args.topology}): {r['per_round']:.2f} s/round "
          f"({r['cpu_per_round']:.2f} s of CPU), {per_round / r['per_round']:.0f} messages verified a second "
          f"({per_round:.0f} a round, {distinct:.0f} distinct, each signature checked once); Ed25519 "
          f"verification alone {r['crypto_us'][1]:.0f} us each = {verify_share:.0%} of the round's CPU; "
          f"peak {r['peak_rss_mib']:.0f} MiB\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="sizes,training,batched,big,protocol")
    parser.add_argument("--sizes", default="50,100,200")
    parser.add_argument("--compare", type=int, default=1000, help="nodes in the one-by-one vs batched comparison")
    parser.add_argument("--big", type=int, default=10_000)
    parser.add_argument("--per-node", type=int, default=16, help="training examples per node (MNIST-1D)")
    parser.add_argument("--max-test", type=int, default=500, help="held-out examples every node is evaluated on")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--topology", default="random:5")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    parts = {"sizes": sizes, "training": training, "batched": batched, "big": big, "protocol": protocol}
    for name in args.parts.split(","):
        parts[name](args)


if __name__ == "__main__":
    main()
