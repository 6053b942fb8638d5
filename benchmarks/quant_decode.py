"""Decoding speed and peak memory of causal language models (``benchmarks/quant.py``).

Speed: greedy decoding at batch 1 with the KV cache, after a prefill that is not timed;
every model decodes the same number of tokens once per round, rounds interleaved; each step
is timed, and a model's seconds per token are the minimum over rounds of the round's median
step (the convention of ``quant_timing``: a burst of load on the shared machine during a few
steps moves neither the median nor, during a round, the minimum).

Peak memory: each model runs in a fresh process that has already imported and started its
libraries: torch, transformers, onnxruntime and sconce imported, the model class's code
imported (a throwaway model built on the meta device, which holds no memory), ONNX
Runtime's kernels loaded (a 16 x 64 ``MatMulNBits`` session built, run and dropped), ATen's
int4 kernel run once on a 16 x 64 layer. That
process's resident memory then is the baseline (its peak is reset through
``/proc/self/clear_refs``), so what follows is the model's own cost, not the libraries'.
The model is built on the meta device from its Hugging Face config, its sconce restore
records are replayed (int8 / int4 layers; on the meta device they allocate nothing), the
saved state dict is loaded into it (``assign=True``: no float copy is ever made), and it
decodes; the peak resident memory above the baseline is what the model costs to load and
run. (``sconce.load`` instead rebuilds the quantized model on a fresh float model, whose
float weights exist until they are replaced.)

Run as ``python quant_decode.py FOLDER STEPS THREADS`` it is that child process.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sconce.storage import atomic_torch_save, atomic_write_json


def decode_step_seconds(model: nn.Module, prompt: torch.Tensor, steps: int) -> list[float]:
    """Seconds of each of ``steps`` greedy decoding steps (batch 1, KV cache) after the
    prefill."""
    seconds = []
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(steps):
            started = time.perf_counter()
            out = model(input_ids=token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            seconds.append(time.perf_counter() - started)
    return seconds


def interleaved_tokens_per_second(models: dict[str, nn.Module], prompt: torch.Tensor,
                                  steps: int, rounds: int, threads: int) -> dict[str, float]:
    """Tokens/s of each model: one over the minimum, over ``rounds`` interleaved rounds
    (A B C A B C ...), of the round's median step time."""
    torch.set_num_threads(threads)
    best = {name: float("inf") for name in models}
    for model in models.values():  # warm-up: sessions, caches, first-call set-up
        decode_step_seconds(model, prompt, 2)
    for _ in range(rounds):
        for name, model in models.items():
            best[name] = min(best[name], statistics.median(decode_step_seconds(model, prompt,
                                                                               steps)))
    return {name: 1.0 / seconds for name, seconds in best.items()}


def save_for_child(folder: Path, model: nn.Module, stages: list[dict[str, Any]]) -> None:
    """Write what the child needs: the HF config, the state dict and the restore stages."""
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    atomic_torch_save(folder / "model.pt", model.state_dict())
    atomic_write_json(folder / "stages.json", stages)


def peak_memory_mib(folder: Path, steps: int, threads: int, prompt: torch.Tensor
                    ) -> dict[str, float]:
    """Run the child on ``folder``; its baseline and peak resident memory (MiB)."""
    torch.save(prompt, folder / "prompt.pt")
    done = subprocess.run([sys.executable, __file__, str(folder), str(steps), str(threads)],
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"the decoding child failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _start_libraries(config: Any) -> None:
    """Import the model class's code and load ONNX Runtime's and ATen's low-bit kernels,
    holding nothing."""
    import numpy as np
    from transformers import AutoModelForCausalLM

    from sconce_quant.int4cpu import Int4CpuKernel, int4cpu_unavailable, to_kernel_layout
    from sconce_quant.lowbit import nbits_session, nbits_unavailable
    from sconce_quant.packing import pack_nbits

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        AutoModelForCausalLM.from_config(config)
    if nbits_unavailable() is None:
        for bits in (4, 8):
            weight = pack_nbits(torch.zeros(16, 64, dtype=torch.uint8), torch.ones(16, 1),
                                torch.zeros(16, 1, dtype=torch.uint8), bits=bits, block_size=64)
            session, _ = nbits_session(weight, None, accuracy_level=4)
            session.run(None, {"A": np.ones((1, 64), np.float32)})
    if int4cpu_unavailable(4, 64, 64, 16) is None:
        Int4CpuKernel(to_kernel_layout(torch.zeros(16, 64, dtype=torch.uint8)),
                      torch.ones(1, 16, 2, dtype=torch.bfloat16), 64, None)(torch.ones(1, 64))


def _child(folder: Path, steps: int, threads: int) -> None:
    import gc

    import onnxruntime  # noqa: F401  (imported before the baseline, like the rest)
    from transformers import AutoConfig, AutoModelForCausalLM

    from sconce.plugins import registry
    from sconce.technique import make_config

    torch.set_num_threads(threads)
    prompt = torch.load(folder / "prompt.pt", weights_only=True)
    stages = json.loads((folder / "stages.json").read_text())
    config = AutoConfig.from_pretrained(folder)
    techniques = [(registry().lookup("techniques", s["technique"]), s) for s in stages]
    _start_libraries(config)
    gc.collect()
    baseline = _status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak starts from here
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(config)
    for technique, stage in techniques:
        model = technique.restore(model, make_config(technique, stage["config"]), stage["record"])
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state, assign=True)
    del state
    for name, module in list(model.named_modules()):  # non-persistent buffers (rotary)
        if any(b.is_meta for b in module.buffers(recurse=False)):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, type(module)(config=config))
    model.eval()
    loaded = _status_mib("VmRSS") - baseline
    decode_step_seconds(model, prompt, steps)
    print(json.dumps({"baseline_mib": baseline, "loaded_mib": loaded,
                      "peak_mib": _status_mib("VmHWM") - baseline}))


if __name__ == "__main__":
    _child(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
