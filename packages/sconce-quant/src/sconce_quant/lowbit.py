"""Low-bit matmul kernels for weight-only layers: ONNX Runtime's ``MatMulNBits``.

A :class:`~sconce_quant.modules.WeightOnlyLinear` stores group-quantized int4 / int8 codes;
run by dequantizing them on every call, it saves memory but not time. :class:`NBitsKernel`
runs the layer on ONNX Runtime's ``MatMulNBits`` operator instead: MLAS's low-bit GEMM
kernels read the packed codes directly (:func:`~sconce_quant.packing.pack_nbits`), so a
decoding step (batch 1, memory-bound) reads 4 or 8 bits per weight instead of 32. With
``accuracy_level=4`` the activations are quantized to int8 per block inside the kernel and
the products run on int8 dot products (the fastest path on x86); ``accuracy_level=1`` keeps
float32 activations.

ATen's int4 CPU kernel (:mod:`sconce_quant.int4cpu`) is the other low-bit kernel: as fast on
4-bit layers when given bfloat16 activations (with float32 ones it is 13x slower), and it
keeps no second copy of the codes; ``MatMulNBits`` also runs 8-bit layers. ATen's int8
kernel (``_weight_int8pack_mm``, one scale per row, no groups) took 3.2 ms for a
49152 x 576 output layer against 1.6 ms here (2 threads, AVX2).

A decoding step calls hundreds of small layers, so how a call reaches the kernel matters as
much as the kernel: each session runs on its caller's thread, and sconce spreads the work of
large layers (shards of the output features) and of many rows across torch's threads itself.

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

import atexit
import itertools
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
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


PLACEHOLDER = "sconce-weights-given-by-add-initializer"
"""The external-data file every kernel model names for its weights: an empty file that ONNX
Runtime checks exists but never reads (the weights are given with ``add_initializer``)."""


def nbits_model(weight: NBitsWeight, bias: torch.Tensor | None, accuracy_level: int
                ) -> tuple[bytes, dict[str, np.ndarray]]:
    """A one-operator ONNX model, ``Y = A @ W^T (+ bias)`` with ``W`` in ``MatMulNBits`` form,
    and its weights by initializer name.

    The model declares each weight as external data in :data:`PLACEHOLDER` and holds none of
    it: :func:`nbits_session` hands the arrays to ONNX Runtime with ``add_initializer``, so
    the session reads them where they are (the layer's own tensors) instead of keeping a
    copy of its own besides its prepacked one.

    Example:
        >>> nbits = pack_nbits(torch.zeros(2, 16, dtype=torch.uint8), torch.ones(2, 1),
        ...                    torch.zeros(2, 1, dtype=torch.uint8), bits=4, block_size=16)
        >>> model, weights = nbits_model(nbits, None, accuracy_level=4)
        >>> b"MatMulNBits" in model, sorted(weights)
        (True, ['B', 'scales', 'zero_points'])
    """
    from onnx import TensorProto, helper

    weights = {"B": weight.packed.numpy(), "scales": weight.scales.reshape(-1).numpy(),
               "zero_points": weight.zero_points.reshape(-1).numpy()}
    inputs = ["A", "B", "scales", "zero_points"]
    if bias is not None:
        inputs += ["", "bias"]  # no g_idx
        weights["bias"] = bias.detach().to(torch.float32).cpu().contiguous().numpy()
    initializers = []
    for name, array in weights.items():
        tensor = TensorProto(name=name, dims=array.shape,
                             data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                             data_location=TensorProto.EXTERNAL)
        tensor.external_data.add(key="location", value=PLACEHOLDER)
        initializers.append(tensor)
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
    return bytes(model.SerializeToString()), weights


_placeholder_folder: str | None = None


def _placeholder() -> str:
    """The folder holding this process's empty :data:`PLACEHOLDER` file (made once)."""
    global _placeholder_folder
    if _placeholder_folder is None:
        folder = tempfile.mkdtemp(prefix="sconce-nbits-")
        (Path(folder) / PLACEHOLDER).touch()
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _placeholder_folder = folder
    return _placeholder_folder


def nbits_session(weight: NBitsWeight, bias: torch.Tensor | None, accuracy_level: int
                  ) -> tuple[Any, list[Any]]:
    """An ONNX Runtime session running ``MatMulNBits`` on ``weight`` on its caller's thread,
    and the ``OrtValue`` wrappers of the arrays it reads (keep them as long as the session).

    The session's only copy of the weights is the kernel's prepacked one: the initializers
    are the given tensors' memory (``add_initializer``), not a copy.

    Example:
        >>> nbits = pack_nbits(torch.full((2, 16), 9, dtype=torch.uint8), torch.ones(2, 1),
        ...                    torch.full((2, 1), 8, dtype=torch.uint8), bits=4, block_size=16)
        >>> session, _ = nbits_session(nbits, torch.ones(2), accuracy_level=1)
        >>> session.run(None, {"A": np.ones((1, 16), np.float32)})[0].tolist()
        [[17.0, 17.0]]
    """
    import onnxruntime as ort

    model, weights = nbits_model(weight, bias, accuracy_level)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    # one operator: nothing to optimize, and each session holds less (~40 KiB measured)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     _placeholder())
    values = [ort.OrtValue.ortvalue_from_numpy(array) for array in weights.values()]
    for name, value in zip(weights, values, strict=True):
        options.add_initializer(name, value)
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session, values


ROW_SPLIT_MIN = 16
"""Input rows from which one shard's call is split across threads (fewer rows: one call)."""


class NBitsKernel:
    """A weight-only layer run by ONNX Runtime's ``MatMulNBits``, in ``shards`` sessions.

    Each session holds the rows (output features) of one shard and runs on the thread that
    calls it: ONNX Runtime starts no threads of its own, so nothing is woken or left spinning
    between the hundreds of small calls a decoding step makes (measured on SmolLM2-135M,
    2 cores: sessions with two intra-op threads each made int4 decoding no faster than
    float32; see ``benchmarks/quant_text.py``). The parallelism is sconce's: the shards of a
    large layer run side by side on a shared pool of ``torch.get_num_threads()`` threads
    (the calling thread and ``threads - 1`` workers), and a one-shard layer given at least
    :data:`ROW_SPLIT_MIN` rows (a prompt, a perplexity window) splits its rows across them.
    ONNX Runtime releases the GIL while it runs. Sessions have no memory arena and read the
    weights from the tensors ``source`` returns (:func:`nbits_session`): besides those, the
    kernel's prepacked copy is the only one.

    Args:
        source: returns the packed weight and the bias (or None).
        accuracy_level: ``MatMulNBits``'s compute type (4: int8 activations).
        shards: how many sessions the rows are split into (1: one session).

    Example:
        >>> nbits = pack_nbits(torch.full((2, 16), 9, dtype=torch.uint8), torch.ones(2, 1),
        ...                    torch.full((2, 1), 8, dtype=torch.uint8), bits=4, block_size=16)
        >>> NBitsKernel(lambda: (nbits, None), accuracy_level=1, shards=2)(torch.ones(1, 16))
        tensor([[16., 16.]])
    """

    def __init__(self, source: Callable[[], tuple[NBitsWeight, torch.Tensor | None]], *,
                 accuracy_level: int, shards: int = 1) -> None:
        self.source = source
        self.accuracy_level = accuracy_level
        self.shards = shards
        self._sessions: list[Any] = []
        self._values: list[Any] = []  # what the sessions read (their initializers)
        self._out_features = 0

    @classmethod
    def from_codes(cls, codes: GroupCodes, bias: torch.Tensor | None, *,
                   accuracy_level: int, shards: int = 1) -> NBitsKernel:
        """The kernel for group codes (``group_size`` must be a valid ``MatMulNBits`` block)."""
        block = codes.group_size if codes.group_size > 0 else codes.codes.shape[1]

        def source() -> tuple[NBitsWeight, torch.Tensor | None]:
            return pack_nbits(codes.codes, codes.scales, codes.zeros, bits=codes.bits,
                              block_size=block), bias

        return cls(source, accuracy_level=accuracy_level, shards=shards)

    def sessions(self) -> list[Any]:
        """The ONNX Runtime sessions, one per shard (built on first use)."""
        if not self._sessions:
            weight, bias = self.source()
            count = min(self.shards, weight.out_features)
            bounds = [round(i * weight.out_features / count) for i in range(count + 1)]
            sessions, values = [], []  # kept only once every shard's session is built
            for start, stop in itertools.pairwise(bounds):
                part = shard_rows(weight, start, stop)
                part_bias = None if bias is None else bias[start:stop]
                session, read = nbits_session(part, part_bias, self.accuracy_level)
                sessions.append(session)
                values += read
            self._out_features = weight.out_features
            self._sessions, self._values = sessions, values
        return self._sessions

    def reset(self) -> None:
        """Forget the sessions (the weights changed); the next call builds new ones."""
        self._sessions, self._values = [], []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        sessions = self._sessions or self.sessions()
        shape = x.shape
        flat = x.detach().reshape(-1, shape[-1])
        if flat.dtype != torch.float32 or flat.device.type != "cpu":
            flat = flat.to(device="cpu", dtype=torch.float32)
        a = flat.contiguous().numpy()
        threads = torch.get_num_threads()
        if len(sessions) > 1:
            out = np.concatenate(_run_parallel([(s, a) for s in sessions], threads), axis=1)
        elif threads > 1 and a.shape[0] >= ROW_SPLIT_MIN:
            out = np.concatenate(_run_parallel(
                [(sessions[0], rows) for rows in np.array_split(a, threads)], threads), axis=0)
        else:
            out = sessions[0].run(None, {"A": a})[0]
        result = torch.from_numpy(out).reshape(*shape[:-1], self._out_features)
        if result.dtype != x.dtype or x.device.type != "cpu":
            result = result.to(device=x.device, dtype=x.dtype)
        return result


def shard_rows(weight: NBitsWeight, start: int, stop: int) -> NBitsWeight:
    """Rows ``start:stop`` of a packed weight (each row's blocks and zero points are its own).

    Example:
        >>> nbits = pack_nbits(torch.arange(48, dtype=torch.uint8).reshape(3, 16) % 16,
        ...                    torch.ones(3, 1), torch.zeros(3, 1), bits=4, block_size=16)
        >>> shard_rows(nbits, 1, 3).out_features
        2
    """
    return NBitsWeight(weight.packed[start:stop], weight.scales[start:stop],
                       weight.zero_points[start:stop], weight.in_features, weight.bits,
                       weight.block_size)


_pool: ThreadPoolExecutor | None = None
_pool_workers = 0
_pool_lock = threading.Lock()


def _run_parallel(calls: list[tuple[Any, np.ndarray]], threads: int) -> list[np.ndarray]:
    """Run ``(session, input)`` pairs on ``threads`` threads: the caller runs the first, a
    shared pool of ``threads - 1`` workers the rest; outputs in order."""
    global _pool, _pool_workers
    with _pool_lock:
        if _pool is None or _pool_workers != threads - 1:
            if _pool is not None:
                _pool.shutdown(wait=False)  # its queued calls still run
            _pool = ThreadPoolExecutor(max_workers=max(1, threads - 1),
                                       thread_name_prefix="sconce-nbits")
            _pool_workers = threads - 1
        pool = _pool
    futures = [pool.submit(session.run, None, {"A": rows}) for session, rows in calls[1:]]
    first = calls[0][0].run(None, {"A": calls[0][1]})[0]
    return [first, *(future.result()[0] for future in futures)]
