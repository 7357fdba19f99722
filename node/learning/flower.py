"""Run an unmodified Flower client as a node's learner.

    app = load_client_app("examples/flower_client/client_app.py:app")   # or "my_pkg.client_app:app"
    learner = FlowerLearner(app, partition_id=3, num_partitions=8, run_config="lr=0.01", seed=0)

A client app is one of
  (a) a Flower `ClientApp(client_fn=...)` whose client_fn returns a `NumPyClient` or a `Client`,
  (b) a Flower `ClientApp()` in the Message API (`@app.train()`, `@app.evaluate()`),
  (c) a plain function `fn(context) -> NumPyClient` (or `Client`).
Every call goes through Flower's own `ClientApp.__call__` with Flower's own `Message`, `RecordDict`
and `Context`, so the client runs exactly as under Flower's SuperNode. A Flower client keeps no
model between messages (Flower's server holds it); here the learner holds the node's model, the
arrays it sends in every train/evaluate message, and `fit` keeps the arrays the client returns.
It speaks to the app through one of two adapters over `ClientAdapter` (the Context, seeding and
message delivery): `NumPyClientAdapter` for (a) and (c), in the records Flower's compat layer makes
of FitIns/EvaluateIns, and `MessageAdapter` for (b), in ArrayRecords and ConfigRecords.

Conventions (docs/FLOWER.md says the same for users):
* Context: `node_config = {"partition-id": i, "num-partitions": n}`, `run_config` = the defaults in
  `[tool.flwr.app.config]` of the app's pyproject.toml (found next to the app file or above it),
  overridden by `--run-config "k=v ..."` parsed by Flower's own parser (`flwr run --run-config`).
  One Context per learner, kept between calls (`context.state` persists, as in Flower).
* `fit(epochs)` sends `epochs` train messages; each runs as many local epochs as the client reads
  from its run_config. The train config (Flower's "config" ConfigRecord / FitIns.config) carries
  every run-config value, "server-round" (this learner's count of train messages) and the
  extra `fit_config` (e.g. FedProx's "proximal_mu").
* `evaluate()` sends an evaluate message and reports the client's metrics; "accuracy" is the
  first of ACCURACY_KEYS the client returns, else the first key containing "acc" (sorted).
* Initial arrays: a NumPyClient's `get_parameters`; if it returns none (Flower's templates leave
  the first model to the ServerApp), and always for a Message-API app, a zero-argument model
  factory: `FILE.py:app:Factory`, or else the module's `Net` (the name Flower's templates use).
* Optional, for distillation: `predict(self, parameters, x) -> logits` and
  `distill(self, parameters, x, target, config) -> parameters` on the NumPyClient, or
  `@app.query("predict")` and `@app.train("distill")` in the Message API (see FLOWER_HOOKS).
* Arrays that come out of a client are copied; integer tensors (e.g. BatchNorm's
  num_batches_tracked) travel as float64 and are cast back before they reach the client.
* Global RNGs (random, numpy, torch) are seeded before every client call, so a run repeats.

`import flwr` takes about a second: it happens inside the functions here, never at import.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import itertools
import logging
import random
import sys
import time
import tomllib
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .learner import Learner, NDArrays, Samples

# Metric names taken as the accuracy, in this order; after them, the first key containing "acc".
ACCURACY_KEYS = ("accuracy", "acc", "eval_acc", "eval_accuracy", "test_accuracy", "test_acc",
                 "val_accuracy", "val_acc")
DEFAULT_MODEL = "Net"  # the model class Flower's templates define
PREDICT_TYPE, DISTILL_TYPE = "query.predict", "train.distill"  # Message-API hooks
FLOWER_HOOKS = """\
NumPyClient:  def predict(self, parameters, x) -> logits (len(x), num_classes)
              def distill(self, parameters, x, target, config) -> parameters
                  target: rows of log_softmax(teacher_logits / T); config: temperature, epochs
