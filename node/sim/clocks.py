"""Each node's own clock in a simulation: how long its training steps take (`--speeds`) and when it
is away (`--churn`), drawn by seed or read from a file. Pure: options in, durations and intervals
out, in virtual milliseconds from the start of the run (docs/SIMULATION.md has the file formats).

A training step is one `node.train(local_epochs)`; a node of speed 1 takes BASE_STEP_MS per local
epoch. The asynchronous schedule runs each node on these durations; the synchronous one waits at
every round for the slowest node, which is how long its rounds last in virtual time."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BASE_STEP_MS = 1_000.0  # one local epoch of a node of speed 1, in virtual ms
NEVER = math.inf  # a node that leaves for good returns at NEVER


class ClockError(ValueError):
    """A --speeds or --churn value that cannot be used: one line for the user."""


@dataclass(frozen=True)
class Clocks:
    steps_ms: tuple[tuple[float, ...], ...] = ()  # per node: the durations of its training steps, in turn, cycled
    away: tuple[tuple[int, float, float], ...] = ()  # (node, leave_ms, return_ms), by leave_ms

    @classmethod
    def parse(cls, speeds: str, churn: str, nodes: int, local_epochs: int, seed: int, rounds: int) -> Clocks:
        """Random churn is drawn up to the end of an asynchronous run: --rounds median steps."""
        clocks = cls(parse_speeds(speeds, nodes, local_epochs, seed))
        return cls(clocks.steps_ms, parse_churn(churn, nodes, seed, rounds * clocks.round_ms))

    def step_ms(self, node: int, step: int) -> float:
        """How long node's `step`-th training step (from 0) takes."""
        steps = self.steps_ms[node]
        return steps[step % len(steps)]

    @property
    def round_ms(self) -> float:
        """The median node's mean step: the unit of an asynchronous run (its length is --rounds of
        them) and the interval at which its report samples every node's accuracy."""
        return float(np.median([np.mean(steps) for steps in self.steps_ms]))

    def barrier_ms(self, rounds: int) -> list[float]:
        """When each synchronous round ends: every round waits for the slowest node's step."""
        ends = np.cumsum([max(self.step_ms(i, r) for i in range(len(self.steps_ms))) for r in range(rounds)])
        return [round(float(t), 3) for t in ends]


def parse_speeds(spec: str, nodes: int, local_epochs: int, seed: int) -> tuple[tuple[float, ...], ...]:
    """Each node's step durations from `same`, `lognormal:SIGMA`, `slow:FRACTION:FACTOR` or a
    trace file (.csv or .json)."""
    name, _, arg = spec.partition(":")
    step = BASE_STEP_MS * local_epochs
    if spec == "same":
        return ((step,),) * nodes
    if name == "lognormal":
        sigma = _number(arg, f"--speeds {spec!r}", "lognormal:SIGMA with SIGMA >= 0", lambda v: v >= 0)
        factors = np.exp(np.random.default_rng([seed, 0x5BEED]).normal(0.0, sigma, nodes))
        return tuple((round(float(step * f), 3),) for f in factors)
    if name == "slow":
        fraction, _, factor = arg.partition(":")
        fraction = _number(fraction, f"--speeds {spec!r}", "slow:FRACTION:FACTOR with FRACTION in (0, 1]", lambda v: 0 < v <= 1)
        factor = _number(factor, f"--speeds {spec!r}", "slow:FRACTION:FACTOR with FACTOR > 0", lambda v: v > 0)
        slow = set(np.random.default_rng([seed, 0x510]).permutation(nodes)[:max(1, round(fraction * nodes))].tolist())
        return tuple((step * factor if i in slow else step,) for i in range(nodes))
    if spec.endswith((".csv", ".json")):
        return _trace(Path(spec), nodes)
    raise ClockError(f"--speeds {spec!r}: expected same, lognormal:SIGMA, slow:FRACTION:FACTOR or a trace file "
                     f"(.csv or .json)")


def _number(text: str, option: str, expected: str, ok) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and ok(value)):
        raise ClockError(f"{option}: expected {expected}")
    return value


