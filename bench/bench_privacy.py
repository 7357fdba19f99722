"""Privacy–utility (issue 12): held-out accuracy against the DP-SGD budget ε (δ = 1e-5), for the
weights and distill exchanges, next to each node trained alone at the same ε, and one pooled model
at the same ε (digits, 8 nodes, Dirichlet α = 0.5, logreg). Each node's noise multiplier is Opacus'
for its own sample rate and the run's planned steps (rounds × local epochs × 1/q); ε = ∞ is no DP.
Does the network still beat a node alone under DP? Writes bench/out/privacy.{md,json} and prints
the Markdown.

    python bench/bench_privacy.py                     # the issue's setting (~3 min on 2 cores)
    python bench/bench_privacy.py --rounds 5 --epsilons 8,inf --exchanges weights
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from manymodels.node.sim.simulator import SimulationConfig, run_simulation


def simulate(exchange: str, epsilon: float, args) -> dict:
    dp = {} if math.isinf(epsilon) else {"dp_epsilon": epsilon, "dp_delta": args.delta}
    config = SimulationConfig(nodes=args.nodes, rounds=args.rounds, dataset="digits", model=args.model,
                              exchange=exchange, seed=args.seed, **dp)
    report = run_simulation(config)
    s = report["summary"]
    spent = max((n["privacy"]["epsilon_per_round"][-1] for n in report["nodes"]), default=None) if dp else None
    sigma = [n["privacy"]["noise_multiplier"] for n in report["nodes"]] if dp else []
    row = {"exchange": exchange, "epsilon": epsilon, "mean_accuracy": s["mean_accuracy"],
           "local_only_accuracy": s["mean_local_only_accuracy"], "pooled_accuracy": s["pooled_accuracy"],
           "max_epsilon_spent": spent, "noise_multipliers": [min(sigma), max(sigma)] if sigma else None,
           "wall_seconds": s["wall_seconds"]}
    print(f"  {exchange} eps={epsilon:g}: {s['wall_seconds']:.0f} s, mean {s['mean_accuracy']:.3f} (alone "
          f"{s['mean_local_only_accuracy']:.3f}, pooled {s['pooled_accuracy']:.3f})", flush=True)
    return row


def table(rows: list[dict], args) -> str:
    lines = [f"digits, {args.nodes} nodes, Dirichlet α=0.5, {args.model}, {args.rounds} rounds, δ={args.delta:g}, "
             f"seed {args.seed}", "",
             "| exchange | ε | network | alone (same ε) | network − alone | pooled (same ε) | σ (nodes) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        sigma = "–" if r["noise_multipliers"] is None else "–".join(f"{s:.2f}" for s in r["noise_multipliers"])
        epsilon = "∞" if math.isinf(r["epsilon"]) else f"{r['epsilon']:g}"
        lines.append(f"| {r['exchange']} | {epsilon} | "
                     f"{r['mean_accuracy']:.3f} | {r['local_only_accuracy']:.3f} | "
                     f"{r['mean_accuracy'] - r['local_only_accuracy']:+.3f} | {r['pooled_accuracy']:.3f} | {sigma} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--model", default="logreg")
    parser.add_argument("--epsilons", default="1,3,8,inf")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--exchanges", default="weights,distill")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = [simulate(exchange, float(eps), args) for exchange in args.exchanges.split(",")
            for eps in args.epsilons.split(",")]
    markdown = table(rows, args)
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "privacy.md").write_text(markdown)
    (out / "privacy.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
