"""Benchmark: one model at the NAS benchmark's latency limit, trained alone from scratch.

What accuracy can a family reach at the limit when a single member gets the whole training
budget (no supernet, no inherited weights)? ``benchmarks/nas.py`` compares a searched member
with the VGG channel-pruned to the same limit; this script bounds the NAS arm from above for
one member: an elastic CNN member (``--member nas``: ``--choice``, by default the one the
last ``benchmarks/nas.py`` run chose, read from ``benchmarks/results/nas.json``), or a VGG of
given widths (``--member vgg --widths 21,M,41,41,M,82,82,M``, about what ``prune.channel``
keeps).
Fashion-MNIST, seed 0, AdamW with the core's schedule (``sconce.train``), labels only;
test accuracy on the 10 000 test images.

Run:
    python benchmarks/nas_standalone.py --member nas --epochs 20
    python benchmarks/nas_standalone.py --member vgg --widths 21,M,41,41,M,82,82,M --epochs 13

Prints one line and writes ``benchmarks/results/nas-standalone-<member>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from channel_pruning import accuracy, load_data

import sconce
import sconce_nas
from sconce.storage import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"


def build(args: argparse.Namespace, data: sconce.Data) -> tuple[nn.Module, dict[str, object]]:
    """The member to train, and what it is."""
    if args.member == "nas":
        choice = (json.loads(args.choice) if args.choice else
                  json.loads((RESULTS / "nas.json").read_text("utf-8"))["nas"]["choice"])
        space = sconce_nas.ElasticCNN.for_data(data)
        return space.build(choice), {"family": space.family, "choice": choice}
    widths = tuple("M" if w == "M" else int(w) for w in args.widths.split(","))
    return (sconce.models.vgg(num_classes=10, in_channels=1, image_size=28, widths=widths),
            {"family": "vgg", "widths": list(widths)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--member", choices=("nas", "vgg"), required=True)
    parser.add_argument("--widths", default="21,M,41,41,M,82,82,M",
                        help="VGG widths for --member vgg ('M': a max-pool)")
    parser.add_argument("--choice", default=None,
                        help="the elastic CNN member as JSON (default: nas.json's choice)")
    parser.add_argument("--epochs", type=float, required=True)
    parser.add_argument("--lr", type=float, default=None,
                        help="default 3e-3 for nas (the supernet's), 1e-3 for vgg (the dense "
                             "VGG's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    lr = args.lr if args.lr is not None else (3e-3 if args.member == "nas" else 1e-3)
    torch.set_num_threads(args.threads)
    data = load_data(False)
    model, what = build(args, data)
    costs = sconce.measure(model, example_inputs=data.example_inputs(1),
                           metrics=["macs", "params"])
    started = time.perf_counter()
    sconce.train(model, data, args.epochs, lr=lr, weight_decay=1e-4, seed=0, progress=False,
                 device="cpu")
    seconds = time.perf_counter() - started
    result = {**what, "epochs": args.epochs, "lr": lr, "macs": costs["macs"],
              "params": costs["params"], "test_accuracy": accuracy(model, data),
              "train_seconds": seconds}
    atomic_write_json(RESULTS / f"nas-standalone-{args.member}.json", result)
    print(f"{args.member} member ({costs['macs'] / 1e6:.2f} M MACs, "
          f"{costs['params'] / 1e3:.1f} k params), {args.epochs:g} epochs alone: "
          f"test {result['test_accuracy']:.2f}% in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