Message API:  @app.query("predict"): content "arrays" + ArrayRecord "inputs" {"x"} -> reply ArrayRecord {"logits"}
              @app.train("distill"): content "arrays", "config" (temperature, epochs) and ArrayRecord
                  "probe" {"x", "target"} -> reply ArrayRecord with the new arrays"""

log = logging.getLogger("manymodels.flower")


class FlowerError(ValueError):
    """A client app that cannot be loaded or run as asked; the message is one line."""


# ---------------------------------------------------------------------------------------------
# --run-config


def parse_run_config(text: str | list[str] | None) -> dict[str, Any]:
    """`--run-config "k=v k2=v2"` exactly as `flwr run --run-config` parses it: Flower's own
    `parse_config_args` (TOML values: 1 is an int, 0.1 a float, true a bool, strings quoted;
    nested keys flattened with dots; one .toml file path also works)."""
    items = [text] if isinstance(text, str) else list(text or [])
    items = [item for item in items if item.strip()]
    if not items:
        return {}
    from flwr.common.config import parse_config_args

    try:
        return dict(parse_config_args(items))
    except Exception as exc:  # click.ClickException (bad TOML), ValueError, OSError for a .toml path
        reason = getattr(exc, "message", None) or str(exc)
        raise FlowerError(f"--run-config {' '.join(items)!r}: {reason}") from None


def _app_config(project: Path | None) -> dict[str, Any]:
    """The flattened [tool.flwr.app.config] of a Flower app's pyproject.toml, {} if none."""
    if project is None:
        return {}
    from flwr.common.config import flatten_dict

    try:
        with (project / "pyproject.toml").open("rb") as f:
            config = tomllib.load(f).get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})
        return dict(flatten_dict(config))
    except (OSError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise FlowerError(f"cannot read {project / 'pyproject.toml'}: {exc}") from None


def fuse_run_config(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Flower's `fuse_dicts`: overrides replace defaults; with defaults, an unknown key is an error."""
    if not defaults:
        return dict(overrides)
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise FlowerError(f"--run-config sets {', '.join(unknown)}, which the app's pyproject.toml does not "
                          f"define; it defines: {', '.join(sorted(defaults))}")
    from flwr.common.config import fuse_dicts

    return dict(fuse_dicts(defaults, overrides))


# ---------------------------------------------------------------------------------------------
# Loading a client app


@dataclass
class ClientAppSource:
    """A loaded client app. `kind`: "client_fn" (a), "message" (b) or "function" (c)."""

    spec: str
    app: Any  # the flwr ClientApp every message goes through
    kind: str
    module: ModuleType | None
    client_fn: Callable | None = None  # (a), (c): builds the client the optional hooks run on
    model: Callable[[], Any] | None = None  # zero-argument model factory for the first arrays
    model_name: str = ""
    project: Path | None = None  # the directory of the app's pyproject.toml, if any
    defaults: dict[str, Any] = field(default_factory=dict)  # its [tool.flwr.app.config]

    def run_config(self, overrides: str | dict[str, Any] | None = None) -> dict[str, Any]:
        parsed = overrides if isinstance(overrides, dict) else parse_run_config(overrides)
        return fuse_run_config(self.defaults, parsed)


_USAGE = "--client-app takes MODULE:ATTR or FILE.py:ATTR, optionally :MODEL after it"


def _split_spec(spec: str) -> tuple[str, bool, str, str]:
    """(module or file, is_file, attribute, model factory attribute or '')."""
    at = spec.rfind(".py:")
    if at >= 0:
        target, rest, is_file = spec[:at + 3], spec[at + 4:], True
    else:
        target, _, rest = spec.partition(":")
        is_file = target.endswith(".py")
    attr, _, model = rest.partition(":")
    if not target or not attr or ":" in model:
        raise FlowerError(f"{_USAGE}; got {spec!r}")
    return target, is_file, attr, model


def _import_file(path: Path) -> ModuleType:
    """Import a .py file as a module named by its stem (or a unique name if the stem is taken by
    another file); its directory goes on sys.path, so it can import its sibling modules."""
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None:
        if Path(getattr(existing, "__file__", "") or "").resolve() == path:
            return existing
        name = f"_manymodels_app_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
        if name in sys.modules:
            return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FlowerError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import(target: str, is_file: bool) -> ModuleType:
    try:
        if is_file:
            path = Path(target).expanduser().resolve()
            if not path.is_file():
                raise FlowerError(f"client app file {target} does not exist")
            return _import_file(path)
        cwd = str(Path.cwd())
        if cwd not in sys.path:  # as Flower's load_app: modules resolve from the current directory
            sys.path.insert(0, cwd)
        return importlib.import_module(target)
    except FlowerError:
        raise
    except ModuleNotFoundError as exc:
        raise FlowerError(f"cannot import client app {target}: {exc}") from None
    except Exception as exc:
        raise FlowerError(f"importing client app {target} raised {_where(exc)}") from exc


def _attribute(module: ModuleType, dotted: str, target: str) -> Any:
    obj: Any = module
    try:
        for part in dotted.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise FlowerError(f"{target} has no attribute {dotted}") from None
    return obj


def _project_dir(module: ModuleType) -> Path | None:
    """The nearest directory at or above the module's file whose pyproject.toml has [tool.flwr.app]."""
    file = getattr(module, "__file__", None)
    if not file:
        return None
    for folder in Path(file).resolve().parents:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            try:
                with candidate.open("rb") as f:
                    if "app" in tomllib.load(f).get("tool", {}).get("flwr", {}):
                        return folder
            except (OSError, tomllib.TOMLDecodeError):
                pass
            return None  # the nearest pyproject.toml decides
    return None


def _find_client_fn(app: Any) -> Callable | None:
    """The client_fn a `ClientApp(client_fn=...)` wraps. Flower keeps it only in the closure of
    its message handler (through any mods); read it there, so the optional hooks can build a client."""
    stack, seen = [app._call], set()
    while stack:
        fn = stack.pop()
        if id(fn) in seen or not hasattr(fn, "__code__"):
            continue
        seen.add(id(fn))
        cells = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__ or ())))
        if callable(cells.get("client_fn")):
            return cells["client_fn"]
        stack.extend(v for v in cells.values() if callable(v))
    return None


