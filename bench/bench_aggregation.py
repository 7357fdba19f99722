"""Aggregation rules vs Flower's kernels vs a plain copy of the same bytes, measured in one run.

    python bench/bench_aggregation.py                       # 10 updates x 10 M float32 parameters
    python bench/bench_aggregation.py --params 100000 --updates 7
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from flwr.server.strategy import aggregate as flower

from manymodels.aggregation import get_rule


def timed(fn, repeat: int) -> tuple[float, object]:
    """Best wall time of `repeat` runs, after a first run; one run only when that first one is slow (> 1 s)."""
    start = time.perf_counter()
    out = fn()
    best = time.perf_counter() - start
    for _ in range(repeat - 1 if best < 1.0 else 0):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=int, default=10_000_000, help="parameters per update (default 10 M)")
    parser.add_argument("--updates", type=int, default=10, help="number of updates (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs for fast cases")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    bias = max(1, args.params // 100)  # two tensors, e.g. 9.9 M + 0.1 M
    results = [
        ([rng.standard_normal(args.params - bias, dtype=np.float32), rng.standard_normal(bias, dtype=np.float32)], int(rng.integers(1, 100)))
        for _ in range(args.updates)
    ]
    copy_s, _ = timed(lambda: [np.copy(a) for update, _ in results for a in update], args.repeat)
    cases = [
        ("fedavg", lambda: flower.aggregate(results)),
        ("median", lambda: flower.aggregate_median(results)),
        ("krum:2", lambda: flower.aggregate_krum(results, num_malicious=2, to_keep=0)),
    ]
    print(f"{args.updates} updates x {args.params:,} float32 parameters ({args.updates * args.params * 4 / 1e6:.0f} MB)")
    print(f"{'rule':<8} {'ours s':>8} {'flower s':>9} {'copy s':>8} {'ours/flower':>12} {'ours/copy':>10} {'max |diff|':>11}")
    for spec, theirs in cases:
        rule = get_rule(spec)
        ours_s, ours = timed(lambda: rule(results, reference=results[0][0]), args.repeat)
        flower_s, expected = timed(theirs, args.repeat)
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ours, expected))
        print(f"{spec:<8} {ours_s:8.3f} {flower_s:9.3f} {copy_s:8.3f} {ours_s / flower_s:12.2f} {ours_s / copy_s:10.2f} {diff:11.2e}")


if __name__ == "__main__":
    main()
