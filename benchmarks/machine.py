"""What the benchmarks quote about the machine beside each figure."""

from __future__ import annotations

import re
from pathlib import Path


def cpu_flags() -> str:
    """The SIMD flags that decide int8/int4 speed here (avx512_vnni, avx_vnni, avx2)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    found = sorted(set(re.findall(r"\b(avx512_vnni|avx_vnni|avx2)\b", text)))
    return " ".join(found) or "none of avx2/avx_vnni/avx512_vnni"
