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
        # per tensor, what the next message is coded with: for a relative codec its base (what the
        # receivers hold; without feedback, the previous tensor), for a dense one the residual
        self._kept: list[np.ndarray] | None = None

    def start(self, tensors: list[np.ndarray]) -> None:
        """What the receivers hold before the first message: the initial model, which every node of a
        network seeded alike starts from (without this, zeros: the first sparse messages then send the
        largest values, which the receivers already have)."""
        relative = self.codec.relative
        self._kept = [np.array(t, np.float32) if relative else np.zeros(np.shape(t), np.float32) for t in tensors]

    def compress(self, tensors: list[np.ndarray]) -> list[Tensor]:
        if self.codec.lossless:
            return tensors
        if self._kept is None:
            self.start([np.zeros(np.shape(t), np.float32) for t in tensors])
        return [self._one(i, np.asarray(t, np.float32)) for i, t in enumerate(tensors)]

    def _one(self, i: int, tensor: np.ndarray) -> Tensor:
        kept = self._kept[i]
        if self.codec.relative:
            coded = self.codec.encode(tensor, self.rng, base=kept)
            self._kept[i] = dense(coded, base=kept) if self.feedback else tensor
            return coded
        target = tensor + kept  # the residual stays zero without feedback
        coded = self.codec.encode(target, self.rng)
        if self.feedback:  # into the old residual's memory: no fresh pages for a large model
            np.subtract(target, dense(coded), out=kept)
        return coded
