"""``sconce nas``: search alone, without a compression pipeline around it.

Only ``click`` is imported here; torch, Optuna and Ray load when the command runs.

Example:
    $ sconce nas --data fashion-mnist --model vgg --target-latency 2x --workers 2 --out nas-out
    $ sconce nas --data digits --target-macs 2M --supernet-epochs 3 --trials 100
    $ sconce measure --model nas-out --data fashion-mnist
"""

from __future__ import annotations

import logging
from typing import Any

import click

logger = logging.getLogger(__name__)

_OPTIONS = ("supernet_epochs", "trials", "population", "objective", "workers", "ray_address",
            "lut_check", "target_latency", "target_macs", "target_params", "target_size_mib")


def _data_kwargs(data: Any) -> dict[str, Any]:
    shape = tuple(data.input_shape or ())
    kwargs: dict[str, Any] = {"num_classes": data.num_classes}
    if shape:
        kwargs["in_channels"] = int(shape[0])
    if len(shape) >= 2:
        kwargs["image_size"] = int(shape[-1])
    return {k: v for k, v in kwargs.items() if v is not None}


@click.command("nas")
@click.option("--data", "data_name", default="digits", show_default=True, metavar="NAME",
              help="Registered dataset name or pkg.module:factory.")
@click.option("--model", "reference_spec", default=None, metavar="SPEC",
              help="Reference model for ratio targets like 2x (a registered name, "
                   "pkg.module:factory, file.py:Name or a saved folder).")
@click.option("--target-latency", default=None, help="ms at batch 1, or a ratio like 2x.")
@click.option("--target-macs", default=None, help="MACs (5M, 300k), or a ratio like 4x.")
@click.option("--target-params", default=None, help="Parameters (100k), or a ratio.")
@click.option("--target-size", "target_size_mib", default=None, help="MiB, or a ratio.")
@click.option("--objective", default=None,
              type=click.Choice(["latency", "macs", "params", "size"]),
              help="Cost traded against accuracy on the Pareto front. [default: latency]")
@click.option("--supernet-epochs", type=float, default=None,
              help="Supernet training budget. [default: 4]")
@click.option("--trials", type=int, default=None, help="Candidates scored. [default: 200]")
@click.option("--population", type=int, default=None, help="NSGA-II population. [default: 32]")
@click.option("--workers", type=int, default=None,
              help="Candidate scorers; more than 1 runs them on Ray. [default: one per CPU "
                   "on Ray when installed]")
@click.option("--ray-address", default=None, help="A Ray cluster to score candidates on.")
@click.option("--lut-check", type=int, default=None,
              help="Random subnets timed to check the latency table (0 skips). [default: 20]")
@click.option("--finetune-epochs", default=1.0, show_default=True, type=float,
              help="Fine-tuning of the chosen subnet (0 turns it off).")
@click.option("--batch-size", default=None, type=int, help="Batch size of a named dataset.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", default="nas-out", show_default=True,
              type=click.Path(file_okay=False), help="Output folder (work files in <out>/work).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def nas(data_name: str, reference_spec: str | None, finetune_epochs: float,
        batch_size: int | None, device: str, seed: int, out: str, no_progress: bool,
        **options: Any) -> None:
    """Search the most accurate subnet that meets the targets, fine-tune and save it."""
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from sconce.api import build_model, get_data, measure
    from sconce.modelspec import resolve_factory
    from sconce.plugins import registry
    from sconce_nas.api import search

    settings = {k: v for k, v in options.items() if k in _OPTIONS and v is not None}
    extra = {"batch_size": batch_size} if batch_size else {}
    data = (get_data(resolve_factory(data_name, registry().datasets)(**extra))
            if ":" in data_name else get_data(data_name, **extra))
    reference = build_model(reference_spec, **_data_kwargs(data)) if reference_spec else None
    result = search(data, reference=reference, finetune_epochs=finetune_epochs, device=device,
                    seed=seed, work_dir=Path(out) / "work", progress=not no_progress,
                    **settings)
    result.save(out)
    values = measure(result.model, data, metrics=["accuracy", "latency", "macs", "params",
                                                  "size"])
    table = Table(title="Chosen subnet")
    table.add_column("")
    table.add_column("value")
    for key, value in result.notes().items():
        table.add_row(key, str(value))
    for name, value in values.items():
        table.add_row(f"{name} (test)" if name == "accuracy" else name,
                      "-" if value is None else f"{value:.6g}")
    console = Console()
    console.print(table)
    console.print(f"saved to {out}/ (model.pt, model.json, artifacts/nas-pareto.png, "
                  "artifacts/nas-search.json); sconce.load() rebuilds it", highlight=False)
