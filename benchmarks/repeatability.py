"""Repeatability of the comparison table's latency ratios, run after run.

Runs the demo (``sconce compress``) and the README's VGG example (``sconce.train`` then
``sconce.compress`` with 50% channel pruning and int8, on Fashion-MNIST) several times each,
every run in a fresh process (as a user would), and prints every latency ratio of every
run's table (each stage against the original, at batch 1 and at the throughput batch), the
spread of each ratio across runs, and the stability each run reported. Target: every ratio
within +-10% of its median across runs on a quiet machine, and the pruned VGG never reported
slower than the original (``benchmarks/channel_pruning.py`` measures it faster).

The VGG example runs with short training (``--vgg-train-epochs``, ``--vgg-finetune-epochs``):
the latency ratios depend on the pruned architecture, not on the accuracy reached.

Run it under ``/work/tools/bench`` (a quiet machine); ``--quick`` for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import cpu_flags

from sconce.storage import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = 0.10
VGG_SNIPPET = """
import sys
import sconce
model = sconce.models.vgg(num_classes=10, in_channels=1, image_size=28)
sconce.train(model, "fashion-mnist", epochs={train})
result = sconce.compress(model, "fashion-mnist",
                         recipe=[("prune.channel", {{"sparsity": 0.5}}), "quant.int8"],
                         finetune_epochs={finetune}, seed={seed})
result.save(sys.argv[1])
"""


def run_once(example: str, folder: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One run in a fresh process; its report's latency ratios and notes."""
    env = {**os.environ, "SCONCE_NO_PROGRESS": "1"}
    started = time.perf_counter()
    if example == "demo":
        command = [sys.executable, "-m", "sconce.cli", "-q", "compress", "--out", str(folder),
                   "--seed", str(seed)]
    else:
        code = VGG_SNIPPET.format(train=args.vgg_train_epochs, finetune=args.vgg_finetune_epochs,
                                  seed=seed)
        command = [sys.executable, "-c", code, str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{example} run failed:\n{done.stderr[-3000:]}")
    report = json.loads((folder / "report.json").read_text())
    stages = report["stages"]
    ratios: dict[str, float] = {}
    stability: dict[str, str] = {}
    for stage in stages[1:]:
        for metric in ("latency", "latency_batch"):
            base, value = stages[0]["values"].get(metric), stage["values"].get(metric)
            if base and value:
                ratios[f"{stage['title']} {metric}"] = base / value
        for key, text in stage["notes"].items():
            if key.endswith("vs original"):
                stability[f"{stage['title']} {key}"] = text
    return {"example": example, "seed": seed, "ratios": ratios, "stability": stability,
            "original_ms": {m: stages[0]["values"].get(m) for m in ("latency", "latency_batch")},
            "timing": report["run"].get("timing"), "seconds": time.perf_counter() - started}


def spread(values: list[float]) -> float:
    """The largest distance from the median, relative to it."""
    centre = statistics.median(values)
    return max(abs(v - centre) for v in values) / centre if centre else 0.0


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for example in dict.fromkeys(r["example"] for r in runs):
        mine = [r for r in runs if r["example"] == example]
        for key in mine[0]["ratios"]:
            values = [r["ratios"].get(key) for r in mine]
            known = [v for v in values if v is not None]
            rows.append({"example": example, "ratio": key, "runs": values,
                         "spread": spread(known) if known else None,
                         "within_target": bool(known) and spread(known) <= TOLERANCE,
                         "ever_slower": any(v < 1.0 for v in known)})
    return rows


def print_table(rows: list[dict[str, Any]], runs: list[dict[str, Any]], flags: str,
                threads: int) -> None:
    count = max(len(r["runs"]) for r in rows)
    head = ["example", "ratio (original / stage)",
            *[f"run {i + 1}" for i in range(count)], "spread", "target +-10%"]
    lines = [head, ["---"] * len(head)]
    for row in rows:
        cells = [f"{v:.2f}x" if v is not None else "n/a" for v in row["runs"]]
        lines.append([row["example"], row["ratio"].replace("latency_batch", "b=64")
                      .replace("latency", "b=1"), *cells,
                      f"+-{100 * row['spread']:.1f}%" if row["spread"] is not None else "n/a",
                      "met" if row["within_target"] else "MISSED"])
    for line in lines:
        print("| " + " | ".join(line) + " |")
    print(f"\nCPU flags: {flags}; torch threads {threads}; {platform.machine()}")
    for run in runs:
        original = ", ".join(f"{k} {v:.4g} ms" for k, v in run["original_ms"].items() if v)
        print(f"{run['example']} seed {run['seed']}: Original {original}; {run['seconds']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 runs each, tiny training")
    parser.add_argument("--runs", type=int, default=None, help="runs of each example (3)")
    parser.add_argument("--examples", nargs="+", choices=["demo", "vgg"], default=["demo", "vgg"])
    parser.add_argument("--vgg-train-epochs", type=float, default=None)
    parser.add_argument("--vgg-finetune-epochs", type=float, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    runs_each = args.runs or (2 if args.quick else 3)
    if args.vgg_train_epochs is None:
        args.vgg_train_epochs = 0.02 if args.quick else 0.1
    if args.vgg_finetune_epochs is None:
        args.vgg_finetune_epochs = 0.01 if args.quick else 0.05
    out = args.out or RESULTS / ("repeatability-quick.json" if args.quick
                                 else "repeatability.json")
    flags = cpu_flags()
    from sconce.metrics.timing import default_threads

    threads = default_threads()
    runs = []
    with tempfile.TemporaryDirectory(prefix="sconce-repeat-") as scratch:
        for example in args.examples:
            for index in range(runs_each):
                folder = Path(scratch) / f"{example}-{index}"
                run = run_once(example, folder, args, seed=0)
                runs.append(run)
                print(f"{example} run {index + 1}: " + ", ".join(
                    f"{k} {v:.2f}x" for k, v in run["ratios"].items()), flush=True)
    rows = summarise(runs)
    print()
    print_table(rows, runs, flags, threads)
    targets = {"every ratio within +-10% across runs": all(r["within_target"] for r in rows),
               "pruned VGG never reported slower": not any(
                   r["ever_slower"] for r in rows
                   if r["example"] == "vgg" and r["ratio"].startswith("Pruned"))}
    print("\n" + "\n".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in targets.items()))
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(out, {"benchmark": "repeatability", "quick": args.quick,
                            "cpu_flags": flags, "threads": threads, "runs": runs, "rows": rows,
                            "targets": targets,
                            "settings": {"vgg_train_epochs": args.vgg_train_epochs,
                                         "vgg_finetune_epochs": args.vgg_finetune_epochs}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
