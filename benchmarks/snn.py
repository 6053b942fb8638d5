"""Benchmark: spiking networks (snnTorch) through sconce, on Fashion-MNIST.

Part A — compressing an SNN. The tutorial-style convolutional SNN
(``sconce_snn.models.spiking_cnn``: two conv5x5-maxpool-Leaky stages and a Linear-Leaky
output; beta 0.5, fast-sigmoid surrogate gradient, 25 time steps, direct encoding) is
trained with the core's loop (snnTorch's ``ce_rate_loss``; cached under
``benchmarks/results/``), then compressed by ``sconce.compress`` in three stages:

1. pruning 50% — ``prune.channel`` (half the channels of every prunable layer) by default,
   or ``prune.gmp`` (``--prune``); fine-tuned, distilled from the dense SNN;
2. ``snn.int8_weights`` — int8 weights, one scale per output channel;
3. ``snn.state_quant`` — 8-bit membrane potentials, quantization-aware fine-tuning.

Per stage: test accuracy (all 10,000 images), SynOps, spike rate, ANN-equivalent MACs, the
arithmetic energy estimate (Horowitz, ISSCC 2014, 45 nm), params, size (what would ship,
and the stage's saved ``model.pt``), and latency at batch 1 and 64 — every stage timed in
the same interleaved rounds (A B C D A B C D ...), fixed threads, min over rounds of each
round's median.

Part B — ANN-to-SNN conversion. The VGG-style reference ANN
(``sconce.models.vgg(num_classes=10, in_channels=1, image_size=28)``, trained here and
cached) converted by ``snn.convert`` (99.99th-percentile threshold balancing, spiking
max-pooling, membranes starting at half the threshold) and, as the baseline in the same run,
by the classic max-norm conversion (Diehl et al. 2015: thresholds at the largest activation,
spikes through the plain max-pool, membranes from zero). Test accuracy after 25 / 50 / 100
time steps from one 100-step run on the first ``--convert-samples`` test images, next to the
ANN on the same images. (No conversion peer is installable here: SpikingJelly 2 needs
torchvision, which does not import with this torch.)

Run (on a quiet machine):
    python benchmarks/snn.py
    python benchmarks/snn.py --quick   # smoke test on subsets
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from gmp import load_data  # Fashion-MNIST, or its subsets with --quick
from machine import cpu_flags
from quant_timing import interleaved_latency
from torch import nn

import sconce
from sconce.evaluation import evaluate
from sconce.storage import atomic_torch_save, atomic_write_json
from sconce_snn import SpikingAdapter
from sconce_snn.activity import profile_activity
from sconce_snn.convert import calibrate_thresholds, convert_modules
from sconce_snn.models import spiking_cnn
from sconce_snn.steps import accuracy_by_steps, plot_accuracy_by_steps

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = 25
CONVERT_STEPS = (25, 50, 100)
METRICS = ["accuracy", "params", "nonzero_params", "size", "spike_rate", "synops", "ann_macs",
           "energy"]
CPU = torch.device("cpu")




def cached_training(tag: str, model: nn.Module, data: sconce.Data, epochs: float, lr: float,
                    adapter: Any = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``model`` (seed 0) or load it from ``benchmarks/results/<tag>.pt``."""
    path = RESULTS / f"{tag}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        print(f"{tag}: loaded from {path}", flush=True)
        return model.eval(), dict(saved["info"], cached=True)
    print(f"{tag}: training for {epochs:g} epoch(s) (cached afterwards in {path})", flush=True)
    started = time.perf_counter()
    sconce.train(model, data, epochs, lr=lr, seed=0, progress=False, device="cpu",
                 adapter=adapter)
    info = {"epochs": epochs, "lr": lr, "train_seconds": round(time.perf_counter() - started, 1)}
    atomic_torch_save(path, {"model": model.state_dict(), "info": info})
    return model.eval(), dict(info, cached=False)


