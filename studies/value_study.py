"""`manymodels study value`: the peer x model value matrix of a simulated network (studies/value.py
says what it means), by four methods, each with its cost:

- `loo`: leave-one-peer-out, N + 1 networks simulated;
- `mc`: Monte-Carlo Shapley with truncation over simulated networks (capped in permutations and time);
- `exact`: Shapley over every network, 2^N - 1 simulations (up to MAX_EXACT peers): the reference;
- `gtg`: one run, GTG-style (Liu et al. 2022). The whole network is simulated once; before each fold,
  the fold is replayed on a copy of the node's model with only a coalition's messages (node/sim/foldlog.py)
  and scored on the held-out data: round r's game of model i is the accuracy after folding coalition S's
  round-r messages into i's round-r model, its Shapley values (truncated Monte-Carlo over antithetic
  pairs of orders: each order, then its reverse) are summed over the rounds. Between-round truncation
  skips a round after which the model's accuracy is within the tolerance of the previous round's (the
  round changed little, so neither did anyone's part in it). Summed fold gains overcount what the
  network added (local training in between undoes part of each fold), so each model's column is then
  scaled to sum to its measured gain, the network's final accuracy minus the model trained alone
  (Shapley's efficiency; N one-node runs, about one simulation's training more). A replay is an exact
  re-aggregation for the weights exchange: with a built-in rule no replay at all (each message decoded
  once per fold, a coalition's weights the exchange's merge of those arrays, a linear rule's all in one
  matrix product: LoggedNode.coalition_weights), the coalitions along the round's orders scored AHEAD
  at a time in one batched forward pass; with another rule, through a copy of the exchange (a Flower
  strategy's server state starts from the round's). For distill it is a re-distillation on the probe
  set (and both for mixed): no private data is trained on.
  Synthetic samples act only in the next local training, which a replay would have to redo: the
  one-run estimate refuses that exchange.

Every network is simulated once (`Runs` caches them) and each method is charged the simulations it
read, with the seconds they took, as if it had run alone.

With `config.backend` "ray", the networks known before any is read (the whole network, each model
alone, and every network loo and exact read: their coalitions do not depend on the utilities) are
simulated at once as Ray tasks over the cluster (studies/grid.py, studies/ray_grid.py), then read from
the cache. Monte-Carlo's orders adapt to what they read (truncation, the time cap) and gtg replays
folds inside its one run, so what they read beyond that is simulated here, one network after another.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from itertools import islice

import numpy as np

from manymodels.node.learning.batched import eval_key, weights_accuracies
from manymodels.node.sim.foldlog import LoggedNode
from manymodels.node.sim.simulator import BeforeFold, make_world, node_identity, run_members
from manymodels.node.sim.spec import SimulationConfig, SimulationSpec
from manymodels.node.spec import SpecError

from .grid import run_grid
from .value import (Game, MonteCarlo, efficient, exact_shapley, leave_one_out, monte_carlo_shapley, orders,
                    peer_totals, spearman)

METHODS = ("loo", "mc", "gtg", "exact")
Plan = Callable[[Iterable[Iterable[frozenset[int]]]], None]  # paths of coalitions a game will be asked for in turn
AHEAD = 8  # coalitions of a planned path scored together (the later ones may go unread: truncation)
MAX_EXACT = 8  # 255 simulations


@dataclass(frozen=True)
class ValueSettings:
    methods: tuple[str, ...] = METHODS
    permutations: int = 30  # Monte-Carlo's cap on sampled orders of the peers
    max_seconds: float | None = None  # and on its wall time
    tolerance: float = 0.005  # truncation (Monte-Carlo, and within and between rounds for gtg)
    round_permutations: int = 8  # gtg's orders per round and model (in antithetic pairs)
    seed: int = 0  # the orders' randomness (the network's is the simulation config's)

    def check(self, config: SimulationConfig) -> None:
        nodes, unknown = config.nodes, [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise SpecError(f"unknown value method {', '.join(unknown) or '(none)'}; available: {', '.join(METHODS)}")
        if "exact" in self.methods and nodes > MAX_EXACT:
            raise SpecError(f"exact Shapley simulates 2^N - 1 networks: at most {MAX_EXACT} nodes, got {nodes}")
        if self.permutations < 1 or self.round_permutations < 1 or self.tolerance < 0:
            raise SpecError("--permutations and --round-permutations must be at least 1, --tolerance at least 0")
        if "gtg" in self.methods and config.exchange == "synthetic":
            raise SpecError("the one-run estimate (gtg) replays folds, and synthetic samples act only in the next "
                            "training: use loo, mc or exact with --exchange synthetic")


class Runs:
    """The networks of some of the N nodes, each simulated once: model i's accuracy in network M."""

    def __init__(self, config: SimulationConfig) -> None:
        self.spec = SimulationSpec.parse(config)
        if config.client_app:
            raise SpecError("the value study runs the built-in datasets; --client-app is not supported")
        if config.nodes < 2:
            raise SpecError(f"--nodes: a value study needs at least 2 peers (what one adds to another), got {config.nodes}")
        self.world = make_world(self.spec)
        self.n = config.nodes
        self.models = [i for i in range(self.n) if i not in self.spec.attackers]  # an attacker's is not valued
        self._runs: dict[frozenset[int], tuple[dict[int, float], float]] = {}
        self.run(self.models[:1])  # torch's first steps are slow: charged to no method

    def accuracy(self, network: frozenset[int]) -> dict[int, float]:
        return self.timed(network)[0]

    def timed(self, network: frozenset[int]) -> tuple[dict[int, float], float]:
        """Model i's accuracy in `network`, and the seconds its simulation took."""
        if network not in self._runs:
            started = time.perf_counter()
            accuracy = self.run(network)
            self._runs[network] = accuracy, time.perf_counter() - started
        return self._runs[network]

    def run(self, network: Iterable[int], before_fold: BeforeFold | None = None) -> dict[int, float]:
        """One simulation of `network`, not cached (node/sim/simulator.py's run_members)."""
        try:
            return run_members(self.spec, self.world, sorted(network), before_fold)
        except SpecError as exc:  # e.g. a rule that needs more inputs than a small network has
            raise SpecError(f"the network of peers {sorted(network)} cannot run: {exc}") from None

    def run_at_once(self, networks: set[frozenset[int]]) -> dict:
        """Simulate the networks not cached yet all at once, as Ray tasks (studies/grid.py's backend ray):
        how many, and on which Ray nodes."""
        points = [{"network": sorted(m)} for m in sorted(networks, key=sorted) if m not in self._runs]
        config = self.spec.config
        run = partial(network_accuracy, replace(config, backend="local", address=None))
        grid = run_grid("value", {}, points, run, backend="ray", address=config.address)
        for point, result in zip(points, grid.results):
            accuracy = {int(i): a for i, a in result["accuracy"].items()}
            self._runs[frozenset(point["network"])] = accuracy, result["seconds"]
        return {"simulations": len(points), "ray_nodes": grid.ray_nodes}

    def game(self, read: set[frozenset[int]]) -> Game:
        """The games of studies/value.py over these simulations; the networks read are added to `read`."""
        def utility(i: int, coalition: frozenset[int]) -> float:
            network = coalition | {i}
            read.add(network)
            return self.accuracy(network)[i]
        return utility

    def cost(self, read: set[frozenset[int]]) -> dict:
        return {"simulations": len(read), "seconds": round(sum(self._runs[m][1] for m in read), 3)}


