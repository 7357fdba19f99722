"""Many torch learners of one architecture trained and evaluated together: their parameters stacked
(node, ...) and run through batched matrix products (torch.baddbmm), step for step as each would
train alone: the same examples in the same order (each learner's own generator), the same loss, and
torch's single-tensor Adam and SGD arithmetic op for op. On this CPU the weights come out equal in
every bit to training one by one (tests/test_batched.py checks it, and the simulator's golden
reports stay byte for byte).

What batches: a TorchLearner without DP-SGD (Opacus' per-example gradients are another computation)
whose model is Flatten, Linear and ReLU layers (logreg, mlp, mlp-wide) and whose optimizer is plain
Adam or SGD (momentum, weight decay). Learners train together when they agree on all of that, on the
batch size, on the number of batches per epoch and on the optimizer steps taken so far (so Adam's
bias correction is one number for the group). Ragged data: the last step of an epoch runs in
sub-batches of learners whose last batch is as wide (no padding: torch sums a short batch in
another order than a padded one). Everything else trains alone, as before.

Memory: a learner keeps its own partition (all of them together: one copy of the training set, no
per-node copy of the dataset); a batched fit gathers its group's examples, parameters and optimizer
state into stacked tensors for its duration and copies the results back, so each learner stays
self-contained (a copy of one, as the value study makes, copies that one alone)."""
from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch
from torch import nn

from .learner import Learner, NDArrays
from .torch_learner import TorchLearner

_LAYERS = (nn.Flatten, nn.Linear, nn.ReLU)
_EVAL_ELEMENTS = 1 << 24  # activations per evaluation chunk (64 MiB of float32)
_SNAPSHOT_ELEMENTS = 1 << 26  # copied parameters an evaluation made later may hold (256 MiB of float32)
_BATCHES: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()  # _layers_batch's answers


def _layers_batch(module: nn.Module) -> bool:
    """Flatten first, then Linear layers (with bias) and ReLUs: what _forward computes. Known once
    per module (a model's layers do not change once built; asking costs more than a small model's
    batched step, and every node asks every round)."""
    known = _BATCHES.get(module)
    if known is None:
        known = _BATCHES[module] = _layers_are_batched(module)
    return known


def _layers_are_batched(module: nn.Module) -> bool:
    layers = list(module) if isinstance(module, nn.Sequential) else []
    return (bool(layers) and type(layers[0]) is nn.Flatten and all(type(m) in _LAYERS for m in layers[1:])
            and not any(type(m) is nn.Flatten for m in layers[1:])
            and all(m.bias is not None for m in layers if type(m) is nn.Linear))


def _settings(optimizer: torch.optim.Optimizer) -> tuple | None:
    """The optimizer's settings, if the batched step computes exactly what its own step does."""
    if len(optimizer.param_groups) != 1:
        return None
    g = optimizer.param_groups[0]
    if any(g.get(flag) for flag in ("maximize", "foreach", "fused", "capturable", "differentiable")):
        return None
    if type(optimizer) is torch.optim.Adam and not g["amsgrad"] and not g["decoupled_weight_decay"]:
        return "adam", float(g["lr"]), tuple(g["betas"]), g["eps"], g["weight_decay"]
    if type(optimizer) is torch.optim.SGD and not g["nesterov"] and g["dampening"] == 0:
        return "sgd", float(g["lr"]), g["momentum"], g["weight_decay"]
    return None


def _params(learner: TorchLearner) -> list[torch.Tensor]:
    """The module's parameters in order, as its optimizer holds them (a list: cheaper than
    module.parameters(), which walks the module tree each call)."""
    return learner.optimizer.param_groups[0]["params"]


def _steps_taken(learner: TorchLearner) -> int:
    """Adam's step count; for SGD whether its momentum buffer exists (its first step starts it)."""
    state = learner.optimizer.state.get(_params(learner)[0], {})
    if "step" in state:
        return int(state["step"])
    return int(state.get("momentum_buffer") is not None)


def group_key(learner: Learner) -> tuple | None:
    """What learners must share to train in one batch; None: this one trains alone."""
    if type(learner) is not TorchLearner or learner.private is not None or not learner.num_examples:
        return None
    settings = _settings(learner.optimizer)
    if settings is None or not _layers_batch(learner.module):
        return None
    return (learner.architecture, tuple(learner.x.shape[1:]), tuple(p.shape for p in _params(learner)),
            settings, learner.batch_size, math.ceil(learner.num_examples / learner.batch_size),
            _steps_taken(learner))


