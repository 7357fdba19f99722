"""`manymodels study ...`: the research instruments of studies/, one command each (value, homogeneity,
foundation)."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .backend_options import AddressOption, StudyBackendOption
from .config_file import ConfigOption
from .errors import UserError
from .learner_options import (BatchSizeOption, HiddenOption, LrOption, MomentumOption, OptimizerOption,
                              ShuffleOption, WeightDecayOption, training_options)

study = typer.Typer(no_args_is_help=True, help="Research studies over simulated networks.")
QUICK = {"nodes": 4, "rounds": 5, "model": "logreg", "permutations": 10}


def register(app: typer.Typer) -> None:
    app.add_typer(study, name="study")


@study.command()
def value(
    nodes: Annotated[int, typer.Option(help="How many peers (exact Shapley: at most 8).")] = 6,
    rounds: Annotated[int, typer.Option(help="Gossip rounds of every simulated network.")] = 10,
    dataset: Annotated[str, typer.Option(help="digits, fashion-mnist or mnist1d.")] = "digits",
    partition: Annotated[str, typer.Option(help="iid, dirichlet:ALPHA or shards:K.")] = "dirichlet:0.5",
    model: Annotated[str, typer.Option(help="logreg, mlp, mlp-wide, cnn, forest; 'mixed' or a comma list.")] = "mlp",
    exchange: Annotated[str, typer.Option(help="weights, distill, synthetic or mixed.")] = "weights",
    rule: Annotated[str, typer.Option(help="Weights rule; see `manymodels rules`.")] = "fedavg",
    logit_rule: Annotated[str, typer.Option(help="Logits rule for distill and mixed.")] = "logit-probmean",
    topology: Annotated[str, typer.Option(help="full, ring or random:K (a smaller network keeps its links).")] = "full",
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 1,
    hidden: HiddenOption = None, optimizer: OptimizerOption = None, lr: LrOption = None,
    momentum: MomentumOption = None, weight_decay: WeightDecayOption = None, batch_size: BatchSizeOption = None,
    shuffle: ShuffleOption = None,
    seed: Annotated[int, typer.Option(help="Same seed, same numbers.")] = 0,
    attack: Annotated[Optional[list[str]], typer.Option(
        help="NAME:FRACTION of attacking peers, repeatable; see `manymodels attacks`.")] = None,
    plant: Annotated[Optional[list[str]], typer.Option(
        help="A planted peer, repeatable: shuffled:J (labels shuffled), duplicate:J:K (K holds J's data), "
             "tiny:J[:COUNT] (J keeps COUNT examples, 5 by default).")] = None,
    methods: Annotated[Optional[str], typer.Option(
        help="Comma list of loo (leave one peer out), mc (Monte-Carlo Shapley), gtg (one run, from the "
             "exchange log), exact (every coalition).", show_default="all; exact up to 8 peers")] = None,
    permutations: Annotated[int, typer.Option(help="Monte-Carlo's cap on sampled orders of the peers.")] = 30,
    max_seconds: Annotated[Optional[float], typer.Option(help="Monte-Carlo's cap on wall time.")] = None,
    round_permutations: Annotated[int, typer.Option(
        help="The one-run estimate's orders of the peers per round and model, in antithetic pairs "
             "(fewer: cheaper, rougher).")] = 8,
    tolerance: Annotated[float, typer.Option(
        help="Truncation: an order stops once the coalition is this close to the whole network's accuracy.")] = 0.005,
    backend: Annotated[str, typer.Option(
        help="Where the networks run: local (one after another, here) or ray (those known in advance at once, "
             "as Ray tasks over a Ray cluster; docs/STUDIES.md). Both give the same values.")] = "local",
    address: AddressOption = None,
    quick: Annotated[bool, typer.Option(
        help="A small study in seconds: 4 peers, 5 rounds, logreg, 10 permutations (over those options).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    out: Annotated[Optional[Path], typer.Option(
        help="Write value.json, value-matrix.png and value-totals.png (matplotlib) into this folder.")] = None,
    config: ConfigOption = None,
) -> None:
    """What each peer's data is worth to each model: the peer x model value matrix of a simulated network."""
    from manymodels.node.sim.spec import SimulationConfig
    from manymodels.node.spec import SpecError
    from manymodels.studies.value_study import MAX_EXACT, METHODS, ValueSettings, value_study

    small = QUICK if quick else {"nodes": nodes, "rounds": rounds, "model": model, "permutations": permutations}
    try:
        config = SimulationConfig(
            nodes=small["nodes"], rounds=small["rounds"], dataset=dataset, partition=partition, model=small["model"],
            exchange=exchange, rule=rule, logit_rule=logit_rule, topology=topology, local_epochs=local_epochs,
            seed=seed, attacks=tuple(attack or ()), plants=tuple(plant or ()), backend=backend, address=address,
            **training_options(hidden, optimizer, lr, momentum, weight_decay, batch_size, shuffle))
        chosen = [m for m in METHODS if m != "exact" or config.nodes <= MAX_EXACT] if methods is None else \
            [m.strip() for m in methods.split(",") if m.strip()]
        settings = ValueSettings(methods=tuple(chosen),
                                 permutations=small["permutations"], max_seconds=max_seconds, tolerance=tolerance,
                                 round_permutations=round_permutations, seed=seed)
        err = Console(stderr=True)
        if not json_out and err.is_terminal:  # a note for people; a pipe or log gets the result only
            err.print("simulating the networks ...", highlight=False)
        result = value_study(config, settings)
    except SpecError as exc:
        raise UserError(str(exc)) from None
    if out is not None:
        _write(out, result)
    if json_out:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        _show(result)
        if out is not None:
            Console().print(f"written to {out}/: value.json, value-matrix.png, value-totals.png")


