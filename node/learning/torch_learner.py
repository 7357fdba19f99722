"""TorchLearner: any nn.Module with a private (x, y) training set."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .learner import Learner, NDArrays


class TorchLearner(Learner):
    def __init__(self, module: nn.Module, x: np.ndarray, y: np.ndarray, *, architecture: str,
                 lr: float = 1e-2, batch_size: int = 32, seed: int = 0) -> None:
        self.module = module
        self.architecture = architecture
        self.x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        self.y = torch.as_tensor(np.asarray(y, dtype=np.int64))
        self.num_examples = len(self.y)
        self.batch_size = batch_size
        self.optimizer = torch.optim.Adam(module.parameters(), lr=lr)
        self._generator = torch.Generator().manual_seed(seed)

    def get_weights(self) -> NDArrays:
        return [t.detach().cpu().numpy().copy() for t in self.module.state_dict().values()]

    def set_weights(self, weights: NDArrays) -> None:
        state = self.module.state_dict()
        if len(weights) != len(state):
            raise ValueError(f"{self.architecture} has {len(state)} tensors, got {len(weights)}")
        new = {}
        for (name, current), array in zip(state.items(), weights):
            if tuple(array.shape) != tuple(current.shape):
                raise ValueError(f"{self.architecture}.{name} is {tuple(current.shape)}, got {tuple(array.shape)}")
            new[name] = torch.tensor(np.array(array, dtype=np.float32, copy=True), dtype=current.dtype)
        self.module.load_state_dict(new)

    def fit(self, epochs: int) -> dict[str, float]:
        self.module.train()
        loss_fn = nn.CrossEntropyLoss()
        total, batches = 0.0, 0
        for _ in range(epochs):
            order = torch.randperm(self.num_examples, generator=self._generator)
            for start in range(0, self.num_examples, self.batch_size):
                idx = order[start:start + self.batch_size]
                self.optimizer.zero_grad()
                loss = loss_fn(self.module(self.x[idx]), self.y[idx])
                loss.backward()
                self.optimizer.step()
                total, batches = total + loss.item(), batches + 1
        return {"loss": total / max(batches, 1)}

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        self.module.eval()
        return self.module(torch.as_tensor(np.asarray(x, dtype=np.float32))).numpy()
