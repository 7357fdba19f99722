"""Compression (issue 12): what each codec saves, what it costs in accuracy, and how fast it runs.

1. Bytes to reach 90 % of pooled accuracy (mean node accuracy >= 0.9 x pooled, pooled from the same run;
   bench_many_models.py's measure) on digits (or --dataset fashion-mnist --max-train N), Dirichlet
   alpha=0.1, a homogeneous mlp network:
   weight gossip with each weights codec (float32, float16, int8, top-k 1 % and 5 % with error
   feedback, ...) and distillation with float16 and uint8 logits; the final accuracy's loss against
   float32 (goal: a weights codec >= 8x fewer bytes at <= 1 point loss; distill >= 10x fewer than
   float32 weight gossip).
2. Codec throughput on 10 M float32 parameters: encode and decode MB/s (of float32 input) next to a
   memcpy of the same 40 MB (goal: never the bottleneck of a 1 GbE link, 125 MB/s).
Writes bench/out/compression.{md,json} and prints the Markdown.

    python bench/bench_compression.py                          # the issue's setting (~10 min on 2 cores)
    python bench/bench_compression.py --rounds 5 --params 1000000 --weights float32,int8 --distill float16
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench_many_models import to_target
from manymodels.node.sim.simulator import SimulationConfig, run_simulation
from manymodels.protocol import dense, get_codec

WEIGHTS = "float32,float16,bfloat16,int8,int8:256,qint:4,qint:4:256,qint:3,qint:2,topk:0.05,topk:0.01,randk:0.05"
DISTILL = "float16,uint8,uint8:4"
GOAL_WEIGHTS, GOAL_LOSS, GOAL_DISTILL, LINK_MBPS = 8.0, 1.0, 10.0, 125.0


def simulate(exchange: str, codec: str, args) -> dict:
    option = {"compress": codec} if exchange == "weights" else {"compress_logits": codec}
    config = SimulationConfig(nodes=args.nodes, rounds=args.rounds, dataset=args.dataset, max_train=args.max_train,
                              partition="dirichlet:0.1",
                              exchange=exchange, seed=args.seed, **option)
    report = run_simulation(config)
    s = report["summary"]
    print(f"  {exchange} {codec}: {s['wall_seconds']:.0f} s, mean {s['mean_accuracy']:.3f} (alone "
          f"{s['mean_local_only_accuracy']:.3f}, pooled {s['pooled_accuracy']:.3f})", flush=True)
    return report


def bytes_section(args) -> tuple[list[str], list[dict]]:
    runs = [("weights", c, simulate("weights", c, args)) for c in args.weights.split(",")]
    runs += [("distill", c, simulate("distill", c, args)) for c in args.distill.split(",")]
    base = next((to_target(r) for ex, c, r in runs if (ex, c) == ("weights", "float32")), None)
    base_final = next((r["summary"]["mean_accuracy"] for ex, c, r in runs if (ex, c) == ("weights", "float32")), None)
    rows, data = [], []
    for exchange, codec, report in runs:
        t = to_target(report)
        final = report["summary"]["mean_accuracy"]
        ratio = base["bytes"] / t["bytes"] if base and base["bytes"] and t["bytes"] else None
        loss = 100 * (base_final - final) if base_final is not None else None
        goal = GOAL_WEIGHTS if exchange == "weights" else GOAL_DISTILL
        meets = ratio is not None and ratio >= goal and (exchange == "distill" or loss <= GOAL_LOSS)
        reached = f"round {t['round']}" if t["round"] else f"never (best {t['best_accuracy']:.3f})"
        rows.append(f"| {exchange} | {codec} | {t['bytes_per_round'] / 1e6:,.3f} | {reached} | "
                    f"{t['bytes'] / 1e6 if t['bytes'] else float('nan'):,.3f} | "
                    f"{f'{ratio:,.1f}x' if ratio else '-'} | {final:.3f} | "
                    f"{f'{loss:+.1f}' if loss is not None else '-'} | {'**yes**' if meets else 'no'} |")
        data.append({"exchange": exchange, "codec": codec, "final_accuracy": final, "fewer_bytes_than_float32": ratio,
                     "accuracy_loss_points": loss, "meets_goal": meets, **t})
    rows += ["", *common_target(runs, data)]
    header = ["| exchange | codec | MB per round | reached 0.9 x pooled | MB to target | fewer bytes than float32 "
              "weights | final accuracy | loss vs float32 weights (pts) | goal met |", "|---" * 9 + "|"]
    return header + rows, data


def common_target(runs: list[tuple[str, str, dict]], data: list[dict]) -> list[str]:
    """Bytes to the best accuracy every distillation codec reaches (distillation may never reach
    0.9 x pooled at alpha=0.1), for each logits codec and for float32 weight gossip."""
    distill = [(codec, report) for exchange, codec, report in runs if exchange == "distill"]
    weights = next((report for exchange, codec, report in runs if (exchange, codec) == ("weights", "float32")), None)
    if not distill:
        return []
    common = min(to_target(report)["best_accuracy"] for _, report in distill)
    spent = {f"distill {codec}": to_target(report, common)["bytes"] for codec, report in distill}
    if weights is not None:
        spent["weights float32"] = to_target(weights, common)["bytes"]
    first = spent[f"distill {distill[0][0]}"]
    data.append({"common_target": common, "bytes": spent})
    return [f"To {common:.3f}, the best mean accuracy every logits codec reaches: "
            + "; ".join(f"{name} {b / 1e6:,.3f} MB ({b / first:,.2f}x distill {distill[0][0]}'s bytes)"
                        for name, b in spent.items() if b) + "."]


def _rate(fn, megabytes: float, repeat: int) -> float:
    """MB/s of `fn` over `megabytes`, the best of `repeat` runs."""
    best = min(_timed(fn) for _ in range(repeat))
    return megabytes / best


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def throughput_section(args) -> tuple[list[str], list[dict]]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=args.params).astype(np.float32)
    base = x + rng.normal(scale=0.01, size=args.params).astype(np.float32)
    megabytes = x.nbytes / 1e6
    memcpy = _rate(lambda: np.copyto(np.empty_like(x), x), megabytes, args.repeat)
    rows, data = [f"| memcpy | {memcpy:,.0f} | {memcpy:,.0f} | 32.00 | - | - |"], [{"codec": "memcpy", "encode_mbps": memcpy}]
    for spec in args.throughput.split(","):
        codec = get_codec(spec)
        logits = spec.startswith("uint8")
        array = x.reshape(-1, 10) if logits else x  # uint8 quantises log-probabilities of rows
        coded = codec.encode(array, rng, base=None if logits else base)
        encode = _rate(lambda: codec.encode(array, rng, base=None if logits else base), megabytes, args.repeat)
        decode = _rate(lambda: dense(coded, base=None if logits else base), megabytes, args.repeat)
        size = sum(p.nbytes for p in coded.parts) if hasattr(coded, "parts") else coded.nbytes
        bits = 8 * size / x.size
        needed = LINK_MBPS * 32 / bits  # float32 MB/s that the link's 125 MB/s of coded bytes stand for
        keeps_up = min(encode, decode) >= needed
        rows.append(f"| {spec} | {encode:,.0f} | {decode:,.0f} | {bits:.2f} | {needed:,.0f} | "
                    f"{'**yes**' if keeps_up else 'no'} |")
        data.append({"codec": spec, "encode_mbps": encode, "decode_mbps": decode, "bits_per_value": bits,
                     "needed_mbps": needed, "keeps_up_with_1gbe": keeps_up})
    header = ["| codec | encode MB/s | decode MB/s | bits per value | MB/s needed for 1 GbE | keeps up? |",
              "|---" * 6 + "|"]
    return header + rows, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=WEIGHTS, help="weights codecs to compare")
    parser.add_argument("--distill", default=DISTILL, help="logits codecs to compare")
    parser.add_argument("--dataset", default="digits", help="digits, fashion-mnist or mnist1d")
    parser.add_argument("--max-train", type=int, default=None, help="subsample the training set (fashion-mnist)")
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", type=int, default=10_000_000, help="parameters for the throughput test")
    parser.add_argument("--throughput", default="float16,bfloat16,int8,int8:256,qint:4,qint:4:256,qint:3,topk:0.01,randk:0.01,uint8")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "out"))
    args = parser.parse_args()
    started, cpu = time.perf_counter(), time.process_time()
    bytes_rows, bytes_data = bytes_section(args)
    speed_rows, speed_data = throughput_section(args)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    md = ["## Compression: bytes to target, accuracy, throughput", "",
          f"{args.dataset}{f' (at most {args.max_train:,} training examples)' if args.max_train else ''}, Dirichlet alpha=0.1, {args.nodes} mlp nodes, {args.rounds} rounds, full topology, seed {args.seed}, "
          "fedavg; other options at the simulator's defaults. Bytes are everything all nodes sent (weights or logits "
          "messages, signed envelopes). Goals: a weights codec >= 8x fewer bytes than float32 at <= 1 point "
          "accuracy loss; distill >= 10x fewer than float32 weight gossip.", "", *bytes_rows, "",
          f"### Throughput on {args.params:,} float32 parameters ({4 * args.params / 1e6:,.0f} MB), best of "
          f"{args.repeat}", "",
          "MB/s of float32 input (decode: of float32 output). A codec keeps up with 1 GbE when both directions run "
          "faster than the link delivers its compressed bytes (125 MB/s of compressed data = 125 x 32 / bits MB/s "
          "of float32).", "", *speed_rows, "", f"Wall time {wall:.0f} s ({cpu:.0f} s of CPU)."]
    out = {"settings": vars(args), "bytes": bytes_data, "throughput": speed_data, "wall_seconds": round(wall, 1)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "compression.md").write_text("\n".join(md) + "\n")
    Path(args.out, "compression.json").write_text(json.dumps(out, indent=1) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