def _write(folder: Path, result: dict) -> None:
    """value.json and the two figures (drawn first: without matplotlib nothing is written)."""
    matrix, totals = plot_matrix(result), plot_totals(result)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "value.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / "value-matrix.png").write_bytes(matrix)
    (folder / "value-totals.png").write_bytes(totals)


def _show(result: dict) -> None:
    console, methods = Console(), result["methods"]
    table = Table(title="each peer's total value to the other models")
    for column in ("peer", "data", "planted or attack", *methods):
        table.add_column(column, justify="left" if column in ("peer", "planted or attack") else "right")
    for p in result["peers"]:
        role = " ".join(filter(None, (p["plant"], p["attack"] and f"[red]{p['attack']}[/]")))
        table.add_row(f"{p['index']} …{p['id'][-6:]}", str(p["num_examples"]), role,
                      *(f"{m['totals'][p['index']]:+.3f}" for m in methods.values()))
    console.print(table)
    costs = Table(title="cost")
    for column in ("method", "simulations", "seconds", "spearman with exact", "notes"):
        costs.add_column(column, justify="left" if column in ("method", "notes") else "right")
    agreement = result.get("agreement_with_exact", {})
    for name, m in methods.items():
        rho = agreement.get(name, {}).get("spearman")
        notes = {k: v for k, v in {**m["cost"], **m.get("convergence", {})}.items()
                 if k not in ("simulations", "seconds")}
        costs.add_row(name, str(m["cost"]["simulations"]), f"{m['cost']['seconds']:.1f}",
                      "" if rho is None else f"{rho:.2f}", ", ".join(f"{k} {v}" for k, v in notes.items()))
    console.print(costs)


def _figure(width: float, height: float):
    try:
        import matplotlib
    except ImportError:
        raise UserError("--out draws with matplotlib: pip install 'manymodels[report]'") from None
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def plot_matrix(result: dict) -> bytes:
    """One heatmap per method: V[j][i], peers down, models across; each on its own colour scale
    centred at 0 (gtg sums rounds: its scale is not the others')."""
    import numpy as np

    methods = result["methods"]
    fig = _figure(4.5 * len(methods), 4)
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    for ax, (name, m) in zip(axes, methods.items()):
        v = np.array(m["values"], dtype=float)
        scale = float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else 1.0
        image = ax.imshow(v, cmap="RdBu", vmin=-scale, vmax=scale)
        ax.set(title=name, xlabel="model i", ylabel="peer j", xticks=range(len(v)), yticks=range(len(v)))
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle("value of peer j's data to model i")
    return _png(fig)


