"""The machine's int8 limit, measured: large int8 and float32 GEMMs and convolutions.

How much faster int8 can be than float32 depends on the CPU (AVX2 multiplies uint8 x int8
pairs into 16-bit sums with ``vpmaddubsw``; VNNI does it in one instruction). This measures
it on the kernels the int8 engines use, in interleaved rounds at the benchmark's thread
count: ONNX Runtime's MLAS (``MatMulInteger`` and ``QLinearConv`` vs float ``MatMul`` and
``Conv``) and oneDNN through torch (inductor's int8 convolution vs torch's float32
convolution is what PT2E runs; ``torch._int_mm`` is reported for reference). The best int8
rate is the "limit" a whole model's int8 MAC rate is compared with.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper
from quant_timing import interleaved_latency

GEMM = (2048, 1024, 1024)  # M, K, N
PROBE_ROWS = 256  # rows of the one-call probe of a possibly unvectorized int8 GEMM
CONV = (64, 64, 64, 28)  # batch, in channels, out channels, image size (3x3, padding 1)


def _session(model: Any, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]) -> Any:
    graph = helper.make_graph(nodes, "limit", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort_calls(threads: int) -> dict[str, tuple[Any, float]]:
    """``{name: (call, MACs per call)}`` for ONNX Runtime's int8 and float32 kernels."""
    rng = np.random.default_rng(0)
    m, k, n = GEMM
    a_f = rng.standard_normal((m, k), dtype=np.float32)
    b_f = rng.standard_normal((k, n), dtype=np.float32)
    a_q = rng.integers(0, 255, (m, k), dtype=np.uint8)
    b_q = rng.integers(-127, 127, (k, n), dtype=np.int8)
    f32 = _session(_model([helper.make_node("MatMul", ["A", "B"], ["Y"])],
                          [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])],
                          [numpy_helper.from_array(b_f, "B")]), threads)
    i8 = _session(_model([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
                         [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])],
                         [helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])],
                         [numpy_helper.from_array(b_q, "B")]), threads)
    batch, cin, cout, size = CONV
    x_f = rng.standard_normal((batch, cin, size, size), dtype=np.float32)
    w_f = rng.standard_normal((cout, cin, 3, 3), dtype=np.float32) * 0.05
    x_q = rng.integers(0, 255, (batch, cin, size, size), dtype=np.uint8)
    w_q = rng.integers(-127, 127, (cout, cin, 3, 3), dtype=np.int8)
    conv_f = _session(_model([helper.make_node("Conv", ["X", "W"], ["Y"], pads=[1, 1, 1, 1])],
                             [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                            list(x_f.shape))],
                             [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                             [numpy_helper.from_array(w_f, "W")]), threads)
    scalars = [numpy_helper.from_array(np.array(v, dtype=t), name) for name, v, t in (
        ("xs", 0.02, np.float32), ("xz", 128, np.uint8), ("ws", 0.01, np.float32),
        ("wz", 0, np.int8), ("ys", 0.5, np.float32), ("yz", 128, np.uint8))]
    conv_q = _session(_model(
        [helper.make_node("QLinearConv", ["X", "xs", "xz", "W", "ws", "wz", "ys", "yz"], ["Y"],
                          pads=[1, 1, 1, 1])],
        [helper.make_tensor_value_info("X", TensorProto.UINT8, list(x_q.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.UINT8, None)],
        [numpy_helper.from_array(w_q, "W"), *scalars]), threads)
    gemm_macs = float(m * k * n)
    conv_macs = float(batch * cout * size * size * cin * 9)
    return {
        "ORT MatMul fp32": (lambda: f32.run(None, {"A": a_f}), gemm_macs),
        "ORT MatMulInteger u8s8": (lambda: i8.run(None, {"A": a_q}), gemm_macs),
        "ORT Conv fp32": (lambda: conv_f.run(None, {"X": x_f}), conv_macs),
        "ORT QLinearConv u8s8": (lambda: conv_q.run(None, {"X": x_q}), conv_macs),
    }


def _torch_calls() -> dict[str, tuple[Any, float]]:
    """torch's float32 GEMM and convolution (oneDNN / MKL), and ``torch._int_mm``."""
    m, k, n = GEMM
    a, b = torch.randn(m, k), torch.randn(k, n)
    a8 = torch.randint(-127, 127, (m, k), dtype=torch.int8)
    b8 = torch.randint(-127, 127, (k, n), dtype=torch.int8)
    batch, cin, cout, size = CONV
    x = torch.randn(batch, cin, size, size).to(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False).to(
        memory_format=torch.channels_last).eval()
    calls: dict[str, tuple[Any, float]] = {
        "torch mm fp32": (lambda: torch.mm(a, b), float(m * k * n)),
        "torch conv fp32 (channels-last)": (lambda: conv(x),
                                            float(batch * cout * size * size * cin * 9)),
    }
    try:
        torch._int_mm(a8[:32], b8)
        calls["torch _int_mm s8s8"] = (lambda: torch._int_mm(a8, b8), float(m * k * n))
    except RuntimeError:
        pass
    return calls


def _probe_rate(call: Any, macs: float) -> float:
    """G MAC/s of one call after a warm-up call: a rough rate, for kernels too slow to time."""
    call()
    started = time.perf_counter()
    call()
    return macs / (time.perf_counter() - started) / 1e9


def _unvectorized(calls: dict[str, tuple[Any, float]]) -> dict[str, float]:
    """``torch._int_mm``'s probe rate when it runs at under a quarter of torch's float32 GEMM
    (a scalar fallback, as on CPUs without VNNI: about 1 G MAC/s, minutes to time in rounds);
    such a kernel is reported from the probe and not timed further."""
    name = "torch _int_mm s8s8"
    if name not in calls:
        return {}
    rows, (_, k, n) = PROBE_ROWS, GEMM
    a, b = torch.randn(rows, k), torch.randn(k, n)
    a8 = torch.randint(-127, 127, (rows, k), dtype=torch.int8)
    b8 = torch.randint(-127, 127, (k, n), dtype=torch.int8)
    macs = float(rows * k * n)
    int8 = _probe_rate(lambda: torch._int_mm(a8, b8), macs)
    fp32 = _probe_rate(lambda: torch.mm(a, b), macs)
    return {name: int8} if int8 < 0.25 * fp32 else {}


def measure_limit(threads: int, rounds: int, seconds: float) -> dict[str, Any]:
    """G MAC/s of each kernel, and the int8 / float32 ratios (GEMM and convolution).

    The int8 limit is the fastest int8 kernel's rate; the speed-up limit is its ratio to
    the fastest float32 kernel of the same kind.
    """
    torch.set_num_threads(threads)
    calls = {**_ort_calls(threads), **_torch_calls()}
    with torch.no_grad():
        probed = _unvectorized(calls)
        timed = {name: call for name, call in calls.items() if name not in probed}
        latency = interleaved_latency({name: {1: call} for name, (call, _) in timed.items()},
                                      threads=threads, rounds=rounds, seconds=seconds)
    rates = {name: macs / (latency[name][1] / 1e3) / 1e9 for name, (_, macs) in timed.items()}
    rates.update(probed)
    gemm_int8 = max(v for k, v in rates.items() if ("Integer" in k or "_int_mm" in k))
    gemm_fp32 = max(v for k, v in rates.items() if ("MatMul fp32" in k or "mm fp32" in k))
    conv_int8 = rates["ORT QLinearConv u8s8"]
    conv_fp32 = max(v for k, v in rates.items() if "onv fp32" in k)
    return {"gmacs": rates, "probed": sorted(probed),
            "gemm": {"shape": GEMM, "int8": gemm_int8, "fp32": gemm_fp32,
                     "ratio": gemm_int8 / gemm_fp32},
            "conv": {"shape": CONV, "int8": conv_int8, "fp32": conv_fp32,
                     "ratio": conv_int8 / conv_fp32},
            "int8_limit_gmacs": max(gemm_int8, conv_int8)}


def print_limit(limit: dict[str, Any], flags: str) -> None:
    print(f"\nThe machine's int8 limit (CPU flags: {flags}; G MAC/s, interleaved rounds)")
    for name, rate in limit["gmacs"].items():
        probed = ("  (one-call probe: under a quarter of float32's rate, not timed further)"
                  if name in limit.get("probed", ()) else "")
        print(f"  {name:<34} {rate:8.1f} G MAC/s{probed}")
    for kind in ("gemm", "conv"):
        part = limit[kind]
        print(f"  {kind}: best int8 {part['int8']:.1f} vs best fp32 {part['fp32']:.1f} G MAC/s "
              f"-> int8 can be at most {part['ratio']:.2f}x float32 here")
