"""Benchmark: ``prune.channel`` against Torch-Pruning at 50% channels, in the same run.

Part A — ResNet-18 (224x224, 1000 classes), MobileNetV2 (224x224, 1000 classes) and the
VGG-style model (1x28x28): pruning wall time, params, MACs, and latency at batch 1 and 64,
for the dense model, Torch-Pruning (``MetaPruner``, group L2 magnitude, final classifier
ignored, its defaults otherwise) and ``prune.channel`` with its defaults (BN-scale
importance, ``round_to=8``, and for deployment BatchNorms folded and conv weights
channels-last). Extra rows separate what the deployment steps contribute: the dense model
channels-last, Torch-Pruning's model with our folding and channels-last, and ours without
them.

Part B — the VGG-style model trained on Fashion-MNIST (the dense checkpoint is cached in
``benchmarks/results/vgg_fashion_mnist_dense.pt``, shared with ``benchmarks/gmp.py``), pruned
to 50% channels by each tool and fine-tuned for the same budget (2 epochs, the core's loop,
distilled from the dense model): test accuracy before and after. ``prune.channel`` runs
through ``sconce.compress`` with its defaults (one shot, BatchNorm statistics re-estimated
on 32 training batches, then fine-tuning) and, as a variant, in two steps (25% then 50%,
one epoch each). A side table shows how good each importance criterion's choice of
channels is before any fine-tuning.

Torch-Pruning is only a benchmark baseline (``pip install torch-pruning --no-deps``); the
package never imports it. Timings: fixed threads, interleaved rounds (dense / each tool in
turn), each round's median, minimum over rounds; speed-ups are ratios within this run.

Run (on a quiet machine):
    python benchmarks/channel_pruning.py
    python benchmarks/channel_pruning.py --quick
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

import sconce
from sconce.evaluation import evaluate
from sconce.metrics.timing import TimingSettings, time_call
from sconce.storage import atomic_write_json
from sconce_prune.channel import count_macs, fold_batchnorms, prune_channels
from sconce_prune.channel.config import ChannelPruneConfig
from sconce_prune.channel.folding import recalibrate_batchnorms
from sconce_prune.channel.record import to_channels_last

RESULTS = Path(__file__).resolve().parent / "results"
DENSE_VGG = RESULTS / "vgg_fashion_mnist_dense.pt"
GMP_DENSE_VGG = RESULTS / "gmp-dense-vgg-e6-s0.pt"  # benchmarks/gmp.py's cache of the same model
CPU = torch.device("cpu")
RATIO = 0.5
# the fine-tuning lr prune.channel uses by default (run lr 1e-3 x its scale); Torch-Pruning too
FINETUNE_LR = 1e-3 * ChannelPruneConfig().finetune_lr_scale


# --- the two tools ------------------------------------------------------------------------------
def prune_ours(model: nn.Module, example: torch.Tensor, *, deploy: bool = True) -> nn.Module:
    """prune.channel's engine with the technique's defaults: BN-scale importance, round_to=8,
    and for deployment BatchNorms folded and conv weights channels-last."""
    prune_channels(model, example, sparsity=RATIO, importance="bn_scale", round_to=8,
                   fold_bn=deploy)
    if deploy:
        to_channels_last(model)
    return model.eval()


def deploy(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """Our deployment steps (BN folding, channels-last weights) on a copy of any model."""
    ready = copy.deepcopy(model)
    fold_batchnorms(ready, example)
    return to_channels_last(ready).eval()


def prune_torch_pruning(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """Torch-Pruning's MetaPruner at the same ratio; the final classifier is ignored."""
    import torch_pruning as tp

    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, example,
                                  importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=RATIO, ignored_layers=[last])
    pruner.step()
    return model.eval()


def wall_times(prune: Callable[[nn.Module], Any], model: nn.Module, rounds: int
               ) -> list[float]:
    """Seconds per pruning run, each on a fresh copy (the copy is not timed)."""
    seconds = []
    for _ in range(rounds):
        candidate = copy.deepcopy(model)
        started = time.perf_counter()
        prune(candidate)
        seconds.append(time.perf_counter() - started)
    return seconds


