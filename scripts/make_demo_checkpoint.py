"""Train the demo CNN on the digits dataset and write the weights that ship with sconce-core.

Run from the repository root:  python scripts/make_demo_checkpoint.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import sconce
from sconce.demo import DEMO_SHAPE, DEMO_WEIGHTS
from sconce.storage import atomic_torch_save

TARGET = Path("packages/sconce-core/src/sconce/weights") / DEMO_WEIGHTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=float, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = sconce.get_data("digits")
    model = sconce.models.demo_cnn(**DEMO_SHAPE)
    sconce.train(model, data, args.epochs, lr=3e-3, seed=args.seed, device="cpu")
    result = sconce.measure(model, data, metrics=["accuracy", "params", "size"])
    print(f"test accuracy {result['accuracy']:.2f}%  params {result['params']:.0f}  "
          f"size {result['size'] * 1024:.1f} KiB")
    atomic_torch_save(TARGET, model.state_dict())
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
