"""What the simulator does for many nodes together, with the same numbers as each node alone.
Train: a node trains in a batch (node/learning/batched.py) when its learner can and its exchange
adds no samples of peers to its data. Fold: weight folds with a linear built-in rule (fedavg,
gossip), judged and merged in one stacked computation. Sign and verify: on a thread per core
(`Threads`), since Ed25519 signing (pyca/cryptography) and verification (libsodium) let go of the
GIL."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ..core.exchange import WeightGossip, flat_rows, split_rows
from ..core.node import Node, sealed, sealed_together
from ..core.reputation import stacked_outlier_ratios
from ..learning.batched import fit_batches

T = TypeVar("T")
R = TypeVar("R")
_FOLD_BLOCK = 1024  # nodes per stacked fold: (block, inputs, parameters) float64, a few times over


class Threads:
    """A thread per core this process may use, for work that lets go of the GIL, and one more for
    work that runs alongside the caller (`soon`)."""

    def __init__(self, pool: ThreadPoolExecutor | None, count: int, aside: ThreadPoolExecutor | None = None) -> None:
        self.pool, self.count, self.aside = pool, count, aside

    def soon(self, function: Callable[[], R]) -> Callable[[], R]:
        """function() started on the thread aside (at once, with one core), and a call that waits
        for its result."""
        if self.aside is None:
            result = function()
            return lambda: result
        return self.aside.submit(function).result

    def each(self, function: Callable[[T], R], items: list[T]) -> list[R]:
        """[function(item) for item in items], in `count` interleaved parts on the threads."""
        if self.pool is None or len(items) < 2:
            return [function(item) for item in items]
        parts = list(self.pool.map(lambda part: [function(item) for item in part],
                                   [items[k::self.count] for k in range(self.count)]))
        out: list = [None] * len(items)
        for k, part in enumerate(parts):
            out[k::self.count] = part
        return out


@contextlib.contextmanager
def threads() -> Iterator[Threads]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cores < 2:
        yield Threads(None, 1)
        return
    with (ThreadPoolExecutor(cores, thread_name_prefix="manymodels-sim") as pool,
          ThreadPoolExecutor(1, thread_name_prefix="manymodels-aside") as aside):
        yield Threads(pool, cores, aside)


def publish_nodes(nodes: list[Node], threads: Threads) -> None:
    """Every node's publish(), in this order: the honest nodes' payloads made and numbered one by
    one and sealed together (sealed_together: signed on the threads), every message sent as
    publish() sends it."""
    jobs = [(node, payloads) for node in nodes if node.outbound is sealed and (payloads := node.next_payloads())]
    messages = dict(zip((id(node) for node, _ in jobs), sealed_together(jobs, threads.each)))
    for node in nodes:
        for data, kind in messages.get(id(node), []) if node.outbound is sealed else node.publication():
            node.send_to_neighbours(data, kind)


def train_nodes(nodes: list[Node], epochs: int, batched: bool) -> None:
    """Every node's train(epochs); with `batched`, those that can in batches, equal to one by one."""
    candidates = [node for node in nodes if node.exchange.extra() is None] if batched else []
    chosen = {id(candidates[i]) for i in fit_batches([node.learner for node in candidates], epochs)}
    for node in nodes:
        if id(node) not in chosen:
            node.train(epochs)


@dataclass
class _Fold:
    """A node's weight fold, its inbox taken: its own weights and each sender's (decoded, claimed examples)."""
    node: Node
    own: list[np.ndarray]
    peers: dict[bytes, tuple[list[np.ndarray], int]]


def fold_nodes(nodes: list[Node], batched: bool, cores: Threads | None = None) -> None:
    """Every node's fold(); with `batched`, the weight folds of a linear built-in rule together, in
    groups of as many inputs of the same shapes: WeightGossip.fold step for step (judge every sender
    against the median of all, score, drop the banned, merge by the rule's coefficients), stacked;
    the judging split between the `cores` (numpy's sorts and sums let go of the GIL)."""
    groups: dict[tuple[int, tuple], list[_Fold]] = {}  # by inputs and tensor shapes
    for node in nodes:
        fold = _taken(node) if batched else None
        if fold is None:
            node.fold()
        elif fold.peers:
            key = (len(fold.peers) + 1, tuple(t.shape for t in fold.own))
            groups.setdefault(key, []).append(fold)
    for folds in groups.values():
        for start in range(0, len(folds), _FOLD_BLOCK):
            _fold_together(folds[start:start + _FOLD_BLOCK], cores or Threads(None, 1))


def _taken(node: Node) -> _Fold | None:
    """The node's weight fold with its inbox taken, or None where it folds alone: another exchange
    or node class, a rule that is not linear and built in, weights not all float32."""
    exchange = node.exchange
    if (type(node) is not Node or type(exchange) is not WeightGossip or not exchange.builtin_rule
            or exchange.rule.definition.coefficients is None):
        return None
    if not exchange.pending:
        return _Fold(node, [], {})
    own = node.learner.get_weights()
    if any(t.dtype != np.float32 for t in own):
        return None
    return _Fold(node, own, exchange.take_decoded(own))


def _fold_together(folds: list[_Fold], cores: Threads) -> None:
    """Folds with as many inputs of the same shapes: each node's own weights and its senders' in one stack."""
    stacked = flat_rows([tensors for f in folds for tensors in (f.own, *(t for t, _ in f.peers.values()))]
                        ).reshape(len(folds), len(folds[0].peers) + 1, -1)
    ratios = np.concatenate(cores.each(stacked_outlier_ratios, np.array_split(stacked, cores.count)))
    rows, coefficients = [], []
    for k, fold in enumerate(folds):
        node, exchange = fold.node, fold.node.exchange
        node.score(list(fold.peers), ratios[k, 1:])
        kept = {peer: one for peer, one in fold.peers.items() if peer not in node.banned}
        if len(kept) < len(fold.peers):  # a sender banned just now: this fold goes on alone
            if kept:
                _apply(node, exchange.merge(node.view, fold.own, kept))
            continue
        found = exchange.coefficients(node.view, [count for _, count in kept.values()])
        if found is None:
            node.refuse("rule_cannot_fold")
        else:
            rows.append(k)
            coefficients.append(found)
    if rows:
        chosen = stacked if len(rows) == len(folds) else stacked[rows]  # a copy: only when some fold left
        merged = split_rows(np.einsum("gi,gij->gj", np.array(coefficients), chosen), folds[0].own)
        for j, k in enumerate(rows):
            folds[k].node.learner.set_weights([tensor[j] for tensor in merged])


def _apply(node: Node, merged: list[np.ndarray] | None) -> None:
    """A merge into the node's learner; None (too few inputs for the rule) is counted as a refusal."""
    if merged is None:
        node.refuse("rule_cannot_fold")
    else:
        node.learner.set_weights(merged)