# --- measuring ----------------------------------------------------------------------------------
def latencies(models: dict[str, nn.Module], inputs: torch.Tensor, rounds: int, threads: int,
              min_calls: int) -> dict[str, float]:
    """ms per batch for each model: interleaved rounds, min over rounds of the medians."""
    settings = TimingSettings(threads=threads, rounds=1, round_seconds=0.0,
                              warmup_seconds=0.0, min_calls=min_calls)
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, model in models.items():
            with torch.inference_mode():
                model(inputs)  # warm-up call
            ms = time_call(lambda m=model: m(inputs), CPU, settings)
            best[name] = min(best.get(name, float("inf")), ms)
    return best


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def accuracy(model: nn.Module, data: sconce.Data) -> float:
    return evaluate(model, data.batches("test"), sconce.ClassifierAdapter(), CPU).accuracy


# --- part A -------------------------------------------------------------------------------------
def architecture_rows(name: str, dense: nn.Module, shape: tuple[int, ...],
                      args: argparse.Namespace, tuned: dict[str, nn.Module] | None = None
                      ) -> list[dict[str, Any]]:
    """Prune ``dense`` with both tools, time the pruning, and measure every variant."""
    dense = dense.eval()
    example = torch.randn(1, *shape)
    timing_rounds = 2 if args.quick else 3
    ours_seconds = wall_times(lambda m: prune_ours(m, example), dense, timing_rounds)
    tp_seconds = wall_times(lambda m: prune_torch_pruning(m, example), dense, timing_rounds)
    variants: dict[str, nn.Module] = {"dense": dense}
    if tuned is not None:
        variants.update(tuned)
    else:
        variants["torch-pruning"] = prune_torch_pruning(copy.deepcopy(dense), example)
        variants["prune.channel"] = prune_ours(copy.deepcopy(dense), example)
    variants["dense, channels-last"] = to_channels_last(copy.deepcopy(dense))
    variants["torch-pruning + our BN fold/ch-last"] = deploy(variants["torch-pruning"], example)
    variants["prune.channel, no BN fold/ch-last"] = prune_ours(copy.deepcopy(dense), example,
                                                              deploy=False)
    reference = variants["dense"](example)
    for variant, model in variants.items():
        assert model(example).shape == reference.shape, variant
    rows = []
    b1 = latencies(variants, example, args.rounds, args.threads, min_calls=5)
    batch = torch.randn(args.batch, *shape)
    bn = latencies(variants, batch, args.rounds, args.threads, min_calls=2)
    for variant, model in variants.items():
        wall = {"torch-pruning": tp_seconds, "prune.channel": ours_seconds}.get(variant)
        rows.append({
            "model": name, "variant": variant, "params": params(model),
            "macs": count_macs(model, example),
            "prune_seconds": round(min(wall), 3) if wall else None,
            "prune_seconds_all": [round(s, 3) for s in wall] if wall else None,
            "latency_b1_ms": round(b1[variant], 3),
            f"latency_b{args.batch}_ms": round(bn[variant], 2),
            "speedup_b1": round(b1["dense"] / b1[variant], 2),
            f"speedup_b{args.batch}": round(bn["dense"] / bn[variant], 2),
            "mac_reduction": round(count_macs(dense, example) / count_macs(model, example), 2),
        })
    return rows


# --- part B -------------------------------------------------------------------------------------
def load_data(quick: bool) -> sconce.Data:
    data = sconce.get_data("fashion-mnist", batch_size=128)
    if not quick:
        return data

    def head(loader: DataLoader, count: int, shuffle: bool) -> DataLoader:
        return DataLoader(Subset(loader.dataset, range(count)), batch_size=128, shuffle=shuffle)

    return sconce.Data(train=head(data.train, 1024, True), val=head(data.val, 256, False),
                       test=head(data.test, 512, False), name="fashion-mnist-quick",
                       num_classes=10, input_shape=(1, 28, 28))


