"""Adversaries for the simulator. Each attack is a small class; an attacker is an honest node
(own identity, neighbours, learner) with an `Attacker` as its outbound filter: the attack writes
what the node sends, and sees what it receives first (`observe`, through `Attacker.tap`).

Model-poisoning attacks rewrite the payloads the node would honestly send (`poison`); data
poisoning changes its training labels (`poison_labels`); protocol attacks send bytes that the
protocol layer must stop (`messages`). Omniscient attacks (ALIE, IPM) read the honest nodes'
current models, the strongest assumption the literature makes.

Extend by subclassing `Attack` and adding the class to ATTACKS."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from statistics import NormalDist

import numpy as np

from manymodels.protocol import Logits, Payload, SyntheticBatch, Tensor, Weights, dense

from ..core.node import Node
from ..core.transport import Receiver, Transport


@dataclass
class AttackContext:
    honest: list[Node]  # the honest nodes, for omniscient attacks
    num_nodes: int
    num_attackers: int
    rng: np.random.Generator
    round: int = 0
    shared: dict = field(default_factory=dict)  # state colluding attackers share within a round


def _honest_weights(ctx: AttackContext, model: str) -> list[list[np.ndarray]]:
    return [n.learner.get_weights() for n in ctx.honest if n.learner.architecture == model]


class Attack:
    name: str = ""
    description: str = ""
    folds: bool = False  # whether the attacker's node folds what it receives (its own model matters)
    omniscient: bool = False  # whether it reads the honest nodes' current models (AttackContext.honest)

    def poison_labels(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        return y

    def poison(self, payload: Payload, node: Node, ctx: AttackContext) -> Payload:
        return payload

    def messages(self, node: Node, payloads: list[Payload], ctx: AttackContext) -> list[bytes]:
        """The signed bytes this attacker sends this round (by default: its poisoned payloads)."""
        return [node.seal(self.poison(payload, node, ctx)) for payload in payloads]

    def observe(self, sender_address: str, data: bytes) -> None:
        """Raw bytes the attacker's node received, before it verifies them."""


class GaussianNoise(Attack):
    name, description = "gaussian", ("send Gaussian noise instead of weights (std 1), logits (std 10) or samples' "
                                   "pixels (the data's mean and std, clipped to its range)")

    def poison(self, payload, node, ctx):
        noise = lambda a: ctx.rng.normal(0.0, 1.0, a.shape).astype(a.dtype)  # noqa: E731
        if isinstance(payload, Weights):
            return replace(payload, tensors=[noise(_values(t)) for t in payload.tensors])
        if isinstance(payload, Logits):
            return replace(payload, logits=noise(_values(payload.logits)) * 10)
        if isinstance(payload, SyntheticBatch):  # noise images, clipped to the data's range: they pass the checks
            x = payload.x
            noisy = np.clip(x.mean() + x.std() * noise(x), x.min(), x.max()).astype(x.dtype)
            return _with_card_digest(SyntheticBatch(noisy, payload.y, dict(payload.card)))
        return payload


def _values(tensor: Tensor) -> np.ndarray:
    """What an attacker tampers with: a plain array as it is, a coded one decoded (then sent plain)."""
    return tensor if isinstance(tensor, np.ndarray) else dense(tensor)


def _with_card_digest(batch: SyntheticBatch) -> SyntheticBatch:
    """The batch with its card's digest recomputed: a valid card for poisoned content."""
    batch.card["digest"] = batch.content_digest()
    return batch


class SignFlip(Attack):
    name, description = "signflip", "send the model negated and scaled by 10 (or negated logits)"

    def poison(self, payload, node, ctx):
        if isinstance(payload, Weights):
            return replace(payload, tensors=[-10.0 * _values(t) for t in payload.tensors])
        if isinstance(payload, Logits):
            return replace(payload, logits=-_values(payload.logits))
        return payload


class LabelFlip(Attack):
    name, description = "labelflip", "train honestly on poisoned data: every label y becomes C-1-y"

    def poison_labels(self, y, num_classes):
        return num_classes - 1 - y


class ALIE(Attack):
    """A little is enough (Baruch et al. 2019): all attackers send mean - z * std of the honest
    models, coordinate-wise, with z as large as the honest spread hides."""
    name, description = "alie", "colluding updates at mean - z*std of the honest models (a little is enough)"
    omniscient = True

    def poison(self, payload, node, ctx):
        if not isinstance(payload, Weights):
            return payload
        honest = _honest_weights(ctx, payload.model)
        n, f = ctx.num_nodes, ctx.num_attackers
        s = n // 2 + 1 - f  # honest nodes the attackers need on their side
        z = NormalDist().inv_cdf(min(max((n - s) / n, 0.5), 0.999))
        tensors = [np.mean(layer, axis=0) - z * np.std(layer, axis=0) for layer in zip(*honest)]
        return replace(payload, tensors=[t.astype(np.float32) for t in tensors])


class IPM(Attack):
    """Inner-product manipulation (Xie et al. 2020): send -eps times the honest mean."""
    name, description = "ipm", "send -0.5 x the mean honest model (inner-product manipulation)"
    omniscient = True

    def poison(self, payload, node, ctx):
        if not isinstance(payload, Weights):
            return payload
        honest = _honest_weights(ctx, payload.model)
        return replace(payload, tensors=[(-0.5 * np.mean(layer, axis=0)).astype(np.float32) for layer in zip(*honest)])