def file_kib(model: nn.Module) -> float:
    """KiB of the model's state dict saved with torch.save (what a user ships)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        torch.save(model.state_dict(), path)
        return path.stat().st_size / 1024


# --- part A -------------------------------------------------------------------------------------
def compress_snn(args: argparse.Namespace, data: sconce.Data) -> dict[str, Any]:
    widths = tuple(args.snn_widths)
    adapter = SpikingAdapter(num_steps=STEPS)
    tag = (f"snn-dense-w{widths[0]}x{widths[1]}-e{args.snn_epochs:g}-lr{args.snn_lr:g}"
           f"{'-quick' if args.quick else ''}")
    dense, info = cached_training(tag, spiking_cnn(widths=widths), data, args.snn_epochs,
                                  args.snn_lr, adapter)
    prune_config: dict[str, Any] = {"sparsity": 0.5}
    if args.prune == "prune.gmp":
        prune_config["allocation"] = "uniform"  # every layer at 50%, no sensitivity scan
    else:  # the model has no batch norm to fold (folding would trace into the neurons)
        prune_config["fold_bn"] = False
    recipe = [(args.prune, prune_config), "snn.int8_weights",
              ("snn.state_quant", {"bits": 8, "finetune_epochs": args.statequant_epochs})]
    print(f"compressing: {recipe} (fine-tuning {args.finetune_epochs:g} epoch(s))", flush=True)
    out = RESULTS / ("snn-compress-quick" if args.quick else "snn-compress")
    started = time.perf_counter()
    result = sconce.compress(dense, data, recipe=recipe, finetune_epochs=args.finetune_epochs,
                             finetune_lr=args.finetune_lr, metrics=METRICS, adapter=adapter,
                             progress=False, device="cpu", seed=args.seed, out=out)
    compress_seconds = round(time.perf_counter() - started, 1)
    models = [dense] + [_stage_model(result, out, index, widths) for index in
                        range(1, len(result.report.stages))]
    stages = []
    for stage, model in zip(result.report.stages, models, strict=True):
        stages.append({"title": stage.title, "technique": stage.technique,
                       **{k: v for k, v in stage.values.items()},
                       "file_kib": round(file_kib(model), 2), "seconds": stage.seconds,
                       "notes": stage.notes})
    latency = time_stages(dict(zip([s["title"] for s in stages], models, strict=True)), data,
                          adapter, args)
    for row in stages:
        row["latency_b1_ms"] = latency[row["title"]][1]
        row["latency_b64_ms"] = latency[row["title"]][64] / 64
    return {"dense_training": info, "widths": widths, "steps": STEPS, "recipe": str(recipe),
            "finetune_epochs": args.finetune_epochs, "compress_seconds": compress_seconds,
            "stages": stages}


def _stage_model(result: Any, out: Path, index: int, widths: tuple[int, ...]) -> nn.Module:
    """The model after stage ``index`` as sconce saved it (the last one is result.model)."""
    if index == len(result.report.stages) - 1:
        return result.model
    folders = sorted((out / "work" / "stages").iterdir())
    return sconce.load(folders[index - 1], model=spiking_cnn(widths=widths))


def time_stages(models: dict[str, nn.Module], data: sconce.Data, adapter: SpikingAdapter,
                args: argparse.Namespace) -> dict[str, dict[int, float]]:
    """ms per call at batch 1 and 64, every stage in the same interleaved rounds."""
    inputs = {batch: data.example_inputs(batch) for batch in (1, 64)}
    calls = {title: {batch: (lambda m=model, x=x: adapter.forward(m, x))
                     for batch, x in inputs.items()}
             for title, model in models.items()}
    for model in models.values():
        model.eval()
    return interleaved_latency(calls, threads=args.threads, rounds=args.rounds,
                               seconds=args.round_seconds)


# --- part B -------------------------------------------------------------------------------------
def convert_vgg(args: argparse.Namespace, data: sconce.Data) -> dict[str, Any]:
    tag = f"snn-vgg-ann-e{args.ann_epochs:g}{'-quick' if args.quick else ''}"
    ann, info = cached_training(tag, sconce.models.vgg(num_classes=10, in_channels=1,
                                                       image_size=28), data, args.ann_epochs,
                                1e-3)
    samples = args.convert_samples
    batches = list(data.batches("test", samples))
    ann_accuracy = evaluate(ann, batches, sconce.ClassifierAdapter(), CPU,
                            max_samples=samples).accuracy
    ann_activity = ann_macs(ann, data)
    print(f"ANN: {ann_accuracy:.2f}% on the first {samples} test images", flush=True)
    out = RESULTS / ("snn-convert-quick" if args.quick else "snn-convert")
    started = time.perf_counter()
    convert = {"num_steps": 100, "curve_samples": 128 if args.quick else 512}
    result = sconce.compress(ann, data, recipe=[("snn.convert", convert)],
                             metrics=["spike_rate", "synops", "ann_macs", "energy"],
                             progress=False, device="cpu", seed=args.seed, out=out)
    convert_seconds = round(time.perf_counter() - started, 1)
    ours = result.model
    calibration = [x for x, _ in data.batches("train", 512)]
    classic = convert_modules(copy.deepcopy(ann), calibrate_thresholds(
        ann, calibration, 100.0), pools=[], initial_membrane=0.0)
    classic.sconce_snn = {"num_steps": 100}
    rows = {}
    for name, model in (("snn.convert", ours), ("max-norm (Diehl 2015)", classic)):
        adapter = SpikingAdapter.for_model(model)
        started = time.perf_counter()
        curve = accuracy_by_steps(model, batches, adapter, CONVERT_STEPS, max_samples=samples)
        seconds = round(time.perf_counter() - started, 1)
        activity = profile_activity(model, data.example_inputs(256), adapter)
        rows[name] = {"accuracy": curve, "seconds_100_steps": seconds,
                      "synops": activity.total_synops, "spike_rate": activity.spike_rate}
        print(f"{name}: " + ", ".join(f"{t} steps {a:.2f}%" for t, a in curve.items())
              + f"  ({seconds:.0f} s)", flush=True)
    plot = plot_accuracy_by_steps(
        {t: rows["snn.convert"]["accuracy"][t] for t in CONVERT_STEPS},
        RESULTS / ("snn-convert-quick.png" if args.quick else "snn-convert.png"),
        reference=ann_accuracy, title=f"VGG on Fashion-MNIST, first {samples} test images")
    converted = result.report.stages[1]
    return {"ann_training": info, "samples": samples, "ann_accuracy": ann_accuracy,
            "ann_macs": ann_activity, "rows": rows, "convert_seconds": convert_seconds,
            "report": {k: converted.values.get(k) for k in ("spike_rate", "synops",
                                                            "ann_macs", "energy")},
            "notes": converted.notes, "plot": str(plot.relative_to(RESULTS.parent.parent))}


def ann_macs(model: nn.Module, data: sconce.Data) -> float:
    """MACs of one pass of the ANN's convolutions and linear layers, per sample."""
    return sconce.measure(model, example_inputs=data.example_inputs(1), metrics=["macs"]
                          )["macs"] or 0.0


