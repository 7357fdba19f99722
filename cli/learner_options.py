"""The learner's training options, the codecs and DP-SGD, one declaration for `simulate` and `node start`.
Every default is None, "not given": `simulate` then trains as node.learning.training.Training's
defaults say (and sends in node/spec.py's DEFAULT_CODECS), and `node start` keeps the saved config's value."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from manymodels.node.learning.training import DEFAULT_TRAINING as T  # a dataclass, no torch

from .help_defaults import shown

HiddenOption = Annotated[Optional[str], typer.Option(
    help="Hidden layer sizes of the mlp model, comma-separated: 64,32 is two layers.", show_default=shown(T.hidden))]
OptimizerOption = Annotated[Optional[str], typer.Option(help="adam or sgd.", show_default=T.optimizer)]
LrOption = Annotated[Optional[float], typer.Option(help="Learning rate.", show_default=shown(T.lr))]
MomentumOption = Annotated[Optional[float], typer.Option(
    help="SGD's momentum, in [0, 1).", show_default=shown(T.momentum))]
WeightDecayOption = Annotated[Optional[float], typer.Option(
    help="L2 weight decay.", show_default=shown(T.weight_decay))]
BatchSizeOption = Annotated[Optional[int], typer.Option(help="Mini-batch size.", show_default=shown(T.batch_size))]
ShuffleOption = Annotated[Optional[bool], typer.Option(
    "--shuffle/--no-shuffle", help="A fresh order of the examples every epoch.",
    show_default=shown(T.shuffle, "shuffle"))]


CompressOption = Annotated[Optional[str], typer.Option(
    metavar="CODEC", help="How weights travel, with error feedback: float32, float16, bfloat16, int8[:BLOCK], "
    "qint:BITS[:BLOCK], topk:FRACTION, randk:FRACTION; see `manymodels codecs` and docs/COMPRESSION.md.", show_default="float32")]
CompressLogitsOption = Annotated[Optional[str], typer.Option(
    metavar="CODEC", help="How logits travel (distill, mixed): float16, float32, bfloat16, int8[:BLOCK], "
    "uint8[:BITS] (quantised log-probabilities).", show_default="float16")]


DpNoiseOption = Annotated[Optional[float], typer.Option(
    metavar="SIGMA", help="DP-SGD: the noise multiplier (Gaussian noise of SIGMA x --dp-clip on each step's summed "
    "clipped gradients); with --exchange synthetic, of the class moments' noise; see docs/PRIVACY.md.",
    show_default="off")]
DpClipOption = Annotated[Optional[float], typer.Option(
    metavar="C", help="DP-SGD: each example's gradient is clipped to this L2 norm.", show_default="1")]
DpEpsilonOption = Annotated[Optional[float], typer.Option(
    metavar="E", help="DP-SGD: the privacy budget; without --dp-noise, the noise that spends it over the planned "
    "training. A node past it publishes no more.", show_default="none")]
DpDeltaOption = Annotated[Optional[float], typer.Option(
    metavar="D", help="DP-SGD: the delta that epsilon is reported at.", show_default="1e-05")]

DpEpochsOption = Annotated[Optional[int], typer.Option(
    help="DP-SGD with --dp-epsilon and no --dp-noise: the training periods (a local epoch each) the noise is "
    "planned for.")]


def privacy_options(dp_noise: float | None, dp_clip: float | None, dp_epsilon: float | None,
                    dp_delta: float | None, **planned: int | None) -> dict:
    """The DP-SGD options given, as fields (checked later, with the rest of the spec); `planned`:
    node start's dp_epochs."""
    given = {"dp_noise": dp_noise, "dp_clip": dp_clip, "dp_epsilon": dp_epsilon, "dp_delta": dp_delta, **planned}
    return {k: v for k, v in given.items() if v is not None}


def codec_options(compress: str | None, compress_logits: str | None) -> dict:
    """The codecs given, as config fields (checked later, with the rest of the spec)."""
    given = {"compress": compress, "compress_logits": compress_logits}
    return {k: v for k, v in given.items() if v is not None}


def training_options(hidden: str | None, optimizer: str | None, lr: float | None, momentum: float | None,
                     weight_decay: float | None, batch_size: int | None, shuffle: bool | None) -> dict:
    """The options given, as learner recipe fields (checked later, with the rest of the spec)."""
    from manymodels.node.spec import hidden_sizes

    given = {"hidden": None if hidden is None else hidden_sizes(hidden), "optimizer": optimizer, "lr": lr,
             "momentum": momentum, "weight_decay": weight_decay, "batch_size": batch_size, "shuffle": shuffle}
    return {k: v for k, v in given.items() if v is not None}