def _as_client_fn(fn: Callable) -> Callable:
    """Wrap `fn(context) -> NumPyClient | Client` as a client_fn returning a Client."""
    from flwr.client import NumPyClient

    def client_fn(context):
        client = fn(context)
        return client.to_client() if isinstance(client, NumPyClient) else client
    return client_fn


def load_client_app(spec: str) -> ClientAppSource:
    """Load `MODULE:ATTR` (importable from the current directory or sys.path) or `FILE.py:ATTR`
    (imported from its path), each optionally followed by `:MODEL`, a zero-argument factory in
    the same module that builds the model whose state gives the first arrays (default: `Net`)."""
    target, is_file, attr, model_attr = _split_spec(spec.strip())
    module = _import(target, is_file)
    obj = _attribute(module, attr, target)
    model = getattr(module, model_attr or DEFAULT_MODEL, None)
    if model_attr and not callable(model):
        raise FlowerError(f"{target} has no callable {model_attr} to build the first model from")
    return client_app_source(obj, spec=spec, module=module, model=model if callable(model) else None,
                             model_name=model_attr or DEFAULT_MODEL)


def client_app_source(obj: Any, *, spec: str | None = None, module: ModuleType | None = None,
                      model: Callable[[], Any] | None = None, model_name: str = "") -> ClientAppSource:
    """A ClientAppSource from an object in hand: a ClientApp (either style) or a function
    `context -> NumPyClient | Client`; `model` builds the first arrays where the client gives none."""
    from flwr.clientapp import ClientApp

    spec = spec or getattr(obj, "__qualname__", type(obj).__name__)
    module = module or sys.modules.get(getattr(obj, "__module__", "") or "", None)
    if isinstance(obj, ClientApp):
        if obj._call is not None:
            kind, app, client_fn = "client_fn", obj, _find_client_fn(obj)
        elif any(name.startswith("train.") for name in obj._registered_funcs):
            kind, app, client_fn = "message", obj, None
        else:
            raise FlowerError(f"{spec} is a ClientApp with neither a client_fn nor an @app.train() function")
    elif callable(obj) and not isinstance(obj, type):
        client_fn = _as_client_fn(obj)
        kind, app = "function", ClientApp(client_fn=client_fn)
    else:
        raise FlowerError(f"{spec} is a {type(obj).__name__}; expected a Flower ClientApp or a function "
                          "context -> NumPyClient")
    project = _project_dir(module) if module is not None else None
    return ClientAppSource(spec, app, kind, module, client_fn, model, model_name or getattr(model, "__name__", ""),
                           project, _app_config(project))


