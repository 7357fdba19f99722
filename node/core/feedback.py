"""Error feedback: what a lossy codec dropped is kept by the sending node and sent later.

Node state, not protocol: receivers decode each message on its own. Two forms, by codec:

* a dense codec (float16, bfloat16, int8) codes `tensor + residual` and keeps as the new residual
  what the receivers will not see, `target - dense(coded)`: rounding errors do not pile up, they
  average out over messages (Seide et al. 2014; Karimireddy et al. 2019);
* a relative codec (top-k, random-k) sends values at some indices; receivers take the rest from
  their own model. The sender codes against what it has told so far (`told`: at first the initial
  model, `start`), so
  top-k picks what changed most *since last sent*: a change too small to be picked in any one
  round accumulates until it is (the residual is `tensor - told`; Stich et al. 2018).

Without feedback (`feedback=False`, for comparisons) a dense codec codes each tensor as it is and
top-k picks what changed most since the previous message only.

>>> import numpy as np
>>> from manymodels.protocol import dense, get_codec
>>> ef = ErrorFeedback(get_codec("int8"))
>>> sent = [dense(ef.compress([np.array([1.0, 0.003], np.float32)])[0])[1] for _ in range(100)]
>>> round(float(np.mean(sent)), 4)  # int8 rounds 0.003 to 0 every time; with feedback it averages out
0.003
"""
from __future__ import annotations

import numpy as np

from manymodels.protocol import Codec, Tensor, dense


class ErrorFeedback:
    """One sender's compression of a list of tensors (a model's weights), message after message."""

    def __init__(self, codec: Codec, rng: np.random.Generator | None = None, *, feedback: bool = True) -> None:
        self.codec = codec
        self.rng = rng
        self.feedback = feedback
        self._told: list[np.ndarray] | None = None  # relative codecs: the base of the next message
        self._residual: list[np.ndarray] | None = None  # dense codecs: what was dropped so far

    def start(self, tensors: list[np.ndarray]) -> None:
        """What the receivers hold before the first message: the initial model, which every node of a
        network seeded alike starts from (without this, zeros: the first messages then send the
        largest values, which the receivers already have)."""
        self._told = [np.array(t, np.float32) for t in tensors]
        self._residual = [np.zeros(t.shape, np.float32) for t in tensors]

    def compress(self, tensors: list[np.ndarray]) -> list[Tensor]:
        if self.codec.lossless:
            return tensors
        if self._told is None:
            self.start([np.zeros(t.shape, np.float32) for t in tensors])
        return [self._one(i, np.asarray(t, np.float32)) for i, t in enumerate(tensors)]

    def _one(self, i: int, tensor: np.ndarray) -> Tensor:
        relative = self.codec.relative
        target = tensor if relative or not self.feedback else tensor + self._residual[i]
        coded = self.codec.encode(target, self.rng, base=self._told[i])
        if not self.feedback:
            self._told[i] = tensor
        elif relative:
            self._told[i] = dense(coded, base=self._told[i])
        else:
            self._residual[i] = target - dense(coded)
        return coded
