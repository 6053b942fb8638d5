"""Benchmark: gradual magnitude pruning with automatic per-layer ratios vs one-shot magnitude.

The VGG-style reference model (``sconce.models.vgg``, default widths) is trained on
Fashion-MNIST (the dense checkpoint is cached under ``benchmarks/results/``, so reruns skip
training), then pruned to 50 / 80 / 90 % of the prunable weights with

(a) ``prune.magnitude``: one-shot layer-wise magnitude pruning, then the pipeline's
    fine-tuning (same budget, distilled from the dense model, zeros kept at zero), and
(b) ``prune.gmp``: gradual magnitude pruning on the cubic schedule with automatic per-layer
    ratios (sensitivity analysis on the validation split), within the same budget.

Both run through ``sconce.compress``; accuracy is measured on the test split (every decision
uses the validation split). Prints a table and writes ``benchmarks/results/gmp.json``.

Run (on a quiet machine):
    python benchmarks/gmp.py
    python benchmarks/gmp.py --quick   # smoke test
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

import sconce
from sconce.evaluation import evaluate
from sconce.storage import atomic_torch_save, atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"
SPARSITIES = (0.8, 0.9, 0.5)  # run order: the targets first; the table is sorted
METRICS = ["accuracy", "params", "nonzero_params", "sparsity"]
METHODS = {
    "one-shot": "prune.magnitude",   # uniform layer-wise ranking, then the pipeline fine-tunes
    "gmp+auto": "prune.gmp",         # gradual, automatic per-layer ratios (its defaults)
}


def build_model() -> torch.nn.Module:
    """The reference model for 1x28x28 inputs, channels-last (faster convs on this CPU)."""
    model = sconce.models.vgg(in_channels=1, image_size=28, num_classes=10)
    return model.to(memory_format=torch.channels_last)


def load_data(quick: bool) -> sconce.Data:
    """Fashion-MNIST (55k train / 5k val / 10k test); ``quick`` keeps small subsets."""
    data = sconce.get_data("fashion-mnist", batch_size=128)
    if not quick:
        return data

    def head(loader: DataLoader, count: int, shuffle: bool) -> DataLoader:
        return DataLoader(Subset(loader.dataset, range(count)), batch_size=128, shuffle=shuffle)

    return sconce.Data(train=head(data.train, 2048, True), val=head(data.val, 512, False),
                       test=head(data.test, 1024, False), name="fashion-mnist-quick",
                       num_classes=10, input_shape=(1, 28, 28))


def accuracy(model: torch.nn.Module, data: sconce.Data, split: str) -> float:
    return evaluate(model, data.batches(split), sconce.ClassifierAdapter(),
                    torch.device("cpu")).accuracy


def dense_model(data: sconce.Data, epochs: float, seed: int, quick: bool
                ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train the dense model, or load it from the cache written by an earlier run."""
    tag = f"gmp-dense-vgg-e{epochs:g}-s{seed}{'-quick' if quick else ''}"
    path = RESULTS / f"{tag}.pt"
    model = build_model()
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        info = dict(saved["info"], cached=True)
        print(f"dense model loaded from {path}")
        return model, info
    print(f"training the dense model for {epochs:g} epochs (cached afterwards in {path})")
    started = time.perf_counter()
    sconce.train(model, data, epochs, lr=1e-3, weight_decay=1e-4, seed=seed, progress=False,
                 device="cpu", checkpoint_dir=RESULTS / f"{tag}-work", resume=True)
    seconds = round(time.perf_counter() - started, 1)
    info = {"epochs": epochs, "seed": seed, "train_seconds": seconds,
            "val_accuracy": accuracy(model, data, "val"),
            "test_accuracy": accuracy(model, data, "test"), "cached": False}
    atomic_torch_save(path, {"model": model.state_dict(), "info": info})
    return model, info


def prune_run(method: str, sparsity: float, dense: torch.nn.Module, data: sconce.Data,
              epochs: float, seed: int, out: Path) -> dict[str, Any]:
    """One pruning run through ``sconce.compress``; accuracy on test, also on validation.

    The run's report (with the sensitivity plot for gmp) is saved under ``out``.
    """
    recipe = [(METHODS[method], {"sparsity": sparsity})]
    started = time.perf_counter()
    result = sconce.compress(dense, data, recipe=recipe, finetune_epochs=epochs, seed=seed,
                             device="cpu", progress=False, metrics=METRICS, out=out)
    total = time.perf_counter() - started
    stage = result.report.stages[-1]
    return {
        "method": method, "technique": METHODS[method], "sparsity_target": sparsity,
        "finetune_epochs": epochs,
        "test_accuracy": stage.values["accuracy"],
        "val_accuracy": accuracy(result.model, data, "val"),
        "params": int(stage.values["params"]),
        "nonzero_params": int(stage.values["nonzero_params"]),
        "model_sparsity": stage.values["sparsity"],
        "stage_seconds": stage.seconds, "compress_seconds": round(total, 1),
        "notes": {k: v for k, v in stage.notes.items()},
    }


