"""`manymodels`: a thin typer shell over node/ and protocol/. Heavy imports (torch, flwr)
happen inside the commands that need them, so `manymodels --help` stays fast."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from manymodels.node.runtime.logs import size

from .backend_options import AddressOption
from .config_file import ConfigOption
from .config_file import save as save_options
from .errors import UserError
from .help_defaults import shown, with_defaults
from .learner_options import (BatchSizeOption, CompressLogitsOption, CompressOption, DpClipOption, DpDeltaOption,
                              DpEpsilonOption, DpNoiseOption, HiddenOption, LrOption, MomentumOption, OptimizerOption,
                              ShuffleOption, WeightDecayOption, codec_options, privacy_options, training_options)
from . import network, study, up

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Peer-to-peer many-model learning over signed messages.")
network.register(app)  # the network commands
up.register(app)  # `up` and `down`: a local network in one command
study.register(app)  # `study value`: the research instruments
console = Console()


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        sys.stdout.write(f"manymodels {version('manymodels')}\n")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option(
        "--version", "-V", callback=_show_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    """The options before a command (the app's help is Typer(help=...)'s)."""


def _simulate_defaults() -> dict[str, str]:
    """The defaults of `simulate`'s options that are None, "not given", in its signature."""
    from manymodels.node.sim.spec import SimulationConfig

    return {"accept_licence": shown(SimulationConfig.accept_licences), "share": shown(SimulationConfig.share)}


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


