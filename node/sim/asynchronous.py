"""The asynchronous schedule (`--schedule async`): gossip learning on virtual time, no round and no
barrier. Each node trains for its own step's duration (node/sim/clocks.py), then publishes, folds
what has arrived since its last fold and starts its next step at once; meanwhile messages travel
through the memory network's link model (latency, jitter, bandwidth, loss). A node that is away
(churn) trains, sends and receives nothing (the network drops what would reach it); it keeps its
model, loses the step it was in, and starts a fresh one when it returns.

Events run in virtual-time order; at one instant churn comes first, then steps, then sampling, and
ties go in the order the events were scheduled, so a run repeats for a seed. Every node's accuracy
is sampled at the same instants, one median step apart (Clocks.round_ms), --rounds of them: the
report's `history_ms` says when each history entry was taken, as it says when each synchronous
round ended."""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..core.node import Node
from ..learning.learner import Learner
from .attacks import AttackContext, folds
from .clocks import NEVER
from .network import MemoryNetwork
from .series import Series, counts, new_series, record
from .spec import SimulationSpec

LEAVE, RETURN, STEP, SAMPLE = range(4)  # what happens at one instant, in this order


@dataclass
class _Clock:
    """One node's own time."""
    steps: int = 0  # training steps done
    generation: int = 0  # one more each time it leaves: a step scheduled before is void
    online: bool = True
    left_ms: float = 0.0
    away_ms: float = 0.0
    first_publish_ms: float | None = None


def history_ms(spec: SimulationSpec) -> list[float] | None:
    """When each history entry of a report was taken, in virtual ms: the sampling instants of an
    asynchronous run, the ends of a synchronous run's rounds given --speeds (else None: the report
    stays as it was)."""
    c = spec.config
    if c.schedule == "async":
        return [round((r + 1) * spec.clocks.round_ms, 3) for r in range(c.rounds)]
    return spec.clocks.barrier_ms(c.rounds) if c.speeds != "same" else None


def gossip(spec: SimulationSpec, nodes: list[Node], network: MemoryNetwork, context: AttackContext,
           accuracy: Callable[[Learner], float], members: list[int],
           on_sample: Callable[[int, float], None] | None = None,
           before_fold: Callable[[int, int, Node], None] | None = None) -> Series:
    """Run the network of `members` (spec indices; `nodes` by position) until its last sampling
    instant; each node's series, with its clock's numbers under "clock"."""
    clocks, rounds = spec.clocks, spec.config.rounds
    events: list[tuple[float, int, int, int, int]] = []  # (ms, what, order, position or sample, generation)
    order = itertools.count()

    def at(ms: float, what: int, k: int, generation: int = 0) -> None:
        heapq.heappush(events, (ms, what, next(order), k, generation))

    position = {i: k for k, i in enumerate(members)}
    for k, i in enumerate(members):
        at(clocks.step_ms(i, 0), STEP, k)
    for i, leave, back in clocks.away:
        if i in position:
            at(leave, LEAVE, position[i])
            if back < NEVER:
                at(back, RETURN, position[i])
    for r in range(rounds):
        at((r + 1) * clocks.round_ms, SAMPLE, r)
    state, series = [_Clock() for _ in nodes], new_series(len(nodes))
    before = [counts(node) for node in nodes]
    while events:
        ms, what, _, k, generation = heapq.heappop(events)
        network.run_until(ms)
        context.round = int(ms // clocks.round_ms)
        if what == SAMPLE:
            for j, node in enumerate(nodes):
                series[j]["history"].append(accuracy(node.learner))
                record(series[j], node, before[j])
                before[j] = counts(node)
            if on_sample:
                on_sample(k + 1, float(np.mean([series[j]["history"][-1] for j, i in enumerate(members)
                                                 if i not in spec.attackers])))
            if k == rounds - 1:
                break
            continue
        one = state[k]
        if what == STEP and generation == one.generation:
            _step(spec, nodes[k], members[k], one, ms, context.round, before_fold)
            at(ms + clocks.step_ms(members[k], one.steps), STEP, k, generation)
        elif what in (LEAVE, RETURN) and one.online == (what == LEAVE):
            network.set_online(nodes[k].id, what == RETURN)
            one.online = what == RETURN
            if what == LEAVE:
                one.generation, one.left_ms = one.generation + 1, ms
            else:
                one.away_ms += ms - one.left_ms
                at(ms + clocks.step_ms(members[k], one.steps), STEP, k, one.generation)
    for k, one in enumerate(state):
        away = one.away_ms + (0.0 if one.online else network.now_ms - one.left_ms)
        series[k]["clock"] = {"step_ms": round(float(np.mean(clocks.steps_ms[members[k]])), 3),
                              "local_steps": one.steps, "away_ms": round(away, 3),
                              "first_publish_ms": one.first_publish_ms}
    return series


def _step(spec: SimulationSpec, node: Node, index: int, clock: _Clock, ms: float, sample: int,
          before_fold: Callable[[int, int, Node], None] | None) -> None:
    """The end of a node's training step: its model goes out, what arrived goes in."""
    node.train(spec.node.local_epochs)
    node.publish()
    clock.steps += 1
    if clock.first_publish_ms is None:
        clock.first_publish_ms = round(ms, 3)
    if folds(spec.attackers, index):
        if before_fold:
            before_fold(sample, index, node)
        node.fold()