class LogitPoison(Attack):
    name, description = "logit", "confidently predict the wrong class (shift by one) and claim to know every class"

    def poison(self, payload, node, ctx):
        if not isinstance(payload, Logits):
            return payload
        logits = _values(payload.logits)
        wrong = np.roll(logits.astype(np.float32), 1, axis=1) * 5
        return replace(payload, logits=wrong.astype(logits.dtype),
                       class_counts=[10_000] * len(payload.class_counts))


class SyntheticPoison(Attack):
    name, description = "synthetic", "publish synthetic samples with wrong labels (and a valid card)"

    def poison(self, payload, node, ctx):
        if not isinstance(payload, SyntheticBatch):
            return payload
        return _with_card_digest(SyntheticBatch(payload.x, (payload.y + 1) % node.num_classes, dict(payload.card)))


class Sybil(Attack):
    """One adversary, many identities: every identity sends the same update, far from the honest
    ones. Identical points look like a tight cluster, which fools distance-based rules like Krum."""
    name, description = "sybil", "one adversary, many identities sending one identical poisoned update"
    omniscient = True

    def poison(self, payload, node, ctx):
        if not isinstance(payload, Weights):
            return payload
        key = ("sybil", ctx.round, payload.model)
        if key not in ctx.shared:
            honest = _honest_weights(ctx, payload.model)
            ctx.shared[key] = [(-2.0 * np.mean(layer, axis=0)).astype(np.float32) for layer in zip(*honest)]
        return replace(payload, tensors=ctx.shared[key])


class Forged(Attack):
    name, description = "forged", "send poisoned messages in an honest neighbour's name, signed with its own key"

    def messages(self, node, payloads, ctx):
        victim = ctx.honest[ctx.round % len(ctx.honest)].identity
        out = []
        for data in super().messages(node, [GaussianNoise().poison(p, node, ctx) for p in payloads], ctx):
            forged = bytearray(data)
            start = forged.index(node.identity.public_key)
            forged[start:start + 32] = victim.public_key  # claims the victim; the signature is the attacker's
            out.append(bytes(forged))
        return out


class Replay(Attack):
    name, description = "replay", "re-send honest messages it received earlier, byte for byte"

    def __init__(self) -> None:
        self.captured: dict[str, bytes] = {}  # the latest message from each sender

    def observe(self, sender_address, data):
        self.captured[sender_address] = data

    def messages(self, node, payloads, ctx):
        return list(self.captured.values())


class Stale(Attack):
    name, description = "stale", "send validly signed poison stamped an hour in the past"

    def messages(self, node, payloads, ctx):
        noise = GaussianNoise()
        return [node.seal(noise.poison(p, node, ctx), ts_ms=node.clock() - 3_600_000) for p in payloads]


class FreeRider(Attack):
    name, description = "freerider", "send nothing; take the knowledge it is sent and fold it into its own model"
    folds = True

    def messages(self, node, payloads, ctx):
        return []


ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (
    GaussianNoise, SignFlip, LabelFlip, ALIE, IPM, LogitPoison, SyntheticPoison, Sybil, Forged, Replay, Stale,
    FreeRider)}


class AttackSpecError(ValueError):
    pass


def parse_attack(spec: str) -> tuple[str, float]:
    name, _, fraction = spec.partition(":")
    if name not in ATTACKS:
        raise AttackSpecError(f"unknown attack {name!r}; available: {', '.join(ATTACKS)}")
    try:
        value = float(fraction)
    except ValueError:
        raise AttackSpecError(f"bad attack {spec!r}: expected NAME:FRACTION, e.g. {name}:0.2") from None
    if not 0 < value < 1:
        raise AttackSpecError(f"bad attack {spec!r}: the fraction of attackers must be in (0, 1)")
    return name, value


@dataclass
class Attacker:
    """An attack as a node's outbound filter (`Node(..., outbound=attacker)`): it rewrites what the
    node would honestly send."""
    attack: Attack
    context: AttackContext

    def __call__(self, node: Node, payloads: list[Payload]) -> list[tuple[bytes, str]]:
        return [(data, "attack") for data in self.attack.messages(node, payloads, self.context)]

    def tap(self, transport: Transport) -> Transport:
        """The node's transport, with the attack seeing every inbound message first."""
        return _Tapped(transport, self.attack)


@dataclass
class _Tapped:
    transport: Transport
    attack: Attack

    @property
    def address(self) -> str:
        return self.transport.address

    def send(self, peer: str, data: bytes) -> None:
        self.transport.send(peer, data)

    def set_receiver(self, receiver: Receiver) -> None:
        def observed(sender_address: str, data: bytes) -> None:
            self.attack.observe(sender_address, data)
            receiver(sender_address, data)
        self.transport.set_receiver(observed)


def folds(attackers: dict[int, str], i: int) -> bool:
    """Whether node i (of a network whose `attackers` are node index -> attack name) folds what it
    receives: most attackers' own models do not matter."""
    return i not in attackers or ATTACKS[attackers[i]].folds