def network_accuracy(config: SimulationConfig, point: dict) -> dict:
    """One network's simulation from plain inputs (in a Ray task): its members' accuracy and seconds.
    A Ray worker keeps its Runs (world built, torch warmed up) for the tasks that follow."""
    accuracy, seconds = _runs_here(config).timed(frozenset(point["network"]))
    return {"accuracy": {str(i): a for i, a in accuracy.items()}, "seconds": seconds}


@lru_cache(maxsize=1)
def _runs_here(config: SimulationConfig) -> Runs:
    return Runs(config)


def planned(runs: Runs, methods: Iterable[str]) -> set[frozenset[int]]:
    """The networks known to be read before any is simulated: the report's (the whole network, each
    model alone) and those of the methods that do not adapt to what they read (loo, exact)."""
    wanted = {frozenset(range(runs.n))} | {frozenset({i}) for i in runs.models}

    def record(i: int, coalition: frozenset[int]) -> float:
        wanted.add(coalition | {i})
        return 0.0
    for name, method in (("loo", leave_one_out), ("exact", exact_shapley)):
        if name in methods:
            method(record, runs.n, runs.models)
    return wanted


def value_study(config: SimulationConfig, settings: ValueSettings) -> dict:
    """The study's report: each method's value matrix, peer totals and cost; their agreement with exact."""
    settings.check(config)
    runs = Runs(config)
    on_ray = runs.run_at_once(planned(runs, settings.methods)) if config.backend == "ray" else None
    everyone = frozenset(range(runs.n))
    methods = {name: _method(name, runs, settings) for name in settings.methods}
    report = {
        "question": "the value of peer j's data to model i: V[j][i] (null on the diagonal and for attackers' models)",
        "config": config.to_report(),
        "settings": {**vars(settings), "methods": list(settings.methods)},
        "peers": _peers(runs),
        "accuracy": {"network": _row(runs.accuracy(everyone), runs.n),
                     "alone": _row({i: runs.accuracy(frozenset({i}))[i] for i in runs.models}, runs.n)},
        "methods": {name: _method_report(values, extra) for name, (values, extra) in methods.items()},
    }
    if "exact" in methods:
        exact = methods["exact"][0]
        report["agreement_with_exact"] = {
            name: {"spearman": _number(spearman(values, exact)),
                   "spearman_totals": _number(spearman(peer_totals(values), peer_totals(exact)))}
            for name, (values, _) in methods.items() if name != "exact"}
    if on_ray:
        report["ray"] = on_ray
    return report


