"""Benchmark: hands-off ``sconce compress --max-accuracy-drop 0.5`` against an expert's pipeline.

The VGG-style reference model on Fashion-MNIST (``sconce.models.vgg``, the dense checkpoint
``benchmarks/channel_pruning.py`` and ``benchmarks/gmp.py`` share, trained 6 epochs) goes
through two pipelines in the same run:

- **sconce, hands-off**: the command a user types, with no recipe —
  ``sconce compress --model <the dense model's folder> --data fashion-mnist
  --max-accuracy-drop 0.5 --finetune-epochs 2`` — in its own process. The planner chooses
  the stages and their strength by measuring on the validation split; its report explains
  the choice. The fine-tuning budget per pruning stage is the expert's (2 epochs).
- **the expert by hand**: Torch-Pruning's ``MetaPruner`` (group L2, 50% of channels, final
  classifier kept), 2 epochs of fine-tuning (AdamW, cosine, distilled from the dense model:
  the recipe ``benchmarks/channel_pruning.py`` found best for it), then ``torch.ao`` FX
  post-training int8 with the stock x86 recipe (calibrated on 32 training batches).

Both final models, the dense model and the expert's pruned float model are measured here:
test accuracy, params, size on disk (``sconce.measure``), MACs, and latency at batch 1 and 64
(fixed threads, interleaved rounds, each round's median, minimum over rounds). sconce's own
per-stage table (its report, timed at the end of its run) is printed too, with both wall
times.

Run (on a quiet machine):
    python benchmarks/pipeline.py
    python benchmarks/pipeline.py --quick
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from channel_pruning import (
    FINETUNE_LR,
    CachedTeacher,
    accuracy,
    dense_vgg,
    load_data,
    prune_torch_pruning,
)
from machine import cpu_flags
from quant import peer_fx
from quant_timing import interleaved_latency

import sconce
from sconce.report import Report
from sconce.serialization import Architecture, save_model
from sconce.storage import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"
VGG_KWARGS = {"num_classes": 10, "in_channels": 1, "image_size": 28}


def quick_fashion() -> sconce.Data:
    """The ``--quick`` subset, as a ``--data pipeline:quick_fashion`` factory for the CLI."""
    return load_data(True)


def run_sconce(dense: nn.Module, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The hands-off command in its own process; returns its wall time, report and model."""
    model_dir, out = work / "dense", work / "sconce-out"
    save_model(dense, model_dir, architecture=Architecture("vgg", dict(VGG_KWARGS)))
    command = [str(Path(sys.executable).parent / "sconce"), "compress", "--model", str(model_dir),
               "--data", "pipeline:quick_fashion" if args.quick else "fashion-mnist",
               "--max-accuracy-drop", str(args.max_accuracy_drop),
               "--finetune-epochs", str(args.finetune_epochs), "--out", str(out), "--no-progress"]
    shown = "sconce " + " ".join(command[1:])
    if out.exists() and args.reuse:
        print(f"sconce: reusing {out}", flush=True)
        seconds = json.loads((work / "sconce-seconds.json").read_text())["seconds"]
    else:
        if out.exists() and args.resume:
            command.append("--resume")
        elif out.exists():  # the benchmark's own folder from an earlier run
            shutil.rmtree(out)
        print(shown, flush=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")])}
        started = time.perf_counter()
        subprocess.run(command, check=True, env=env)
        seconds = time.perf_counter() - started
        atomic_write_json(work / "sconce-seconds.json", {"seconds": seconds})
    report = Report.from_dict(json.loads((out / "report.json").read_text()))
    return {"seconds": seconds, "report": report, "model": sconce.load(out).eval(),
            "command": shown}


def run_expert(dense: nn.Module, data: sconce.Data, args: argparse.Namespace
               ) -> dict[str, Any]:
    """Torch-Pruning 50% + fine-tuning + torch.ao FX int8, timed step by step."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    pruned = prune_torch_pruning(copy.deepcopy(dense), data.example_inputs(1))
    seconds["prune"] = time.perf_counter() - started
    print(f"expert: fine-tuning {args.finetune_epochs:g} epochs", flush=True)
    started = time.perf_counter()
    sconce.train(pruned, data, args.finetune_epochs, lr=FINETUNE_LR,
                 teacher=CachedTeacher(dense), seed=0, progress=False, device="cpu")
    seconds["finetune"] = time.perf_counter() - started
    pruned.eval()
    calibration = [x for x, _ in itertools.islice(data.batches("train"), 32)]
    started = time.perf_counter()
    quantized = peer_fx(pruned, calibration)
    seconds["quantize"] = time.perf_counter() - started
    return {"pruned": pruned, "model": quantized, "seconds": seconds}


def measure_rows(models: dict[str, nn.Module], macs_of: dict[str, nn.Module | float],
                 data: sconce.Data, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Accuracy, params, size, MACs and interleaved latency of every model."""
    x1, x64 = data.example_inputs(1), data.example_inputs(64)
    rows: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        with torch.no_grad():
            measured = sconce.measure(model, example_inputs=x1, metrics=["params", "size"])
            counted = macs_of[name]
            macs = (counted if not isinstance(counted, nn.Module) else
                    sconce.measure(counted, example_inputs=x1, metrics=["macs"])["macs"])
            rows[name] = {"accuracy": accuracy(model, data), "params": measured["params"],
                          "size_mib": measured["size"], "macs": macs}
        print(f"{name}: {rows[name]['accuracy']:.2f}%", flush=True)
    calls = {name: {1: (lambda m=model: m(x1)), 64: (lambda m=model: m(x64))}
             for name, model in models.items()}
    with torch.inference_mode():
        latency = interleaved_latency(calls, threads=args.threads, rounds=args.rounds,
                                      seconds=0.3 if args.quick else 1.0)
    base = rows["fp32"]
    for name, row in rows.items():
        row["latency_b1_ms"], row["latency_b64_ms"] = latency[name][1], latency[name][64]
        row["speedup_b1"] = latency["fp32"][1] / latency[name][1]
        row["speedup_b64"] = latency["fp32"][64] / latency[name][64]
        row["smaller"] = base["size_mib"] / row["size_mib"]
        row["accuracy_drop"] = base["accuracy"] - row["accuracy"]
    return rows


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    print("\n| model | latency b1 ms | latency b64 ms | accuracy % | params | size MiB | MACs |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['latency_b1_ms']:.3f} ({row['speedup_b1']:.2f}x) "
              f"| {row['latency_b64_ms']:.2f} ({row['speedup_b64']:.2f}x) "
              f"| {row['accuracy']:.2f} ({-row['accuracy_drop']:+.2f}) | {row['params']:,} "
              f"| {row['size_mib']:.3f} ({row['smaller']:.2f}x) | {row['macs'] or 0:,.0f} |")


def targets(rows: dict[str, dict[str, Any]], sconce_seconds: float) -> dict[str, Any]:
    ours, expert = rows["sconce hands-off"], rows["expert: TP 50% + FT + torch.ao int8"]
    checks = {
        "b64 speed-up >= 20x": ours["speedup_b64"] >= 20,
        "size >= 16x smaller": ours["smaller"] >= 16,
        "accuracy drop <= 0.5": ours["accuracy_drop"] <= 0.5,
        "wall time < 30 min": sconce_seconds < 30 * 60,
        ">= 1.25x the expert's b64 speed-up": ours["speedup_b64"] >= 1.25 * expert["speedup_b64"],
        ">= the expert's size reduction": ours["smaller"] >= expert["smaller"],
    }
    for name, met in checks.items():
        print(f"target {name}: {'met' if met else 'MISSED'}")
    print(f"sconce's b64 speed-up / the expert's: "
          f"{ours['speedup_b64'] / expert['speedup_b64']:.2f}x")
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a subset and short training")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 5)")
    parser.add_argument("--max-accuracy-drop", type=float, default=0.5)
    parser.add_argument("--finetune-epochs", type=float, default=None, help="default 2")
    parser.add_argument("--dense-epochs", type=float, default=6.0,
                        help="when the dense checkpoint is not cached yet")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse a finished sconce run in --work (its recorded wall time)")
    parser.add_argument("--resume", action="store_true",
                        help="resume an unfinished sconce run in --work")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    if args.finetune_epochs is None:
        args.finetune_epochs = 0.25 if args.quick else 2.0
    work = args.work or RESULTS / ("pipeline-quick-work" if args.quick else "pipeline-work")
    out = args.out or RESULTS / ("pipeline-quick.json" if args.quick else "pipeline.json")
    torch.set_num_threads(args.threads)
    flags = cpu_flags()
    print(f"CPU flags: {flags}; torch {torch.__version__}, {args.threads} threads", flush=True)

    data = load_data(args.quick)
    dense, dense_info = dense_vgg(data, args)
    ours = run_sconce(dense, work, args)
    print(ours["report"].to_markdown(), flush=True)
    expert = run_expert(dense, data, args)
    models = {"fp32": dense, "expert: TP 50% + FT (fp32)": expert["pruned"],
              "expert: TP 50% + FT + torch.ao int8": expert["model"],
              "sconce hands-off": ours["model"]}
    # int8 keeps the float model's MACs: counted on the float graphs (torchprofile cannot
    # trace the FX or inductor int8 graphs); sconce's from its report (its pruned stage)
    macs_of: dict[str, nn.Module | float] = {
        **models, "expert: TP 50% + FT + torch.ao int8": expert["pruned"],
        "sconce hands-off": ours["report"].stages[-1].values["macs"]}
    rows = measure_rows(models, macs_of, data, args)
    print_table(rows)
    steps = ", ".join(f"{step} {seconds:.0f} s" for step, seconds in expert["seconds"].items())
    print(f"\nwall time: sconce hands-off {ours['seconds']:.0f} s (planning included); "
          f"expert {sum(expert['seconds'].values()):.0f} s ({steps})")
    checks = targets(rows, ours["seconds"])
    atomic_write_json(out, {
        "benchmark": "pipeline", "cpu_flags": flags, "threads": args.threads,
        "torch": torch.__version__, "quick": args.quick, "rounds": args.rounds,
        "dense": dense_info, "finetune_epochs": args.finetune_epochs,
        "sconce_command": ours["command"], "sconce_seconds": ours["seconds"],
        "sconce_report": ours["report"].to_dict(), "expert_seconds": expert["seconds"],
        "rows": rows, "targets": checks})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
