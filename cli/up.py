"""`manymodels up N` and `down`: a local network in one command. `up` starts N node daemons on
loopback, as `node start --detach` would (network.py's update_config and spawn), node i in
HOME-ROOT/node-i holding partition i of N, all joined through node-0; it shows one live table of them
until Ctrl-C or SIGTERM, and then stops them all as `node stop` does (each saves its state)."""
from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .config_file import ConfigOption
from .errors import UserError
from .help_defaults import with_defaults
from .learner_options import (BatchSizeOption, CompressLogitsOption, CompressOption, DpClipOption, DpDeltaOption,
                              DpEpochsOption, DpEpsilonOption, DpNoiseOption, HiddenOption, LrOption, MomentumOption,
                              OptimizerOption, ShuffleOption, WeightDecayOption, codec_options, privacy_options,
                              training_options)
from .network import (DatasetOption, ExchangeOption, PartitionOption, PeriodOption, RuleOption, ShareOption, running,
                      share_spec, spawn, start_defaults, started, stop_node, update_config)
from .watch import watch

MAX_NODES = 64
AT_ONCE = 8  # nodes started, polled or stopped at the same time (each start imports torch in a worker)
STATUS_TIMEOUT = 10  # seconds a node may take to answer the table's "status" (a busy 2-core machine)

console = Console(soft_wrap=True)
HomeRootOption = Annotated[Path, typer.Option(
    "--home-root", help="The network's folder: node i's home is HOME-ROOT/node-i.", show_default=False)]


