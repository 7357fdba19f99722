"""`simulate --protocol-only`: every node signs, sends, verifies and folds real weights messages, but
trains nothing. Its model is the configured architecture's initial parameters (the same on every
node, as a network of that model starts), and each round's update is a small random step from the
node's own seeded generator. What it is for: dissemination, bandwidth and Byzantine effects (the
protocol attacks, reputation, bans) at thousands of nodes, where training would take the time.

Its report is the simulator's without accuracies: the accuracy keys are absent (per node and in the
summary), and the summary counts the messages and times the rounds. Every message sent is either
dropped by the network or delivered and verified; every verified one is accepted or rejected:
messages_sent = messages_verified + messages_dropped (+ any still in flight at the end, none with
the default link model), messages_verified = messages_accepted + rejected_messages."""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from .attacks import Attack
from .network import MemoryNetwork
from .spec import SimulationSpec
from ..learning.datasets import DatasetError, load_dataset
from ..learning.learner import Learner, NDArrays
from ..learning.models import MODELS, build_model
from ..learning.recipe import node_seed
from ..spec import NodeData, SpecError

STEP = 0.01  # the standard deviation of a round's random update, per parameter
_ACCURACY_KEYS = ("final_accuracy", "local_only_accuracy", "pooled_accuracy", "history", "mean_accuracy",
                  "min_accuracy", "mean_local_only_accuracy")


class RandomStepLearner(Learner):
    """Parameters without data: each epoch of fit moves them by a random step."""

    def __init__(self, architecture: str, weights: NDArrays, rng: np.random.Generator) -> None:
        self.architecture = architecture
        self.num_examples = 1  # every node's update weighs alike
        self._weights = [w.copy() for w in weights]
        self._rng = rng

    def get_weights(self) -> NDArrays:
        return [w.copy() for w in self._weights]

    def set_weights(self, weights: NDArrays) -> None:
        if [w.shape for w in weights] != [w.shape for w in self._weights]:
            raise ValueError(f"{self.architecture} takes arrays shaped {[w.shape for w in self._weights]}")
        self._weights = [np.array(w, dtype=np.float32, copy=True) for w in weights]

    def fit(self, epochs: int, extra=None) -> dict[str, float]:
        for _ in range(epochs):
            for w in self._weights:
                w += self._rng.normal(0.0, STEP, w.shape).astype(np.float32)
        return {}

    def predict(self, x: np.ndarray) -> np.ndarray:
        raise ValueError("a protocol-only node makes no predictions")

    def distill(self, x: np.ndarray, target: np.ndarray, temperature: float, epochs: int) -> None:
        raise ValueError("a protocol-only node does not distill")


def check(spec: SimulationSpec) -> None:
    """What --protocol-only cannot run, in one line."""
    c = spec.config
    problems = [(c.exchange != "weights", f"--exchange {c.exchange}: it exchanges weights only"),
                (bool(c.client_app), "--client-app: it trains no learner"),
                (bool(c.plants), "--plant: it has no data to plant"),
                (spec.node.learner.privacy.on, "DP-SGD: it trains nothing"),
                ("labelflip" in spec.attackers.values(), "labelflip: it has no labels to flip"),
                (any(a not in MODELS for a in spec.archs), "--model forest: a forest has no weights to exchange"),
                (c.schedule != "sync", "--schedule async: it counts seconds per round"),
                (c.backend != "local", "--backend ray: it runs in this process")]
    for problem, text in problems:
        if problem:
            raise SpecError(f"--protocol-only cannot run with {text}")


class RoundClock:
    """Each round's seconds: from the end of the network's building (the last node handed out) to
    the first round's end, then from round end to round end."""

    def __init__(self, on_round: Callable[[int, float], None] | None) -> None:
        self.on_round = on_round
        self.ticks: list[float] = []

    def start(self) -> None:
        self.ticks = [time.perf_counter()]

    def tick(self, r: int, accuracy: float) -> None:
        self.ticks.append(time.perf_counter())
        if self.on_round:
            self.on_round(r, accuracy)

    @property
    def seconds(self) -> list[float]:
        return [round(b - a, 4) for a, b in zip(self.ticks, self.ticks[1:])]


class ProtocolWorld:
    """Where protocol-only nodes come from: the dataset gives only the models' shapes."""

    def __init__(self, spec: SimulationSpec, clock: RoundClock) -> None:
        check(spec)
        c = spec.config
        try:
            data = load_dataset(c.dataset, seed=c.seed, max_train=c.max_train, max_test=c.max_test)
        except DatasetError as exc:
            raise SpecError(str(exc)) from None
        self.spec, self.archs, self.clock = spec, spec.archs, clock
        self.exchange, self.probe, self.warnings, self.test_examples = "weights", None, [], 0
        self.num_classes, self.input_shape = data.num_classes, data.input_shape
        self.initial = {arch: [t.numpy().copy() for t in build_model(
            arch, data.input_shape, data.num_classes, seed=c.seed, hidden=spec.node.learner.training.hidden
        ).state_dict().values()] for arch in set(self.archs)}

    def member(self, i: int, attack: Attack | None) -> tuple[Learner, NodeData]:
        rng = np.random.default_rng(node_seed(self.spec.config.seed, i))
        learner = RandomStepLearner(self.archs[i], self.initial[self.archs[i]], rng)
        self.clock.start()
        return learner, NodeData(self.num_classes, [0] * self.num_classes, lambda: None, lambda: None,
                                 self.input_shape, (0.0, 0.0), rng)

    def accuracies(self, learners: list[Learner]) -> list[float]:
        return [math.nan] * len(learners)

    def baselines(self) -> tuple[list[float], dict[str, float]]:
        return [math.nan] * len(self.archs), {arch: math.nan for arch in self.archs}


def protocol_report(report: dict, network: MemoryNetwork, clock: RoundClock, distinct: int) -> dict:
    """The simulator's report of a protocol-only run: accuracies out, messages and round times in
    (`distinct`: how many different messages the verified ones were, each read and verified once)."""
    for node in report["nodes"]:
        for key in _ACCURACY_KEYS:
            node.pop(key, None)
    summary = report["summary"]
    for part in (summary, *summary["architectures"].values()):
        for key in _ACCURACY_KEYS:
            part.pop(key, None)
    accepted = sum(n["messages_accepted"] for n in report["nodes"])
    seconds = clock.seconds
    summary.update(
        messages_sent=network.sent, messages_verified=accepted + summary["rejected_messages"],
        messages_accepted=accepted, messages_distinct=distinct, messages_dropped=network.dropped,
        bytes_received=sum(n["bytes_received"] for n in report["nodes"]),
        seconds_per_round=seconds, mean_seconds_per_round=round(float(np.mean(seconds)), 4))
    return report
