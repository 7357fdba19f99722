"""The robustness matrix: rules x attacks x attacker fraction on a simulated network, final
honest-node mean accuracy in each cell (attackers are left out of every accuracy).

Weights exchange: every weights rule under every weights attack; distill exchange: every logits
rule under the distill attacks; synthetic exchange (received samples pooled, no rule) under the
synthetic attacks; each once plainly and once with peer reputation (ban below --reputation).
Fraction 0 is the clean baseline, one run per rule. In rule templates `f` is the number of
attackers (at least 1), `m` is n - f (n = the inputs a node aggregates, itself included: all the
nodes on the full topology), and `clippedgossip:auto` takes the tau chosen by a sweep on the clean
network: the smallest tau within --tau-slack of the best clean accuracy, since an attacker moves a
node by at most tau/n per round. A rule that cannot run with n inputs (Bulyan needs n >= 4f+3) is
skipped, and the reason printed.

Writes robustness.json and robustness.md to --out and a heatmap to --plot."""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread per run; runs go in parallel instead

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

WEIGHT_RULES = "fedavg,median,trimmed:0.2,krum:f,multikrum:f:m,bulyan:f,clippedgossip:auto"
LOGIT_RULES = "logit-probmean,logit-median"
WEIGHT_ATTACKS = "gaussian,signflip,labelflip,alie,ipm"
LOGIT_ATTACKS = "logit,gaussian,signflip,labelflip"
SYNTHETIC_ATTACKS = "synthetic,gaussian,labelflip"
TAU_GRID = "0.3,1,3,10,30"
LABELS = {"fedavg": "mean (fedavg)", "pool": "pooled samples (no rule)"}


def code_state() -> dict:
    """Which library code ran: the commit, the simulator's source files changed since, and a digest
    of those files (the modules a simulation imports, read from disk now)."""
    import hashlib
    import subprocess

    import manymodels.node.sim.simulator  # noqa: F401  (to list what it imports)

    root = Path(__file__).resolve().parent.parent
    files = sorted({Path(m.__file__).resolve() for name, m in list(sys.modules.items())
                    if name.startswith("manymodels") and getattr(m, "__file__", None)})
    files = [f for f in files if f.is_relative_to(root)]
    git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True).stdout.strip()  # noqa: E731
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    changed = git("status", "--porcelain", "--", *(str(f.relative_to(root)) for f in files))
    return {"commit": git("rev-parse", "--short", "HEAD"), "changed": changed.splitlines(),
            "sources_sha256": digest.hexdigest()[:16]}


def attackers(fraction: float, nodes: int) -> int:
    """How many attackers the simulator picks for a fraction (SimulationConfig: max(1, round(f * n)))."""
    return 0 if fraction == 0 else max(1, round(fraction * nodes))


def concrete(template: str, f: int, n: int, tau: float | None) -> str:
    name, *params = template.split(":")
    subst = {"f": str(f), "m": str(n - f), "auto": "" if tau is None else f"{tau:g}"}
    return ":".join([name, *(subst.get(p, p) for p in params)])


def simulate(job: dict) -> dict:
    """One simulation (in a worker process): its honest summary and who banned whom."""
    from manymodels.node.sim.simulator import SimulationConfig, run_simulation
    from manymodels.node.spec import SpecError

    started = time.perf_counter()
    try:
        report = run_simulation(SimulationConfig(**job["config"]))
    except SpecError as exc:
        return {**job, "skipped": str(exc)}
    bad = {a["id"] for a in report["attackers"]}
    honest = [n for n in report["nodes"] if n["attack"] is None]
    s = report["summary"]
    return {**job, "mean_accuracy": s["mean_accuracy"], "min_accuracy": s["min_accuracy"],
            "local_only": s["mean_local_only_accuracy"], "pooled": s["pooled_accuracy"],
            "attackers_banned": statistics.mean(len(set(n["banned"]) & bad) / len(bad) for n in honest) if bad else None,
            "honest_banned": statistics.mean(len(set(n["banned"]) - bad) for n in honest),
            "wall_seconds": round(time.perf_counter() - started, 2)}


