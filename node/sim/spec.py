"""A simulation's options as given (`SimulationConfig`, which its report repeats) and as checked and
resolved once (`SimulationSpec`: every node's NodeSpec, each node's architecture, the topology, the
attackers). A mistake is a SpecError, one line for the user, with node/spec.py's words."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from ..learning.models import ARCHITECTURES, MIXED
from ..learning.privacy import NO_PRIVACY
from ..learning.probe import DEFAULT_SIZE
from ..learning.recipe import LearnerRecipe
from ..learning.training import DEFAULT_TRAINING
from ..spec import DEFAULT_CODECS, NodeSpec, SpecError, check_privacy
from .attacks import AttackSpecError, parse_attack
from .clocks import ClockError, Clocks
from .plants import PlantError, Plants, parse_plants
from .topology import TopologyError, neighbours

# Options added after reports existed, with their defaults: a report lists them only when they are not
# the default, so the reports of earlier runs stay byte for byte what the same options give now.
_LATER_OPTIONS = {**{key: getattr(DEFAULT_TRAINING, key) for key in
                     ("hidden", "optimizer", "momentum", "weight_decay", "shuffle")}, "plants": (), "share": "all",
                  "compress": DEFAULT_CODECS["weights"], "compress_logits": DEFAULT_CODECS["logits"],
                  **{f"dp_{key}": getattr(NO_PRIVACY, key) for key in ("noise", "clip", "epsilon", "delta")},
                  "schedule": "sync", "speeds": "same", "churn": "",
                  "data_seed": None, "label_noise": 0.0, "batched": True, "protocol_only": False}
SCHEDULES = ("sync", "async")

# Options that say how a run was carried out, not what ran: a report never lists them.
_HOW_IT_RAN = ("backend", "address")
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class SimulationConfig:
    nodes: int = 8
    rounds: int = 20
    dataset: str = "digits"
    partition: str = "dirichlet:0.5"
    model: str = "mlp"  # an architecture, "mixed", or a comma-separated list assigned in turn
    exchange: str = "weights"
    rule: str = "fedavg"  # weights rule (weights and mixed exchanges)
    logit_rule: str = "logit-probmean"  # logits rule (distill and mixed exchanges)
    topology: str = "full"
    local_epochs: int = 1
    seed: int = 0
    lr: float = DEFAULT_TRAINING.lr
    batch_size: int = DEFAULT_TRAINING.batch_size
    hidden: tuple[int, ...] = DEFAULT_TRAINING.hidden  # the mlp model's hidden layer sizes
    optimizer: str = DEFAULT_TRAINING.optimizer  # adam or sgd
    momentum: float = DEFAULT_TRAINING.momentum  # SGD's
    weight_decay: float = DEFAULT_TRAINING.weight_decay
    shuffle: bool = DEFAULT_TRAINING.shuffle
    loss: float = 0.0  # probability that a message is lost
    probe_size: int = DEFAULT_SIZE  # inputs set aside from the training data as the public probe set
    probe_file: str | None = None  # a user's own probe set (.npy) instead
    temperature: float = 2.0
    distill_epochs: int = 2
    synthetic_per_class: int = 20
    synthetic_weight: float = 0.5
    licence: str = "CC-BY-4.0"  # on this network's synthetic data cards
    accept_licences: tuple[str, ...] = ("CC0-1.0", "CC-BY-4.0")
    max_train: int | None = None  # subsample the training set (e.g. Fashion-MNIST) for speed
    max_test: int | None = None  # and the held-out test set
    attacks: tuple[str, ...] = ()  # NAME:FRACTION each; attackers are chosen by seed
    reputation: float = 0.0  # ban a peer whose reputation falls below this (0: never)
    plants: tuple[str, ...] = ()  # planted peers (node/sim/plants.py), e.g. "shuffled:2"; the built-in datasets only
    compress: str = DEFAULT_CODECS["weights"]  # the codec weights travel in (protocol/codecs.py)
    compress_logits: str = DEFAULT_CODECS["logits"]  # the codec logits travel in
    # DP-SGD (node/learning/privacy.py): σ and clipping, or a target ε at δ over `rounds` (also the budget)
    dp_noise: float = NO_PRIVACY.noise
    dp_clip: float = NO_PRIVACY.clip
    dp_epsilon: float = NO_PRIVACY.epsilon
    dp_delta: float = NO_PRIVACY.delta
    # A Flower client as every node's learner (MODULE:ATTR or FILE.py:ATTR[:MODEL], docs/FLOWER.md): node i
    # gets partition-id i of num-partitions = nodes and loads its own data; dataset, partition, model
    # and the learner options are then unused.
    client_app: str | None = None
    run_config: str = ""  # the client's context.run_config overrides, "k=v k2=v2" as `flwr run --run-config`
    share: str = "all"  # who gets each node's knowledge: all, reciprocal[:N] or allowlist:FILE
    # lock-step rounds, or every node on its own clock (node/sim/asynchronous.py); the nodes' step
    # durations and times away (node/sim/clocks.py): churn needs the async schedule
    schedule: str = "sync"
    speeds: str = "same"  # same, lognormal:SIGMA, slow:FRACTION:FACTOR or a trace file (.csv, .json)
    churn: str = ""  # none, random:UP_S:DOWN_S or a .csv file of node,leave_ms,return_ms rows
    # Where the nodes run: "local" (this process) or "ray" (shards on a Ray cluster at `address`, a new
    # local one if None; node/sim/ray_backend.py). Not in the report: both give the same report.
    backend: str = "local"
    address: str | None = None
    # The training data's draw apart from the rest (a study's data resample with the initialisation kept):
    # the max_train subsample, the partition, planted peers and label noise; None: `seed` draws them too.
    data_seed: int | None = None
    label_noise: float = 0.0  # this fraction of the training labels (not the test set's) set to another class
    # Nodes of one architecture train, are evaluated and fold in batches, equal to one by one in every
    # bit (node/learning/batched.py, node/sim/batching.py); False: one by one, as before.
    batched: bool = True
    # Signed messages and no training (node/sim/protocol_only.py): dissemination, bandwidth and Byzantine
    # effects at scale; the report has no accuracies.
    protocol_only: bool = False

    def to_report(self) -> dict:
        report = asdict(self)
        for key in _HOW_IT_RAN:
            del report[key]
        for key, default in _LATER_OPTIONS.items():
            if report[key] == default:
                del report[key]
        return report


@dataclass(frozen=True)
class SimulationSpec:
    config: SimulationConfig  # the options as given
    node: NodeSpec  # every node's; its learner recipe with node 0's partition id, model as given
    archs: tuple[str, ...]  # each node's architecture; empty with a Flower client (it names its own)
    adjacency: list[list[int]]  # each node's neighbours, by index
    attackers: dict[int, str]  # node index -> attack name
    plants: Plants = Plants()
    clocks: Clocks = Clocks()  # each node's step durations and times away

    @classmethod
    def parse(cls, config: SimulationConfig) -> SimulationSpec:
        c = config
        if c.nodes < 1 or c.rounds < 1 or c.local_epochs < 1:
            raise SpecError("--nodes, --rounds and --local-epochs must be at least 1")
        _check_backend(c)
        if not 0 <= c.loss <= 1:
            raise SpecError(f"--loss is the probability that a message is lost, in [0, 1]; got {c.loss:g}")
        if c.schedule not in SCHEDULES:
            raise SpecError(f"--schedule is sync or async; got {c.schedule!r}")
        if c.churn and c.schedule != "async":
            raise SpecError("--churn needs --schedule async: a synchronous round waits for every node")
        if not 0 <= c.label_noise < 1:
            raise SpecError(f"--label-noise is a fraction of the training labels, in [0, 1); got {c.label_noise:g}")
        recipe = LearnerRecipe(
            dataset=c.dataset, partition=c.partition, num_partitions=c.nodes, model=c.model, seed=c.seed, lr=c.lr,
            batch_size=c.batch_size, hidden=tuple(c.hidden), optimizer=c.optimizer, momentum=c.momentum,
            weight_decay=c.weight_decay, shuffle=c.shuffle, probe_size=c.probe_size, client_app=c.client_app or "",
            run_config=c.run_config, dp_noise=c.dp_noise, dp_clip=c.dp_clip, dp_epsilon=c.dp_epsilon,
            dp_delta=c.dp_delta, dp_epochs=c.rounds * c.local_epochs)
        node = NodeSpec.parse(
            recipe, exchange=c.exchange, rule=c.rule, logit_rule=c.logit_rule, reputation=c.reputation,
            local_epochs=c.local_epochs, temperature=c.temperature, distill_epochs=c.distill_epochs,
            synthetic_per_class=c.synthetic_per_class, synthetic_weight=c.synthetic_weight, licence=c.licence,
            accept_licences=tuple(c.accept_licences), share=c.share, compress=c.compress,
            compress_logits=c.compress_logits)
        archs = () if c.client_app else architectures(c.model, c.nodes)
        if node.learner.privacy.on and "forest" in archs:
            check_privacy(replace(recipe, model="forest"), c.exchange)
        try:
            adjacency = neighbours(c.topology, c.nodes, c.seed)
            attackers = _attackers(c)
            plants = parse_plants(tuple(c.plants), c.nodes)
            clocks = Clocks.parse(c.speeds, c.churn, c.nodes, c.local_epochs, c.seed, c.rounds)
        except (TopologyError, AttackSpecError, PlantError, ClockError) as exc:
            raise SpecError(str(exc)) from None
        if c.client_app and "labelflip" in attackers.values():
            raise SpecError("labelflip poisons the simulator's dataset; a Flower client loads its own data")
        if c.client_app and (c.plants or c.label_noise):
            raise SpecError("planted peers and label noise change the simulator's dataset; a Flower client loads "
                            "its own data")
        return cls(c, node, archs, adjacency, attackers, plants, clocks)

    def recipe(self, i: int) -> LearnerRecipe:
        """Node i's learner recipe."""
        return replace(self.node.learner, partition_id=i, model=self.archs[i] if self.archs else "")