def up(
    nodes: Annotated[int, typer.Argument(metavar="N", help=f"How many nodes, 1 to {MAX_NODES}.", show_default=False)],
    home_root: HomeRootOption,
    dataset: DatasetOption = None,
    partition: PartitionOption = None,
    model: Annotated[Optional[str], typer.Option(
        help="logreg, mlp, mlp-wide, cnn, forest; 'mixed' (one of each in turn) or a comma list: node i gets "
             "the i-th in turn.")] = None,
    hidden: HiddenOption = None,
    optimizer: OptimizerOption = None,
    lr: LrOption = None,
    momentum: MomentumOption = None,
    weight_decay: WeightDecayOption = None,
    batch_size: BatchSizeOption = None,
    shuffle: ShuffleOption = None,
    exchange: ExchangeOption = None,
    share: ShareOption = None,
    compress: CompressOption = None,
    compress_logits: CompressLogitsOption = None,
    dp_noise: DpNoiseOption = None,
    dp_clip: DpClipOption = None,
    dp_epsilon: DpEpsilonOption = None,
    dp_delta: DpDeltaOption = None,
    dp_epochs: DpEpochsOption = None,
    rule: RuleOption = None,
    period: PeriodOption = None,
    seed: Annotated[Optional[int], typer.Option(help="The network's seed (data split, initial models).")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes of the table.")] = 2.0,
    detach: Annotated[bool, typer.Option("--detach", "--no-watch", help=(
        "Start them, show the table once and return, leaving them running."))] = False,
    config: ConfigOption = None,
) -> None:
    """Start N nodes on this machine, joined in one network, and watch them in one live table.

    N is 1 to 64. Node i runs in HOME-ROOT/node-i (listening on loopback only, logging to its
    daemon.log) and holds partition i of N; node-0 starts first, the others join through it. The
    table is live until Ctrl-C or SIGTERM, which stops them all (each saves its state). With
    --detach they keep running: `manymodels down --home-root HOME-ROOT` stops them.

    Run again on the same HOME-ROOT, `up` restarts the same nodes: their ids, models and saved
    options (options given override them, as in `node start`). A HOME-ROOT that holds another
    number of nodes is refused: each node's partition depends on N."""
    if not 1 <= nodes <= MAX_NODES:
        raise UserError(f"N is how many nodes to start, 1 to {MAX_NODES}; got {nodes}")
    if not interval > 0:
        raise UserError(f"--interval must be a positive number of seconds, got {interval:g}")
    from manymodels.node.spec import SpecError

    try:
        common = {"dataset": dataset, "partition": partition, "exchange": exchange, "rule": rule, "period": period,
                  "seed": seed, "share": share_spec(share), **codec_options(compress, compress_logits),
                  **privacy_options(dp_noise, dp_clip, dp_epsilon, dp_delta, dp_epochs=dp_epochs),
                  **training_options(hidden, optimizer, lr, momentum, weight_decay, batch_size, shuffle)}
        options = [{**common, "partition_id": i, "num_partitions": nodes, "model": arch}
                   for i, arch in enumerate(_architectures(model, nodes))]
    except SpecError as exc:
        raise UserError(str(exc)) from None
    homes = _homes(home_root, nodes)
    with _sigterm_interrupts():
        try:
            _start(homes, options)
            if detach:
                console.print(_table(homes, _statuses(homes)))
                console.print(f"running in the background; `manymodels down --home-root {home_root}` stops them",
                              highlight=False)
                return
            watch(lambda: _table(homes, _statuses(homes)), interval, console)  # until Ctrl-C
        except KeyboardInterrupt:  # while they start
            pass
        except UserError:
            _stop(homes)  # the nodes started before the one that failed
            raise
        stopped = _stop(homes)
    console.print(f"stopped {_nodes(stopped)} in {home_root} (each saved its state)", highlight=False)


def down(home_root: HomeRootOption) -> None:
    """Stop the nodes running in HOME-ROOT, as `up` started them.

    Each saves its state; this returns once they have all exited."""
    homes = _held(home_root.expanduser().absolute())
    stopped = _stop(homes)
    console.print(f"stopped {_nodes(stopped)} in {home_root}" if stopped else f"no node was running in {home_root}",
                  highlight=False)


def _architectures(model: str | None, nodes: int) -> list[str | None]:
    """Each node's --model, as the simulator assigns them; None (each keeps its saved one) when not given."""
    if model is None:
        return [None] * nodes
    from manymodels.node.sim.spec import architectures  # torch, for the names of the models

    return list(architectures(model, nodes))


def _held(root: Path) -> list[Path]:
    """The node homes in `root`, node-0 first."""
    found = [p for p in root.glob("node-*") if p.is_dir() and re.fullmatch(r"node-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name[len("node-"):]))


def _homes(home_root: Path, nodes: int) -> list[Path]:
    """HOME-ROOT/node-0 … node-(N-1). Refused when HOME-ROOT holds a network of another size (node i's
    data is partition i of N: another N would give every node other data) or one of its nodes runs.
    Fewer homes than N, as a start cut short leaves, are fine."""
    from manymodels.node.runtime.store import Home

    root = home_root.expanduser().absolute()
    homes = [root / f"node-{i}" for i in range(nodes)]
    held = _held(root)
    sizes = {Home(home).read_json(Home(home).config_file, {}).get("recipe", {}).get("num_partitions") for home in held}
    if sizes - {nodes, None} or not set(held) <= set(homes):
        size = max(sizes - {None}, default=len(held))
        raise UserError(f"{home_root} holds a network of {_nodes(size)} ({held[0].name} … {held[-1].name}); "
                        f"`up {size}` restarts it, or choose another --home-root")
    for home in homes:
        if running(Home(home)):
            raise UserError(f"{home.name} in {home_root} is already running; "
                            f"`manymodels down --home-root {home_root}` stops the network")
    return homes


def _start(homes: list[Path], options: list[dict]) -> None:
    """node-0 first, then the others through it, a few at a time. On a failure or Ctrl-C the starts
    under way still finish, so that the stop which follows finds their nodes."""
    with ThreadPoolExecutor(AT_ONCE) as pool:
        try:
            first = pool.submit(_start_node, homes[0], options[0], None).result()
            bootstrap = [first["addrs"][0]]
            for starting in [pool.submit(_start_node, home, o, bootstrap) for home, o in zip(homes[1:], options[1:])]:
                starting.result()
        except BaseException:
            with _uninterrupted():
                pool.shutdown(cancel_futures=True)
            raise


def _start_node(home: Path, options: dict, bootstrap: list[str] | None) -> dict:
    """Save node `home`'s config with `options` over it and start it detached; its status."""
    from manymodels.node.runtime.store import Home

    h = Home(home)
    try:
        update_config(h, bootstrap=bootstrap, **options)
        status, pid = spawn(h, [], h.log_file, wait=True)  # a learner that cannot start is reported here
    except UserError as exc:
        raise UserError(f"{home.name}: {exc}") from None
    console.print(f"{home.name}: {started(status, pid)}", highlight=False)
    return status


def _stop(homes: list[Path]) -> int:
    """Stop the nodes running in `homes`, a few at a time, each as `node stop` does; how many there were.
    Neither Ctrl-C nor SIGTERM cuts this short: the nodes are saving their state."""
    from manymodels.node.runtime.store import Home

    def stop(home: Path) -> bool:
        if not running(Home(home)):
            return False
        stop_node(home)
        return True
    with _uninterrupted(), ThreadPoolExecutor(AT_ONCE) as pool:
        return sum(pool.map(stop, homes))


def _statuses(homes: list[Path]) -> list[dict | None]:
    """Each node's "status"; None for one that does not answer."""
    from manymodels.node.runtime.control import ControlError, NotRunning, request
    from manymodels.node.runtime.store import Home

    def status(home: Path) -> dict | None:
        try:
            return request(Home(home).socket, "status", timeout=STATUS_TIMEOUT)
        except (NotRunning, ControlError, OSError):
            return None
    with ThreadPoolExecutor(AT_ONCE) as pool:
        return list(pool.map(status, homes))


def _table(homes: list[Path], statuses: list[dict | None]) -> Table:
    """One row per node; its id by its last 8 characters, as the daemons' period lines name peers. No
    outer edge: the table fits 80 columns."""
    table = Table(title=f"{_nodes(len(homes))} in {homes[0].parent}", show_edge=False, pad_edge=False)
    for column in ("home", "id", "model", "version", "accuracy", "peers", "accepted", "rejected"):
        table.add_column(column, justify="left" if column in ("home", "id", "model") else "right")
    for home, s in zip(homes, statuses):
        if s is None:
            table.add_row(home.name, "-", "[red]no answer[/]", *["-"] * 5)
            continue
        accuracy = "-" if s["accuracy"] is None else f"{s['accuracy']:.3f}"
        table.add_row(home.name, s["id"][-8:], s["model"], str(s["version"]), accuracy, str(s["peers"]),
                      str(s["messages_accepted"]), str(sum(s["rejected"].values())))
    return table


def _nodes(count: int) -> str:
    return f"{count} node" + "s" * (count != 1)


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does: either stops the network."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """Ctrl-C and SIGTERM ignored for a while."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def register(app: typer.Typer) -> None:
    app.command(cls=with_defaults(start_defaults))(up)
    app.command()(down)