def run_all(jobs: list[dict], workers: int, label: str) -> list[dict]:
    out, started = [], time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        for i, r in enumerate(pool.imap_unordered(simulate, jobs), 1):
            cell = f"{r['exchange']:<7} {r['rule']:<22} rep={r['reputation']:<4g} {r['attack'] or 'clean':<10} " \
                   f"{r['fraction']:>4.0%} seed={r['seed']}"
            result = f"SKIPPED {r['skipped']}" if "skipped" in r else \
                f"acc {r['mean_accuracy']:.3f} (min {r['min_accuracy']:.3f}) {r['wall_seconds']:6.1f} s"
            print(f"[{label} {i:>3}/{len(jobs)} {time.perf_counter() - started:6.0f} s] {cell}  {result}", flush=True)
            out.append(r)
    return out


def job(args, exchange: str, template: str, rule: str, attack: str | None, fraction: float, reputation: float,
        seed: int) -> dict:
    config = {"nodes": args.nodes, "rounds": args.rounds, "dataset": args.dataset, "partition": args.partition,
              "model": args.model, "max_train": args.max_train, "seed": seed, "exchange": exchange,
              "reputation": reputation, "attacks": (f"{attack}:{fraction}",) if attack else ()}
    if args.max_test is not None:
        config["max_test"] = args.max_test
    if exchange != "synthetic":  # received samples are pooled and trained on: no rule
        config["rule" if exchange == "weights" else "logit_rule"] = rule
    return {"exchange": exchange, "template": template, "rule": rule, "attack": attack, "fraction": fraction,
            "reputation": reputation, "seed": seed, "config": config}


def choose_tau(args, seeds: list[int]) -> tuple[float, list[dict]]:
    grid = [float(t) for t in args.tau_grid.split(",")]
    jobs = [job(args, "weights", "clippedgossip:auto", f"clippedgossip:{t:g}", None, 0.0, 0.0, s)
            for t in grid for s in seeds]
    results = run_all(jobs, args.jobs, "tau sweep")
    acc = {t: statistics.mean(r["mean_accuracy"] for r in results if r["rule"] == f"clippedgossip:{t:g}")
           for t in grid}
    best = max(acc.values())
    tau = min(t for t in grid if acc[t] >= best - args.tau_slack)
    print("tau sweep (clean): " + ", ".join(f"tau={t:g}: {a:.3f}" for t, a in acc.items())
          + f" -> tau={tau:g} (smallest within {args.tau_slack:.2f} of the best, {best:.3f})", flush=True)
    return tau, results


def build_jobs(args, tau: float | None, seeds: list[int]) -> tuple[list[dict], list[dict]]:
    from manymodels.aggregation import check_inputs

    fractions = [float(x) for x in args.fractions.split(",")]
    setups = []  # (exchange, templates, attacks, reputations)
    reps = [0.0] + ([args.reputation] if args.reputation > 0 else [])
    if args.rules:
        setups.append(("weights", args.rules.split(","), args.attacks.split(","), reps))
    if args.logit_rules:
        setups.append(("distill", args.logit_rules.split(","), args.logit_attacks.split(","),
                       reps if args.logit_reputation else [0.0]))
    if args.synthetic_attacks:
        setups.append(("synthetic", ["pool"], args.synthetic_attacks.split(","), reps))
    jobs, skipped = [], []
    for exchange, templates, attacks, reputations in setups:
        for template in templates:
            for fraction in fractions:
                f = attackers(fraction, args.nodes)
                rule = concrete(template, max(f, 1), args.nodes, tau)
                # full topology: every node aggregates n inputs
                reason = None if exchange == "synthetic" else check_inputs(rule, args.nodes)
                cells = [None] if fraction == 0 else attacks
                if reason:
                    print(f"skip {rule} at {fraction:.0%} attackers: {reason}", flush=True)
                    skipped += [{"exchange": exchange, "template": template, "rule": rule, "attack": a,
                                 "fraction": fraction, "reputation": rep, "skipped": reason}
                                for a in cells for rep in reputations]
                    continue
                jobs += [job(args, exchange, template, rule, a, fraction, rep, s)
                         for rep in reputations for a in cells for s in seeds]
    return jobs, skipped


