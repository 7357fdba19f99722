"""`manymodels study homogeneity`: as models grow, do they behave more alike, and how much more alike
does a network make them? (studies/homogeneity.py says what is measured.)

The grid: every MLP width x initialisation seed x data resample is one point (studies/grid.py), and a
point trains each node's model three ways on the simulator's engine (node/sim/simulator.py), with the
same specs as `manymodels simulate`: alone on its own data, in the network with each exchange kind, and
one model pooled on everyone's data. A point's seed is the network's (initial parameters, data order,
message timing: the "initialisation"); its resample is the data seed (the training subsample, label
noise and partition: the "sampling"). What a point keeps is every model's log-probabilities on the
held-out test set (float16, so the results file stays a few megabytes) and its training error; the
analysis runs over the whole grid afterwards, so a rerun with another `loss` trains nothing. With
`config.backend` "ray" the points run at once as Ray tasks over the cluster at `config.address`
(studies/ray_grid.py), with the same results.

For a node's model the data draw is (resample, node): which training data it saw. The pooled model has
one draw per resample."""
from __future__ import annotations

import base64
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from manymodels.node.sim.simulator import baseline_models, make_world, run_models
from manymodels.node.sim.spec import SimulationConfig, SimulationSpec
from manymodels.node.spec import SpecError

from .grid import OnPoint, run_grid
from .homogeneity import LOSSES, decompose, log_softmax, mean_disagreement

EXCHANGES = ("weights", "distill", "synthetic")
FITS = 0.01  # a model "fits its training labels" (interpolates) at a training error at most this


@dataclass(frozen=True)
class HomogeneitySettings:
    widths: tuple[int, ...] = (4, 16, 64, 256, 1024)
    seeds: int = 2  # initialisations
    resamples: int = 2  # data draws
    exchanges: tuple[str, ...] = EXCHANGES
    loss: str = "ce"

    def check(self, config: SimulationConfig) -> None:
        if not self.widths or min(self.widths) < 1 or len(set(self.widths)) != len(self.widths):
            raise SpecError(f"--widths must be distinct hidden-layer widths of at least 1, got {list(self.widths)}")
        if self.seeds < 1 or self.resamples < 1 or self.seeds * self.resamples < 2:
            raise SpecError("--seeds and --resamples must be at least 1, and give at least 2 runs to compare")
        unknown = [x for x in self.exchanges if x not in EXCHANGES]
        if unknown or len(set(self.exchanges)) != len(self.exchanges):
            raise SpecError(f"--exchanges: distinct kinds among {', '.join(EXCHANGES)}, "
                            f"got {', '.join(self.exchanges)}")
        if self.loss not in LOSSES:
            raise SpecError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if config.client_app or config.attacks or config.plants or config.model != "mlp":
            raise SpecError("the homogeneity study sweeps the width of the built-in mlp: no --client-app, attacks, "
                            "planted peers or other model")
        if config.nodes < 2:
            raise SpecError(f"--nodes: the study compares models trained alone and in a network: at least 2, "
                            f"got {config.nodes}")

    def settings(self) -> list[str]:
        """The training settings, in the report's order."""
        return ["alone", *self.exchanges, "pooled"]


def homogeneity_study(config: SimulationConfig, settings: HomogeneitySettings, results: Path | None = None,
                      on_point: OnPoint | None = None) -> dict:
    """The study's report; `results` is the resumable file of its grid, `on_point` studies/grid.py's."""
    settings.check(config)
    for exchange in ("weights", *settings.exchanges):  # a mistake in the options stops the study before it runs
        SimulationSpec.parse(replace(config, exchange=exchange))
    points = [{"width": w, "seed": config.seed + s, "resample": config.seed + r}
              for w in settings.widths for s in range(settings.seeds) for r in range(settings.resamples)]
    started, cpu = time.perf_counter(), time.process_time()
    grid = run_grid("homogeneity", {"config": config.to_report(), "exchanges": list(settings.exchanges)}, points,
                    partial(run_point, replace(config, backend="local", address=None), settings.exchanges),
                    results, on_point, config.backend, config.address)
    report = analyse(config, settings, grid.results)
    report["grid"] = {"points": len(points), "run": grid.run, "resumed": len(points) - grid.run,
                      "seconds": round(time.perf_counter() - started, 1),
                      "cpu_seconds": round(time.process_time() - cpu + grid.cpu_seconds, 1),
                      **({"ray_nodes": grid.ray_nodes} if grid.ray_nodes else {})}
    return report