def _method(name: str, runs: Runs, settings: ValueSettings) -> tuple[np.ndarray, dict]:
    """(values, what the report says of its cost and convergence)."""
    if name == "gtg":
        return one_run_estimate(runs, settings)
    read: set[frozenset[int]] = set()
    game, extra = runs.game(read), {}
    if name == "loo":
        values = leave_one_out(game, runs.n, runs.models)
    elif name == "exact":
        values = exact_shapley(game, runs.n, runs.models)
    else:
        mc = monte_carlo_shapley(game, runs.n, runs.models, permutations=settings.permutations,
                                 tolerance=settings.tolerance, seed=settings.seed, max_seconds=settings.max_seconds)
        values, extra = mc.values, {"convergence": _convergence(mc)}
    return values, {**extra, "cost": runs.cost(read)}


def _convergence(mc: MonteCarlo) -> dict:
    return {"permutations": mc.permutations, "max_stderr": _number(mc.max_stderr),
            "truncated": round(mc.truncated, 4)}


@dataclass
class _Log:
    values: np.ndarray
    refolds: int = 0
    folds: int = 0
    truncated_rounds: int = 0
    previous: dict[int, float] = field(default_factory=dict)  # each model's accuracy after its last fold


def one_run_estimate(runs: Runs, settings: ValueSettings) -> tuple[np.ndarray, dict]:
    """GTG-style values from one simulation of the whole network (the module docstring says how)."""
    spec, world, n = runs.spec, runs.world, runs.n
    index = {node_identity(spec.config.seed, j).public_key: j for j in range(n)}  # by Message.sender
    values = np.zeros((n, n))
    values[:, [j for j in range(n) if j not in runs.models]] = np.nan
    np.fill_diagonal(values, np.nan)
    log = _Log(values)

    def before_fold(r: int, i: int, node: LoggedNode) -> None:
        game, plan, read = _round_game(node, index, world, spec.config.batched)
        log.folds += 1
        folded = game(i, frozenset(index[m.sender] for m in node.received))
        if abs(folded - log.previous.get(i, np.inf)) < settings.tolerance:  # the round moved the model too little
            log.truncated_rounds += 1
        else:
            seed = [settings.seed, r, i]
            plan([frozenset(int(j) for j in order[:k] if j != i) for k in range(n + 1)]
                 for order in islice(orders(n, seed, antithetic=True), settings.round_permutations))
            mc = monte_carlo_shapley(game, n, [i], permutations=settings.round_permutations,
                                     tolerance=settings.tolerance, seed=seed, antithetic=True)
            log.values[:, i] += np.nan_to_num(mc.values[:, i])
        log.refolds += len(read)
        log.previous[i] = folded

    _, before = _timed(lambda: runs.run(range(n)))  # the plain simulation, timed before and after the run
    final, seconds = _timed(lambda: runs.run(range(n), before_fold))
    _, after = _timed(lambda: runs.run(range(n)))  # (the same load on a shared machine, on average)
    plain = (before + after) / 2
    alone = {frozenset({i}) for i in runs.models}
    gains = np.array([final[i] - runs.accuracy(frozenset({i}))[i] if i in final else np.nan for i in range(n)])
    seconds += runs.cost(alone)["seconds"]
    return efficient(log.values, gains), {"cost": {
        "simulations": 1, "alone_runs": len(alone), "seconds": round(seconds, 3), "refolds": log.refolds,
        "rounds_truncated": round(log.truncated_rounds / max(log.folds, 1), 4),
        "relative_to_one_simulation": round(seconds / plain, 2)}}