def dense_vgg(data: sconce.Data, args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any]]:
    """The shared dense checkpoint, trained here (seed 0) when nobody cached it yet."""
    model = sconce.models.vgg(num_classes=10, in_channels=1, image_size=28)
    if args.quick:
        sconce.train(model, data, 0.5, seed=0, progress=False, device="cpu")
        return model.eval(), {"trained": "quick, 0.5 epoch on a subset"}
    if DENSE_VGG.is_file():
        model.load_state_dict(torch.load(DENSE_VGG, map_location="cpu", weights_only=True))
        return model.eval(), {"checkpoint": str(DENSE_VGG.relative_to(RESULTS.parent.parent)),
                              "cached": True}
    started = time.perf_counter()
    if GMP_DENSE_VGG.is_file():  # the GMP benchmark trained it (same recipe): share it
        saved = torch.load(GMP_DENSE_VGG, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        print(f"dense VGG taken from {GMP_DENSE_VGG}", flush=True)
    else:
        print(f"training the dense VGG for {args.dense_epochs:g} epochs -> {DENSE_VGG}",
              flush=True)
        sconce.train(model, data, args.dense_epochs, lr=1e-3, weight_decay=1e-4, seed=0,
                     progress=False, device="cpu")
    RESULTS.mkdir(parents=True, exist_ok=True)
    temporary = DENSE_VGG.with_suffix(f".tmp-{os.getpid()}")
    torch.save(model.state_dict(), temporary)
    if DENSE_VGG.exists():  # someone else finished first: use theirs, drop ours
        temporary.unlink()
        model.load_state_dict(torch.load(DENSE_VGG, map_location="cpu", weights_only=True))
    else:
        os.replace(temporary, DENSE_VGG)
    return model.eval(), {"checkpoint": str(DENSE_VGG.relative_to(RESULTS.parent.parent)),
                          "cached": False, "epochs": args.dense_epochs,
                          "train_seconds": round(time.perf_counter() - started, 1)}


def _recalibrated(model: nn.Module, data: sconce.Data, batches: int = 32) -> nn.Module:
    ready = copy.deepcopy(model)
    recalibrate_batchnorms(ready, (b[0] for b in itertools.islice(data.batches("train"),
                                                                    batches)))
    return ready.eval()


def accuracy_run(data: sconce.Data, args: argparse.Namespace
                 ) -> tuple[dict[str, Any], dict[str, nn.Module], nn.Module]:
    """Dense → 50% channels by each tool → the same fine-tuning budget → test accuracy."""
    dense, info = dense_vgg(data, args)
    example = torch.randn(1, 1, 28, 28)
    base = accuracy(dense, data)
    print(f"dense VGG: test accuracy {base:.2f}%", flush=True)

    # how good is each choice of channels, before any fine-tuning (BN stats re-estimated)
    taylor = list(itertools.islice(((b[0], b[1]) for b in data.batches("train")), 4))
    criteria: dict[str, dict[str, float]] = {}
    for name, options in (("l2", {}), ("l2 + consumers", {"consumers": True}),
                          ("bn_scale (default)", {"importance": "bn_scale"}),
                          ("taylor", {"importance": "taylor", "taylor_batches": taylor})):
        candidate = copy.deepcopy(dense)
        prune_channels(candidate, example, sparsity=RATIO, round_to=8,
                       **{"importance": "l2", **options})
        criteria[f"prune.channel {name}"] = {
            "after_pruning": accuracy(candidate, data),
            "after_bn_recalibration": accuracy(_recalibrated(candidate, data), data)}
    tp_raw = prune_torch_pruning(copy.deepcopy(dense), example)
    criteria["torch-pruning"] = {
        "after_pruning": accuracy(tp_raw, data),
        "after_bn_recalibration": accuracy(_recalibrated(tp_raw, data), data)}

    runs: dict[str, tuple[nn.Module, float]] = {}
    for name, config in (("prune.channel", {}), ("prune.channel steps=2", {"steps": 2})):
        started = time.perf_counter()
        result = sconce.compress(copy.deepcopy(dense), data,
                                 recipe=[("prune.channel", {"sparsity": RATIO, **config})],
                                 finetune_epochs=args.finetune_epochs, metrics=["accuracy"],
                                 progress=False, device="cpu", seed=0)
        runs[name] = (result.model.eval(), time.perf_counter() - started)
        print(f"{name}: {accuracy(runs[name][0], data):.2f}%", flush=True)
    started = time.perf_counter()
    tp_model = prune_torch_pruning(copy.deepcopy(dense), example)
    sconce.train(tp_model, data, args.finetune_epochs, lr=FINETUNE_LR, teacher=copy.deepcopy(dense),
                 seed=0, progress=False, device="cpu")
    runs["torch-pruning"] = (tp_model.eval(), time.perf_counter() - started)
    summary = {
        "dense": info, "dense_accuracy": base, "finetune_epochs": args.finetune_epochs,
        "finetune": f"sconce.train: AdamW lr {FINETUNE_LR:g}, cosine, distilled from the dense "
                    "model (prune.channel's default fine-tuning lr, used for both tools)",
        "before_finetune": criteria,
        "tools": {name: {"accuracy_after_finetune": accuracy(model, data),
                         "drop_points": round(base - accuracy(model, data), 2),
                         "prune_and_finetune_seconds": round(seconds, 1)}
                  for name, (model, seconds) in runs.items()},
    }
    return summary, {"torch-pruning": runs["torch-pruning"][0],
                     "prune.channel": runs["prune.channel"][0]}, dense


# --- output -------------------------------------------------------------------------------------
def print_tables(rows: list[dict[str, Any]], accuracy_summary: dict[str, Any], batch: int
                 ) -> None:
    header = (f"{'model':<12} {'variant':<36} {'prune s':>8} {'params M':>9} {'MACs M':>9} "
              f"{'MAC red.':>8} {'b=1 ms':>8} {'x b=1':>6} {f'b={batch} ms':>10} "
              f"{f'x b={batch}':>7}")
    print("\nA. 50% channels: pruning wall time, size and latency (same run)")
    print(header)
    print("-" * len(header))
    for r in rows:
        wall = f"{r['prune_seconds']:.2f}" if r["prune_seconds"] is not None else "-"
        print(f"{r['model']:<12} {r['variant']:<36} {wall:>8} {r['params'] / 1e6:>9.3f} "
              f"{r['macs'] / 1e6:>9.1f} {r['mac_reduction']:>7.2f}x {r['latency_b1_ms']:>8.2f} "
              f"{r['speedup_b1']:>5.2f}x {r[f'latency_b{batch}_ms']:>10.1f} "
              f"{r[f'speedup_b{batch}']:>6.2f}x")
    print(f"\nB. VGG on Fashion-MNIST, 50% channels + {accuracy_summary['finetune_epochs']:g} "
          f"epoch(s) fine-tuning ({accuracy_summary['finetune']})")
    print(f"dense test accuracy: {accuracy_summary['dense_accuracy']:.2f}%")
    print("\nchannels chosen by each criterion, before fine-tuning (test accuracy):")
    print(f"{'criterion':<34} {'after pruning':>14} {'+ BN recalibration':>19}")
    for name, row in accuracy_summary.get("before_finetune", {}).items():
        print(f"{name:<34} {row['after_pruning']:>13.2f}% "
              f"{row['after_bn_recalibration']:>18.2f}%")
    print(f"\n{'tool':<24} {'after fine-tune':>16} {'drop (points)':>14} {'seconds':>8}")
    for name, tool in accuracy_summary["tools"].items():
        print(f"{name:<24} {tool['accuracy_after_finetune']:>15.2f}% "
              f"{tool['drop_points']:>14.2f} {tool['prune_and_finetune_seconds']:>8.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs and data: smoke test")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 3)")
    parser.add_argument("--batch", type=int, default=None, help="throughput batch (default 64)")
    parser.add_argument("--finetune-epochs", type=float, default=None)
    parser.add_argument("--dense-epochs", type=float, default=6.0,
                        help="epochs of the dense VGG when it is not cached yet")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--only-accuracy", action="store_true", help="part B only")
    parser.add_argument("--out", type=Path, default=RESULTS / "channel_pruning.json")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.batch = args.batch or (8 if args.quick else 64)
    if args.finetune_epochs is None:
        args.finetune_epochs = 0.1 if args.quick else 2.0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = 64 if args.quick else 224

    rows: list[dict[str, Any]] = []
    accuracy_summary: dict[str, Any] = {"finetune_epochs": 0, "finetune": "skipped",
                                        "dense_accuracy": float("nan"), "tools": {}}
    if not args.skip_accuracy:
        data = load_data(args.quick)
        accuracy_summary, tuned, dense = accuracy_run(data, args)
        if not args.only_accuracy:
            rows += architecture_rows("vgg", dense, (1, 28, 28), args, tuned)
    for name, factory in () if args.only_accuracy else (
            ("resnet18", sconce.models.resnet18), ("mobilenet_v2", sconce.models.mobilenet_v2)):
        print(f"measuring {name} ...", flush=True)
        model = factory(num_classes=1000, in_channels=3, image_size=size)
        rows += architecture_rows(name, model, (3, size, size), args)
    print_tables(rows, accuracy_summary, args.batch)
    report = {"rows": rows, "accuracy": accuracy_summary, "ratio": RATIO, "threads": args.threads,
              "timing_rounds": args.rounds, "batch": args.batch, "quick": args.quick,
              "image_size": size, "torch": torch.__version__, "python": platform.python_version(),
              "torch_pruning": _tp_version(), "median_note": "latency = min over rounds of "
              "each round's median"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, json.loads(json.dumps(report, default=str)))
    print(f"\nwrote {args.out}")
    return 0


def _tp_version() -> str:
    try:
        import torch_pruning

        return str(getattr(torch_pruning, "__version__", "unknown"))
    except ImportError:
        return "not installed"


if __name__ == "__main__":
    raise SystemExit(main())
