"""What the benchmarks quote about the machine beside each figure."""

from __future__ import annotations

import re
from pathlib import Path


def cpu_flags() -> str:
    """The SIMD flags that decide int8/int4 speed here (avx512_vnni, avx_vnni, avx2), then
    the CPU's name, family and model: VMs often name only the vendor's line ("AMD EPYC"),
    and CPUs with the same flags differ (on AMD family 23 model 1, Zen 1, a 256-bit AVX2
    instruction runs as two 128-bit halves, and int8 GEMMs measured no faster than float32).

    Example: ``"avx2 (AMD EPYC, family 23 model 1)"``.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    found = sorted(set(re.findall(r"\b(avx512_vnni|avx_vnni|avx2)\b", text)))
    flags = " ".join(found) or "none of avx2/avx_vnni/avx512_vnni"
    fields = {key: value for key, value in
              re.findall(r"^(model name|cpu family|model)\s*:\s*(.*)$", text, re.MULTILINE)}
    if not fields:
        return flags
    name = fields.get("model name", "unknown CPU").strip()
    family, model = fields.get("cpu family", "?"), fields.get("model", "?")
    return f"{flags} ({name}, family {family} model {model})"