@app.command(cls=with_defaults(_simulate_defaults))
def simulate(
    ctx: typer.Context,
    nodes: Annotated[int, typer.Option(help="How many nodes.")] = 8,
    rounds: Annotated[int, typer.Option(help="Gossip rounds.")] = 20,
    dataset: Annotated[str, typer.Option(help="digits, fashion-mnist, mnist1d or mnist1d:N (N samples).")] = "digits",
    partition: Annotated[str, typer.Option(help="iid, dirichlet:ALPHA or shards:K.")] = "dirichlet:0.5",
    model: Annotated[str, typer.Option(
        help="logreg, mlp, mlp-wide, cnn, forest; 'mixed' (one of each in turn) or a comma list.")] = "mlp",
    exchange: Annotated[str, typer.Option(
        help="What nodes send: weights, distill (logits on a probe set), synthetic (samples), mixed.")] = "weights",
    rule: Annotated[str, typer.Option(help="Weights rule; see `manymodels rules`.")] = "fedavg",
    logit_rule: Annotated[str, typer.Option(help="Logits rule for distill and mixed.")] = "logit-probmean",
    compress: CompressOption = None,
    compress_logits: CompressLogitsOption = None,
    dp_noise: DpNoiseOption = None,
    dp_clip: DpClipOption = None,
    dp_epsilon: DpEpsilonOption = None,
    dp_delta: DpDeltaOption = None,
    probe_size: Annotated[int, typer.Option(help="Training inputs set aside as the public probe set.")] = 200,
    probe: Annotated[Optional[Path], typer.Option(help="Your own probe set (.npy) instead.")] = None,
    temperature: Annotated[float, typer.Option(help="Distillation temperature.")] = 2.0,
    synthetic_weight: Annotated[float, typer.Option(help="Loss weight of a peer's synthetic sample.")] = 0.5,
    licence: Annotated[str, typer.Option(help="Licence on this network's synthetic data cards.")] = "CC-BY-4.0",
    accept_licence: Annotated[Optional[list[str]], typer.Option(
        help="A licence to accept on received synthetic data (repeatable).")] = None,
    topology: Annotated[str, typer.Option(help="full, ring or random:K.")] = "full",
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 1,
    hidden: HiddenOption = None,
    optimizer: OptimizerOption = None,
    lr: LrOption = None,
    momentum: MomentumOption = None,
    weight_decay: WeightDecayOption = None,
    batch_size: BatchSizeOption = None,
    shuffle: ShuffleOption = None,
    seed: Annotated[int, typer.Option(help="Same seed, same numbers.")] = 0,
    loss: Annotated[float, typer.Option(help="Probability that a message is lost.")] = 0.0,
    schedule: Annotated[str, typer.Option(
        help="sync: lock-step rounds; async: every node on its own clock, no barrier (docs/SIMULATION.md).")] = "sync",
    speeds: Annotated[str, typer.Option(
        help="How long each node's training step takes: same, lognormal:SIGMA, slow:FRACTION:FACTOR or a "
             "trace file (.csv, .json).")] = "same",
    churn: Annotated[Optional[str], typer.Option(
        help="Nodes away and back (async): random:UP_S:DOWN_S or a .csv of node,leave_ms,return_ms rows.")] = None,
    attack: Annotated[Optional[list[str]], typer.Option(
        help="NAME:FRACTION of attacking nodes, repeatable; see `manymodels attacks`.")] = None,
    reputation: Annotated[float, typer.Option(
        help="Ban a peer whose reputation score (0..1) falls below this; 0 never bans.")] = 0.0,
    share: network.ShareOption = None,
    client_app: Annotated[Optional[str], typer.Option(
        help="A Flower client as every node's learner: MODULE:ATTR or FILE.py:ATTR (see docs/FLOWER.md); "
             "--dataset, --partition and --model are then unused.")] = None,
    run_config: Annotated[Optional[list[str]], typer.Option(
        help='The Flower client\'s run config, "key=value key=value" as `flwr run --run-config` takes it.')] = None,
    backend: Annotated[str, typer.Option(
        help="Where the nodes run: local (this process) or ray (shards on a Ray cluster; docs/SIMULATION.md). "
             "Both give the same report.")] = "local",
    address: AddressOption = None,
    batched: Annotated[bool, typer.Option(
        "--batched/--one-by-one", help="Train, evaluate and fold nodes of one architecture together, in batches "
                                       "(the same numbers as one by one, faster; docs/SIMULATION.md).")] = True,
    protocol_only: Annotated[bool, typer.Option(
        "--protocol-only", help="Signed weights messages and no training (a random step a round): "
                                "dissemination, bandwidth and attacks at scale; the report has no accuracies.")] = False,
    report: Annotated[Optional[Path], typer.Option(help="Write the JSON report here.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    save_config: Annotated[Optional[Path], typer.Option(metavar="FILE.toml", help=
        "Write this run's options (all but --report and --json) to a file for --config, then run as usual.")] = None,
    config: ConfigOption = None,
) -> None:
    """Run a local network of nodes that learn from each other over signed messages."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from manymodels.node.runtime.store import atomic_write
    from manymodels.node.sim import backends
    from manymodels.node.sim.spec import SimulationConfig
    from manymodels.node.spec import SpecError

    try:
        config = SimulationConfig(
            nodes=nodes, rounds=rounds, dataset=dataset, partition=partition, model=model, exchange=exchange,
            rule=rule, logit_rule=logit_rule, topology=topology, local_epochs=local_epochs, seed=seed, loss=loss,
            schedule=schedule, speeds=speeds, churn=churn or "",
            probe_size=probe_size, probe_file=str(probe) if probe else None, temperature=temperature,
            synthetic_weight=synthetic_weight, licence=licence, attacks=tuple(attack or ()), reputation=reputation,
            **({"share": share} if share is not None else {}),
            client_app=client_app, run_config=" ".join(run_config or ()), backend=backend, address=address,
            batched=batched, protocol_only=protocol_only,
            **training_options(hidden, optimizer, lr, momentum, weight_decay, batch_size, shuffle),
            **codec_options(compress, compress_logits), **privacy_options(dp_noise, dp_clip, dp_epsilon, dp_delta),
            **({"accept_licences": tuple(accept_licence)} if accept_licence else {}))
    except SpecError as exc:
        raise UserError(str(exc)) from None
    err = Console(stderr=True)
    if save_config is not None:
        save_options(ctx, save_config, leave_out={"report", "json", "save-config"})
        err.print(f"options written to {save_config}", highlight=False)
    # on a terminal only: elsewhere it would be drawn once, at the end, and leave an empty line
    with Progress(TextColumn("[bold]simulating"), BarColumn(), MofNCompleteColumn(), TextColumn("rounds"),
                  TextColumn("{task.fields[acc]}"), TimeElapsedColumn(), console=err,
                  transient=True, disable=json_out or not err.is_terminal) as progress:
        task = progress.add_task("rounds", total=rounds, acc="")
        try:
            result = backends.simulate(config, on_round=lambda r, acc: progress.update(
                task, completed=r, acc=f"mean accuracy {acc:.3f}"))
        except SpecError as exc:
            raise UserError(str(exc)) from None
    if report is not None:
        atomic_write(report, (json.dumps(result, indent=2) + "\n").encode(), mode=0o644)  # a report is for sharing
    if json_out:
        _print_json(result)
    else:
        (_show_protocol_report if protocol_only else _show_report)(result)
        if report is not None:
            console.print(f"report written to {report}")


def _show_report(result: dict) -> None:
    table = Table(title="nodes")
    for column in ("node", "model", "data", "accuracy", "alone", "sent", "recv", "rejected"):
        table.add_column(column, justify="left" if column in ("node", "model") else "right")
    for n in result["nodes"]:
        model = f"{n['model']} [red]{n['attack']}[/]" if n.get("attack") else n["model"]
        table.add_row(n["id"][-6:], model, str(n["num_examples"]), f"{n['final_accuracy']:.3f}",
                      f"{n['local_only_accuracy']:.3f}", size(n["bytes_sent"]), size(n["bytes_received"]),
                      str(n["rejected_messages"]) + (f" ({len(n['banned'])} banned)" if n.get("banned") else ""))
    console.print(table)
    s = result["summary"]
    if len(s.get("architectures", {})) > 1:
        by_arch = Table(title="architectures")
        for column in ("model", "nodes", "accuracy", "alone", "pooled"):
            by_arch.add_column(column, justify="left" if column == "model" else "right")
        for arch, a in s["architectures"].items():
            by_arch.add_row(arch, str(a["nodes"]), f"{a['mean_accuracy']:.3f}", f"{a['mean_local_only_accuracy']:.3f}",
                            f"{a['pooled_accuracy']:.3f}")
        console.print(by_arch)
    if result.get("attackers"):
        console.print(f"{len(result['attackers'])} attackers; the accuracies below count honest nodes only")
    console.print(
        f"held-out accuracy: many models [bold]{s['mean_accuracy']:.3f}[/] (min {s['min_accuracy']:.3f}) | "
        f"alone {s['mean_local_only_accuracy']:.3f} | one pooled model {s['pooled_accuracy']:.3f}"
        + (f" | {s['wall_seconds']:.1f} s" if "wall_seconds" in s else "")  # the golden reports leave it out
    )
    if result.get("history_ms"):
        console.print(f"virtual time {round(result['history_ms'][-1] / 1000, 1):g} s "
                      f"({result['config'].get('schedule', 'sync')})")


def _show_protocol_report(result: dict) -> None:
    s = result["summary"]
    console.print(
        f"{len(result['nodes'])} nodes, {len(s['seconds_per_round'])} rounds: {s['mean_seconds_per_round']:.3f} s a round | "
        f"messages sent {s['messages_sent']}, verified {s['messages_verified']} (accepted {s['messages_accepted']}, "
        f"rejected {s['rejected_messages']}), dropped {s['messages_dropped']} | {size(s['bytes_sent'])} sent")


@app.command()
def report(
    file: Annotated[Path, typer.Argument(help="A report written by `simulate --report`.")],
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the config, summary, rounds and nodes as JSON.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="Draw accuracy and bytes per round into this PNG.")] = None,
    html: Annotated[Optional[Path], typer.Option(help="Write one self-contained HTML page here.")] = None,
    csv: Annotated[Optional[Path], typer.Option(help="Write one row per round and node here.")] = None,
) -> None:
    """Show a simulation report: its config, nodes and rounds; or write it as JSON, CSV, PNG or HTML."""
    from . import report as view

    result = view.load(file)
    from manymodels.node.sim.spec import SimulationConfig  # torch: after a bad file is refused
    defaults = SimulationConfig().to_report()
    if json_out:
        _print_json(view.to_json(result, defaults))
    elif not (plot or html or csv):
        console.print(view.config_table(result, defaults))
        _show_report(result)
        console.print(view.rounds_table(result))
    notes = Console(stderr=True) if json_out else console
    if csv:
        view.write(csv, view.to_csv(result))
        notes.print(f"csv written to {csv}")
    png = view.plot_png(result) if plot or html else b""
    if plot:
        view.write(plot, png)
        notes.print(f"plot written to {plot}")
    if html:
        view.write(html, view.to_html(result, png, defaults))
        notes.print(f"html written to {html}")


@app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="Where to write the private key (PEM, mode 0600).")],
    force: Annotated[bool, typer.Option(help="Overwrite an existing key file.")] = False,
) -> None:
    """Create a node identity and print its node id (= libp2p peer id)."""
    from manymodels.node.runtime.store import save_identity
    from manymodels.protocol import Identity

    identity = Identity.generate()
    try:
        save_identity(out, identity, overwrite=force)
    except (FileExistsError, OSError) as exc:
        raise UserError(str(exc)) from None
    sys.stdout.write(identity.peer_id + "\n")


@app.command()
def verify(
    file: Annotated[Path, typer.Argument(help="One encoded envelope.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Verify one encoded envelope: exit 0 only when it is valid."""
    from manymodels.protocol import RejectedMessage, open_envelope

    try:
        data = file.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {file}: {exc.strerror}") from None
    # No replay guard: a file has no "now" that its timestamp should be near.
    try:
        message = open_envelope(data, now_ms=int(time.time() * 1000))
        result = {"valid": True, "kind": message.kind, "sender": message.sender_id, "seq": message.seq,
                  "ts": message.ts, "digest": message.digest.hex(), "bytes": message.size}
    except RejectedMessage as exc:
        result = {"valid": False, "reason": exc.reason.value, "detail": exc.detail, "bytes": len(data)}
    if json_out:
        _print_json(result)
    elif result["valid"]:
        console.print(f"[green]valid[/] {result['kind']} from {result['sender']} "
                      f"(seq {result['seq']}, {result['bytes']} bytes, digest {result['digest'][:16]}…)")
    else:
        console.print(f"[red]invalid[/]: {result['reason']}" + (f" ({result['detail']})" if result["detail"] else ""))
    raise typer.Exit(0 if result["valid"] else 1)


