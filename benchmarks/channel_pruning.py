"""Benchmark: ``prune.channel`` against Torch-Pruning at 50% channels, in the same run.

Part A — ResNet-18 (224x224, 1000 classes), MobileNetV2 (224x224, 1000 classes) and the
VGG-style model (1x28x28): pruning wall time (the two tools alternate, fresh copies, min over
rounds), params, MACs, and latency at batch 1 and 64, for the dense model, Torch-Pruning
(``MetaPruner``, group L2 magnitude, final classifier ignored, its defaults otherwise) and
``prune.channel``'s engine with the technique's defaults (``ChannelPruner``, ``round_to=8``,
and for deployment BatchNorms folded and conv weights channels-last). Extra rows separate
what the deployment steps contribute: the dense model channels-last, Torch-Pruning's model
with our folding and channels-last, and ours without them.

Part B — the VGG-style model trained on Fashion-MNIST (the dense checkpoint is cached in
``benchmarks/results/vgg_fashion_mnist_dense.pt``, shared with ``benchmarks/gmp.py``), pruned
to 50% channels and fine-tuned for 2 epochs (the core's loop, AdamW, cosine, distilled from
the dense model), for each seed in ``--seeds``, every recipe of the seed in turn
(interleaved). Recipes: Torch-Pruning, the ``prune.channel`` technique with its defaults,
and candidates that change one thing each (the criterion, iterative pruning, the
fine-tuning recipe, gradual pruning). The teacher's logits are computed once per training
image and reused (exact: eval mode, no augmentation). Validation accuracy (the 5k split
held out of the training set) is what choices are made on; test accuracy is what is
quoted. A side table shows how good each criterion's choice of channels is before any
fine-tuning.

Torch-Pruning is only a benchmark baseline (``pip install torch-pruning --no-deps``); the
package never imports it. Timings: fixed threads, interleaved rounds (dense / each tool in
turn), each round's median, minimum over rounds; speed-ups are ratios within this run.

Run (on a quiet machine):
    python benchmarks/channel_pruning.py
    python benchmarks/channel_pruning.py --quick
    python benchmarks/channel_pruning.py --only-accuracy --recipes torch-pruning,prune.channel
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from machine import cpu_flags
from quant_timing import interleaved_latency
from torch import nn
from torch.utils.data import DataLoader, Subset

import sconce
from sconce.evaluation import evaluate
from sconce.storage import atomic_write_json
from sconce_prune.channel import (
    ChannelPruner,
    ChannelPruning,
    count_macs,
    fold_batchnorms,
    recalibrate_batchnorms,
)
from sconce_prune.channel.config import ChannelPruneConfig
from sconce_prune.channel.record import to_channels_last

RESULTS = Path(__file__).resolve().parent / "results"
DENSE_VGG = RESULTS / "vgg_fashion_mnist_dense.pt"
GMP_DENSE_VGG = RESULTS / "gmp-dense-vgg-e6-s0.pt"  # benchmarks/gmp.py's cache of the same model
CPU = torch.device("cpu")
RATIO = 0.5
DEFAULTS = ChannelPruneConfig()
# the fine-tuning lr prune.channel uses by default (run lr 1e-3 x its scale); Torch-Pruning too
FINETUNE_LR = 1e-3 * DEFAULTS.finetune_lr_scale




# --- the two tools ------------------------------------------------------------------------------
def prune_ours(model: nn.Module, example: torch.Tensor, *, deploy: bool = True,
               importance: str = DEFAULTS.importance) -> nn.Module:
    """prune.channel's engine with the technique's defaults: its criterion, round_to=8,
    and for deployment BatchNorms folded and conv weights channels-last."""
    ChannelPruner(model, example, sparsity=RATIO, importance=importance,
                  round_to=DEFAULTS.round_to, fold_bn=deploy).prune()
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


def wall_times(tools: dict[str, Callable[[nn.Module], Any]], model: nn.Module, rounds: int
               ) -> dict[str, list[float]]:
    """Seconds per pruning run of each tool, alternating, each on a fresh copy (the copy is
    not timed)."""
    seconds: dict[str, list[float]] = {name: [] for name in tools}
    for _ in range(rounds):
        for name, prune in tools.items():
            candidate = copy.deepcopy(model)
            started = time.perf_counter()
            prune(candidate)
            seconds[name].append(time.perf_counter() - started)
    return seconds


# --- measuring ----------------------------------------------------------------------------------
def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def accuracy(model: nn.Module, data: sconce.Data, split: str = "test") -> float:
    return evaluate(model, data.batches(split), sconce.ClassifierAdapter(), CPU).accuracy


# --- part A -------------------------------------------------------------------------------------
def architecture_rows(name: str, dense: nn.Module, shape: tuple[int, ...],
                      args: argparse.Namespace) -> list[dict[str, Any]]:
    """Prune ``dense`` with both tools, time the pruning, and measure every variant."""
    dense = dense.eval()
    example = torch.randn(1, *shape)
    seconds = wall_times({"prune.channel": lambda m: prune_ours(m, example),
                          "torch-pruning": lambda m: prune_torch_pruning(m, example)},
                         dense, args.prune_rounds)
    variants: dict[str, nn.Module] = {
        "dense": dense,
        "torch-pruning": prune_torch_pruning(copy.deepcopy(dense), example),
        "prune.channel": prune_ours(copy.deepcopy(dense), example),
        "dense, channels-last": to_channels_last(copy.deepcopy(dense)),
    }
    variants["torch-pruning + our BN fold/ch-last"] = deploy(variants["torch-pruning"], example)
    variants["prune.channel, no BN fold/ch-last"] = prune_ours(copy.deepcopy(dense), example,
                                                              deploy=False)
    with torch.no_grad():
        reference = variants["dense"](example)
        for variant, model in variants.items():
            if model(example).shape != reference.shape:
                raise RuntimeError(f"{variant} gives the wrong output shape")
    batch = torch.randn(args.batch, *shape)

    def calls(model: nn.Module) -> dict[int, Callable[[], Any]]:
        return {1: lambda: model(example), args.batch: lambda: model(batch)}

    with torch.inference_mode():
        latency = interleaved_latency({v: calls(m) for v, m in variants.items()},
                                      threads=args.threads, rounds=args.rounds,
                                      seconds=args.seconds)
    dense_macs = count_macs(dense, example)
    rows = []
    for variant, model in variants.items():
        wall = seconds.get(variant)
        b1, bn = latency[variant][1], latency[variant][args.batch]
        rows.append({
            "model": name, "variant": variant, "params": params(model),
            "macs": count_macs(model, example),
            "prune_seconds": round(min(wall), 3) if wall else None,
            "prune_seconds_all": [round(s, 3) for s in wall] if wall else None,
            "latency_b1_ms": round(b1, 3), f"latency_b{args.batch}_ms": round(bn, 2),
            "speedup_b1": round(latency["dense"][1] / b1, 2),
            f"speedup_b{args.batch}": round(latency["dense"][args.batch] / bn, 2),
            "mac_reduction": round(dense_macs / count_macs(model, example), 2),
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
        print(f"dense VGG taken from {GMP_DENSE_VGG.name}", flush=True)
    else:
        print(f"training the dense VGG for {args.dense_epochs:g} epochs -> {DENSE_VGG.name}",
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


def _train_inputs(data: sconce.Data, count: int) -> list[torch.Tensor]:
    return [b[0] for b in itertools.islice(data.batches("train"), count)]


def _labelled(data: sconce.Data, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(b[0], b[1]) for b in itertools.islice(data.batches("train"), count)]


def _recalibrated(model: nn.Module, data: sconce.Data, batches: int = 32) -> nn.Module:
    recalibrate_batchnorms(model, _train_inputs(data, batches))
    return model.eval()


class CachedTeacher(nn.Module):
    """The dense model's logits, computed once per training image and looked up after that.

    Exact: the teacher runs in eval mode and the training data has no augmentation, so an
    image always gets the same logits; it only saves the teacher's forward pass in every
    fine-tuning step of every recipe and seed (half of a run's compute).
    """

    def __init__(self, dense: nn.Module) -> None:
        super().__init__()
        self.dense = copy.deepcopy(dense).eval()
        self.cache: dict[bytes, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.detach().cpu().contiguous().numpy()
        keys = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]
        missing = [i for i, key in enumerate(keys) if key not in self.cache]
        if missing:
            with torch.no_grad():
                logits = self.dense(x[missing])
            self.cache.update(zip([keys[i] for i in missing], logits, strict=True))
        return torch.stack([self.cache[key] for key in keys])


class Run:
    """What a recipe needs: the dense model, the data, the seed, the fine-tuning budget."""

    def __init__(self, dense: nn.Module, data: sconce.Data, seed: int, epochs: float,
                 teacher: nn.Module) -> None:
        self.dense, self.data, self.seed, self.epochs = dense, data, seed, epochs
        self.teacher = teacher
        self.example = torch.randn(1, 1, 28, 28)

    def finetune(self, model: nn.Module, **options: Any) -> nn.Module:
        """The same loop and budget for every recipe: AdamW at FINETUNE_LR, cosine, distilled
        from the dense model (KD weight 0.5, T 4 unless a recipe changes them)."""
        options.setdefault("lr", FINETUNE_LR)
        sconce.train(model, self.data, self.epochs, teacher=self.teacher, seed=self.seed,
                     progress=False, device="cpu", **options)
        return model.eval()

    def ours(self, **options: Any) -> nn.Module:
        """A copy pruned by ChannelPruner (round_to=8, the default criterion unless given),
        BatchNorm statistics re-estimated as the technique does."""
        model = copy.deepcopy(self.dense)
        options.setdefault("importance", DEFAULTS.importance)
        if options["importance"] in ("taylor", "group_taylor", "hessian"):
            options["batches"] = _labelled(self.data, DEFAULTS.taylor_batches)
        ChannelPruner(model, self.example, sparsity=RATIO, round_to=DEFAULTS.round_to,
                      **options).prune()
        return _recalibrated(model, self.data, DEFAULTS.bn_recalibration)


def _technique(run: Run, **config: Any) -> nn.Module:
    """The prune.channel technique itself (its apply: prune, BN re-estimation, fine-tuning at
    its lr scale, BN folding), in a context like the pipeline's, with the cached teacher."""
    with tempfile.TemporaryDirectory() as work:
        ctx = sconce.Context(data=run.data, seed=run.seed, finetune_epochs=run.epochs,
                             finetune_lr=1e-3, teacher=run.teacher, progress=False,
                             work_dir=Path(work))
        model = ChannelPruning().apply(copy.deepcopy(run.dense),
                                       ChannelPruneConfig(sparsity=RATIO, **config), ctx)
    return model.eval()


def _iterative(run: Run, steps: int) -> nn.Module:
    """Prune in ``steps`` steps with BatchNorm re-estimation between them, then fine-tune."""
    model = copy.deepcopy(run.dense)
    pruner = ChannelPruner(model, run.example, sparsity=RATIO, round_to=DEFAULTS.round_to,
                           steps=steps, importance=DEFAULTS.importance)
    for _ in range(steps):
        pruner.step()
        _recalibrated(model, run.data, DEFAULTS.bn_recalibration)
    return run.finetune(model)


def _sensitivity_at_equal_macs(run: Run) -> nn.Module:
    """Per-group ratios from the sensitivity scan, keeping the MACs of uniform 50 %."""
    uniform = copy.deepcopy(run.dense)
    ChannelPruner(uniform, run.example, sparsity=RATIO, round_to=DEFAULTS.round_to).prune()
    reduction = count_macs(run.dense, run.example) / count_macs(uniform, run.example)
    return _technique(run, allocation="sensitivity", target_macs=f"{reduction * (1 - 1e-6):.9g}x")


RECIPES: dict[str, Callable[[Run], nn.Module]] = {
    "torch-pruning": lambda run: run.finetune(
        prune_torch_pruning(copy.deepcopy(run.dense), run.example)),
    "prune.channel": lambda run: _technique(run),
    "bn_scale": lambda run: run.finetune(run.ours(importance="bn_scale")),
    "l2": lambda run: run.finetune(run.ours(importance="l2")),
    "group_l2": lambda run: run.finetune(run.ours(importance="group_l2")),
    "group_taylor": lambda run: run.finetune(run.ours(importance="group_taylor")),
    "hessian": lambda run: run.finetune(run.ours(importance="hessian")),
    "iterative-4-recal": lambda run: _iterative(run, 4),
    "steps-2-finetune": lambda run: _technique(run, steps=2),
    "label-smoothing-0.1": lambda run: run.finetune(
        run.ours(), criterion=nn.CrossEntropyLoss(label_smoothing=0.1)),
    "kd-0.9-t2": lambda run: run.finetune(run.ours(), distill_weight=0.9,
                                                   temperature=2.0),
    "kd-0.3": lambda run: run.finetune(run.ours(), distill_weight=0.3),
    "lr-5e-3": lambda run: run.finetune(run.ours(), lr=5e-3),
    "sensitivity-equal-macs": _sensitivity_at_equal_macs,
    "gradual-0.5": lambda run: _technique(run, schedule="gradual", gradual_end=0.5),
    "gradual-0.25": lambda run: _technique(run, schedule="gradual", gradual_end=0.25),
    "gradual-0.5-group_l2": lambda run: _technique(run, schedule="gradual", gradual_end=0.5,
                                                   importance="group_l2"),
}
"""Each recipe prunes a copy of the dense model to 50% channels and fine-tunes it."""

DEFAULT_RECIPES = ("torch-pruning", "prune.channel")


def before_finetune(dense: nn.Module, data: sconce.Data) -> dict[str, dict[str, float]]:
    """Validation accuracy of each criterion's choice of channels, before fine-tuning (after
    pruning, then with BatchNorm statistics re-estimated)."""
    run = Run(dense, data, 0, 0.0, dense)
    rows: dict[str, dict[str, float]] = {}
    for name in ("l2", "bn_scale", "group_l2", "group_taylor", "hessian"):
        model = copy.deepcopy(dense)
        options = {"batches": _labelled(data, DEFAULTS.taylor_batches)} \
            if name in ("group_taylor", "hessian") else {}
        ChannelPruner(model, run.example, sparsity=RATIO, round_to=DEFAULTS.round_to,
                      importance=name, **options).prune()
        rows[f"prune.channel {name}"] = {
            "after_pruning": accuracy(model.eval(), data, "val"),
            "after_bn_recalibration": accuracy(_recalibrated(model, data), data, "val")}
    tp_model = prune_torch_pruning(copy.deepcopy(dense), run.example)
    rows["torch-pruning"] = {
        "after_pruning": accuracy(tp_model, data, "val"),
        "after_bn_recalibration": accuracy(_recalibrated(tp_model, data), data, "val")}
    return rows


def summarise(runs: list[dict[str, Any]], base: float) -> dict[str, dict[str, Any]]:
    """Mean, spread (max - min) and standard deviation per recipe over its seeds."""
    table: dict[str, dict[str, Any]] = {}
    for recipe in dict.fromkeys(r["recipe"] for r in runs):
        mine = [r for r in runs if r["recipe"] == recipe]
        test = [r["test"] for r in mine]
        val = [r["val"] for r in mine]
        table[recipe] = {
            "seeds": [r["seed"] for r in mine], "test": test, "val": val,
            "test_mean": round(statistics.fmean(test), 3),
            "test_spread": round(max(test) - min(test), 3),
            "test_std": round(statistics.stdev(test), 3) if len(test) > 1 else 0.0,
            "val_mean": round(statistics.fmean(val), 3),
            "drop_mean": round(base - statistics.fmean(test), 3),
            "seconds_mean": round(statistics.fmean(r["seconds"] for r in mine), 1),
        }
    return table


def _earlier_runs(args: argparse.Namespace, base: float) -> list[dict[str, Any]]:
    """With ``--resume``: the runs ``args.out`` holds from an earlier command with the same
    dense model and fine-tuning budget (so a long part B can be split over commands)."""
    if not args.resume or not args.out.is_file():
        return []
    earlier = json.loads(args.out.read_text()).get("accuracy") or {}
    if earlier.get("dense_accuracy") != base \
            or earlier.get("finetune_epochs") != args.finetune_epochs:
        print(f"--resume: {args.out.name} holds another setup; starting afresh", flush=True)
        return []
    runs = [r for r in earlier.get("runs", [])
            if r["recipe"] in args.recipes and r["seed"] in args.seeds]
    print(f"--resume: {len(runs)} run(s) kept from {args.out.name}", flush=True)
    return runs


def accuracy_run(data: sconce.Data, dense: nn.Module, args: argparse.Namespace,
                 progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every recipe for every seed (recipes interleaved within a seed): val and test
    accuracy after fine-tuning."""
    base, base_val = accuracy(dense, data), accuracy(dense, data, "val")
    print(f"dense VGG: test {base:.2f}%, val {base_val:.2f}%", flush=True)
    earlier = _earlier_runs(args, base)
    summary: dict[str, Any] = {"dense_accuracy": base, "dense_val_accuracy": base_val,
                               "finetune_epochs": args.finetune_epochs, "runs": earlier,
                               "finetune": f"sconce.train: AdamW lr {FINETUNE_LR:g}, cosine, "
                                           "distilled from the dense model (KD weight 0.5, "
                                           "T 4), for every recipe unless it says otherwise"}
    if not args.skip_criteria:
        summary["before_finetune"] = before_finetune(dense, data)
        progress(summary)
    teacher = CachedTeacher(dense)
    for seed in args.seeds:
        for recipe in args.recipes:
            if any(r["recipe"] == recipe and r["seed"] == seed for r in earlier):
                continue
            started = time.perf_counter()
            model = RECIPES[recipe](Run(dense, data, seed, args.finetune_epochs, teacher))
            row = {"recipe": recipe, "seed": seed, "test": accuracy(model, data),
                   "val": accuracy(model, data, "val"), "params": params(model),
                   "macs": count_macs(model, torch.randn(1, 1, 28, 28)),
                   "seconds": round(time.perf_counter() - started, 1)}
            summary["runs"].append(row)
            summary["recipes"] = summarise(summary["runs"], base)
            progress(summary)
            print(f"seed {seed} {recipe}: test {row['test']:.2f}% val {row['val']:.2f}% "
                  f"({row['seconds']:.0f} s)", flush=True)
    if summary["runs"]:
        summary["recipes"] = summarise(summary["runs"], base)
    return summary


# --- output -------------------------------------------------------------------------------------
def print_tables(rows: list[dict[str, Any]], accuracy_summary: dict[str, Any] | None,
                 batch: int, flags: str) -> None:
    if rows:
        header = (f"{'model':<12} {'variant':<36} {'prune s':>8} {'params M':>9} "
                  f"{'MACs M':>9} {'MAC red.':>8} {'b=1 ms':>8} {'x b=1':>6} "
                  f"{f'b={batch} ms':>10} {f'x b={batch}':>7}")
        print(f"\nA. 50% channels: pruning wall time, size and latency (same run; CPU flags: "
              f"{flags})")
        print(header)
        print("-" * len(header))
        for r in rows:
            wall = f"{r['prune_seconds']:.3f}" if r["prune_seconds"] is not None else "-"
            print(f"{r['model']:<12} {r['variant']:<36} {wall:>8} {r['params'] / 1e6:>9.3f} "
                  f"{r['macs'] / 1e6:>9.1f} {r['mac_reduction']:>7.2f}x "
                  f"{r['latency_b1_ms']:>8.2f} {r['speedup_b1']:>5.2f}x "
                  f"{r[f'latency_b{batch}_ms']:>10.1f} {r[f'speedup_b{batch}']:>6.2f}x")
    if not accuracy_summary:
        return
    print(f"\nB. VGG on Fashion-MNIST, 50% channels + {accuracy_summary['finetune_epochs']:g} "
          f"epoch(s) fine-tuning ({accuracy_summary['finetune']}; CPU flags: {flags})")
    print(f"dense: test {accuracy_summary['dense_accuracy']:.2f}%, "
          f"val {accuracy_summary['dense_val_accuracy']:.2f}%")
    if accuracy_summary.get("before_finetune"):
        print("\nchannels chosen by each criterion, before fine-tuning (validation accuracy):")
        print(f"{'criterion':<34} {'after pruning':>14} {'+ BN recalibration':>19}")
        for name, row in accuracy_summary["before_finetune"].items():
            print(f"{name:<34} {row['after_pruning']:>13.2f}% "
                  f"{row['after_bn_recalibration']:>18.2f}%")
    recipes = accuracy_summary.get("recipes", {})
    if recipes:
        seeds = max(len(r["seeds"]) for r in recipes.values())
        print(f"\nafter fine-tuning, over {seeds} seed(s): mean ± std (spread = max - min)")
        print(f"{'recipe':<30} {'test %':>16} {'spread':>7} {'drop':>6} {'val %':>7} "
              f"{'s/run':>6}")
        for name, r in recipes.items():
            print(f"{name:<30} {r['test_mean']:>8.2f} ± {r['test_std']:<5.2f} "
                  f"{r['test_spread']:>7.2f} {r['drop_mean']:>6.2f} {r['val_mean']:>7.2f} "
                  f"{r['seconds_mean']:>6.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs and data: smoke test")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 3)")
    parser.add_argument("--prune-rounds", type=int, default=None,
                        help="pruning wall-time rounds per tool (default 5)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="seconds per latency measurement in a round (default 0.5)")
    parser.add_argument("--batch", type=int, default=None, help="throughput batch (default 64)")
    parser.add_argument("--finetune-epochs", type=float, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="fine-tuning seeds of part B (default 0 1 2)")
    parser.add_argument("--recipes", default=",".join(DEFAULT_RECIPES),
                        help=f"comma-separated, of: {', '.join(RECIPES)}")
    parser.add_argument("--skip-criteria", action="store_true",
                        help="skip part B's before-fine-tuning table")
    parser.add_argument("--dense-epochs", type=float, default=6.0,
                        help="epochs of the dense VGG when it is not cached yet")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--only-accuracy", action="store_true", help="part B only")
    parser.add_argument("--out", type=Path, default=RESULTS / "channel_pruning.json")
    parser.add_argument("--resume", action="store_true",
                        help="keep part B's runs already in --out (same dense model and "
                             "budget) and run only the missing recipe/seed pairs")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.prune_rounds = args.prune_rounds or (2 if args.quick else 5)
    args.seconds = args.seconds or (0.1 if args.quick else 0.5)
    args.batch = args.batch or (8 if args.quick else 64)
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; choose from {list(RECIPES)}")
    if args.finetune_epochs is None:
        args.finetune_epochs = 0.1 if args.quick else 2.0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = 64 if args.quick else 224
    flags = cpu_flags()
    report: dict[str, Any] = {
        "ratio": RATIO, "threads": args.threads, "timing_rounds": args.rounds,
        "batch": args.batch, "quick": args.quick, "image_size": size, "cpu_flags": flags,
        "torch": torch.__version__, "python": platform.python_version(),
        "torch_pruning": _tp_version(), "commit": _commit(),
        "median_note": "latency = min over rounds of each round's median"}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(**parts: Any) -> None:
        report.update(parts)
        atomic_write_json(args.out, json.loads(json.dumps(report, default=str)))

    rows: list[dict[str, Any]] = []
    accuracy_summary = None
    data = load_data(args.quick)
    dense, report["dense"] = dense_vgg(data, args)
    if not args.skip_accuracy:
        accuracy_summary = accuracy_run(data, dense, args, lambda s: save(accuracy=s))
    if not args.only_accuracy:
        rows += architecture_rows("vgg", dense, (1, 28, 28), args)
        save(rows=rows)
        for name, factory in (("resnet18", sconce.models.resnet18),
                              ("mobilenet_v2", sconce.models.mobilenet_v2)):
            print(f"measuring {name} ...", flush=True)
            model = factory(num_classes=1000, in_channels=3, image_size=size)
            rows += architecture_rows(name, model, (3, size, size), args)
            save(rows=rows)
    print_tables(rows, accuracy_summary, args.batch, flags)
    print(f"\nwrote {args.out}")
    return 0


def _tp_version() -> str:
    try:
        import torch_pruning

        return str(getattr(torch_pruning, "__version__", "unknown"))
    except ImportError:
        return "not installed"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=False, cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