# ---------------------------------------------------------------------------------------------
# Helpers


def _where(exc: BaseException) -> str:
    """`Type: message (file:line)` for the innermost frame, one line."""
    frames = traceback.extract_tb(exc.__traceback__)
    place = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{place}".replace("\n", " ")


def _copy(arrays) -> NDArrays:
    """Own copies: tutorial clients return views of live tensors that a later call overwrites."""
    return [np.array(a, copy=True) for a in arrays]


def _scalar_metrics(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in dict(metrics or {}).items()
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}


class _OnceFilter(logging.Filter):
    """Let each distinct Flower log line through once: Flower logs some warnings (e.g. a client_fn
    returning a NumPyClient) on every message, and a simulation sends thousands."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


def _quiet_flower() -> None:
    flwr_log = logging.getLogger("flwr")
    if not any(isinstance(f, _OnceFilter) for f in flwr_log.filters):
        flwr_log.addFilter(_OnceFilter())


# ---------------------------------------------------------------------------------------------
# The adapters: one per dialect of client app


class ClientAdapter(ABC):
    """A client app and its Context, reached as Flower's SuperNode reaches it: every call is one
    seeded Message through the ClientApp. A subclass speaks one dialect: how the learner's calls
    become messages, and their replies arrays and metrics. Arrays go to the client in its own
    dtypes with their names; they come back as (arrays, names or None where the dialect has none)."""

    train_name = "train"  # what the dialect calls a train call, for messages

    def __init__(self, source: ClientAppSource, run_config: dict[str, Any], fit_config: dict[str, Any], *,
                 seed: int, node_id: int, run_id: int, node_config: dict[str, Any]) -> None:
        from flwr.app import Context, RecordDict

        self.source = source
        self.run_config = run_config
        self.fit_config = fit_config
        self.seed = seed
        self.context = Context(run_id=run_id, node_id=node_id, state=RecordDict(), run_config=run_config,
                               node_config=node_config)  # one per learner: context.state persists, as in Flower
        self.rounds = 0  # train messages sent
        self._calls = itertools.count()
        self._message_ids = itertools.count(1)

    @contextmanager
    def _seeded(self, seed: int | None = None) -> Iterator[None]:
        """Seed the global RNGs Flower clients use (torch's DataLoader shuffle, Net() init)."""
        if seed is None:
            seed = int.from_bytes(hashlib.sha256(f"{self.seed}/{next(self._calls)}".encode()).digest()[:4], "little")
        random.seed(seed)
        np.random.seed(seed)
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.manual_seed(seed)
        yield

    def _send(self, message_type: str, content, seed: int | None = None):
        """Deliver one message to the ClientApp, as a SuperNode would; the reply's content."""
        from flwr.app import DEFAULT_TTL, Message, Metadata

        node_id = self.context.node_id
        metadata = Metadata(run_id=self.context.run_id, message_id=f"{node_id}-{next(self._message_ids)}",
                            src_node_id=0, dst_node_id=node_id, reply_to_message_id="",
                            group_id=str(self.rounds), created_at=time.time(), ttl=DEFAULT_TTL,
                            message_type=message_type)
        message = Message(content=content, metadata=metadata)
        try:
            with self._seeded(seed):
                reply = self.source.app(message, self.context)
        except Exception as exc:
            raise FlowerError(f"client app {self.source.spec} failed on {message_type}: {_where(exc)}") from exc
        if reply.has_error():
            raise FlowerError(f"client app {self.source.spec} replied to {message_type} with error "
                              f"{reply.error.code}: {reply.error.reason}")
        return reply.content

    def _config(self, **extra: Any):
        """The train/evaluate config: the run config, "server-round", the fit config, `extra`."""
        from flwr.app import ConfigRecord

        return ConfigRecord({**self.run_config, "server-round": self.rounds, **self.fit_config, **extra})

    def _from_model(self, seed: int, why: str) -> tuple[list[str], NDArrays]:
        """The first arrays from the app's model factory, for a client that gives none (`why`)."""
        if self.source.model is None:
            raise FlowerError(f"{self.source.spec}: {why}, and its module has no {DEFAULT_MODEL} to build the first "
                              f"model from; name a zero-argument model factory: {self.source.spec}:MyModel")
        try:
            with self._seeded(seed):
                model = self.source.model()
        except Exception as exc:
            raise FlowerError(f"building the first model with {self.source.model_name}() raised {_where(exc)}") from exc
        keys, arrays = _named_arrays(model)
        if not arrays:
            raise FlowerError(f"{self.source.model_name}() gave no arrays")
        return keys, arrays

    def train(self, arrays: NDArrays, keys: list[str]) -> tuple[NDArrays, list[str] | None, dict[str, float]]:
        """One train message, the next server round: the arrays it returns and its scalar metrics,
        always with "num-examples"."""
        self.rounds += 1
        return self._train(arrays, keys)

    @abstractmethod
    def first_arrays(self, seed: int) -> tuple[list[str], NDArrays]:
        """(names, arrays) of the first model: the client's, else the model factory's."""

    @abstractmethod
    def hooks(self) -> tuple[bool, bool]:
        """Whether the client has the optional predict and distill hooks (FLOWER_HOOKS)."""

    @abstractmethod
    def _train(self, arrays: NDArrays, keys: list[str]) -> tuple[NDArrays, list[str] | None, dict[str, float]]:
        """`train` after the round count."""

    @abstractmethod
    def evaluate(self, arrays: NDArrays, keys: list[str]) -> dict[str, float]:
        """The client's scalar metrics on its own test data, with "loss" where it reports one."""

    @abstractmethod
    def predict(self, arrays: NDArrays, keys: list[str], x: np.ndarray) -> Any:
        """The client's logits for x (the learner checks their shape)."""

    @abstractmethod
    def distill(self, arrays: NDArrays, keys: list[str], x: np.ndarray, target: np.ndarray,
                settings: dict[str, Any]) -> tuple[NDArrays, list[str] | None]:
        """The arrays after the client's distill hook; `settings`: temperature and epochs."""


class NumPyClientAdapter(ClientAdapter):
    """A client_fn's NumPyClient (or Client), in the records Flower's compat layer makes of
    GetParametersIns, FitIns and EvaluateIns; the optional hooks run on a fresh client."""

    train_name = "fit"

    def first_arrays(self, seed: int) -> tuple[list[str], NDArrays]:
        from flwr.common import GetParametersIns, parameters_to_ndarrays
        from flwr.compat.common.recorddict_compat import getparametersins_to_recorddict, recorddict_to_getparametersres

        content = self._send("get_parameters", getparametersins_to_recorddict(GetParametersIns(config={})), seed)
        arrays = parameters_to_ndarrays(recorddict_to_getparametersres(content, keep_input=False).parameters)
        if arrays:
            return [str(i) for i in range(len(arrays))], arrays
        return self._from_model(seed, "its get_parameters returns no arrays")

    def _client(self):
        """A fresh client from the client_fn (for the optional hooks), seeded like a message."""
        with self._seeded():
            client = self.source.client_fn(self.context)
        return getattr(client, "numpy_client", client)

    def hooks(self) -> tuple[bool, bool]:
        if self.source.client_fn is None:
            return False, False
        client = self._client()
        return callable(getattr(client, "predict", None)), callable(getattr(client, "distill", None))

    def _ok(self, status, what: str) -> None:
        from flwr.common import Code

        if status.code != Code.OK:
            raise FlowerError(f"client app {self.source.spec} {what} failed: {status.message}")

    def _train(self, arrays: NDArrays, keys: list[str]) -> tuple[NDArrays, None, dict[str, float]]:
        from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.compat.common.recorddict_compat import fitins_to_recorddict, recorddict_to_fitres

        ins = FitIns(ndarrays_to_parameters(arrays), dict(self._config()))
        res = recorddict_to_fitres(self._send("train", fitins_to_recorddict(ins, keep_input=True)), keep_input=False)
        self._ok(res.status, "fit")
        return (parameters_to_ndarrays(res.parameters), None,
                {**_scalar_metrics(res.metrics), "num-examples": float(int(res.num_examples))})

    def evaluate(self, arrays: NDArrays, keys: list[str]) -> dict[str, float]:
        from flwr.common import EvaluateIns, ndarrays_to_parameters
        from flwr.compat.common.recorddict_compat import evaluateins_to_recorddict, recorddict_to_evaluateres

        ins = EvaluateIns(ndarrays_to_parameters(arrays), dict(self._config()))
        res = recorddict_to_evaluateres(self._send("evaluate", evaluateins_to_recorddict(ins, keep_input=True)))
        self._ok(res.status, "evaluate")
        return {"loss": float(res.loss), "num-examples": float(res.num_examples), **_scalar_metrics(res.metrics)}

    def predict(self, arrays: NDArrays, keys: list[str], x: np.ndarray) -> Any:
        return self._client().predict(_copy(arrays), np.array(x, copy=True))

    def distill(self, arrays: NDArrays, keys: list[str], x: np.ndarray, target: np.ndarray,
                settings: dict[str, Any]) -> tuple[NDArrays, None]:
        config = {**self.run_config, **self.fit_config, **settings}
        new = self._client().distill(_copy(arrays), np.array(x, copy=True), np.array(target, copy=True), config)
        return list(new), None


class MessageAdapter(ClientAdapter):
    """A Message-API ClientApp (`@app.train()`, `@app.evaluate()`, optionally `@app.query("predict")`
    and `@app.train("distill")`): arrays travel by name in an ArrayRecord, settings in a ConfigRecord."""

    def first_arrays(self, seed: int) -> tuple[list[str], NDArrays]:
        return self._from_model(seed, "a Message-API app has no get_parameters")

    def hooks(self) -> tuple[bool, bool]:
        funcs = self.source.app._registered_funcs
        return PREDICT_TYPE in funcs, DISTILL_TYPE in funcs

    @staticmethod
    def _record(arrays: NDArrays, keys: list[str]):
        from flwr.app import Array, ArrayRecord

        return ArrayRecord({k: Array(a) for k, a in zip(keys, arrays)})

    @staticmethod
    def _one(records: dict, preferred: str, what: str, message_type: str):
        if preferred in records:
            return records[preferred]
        if len(records) == 1:
            return next(iter(records.values()))
        raise FlowerError(f"the reply to {message_type} should hold one {what} (or one named {preferred!r}); "
                          f"it holds {sorted(records) or 'none'}")

    def _arrays(self, content, message_type: str) -> tuple[NDArrays, list[str]]:
        record = self._one(content.array_records, "arrays", "ArrayRecord", message_type)
        return [a.numpy() for a in record.values()], list(record.keys())

    def _metrics(self, content, message_type: str) -> dict[str, float]:
        return _scalar_metrics(self._one(content.metric_records, "metrics", "MetricRecord", message_type))

    def _train(self, arrays: NDArrays, keys: list[str]) -> tuple[NDArrays, list[str], dict[str, float]]:
        from flwr.app import RecordDict

        content = self._send("train", RecordDict({"arrays": self._record(arrays, keys), "config": self._config()}))
        new, names = self._arrays(content, "train")
        metrics = self._metrics(content, "train")
        if "num-examples" not in metrics:
            raise FlowerError(f"client app {self.source.spec}: the train reply's MetricRecord lacks 'num-examples' "
                              "(Flower's strategies weigh updates by it)")
        return new, names, metrics

    def evaluate(self, arrays: NDArrays, keys: list[str]) -> dict[str, float]:
        from flwr.app import RecordDict

        content = self._send("evaluate", RecordDict({"arrays": self._record(arrays, keys), "config": self._config()}))
        metrics = self._metrics(content, "evaluate")
        loss = next((metrics[k] for k in ("loss", "eval_loss", "test_loss", "val_loss") if k in metrics), None)
        if loss is not None:
            metrics.setdefault("loss", loss)
        return metrics

    def predict(self, arrays: NDArrays, keys: list[str], x: np.ndarray) -> Any:
        from flwr.app import Array, ArrayRecord, RecordDict

        content = self._send(PREDICT_TYPE, RecordDict({
            "arrays": self._record(arrays, keys), "inputs": ArrayRecord({"x": Array(np.ascontiguousarray(x))})}))
        record = self._one(content.array_records, "predictions", "ArrayRecord", PREDICT_TYPE)
        if "logits" not in record:
            raise FlowerError(f"the reply to {PREDICT_TYPE} lacks an array 'logits'; it has {sorted(record)}")
        return record["logits"].numpy()

    def distill(self, arrays: NDArrays, keys: list[str], x: np.ndarray, target: np.ndarray,
                settings: dict[str, Any]) -> tuple[NDArrays, list[str]]:
        from flwr.app import Array, ArrayRecord, RecordDict

        probe = ArrayRecord({"x": Array(np.ascontiguousarray(x)), "target": Array(np.ascontiguousarray(target))})
        content = self._send(DISTILL_TYPE, RecordDict({"arrays": self._record(arrays, keys),
                                                      "config": self._config(**settings), "probe": probe}))
        return self._arrays(content, DISTILL_TYPE)


# ---------------------------------------------------------------------------------------------
# The learner


class FlowerLearner(Learner):
    """A node's learner backed by a Flower client app (see the module docstring): it holds the
    node's model, and speaks to the client through the adapter for the app's dialect (`client`)."""

    def __init__(self, app: ClientAppSource | str | Any, *, partition_id: int = 0, num_partitions: int = 1,
                 run_config: str | dict[str, Any] | None = None, fit_config: dict[str, Any] | None = None,
                 seed: int = 0, init_seed: int | None = None, node_id: int | None = None, run_id: int = 1,
                 node_config: dict[str, Any] | None = None, architecture: str | None = None,
                 metric: str | None = None) -> None:
        """`node_config` adds to partition-id/num-partitions (a daemon's `--node-config`, as Flower's
        SuperNode takes it); `seed` seeds every client call, `init_seed` (default: seed) the first
        model, so nodes given one init_seed start alike; `metric` names the accuracy metric."""
        _quiet_flower()
        if isinstance(app, str):
            app = load_client_app(app)
        source = app if isinstance(app, ClientAppSource) else client_app_source(app)
        if not 0 <= partition_id < num_partitions:
            raise FlowerError(f"partition-id {partition_id} is not in 0..{num_partitions - 1}")
        adapter = MessageAdapter if source.kind == "message" else NumPyClientAdapter
        self.client: ClientAdapter = adapter(
            source, source.run_config(run_config), dict(fit_config or {}), seed=seed,
            node_id=node_id if node_id is not None else partition_id + 1, run_id=run_id,
            node_config={"partition-id": partition_id, "num-partitions": num_partitions, **(node_config or {})})
        self.metric = metric
        self.num_examples = 0  # known after the first fit: the client reports it
        self._keys, arrays = self.client.first_arrays(seed if init_seed is None else init_seed)
        self._arrays = [_wire(a) for a in arrays]
        self._dtypes = [np.asarray(a).dtype for a in arrays]  # the client's own: integers go back as integers
        layout = repr([(k, a.shape, a.dtype.str) for k, a in zip(self._keys, self._arrays)])
        self.architecture = architecture or f"flower-{hashlib.sha256(layout.encode()).hexdigest()[:12]}"
        self.supports_predict, self.supports_distill = self.client.hooks()

    def _client_arrays(self) -> NDArrays:
        """The arrays as the client expects them: its own dtypes."""
        return [np.rint(a).astype(d) if d.kind in "biu" else a.astype(d, copy=False)
                for a, d in zip(self._arrays, self._dtypes)]

    def _take(self, arrays: NDArrays, keys: list[str] | None, what: str) -> None:
        """Keep arrays a client returned (copied), after checking they fit the model."""
        if keys is not None and keys != self._keys:
            if sorted(keys) != sorted(self._keys):
                raise FlowerError(f"{what} returned arrays {keys}, the model has {self._keys}")
            arrays = [arrays[keys.index(k)] for k in self._keys]
        layout = [a.shape for a in self._arrays]
        if [np.shape(a) for a in arrays] != layout:
            raise FlowerError(f"{what} returned arrays shaped {[np.shape(a) for a in arrays]}; the model has {layout}")
        self._arrays = [_wire(a) for a in arrays]

    # --- Learner ---------------------------------------------------------------------------

    def get_weights(self) -> NDArrays:
        return _copy(self._arrays)

    def set_weights(self, weights: NDArrays) -> None:
        self._take(list(weights), None, "set_weights")

    def fit(self, epochs: int, extra: Samples | None = None) -> dict[str, float]:
        """`epochs` train messages, each with the current arrays; keeps the arrays each returns.
        Returns the last reply's metrics, always with "num-examples" (also in self.num_examples,
        which is 0 until the first fit: a worker process must pass it on after each fit)."""
        if extra is not None and len(extra.y):
            raise FlowerError("a Flower client trains on its own data only; it cannot take extra samples")
        metrics: dict[str, float] = {}
        for _ in range(epochs):
            arrays, keys, metrics = self.client.train(self._client_arrays(), self._keys)
            self._take(arrays, keys, self.client.train_name)
            self.num_examples = int(metrics["num-examples"])
        return metrics

    def evaluate(self, x: np.ndarray | None = None, y: np.ndarray | None = None) -> dict[str, float]:
        """The client's evaluate on its own test data (x and y are ignored): its metrics, with
        "accuracy" picked as the module docstring says and "loss" when the client reports one."""
        metrics = self.client.evaluate(self._client_arrays(), self._keys)
        metrics["accuracy"] = metrics[self.accuracy_key(metrics)]
        return metrics

    def accuracy_key(self, metrics: dict[str, Any]) -> str:
        if self.metric:
            if self.metric not in metrics:
                raise FlowerError(f"the client's evaluate returns no metric {self.metric!r}; "
                                  f"it returns {sorted(metrics)}")
            return self.metric
        for key in ACCURACY_KEYS:
            if key in metrics:
                return key
        fuzzy = sorted(k for k in metrics if "acc" in k.lower())
        if fuzzy:
            return fuzzy[0]
        raise FlowerError(f"client app {self.client.source.spec}: evaluate returns no accuracy metric (one of "
                          f"{', '.join(ACCURACY_KEYS)} or a name containing 'acc'); "
                          f"it returns {sorted(metrics) or 'none'}")

    def predict(self, x: np.ndarray) -> np.ndarray:
        if not self.supports_predict:
            raise FlowerError(f"client app {self.client.source.spec} cannot predict; add the optional hook:\n"
                              f"{FLOWER_HOOKS}")
        logits = np.array(self.client.predict(self._client_arrays(), self._keys, x), dtype=np.float32, copy=True)
        if logits.ndim != 2 or len(logits) != len(x):
            raise FlowerError(f"predict returned logits shaped {logits.shape}; expected ({len(x)}, num_classes)")
        return logits

    def distill(self, x: np.ndarray, target: np.ndarray, temperature: float, epochs: int) -> None:
        if not self.supports_distill:
            raise FlowerError(f"client app {self.client.source.spec} cannot distill; add the optional hook:\n"
                              f"{FLOWER_HOOKS}")
        settings = {"temperature": float(temperature), "epochs": int(epochs)}
        arrays, keys = self.client.distill(self._client_arrays(), self._keys, x, target, settings)
        self._take(arrays, keys, "distill")


def _wire(array) -> np.ndarray:
    """A copy in a dtype the protocol carries: floats stay, integers and bools become float64."""
    a = np.array(array, copy=True)
    return a if a.dtype.kind == "f" else a.astype(np.float64)


def _named_arrays(model: Any) -> tuple[list[str], NDArrays]:
    """(names, arrays) of a model factory's result: an nn.Module or anything with state_dict(), a
    dict of tensors/arrays, a Flower ArrayRecord, or a list of arrays."""
    from flwr.app import ArrayRecord

    if isinstance(model, ArrayRecord):
        return list(model.keys()), [a.numpy() for a in model.values()]
    if hasattr(model, "state_dict") and callable(model.state_dict):
        model = model.state_dict()
    if isinstance(model, dict):
        return list(model), [_to_numpy(v) for v in model.values()]
    if isinstance(model, (list, tuple)):
        return [str(i) for i in range(len(model))], [_to_numpy(v) for v in model]
    raise FlowerError(f"the model factory returned a {type(model).__name__}; expected an nn.Module, a state_dict, "
                      "an ArrayRecord or a list of arrays")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.array(value, copy=True)