def print_table(dense: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    header = (f"{'method':<10} {'target':>6} {'test acc':>8} {'drop':>6} {'val acc':>7} "
              f"{'non-zero':>9} {'sparsity':>8} {'wall s':>7}")
    print(header)
    print("-" * len(header))
    print(f"{'dense':<10} {'-':>6} {dense['test_accuracy']:>8.2f} {'-':>6} "
          f"{dense['val_accuracy']:>7.2f} {dense['nonzero_params']:>9,} {0.0:>7.1f}% {'-':>7}")
    for run in sorted(runs, key=lambda r: (r["sparsity_target"], r["method"] != "one-shot")):
        drop = dense["test_accuracy"] - run["test_accuracy"]
        print(f"{run['method']:<10} {run['sparsity_target']:>6.0%} {run['test_accuracy']:>8.2f} "
              f"{drop:>6.2f} {run['val_accuracy']:>7.2f} {run['nonzero_params']:>9,} "
              f"{run['model_sparsity']:>7.1f}% {run['stage_seconds']:>7.0f}")


def check_targets(dense: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, judged on the test accuracy of this run."""
    by = {(r["method"], r["sparsity_target"]): r for r in runs}
    checks: dict[str, Any] = {}
    for sparsity, allowed in ((0.8, 0.5), (0.9, 1.5)):
        run = by.get(("gmp+auto", sparsity))
        if run is not None:
            drop = dense["test_accuracy"] - run["test_accuracy"]
            checks[f"gmp {sparsity:.0%} drop <= {allowed}"] = {
                "drop": round(drop, 2), "met": drop <= allowed}
    for sparsity in sorted({r["sparsity_target"] for r in runs}):
        gmp, one = by.get(("gmp+auto", sparsity)), by.get(("one-shot", sparsity))
        if gmp is not None and one is not None:
            checks[f"gmp >= one-shot at {sparsity:.0%}"] = {
                "gmp": gmp["test_accuracy"], "one-shot": one["test_accuracy"],
                "met": gmp["test_accuracy"] >= one["test_accuracy"]}
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small subsets, a smoke test")
    parser.add_argument("--dense-epochs", type=float, default=None,
                        help="training epochs of the dense model (default 6; quick: 1)")
    parser.add_argument("--finetune-epochs", type=float, default=None,
                        help="fine-tuning budget of every pruning run (default 2; quick: 0.25)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dense-only", action="store_true",
                        help="only train (or load) and cache the dense model")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output (default benchmarks/results/gmp[-quick].json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dense_epochs = args.dense_epochs if args.dense_epochs is not None else (1 if args.quick else 6)
    finetune = args.finetune_epochs if args.finetune_epochs is not None else (
        0.25 if args.quick else 2.0)
    sparsities = args.sparsities or ([0.5, 0.9] if args.quick else list(SPARSITIES))
    out = args.out or RESULTS / ("gmp-quick.json" if args.quick else "gmp.json")
    data = load_data(args.quick)
    model, info = dense_model(data, dense_epochs, args.seed, args.quick)
    info["nonzero_params"] = sconce.model_footprint(model).nonzero
    print(f"dense: val {info['val_accuracy']:.2f}%  test {info['test_accuracy']:.2f}%  "
          f"({dense_epochs:g} epochs{', cached' if info['cached'] else ''})")
    if args.dense_only:
        return 0
    report: dict[str, Any] = {
        "benchmark": "gmp", "quick": args.quick, "dense": info, "runs": [],
        "settings": {"model": "sconce.models.vgg (default widths), channels-last",
                     "data": data.name, "finetune_epochs": finetune, "seed": args.seed,
                     "threads": args.threads, "torch": torch.__version__,
                     "machine": platform.machine(), "distilled_from_dense": True,
                     "accuracy_split": "test (decisions inside techniques use val)"},
    }
    for sparsity in sparsities:
        for method in args.methods:
            print(f"-- {method} at {sparsity:.0%} ({finetune:g} epoch(s) of fine-tuning)",
                  flush=True)
            folder = out.with_suffix("") / f"{method.replace('+', '-')}-{sparsity:g}"
            run = prune_run(method, sparsity, model, data, finetune, args.seed, folder)
            report["runs"].append(run)
            print(f"   test {run['test_accuracy']:.2f}%  val {run['val_accuracy']:.2f}%  "
                  f"non-zero {run['nonzero_params']:,}  {run['stage_seconds']:.0f} s", flush=True)
            report["targets"] = check_targets(info, report["runs"])
            atomic_write_json(out, report)
    print()
    print_table(info, report["runs"])
    print()
    for name, check in report["targets"].items():
        print(f"{name}: {'met' if check['met'] else 'MISSED'} "
              f"{ {k: v for k, v in check.items() if k != 'met'} }")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
