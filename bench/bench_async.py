"""Sync vs async with stragglers: 20 % of the nodes 10x slower (--speeds slow:0.2:10), accuracy over
virtual time. A synchronous round waits for the slowest node, so it lasts 10 s of virtual time;
the asynchronous network runs as long (10 median steps per synchronous round) and its fast nodes
go on without waiting. Prints mean held-out accuracy at the synchronous rounds' ends and the
virtual time each schedule takes to reach a target accuracy."""
from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from manymodels.node.sim.simulator import SimulationConfig, run_simulation


def curve(report: dict, nodes: list[dict] | None = None) -> list[float]:
    """The mean accuracy of `nodes` (all) at each history instant."""
    return np.mean([n["history"] for n in nodes or report["nodes"]], axis=0).round(3).tolist()


def reached(times: list[float], accuracies: list[float], target: float) -> float | None:
    return next((t for t, a in zip(times, accuracies) if a >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=8, help="synchronous rounds (10 s of virtual time each)")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", default="0.7,0.8,0.85,0.9")
    args = parser.parse_args()
    sync = SimulationConfig(nodes=args.nodes, rounds=args.rounds, model=args.model, partition="dirichlet:0.5",
                            speeds="slow:0.2:10", seed=args.seed)
    slow_sync = run_simulation(sync)
    per_round = slow_sync["history_ms"][0] / 1000
    fast_async = run_simulation(replace(sync, schedule="async", rounds=round(args.rounds * per_round)))
    a_times, s_times = fast_async["history_ms"], slow_sync["history_ms"]
    slow = [n for n in fast_async["nodes"] if n["step_ms"] > fast_async["history_ms"][0]]
    fast = [n for n in fast_async["nodes"] if n not in slow]
    a_all, a_fast, a_slow, s_all = curve(fast_async), curve(fast_async, fast), curve(fast_async, slow), curve(slow_sync)
    print(f"{args.nodes} nodes ({len(slow)} 10x slower), {args.model}, digits dirichlet:0.5, seed {args.seed}; "
          f"sync round = {per_round:g} s of virtual time")
    print(f"{'virtual s':>9} {'sync':>6} {'async':>6} {'fast':>6} {'slow':>6}   (async: all, fast nodes, slow nodes)")
    for t, acc in zip(s_times, s_all):
        k = a_times.index(t)
        print(f"{t / 1000:>9g} {acc:>6.3f} {a_all[k]:>6.3f} {a_fast[k]:>6.3f} {a_slow[k]:>6.3f}")
    print(f"{'target':>9} {'sync s':>7} {'async s':>7} {'ratio':>6}")
    for target in map(float, args.targets.split(",")):
        s, a = reached(s_times, s_all, target), reached(a_times, a_all, target)
        ratio = f"{s / a:>6.1f}" if s and a else f"{'-':>6}"
        print(f"{target:>9g} {s / 1000 if s else '-':>7} {a / 1000 if a else '-':>7} {ratio}")
    steps = [n["local_steps"] for n in fast_async["nodes"]]
    print(f"local steps: sync {args.rounds} per node; async {min(steps)}..{max(steps)} per node | "
          f"local only: {slow_sync['summary']['mean_local_only_accuracy']:.3f} ({args.rounds} epochs), "
          f"{fast_async['summary']['mean_local_only_accuracy']:.3f} ({len(a_times)} epochs) | "
          f"wall s: sync {slow_sync['summary']['wall_seconds']:.1f}, async {fast_async['summary']['wall_seconds']:.1f}")


if __name__ == "__main__":
    main()
