"""Where a transformer's time goes: per-operator profiles of a torch model and of an ONNX
Runtime graph, in the same categories, with the int8 matrix products' MAC rate.

``benchmarks/quant.py``'s MiniLM section uses it to show what a quantized model spends outside
its integer kernels (layer norms, GELU, the float part of attention) and how close its integer
matrix products run to the machine's int8 limit (``quant_limit.measure_limit``).

Example (a profile of a small torch model):
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU())
    >>> times = torch_breakdown(model, (torch.randn(4, 8),), calls=2)
    >>> sorted(times) == sorted(CATEGORIES)
    True
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

CATEGORIES = ("int8 matmul", "fp32 matmul", "attention", "layer norm", "gelu", "other")

# ONNX Runtime operator types and torch operator names (profiled self time), by category.
_ORT = {
    "int8 matmul": {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger",
                    "DynamicQuantizeLinear", "QLinearMatMul", "QGemm"},
    "fp32 matmul": {"MatMul", "Gemm", "FusedMatMul"},
    "attention": {"QAttention", "Attention", "MultiHeadAttention", "Softmax"},
    "layer norm": {"SkipLayerNormalization", "LayerNormalization", "EmbedLayerNormalization",
                   "SkipSimplifiedLayerNormalization"},
    "gelu": {"BiasGelu", "FastGelu", "Gelu", "Erf"},
}
_TORCH = {
    "int8 matmul": ("quantized::linear_dynamic", "quantized::linear"),
    "fp32 matmul": ("aten::addmm", "aten::mm", "aten::bmm"),
    "attention": ("scaled_dot_product", "flash_attention", "aten::_softmax"),
    "layer norm": ("layer_norm",),
    "gelu": ("aten::gelu",),
}


def _ort_category(op_type: str) -> str:
    return next((name for name, ops in _ORT.items() if op_type in ops), "other")


def _torch_category(op_name: str) -> str:
    return next((name for name, keys in _TORCH.items() if any(k in op_name for k in keys)),
                "other")


def ort_breakdown(onnx_bytes: bytes, feeds: dict[str, np.ndarray], *, threads: int,
                  calls: int = 3) -> dict[str, float]:
    """Milliseconds per call in each of :data:`CATEGORIES`: ONNX Runtime's own profile of
    ``calls`` runs (after one warm-up run) of the graph, on the CPU with ``threads`` threads.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="sconce-profile-") as folder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        session.run(None, feeds)
        for _ in range(calls):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[_ort_category(event["args"]["op_name"])] += event["dur"] / 1e3
    return {name: ms / (calls + 1) for name, ms in totals.items()}


def torch_breakdown(model: nn.Module, inputs: Sequence[torch.Tensor], *,
                    calls: int = 3) -> dict[str, float]:
    """Milliseconds per call in each of :data:`CATEGORIES`: the self CPU time of every operator
    in torch's profile of ``calls`` forward passes (after one warm-up pass)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        model(*inputs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                model(*inputs)
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for event in prof.key_averages():
        totals[_torch_category(event.key)] += event.self_cpu_time_total / 1e3
    return {name: ms / calls for name, ms in totals.items()}


def ort_int8_matmul_macs(onnx_bytes: bytes, rows: int) -> float:
    """MACs per call of the graph's ``MatMulInteger`` nodes with a constant weight (``rows``
    activation rows each: batch x tokens), the products :func:`ort_breakdown` files under
    "int8 matmul"."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    weights = {init.name: list(init.dims) for init in graph.initializer}
    return float(sum(rows * weights[node.input[1]][0] * weights[node.input[1]][1]
                     for node in graph.node
                     if node.op_type == "MatMulInteger" and node.input[1] in weights))


def linear_macs(model: nn.Module, rows: int) -> float:
    """MACs per call of every ``nn.Linear`` of ``model`` applied to ``rows`` rows."""
    return float(sum(rows * m.in_features * m.out_features
                     for m in model.modules() if isinstance(m, nn.Linear)))


def print_breakdown(rows: dict[str, dict[str, Any]], limit_gmacs: float) -> None:
    """One line per model: milliseconds per category, and the int8 matmuls' rate."""
    header = (f"{'model':<36}" + "".join(f"{c:>12}" for c in CATEGORIES)
              + f"{'total':>8} {'int8 G MAC/s':>13} {'of limit':>9}")
    print(header)
    print("-" * len(header))
    for label, row in rows.items():
        times = row["ms"]
        rate = row.get("int8_gmacs")
        tail = f"{rate:>13.1f} {rate / limit_gmacs:>8.0%}" if rate else f"{'':>13} {'':>9}"
        print(f"{label:<36}" + "".join(f"{times[c]:>12.1f}" for c in CATEGORIES)
              + f"{sum(times.values()):>8.1f} {tail}")