@app.command()
def attacks(json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """List the attacks the simulator can run (`simulate --attack NAME:FRACTION`)."""
    from manymodels.node.sim.attacks import ATTACKS

    listed = [{"name": name, "description": cls.description} for name, cls in ATTACKS.items()]
    if json_out:
        _print_json(listed)
        return
    table = Table(title="attacks")
    table.add_column("name")
    table.add_column("description")
    for a in listed:
        table.add_row(a["name"], a["description"])
    console.print(table)


@app.command()
def rules(json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """List the aggregation rules, built in and from plugins."""
    from manymodels.aggregation import list_rules

    _listing("aggregation rules", list_rules(), "kind", json_out)


@app.command()
def codecs(json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """List the codecs weights and logits can travel in (--compress, --compress-logits), built in and from plugins."""
    from manymodels.protocol import list_codecs

    _listing("codecs", list_codecs(), "kinds", json_out)


def _listing(title: str, listed: list[dict], kind: str, json_out: bool) -> None:
    """Rules or codecs: a table, or JSON."""
    if json_out:
        _print_json(listed)
        return
    table = Table(title=title)
    for column in ("name", kind, "parameters", "description", "source"):
        table.add_column(column)
    for r in listed:
        params = " ".join(_param(p) for p in r.get("params") or [])
        kinds = r.get(kind) or ""
        table.add_row(r["name"], ", ".join(kinds) if isinstance(kinds, list) else kinds, params,
                      r.get("description", r.get("error", "")), r.get("source", ""))
    console.print(table)


def _param(p: dict) -> str:
    """`beta=0.2` for a parameter with a default; a required one (default None) as its type and domain:
    `beta: float in [0, 0.5)`."""
    if p.get("default") is not None:
        return f"{p['name']}={p['default']}"
    return f"{p['name']}: {p['type']} {p['domain']}".rstrip()


def main() -> None:
    try:
        app()
    except UserError as exc:
        # escaped: a message's brackets are text (pip install 'manymodels[dp]'), not rich markup
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
