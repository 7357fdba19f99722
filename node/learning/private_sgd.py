"""DP-SGD (Abadi et al. 2016) with Opacus for a torch learner's private training: per-example
gradients clipped to `clip`, Gaussian noise of σ·clip added to their sum, and Opacus' RDP accountant
tracking ε at δ. Batches are Poisson samples (each example in with probability q = batch/n), which
is what the accountant assumes; one epoch is round(1/q) such steps. The samples and the noise come
from the operating system's randomness, never from the network's seed: that seed is public, and noise
an observer can regenerate protects nothing (so a run with DP differs from run to run).

The module itself stays as it was (its parameter names, its state_dict): Opacus' GradSampleModule
wraps it only to add per-example gradients, so weights exchange, codecs and set_weights see the
module they always did, and the accountant lives as long as the learner."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import logging
import secrets
import warnings

import torch
from torch import nn

from .privacy import Privacy

# Opacus calls logging.basicConfig on import: the application's logs are not its to format.
_handlers = list(logging.root.handlers)
from opacus import GradSampleModule  # noqa: E402
from opacus.accountants import RDPAccountant  # noqa: E402
from opacus.accountants.utils import get_noise_multiplier  # noqa: E402
from opacus.optimizers import DPOptimizer  # noqa: E402
from opacus.validators import ModuleValidator  # noqa: E402

logging.root.handlers[:] = _handlers

ACCOUNTANT = "rdp"


@contextmanager
def _quiet_hooks() -> Iterator[None]:
    """Without what torch says of Opacus' per-example hooks on a first layer, whose input needs no
    gradient, at every step."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with "
                                "respect to module outputs", category=UserWarning)
        yield


def noise_for(privacy: Privacy, sample_rate: float, steps_per_epoch: int) -> float:
    """σ as given, or the smallest σ that keeps ε(δ) within the target over the planned steps."""
    if privacy.noise > 0:
        return privacy.noise
    return get_noise_multiplier(target_epsilon=privacy.epsilon, target_delta=privacy.delta, sample_rate=sample_rate,
                                steps=privacy.epochs * steps_per_epoch, accountant=ACCOUNTANT)


class PrivateSGD:
    """One module's DP-SGD steps over n private examples, and what they have spent."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, privacy: Privacy, num_examples: int,
                 batch_size: int) -> None:
        problems = ModuleValidator.validate(module)
        if problems:
            raise ValueError(f"DP-SGD cannot train this model: {problems[0]}")
        self.privacy = privacy
        self.sample_rate = min(1.0, batch_size / max(num_examples, 1))
        self.steps_per_epoch = max(1, round(1 / self.sample_rate))
        self.noise = noise_for(privacy, self.sample_rate, self.steps_per_epoch)
        self.module = GradSampleModule(module, loss_reduction="sum")
        self._noise_generator = torch.Generator().manual_seed(secrets.randbits(63))
        self.optimizer = DPOptimizer(optimizer, noise_multiplier=self.noise, max_grad_norm=privacy.clip,
                                     expected_batch_size=max(1, round(self.sample_rate * num_examples)),
                                     loss_reduction="mean", generator=self._noise_generator)
        self.accountant = RDPAccountant()
        self._sampler = torch.Generator().manual_seed(secrets.randbits(63))  # who is in a batch is secret too

    def epochs(self, x: torch.Tensor, epochs: int, loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
               ) -> float:
        """`epochs` epochs of Poisson-sampled steps; loss_sum(indices, logits) -> the batch's summed loss.
        An empty sample is a step too (its noise alone), as the accountant counts it."""
        self.module.train()
        total, seen = 0.0, 0
        with _quiet_hooks():
            for _ in range(epochs * self.steps_per_epoch):
                idx = (torch.rand(len(x), generator=self._sampler) < self.sample_rate).nonzero().squeeze(1)
                self.optimizer.zero_grad()
                loss = loss_sum(idx, self.module(x[idx]))
                loss.backward()
                self.optimizer.step()
                self.accountant.step(noise_multiplier=self.noise, sample_rate=self.sample_rate)
                total, seen = total + loss.item(), seen + len(idx)
        return total / max(seen, 1)

    @contextmanager
    def public(self) -> Iterator[None]:
        """Training on public data (distillation on the probe set): no per-example gradients, no noise."""
        self.module.disable_hooks()
        try:
            with _quiet_hooks():
                yield
        finally:
            self.module.enable_hooks()

    def spent(self) -> dict[str, float]:
        """ε spent so far at the settings' δ (0 before the first step), σ, and the steps taken."""
        steps = sum(n for _, _, n in self.accountant.history)
        epsilon = self.accountant.get_epsilon(self.privacy.delta) if steps else 0.0
        return {"epsilon": epsilon, "noise_multiplier": self.noise, "dp_steps": steps}

    def resume(self, steps: int) -> None:
        """Count `steps` taken before (a restarted daemon's), all at this σ and sample rate."""
        self.accountant.history = [(self.noise, self.sample_rate, steps)] if steps else []