def _trace(path: Path, nodes: int) -> tuple[tuple[float, ...], ...]:
    """A JSON list with one entry per node (a duration, or a list of them), or CSV rows
    `node,step_ms` (a node's rows in turn): milliseconds of virtual time per training step."""
    try:
        text = path.read_text()
        if path.suffix == ".json":
            entries = json.loads(text)
            per_node = {i: e if isinstance(e, list) else [e] for i, e in enumerate(entries)} \
                if isinstance(entries, list) else None
        else:
            per_node = {}
            for row in csv.reader(line for line in text.splitlines() if line.strip() and not line.startswith("node")):
                per_node.setdefault(int(row[0]), []).append(row[1])
        steps = [tuple(float(v) for v in per_node[i]) for i in range(nodes)] if per_node is not None else None
    except OSError as exc:
        raise ClockError(f"cannot read speed trace {path}: {exc.strerror}") from None
    except (ValueError, IndexError, TypeError, KeyError):
        steps = None
    if steps is None or not all(s and all(math.isfinite(v) and v > 0 for v in s) for s in steps):
        raise ClockError(f"speed trace {path}: expected positive step durations in ms for each of nodes "
                         f"0..{nodes - 1} (docs/SIMULATION.md)")
    return tuple(steps)


def parse_churn(spec: str, nodes: int, seed: int, until_ms: float) -> tuple[tuple[int, float, float], ...]:
    """When nodes are away: `random:UP_S:DOWN_S` (each node online for exponential times of mean
    UP_S virtual seconds, away for DOWN_S, up to `until_ms`) or a CSV file of
    `node,leave_ms,return_ms` rows (an empty return_ms: it never returns)."""
    if not spec:
        return ()
    name, _, arg = spec.partition(":")
    if name == "random":
        up, _, down = arg.partition(":")
        means = [1000.0 * _number(v, f"--churn {spec!r}", "random:UP_S:DOWN_S, both > 0", lambda v: v > 0) for v in (up, down)]
        return _random_churn(nodes, np.random.default_rng([seed, 0xC4C4]), *means, until_ms)
    if spec.endswith(".csv"):
        return _churn_file(Path(spec), nodes)
    raise ClockError(f"--churn {spec!r}: expected random:UP_S:DOWN_S or a .csv file of node,leave_ms,return_ms rows")


def _random_churn(nodes: int, rng: np.random.Generator, up_ms: float, down_ms: float,
                  until_ms: float) -> tuple[tuple[int, float, float], ...]:
    away = []
    for i in range(nodes):
        t = rng.exponential(up_ms)
        while t < until_ms:
            back = t + rng.exponential(down_ms)
            away.append((i, round(float(t), 3), round(float(back), 3)))
            t = back + rng.exponential(up_ms)
    return tuple(sorted(away, key=lambda a: (a[1], a[0])))


def _churn_file(path: Path, nodes: int) -> tuple[tuple[int, float, float], ...]:
    try:
        rows = [row for row in csv.reader(path.read_text().splitlines()) if row and not row[0].startswith("node")]
        away = [(int(r[0]), float(r[1]), float(r[2]) if len(r) > 2 and r[2].strip() else NEVER) for r in rows]
    except OSError as exc:
        raise ClockError(f"cannot read churn file {path}: {exc.strerror}") from None
    except (ValueError, IndexError):
        raise ClockError(f"churn file {path}: expected node,leave_ms,return_ms rows") from None
    by_node: dict[int, list[tuple[float, float]]] = {}
    for node, leave, back in away:
        if not (0 <= node < nodes and 0 <= leave < back):
            raise ClockError(f"churn file {path}: node {node} away {leave:g}..{back:g} ms: nodes are 0..{nodes - 1} "
                             f"and leave_ms < return_ms")
        by_node.setdefault(node, []).append((leave, back))
    for node, spans in by_node.items():
        spans.sort()
        if any(b[0] < a[1] for a, b in zip(spans, spans[1:])):
            raise ClockError(f"churn file {path}: node {node}'s times away overlap")
    return tuple(sorted(away, key=lambda a: (a[1], a[0])))
