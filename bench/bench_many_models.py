"""Many models (issue 4): what each kind of knowledge buys and what it costs.

1. Per-architecture accuracy on a mixed network (logreg, mlp, mlp-wide, cnn, forest; two nodes each):
   local-only vs distill vs synthetic vs weights (same architecture only) vs mixed vs pooled, with the
   goal that every architecture gains >= 15 points over local-only at Dirichlet alpha=0.1.
2. Bytes to reach 90 % of pooled accuracy (mean node accuracy >= 0.9 x pooled, pooled from the same run):
   weight gossip vs distillation on a homogeneous mlp network (goal: distillation needs >= 10x fewer),
   and every exchange on the mixed network of part 1.
Writes bench/out/many_models.{md,json} and prints the Markdown.

    python bench/bench_many_models.py                                   # the issue's setting (~15 min)
    python bench/bench_many_models.py --datasets digits --alphas 0.1 --rounds 3 --bytes-rounds 5
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from manymodels.node.sim.simulator import SimulationConfig, run_simulation

EXCHANGES = ("distill", "synthetic", "weights", "mixed")
GOAL_POINTS = 15.0  # every architecture over local-only, at alpha=0.1
GOAL_RATIO = 10.0  # weight-gossip bytes / distillation bytes to the same accuracy
# Rounds sized to keep the default run near 15 minutes on 2 cores: Fashion-MNIST runs evaluate every
# node on the full 10,000-image test set each round, and the CNN makes that the dominant cost.
ROUNDS = {"digits": 10, "fashion-mnist": 4}
BYTES_ROUNDS = {"digits": 30, "fashion-mnist": 15}


def simulate(dataset: str, alpha: float, model: str, exchange: str, rounds: int, args, seed: int) -> dict:
    config = SimulationConfig(nodes=args.nodes, rounds=rounds, dataset=dataset, partition=f"dirichlet:{alpha:g}",
                              model=model, exchange=exchange, seed=seed, max_train=args.max_train)
    report = run_simulation(config)
    s = report["summary"]
    print(f"  {dataset} a={alpha:g} {model}/{exchange} seed {seed}: {rounds} rounds, {s['wall_seconds']:.0f} s, "
          f"mean {s['mean_accuracy']:.3f} (alone {s['mean_local_only_accuracy']:.3f}, pooled {s['pooled_accuracy']:.3f})",
          flush=True)
    return report


def to_target(report: dict, target: float | None = None) -> dict:
    """Cumulative bytes sent by all nodes until the mean node accuracy first reaches `target`
    (by default 0.9 x pooled)."""
    nodes = report["nodes"]
    accuracy = np.mean([n["history"] for n in nodes], axis=0)
    sent = np.cumsum([sum(sum(n["bytes_sent_per_round"][r].values()) for n in nodes) for r in range(len(accuracy))])
    target = 0.9 * report["summary"]["pooled_accuracy"] if target is None else target
    hit = np.flatnonzero(accuracy >= target)
    return {"target": round(target, 4), "round": int(hit[0]) + 1 if len(hit) else None,
            "bytes": int(sent[hit[0]]) if len(hit) else None, "best_accuracy": float(accuracy.max()),
            "bytes_per_round": int(sent[-1] / len(sent)), "accuracy_curve": accuracy.round(4).tolist(),
            "bytes_curve": sent.tolist()}


def accuracy_section(dataset: str, alpha: float, runs: dict[str, list[dict]], exchanges: list[str]) -> tuple[list[str], dict]:
    """Markdown rows and JSON for one (dataset, alpha): per-architecture means over nodes and seeds."""
    first = runs[exchanges[0]]
    # Local-only and pooled baselines are trained from the same seeds whatever the exchange: check it.
    same = all([(n["local_only_accuracy"], n["pooled_accuracy"]) for n in a["nodes"]] ==
               [(n["local_only_accuracy"], n["pooled_accuracy"]) for n in b["nodes"]]
               for ex in exchanges for a, b in zip(first, runs[ex]))
    archs = sorted({n["model"] for n in first[0]["nodes"]}) + ["all"]

    def mean(reports, arch, key):
        return float(np.mean([n[key] for r in reports for n in r["nodes"] if arch in ("all", n["model"])]))

    rows, data = [], {"baselines_identical_across_exchanges": same, "architectures": {}}
    for arch in archs:
        alone, pooled = mean(first, arch, "local_only_accuracy"), mean(first, arch, "pooled_accuracy")
        got = {ex: mean(runs[ex], arch, "final_accuracy") for ex in exchanges}
        nodes = sum(arch in ("all", n["model"]) for n in first[0]["nodes"])
        cells = [f"{got[ex]:.3f} ({100 * (got[ex] - alone):+.1f})" for ex in exchanges]
        rows.append(f"| {arch} | {nodes} | {alone:.3f} | " + " | ".join(cells) + f" | {pooled:.3f} |")
        data["architectures"][arch] = {"nodes": nodes, "local_only": round(alone, 4), "pooled": round(pooled, 4),
                                       **{ex: round(got[ex], 4) for ex in exchanges}}
    # Gain of the worst architecture and of the worst node (issue: "every heterogeneous node").
    worst_arch = {ex: min(100 * (data["architectures"][a][ex] - data["architectures"][a]["local_only"])
                          for a in archs[:-1]) for ex in exchanges}
    worst_node = {ex: min(100 * (n["final_accuracy"] - n["local_only_accuracy"]) for r in runs[ex] for n in r["nodes"])
                  for ex in exchanges}
    rows.append("| worst architecture gain (pts) | | | " + " | ".join(f"{worst_arch[ex]:+.1f}" for ex in exchanges) + " | |")
    rows.append("| worst node gain (pts) | | | " + " | ".join(f"{worst_node[ex]:+.1f}" for ex in exchanges) + " | |")
    if alpha == 0.1:
        rows.append(f"| every architecture >= {GOAL_POINTS:g} pts? | | | "
                    + " | ".join("**yes**" if worst_arch[ex] >= GOAL_POINTS else "no" for ex in exchanges) + " | |")
    data.update(worst_architecture_gain=worst_arch, worst_node_gain=worst_node)
    header = [f"### {dataset}, Dirichlet alpha={alpha:g}", "",
              "| architecture | nodes | local-only | " + " | ".join(f"{ex} (gain)" for ex in exchanges) + " | pooled |",
              "|---" * (len(exchanges) + 4) + "|"]
    note = [f"Local-only and pooled baselines identical across exchanges for every seed: {'yes' if same else '**NO**'}.", ""]
    return header + rows + [""] + note, data


def bytes_row(dataset: str, alpha: float, network: str, exchange: str, seed: int, t: dict, ratio: str = "") -> str:
    reached = f"round {t['round']}" if t["round"] else f"never (best {t['best_accuracy']:.3f})"
    spent = f"{t['bytes'] / 1e6:,.2f}" if t["bytes"] is not None else "-"
    return (f"| {dataset} | {alpha:g} | {network} | {exchange} | {seed} | {len(t['accuracy_curve'])} | {t['target']:.3f} | "
            f"{reached} | {spent} | {t['bytes_per_round'] / 1e6:,.3f} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="digits,fashion-mnist")
    parser.add_argument("--alphas", default="0.1,0.5", help="Dirichlet concentrations")
    parser.add_argument("--exchanges", default=",".join(EXCHANGES))
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, help=f"mixed-network rounds (default {ROUNDS})")
    parser.add_argument("--bytes-rounds", type=int, help=f"homogeneous bytes-to-target rounds (default {BYTES_ROUNDS})")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1; accuracies are averaged over them")
    parser.add_argument("--max-train", type=int, default=6000, help="training subsample (digits has only 1,347)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out"))
    args = parser.parse_args()
    datasets, exchanges = args.datasets.split(","), args.exchanges.split(",")
    alphas = [float(a) for a in args.alphas.split(",")]
    started, cpu = time.perf_counter(), time.process_time()

    md, out = [], {"settings": {}, "accuracy": {}, "bytes": []}
    bytes_rows = []
    for dataset in datasets:
        rounds = args.rounds or ROUNDS.get(dataset, 10)
        bytes_rounds = args.bytes_rounds or BYTES_ROUNDS.get(dataset, 30)
        out["settings"][dataset] = {"nodes": args.nodes, "rounds": rounds, "bytes_rounds": bytes_rounds,
                                    "max_train": args.max_train, "seeds": args.seeds, "model": "mixed"}
        for alpha in alphas:
            runs = {ex: [simulate(dataset, alpha, "mixed", ex, rounds, args, seed) for seed in range(args.seeds)]
                    for ex in exchanges}
            rows, data = accuracy_section(dataset, alpha, runs, exchanges)
            md += rows
            out["accuracy"][f"{dataset}/{alpha:g}"] = data
            for ex in exchanges:
                for seed, report in enumerate(runs[ex]):
                    t = to_target(report)
                    bytes_rows.append(bytes_row(dataset, alpha, "mixed", ex, seed, t))
                    out["bytes"].append({"dataset": dataset, "alpha": alpha, "network": "mixed", "exchange": ex,
                                         "seed": seed, **t})
            for seed in range(args.seeds):
                reports = {ex: simulate(dataset, alpha, "mlp", ex, bytes_rounds, args, seed) for ex in ("weights", "distill")}
                t = {ex: to_target(r) for ex, r in reports.items()}
                w, d = t["weights"], t["distill"]
                if w["bytes"] and d["bytes"]:
                    r = w["bytes"] / d["bytes"]
                    ratio = f"**{r:,.1f}x** ({'meets' if r >= GOAL_RATIO else 'misses'} {GOAL_RATIO:g}x)"
                else:  # compare at the best accuracy both reached instead
                    common = min(w["best_accuracy"], d["best_accuracy"])
                    c = {ex: to_target(r, common)["bytes"] for ex, r in reports.items()}
                    ratio = ("n/a: " + " and ".join(ex for ex in t if t[ex]["bytes"] is None) + " never reached it; "
                             f"to {common:.3f} (both reach it): {c['weights'] / c['distill']:,.1f}x")
                    out["bytes"].append({"dataset": dataset, "alpha": alpha, "network": "mlp", "seed": seed,
                                         "common_target": common, "weights_bytes": c["weights"],
                                         "distill_bytes": c["distill"]})
                for ex in t:
                    bytes_rows.append(bytes_row(dataset, alpha, "mlp", ex, seed, t[ex], ratio if ex == "distill" else ""))
                    out["bytes"].append({"dataset": dataset, "alpha": alpha, "network": "mlp", "exchange": ex,
                                         "seed": seed, **t[ex]})

    md += ["### Bytes sent by all nodes until mean node accuracy >= 0.9 x pooled", "",
           "| dataset | alpha | network | exchange | seed | rounds run | target | reached | MB to target | MB per round | weights/distill |",
           "|---" * 11 + "|", *bytes_rows, ""]
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    settings = "; ".join(f"{d}: {s['nodes']} nodes, mixed network {s['rounds']} rounds, mlp network "
                         f"{s['bytes_rounds']} rounds" for d, s in out["settings"].items())
    md = ["## Many models: accuracy per architecture and bytes to target", "",
          f"Settings: {settings}; training set subsampled to at most {args.max_train:,} examples (digits has 1,347) "
          f"before the probe set is set aside; full test sets; seeds 0..{args.seeds - 1}; full topology; other options at the "
          f"simulator's defaults. Pooled = one model per architecture trained on all private data for as many epochs. "
          f"Gains in points over local-only. Wall time {wall:.0f} s ({cpu:.0f} s of CPU).", "", *md]
    out.update(wall_seconds=round(wall, 1), cpu_seconds=round(cpu, 1))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "many_models.md").write_text("\n".join(md) + "\n")
    Path(args.out, "many_models.json").write_text(json.dumps(out, indent=1) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