def aggregate(results: list[dict]) -> list[dict]:
    """One cell per (exchange, template, reputation, attack, fraction): the mean over seeds."""
    cells: dict[tuple, list[dict]] = {}
    for r in results:
        cells.setdefault((r["exchange"], r["template"], r["reputation"], r["attack"], r["fraction"]), []).append(r)
    out = []
    for (exchange, template, rep, attack, fraction), rs in cells.items():
        ok = [r for r in rs if "skipped" not in r]
        cell = {"exchange": exchange, "template": template, "rule": rs[0]["rule"], "reputation": rep,
                "attack": attack, "fraction": fraction, "seeds": [r["seed"] for r in ok]}
        if not ok:
            out.append({**cell, "skipped": rs[0]["skipped"]})
            continue
        for key in ("mean_accuracy", "min_accuracy", "local_only", "pooled", "honest_banned", "attackers_banned"):
            values = [r[key] for r in ok if r[key] is not None]
            cell[key] = round(statistics.mean(values), 4) if values else None
        accs = [r["mean_accuracy"] for r in ok]
        cell["std"] = round(statistics.stdev(accs), 4) if len(accs) > 1 else None
        out.append(cell)
    return out


def tables(cells: list[dict], fractions: list[float], order: list[str], attack_order: dict[str, list[str]]
           ) -> tuple[str, list[dict]]:
    """Markdown: one table per (exchange, reputation); rows rule, columns clean + attack x fraction."""
    md, grids = [], []
    kinds = ["weights", "distill", "synthetic"]
    groups = sorted({(c["exchange"], c["reputation"]) for c in cells}, key=lambda g: (kinds.index(g[0]), g[1]))
    attacked = [f for f in fractions if f > 0]
    for exchange, rep in groups:
        mine = [c for c in cells if (c["exchange"], c["reputation"]) == (exchange, rep)]
        templates = [t for t in order if any(c["template"] == t for c in mine)]
        known = attack_order.get(exchange, [])
        attacks = sorted({c["attack"] for c in mine if c["attack"]},
                         key=lambda a: known.index(a) if a in known else len(known))
        columns = [("clean", None, 0.0)] * (0.0 in fractions) + \
            [(f"{a} {f:.0%}", a, f) for a in attacks for f in attacked]
        title = f"{exchange} exchange" + (f", reputation {rep:g}" if rep else "")
        md += [f"### {title}", "", "| rule | " + " | ".join(c[0] for c in columns) + " |",
               "|---|" + "---:|" * len(columns)]
        grid = {"title": title, "exchange": exchange, "reputation": rep, "columns": [c[0] for c in columns], "rows": [], "values": []}
        for template in templates:
            row, values = [], []
            for _, attack, fraction in columns:
                cell = next((c for c in mine if c["template"] == template and c["attack"] == attack
                             and c["fraction"] == fraction), None)
                if cell is None or "skipped" in cell:
                    row.append("n/a" if cell else "")
                    values.append(None)
                    continue
                text = f"{cell['mean_accuracy']:.3f}"
                if cell.get("std") is not None:
                    text += f" ± {cell['std']:.3f}"
                row.append(text)
                values.append(cell["mean_accuracy"])
            label = LABELS.get(template, template)
            if template.endswith(":auto"):
                label = next(c["rule"] for c in mine if c["template"] == template)
            md.append(f"| {label} | " + " | ".join(row) + " |")
            grid["rows"].append(label)
            grid["values"].append(values)
        md.append("")
        grids.append(grid)
    return "\n".join(md), grids