def _check_backend(c: SimulationConfig) -> None:
    if c.backend not in BACKENDS:
        raise SpecError(f"unknown backend {c.backend!r}; available: {', '.join(BACKENDS)}")
    if c.address is not None and c.backend != "ray":
        raise SpecError("--address is a Ray cluster's: it needs --backend ray")
    if c.backend == "ray" and c.schedule != "sync":
        raise SpecError("--backend ray runs the synchronous schedule; --schedule async runs on --backend local")
    if c.backend == "ray" and c.client_app:
        raise SpecError("--backend ray runs the built-in datasets; a Flower client app (--client-app) runs on "
                        "--backend local")


def architectures(model: str, nodes: int) -> tuple[str, ...]:
    """The architecture of each node: `model` is one, "mixed" or a comma list, assigned in turn."""
    names = MIXED if model == "mixed" else tuple(m.strip() for m in model.split(","))
    for name in names:
        if name not in ARCHITECTURES:
            raise SpecError(f"unknown model {name!r}; available: {', '.join(ARCHITECTURES)}, mixed")
    return tuple(names[i % len(names)] for i in range(nodes))


def _attackers(config: SimulationConfig) -> dict[int, str]:
    """Node index -> attack name, chosen by seed; round(fraction * nodes) nodes per attack."""
    order = np.random.default_rng([config.seed, 0xA77AC]).permutation(config.nodes)
    chosen, start = {}, 0
    for spec in config.attacks:
        name, fraction = parse_attack(spec)
        count = max(1, round(fraction * config.nodes))
        chosen.update({int(i): name for i in order[start:start + count]})
        start += count
    if start >= config.nodes:
        raise AttackSpecError(f"attacks {', '.join(config.attacks)} leave no honest node among {config.nodes}")
    return chosen
