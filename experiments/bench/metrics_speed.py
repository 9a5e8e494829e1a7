"""Speed of the survival metrics: evaluate() and bootstrap_ci(1,000) on random 20-bin predictions.

    python experiments/bench/metrics_speed.py --patients 200 1100
"""
import argparse
import sys
import time

import numpy as np

from impumae.survival.metrics import bootstrap_ci, evaluate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patients", type=int, nargs="+", default=[200, 1100])
    p.add_argument("--n-boot", type=int, default=1000)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    cuts = np.linspace(0, 10, 20)
    print("| patients | evaluate (s) | bootstrap_ci x%d (s) |" % args.n_boot)
    print("|---|---|---|")
    for n in args.patients:
        logits = rng.normal(-2, 1, size=(n, 20))
        time_, event = rng.exponential(3, n), rng.integers(0, 2, n)
        train_time, train_event = rng.exponential(3, 4 * n), rng.integers(0, 2, 4 * n)
        start = time.perf_counter()
        evaluate(logits, cuts, time_, event, train_time, train_event, from_logits=True)
        eval_s = time.perf_counter() - start
        start = time.perf_counter()
        bootstrap_ci(logits, cuts, time_, event, train_time, train_event, n_boot=args.n_boot, from_logits=True)
        print(f"| {n} | {eval_s:.3f} | {time.perf_counter() - start:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
