"""Every quantized model exports to an ONNX file that ONNX Runtime runs without sconce (or
torch) importable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from quant_helpers import SmallCNN
from torch import nn

from sconce_quant.dynamic import torch_dynamic
from sconce_quant.engines import ENGINES, EngineError, StaticSettings
from sconce_quant.export import export_onnx
from sconce_quant.modules import WeightOnlyLinear
from sconce_quant.qparams import rtn_group_codes

RUNNER = textwrap.dedent("""
    import sys
    for blocked in ("torch", "sconce", "sconce_quant"):
        sys.modules[blocked] = None  # importing them now fails
    import numpy as np
    import onnxruntime as ort
    model, inputs, expected, tolerance = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: np.load(inputs)})[0]
    error = float(np.abs(out - np.load(expected)).max())
    print(error)
    sys.exit(0 if error <= tolerance else 1)
""")


def _run_without_sconce(tmp_path: Path, model: nn.Module, x: torch.Tensor,
                        tolerance: float) -> None:
    path = export_onnx(model, tmp_path / "model.onnx", x)
    with torch.no_grad():
        expected = model(x)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", expected.numpy())
    script = tmp_path / "run.py"
    script.write_text(RUNNER)
    done = subprocess.run([sys.executable, "-I", str(script), str(path), str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy"), str(tolerance)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("engine", [e for e in ("onnxruntime", "fx", "pt2e")
                                    if ENGINES[e].unavailable() is None])
def test_static_int8_exports(engine: str, cnn: SmallCNN, tmp_path: Path) -> None:
    x = torch.randn(4, 1, 8, 8)
    built = ENGINES[engine].prepare(cnn, [x], StaticSettings()).build()
    # exact for ONNX Runtime's own models; torch.ao's and PT2E's 7-bit (reduce_range)
    # activations clip at 127 where ONNX's uint8 QuantizeLinear clips at 255, and rounding
    # differs by a step
    with torch.no_grad():
        scale = float(built.module(x).abs().max())
    _run_without_sconce(tmp_path, built.module, x,
                        tolerance=1e-5 if engine == "onnxruntime" else 0.03 * scale)


def test_weight_only_int4_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(24, 8)
    model = nn.Sequential(WeightOnlyLinear.from_codes(
        rtn_group_codes(linear.weight, 4, 8, symmetric=False), linear.bias), nn.ReLU())
    _run_without_sconce(tmp_path, model, torch.randn(3, 24), tolerance=1e-5)


def test_a_layer_that_ran_on_the_torch_kernel_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    layer = WeightOnlyLinear.from_codes(rtn_group_codes(linear.weight, 4, 32, symmetric=False),
                                       linear.bias, kernel="torch")
    with torch.no_grad():
        layer(torch.randn(1, 64))  # its codes now in the kernel's own layout
    layer.kernel = "dequantize"  # the reference the export must match exactly
    _run_without_sconce(tmp_path, nn.Sequential(layer), torch.randn(3, 64), tolerance=1e-5)


def test_torch_dynamic_int8_exports_requantized(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    quantized = torch_dynamic(model, ["0", "2"], per_channel=True)
    # ORT re-derives the int8 weights and quantizes activations its own way: close, not equal
    scale = float(quantized(torch.randn(3, 16)).abs().max())
    _run_without_sconce(tmp_path, quantized, torch.randn(3, 16), tolerance=0.05 * scale)


def test_transformers_models_are_exported_with_eager_attention() -> None:
    from sconce_quant.engines.ortmodule import export_onnx_bytes

    class Config:
        _attn_implementation = "sdpa"

    class HfLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = Config()
            self.seen: list[str] = []
            self.linear = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen.append(self.config._attn_implementation)
            return self.linear(x)

    model = HfLike()
    export_onnx_bytes(model, torch.randn(1, 2))
    assert set(model.seen) == {"eager"}
    assert model.config._attn_implementation == "sdpa"  # restored


@pytest.mark.skipif(ENGINES["pt2e"].unavailable() is not None, reason="pt2e unavailable")
def test_pt2e_dynamic_int8_says_it_has_no_onnx_export(tmp_path: Path) -> None:
    from sconce.context import Context
    from sconce_quant.dynamic import DynamicConfig, DynamicInt8

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    x = torch.randn(4, 8)
    quantized = DynamicInt8().apply(model, DynamicConfig(engine="pt2e"), Context.for_inputs(x))
    with pytest.raises(EngineError, match="engine='onnxruntime'"):
        export_onnx(quantized, tmp_path / "m.onnx", x)
    assert not (tmp_path / "m.onnx").exists()
