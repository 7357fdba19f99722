"""How a simulation grows with the number of nodes: logistic regression, 10 rounds, digits,
Dirichlet 0.5, on a random topology (about K neighbours each). Each size runs in its own
process so its peak memory is its own; ratios are against the smallest size in the same run."""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(nodes: int, rounds: int, topology: str) -> None:
    from manymodels.node.sim.simulator import SimulationConfig, run_simulation

    started = time.perf_counter()
    report = run_simulation(SimulationConfig(nodes=nodes, rounds=rounds, model="logreg", topology=topology))
    print(json.dumps({
        "nodes": nodes,
        "seconds": time.perf_counter() - started,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mean_accuracy": report["summary"]["mean_accuracy"],
        "messages": sum(n["messages_accepted"] for n in report["nodes"]),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="50,100,200")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--topology", default="random:5")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.rounds, args.topology)
    rows = []
    for n in map(int, args.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--rounds", str(args.rounds),
                              "--topology", args.topology], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f"{'nodes':>6} {'s/round':>8} {'x time':>7} {'peak MiB':>9} {'x mem':>6} {'messages':>9} {'mean acc':>9}")
    for r in rows:
        per_round = r["seconds"] / args.rounds
        print(f"{r['nodes']:>6} {per_round:>8.3f} {r['seconds'] / base['seconds']:>7.2f} {r['peak_rss_mib']:>9.0f} "
              f"{r['peak_rss_mib'] / base['peak_rss_mib']:>6.2f} {r['messages']:>9} {r['mean_accuracy']:>9.3f}")
    print(f"(x = relative to {base['nodes']} nodes; {args.rounds} rounds; seconds include the local-only and pooled baselines)")


if __name__ == "__main__":
    main()