# --- output -------------------------------------------------------------------------------------
def print_tables(report: dict[str, Any]) -> None:
    flags = report["settings"]["cpu_flags"]
    part = report.get("compress")
    if part:
        print(f"\nA. {part['recipe']} on the {part['widths'][0]}/{part['widths'][1]}-channel "
              f"conv SNN, {STEPS} steps (CPU: {flags}, {report['settings']['threads']} threads)")
        header = (f"{'stage':<12} {'technique':<17} {'acc %':>6} {'SynOps M':>9} "
                  f"{'spike %':>7} {'ANN MACs M':>10} {'energy uJ':>9} {'size KiB':>8} "
                  f"{'file KiB':>8} {'b1 ms':>8} {'b64 ms/s':>8}")
        print(header)
        print("-" * len(header))
        for row in part["stages"]:
            print(f"{row['title']:<12} {row['technique'] or '-':<17} {row['accuracy']:>6.2f} "
                  f"{row['synops'] / 1e6:>9.3f} {row['spike_rate']:>7.2f} "
                  f"{row['ann_macs'] / 1e6:>10.3f} {row['energy']:>9.3f} "
                  f"{row['size'] * 1024:>8.1f} {row['file_kib']:>8.1f} "
                  f"{row['latency_b1_ms']:>8.2f} {row['latency_b64_ms']:>8.2f}")
    part = report.get("convert")
    if part:
        print(f"\nB. VGG -> SNN, test accuracy on the first {part['samples']} images "
              f"(ANN {part['ann_accuracy']:.2f}%, {part['ann_macs'] / 1e6:.1f} M MACs; "
              f"CPU: {flags})")
        header = (f"{'conversion':<24} " + " ".join(f"{f'{t} steps':>9}" for t in CONVERT_STEPS)
                  + f" {'SynOps M':>9} {'spike %':>7} {'100-step s':>10}")
        print(header)
        print("-" * len(header))
        for name, row in part["rows"].items():
            print(f"{name:<24} " + " ".join(f"{row['accuracy'][t]:>9.2f}" for t in CONVERT_STEPS)
                  + f" {row['synops'] / 1e6:>9.2f} {100 * row['spike_rate']:>7.2f} "
                  f"{row['seconds_100_steps']:>10.0f}")


