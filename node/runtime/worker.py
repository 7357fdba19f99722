"""The learner in a worker process, so the daemon's network loop never stalls: torch holds the
interpreter for hundreds of milliseconds per step, which a thread would not hide.

Requests and replies cross the pipe as msgpack with ndarrays in the wire format of
manymodels.protocol (no pickle), through `Connection.send_bytes` / `recv_bytes`."""
from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
from dataclasses import asdict
from typing import Any

import msgpack
import numpy as np

from manymodels.protocol import decode_array, encode_array

from ..learning.generator import fit_generator
from ..learning.learner import Learner, NDArrays, Samples
from ..learning.privacy import NO_PRIVACY, Privacy
from ..learning.recipe import LearnerRecipe
from . import logs

_ND = "__ndarray__"


class WorkerError(RuntimeError):
    pass


def _pack(obj: Any) -> bytes:
    def default(value):
        if isinstance(value, np.ndarray):
            return {_ND: encode_array(value)}
        if isinstance(value, np.generic):
            return value.item()
        raise TypeError(f"cannot send {type(value).__name__} to the worker")
    return msgpack.packb(obj, default=default, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    hook = lambda m: np.array(decode_array(m[_ND])) if _ND in m else m  # noqa: E731  (a writable copy)
    return msgpack.unpackb(data, object_hook=hook, raw=False)


class _Server:
    """Runs in the worker: builds the learner from its recipe and answers requests. A Flower client
    app (recipe.client_app) loads its own data: `data` is None, and the client's evaluate scores it."""

    def __init__(self, recipe: LearnerRecipe, fit_config: dict | None = None, moments: Privacy = NO_PRIVACY) -> None:
        self.learner, self.data, self.probe, self.index = recipe.build(fit_config)
        self.moments = moments  # the synthetic exchange's DP (noisy class moments), if on
        self.value_range = (0.0, 0.0) if self.data is None else (float(self.data.x_train.min()),
                                                                 float(self.data.x_train.max()))
        self._generator = None

    def info(self) -> dict:
        if self.data is None:  # a Flower client: no class counts or input shape to tell
            return {"architecture": self.learner.architecture, "num_examples": self.learner.num_examples,
                    "supports_weights": self.learner.supports_weights, "num_classes": 0, "input_shape": [],
                    "class_counts": [], "value_range": list(self.value_range)}
        counts = np.bincount(self.data.y_train[self.index], minlength=self.data.num_classes)
        return {"architecture": self.learner.architecture, "num_examples": self.learner.num_examples,
                "supports_weights": self.learner.supports_weights, "num_classes": self.data.num_classes,
                "input_shape": list(self.data.input_shape), "class_counts": counts.tolist(),
                "value_range": list(self.value_range)}

    def _own_data(self, what: str) -> None:
        if self.data is None:
            raise ValueError(f"a Flower client keeps its data to itself: no {what}; use --exchange weights")

    def sample(self, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Synthetic samples from a generative model of the private data (which stays here)."""
        self._own_data("synthetic samples")
        if self._generator is None:
            x, y = self.data.x_train[self.index], self.data.y_train[self.index]
            self._generator = fit_generator(x, y, self.value_range, self.data.num_classes, self.moments)
        return self._generator.sample(per_class, np.random.default_rng(seed))

    def probe_x(self) -> np.ndarray:
        self._own_data("probe set")
        return self.probe.x

    def get_weights(self) -> NDArrays:
        return self.learner.get_weights()

    def set_weights(self, weights: NDArrays) -> None:
        self.learner.set_weights(weights)

    def fit(self, epochs: int, extra: dict | None = None) -> dict:
        metrics = self.learner.fit(epochs, Samples(**extra) if extra else None)
        # a Flower client reports its example count in each fit (0 before the first)
        return {"metrics": metrics, "num_examples": self.learner.num_examples}

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.learner.predict(x)

    def resume_privacy(self, steps: int) -> None:
        self.learner.private.resume(steps)

    def distill(self, x: np.ndarray, target: np.ndarray, temperature: float, epochs: int) -> None:
        self.learner.distill(x, target, temperature, epochs)

    def evaluate_test(self) -> dict:
        if self.data is None:  # the client's own evaluate, on its own test data
            return self.learner.evaluate()
        return self.learner.evaluate(self.data.x_test, self.data.y_test)


def _serve(conn, recipe: dict, fit_config: dict, moments: dict, log_level: int) -> None:
    # The worker shares the daemon's process group, so a Ctrl-C in the terminal (or a SIGTERM to the
    # group) reaches it too: the daemon stops it once it has saved the model the worker holds.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logs.configure(log_level)
    import torch

    torch.set_num_threads(1)
    try:
        server = _Server(LearnerRecipe.from_json(recipe), fit_config, Privacy(**moments))
        if "flwr" in sys.modules:  # a Flower client app: its log lines in our format
            logs.adopt("flwr")
        conn.send_bytes(_pack({"ok": True, "result": server.info()}))
    except Exception as exc:  # the parent shows this one line to the user
        conn.send_bytes(_pack({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
        return
    while True:
        try:
            request = _unpack(conn.recv_bytes())
        except EOFError:
            return
        if request["op"] == "close":
            return
        try:
            result = getattr(server, request["op"])(**request["args"])
            conn.send_bytes(_pack({"ok": True, "result": result}))
        except Exception as exc:  # report, keep serving
            conn.send_bytes(_pack({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))


class WorkerLearner(Learner):
    """A Learner whose model and data live in a child process. Calls block the calling thread
    (run them with trio.to_thread in an event loop), never the child's peers."""

    def __init__(self, recipe: LearnerRecipe, fit_config: dict | None = None, moments: Privacy = NO_PRIVACY) -> None:
        """`fit_config`: what the rule adds to a Flower client's train config (FedProx's proximal_mu);
        `moments`: the synthetic exchange's DP, for the generator the worker fits."""
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._conn, child = context.Pipe()
        log_level = logging.getLogger("manymodels").getEffectiveLevel()  # as the daemon's
        self._process = context.Process(target=_serve, daemon=True, name="manymodels-worker",
                                        args=(child, recipe.to_json(), dict(fit_config or {}), asdict(moments), log_level))
        self._process.start()
        child.close()
        info = self._reply()
        self.architecture = info["architecture"]
        self.num_examples = info["num_examples"]
        self.supports_weights = info["supports_weights"]
        self.num_classes = info["num_classes"]
        self.input_shape = tuple(info["input_shape"])
        self.class_counts = info["class_counts"]
        self.value_range = tuple(info["value_range"])

    def _reply(self) -> Any:
        try:
            reply = _unpack(self._conn.recv_bytes())
        except EOFError:
            raise WorkerError(f"the worker process exited (code {self._process.exitcode})") from None
        if not reply["ok"]:
            raise WorkerError(reply["error"])
        return reply["result"]

    def _call(self, op: str, **args) -> Any:
        self._conn.send_bytes(_pack({"op": op, "args": args}))
        return self._reply()

    def get_weights(self) -> NDArrays:
        return self._call("get_weights")

    def set_weights(self, weights: NDArrays) -> None:
        self._call("set_weights", weights=list(weights))

    def fit(self, epochs: int, extra: Samples | None = None) -> dict[str, float]:
        payload = {"x": extra.x, "y": extra.y, "weight": extra.weight} if extra else None
        result = self._call("fit", epochs=epochs, extra=payload)
        self.num_examples = result["num_examples"]  # a Flower client's count is known only after a fit
        return result["metrics"]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._call("predict", x=x)

    def distill(self, x: np.ndarray, target: np.ndarray, temperature: float, epochs: int) -> None:
        self._call("distill", x=x, target=target, temperature=temperature, epochs=epochs)

    def probe_x(self) -> np.ndarray:
        return self._call("probe_x")

    def resume_privacy(self, steps: int) -> None:
        """The DP-SGD steps an earlier run took, so that the accountant counts them (a restart)."""
        self._call("resume_privacy", steps=steps)

    def evaluate_test(self) -> dict[str, float]:
        return self._call("evaluate_test")

    def sample(self, per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The worker's generator, in the shape SyntheticSamples expects of one."""
        x, y = self._call("sample", per_class=per_class, seed=int(rng.integers(2**63)))
        return x, y

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send_bytes(_pack({"op": "close", "args": {}}))
            except OSError:
                pass
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
        self._conn.close()
