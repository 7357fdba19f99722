"""CLI network commands: run a node daemon and talk to it through its control socket."""
from __future__ import annotations

import json
import os
import signal
import string
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .config_file import ConfigOption
from .errors import UserError
from .help_defaults import shown, with_defaults
from .learner_options import (BatchSizeOption, CompressLogitsOption, CompressOption, DpClipOption, DpDeltaOption,
                              DpEpochsOption, DpEpsilonOption, DpNoiseOption, HiddenOption, LrOption, MomentumOption,
                              OptimizerOption, ShuffleOption, WeightDecayOption, codec_options, privacy_options,
                              training_options)
from .watch import peers_table, status_lines, status_view, watch

node_app = typer.Typer(no_args_is_help=True, help="Run a node daemon: start, status, stop.")
console = Console(soft_wrap=True)
HomeOption = Annotated[Path, typer.Option("--home", help="The node's home directory.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print as JSON.")]
# node start's options that `up` passes on to every node
DatasetOption = Annotated[Optional[str], typer.Option(help="digits, fashion-mnist or mnist1d.")]
PartitionOption = Annotated[Optional[str], typer.Option(help="iid, dirichlet:ALPHA or shards:K.")]
ExchangeOption = Annotated[Optional[str], typer.Option(help="weights, distill, synthetic or mixed.")]
RuleOption = Annotated[Optional[str], typer.Option(help="Weights rule; see `manymodels rules`.")]
PeriodOption = Annotated[Optional[float], typer.Option(help="Seconds between learning cycles.")]
ShareOption = Annotated[Optional[str], typer.Option(
    help="Who gets this node's knowledge: all; reciprocal[:N], the peers that gave at least N knowledge messages "
         "in the last 5 versions (a newcomer gets 3 versions' trial); allowlist:FILE, the peer ids in FILE (one a "
         "line). A peer left out gets no model, only the announcements.")]
# reach (docs/NETWORK.md): the relay service and its limits, and bulk bytes over relays
RelayOption = Annotated[Optional[bool], typer.Option("--relay/--no-relay", help=(
    "Relay for nodes that cannot be dialed (circuit relay v2), within the --relay-* limits; run it on a node "
    "with a public address (see docs/NETWORK.md)."))]
RelayReservationsOption = Annotated[Optional[int], typer.Option(
    help="With --relay: how many peers may hold a reservation on this node at once.")]
RelayCircuitsOption = Annotated[Optional[int], typer.Option(
    help="With --relay: circuits open at once to one reserved peer.")]
RelayCircuitBytesOption = Annotated[Optional[int], typer.Option(
    help="With --relay: bytes one circuit may carry (both ways together) before it is reset.")]
RelayCircuitSecondsOption = Annotated[Optional[int], typer.Option(
    help="With --relay: seconds one circuit may stay open.")]
RelayBulkOption = Annotated[Optional[int], typer.Option(
    help="Bytes an hour of large messages (models, pulled chunks: over 256 KiB) this node sends through relays to "
         "peers it has no direct connection to; 0: only small messages cross a relay.")]
WideOption = Annotated[bool, typer.Option("--wide", help="Never truncate a cell (ids, digests), however wide the "
                                                         "table gets; otherwise a truncated cell ends in '…'.")]


def _request(home: Path, cmd: str, **args):
    from manymodels.node.runtime.control import ControlError, NotRunning, request
    from manymodels.node.runtime.store import Home

    try:
        return request(Home(home).socket, cmd, timeout=120, **args)
    except (NotRunning, ControlError) as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:  # a timeout, or the daemon died mid-request
        raise UserError(f"the node in {home} did not answer: {exc}") from None


def _out(value, as_json: bool, show) -> None:
    if as_json:
        sys.stdout.write(json.dumps(value, indent=2) + "\n")
    else:
        show(value)


def _show_table(table: Table, wide: bool) -> None:
    """A table as wide as the terminal (a cell cut short ends in '…'), or with --wide as wide as its cells."""
    (Console(soft_wrap=True, width=1 << 16) if wide else console).print(table)