def check_targets(report: dict[str, Any]) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    part = report.get("compress")
    if part:
        dense, final = part["stages"][0], part["stages"][-1]
        drop = dense["accuracy"] - final["accuracy"]
        checks["compressed within 1 point of dense"] = {"drop": round(drop, 2),
                                                        "met": drop <= 1.0}
        ratio = dense["size"] / final["size"]
        checks["at least 4x smaller on disk"] = {
            "ratio": round(ratio, 2), "file_ratio": round(dense["file_kib"] / final["file_kib"], 2),
            "met": ratio >= 4.0}
        synops = dense["synops"] / final["synops"]
        checks["at least 2x fewer SynOps"] = {"ratio": round(synops, 2), "met": synops >= 2.0}
    part = report.get("convert")
    if part:
        drop = part["ann_accuracy"] - part["rows"]["snn.convert"]["accuracy"][100]
        checks["conversion within 2 points of the ANN at 100 steps"] = {
            "drop": round(drop, 2), "met": drop <= 2.0}
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small subsets, a smoke test")
    parser.add_argument("--only", choices=("compress", "convert"), default=None)
    parser.add_argument("--prune", choices=("prune.channel", "prune.gmp"),
                        default="prune.channel")
    parser.add_argument("--snn-widths", type=int, nargs=2, default=(12, 64))
    parser.add_argument("--snn-epochs", type=float, default=None, help="default 1 (quick 1)")
    parser.add_argument("--snn-lr", type=float, default=5e-3)
    parser.add_argument("--finetune-epochs", type=float, default=None,
                        help="per pruning stage; default 0.5 (quick 0.25)")
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--statequant-epochs", type=float, default=None,
                        help="quantization-aware fine-tuning; default 0.25 (quick 0.1)")
    parser.add_argument("--ann-epochs", type=float, default=None, help="default 2 (quick 0.5)")
    parser.add_argument("--convert-samples", type=int, default=None,
                        help="test images for the conversion (default 2000; quick 256)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 5)")
    parser.add_argument("--round-seconds", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    quick = args.quick

    def pick(value: Any, full: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else full)

    args.snn_epochs = pick(args.snn_epochs, 1.0, 1.0)
    args.finetune_epochs = pick(args.finetune_epochs, 0.5, 0.25)
    args.statequant_epochs = pick(args.statequant_epochs, 0.25, 0.1)
    args.ann_epochs = pick(args.ann_epochs, 2.0, 0.5)
    args.convert_samples = pick(args.convert_samples, 2000, 128)
    args.rounds = pick(args.rounds, 5, 2)
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = load_data(quick)
    report: dict[str, Any] = {
        "benchmark": "snn", "quick": quick,
        "settings": {"data": data.name, "threads": args.threads, "seed": args.seed,
                     "cpu_flags": cpu_flags(), "torch": torch.__version__,
                     "machine": platform.machine(), "timing_rounds": args.rounds},
    }
    out = RESULTS / ("snn-quick.json" if quick else "snn.json")
    if args.only in (None, "compress"):
        report["compress"] = compress_snn(args, data)
        atomic_write_json(out, report)
    if args.only in (None, "convert"):
        report["convert"] = convert_vgg(args, data)
    report["targets"] = check_targets(report)
    atomic_write_json(out, report)
    print_tables(report)
    print()
    for name, check in report["targets"].items():
        print(f"{name}: {'met' if check['met'] else 'MISSED'} "
              f"{ {k: v for k, v in check.items() if k != 'met'} }")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
