"""Benchmark the knapsack solvers on seeded ResNet-50-sized random instances.

60 channel groups, 8..64 choices each (neuron groups of 8 channels), values = cumulative sorted
importances; costs either a noisy staircase (``staircase``: flat steps, some tiny decreases) or
strictly increasing (``smooth``: every choice on the Pareto front, the DP's worst case). Budget
halfway between the smallest and the dense latency. Prints the median wall time of 5 solves and
the objective of each solver.

    python tools/bench_knapsack.py [--groups 60] [--choices 64] [--bins 4096] [--seed 0]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from halp_onnx.passes.knapsack import KnapsackItem, min_cost, solve


def instance(groups: int = 60, choices: int = 64, seed: int = 0, kind: str = "staircase") -> tuple[list[KnapsackItem], float]:
    rng = np.random.default_rng(seed)
    items = []
    for g in range(groups):
        k = int(rng.integers(8, choices + 1))
        widths = 8 * np.arange(1, k + 1)
        imp = np.sort(rng.gamma(2.0, 1.0, k))[::-1]
        value = np.cumsum(imp)
        steps = np.repeat(rng.uniform(0.002, 0.02, (k + 3) // 4), 4)[:k]  # staircase: every 4th step pays
        steps[np.arange(k) % 4 != 0] = 0.0
        cost = 0.01 + np.cumsum(steps) + rng.normal(0.0, 0.0005, k)  # measurement noise
        if kind == "smooth":
            cost = 0.01 + np.cumsum(rng.uniform(0.0005, 0.005, k))
        items.append(KnapsackItem(g, widths, value, cost))
    dense = sum(float(it.cost[-1]) for it in items)
    lo = min_cost(items)
    return items, lo + 0.5 * (dense - lo)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=60)
    ap.add_argument("--choices", type=int, default=64)
    ap.add_argument("--bins", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    for kind in ("staircase", "smooth"):
        items, budget = instance(args.groups, args.choices, args.seed, kind)
        print(f"[{kind}] {len(items)} groups, {sum(it.widths.size for it in items)} choices, "
              f"budget {budget:.3f} ms, min {min_cost(items):.3f} ms, bins {args.bins}")
        for name in ("exact", "augmented"):
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                sol = solve(items, budget, solver=name, bins=args.bins)
                times.append(time.perf_counter() - t0)
            print(f"  {name:9s} median {1e3 * statistics.median(times):7.2f} ms  value {sol.value:.4f}  "
                  f"cost {sol.cost:.4f} ms  feasible {sol.feasible}")


if __name__ == "__main__":
    main()