def plot(grids: list[dict], path: Path, subtitle: str) -> None:
    """One heatmap per table, stacked: cells coloured and labelled by accuracy, n/a in grey."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    width = max(len(g["columns"]) for g in grids)
    heights = [len(g["rows"]) + 0.5 for g in grids]
    fig, axes = plt.subplots(len(grids), 1, squeeze=False, layout="constrained",
                             figsize=(0.8 * width + 3.5, 0.42 * sum(heights) + 1.3 * len(grids)),
                             gridspec_kw={"height_ratios": heights})
    cmap = matplotlib.colormaps["RdYlGn"].copy()
    cmap.set_bad("#dddddd")
    for ax, g in zip(axes[:, 0], grids):
        values = np.array([[np.nan if v is None else v for v in row] for row in g["values"]], dtype=float)
        # pad narrower tables so every cell has the same width
        padded = np.full((len(g["rows"]), width), np.nan)
        padded[:, :values.shape[1]] = values
        image = ax.imshow(padded, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(g["columns"])), g["columns"], rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(g["rows"])), g["rows"], fontsize=8)
        ax.set_title(g["title"], fontsize=9, loc="left")
        for (r, c), v in np.ndenumerate(values):
            ax.text(c, r, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7)
        for spine in ax.spines.values():
            spine.set_visible(False)
        if values.shape[1] < width:  # hide the padding
            ax.add_patch(plt.Rectangle((values.shape[1] - 0.5, -0.5), width - values.shape[1], len(g["rows"]),
                                       color="white", zorder=3))
    fig.colorbar(image, ax=axes[:, 0], shrink=0.4, label="final honest mean accuracy")
    fig.suptitle(f"Robustness matrix: {subtitle}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--dataset", default="digits", help="digits, fashion-mnist (with --max-train), mnist1d")
    parser.add_argument("--max-train", type=int, default=None, help="subsample the training set, e.g. 6000")
    parser.add_argument("--max-test", type=int, default=None, help="subsample the test set, e.g. 2000")
    parser.add_argument("--partition", default="dirichlet:0.5")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--fractions", default="0,0.1,0.2", help="attacker fractions; 0 is the clean baseline")
    parser.add_argument("--rules", default=WEIGHT_RULES, help="weights rule templates ('' for none)")
    parser.add_argument("--attacks", default=WEIGHT_ATTACKS, help="attacks against the weights exchange")
    parser.add_argument("--logit-rules", default=LOGIT_RULES, help="logits rules for the distill exchange ('' for none)")
    parser.add_argument("--logit-attacks", default=LOGIT_ATTACKS, help="attacks against the distill exchange")
    parser.add_argument("--synthetic-attacks", default=SYNTHETIC_ATTACKS,
                        help="attacks against the synthetic exchange ('' for none)")
    parser.add_argument("--reputation", type=float, default=0.7, help="threshold of the reputation runs (0: none)")
    parser.add_argument("--logit-reputation", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the distill exchange with reputation")
    parser.add_argument("--tau-grid", default=TAU_GRID, help="ClippedGossip taus to sweep for clippedgossip:auto")
    parser.add_argument("--tau-slack", type=float, default=0.01)
    parser.add_argument("--seeds", type=int, default=1, help="repeat with seeds 0..N-1; cells are the mean")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="simulations in parallel")
    parser.add_argument("--out", default="bench/out/robustness")
    parser.add_argument("--plot", default=None, help="the heatmap (default: OUT/robustness.png)")
    parser.add_argument("--render", metavar="JSON", help="only redo the table and plot from a run's robustness.json")
    args = parser.parse_args()

    if args.render:
        data = json.loads(Path(args.render).read_text())
        render(data, Path(args.out), Path(args.plot) if args.plot else Path(args.out) / "robustness.png")
        return

    started = time.perf_counter()
    seeds = list(range(args.seeds))
    fractions = [float(x) for x in args.fractions.split(",")]
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "plot", "render")}
    code = code_state()
    print("settings: " + " ".join(f"{k}={v}" for k, v in settings.items()), flush=True)
    print(f"code: {code}", flush=True)
    print("attackers per fraction: " + ", ".join(f"{f:.0%} -> {attackers(f, args.nodes)}" for f in fractions),
          flush=True)

    tau, sweep = (None, [])
    if any(t.endswith(":auto") for t in args.rules.split(",") if t):
        tau, sweep = choose_tau(args, seeds)
    jobs, skipped = build_jobs(args, tau, seeds)
    # the longest first (Bulyan, the distill exchange) so the two workers finish together
    jobs.sort(key=lambda j: (not j["rule"].startswith(("bulyan", "logit")), j["exchange"]))
    print(f"{len(jobs)} simulations on {args.jobs} workers", flush=True)
    results = run_all(jobs, args.jobs, "grid")
    if code_state()["sources_sha256"] != code["sources_sha256"]:
        print("warning: the library sources changed during the run; the cells may mix versions", flush=True)
        code["changed_during_run"] = True
    data = {"settings": settings, "code": code, "tau": tau, "tau_sweep": sweep,
            "wall_seconds": round(time.perf_counter() - started, 1), "simulations": len(jobs) + len(sweep),
            "load_average_5min": round(os.getloadavg()[1], 2), "cpus": os.cpu_count(),
            "cells": aggregate(results + skipped), "runs": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    render(data, out, Path(args.plot) if args.plot else out / "robustness.png")


def render(data: dict, out: Path, plot_path: Path) -> None:
    """robustness.md and the plot from a run's JSON."""
    a = data["settings"]
    fractions = [float(x) for x in a["fractions"].split(",")]
    order = [t for t in (*a["rules"].split(","), *a["logit_rules"].split(","), "pool") if t]
    attack_order = {"weights": a["attacks"].split(","), "distill": a["logit_attacks"].split(","),
                    "synthetic": a.get("synthetic_attacks", "").split(",")}
    cells = data["cells"]
    markdown, grids = tables(cells, fractions, order, attack_order)
    dataset = a["dataset"] + "".join(f" ({k.replace('_', ' ')} {a[k]})" for k in ("max_train", "max_test") if a.get(k))
    subtitle = f"{a['nodes']} nodes, {dataset}, {a['partition']}, {a['rounds']} rounds, {a['model']}, " \
               f"seeds {a['seeds']}"
    nodes = a["nodes"]
    counts = ", ".join(f"{f:.0%}: {attackers(f, nodes)}" for f in fractions if f)
    notes = [f"Final honest-node mean accuracy; {subtitle}. `f` = attackers ({counts}; clean: 1), "
             f"`m` = n - f with n = {nodes} inputs."]
    if data["tau"] is not None:
        notes.append(f"ClippedGossip tau = {data['tau']:g}, the smallest of {a['tau_grid']} within {a['tau_slack']} "
                     f"of the best clean accuracy.")
    clean = [c for c in cells if c["fraction"] == 0 and "skipped" not in c]
    if clean:
        notes.append(f"Reference (clean): each node alone {clean[0]['local_only']:.3f}, one model on all the data "
                     f"{clean[0]['pooled']:.3f}.")
    code = data["code"]
    notes.append(f"Code: commit {code['commit']}" + (f" plus uncommitted changes to {len(code['changed'])} "
                 f"of the simulator's source files" if code["changed"] else "")
                 + f", sources sha256 {code['sources_sha256']}"
                 + (" (they changed during the run)" if code.get("changed_during_run") else "") + ".")
    notes.append(f"Wall time {data['wall_seconds']:.0f} s for {data['simulations']} simulations on {a['jobs']} "
                 f"workers ({data['cpus']} cores, 5-minute load average {data['load_average_5min']:.1f} at the end).")
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.md").write_text("\n".join(notes) + "\n\n" + markdown)
    plot(grids, plot_path, subtitle)
    print("\n".join(notes) + "\n\n" + markdown)
    print(f"wrote {out / 'robustness.json'}, {out / 'robustness.md'}, {plot_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