def start_defaults() -> dict[str, str]:
    """What `node start` (and `up`) runs with for an option neither given nor saved: DaemonConfig's defaults."""
    from manymodels.node.runtime.daemon import DaemonConfig

    config = DaemonConfig().to_json()
    values = {**config.pop("recipe"), **config}
    return {name: f"{shown(value, name)}, or the saved value" for name, value in values.items()}


@node_app.command(cls=with_defaults(start_defaults))
def start(
    home: HomeOption,
    listen: Annotated[Optional[list[str]], typer.Option(
        help="Multiaddr to listen on (repeatable). The default is loopback: only this machine can connect; "
             "/ip4/0.0.0.0/tcp/PORT listens on every interface; /ip4/ADDR/udp/PORT/quic-v1 on QUIC.")] = None,
    bootstrap: Annotated[Optional[list[str]], typer.Option(
        help="A peer's multiaddr, ending in /p2p/<peer id>, to join through (repeatable).")] = None,
    dataset: DatasetOption = None,
    partition: PartitionOption = None,
    partition_id: Annotated[Optional[int], typer.Option(help="Which partition this node holds.")] = None,
    num_partitions: Annotated[Optional[int], typer.Option(help="How many partitions the data is split into.")] = None,
    model: Annotated[Optional[str], typer.Option(help="logreg, mlp, mlp-wide, cnn or forest.")] = None,
    hidden: HiddenOption = None,
    optimizer: OptimizerOption = None,
    lr: LrOption = None,
    momentum: MomentumOption = None,
    weight_decay: WeightDecayOption = None,
    batch_size: BatchSizeOption = None,
    shuffle: ShuffleOption = None,
    exchange: ExchangeOption = None,
    rule: RuleOption = None,
    compress: CompressOption = None,
    compress_logits: CompressLogitsOption = None,
    dp_noise: DpNoiseOption = None,
    dp_clip: DpClipOption = None,
    dp_epsilon: DpEpsilonOption = None,
    dp_delta: DpDeltaOption = None,
    dp_epochs: DpEpochsOption = None,
    period: PeriodOption = None,
    reputation: Annotated[Optional[float], typer.Option(
        help="Stop accepting a peer whose reputation (0..1) falls below this (0: never).")] = None,
    push_limit: Annotated[Optional[int], typer.Option(
        help="Messages larger than this (bytes) are announced to the neighbours, who pull the newest "
                    "before each fold; smaller ones are pushed.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="The network's seed (data split, initial model).")] = None,
    share: ShareOption = None,
    client_app: Annotated[Optional[str], typer.Option(
        help="A Flower client as this node's learner: MODULE:ATTR or FILE.py:ATTR (see docs/FLOWER.md); it gets "
             "--partition-id of --num-partitions, and --dataset, --partition and --model are then unused.")] = None,
    run_config: Annotated[Optional[list[str]], typer.Option(
        help='The Flower client\'s run config, "key=value key=value" as `flwr run --run-config` takes it.')] = None,
    mdns: Annotated[Optional[bool], typer.Option("--mdns/--no-mdns",
                                                 help="Find peers on the local network by multicast DNS.")] = None,
    metrics: Annotated[Optional[str], typer.Option(
        help="Serve Prometheus metrics at http://HOST:PORT/metrics; :PORT or PORT serves on loopback "
             "(127.0.0.1), 'off' serves none.")] = None,
    relay: RelayOption = None,
    relay_reservations: RelayReservationsOption = None,
    relay_circuits: RelayCircuitsOption = None,
    relay_circuit_bytes: RelayCircuitBytesOption = None,
    relay_circuit_seconds: RelayCircuitSecondsOption = None,
    relay_bulk: RelayBulkOption = None,
    detach: Annotated[bool, typer.Option(
        help="Run in the background: return once the node listens, printing its id and addresses (the "
             "learner then loads for a few seconds; `node status` says when it runs).")] = False,
    wait: Annotated[bool, typer.Option(
        help="With --detach: return only once the learner has loaded, so that a learner that cannot start "
             "(a client app that fails, a model that does not fit the data) is reported here.")] = False,
    log_file: Annotated[Optional[Path], typer.Option(
        help="Log to this file (appended) instead of stderr, or of HOME/daemon.log when detached (this run "
             "only).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug lines too (this run only).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log warnings and errors only (this run only).")] = False,
    config: ConfigOption = None,
) -> None:
    """Start a node. The first start creates the identity and config in HOME; later starts reuse them
    (options given again override the saved config). It logs to stderr (detached: HOME/daemon.log;
    or --log-file), a line per period; Ctrl-C or SIGTERM stops it after it has saved its state."""
    from manymodels.node.runtime.store import Home

    from manymodels.node.spec import SpecError

    h = Home(home)
    _may_start(h, wait, detach)
    try:
        training = training_options(hidden, optimizer, lr, momentum, weight_decay, batch_size, shuffle)
    except SpecError as exc:
        raise UserError(str(exc)) from None
    config = update_config(h, listen=listen, bootstrap=bootstrap, dataset=dataset, partition=partition,
                           partition_id=partition_id, num_partitions=num_partitions, model=model, exchange=exchange,
                           rule=rule, period=period, reputation=reputation, push_limit=push_limit, seed=seed,
                           client_app=_app_spec(client_app), mdns=mdns, metrics=_metrics(metrics), relay=relay,
                           relay_reservations=relay_reservations, relay_circuits=relay_circuits, relay_bulk=relay_bulk,
                           relay_circuit_bytes=relay_circuit_bytes, relay_circuit_seconds=relay_circuit_seconds,
                           share=share_spec(share), run_config=None if run_config is None else " ".join(run_config),
                           **training, **codec_options(compress, compress_logits),
                           **privacy_options(dp_noise, dp_clip, dp_epsilon, dp_delta, dp_epochs=dp_epochs))
    verbosity = ["--verbose"] * verbose + ["--quiet"] * quiet
    log_path = h.log_file if log_file is None and detach else log_file
    if detach:
        console.print(started(*spawn(h, verbosity, log_path.resolve(), wait)), highlight=False)
        return
    if log_path is not None:
        _log_to(log_path)
    import logging

    import trio

    from manymodels.node.runtime import logs
    from manymodels.node.runtime.daemon import Daemon
    from manymodels.node.p2p.libp2p import Libp2pTransport

    logs.configure(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    daemon = Daemon(h, config)

    async def stop_on_signal(signals) -> None:
        async for _ in signals:
            daemon.stopping.set()

    async def main():
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_on_signal, signals)
                await daemon.run(Libp2pTransport)
                nursery.cancel_scope.cancel()
    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        error = _startup_error(exc)
        if error is None:
            raise
        raise UserError(error) from None


def _may_start(h, wait: bool, detach: bool) -> None:
    """Checked before anything is saved: a running node's config stays as it runs."""
    if wait and not detach:
        raise UserError("--wait goes with --detach (a node in the foreground runs until stopped)")
    if running(h):
        raise UserError(f"a node is already running in {h.path}")


def _startup_error(exc: BaseException) -> str | None:
    """The line to show for a setup the daemon refused — a learner that failed (e.g. a model that
    does not fit the dataset), a listen address in use — in what it raised (trio wraps it in
    exception groups); None for anything else."""
    if isinstance(exc, BaseExceptionGroup):
        return next((e for e in map(_startup_error, exc.exceptions) if e is not None), None)
    from manymodels.node.runtime.listen import ListenError
    from manymodels.node.runtime.worker import WorkerError

    if isinstance(exc, WorkerError):
        return f"the node's learner failed: {exc}"
    return str(exc) if isinstance(exc, ListenError) else None


def share_spec(spec: str | None) -> str | None:
    """--share with an allowlist's FILE made absolute, so a restart from elsewhere finds it."""
    if spec is None or not spec.strip().startswith("allowlist:"):
        return spec
    return "allowlist:" + str(Path(spec.strip()[len("allowlist:"):]).expanduser().absolute())


def _app_spec(spec: str | None) -> str | None:
    """--client-app with its FILE.py made absolute (so a restart from elsewhere finds it) and checked
    to exist; MODULE:ATTR resolves from the directory the node first started in (recipe.app_dir).
    Importing the app happens in the worker process: flwr and torch stay out of this one."""
    if spec is None or not spec.strip():
        return spec
    spec = spec.strip()
    at = spec.rfind(".py:")
    if at < 0:
        return spec
    path = Path(spec[:at + 3]).expanduser()
    if not path.is_file():
        raise UserError(f"--client-app {spec}: {path} does not exist")
    return f"{path.resolve()}{spec[at + 3:]}"


def _metrics(address: str | None) -> str | None:
    """--metrics as saved: 'off' (or nothing) is "" (none); its HOST:PORT is checked by update_config."""
    return None if address is None else "" if address.strip().lower() in ("", "off") else address.strip()


def running(h) -> bool:
    """Whether a node answers on the control socket of home `h`."""
    from manymodels.node.runtime.control import ControlError, NotRunning, request

    try:
        request(h.socket, "status", timeout=5)
        return True
    except (NotRunning, ControlError, OSError):
        return False


def update_config(h, **options):
    """The saved config with the options given over it, checked, and saved again."""
    from manymodels.node.learning.recipe import LearnerRecipe
    from manymodels.node.runtime.daemon import DaemonConfig
    from manymodels.node.runtime.listen import ListenError, check_listen, check_metrics
    from manymodels.node.spec import SpecError, check_bootstrap

    saved = h.read_json(h.config_file, None)
    config = DaemonConfig.from_json(saved) if saved else DaemonConfig()
    recipe_fields = set(LearnerRecipe.__dataclass_fields__)
    recipe = {k: v for k, v in options.items() if k in recipe_fields and v is not None}
    if options.get("client_app") is not None:  # MODULE:ATTR resolves from here, after a restart too
        recipe["app_dir"] = "" if ".py:" in options["client_app"] else str(Path.cwd())
    daemon = {k: v for k, v in options.items() if k not in recipe_fields and v is not None}
    config = DaemonConfig(**{**config.to_json(), **daemon,
                             "recipe": LearnerRecipe.from_json({**config.recipe.to_json(), **recipe})})
    try:
        config.node_spec()
        for addr in config.bootstrap:
            check_bootstrap(addr)
        for addr in config.listen:
            check_listen(addr)
        if config.metrics:
            check_metrics(config.metrics)
    except (SpecError, ListenError) as exc:
        raise UserError(str(exc)) from None
    h.path.mkdir(parents=True, exist_ok=True, mode=0o700)
    h.write_json(h.config_file, config.to_json())
    return config


def _log_to(path: Path) -> None:
    """This process's stderr, and so its log and its worker's, appended to `path` from here on."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as exc:
        raise UserError(f"--log-file {path}: {exc.strerror}") from None
    os.dup2(fd, sys.stderr.fileno())
    os.close(fd)


def spawn(h, verbosity: list[str], log_path: Path, wait: bool) -> tuple[dict, int]:
    """Start the node of home `h` (its saved config) in a process of its own that logs to `log_path`;
    once it listens (or, with `wait`, runs its learner), its status and pid. One that exits first
    is a UserError in one line: why it exited."""
    try:
        log = open(log_path, "ab")
    except OSError as exc:
        raise UserError(f"--log-file {log_path}: {exc.strerror}") from None
    with log:  # the child holds it open; `up` spawns many, this process keeps none
        start = log.tell()
        # main() of the imported module, not `-m`: run as __main__ it would not catch the UserError this module raises
        process = subprocess.Popen([sys.executable, "-c", "from manymodels.cli.main import main; main()",
                                    "node", "start", "--home", str(h.path), *verbosity],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:  # its own one-line error, if it printed one
            said = [line for line in log_path.read_bytes()[start:].decode(errors="replace").splitlines()
                    if line.startswith("error: ")]
            raise UserError((said[-1][len("error: "):] + f" (see {log_path})") if said else
                            f"the node exited at start (code {process.returncode}); see {log_path}")
        try:
            status = _request(h.path, "status")
        except UserError:
            status = None
        if status is not None and (status["state"] == "running" or not wait):
            return status, process.pid
        time.sleep(0.3)
    raise UserError(f"the node did not {'run' if wait else 'answer'} within 120 s; see {log_path}")


def started(s: dict, pid: int) -> str:
    """The line that says a detached node has started: its id, addresses and pid."""
    loading = "; its learner is loading" if s["state"] == "loading" else ""
    return f"node {s['id']} listening on {' '.join(s['addrs'])} (pid {pid}){loading}"


@node_app.command()
def status(home: HomeOption, json_out: JsonOption = False,
           live: Annotated[bool, typer.Option("--watch", help=(
               "A live view with the counters by reason and the peers, redrawn every --interval seconds until "
               "Ctrl-C (exit 0) or until the node stops (one line, exit 0). Not with --json."))] = False,
           interval: Annotated[float, typer.Option(help="Seconds between redraws of --watch.")] = 2.0) -> None:
    """Show a running node's id, addresses, model and counters; --watch keeps them on screen, live."""
    def show(s: dict) -> None:
        for line in status_lines(s):
            console.print(line, highlight=False)
    if not live:
        return _out(_request(home, "status"), json_out, show)
    if json_out:
        raise UserError("--watch is a live view for people; --json prints the status once (leave out one of them)")
    if not interval > 0:
        raise UserError(f"--interval must be a positive number of seconds, got {interval:g}")
    def view():
        s = _request(home, "status")  # peers waits for the learner: asked once it runs
        return status_view(s, _request(home, "peers") if s["state"] == "running" else None)
    watch(view, interval, console)


STOP_TIMEOUT = 60  # seconds: the node finishes the learning step under way, saves, stops its worker


@node_app.command()
def stop(home: HomeOption) -> None:
    """Stop a running node: it saves its state first; this returns once its process has exited."""
    console.print(f"stopped {stop_node(home)}", highlight=False)


def stop_node(home: Path) -> str:
    """Stop the node running in `home` and wait until its process has exited; its id."""
    from manymodels.node.runtime.store import Home

    pid_file = Home(home).pid_file
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    result = _request(home, "stop")
    deadline = time.monotonic() + STOP_TIMEOUT
    while pid is not None and _alive(pid):
        if time.monotonic() > deadline:
            raise UserError(f"node {result['stopping']} (pid {pid}) was asked to stop but has not exited "
                            f"after {STOP_TIMEOUT} s")
        time.sleep(0.1)
    return result["stopping"]


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def peers(home: HomeOption, json_out: JsonOption = False, wide: WideOption = False) -> None:
    """Peers this node knows: id, addresses, last seen, what they offered, messages rejected."""
    _out(_request(home, "peers"), json_out, lambda rows: _show_table(peers_table(rows), wide))


def connect(multiaddr: Annotated[str, typer.Argument(help="/ip4/.../tcp/.../p2p/<peer id>")], home: HomeOption) -> None:
    """Connect the running node to a peer."""
    console.print(f"connected to {_request(home, 'connect', addr=multiaddr)['connected']}", highlight=False)


def models(home: HomeOption, json_out: JsonOption = False, wide: WideOption = False) -> None:
    """The local model and the models peers have offered, with their digests."""
    def show(rows):
        table = Table(title="models")
        for column in ("peer", "model", "version", "digest", "size"):
            table.add_column(column)
        for m in rows:
            size = f"{m['bytes']}" if "bytes" in m else "-"
            table.add_row(("(this node) " if m.get("local") else "") + m["peer"], m["model"], str(m["version"]),
                          m["digest"] or "-", size)
        _show_table(table, wide)
    _out(_request(home, "models"), json_out, show)


def pull(peer: Annotated[str, typer.Argument(help="The peer id to pull from, or 'any': whoever announced it or "
                                                  "provides it in the DHT.")],
         digest: Annotated[str, typer.Argument(help="The payload digest (hex), as `models` shows it, or the start "
                                                    "of it that only one model the node knows has.")],
         home: HomeOption, json_out: JsonOption = False) -> None:
    """Pull a model (a signed message) from a peer by digest; it is verified before it is kept."""
    digest = _full_digest(home, digest)

    def show(r: dict) -> None:
        console.print(f"pulled {r['kind']} by {r['author']} ({r['bytes']} bytes) -> {r['path']}", highlight=False)
    source = "whoever holds it" if peer in ("", "any") else peer
    with _said_after_a_second(f"pulling {digest} from {source}…"):
        pulled = _request(home, "pull", peer=peer, digest=digest)
    _out(pulled, json_out, show)


def _full_digest(home: Path, digest: str) -> str:
    """`digest` when it is a whole one; else the one digest that starts with it among the models the
    node knows (its own, its peers' announcements: what `models` lists)."""
    from manymodels.protocol.messages import DIGEST_SIZE

    text = digest.strip().lower()
    if not text or len(text) > 2 * DIGEST_SIZE or not set(text) <= set(string.hexdigits.lower()):
        raise UserError(f"{digest!r} is not a digest: up to {2 * DIGEST_SIZE} hex digits")
    if len(text) == 2 * DIGEST_SIZE:
        return text
    return digest_with_prefix(text, [m["digest"] for m in _request(home, "models") if m["digest"]])


def digest_with_prefix(prefix: str, known: list[str]) -> str:
    """The one digest in `known` that starts with `prefix`; none, or more than one, is a UserError."""
    matches = sorted({d for d in known if d.startswith(prefix)})
    if not matches:
        raise UserError(f"digest prefix {prefix} matches no model the node knows (see `manymodels models`); "
                        "a model only the DHT knows is pulled by its whole digest")
    if len(matches) > 1:
        raise UserError(f"digest prefix {prefix} matches {len(matches)} models: {', '.join(matches)}")
    return matches[0]


@contextmanager
def _said_after_a_second(line: str):
    """Say `line` on stderr when the block still runs after a second: a spinner on a terminal, else
    the line itself (a pipe or a log shows it once)."""
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    spinner = err.status(Text(line)) if err.is_terminal else None
    lock, done = threading.Lock(), []

    def say() -> None:
        with lock:  # not once the block has ended: a spinner started after stop() would stay
            if done:
                return
            if spinner:
                spinner.start()
            else:
                err.print(line, markup=False)
    timer = threading.Timer(1.0, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            done.append(True)
        timer.cancel()
        if spinner:
            spinner.stop()


def value(home: HomeOption, json_out: JsonOption = False, wide: WideOption = False) -> None:
    """What each peer's knowledge has done for this node's model: every fold's change in held-out
    accuracy, credited to the peers whose messages it took by the examples behind them (an estimate
    from what the node has anyway: no extra traffic, no retraining)."""
    def show(result: dict) -> None:
        folds = result["folds"]
        table = Table(title="value of each peer to this model", caption=(
            f"credit: held-out accuracy points its folds gained (-: lost), by share; last fold "
            f"{folds[-1]['accuracy_before']:.3f} -> {folds[-1]['accuracy_after']:.3f}" if folds else
            "no fold has taken a peer's knowledge yet"))
        for column in ("peer", "folds", "share", "credit", "per fold", "reputation"):
            table.add_column(column, justify="left" if column == "peer" else "right")
        for r in result["peers"]:
            table.add_row(r["peer"], str(r["folds"]), f"{r['share']:.2f}", f"{100 * r['credit']:+.2f}",
                          f"{100 * r['credit_per_fold']:+.2f}", "-" if r["reputation"] is None else f"{r['reputation']:.2f}")
        _show_table(table, wide)
    _out(_request(home, "value"), json_out, show)


def register(app: typer.Typer) -> None:
    app.add_typer(node_app, name="node")
    for command in (peers, connect, models, pull, value):
        app.command()(command)
