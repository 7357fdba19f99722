"""TorchLearner: any nn.Module with a private (x, y) training set, trained as its `Training` says
(with DP-SGD on the private set when its `privacy` is on: node/learning/private_sgd.py)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .learner import Learner, NDArrays, Samples
from .training import Training


def _tensor(a, dtype) -> torch.Tensor:
    """A tensor sharing the array's memory; arrays decoded from a peer's message are read-only,
    which torch does not wrap, so those are copied."""
    a = np.asarray(a, dtype=dtype)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


class TorchLearner(Learner):
    def __init__(self, module: nn.Module, x: np.ndarray, y: np.ndarray, *, architecture: str,
                 training: Training = Training(), seed: int = 0) -> None:
        self.module = module
        self.architecture = architecture
        self.x = _tensor(x, np.float32)
        self.y = _tensor(y, np.int64)
        self.num_examples = len(self.y)
        self.batch_size = training.batch_size
        self.shuffle = training.shuffle
        if training.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(module.parameters(), lr=training.lr, momentum=training.momentum,
                                             weight_decay=training.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(module.parameters(), lr=training.lr, weight_decay=training.weight_decay)
        self._generator = torch.Generator().manual_seed(seed)
        self._state: dict[str, torch.Tensor] = {}
        self._state_of = 0  # id() of the module _state belongs to
        self.private = None
        if training.privacy.on:
            from .private_sgd import PrivateSGD  # imports opacus

            self.private = PrivateSGD(module, self.optimizer, training.privacy, self.num_examples, self.batch_size)

    def state(self) -> dict[str, torch.Tensor]:
        """The module's state_dict (its parameters and buffers, detached: the same memory), built once
        (walking the module costs more than copying a small model's weights); a copy of the learner
        (deepcopy) builds its own, since its cached tensors would not be its module's."""
        if self._state_of != id(self.module):
            self._state, self._state_of = self.module.state_dict(), id(self.module)
        return self._state

    def get_weights(self) -> NDArrays:
        return [t.cpu().numpy().copy() for t in self.state().values()]

    def set_weights(self, weights: NDArrays) -> None:
        state = self.state()
        if len(weights) != len(state):
            raise ValueError(f"{self.architecture} has {len(state)} tensors, got {len(weights)}")
        for (name, current), array in zip(state.items(), weights):
            if tuple(array.shape) != tuple(current.shape):
                raise ValueError(f"{self.architecture}.{name} is {tuple(current.shape)}, got {tuple(array.shape)}")
        # The optimizer's state (Adam's moments, SGD's momentum) is kept across a merge: cleared, every first step after a merge moves each
        # parameter by about lr, which on digits cost 4 points (weights, α=0.1) to 37 (mixed).
        with torch.no_grad():  # in place, as load_state_dict copies (the state dict's tensors are the parameters')
            for current, array in zip(state.values(), weights):
                current.copy_(_tensor(array, array.dtype))

    def epoch_order(self, n: int) -> torch.Tensor:
        """The order of n examples in the next epoch: shuffled by this node's own generator."""
        return torch.randperm(n, generator=self._generator) if self.shuffle else torch.arange(n)

    def _epochs(self, x: torch.Tensor, epochs: int, loss_of) -> float:
        """Mini-batch steps over x for `epochs`; loss_of(batch indices, logits) -> scalar loss."""
        self.module.train()
        total, batches = 0.0, 0
        for _ in range(epochs):
            order = self.epoch_order(len(x))
            for start in range(0, len(x), self.batch_size):
                idx = order[start:start + self.batch_size]
                self.optimizer.zero_grad()
                loss = loss_of(idx, self.module(x[idx]))
                loss.backward()
                self.optimizer.step()
                total, batches = total + loss.item(), batches + 1
        return total / max(batches, 1)

    def fit(self, epochs: int, extra: Samples | None = None) -> dict[str, float]:
        if self.private is not None:
            return self._private_fit(epochs, extra)
        x, y, w = self.x, self.y, torch.ones(self.num_examples)
        if extra is not None and len(extra.y):
            x = torch.cat([x, _tensor(extra.x, np.float32)])
            y = torch.cat([y, _tensor(extra.y, np.int64)])
            w = torch.cat([w, torch.full((len(extra.y),), float(extra.weight))])

        def loss_of(idx, logits):
            return (F.cross_entropy(logits, y[idx], reduction="none") * w[idx]).sum() / w[idx].sum()
        return {"loss": self._epochs(x, epochs, loss_of)}

    def _private_fit(self, epochs: int, extra: Samples | None) -> dict[str, float]:
        """DP-SGD on the private set; the metrics add the ε spent so far."""
        if extra is not None and len(extra.y):
            raise ValueError("DP-SGD trains on the private set alone: no peers' samples (--exchange synthetic)")
        loss = self.private.epochs(self.x, epochs,
                                   lambda idx, logits: F.cross_entropy(logits, self.y[idx], reduction="sum"))
        return {"loss": loss, **self.private.spent()}

    def distill(self, x: np.ndarray, target: np.ndarray, temperature: float, epochs: int) -> None:
        x_t = _tensor(x, np.float32)
        target = _tensor(target, np.float32).exp()

        def loss_of(idx, logits):
            # Hinton et al.'s KD loss, scaled by T^2 so gradients keep their size across temperatures.
            log_p = F.log_softmax(logits / temperature, dim=1)
            return F.kl_div(log_p, target[idx], reduction="batchmean") * temperature ** 2
        if self.private is None:
            self._epochs(x_t, epochs, loss_of)
            return
        with self.private.public():  # the probe set is public: DP-SGD's guarantee covers this by post-processing
            self._epochs(x_t, epochs, loss_of)

    @torch.no_grad()
    def predict(self, x: np.ndarray, batch: int = 1024) -> np.ndarray:
        self.module.eval()
        x_t = _tensor(x, np.float32)
        # In batches: a CNN's activations on 10 000 Fashion-MNIST images at once are gigabytes.
        return torch.cat([self.module(x_t[i:i + batch]) for i in range(0, len(x_t), batch)]).numpy()
