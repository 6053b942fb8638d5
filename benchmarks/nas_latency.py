"""Benchmark: how well the NAS latency lookup table predicts measured batch-1 latency.

No training is involved (latency does not depend on the weights), so this runs in minutes
where ``benchmarks/nas.py`` takes half an hour. For each thread count in ``--threads``, on the
Fashion-MNIST-shaped elastic CNN (1 x 28 x 28 inputs, 10 classes, the block type of
``--block``), a :class:`sconce_nas.latency.LatencyTable` is built exactly as a search builds
it (its line fitted on the smallest, the largest and random subnets), then checked on
``--subnets`` other random subnets (:meth:`LatencyTable.check`: each deployed subnet timed
whole against its prediction). The same subnets are then timed a second time, in the same
order, which gives the noise floor: how often the measurement agrees with itself within 10%.

Run (on a quiet machine):
    python benchmarks/nas_latency.py
    python benchmarks/nas_latency.py --quick

Prints a table and writes ``benchmarks/results/nas-latency.json``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_flags

from sconce.metrics.timing import TimingSettings
from sconce.storage import atomic_write_json
from sconce_nas.elastic import ElasticCNN
from sconce_nas.latency import LatencyCheck, LatencyTable
from sconce_nas.run import CALIBRATION_SUBNETS

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_WITHIN_10PCT = 0.90


def check_threads(space: ElasticCNN, threads: int, subnets: int, seed: int
                  ) -> dict[str, Any]:
    """Build, calibrate and check a table on ``threads`` threads; time the subnets again."""
    example = torch.randn(1, 1, 28, 28)
    table = LatencyTable(TimingSettings(threads=threads), channels_last=True)
    rng = random.Random(f"calibration:{seed}")
    calibration = [space.smallest(), space.largest(),
                   *(space.sample(rng) for _ in range(CALIBRATION_SUBNETS - 2))]
    started = time.perf_counter()
    table.calibrate(space, example, calibration)
    rng = random.Random(f"check:{seed}")
    choices = [space.sample(rng) for _ in range(subnets)]
    check = table.check(space, example, choices)
    again = [table.measure(table.deployed(space, choice), example) for choice in choices]
    repeat = LatencyCheck(predicted=again, measured=check.measured)
    return {"threads": threads, "units": len(table.entries),
            "overhead_ms": table.overhead_ms, "seconds": time.perf_counter() - started,
            "check": check.to_dict(), "remeasured": repeat.to_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--subnets", type=int, default=None, help="checked subnets (50)")
    parser.add_argument("--block", default="fused", choices=("fused", "mbconv"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run (8 subnets)")
    args = parser.parse_args()
    subnets = args.subnets or (8 if args.quick else 50)
    space = ElasticCNN(in_channels=1, image_size=28, num_classes=10, block=args.block)
    flags = cpu_flags()
    rows = [check_threads(space, int(t), subnets, args.seed) for t in args.threads.split(",")]
    print(f"\nNAS latency table, elastic CNN ({args.block} blocks, 1x28x28), {subnets} random "
          f"subnets; CPU flags: {flags}; every time is a subnet's fastest call")
    header = (f"{'threads':>7} {'units':>5} {'within 10%':>10} {'median err':>10} "
              f"{'max err':>8} {'re-measured within 10%':>22} {'median diff':>11} {'s':>5}")
    print(header)
    print("-" * len(header))
    for row in rows:
        check, again = row["check"], row["remeasured"]
        print(f"{row['threads']:>7} {row['units']:>5} {100 * check['within_10pct']:>9.0f}% "
              f"{100 * check['median_abs_error']:>9.1f}% {100 * check['max_abs_error']:>7.1f}% "
              f"{100 * again['within_10pct']:>21.0f}% {100 * again['median_abs_error']:>10.1f}% "
              f"{row['seconds']:>5.0f}")
    print("\nTargets")
    for row in rows:
        share = row["check"]["within_10pct"]
        verdict = "met" if share >= TARGET_WITHIN_10PCT else "MISSED"
        print(f"  [{verdict}] {row['threads']} thread(s): the table predicts within 10% on "
              f"{100 * share:.0f}% of subnets (target {100 * TARGET_WITHIN_10PCT:.0f}%); the "
              f"measurement agrees with itself on {100 * row['remeasured']['within_10pct']:.0f}%")
    errors = [abs(e) for row in rows for e in LatencyCheck(
        row["check"]["predicted_ms"], row["check"]["measured_ms"]).errors]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "nas-latency.json"
    atomic_write_json(out, {"cpu_flags": flags, "block": args.block, "subnets": subnets,
                            "torch": torch.__version__, "rows": rows,
                            "median_abs_error_all": statistics.median(errors)})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