def run_point(config: SimulationConfig, exchanges: tuple[str, ...], point: dict) -> dict:
    """One width, seed and resample trained every way: each model's held-out log-probabilities (packed)
    and training error, the test labels and the model's parameter count."""
    base = replace(config, hidden=(point["width"],), seed=point["seed"], data_seed=point["resample"])
    spec = SimulationSpec.parse(replace(base, exchange="weights"))  # the baselines exchange nothing
    world = make_world(spec)
    alone, pooled = baseline_models(spec, world)
    models = {"alone": alone, "pooled": list(pooled.values())}
    for exchange in exchanges:
        networked = SimulationSpec.parse(replace(base, exchange=exchange))
        models[exchange] = list(run_models(networked, make_world(networked)).values())
    data, parts = world.data, world.parts
    own = {"pooled": [np.arange(len(data.y_train))]}  # each model's training data
    return {
        "labels": data.y_test.tolist(),
        "parameters": int(sum(a.size for a in alone[0].get_weights())),
        "training_examples": {"nodes": [len(i) for i in parts], "pooled": len(data.y_train)},
        "log_probs": {k: _pack(np.stack([log_softmax(m.predict(data.x_test)) for m in ms]))
                      for k, ms in models.items()},
        "train_error": {k: [round(1 - m.evaluate(data.x_train[i], data.y_train[i])["accuracy"], 6)
                            for m, i in zip(ms, own.get(k, parts))] for k, ms in models.items()},
    }


def _pack(a: np.ndarray) -> dict:
    return {"shape": list(a.shape), "float16": base64.b64encode(a.astype("<f2").tobytes()).decode()}


def _unpack(packed: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(packed["float16"]), dtype="<f2").reshape(packed["shape"]).astype(float)


def analyse(config: SimulationConfig, settings: HomogeneitySettings, done: list[dict]) -> dict:
    """The report over the grid's results (in the order of the points: width, then seed, then resample)."""
    names, per = settings.settings(), settings.seeds * settings.resamples
    rows = [_width(settings, names, done[k * per:(k + 1) * per]) for k in range(len(settings.widths))]
    curves = {name: {key: [row[name][key] for row in rows] for key in rows[0][name]} for name in names}
    return {
        "question": "as models grow, do they behave more alike, and how much more alike does a network make them?",
        "config": config.to_report(),
        "settings": {"widths": list(settings.widths), "seeds": settings.seeds, "resamples": settings.resamples,
                     "exchanges": list(settings.exchanges), "loss": settings.loss},
        "widths": list(settings.widths),
        "parameters": [done[k * per]["parameters"] for k in range(len(settings.widths))],
        "training_examples": done[0]["training_examples"],
        "curves": curves,
        "shape": {name: _shape(settings.widths, curves[name]) for name in names},
        "network": {x: _network(curves[x], curves["alone"]) for x in settings.exchanges},
        "disagreement_matrix": {"settings": names, "by_width": [row["matrix"] for row in rows]},
    }


def _width(settings: HomogeneitySettings, names: list[str], runs: list[dict]) -> dict:
    """Every setting's numbers at one width, and the settings x settings disagreement matrix."""
    y = np.array(runs[0]["labels"])
    row, labels = {}, {}
    for name in names:
        by_run = np.stack([_unpack(run["log_probs"][name]) for run in runs])  # (seed x resample, models, X, K)
        within = [mean_disagreement(one) for one in by_run.argmax(-1)]  # between the nodes of one run
        z = by_run.reshape(settings.seeds, -1, *by_run.shape[2:])  # data draw = (resample, model)
        predicted = z.argmax(-1)
        labels[name] = predicted.reshape(-1, len(y))
        row[name] = {**decompose(z, y, settings.loss).to_json(),
                     "disagreement": _round(mean_disagreement(labels[name])),
                     "within_run_disagreement": _round(np.mean(within)),
                     "accuracy": _round(np.mean(predicted == y)),
                     "train_error": _round(np.mean([e for run in runs for e in run["train_error"][name]]))}
    row["matrix"] = [[_round(mean_disagreement(labels[a], None if a == b else labels[b])) for b in names]
                     for a in names]
    return row


def _shape(widths: tuple[int, ...], curve: dict) -> dict:
    """Where the setting first fits its training labels, where its variance peaks, and whether that peak
    lies inside the grid (a rise then a fall) rather than at an end."""
    peak = int(np.argmax(curve["variance"]))
    fits = next((w for w, e in zip(widths, curve["train_error"]) if e <= FITS), None)
    return {"interpolation_width": fits, "variance_peak_width": widths[peak],
            "variance_peaks_inside": 0 < peak < len(widths) - 1}


def _network(networked: dict, alone: dict) -> dict:
    """How much more alike the networked models are than the models trained alone, width by width:
    1 - (networked / alone) of the disagreement between the nodes of one run, and of the variance."""
    def alike(key):
        return [None if not a else _round(1 - n / a) for n, a in zip(networked[key], alone[key])]
    return {"within_run_disagreement": alike("within_run_disagreement"), "variance": alike("variance")}


def _round(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 6)