def _timed(run):
    """(what `run()` returns, its seconds)."""
    started = time.perf_counter()
    result = run()
    return result, time.perf_counter() - started


def _round_game(node: LoggedNode, index: dict[bytes, int], world, batched: bool) -> tuple[Game, Plan, set]:
    """This round's game of the node's model: its accuracy after folding only a coalition's messages
    into its model as it is now (peers that sent nothing change nothing); `plan`, which tells it the
    paths of coalitions it will be asked for in turn (the orders' prefixes), so that asked for one it
    scores the next AHEAD of its path with it; and the set of coalitions the game was asked for. A
    weights fold with a built-in rule needs no replay (LoggedNode.coalition_weights): the coalitions'
    weights are scored in one batched forward pass where the model allows (node/learning/batched.py).
    Otherwise the fold is replayed (LoggedNode.refold), a coalition at a time: one that trains
    (distillation) on a fresh copy of the model, optimizer state and all; a weights fold only sets
    weights, so one copy serves every coalition."""
    cache, read, ahead, combine = {}, set(), {}, node.coalition_weights()
    data = getattr(world, "data", None)  # a Flower client's evaluate has its own test data
    batch = batched and combine is not None and data is not None and eval_key(node.learner) is not None
    start = node.learner if batch else copy.deepcopy(node.learner)  # a batched scoring only reads its layers
    weights, sent = start.get_weights(), {index[m.sender]: m.sender for m in node.received}
    trains = combine is None and world.exchange != "weights"

    def replayed(key: frozenset[int]) -> float:
        learner = copy.deepcopy(start) if trains else start
        learner.set_weights(weights)
        node.refold(learner, {sent[j] for j in key})
        return world.accuracy(learner)

    def score(keys: Iterable[frozenset[int]]) -> None:
        keys = [key for key in dict.fromkeys(keys) if key not in cache]
        if combine is None:
            scores = [replayed(key) for key in keys]
        else:
            scores = _accuracies(world, start, combine([{sent[j] for j in key} for key in keys]), batch) if keys else []
        cache.update(zip(keys, scores))

    def plan(paths: Iterable[Iterable[frozenset[int]]]) -> None:
        for path in paths:
            keys = [frozenset(sent).intersection(coalition) for coalition in path]
            for k, key in enumerate(keys):
                ahead.setdefault(key, keys[k + 1:k + AHEAD])

    def utility(i: int, coalition: frozenset[int]) -> float:
        key = coalition.intersection(sent)
        read.add(key)
        if key not in cache:  # replays gain nothing by going ahead
            score([key, *ahead.get(key, ())] if combine is not None else [key])
        return cache[key]
    return utility, plan, read


def _accuracies(world, learner, stacked: list[np.ndarray], batch: bool) -> list[float]:
    """world.accuracy of `learner` with each of these weights (each tensor stacked over them): in
    one batched forward pass (`batch`: the same numbers, node/learning/batched.py) with the learner
    untouched, else set one after another."""
    if batch:
        return [round(score, 6) for score in weights_accuracies(learner, stacked, world.data.x_test, world.data.y_test)]
    scores = []
    for k in range(len(stacked[0])):
        learner.set_weights([t[k] for t in stacked])
        scores.append(world.accuracy(learner))
    return scores


def _peers(runs: Runs) -> list[dict]:
    plants, spec = runs.spec.plants, runs.spec
    planted = {**{j: "shuffled" for j in plants.shuffled}, **{j: f"tiny:{c}" for j, c in plants.tiny.items()},
               **{k: f"duplicate of {j}" for k, j in plants.copies.items()}}
    return [{"index": j, "id": node_identity(spec.config.seed, j).peer_id, "attack": spec.attackers.get(j),
             "plant": planted.get(j), "num_examples": int(len(runs.world.parts[j]))} for j in range(runs.n)]


def _method_report(values: np.ndarray, extra: dict) -> dict:
    return {"values": [[_number(v) for v in row] for row in values],
            "totals": [round(float(t), 6) for t in peer_totals(values)], **extra}


def _row(by_model: dict[int, float], n: int) -> list[float | None]:
    return [by_model.get(i) for i in range(n)]


def _number(x: float) -> float | None:
    """JSON has no NaN: null."""
    return None if not np.isfinite(x) else round(float(x), 6)