def _groups(learners: list[Learner], key) -> tuple[dict[tuple, list[int]], list[int]]:
    """Indices of the learners by key (groups of two or more) and those left alone."""
    groups: dict[tuple, list[int]] = {}
    alone = []
    for i, learner in enumerate(learners):
        k = key(learner)
        (alone if k is None else groups.setdefault(k, [])).append(i)
    for k in [k for k, members in groups.items() if len(members) < 2]:
        alone += groups.pop(k)
    return groups, sorted(alone)


def fit_all(learners: list[Learner], epochs: int) -> list[dict[str, float]]:
    """Every learner's fit(epochs) on its private data, batched where that is exact."""
    metrics = fit_batches(learners, epochs)
    return [metrics[i] if i in metrics else one.fit(epochs) for i, one in enumerate(learners)]


def fit_batches(learners: list[Learner], epochs: int) -> dict[int, dict[str, float]]:
    """fit(epochs) of the learners that train in a batch with others: their metrics by index. The
    others are left as they are, for the caller to train alone."""
    metrics = {}
    for members in _groups(learners, group_key)[0].values():
        for i, loss in zip(members, _Group([learners[i] for i in members]).fit(epochs)):
            metrics[i] = {"loss": loss}
    return metrics


class _Linear(torch.autograd.Function):
    """nn.Linear on stacked models, its gradients computed as torch computes one model's (the
    products in the same order: g^T x for the weight, not (x^T g)^T as baddbmm's own backward)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        return grad_x, torch.bmm(grad.transpose(1, 2), x), grad.sum(1)


def _forward(layers: list[nn.Module], params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The stacked models on x (node, batch, features): logits (node, batch, classes)."""
    h, weights = x, iter(params)
    for layer in layers[1:]:
        if type(layer) is nn.Linear:
            w, b = next(weights), next(weights)
            h = _Linear.apply(h, w, b)
        else:
            h = h.relu()
    return h


