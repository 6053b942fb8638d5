"""Start-up time of the ``sconce`` command: ``--help``, ``techniques`` and ``models``.

Each command runs in a fresh process several times (interleaved: help, techniques, models,
help, ...); the table shows the median and the worst wall time, and whether torch was
imported (``python -X importtime``: the modules each command loads, the slowest listed).
The first run of a listing command after an installation changed builds the manifest
(:mod:`sconce.manifest`) and imports everything; that cold run is timed separately.
Target: every command under 1.5 s once the manifest exists.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import cpu_flags

from sconce.storage import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"
COMMANDS = (["--help"], ["techniques"], ["models"])
TARGET_SECONDS = 1.5


def run(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of ``sconce ARGV`` in a fresh process, and its -X importtime output."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "sconce.cli", *argv],
                          capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"sconce {' '.join(argv)} failed: {done.stderr[-2000:]}")
    return seconds, done.stderr


def heaviest(importtime: str, count: int = 3) -> list[tuple[str, float]]:
    """The top-level modules with the largest cumulative import time (seconds)."""
    rows = []
    for line in importtime.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if match and len(match.group(2)) <= 1:
            rows.append((match.group(3), int(match.group(1)) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:count]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sconce-startup-") as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache}
        cold, cold_trace = run(["techniques"], env)  # builds the manifest
        times: dict[str, list[float]] = {" ".join(c): [] for c in COMMANDS}
        traces: dict[str, str] = {}
        for _ in range(rounds):
            for command in COMMANDS:
                seconds, trace = run(command, env)
                times[" ".join(command)].append(seconds)
                traces[" ".join(command)] = trace
    print("| command | median s | worst s | torch imported | heaviest imports | target < 1.5 s |")
    print("|---|---|---|---|---|---|")
    for name, values in times.items():
        torch_loaded = "| torch\n" in traces[name] or re.search(r"\| +torch$", traces[name],
                                                                 re.M) is not None
        top = ", ".join(f"{m} {s:.2f}s" for m, s in heaviest(traces[name]))
        met = max(values) < TARGET_SECONDS
        print(f"| sconce {name} | {statistics.median(values):.2f} | {max(values):.2f} | "
              f"{'yes' if torch_loaded else 'no'} | {top} | {'met' if met else 'MISSED'} |")
        results[name] = {"seconds": values, "torch_imported": torch_loaded, "heaviest": top,
                         "target_met": met}
    print(f"| sconce techniques, cold (builds the manifest) | {cold:.2f} | {cold:.2f} | yes | "
          f"{', '.join(f'{m} {s:.2f}s' for m, s in heaviest(cold_trace))} | (once) |")
    print(f"\nCPU flags: {cpu_flags()}; {rounds} rounds, each command in a fresh process")
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(args.out or RESULTS / ("startup-quick.json" if args.quick
                                             else "startup.json"),
                      {"benchmark": "startup", "rounds": rounds, "commands": results,
                       "cold_techniques_seconds": cold, "cpu_flags": cpu_flags()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