def plot_totals(result: dict) -> bytes:
    """Each peer's total value, one bar per method; planted peers and attackers named under the bars."""
    peers, methods = result["peers"], result["methods"]
    fig = _figure(max(6, 1.2 * len(peers)), 4)
    ax = fig.subplots()
    width = 0.8 / len(methods)
    for k, (name, m) in enumerate(methods.items()):
        ax.bar([p["index"] + (k - (len(methods) - 1) / 2) * width for p in peers], m["totals"], width, label=name)
    ax.axhline(0, color="black", linewidth=1)
    ax.set_xticks([p["index"] for p in peers],
                  [f"{p['index']}\n{p['plant'] or p['attack'] or ''}" for p in peers], fontsize="small")
    ax.set(xlabel="peer", ylabel="total value to the other models", title="each peer's total value")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small")
    return _png(fig)


FOUNDATION_QUICK = {"nodes": 4, "rounds": 5, "categories": 4, "per_category": 300}


@study.command()
def foundation(
    encoder: Annotated[str, typer.Option(
        help="The frozen foundation: minilm (all-MiniLM-L6-v2, the foundation extra) or tiny (a fixed random "
             "projection of bag-of-words features, for tests).")] = "minilm",
    corpus: Annotated[str, typer.Option(
        help="fortunes (the Debian package's quotes) or tiny (generated texts, for tests).")] = "fortunes",
    categories: Annotated[int, typer.Option(help="Classify among the corpus's K largest categories.")] = 8,
    per_category: Annotated[Optional[int], typer.Option(help="Keep only the first N texts of each category.",
                                                        show_default="all")] = None,
    nodes: Annotated[int, typer.Option(help="How many downstream models (nodes).")] = 8,
    rounds: Annotated[int, typer.Option(help="Gossip rounds (and local epochs alone).")] = 20,
    exchange: Annotated[str, typer.Option(help="How heads travel: weights, distill, or both as a comma list.")
                        ] = "weights,distill",
    partition: Annotated[str, typer.Option(help="iid, dirichlet:ALPHA or shards:K (topic skew).")] = "dirichlet:0.5",
    model: Annotated[str, typer.Option(help="Each node's head: logreg, mlp or mlp-wide.")] = "mlp",
    topology: Annotated[str, typer.Option(help="full, ring or random:K.")] = "full",
    probe_size: Annotated[int, typer.Option(
        help="Training texts set aside as the public probe set (distillation; the foundation-only predictor "
             "is fitted on it).")] = 200,
    hidden: HiddenOption = None, optimizer: OptimizerOption = None, lr: LrOption = None,
    batch_size: BatchSizeOption = None,
    seed: Annotated[int, typer.Option(help="Same seed, same numbers.")] = 0,
    cache: Annotated[Optional[Path], typer.Option(
        help="Where encoded texts are kept (by the encoder's and the texts' digests).",
        show_default="~/.cache/manymodels/embeddings")] = None,
    backend: StudyBackendOption = "local", address: AddressOption = None,
    quick: Annotated[bool, typer.Option(
        help="A small study: 4 nodes, 5 rounds, 4 categories of 300 texts (over those options).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    out: Annotated[Optional[Path], typer.Option(
        help="Write foundation.json and foundation.png into this folder, and each grid point's result as it "
             "comes (foundation-points.json: a rerun resumes from it).")] = None,
    config: ConfigOption = None,
) -> None:
    """Which behaviours of many downstream models come from the frozen foundation they share: errors all
    of them make vs each one's own, with and without the foundation."""
    from manymodels.node.sim.spec import SimulationConfig
    from manymodels.node.spec import SpecError
    from manymodels.studies.foundation_study import FoundationSettings

    small = FOUNDATION_QUICK if quick else {"nodes": nodes, "rounds": rounds, "categories": categories,
                                            "per_category": per_category}
    try:
        network = SimulationConfig(
            nodes=small["nodes"], rounds=small["rounds"], partition=partition, model=model, topology=topology,
            probe_size=probe_size, seed=seed, backend=backend, address=address,
            **training_options(hidden, optimizer, lr, None, None, batch_size, None))
        settings = FoundationSettings(
            encoder=encoder, corpus=corpus, categories=small["categories"], per_category=small["per_category"],
            exchanges=tuple(e.strip() for e in exchange.split(",") if e.strip()),
            **({"cache": cache} if cache else {}))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        result = _foundation_with_progress(network, settings, out and out / "foundation-points.json", json_out)
    except SpecError as exc:
        raise UserError(str(exc)) from None
    if out is not None:
        figure = plot_foundation(result)
        (out / "foundation.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "foundation.png").write_bytes(figure)
    if json_out:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        _show_foundation(result)
        if out is not None:
            Console().print(f"written to {out}/: foundation.json, foundation.png, foundation-points.json")


def _foundation_with_progress(network, settings, results: Path | None, json_out: bool) -> dict:
    """The study with a progress bar on stderr, advancing per grid point (on a terminal only)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from manymodels.studies.foundation_study import foundation_study

    err = Console(stderr=True)
    quiet = json_out or not err.is_terminal
    if not quiet:
        err.print(f"encoding the texts with {settings.encoder} (once: then from the cache) ...", highlight=False)
    with Progress(TextColumn("[bold]foundation study"), BarColumn(), MofNCompleteColumn(), TextColumn("points"),
                  TextColumn("{task.fields[point]}"), TimeElapsedColumn(), console=err, transient=True,
                  disable=quiet) as progress:
        task = progress.add_task("points", total=None, point="")

        def on_point(done: int, total: int, point: dict) -> None:
            progress.update(task, completed=done, total=total, point=f"{point['features']} {point['training']}")
        return foundation_study(network, settings, results, on_point)


def _show_foundation(result: dict) -> None:
    console = Console()
    table = Table(title=f"{len(result['results']['foundation'][result['trainings'][0]]['accuracy']['models'])} "
                        f"downstream models, {result['corpus']['name']} ({len(result['corpus']['categories'])} "
                        f"categories, {result['corpus']['test']} held out)")
    columns = ("features", "training", "accuracy", "probe-only", "errors", "inherited", "if independent",
               "idiosyncratic", "agree (models)", "agree (probe-only)", "variance")
    for column in columns:
        table.add_column(column, justify="left" if column in ("features", "training") else "right")
    for features, by_training in result["results"].items():
        for training, m in by_training.items():
            e, a = m["errors"], m["agreement"]
            table.add_row(features, training, f"{m['accuracy']['mean']:.3f}", f"{m['accuracy']['reference']:.3f}",
                          f"{e['mean_error']:.3f}", f"{e['inherited']:.3f}", f"{e['inherited_if_independent']:.3f}",
                          f"{e['idiosyncratic']:.3f}",
                          f"{a['between_models']:.3f}", f"{a['with_reference']:.3f}", f"{m['prediction_variance']:.4f}")
    console.print(table)
    removed = ", ".join(f"{t} {'n/a' if v is None else f'{v:+.0%}'}" for t, v in result["variance_removed"].items())
    console.print(f"prediction variance the shared encoder removes: {removed}", highlight=False)
    sha = result["encoder"].get("model_safetensors_sha256")
    console.print(f"encoder {result['encoder']['name']}" + (f", model.safetensors SHA-256 {sha}" if sha else "") +
                  f"; {result['wall_seconds']:.0f} s", highlight=False)


def plot_foundation(result: dict) -> bytes:
    """Left: each setting's mean error split into inherited (every model wrong) and idiosyncratic, with
    and without the foundation; right: agreement between the models and with the probe-only predictor."""
    trainings, results = result["trainings"], result["results"]
    fig = _figure(11, 4)
    left, right = fig.subplots(1, 2)
    width, colours = 0.38, {"foundation": ("#1f4e79", "#8fb3d9"), "scratch": ("#7f3b08", "#f1a340")}
    for k, features in enumerate(results):
        xs = [t + (k - 0.5) * width for t in range(len(trainings))]
        inherited = [results[features][t]["errors"]["inherited"] for t in trainings]
        own = [results[features][t]["errors"]["idiosyncratic"] for t in trainings]
        left.bar(xs, inherited, width, color=colours[features][0], label=f"{features}: inherited")
        left.bar(xs, own, width, bottom=inherited, color=colours[features][1], label=f"{features}: idiosyncratic")
        chance = [results[features][t]["errors"]["inherited_if_independent"] for t in trainings]
        left.hlines(chance, [x - width / 2 for x in xs], [x + width / 2 for x in xs], colors="black",
                    linestyles="dashed", label="inherited if errors were independent" if k else None)
        for offset, key, hatch in ((-width / 4, "between_models", ""), (width / 4, "with_reference", "//")):
            right.bar([x + offset for x in xs], [results[features][t]["agreement"][key] for t in trainings],
                      width / 2, color=colours[features][0 if key == "between_models" else 1], hatch=hatch,
                      label=f"{features}: {'between models' if key == 'between_models' else 'with probe-only'}")
    for ax, ylabel in ((left, "share of held-out inputs (mean error)"), (right, "agreement")):
        ax.set_xticks(range(len(trainings)), trainings)
        ax.set(ylabel=ylabel, ylim=(0, 1.4), yticks=[0, 0.2, 0.4, 0.6, 0.8, 1])
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="small", ncol=2, loc="upper center")
    left.set_title("errors: all models wrong (inherited) vs some (idiosyncratic)")
    right.set_title("agreement of the downstream models")
    fig.suptitle(f"{result['encoder']['name']} foundation vs hashed bag-of-words from scratch, "
                 f"{result['corpus']['name']}")
    return _png(fig)


HOMOGENEITY_QUICK = {"widths": "4,16,64", "seeds": 2, "resamples": 2, "nodes": 3, "rounds": 3, "local_epochs": 5,
                     "max_train": 300}


@study.command()
def homogeneity(
    widths: Annotated[str, typer.Option(help="Hidden-layer widths of the one-hidden-layer mlp, comma-separated "
                                        "(a log grid across the interpolation threshold).")] = "4,16,64,256,1024",
    seeds: Annotated[int, typer.Option(help="Initialisation seeds per width.")] = 2,
    resamples: Annotated[int, typer.Option(help="Draws of the training data per width.")] = 2,
    exchanges: Annotated[str, typer.Option(help="Network exchange kinds, comma-separated: weights, distill, "
                                           "synthetic ('': alone and pooled only).")] = "weights,distill,synthetic",
    loss: Annotated[str, typer.Option(help="The decomposition's loss: ce (Yang et al. 2020) or mse on one-hot "
                                      "targets (the models train with cross-entropy either way).")] = "ce",
    label_noise: Annotated[float, typer.Option(help="Fraction of training labels set to another class.")] = 0.2,
    nodes: Annotated[int, typer.Option(help="Peers per network.")] = 4,
    rounds: Annotated[int, typer.Option(help="Gossip rounds (alone and pooled train as many epochs).")] = 6,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 10,
    dataset: Annotated[str, typer.Option(help="digits, fashion-mnist or mnist1d.")] = "digits",
    max_train: Annotated[Optional[int], typer.Option(
        help="Training examples drawn per resample (the probe set comes out of them).")] = 500,
    partition: Annotated[str, typer.Option(help="iid, dirichlet:ALPHA or shards:K.")] = "iid",
    probe_size: Annotated[int, typer.Option(help="Public probe inputs for distillation.")] = 100,
    rule: Annotated[str, typer.Option(help="Weights rule; see `manymodels rules`.")] = "fedavg",
    logit_rule: Annotated[str, typer.Option(help="Logits rule for distill.")] = "logit-probmean",
    optimizer: OptimizerOption = None, lr: LrOption = None, momentum: MomentumOption = None,
    weight_decay: WeightDecayOption = None, batch_size: BatchSizeOption = None,
    seed: Annotated[int, typer.Option(help="The first initialisation seed and the first data seed.")] = 0,
    backend: StudyBackendOption = "local", address: AddressOption = None,
    quick: Annotated[bool, typer.Option(
        help="A small study in under a minute: widths 4,16,64, 2 seeds, 2 resamples, 3 peers, 3 rounds of "
             "5 epochs, 300 examples (over those options).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    out: Annotated[Optional[Path], typer.Option(
        help="Write homogeneity.json and its two figures (matplotlib) into this folder, and keep the grid's "
             "results in homogeneity-runs.json there: an interrupted study resumes from it.")] = None,
    config: ConfigOption = None,
) -> None:
    """As models grow, do they behave more alike? Risk, bias², variance (sampling, initialisation,
    interaction) and disagreement against width: alone, in the network per exchange kind, and pooled."""
    from manymodels.node.sim.spec import SimulationConfig
    from manymodels.node.spec import SpecError
    from manymodels.studies.homogeneity_study import HomogeneitySettings, homogeneity_study

    given = {"widths": widths, "seeds": seeds, "resamples": resamples, "nodes": nodes, "rounds": rounds,
             "local_epochs": local_epochs, "max_train": max_train}
    small = {**given, **HOMOGENEITY_QUICK} if quick else given
    try:
        config = SimulationConfig(
            nodes=small["nodes"], rounds=small["rounds"], local_epochs=small["local_epochs"], dataset=dataset,
            max_train=small["max_train"], partition=partition, probe_size=probe_size, label_noise=label_noise,
            rule=rule, logit_rule=logit_rule, seed=seed, backend=backend, address=address,
            **training_options(None, optimizer, lr, momentum, weight_decay, batch_size, None))
        settings = HomogeneitySettings(widths=_integers(small["widths"], "--widths"), seeds=small["seeds"],
                                       resamples=small["resamples"], loss=loss,
                                       exchanges=tuple(x.strip() for x in exchanges.split(",") if x.strip()))
        if out is not None:
            _figure(1, 1)  # without matplotlib, say so before the study runs
            out.mkdir(parents=True, exist_ok=True)
        result = _run_with_progress(lambda on_point: homogeneity_study(
            config, settings, out / "homogeneity-runs.json" if out else None, on_point), json_out)
    except SpecError as exc:
        raise UserError(str(exc)) from None
    if out is not None:
        (out / "homogeneity-curves.png").write_bytes(plot_homogeneity(result))
        (out / "homogeneity-disagreement.png").write_bytes(plot_disagreement(result))
        (out / "homogeneity.json").write_text(json.dumps(result, indent=2) + "\n")
    if json_out:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        _show_homogeneity(result)
        if out is not None:
            Console().print(f"written to {out}/: homogeneity.json, homogeneity-curves.png, "
                            "homogeneity-disagreement.png (the grid's runs: homogeneity-runs.json)")


def _integers(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{what} takes whole numbers separated by commas, got {text!r}") from None


def _run_with_progress(run, json_out: bool):
    """run(on_point) under a bar that advances per grid point (on a terminal only, as simulate's)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    err = Console(stderr=True)
    with Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("grid points"),
                  TextColumn("{task.fields[point]}"), TimeElapsedColumn(), console=err, transient=True,
                  disable=json_out or not err.is_terminal) as progress:
        task = progress.add_task("points", total=None, point="")
        return run(lambda k, n, point: progress.update(
            task, completed=k, total=n, point=", ".join(f"{key} {value}" for key, value in point.items())))


def _show_homogeneity(result: dict) -> None:
    console, widths = Console(), result["widths"]
    terms = Table(title=f"the decomposition ({result['settings']['loss']}) on held-out data, by setting and width")
    columns = {"risk": "risk", "bias2": "bias²", "variance": "variance", "sampling": "sampling",
               "initialisation": "init", "interaction": "interaction", "disagreement": "disagree",
               "train_error": "train err"}
    for column in ("setting", "width", *columns.values()):
        terms.add_column(column, justify="left" if column == "setting" else "right")
    for name, curve in result["curves"].items():
        for k, width in enumerate(widths):
            terms.add_row(name if k == 0 else "", str(width), *(f"{curve[key][k]:.3f}" for key in columns),
                          end_section=k == len(widths) - 1)
    console.print(terms)
    alike = Table(title="more alike than alone (1 - networked/alone): disagreement in a run; variance")
    for column in ("width", *result["network"]):
        alike.add_column(column, justify="right")
    for k, width in enumerate(widths):
        alike.add_row(str(width), *(f"{_share(n['within_run_disagreement'][k])}; {_share(n['variance'][k])}"
                                    for n in result["network"].values()))
    console.print(alike)
    for name, shape in result["shape"].items():
        peak = "inside the grid" if shape["variance_peaks_inside"] else "at an end of the grid"
        console.print(f"{name}: fits its training labels from width {shape['interpolation_width'] or '(none)'}; "
                      f"variance peaks at width {shape['variance_peak_width']}, {peak}", highlight=False)


def _share(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def plot_homogeneity(result: dict) -> bytes:
    """One panel per training setting: risk, bias² and variance (and its three parts) against width,
    with the width from which the models fit their training labels marked."""
    curves, widths = result["curves"], result["widths"]
    fig = _figure(3.6 * len(curves), 4)
    axes = fig.subplots(1, len(curves), sharey=True, squeeze=False)[0]
    styles = {"risk": ("black", "-"), "bias2": ("tab:blue", "-"), "variance": ("tab:red", "-"),
              "sampling": ("tab:red", ":"), "initialisation": ("tab:orange", ":"), "interaction": ("tab:gray", ":")}
    for ax, (name, c) in zip(axes, curves.items()):
        for key, (colour, line) in styles.items():
            ax.plot(widths, c[key], line, color=colour, marker="o" if line == "-" else None, markersize=3,
                    label="bias²" if key == "bias2" else key)
        fits = result["shape"][name]["interpolation_width"]
        if fits:
            ax.axvline(fits, color="green", alpha=0.5, linestyle="--", label="fits training labels")
        ax.set(xscale="log", title=name, xlabel="hidden width")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{result['settings']['loss']} on the test set")
    legend = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=7, fontsize="small")
    fig.suptitle("bias-variance decomposition against width")
    return _png(fig)


def plot_disagreement(result: dict) -> bytes:
    """Per width, how often a model of one setting and a model of another predict different classes
    (the diagonal: two models of the same setting)."""
    import numpy as np

    names, by_width = result["disagreement_matrix"]["settings"], result["disagreement_matrix"]["by_width"]
    columns = min(5, len(by_width))
    rows = -(-len(by_width) // columns)
    fig = _figure(3.2 * columns, 3.2 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, width, matrix in zip(axes, result["widths"], by_width):
        m = np.array(matrix, dtype=float)
        image = ax.imshow(m, cmap="viridis", vmin=0, vmax=1)
        for (i, j), value in np.ndenumerate(m):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="x-small",
                    color="white" if value < 0.5 else "black")
        ax.set(title=f"width {width}", xticks=range(len(names)), yticks=range(len(names)))
        ax.set_xticklabels(names, rotation=45, fontsize="small")
        ax.set_yticklabels(names, fontsize="small")
    for ax in axes[len(by_width):]:
        ax.axis("off")
    fig.colorbar(image, ax=axes.tolist(), shrink=0.6, label="disagreement rate")
    fig.suptitle("pairwise disagreement on held-out inputs")
    return _png(fig)