class _Group:
    """Learners that train in one batch: their data as one tensor, their parameters and optimizer
    state stacked while they train."""

    def __init__(self, learners: list[TorchLearner]) -> None:
        self.learners, first = learners, learners[0]
        self.layers = list(first.module)
        self.settings = _settings(first.optimizer)
        self.batch, self.steps = first.batch_size, math.ceil(first.num_examples / first.batch_size)
        self.counts = torch.tensor([one.num_examples for one in learners])
        self.x, self.y = self._gather()

    def _gather(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every learner's examples in one tensor, for as long as the group trains."""
        return (torch.cat([one.x.reshape(one.num_examples, -1) for one in self.learners]),
                torch.cat([one.y for one in self.learners]))

    def _epoch_rows(self) -> torch.Tensor:
        """(node, steps * batch): the rows of x each learner trains on this epoch, in its own order."""
        counts = self.counts
        offsets = torch.cumsum(counts, 0) - counts
        orders = torch.cat([one.epoch_order(one.num_examples) for one in self.learners])
        node = torch.repeat_interleave(torch.arange(len(counts)), counts)
        position = torch.arange(len(orders)) - torch.repeat_interleave(offsets, counts)
        width = self.steps * self.batch
        rows = torch.zeros(len(counts) * width, dtype=torch.long)  # past a learner's count: never read
        rows[node * width + position] = orders + torch.repeat_interleave(offsets, counts)
        return rows.view(len(counts), width)

    def fit(self, epochs: int) -> list[float]:
        """Train every learner `epochs` epochs; each one's mean loss per batch."""
        state = _Stacked(self.learners, self.settings)
        total = torch.zeros(len(self.learners), dtype=torch.float64)
        last = self.counts - (self.steps - 1) * self.batch  # each learner's last batch
        # Learners whose last batch is as wide take their last step together: padding a short batch
        # would change its sums (torch computes a one-row product another way than a 32-row one).
        widths = {w: torch.nonzero(last == w).flatten() for w in sorted(set(last.tolist()))}
        everyone = torch.arange(len(self.learners))
        for _ in range(epochs):
            rows = self._epoch_rows()
            for s in range(self.steps):
                start = s * self.batch
                parts = widths.items() if s == self.steps - 1 else [(self.batch, everyone)]
                losses = [(who, self._loss(state.params, who, rows[who, start:start + w])) for w, who in parts]
                sum(loss.sum() for _, loss in losses).backward()
                state.step()
                for who, loss in losses:
                    total[who] += loss.detach().double()
        state.store(self.learners)
        return (total / (epochs * self.steps)).tolist()

    def _loss(self, params: list[torch.Tensor], who: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The mean cross-entropy of each learner `who` on its rows `idx`, as TorchLearner.fit's."""
        if len(who) < len(self.learners):
            params = [p[who] for p in params]
        log_p = _forward(self.layers, params, self.x[idx]).log_softmax(-1)
        return -log_p.gather(-1, self.y[idx].unsqueeze(-1)).squeeze(-1).sum(1) / float(idx.shape[1])


class _Stacked:
    """A group's parameters and optimizer state, stacked (node, ...), with torch's single-tensor
    Adam and SGD step written for the stack, op for op."""

    def __init__(self, learners: list[TorchLearner], settings: tuple) -> None:
        self.settings = settings
        per_node = [_params(one) for one in learners]
        self.params = [torch.stack([p.detach() for p in ps]).requires_grad_() for ps in zip(*per_node)]
        self.taken = _steps_taken(learners[0])

        def stacked(name: str) -> list[torch.Tensor]:
            return [torch.stack([one.optimizer.state[p][name] if self.taken else torch.zeros_like(p)
                                 for one, p in zip(learners, ps)]) for ps in zip(*per_node)]
        if settings[0] == "adam":
            self.moments = (stacked("exp_avg"), stacked("exp_avg_sq"))
        elif settings[2]:  # SGD's momentum
            self.buffers = stacked("momentum_buffer") if self.taken else None

    @torch.no_grad()
    def step(self) -> None:
        grads = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None
        self.taken += 1
        if self.settings[0] == "adam":
            self._adam(grads)
        else:
            self._sgd(grads)

    def _adam(self, grads: list[torch.Tensor]) -> None:
        _, lr, (beta1, beta2), eps, weight_decay = self.settings
        step_size = lr / (1 - beta1 ** float(self.taken))
        bias_correction2_sqrt = (1 - beta2 ** float(self.taken)) ** 0.5
        for param, grad, exp_avg, exp_avg_sq in zip(self.params, grads, *self.moments):
            if weight_decay != 0:
                grad = grad.add(param, alpha=weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)

    def _sgd(self, grads: list[torch.Tensor]) -> None:
        _, lr, momentum, weight_decay = self.settings
        if weight_decay != 0:
            grads = [grad.add(param, alpha=weight_decay) for param, grad in zip(self.params, grads)]
        if momentum != 0:
            if self.buffers is None:
                self.buffers = [grad.detach().clone() for grad in grads]
            else:
                for buffer, grad in zip(self.buffers, grads):
                    buffer.mul_(momentum).add_(grad, alpha=1)
            grads = self.buffers
        for param, grad in zip(self.params, grads):
            param.add_(grad, alpha=-lr)

    @torch.no_grad()
    def store(self, learners: list[TorchLearner]) -> None:
        """Every learner's parameters and optimizer state, copied back from its rows of the stacks
        into tensors of its own (a copy of the learner, as a study makes, copies it alone)."""
        named = ({"exp_avg": self.moments[0], "exp_avg_sq": self.moments[1]} if self.settings[0] == "adam"
                 else {"momentum_buffer": self.buffers} if self.settings[2] else {})
        step = torch.tensor(float(self.taken))
        for k, ps in enumerate(zip(*map(_params, learners))):
            torch._foreach_copy_(list(ps), list(self.params[k].detach().unbind(0)))
            states = [one.optimizer.state[p] for one, p in zip(learners, ps)]
            for name, stacks in named.items():
                _set_rows(states, name, list(stacks[k].unbind(0)))
            if self.settings[0] == "adam":
                _set_rows(states, "step", [step] * len(states))


def _set_rows(states: list[dict], name: str, rows: list[torch.Tensor]) -> None:
    """Each optimizer state's tensor `name` set to its row: written over where every state has one,
    all in one call (torch's own optimizers' _foreach_ kernels; row by row from Python cost more
    than the group's training), else a copy of its own for each."""
    if all(name in state for state in states):
        torch._foreach_copy_([state[name] for state in states], rows)
    else:
        for state, row in zip(states, rows):
            state[name] = row.clone()


def eval_key(learner: Learner) -> tuple | None:
    """What learners must share to be evaluated in one batch; None: alone."""
    if type(learner) is not TorchLearner or not _layers_batch(learner.module):
        return None
    return learner.architecture, tuple(t.shape for t in learner.state().values())  # its parameters: no buffers


def accuracies(learners: list[Learner], x, y) -> list[float]:
    """Every learner's evaluate(x, y)["accuracy"], batched where the model allows."""
    return evaluation(learners, x, y)()


@torch.no_grad()
def evaluation(learners: list[Learner], x, y) -> Callable[[], list[float]]:
    """accuracies(learners, x, y) as a call to make later, on any thread: the models are read now
    (the batched ones copied, stacked; the others evaluated now), so changing them in the meantime
    changes nothing. The call runs the batched products, in which torch lets go of the GIL. Past
    _SNAPSHOT_ELEMENTS of copies, all is evaluated now, a chunk of models at a time."""
    result = [0.0] * len(learners)
    groups, alone = _groups(learners, eval_key)
    x_t, y_t = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    big = _SNAPSHOT_ELEMENTS < sum(len(members) * sum(t.numel() for t in learners[members[0]].state().values())
                                   for members in groups.values())
    work = []
    for members in groups.values():
        module = learners[members[0]].module
        chunk = _chunk(x_t, max(p.shape[0] for p in module.parameters())) if big else len(members)
        for start in range(0, len(members), chunk):
            part = members[start:start + chunk]
            one = part, list(module), [torch.stack(ts) for ts in zip(*(learners[i].state().values() for i in part))]
            if big:  # a copy of every model's is big: one chunk's at a time, evaluated now
                _evaluate(one, x_t, y_t, result)
            else:
                work.append(one)
    for i in alone:
        result[i] = learners[i].evaluate(x, y)["accuracy"]

    @torch.no_grad()  # grad mode is per thread
    def finish() -> list[float]:
        for one in work:
            _evaluate(one, x_t, y_t, result)
        return result
    return finish


def _evaluate(work: tuple[list[int], list[nn.Module], list[torch.Tensor]], x_t: torch.Tensor, y_t: torch.Tensor,
              result: list[float]) -> None:
    """The accuracy of the learners `part` of a group, their parameters stacked, into result."""
    part, layers, stacked = work
    for i, accuracy in zip(part, _stacked_accuracies(layers, stacked, x_t, y_t)):
        result[i] = accuracy


@torch.no_grad()
def weights_accuracies(learner: Learner, stacked: NDArrays, x, y) -> list[float] | None:
    """evaluate(x, y)["accuracy"] of `learner` with each of many weights, given stacked: each of its
    tensors (as set_weights takes them) over the models, (models, *shape); in batches, the learner
    left as it is. None where its model does not batch."""
    if eval_key(learner) is None:
        return None
    params = [torch.as_tensor(a, dtype=torch.float32) for a in stacked]
    return _stacked_accuracies(list(learner.module), params, torch.as_tensor(x, dtype=torch.float32),
                               torch.as_tensor(y))


def _chunk(x_t: torch.Tensor, widest: int) -> int:
    """Models per evaluation: _EVAL_ELEMENTS activations of the widest layer on x."""
    return max(1, _EVAL_ELEMENTS // (len(x_t) * widest))


def _stacked_accuracies(layers: list[nn.Module], stacked: list[torch.Tensor], x_t: torch.Tensor,
                        y_t: torch.Tensor) -> list[float]:
    """The accuracy on (x, y) of the model `layers` with each of these parameters, stacked (model,
    ...) per parameter; evaluated in chunks of models."""
    chunk, flat, result = _chunk(x_t, max(p.shape[1] for p in stacked)), x_t.reshape(len(x_t), -1), []
    for start in range(0, len(stacked[0]), chunk):
        part = [p[start:start + chunk] for p in stacked]
        hits = (_forward(layers, part, flat.expand(len(part[0]), -1, -1)).argmax(-1) == y_t).sum(1)
        result += [h / len(y_t) for h in hits.tolist()]
    return result
