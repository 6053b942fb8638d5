"""Low-bit matmul kernels for weight-only layers: ONNX Runtime's ``MatMulNBits``.

A :class:`~sconce_quant.modules.WeightOnlyLinear` stores group-quantized int4 / int8 codes;
run by dequantizing them on every call, it saves memory but not time. :class:`NBitsKernel`
runs the layer on ONNX Runtime's ``MatMulNBits`` operator instead: MLAS's low-bit GEMM
kernels read the packed codes directly (:func:`~sconce_quant.packing.pack_nbits`), so a
decoding step (batch 1, memory-bound) reads 4 or 8 bits per weight instead of 32. With
``accuracy_level=4`` the activations are quantized to int8 per block inside the kernel and
the products run on int8 dot products (the fastest path on x86); ``accuracy_level=1`` keeps
float32 activations.

The kernel was chosen by measurement (``benchmarks/quant_text.py``, SmolLM2-135M decoding,
and the layer micro-benchmark there): on this AVX2 machine ATen's int4 CPU kernel
(``_weight_int4pack_mm_for_cpu``, torchao's CPU layout) and int8 kernel
(``_weight_int8pack_mm``) were slower than the float32 matmul they replace.

Example:
    >>> import torch
    >>> from sconce_quant.qparams import rtn_group_codes
    >>> codes = rtn_group_codes(torch.randn(8, 64), 4, 32, symmetric=False)
    >>> kernel = NBitsKernel.from_codes(codes, bias=None, accuracy_level=1)
    >>> x = torch.randn(3, 64)
    >>> bool(torch.allclose(kernel(x), x @ codes.dequantize().t(), atol=1e-4))
    True
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sconce.lowbit import GroupCodes
from sconce_quant.packing import NBitsWeight, pack_nbits

logger = logging.getLogger(__name__)

ACCURACY_LEVELS = (0, 1, 2, 3, 4)
"""``MatMulNBits``'s compute types: 0 unset, 1 float32, 2 float16, 3 bfloat16, 4 int8."""


def nbits_unavailable() -> str | None:
    """Why ONNX Runtime's ``MatMulNBits`` cannot run here, or None when it can.

    Example:
        >>> nbits_unavailable() is None or isinstance(nbits_unavailable(), str)
        True
    """
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError as exc:
        return f"onnxruntime is not installed ({exc})"
    major, minor = (int(part) for part in ort.__version__.split(".")[:2])
    if (major, minor) < (1, 20):
        return f"onnxruntime {ort.__version__} is too old for 8-bit MatMulNBits (need 1.20)"
    return None


def nbits_model(weight: NBitsWeight, bias: torch.Tensor | None, accuracy_level: int) -> bytes:
    """A one-operator ONNX model: ``Y = A @ W^T (+ bias)`` with ``W`` in ``MatMulNBits`` form.

    Example:
        >>> nbits = pack_nbits(torch.zeros(2, 16, dtype=torch.uint8), torch.ones(2, 1),
        ...                    torch.zeros(2, 1, dtype=torch.uint8), bits=4, block_size=16)
        >>> b"MatMulNBits" in nbits_model(nbits, None, accuracy_level=4)
        True
    """
    from onnx import TensorProto, helper, numpy_helper

    inputs = ["A", "B", "scales", "zero_points"]
    initializers = [
        numpy_helper.from_array(weight.packed.numpy(), "B"),
        numpy_helper.from_array(weight.scales.reshape(-1).numpy(), "scales"),
        numpy_helper.from_array(weight.zero_points.reshape(-1).numpy(), "zero_points"),
    ]
    if bias is not None:
        inputs += ["", "bias"]  # no g_idx
        initializers.append(numpy_helper.from_array(
            bias.detach().to(torch.float32).cpu().numpy(), "bias"))
    node = helper.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft",
                            K=weight.in_features, N=weight.out_features, bits=weight.bits,
                            block_size=weight.block_size, accuracy_level=accuracy_level)
    graph = helper.make_graph(
        [node], "weight_only_linear",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", weight.in_features])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", weight.out_features])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    return bytes(model.SerializeToString())


class NBitsKernel:
    """A weight-only layer run by ONNX Runtime's ``MatMulNBits`` (one small session).

    The session is built on first use from ``source`` (which packs the layer's codes), with
    as many intra-op threads as torch uses then (rebuilt when torch's thread count changes);
    its threads do not spin between calls, so they leave the CPU to torch's operators in
    between; it has no memory arena, and keeps no copy of the packed model besides ONNX
    Runtime's own.

    Args:
        source: returns the packed weight and the bias (or None).
        accuracy_level: ``MatMulNBits``'s compute type (4: int8 activations).

    Example:
        >>> nbits = pack_nbits(torch.full((2, 16), 9, dtype=torch.uint8), torch.ones(2, 1),
        ...                    torch.full((2, 1), 8, dtype=torch.uint8), bits=4, block_size=16)
        >>> NBitsKernel(lambda: (nbits, None), accuracy_level=1)(torch.ones(1, 16))
        tensor([[16., 16.]])
    """

    def __init__(self, source: Callable[[], tuple[NBitsWeight, torch.Tensor | None]], *,
                 accuracy_level: int) -> None:
        self.source = source
        self.accuracy_level = accuracy_level
        self._session: Any = None
        self._threads = 0
        self._out_features = 0

    @classmethod
    def from_codes(cls, codes: GroupCodes, bias: torch.Tensor | None, *,
                   accuracy_level: int) -> NBitsKernel:
        """The kernel for group codes (``group_size`` must be a valid ``MatMulNBits`` block)."""
        block = codes.group_size if codes.group_size > 0 else codes.codes.shape[1]

        def source() -> tuple[NBitsWeight, torch.Tensor | None]:
            return pack_nbits(codes.codes, codes.scales, codes.zeros, bits=codes.bits,
                              block_size=block), bias

        return cls(source, accuracy_level=accuracy_level)

    def session(self) -> Any:
        """The ONNX Runtime session, (re)created for torch's current thread count."""
        threads = torch.get_num_threads()
        if self._session is None or threads != self._threads:
            import onnxruntime as ort

            weight, bias = self.source()
            options = ort.SessionOptions()
            options.intra_op_num_threads = max(1, threads)
            options.inter_op_num_threads = 1
            options.enable_cpu_mem_arena = False
            options.log_severity_level = 3
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = None  # free the old session before building the new one
            self._session = ort.InferenceSession(nbits_model(weight, bias, self.accuracy_level),
                                                 options, providers=["CPUExecutionProvider"])
            self._threads = threads
            self._out_features = weight.out_features
        return self._session

    def reset(self) -> None:
        """Forget the session (the weights changed); the next call builds a new one."""
        self._session = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        session = self.session()
        shape = x.shape
        flat = x.detach().reshape(-1, shape[-1]).to(torch.float32).contiguous().cpu().numpy()
        (out,) = session.run(None, {"A": flat})
        result = torch.from_numpy(np.asarray(out)).reshape(*shape[:-1], self._out_features)
        return result.to(device=x.device, dtype=x.dtype)
