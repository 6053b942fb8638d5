"""The ``sconce`` command.

``sconce compress`` with no arguments runs the built-in demo (the demo CNN, trained on the
scikit-learn digits, through the default recipe). Plugins add verbs through
``sconce_register_commands``. A user's mistake prints one line and exits with status 2.

Start-up is lazy: this module imports click and nothing heavy; torch and the plugins load
when a command needs them. The listing commands (``techniques``, ``models``, ``datasets``,
``plugins``) answer from the installation's manifest (:mod:`sconce.manifest`) when it is
current, and ``--help`` loads plugins only when the manifest says they add commands.
Output that is not a terminal (a pipe, a file, CI) is never cut: tables and notes are
printed whole.

Example:
    $ sconce compress
    $ sconce compress --model vgg --data fashion-mnist --train-epochs 2 --technique prune.gmp
    $ sconce compress --nproc 2   # two processes under torchrun (DDP fine-tuning)
    $ sconce techniques
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sconce.errors import SconceError

if TYPE_CHECKING:
    from sconce.launch import Launch

logger = logging.getLogger(__name__)

DEMO_MODEL = "demo"
DEMO_DATA = "digits"
DEMO_FINETUNE_EPOCHS = 5  # digits is small: 5 epochs are ~100 optimizer steps, seconds
EXIT_USER_ERROR = 2
EXIT_STAGE_FAILED = 1


def _console(stderr: bool = False) -> Any:
    from sconce.report import console

    return console(stderr)


class _OwnInfo(logging.Filter):
    """Show sconce's and its plugins' (``sconce*`` loggers) info lines; others' warnings only."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name.startswith("sconce")
        return record.levelno >= (self.level if own else max(self.level, logging.WARNING))


def _setup_logging(verbose: int, quiet: bool, log_json: bool = False) -> None:
    from sconce.progress import set_progress
    from sconce.verbosity import JsonLines, disable_default_handler

    disable_default_handler()  # the command line's own handler below shows plugins' lines too
    set_progress(not quiet, lines_only=log_json)  # progress reaches machines as log lines
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    if os.environ.get("RANK", "0") not in ("", "0"):  # under torchrun, rank 0 tells the story
        level = max(level, logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if log_json else logging.Formatter("sconce: %(message)s"))
    handler.addFilter(_OwnInfo(level))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class _LazyGroup(click.Group):
    """The ``sconce`` group: the core's commands at once, plugins' commands on demand.

    ``sconce --help`` lists plugins' commands with the short help the manifest saved, so it
    answers without importing any plugin (or torch); running one loads the plugins.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_listing()["commands"]))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            _add_plugin_commands(self)
            command = super().get_command(ctx, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        saved_help: dict[str, str] = _listing()["commands"]  # read once for names and help
        rows = []
        for name in sorted(set(self.commands) | set(saved_help)):
            command = self.commands.get(name)
            if command is None:
                rows.append((name, saved_help.get(name, "")))
            elif not command.hidden:
                rows.append((name, command.get_short_help_str(limit=_SHORT_HELP_LIMIT)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


_SHORT_HELP_LIMIT = 200  # a command's first sentence, whole (the formatter wraps it)


_plugin_commands_added: list[bool] = []


def _add_plugin_commands(group: click.Group) -> None:
    """Let every plugin add its commands (once); a plugin that fails is logged and skipped."""
    if _plugin_commands_added:
        return
    _plugin_commands_added.append(True)
    from sconce.plugins import plugin_manager

    caller = plugin_manager().hook.sconce_register_commands
    for impl in caller.get_hookimpls():
        try:
            impl.function(cli=group)
        except Exception as exc:  # a broken plugin must not break the CLI
            logger.warning("plugin %r failed to add commands: %s: %s", impl.plugin_name,
                           type(exc).__name__, exc)


def _listing() -> dict[str, Any]:
    """What the installation provides (techniques, models, datasets, plugins, commands):
    from the manifest when current, else from the loaded plugins (then saved as manifest)."""
    from sconce.manifest import read_manifest, write_manifest

    # Plugins already loaded in this process (by Python code, a test) may include ones
    # registered at run time, which no manifest knows: list those live, and save nothing.
    loaded = "sconce.plugins" in sys.modules
    saved = None if loaded else read_manifest()
    if saved is not None:
        return saved
    from dataclasses import asdict

    from sconce.api import list_techniques
    from sconce.plugins import plugin_infos, registry

    reg = registry()
    builtin = set(cli.commands)
    _add_plugin_commands(cli)
    content = {
        "techniques": [{"name": info.name, "kind": info.kind, "package": info.package,
                        "description": info.description,
                        "config": [{"name": n, "type": t, "default": _jsonable(d),
                                    "repr": repr(d)} for n, t, d in info.fields]}
                       for info in list_techniques("*")],
        "models": {name: str(reg.origin[("models", name)]) for name in sorted(reg.models)},
        "datasets": {name: str(reg.origin[("datasets", name)]) for name in sorted(reg.datasets)},
        "plugins": [asdict(info) for info in plugin_infos()],
        "commands": {name: cli.commands[name].get_short_help_str(limit=_SHORT_HELP_LIMIT)
                     for name in sorted(set(cli.commands) - builtin)},
    }
    if not loaded:
        write_manifest(content)
    return content


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option("--log-json", is_flag=True,
              help="Log lines (stages, epochs, progress, the plan) as JSON objects on stderr.")
@click.version_option(package_name="sconce-core", prog_name="sconce")
def cli(verbose: int, quiet: bool, log_json: bool) -> None:
    """Compress PyTorch models and prove the gains with measured numbers."""
    _setup_logging(verbose, quiet, log_json)


def _load_data(name: str, batch_size: int | None) -> Any:
    from sconce.api import get_data
    from sconce.modelspec import resolve_factory
    from sconce.plugins import registry

    options = {"batch_size": batch_size} if batch_size else {}
    if ":" in name:
        return get_data(resolve_factory(name, registry().datasets)(**options))
    return get_data(name, **options)


def _model_kwargs(data: Any) -> dict[str, Any]:
    shape: tuple[int, ...] = data.input_shape or ()
    kwargs: dict[str, Any] = {"num_classes": data.num_classes}
    if len(shape) >= 1:
        kwargs["in_channels"] = int(shape[0])
    if len(shape) >= 2:
        kwargs["image_size"] = int(shape[-1])
    return {k: v for k, v in kwargs.items() if v is not None}


def _build(spec: str, data: Any, trust_code: bool) -> tuple[Any, dict[str, Any]]:
    """The model a ``--model`` spec names (a saved folder is loaded: as data, unless
    ``--trust-code``) and its build arguments."""
    from sconce.api import build_model, load

    kwargs = _model_kwargs(data)
    if Path(spec).is_dir() and (Path(spec) / "model.json").is_file():
        return load(spec, trust_code=trust_code), kwargs
    return build_model(spec, **kwargs), kwargs


_TRUST_CODE_HELP = ("Let a saved folder given as --model run the code its model.json names "
                    "(pkg.module:factory, file.py:Name, model.pt2); only for folders you trust. "
                    "See SECURITY.md.")


@cli.command()
@click.option("--model", "model_spec", default=None, metavar="SPEC",
              help="Registered name, pkg.module:factory, file.py:Name, or a saved folder. "
                   "Default: the demo CNN trained on digits.")
@click.option("--data", "data_name", default=None, metavar="NAME",
              help="Registered dataset name or pkg.module:factory. Default: digits.")
@click.option("--recipe", "recipe_file", type=click.Path(dir_okay=False), default=None,
              help="A TOML recipe file.")
@click.option("--technique", "techniques", multiple=True, metavar="NAME",
              help="A stage; repeat for several (instead of --recipe).")
@click.option("--max-accuracy-drop", type=float, default=None, help="Accuracy points allowed.")
@click.option("--target-latency", default=None, help="ms/sample at batch 1, or a ratio like 2x.")
@click.option("--target-size", default=None, help="MiB, or a ratio like 4x.")
@click.option("--target-macs", default=None, help="MACs per sample (300M), or a ratio like 2x.")
@click.option("--out", default="sconce-out", show_default=True, type=click.Path(file_okay=False),
              help="Output folder.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seeds everything before the data and the model are built.")
@click.option("--resume", is_flag=True,
              help="Reuse the finished stages in <out>/work (refused if the model, data or "
                   "settings differ).")
@click.option("--trust-code", is_flag=True, help=_TRUST_CODE_HELP)
@click.option("--wait", "wait_for_out", is_flag=True,
              help="If another run is writing into --out, wait for it instead of refusing.")
@click.option("--finetune-epochs", default=None, type=click.FloatRange(min=0),
              help="Fine-tuning budget per pruning stage (0 turns it off). "
                   f"Default 1 ({DEMO_FINETUNE_EPOCHS} for the demo).")
@click.option("--train-epochs", default=0, show_default=True, type=click.FloatRange(min=0),
              help="Train the model this long before compressing (for untrained models).")
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help="Batch size of a named dataset.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--nproc", default=None, type=int,
              help="Run as this many processes with torchrun (DistributedDataParallel "
                   "fine-tuning: gloo on CPU, one GPU each on CUDA); rank 0 writes --out.")
@click.option("--nnodes", default=None, type=int,
              help="Machines taking part (run the same command on each; needs "
                   "--rdzv-endpoint).")
@click.option("--node-rank", default=None, type=int,
              help="This machine's number for torchrun's static rendezvous (0 on the machine "
                   "at --rdzv-endpoint).")
@click.option("--rdzv-endpoint", default=None, metavar="HOST:PORT",
              help="Where the machines meet (torchrun's --rdzv-endpoint).")
@click.option("--rdzv-backend", default=None, metavar="NAME",
              help="torchrun's rendezvous backend (default static; c10d numbers the machines "
                   "itself).")
@click.option("--rdzv-id", default=None, metavar="ID",
              help="The job's id, the same on every machine (torchrun's --rdzv-id).")
def compress(model_spec: str | None, data_name: str | None, recipe_file: str | None,
             techniques: tuple[str, ...], max_accuracy_drop: float | None,
             target_latency: str | None, target_size: str | None, target_macs: str | None,
             out: str, device: str, seed: int, resume: bool, trust_code: bool,
             wait_for_out: bool,
             finetune_epochs: float | None, train_epochs: float, batch_size: int | None,
             no_progress: bool, nproc: int | None, nnodes: int | None, node_rank: int | None,
             rdzv_endpoint: str | None, rdzv_backend: str | None, rdzv_id: str | None) -> None:
    """Compress a model and print the comparison table (no arguments: the demo).

    Without --recipe or --technique the stages are planned from the installed techniques by
    measuring, within the constraints (at most 1 accuracy point lost when none is given).
    """
    from sconce import distributed
    from sconce.launch import Launch
    from sconce.storage import folder_lock

    launch = Launch(nproc, nnodes, node_rank, rdzv_endpoint, rdzv_backend, rdzv_id)
    launch.check(device)
    if launch.wanted:
        code = _launch(launch, out, wait_for_out)
        if code:
            raise click.exceptions.Exit(code)
        return
    # the output folder is checked writable and locked before any compute, for the whole run,
    # by the process that writes it (rank 0 under torchrun)
    with (folder_lock(out, wait=wait_for_out) if distributed.is_main_process()
          else contextlib.nullcontext()):
        _compress(model_spec, data_name, recipe_file, techniques, max_accuracy_drop,
                  target_latency, target_size, target_macs, out, device, seed, resume,
                  trust_code, finetune_epochs, train_epochs, batch_size, no_progress)


LAUNCH_OPTIONS = frozenset({"nproc", "nnodes", "node_rank", "rdzv_endpoint", "rdzv_backend",
                            "rdzv_id"})


def _launch(launch: Launch, out: str, wait_for_out: bool) -> int:
    """Run this command under torchrun, without the launch options; torchrun's exit status.

    On one machine this process locks ``out`` (refusing, or waiting with ``--wait``, before
    anything starts) and holds the lock until torchrun ends; the processes it starts share
    that lock (:func:`sconce.storage.lock_for_children`) instead of waiting for it. With
    several machines nothing is locked here: whether ``out`` is one folder shared by the
    machines or one on each is not known, so rank 0, wherever it runs, locks it as under a
    plain torchrun.
    """
    from sconce.launch import run_torchrun
    from sconce.storage import ensure_writable_dir, folder_lock, lock_for_children

    arguments = _relaunched_arguments(click.get_current_context())
    if launch.several_machines:
        ensure_writable_dir(out)
        return run_torchrun(launch, "sconce.cli", arguments)
    with folder_lock(out, wait=wait_for_out) as folder:
        shared = lock_for_children(folder)
        return run_torchrun(launch, "sconce.cli", arguments, env=shared.env,
                            pass_fds=(shared.fd,))


def _relaunched_arguments(ctx: click.Context) -> list[str]:
    """The command line as the user gave it (the group's options, the command and its
    options), without the launch options: what every launched process runs."""
    from click.core import ParameterSource

    arguments: list[str] = []
    for context in (ctx.parent, ctx):
        if context is None:
            continue
        if context is ctx:
            arguments.append(ctx.info_name or "compress")
        for param in context.command.params:
            name = param.name or ""
            value = context.params.get(name)
            if (name in LAUNCH_OPTIONS or value is None or not isinstance(param, click.Option)
                    or context.get_parameter_source(name) in (None, ParameterSource.DEFAULT,
                                                              ParameterSource.DEFAULT_MAP)):
                continue
            flag = next((o for o in param.opts if o.startswith("--")), param.opts[0])
            if param.count:
                arguments += [flag] * int(value)
            elif param.is_flag:
                arguments += [flag] if value else []
            elif param.multiple:
                for item in value:
                    arguments += [flag, str(item)]
            else:
                arguments += [flag, str(value)]
    return arguments


def _compress(model_spec: str | None, data_name: str | None, recipe_file: str | None,
              techniques: tuple[str, ...], max_accuracy_drop: float | None,
              target_latency: str | None, target_size: str | None, target_macs: str | None,
              out: str, device: str, seed: int, resume: bool, trust_code: bool,
              finetune_epochs: float | None,
              train_epochs: float, batch_size: int | None, no_progress: bool) -> None:
    from sconce import distributed
    from sconce.api import train
    from sconce.pipeline import compress as run_compress
    from sconce.recipe import Constraints, Recipe
    from sconce.runtime import seed_everything

    if recipe_file and techniques:
        raise SconceError("give --recipe or --technique, not both")
    options: dict[str, Any]
    recipe, constraints, options = (Recipe.from_value(list(techniques) or None), None, {})
    if recipe_file:
        recipe, constraints, options = Recipe.from_toml(recipe_file)
    limits = {"max_accuracy_drop": max_accuracy_drop, "target_latency": target_latency,
              "target_size_mib": target_size, "target_macs": target_macs}
    limits = {k: v for k, v in limits.items() if v is not None}
    if limits:
        constraints = Constraints.from_value({**(constraints.to_dict() if constraints else {}),
                                              **limits})
    seed_everything(seed)  # before the data is split and the model initialised
    data = _load_data(data_name or DEMO_DATA, batch_size)
    model, kwargs = _build(model_spec or DEMO_MODEL, data, trust_code)
    if train_epochs > 0:
        import torch

        from sconce.api import get_adapter
        from sconce.pipeline import check_model_runs
        from sconce.runtime import model_device

        # labels and shapes are checked before training, as compress checks them
        check_model_runs(model, data, get_adapter(model), model_device(model, torch.device("cpu")))
        logger.info("training the model for %g epoch(s) before compressing", train_epochs)
        train(model, data, train_epochs, device=device, seed=seed, progress=not no_progress)
    if finetune_epochs is not None:
        options["finetune_epochs"] = finetune_epochs
    elif model_spec is None and data_name is None:
        options.setdefault("finetune_epochs", DEMO_FINETUNE_EPOCHS)
    options.setdefault("seed", seed)
    options.setdefault("device", device)
    options.update(resume=resume, progress=not no_progress, work_dir=Path(out) / "work")
    result = run_compress(model, data, recipe=recipe, constraints=constraints, **options)
    spec = model_spec or DEMO_MODEL
    main = distributed.is_main_process()  # under torchrun, rank 0 writes and prints
    if main:
        result.save(out, model_spec=str(Path(spec).resolve()) if Path(spec).is_dir() else spec,
                    model_kwargs=kwargs)
        console = _console()
        result.report.print(console)
        console.print(f"saved to {out}/ (model.pt, model.json, report.json, report.md, "
                      "report.png)", highlight=False)
    if result.failed is not None:
        if main:
            click.echo(f"sconce: error: {result.failed}; the stages before it are saved in "
                       f"{out}/", err=True)
        raise click.exceptions.Exit(EXIT_STAGE_FAILED)


@cli.command()
@click.option("--pattern", default="*", show_default=True, help="Glob over technique names.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def techniques(pattern: str, as_json: bool) -> None:
    """Every installed technique, its package and its config fields."""
    from fnmatch import fnmatchcase

    rows: list[dict[str, Any]] = [row for row in _listing()["techniques"]
                                  if fnmatchcase(row["name"], pattern)]
    if as_json:
        shown = [{**row, "config": [{k: v for k, v in f.items() if k != "repr"}
                                    for f in row["config"]]} for row in rows]
        click.echo(json.dumps(shown, indent=2, default=str))
        return
    if not rows:
        click.echo("no technique installed; pip install sconce-prune sconce-quant")
        return
    from rich.table import Table

    table = Table(title="Installed techniques")
    for column in ("name", "kind", "package", "config", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        config = ", ".join(f"{f['name']}={f['repr']}" for f in row["config"])
        table.add_row(row["name"], row["kind"], row["package"], config, row["description"])
    _console().print(table)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json: bool) -> None:
    """Every loaded plugin: its distribution, version and hooks."""
    infos: list[dict[str, Any]] = _listing()["plugins"]
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    from rich.table import Table

    table = Table(title="Plugins")
    for column in ("name", "distribution", "version", "hooks", "status"):
        table.add_column(column, overflow="fold")
    for info in infos:
        status = f"failed: {info['error']}" if info["error"] else "loaded"
        table.add_row(info["name"], info["distribution"], info["version"],
                      ", ".join(h.removeprefix("sconce_") for h in info["hooks"]), status)
    _console().print(table)


@cli.command()
def models() -> None:
    """Every registered model name."""
    for name, origin in _listing()["models"].items():
        click.echo(f"{name}\t({origin})")


@cli.command()
def datasets() -> None:
    """Every registered dataset name."""
    for name, origin in _listing()["datasets"].items():
        click.echo(f"{name}\t({origin})")


@cli.command()
@click.option("--model", "model_spec", default=DEMO_MODEL, show_default=True, metavar="SPEC")
@click.option("--data", "data_name", default=DEMO_DATA, show_default=True, metavar="NAME")
@click.option("--metric", "metric_names", multiple=True, help="Only these metrics (repeatable).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--batch-size", default=None, type=click.IntRange(min=1))
@click.option("--trust-code", is_flag=True, help=_TRUST_CODE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def measure(model_spec: str, data_name: str, metric_names: tuple[str, ...], device: str,
            batch_size: int | None, trust_code: bool, as_json: bool) -> None:
    """The metrics of one model, as a table or JSON."""
    from sconce.api import context, get_adapter, resolve_metrics
    from sconce.metrics.measure import measure_with_context
    from sconce.pipeline import check_model_runs
    from sconce.report import MetricInfo, Report, StageResult
    from sconce.runtime import resolve_device

    data = _load_data(data_name, batch_size)
    model, _ = _build(model_spec, data, trust_code)
    adapter = get_adapter(model)
    resolved = resolve_device(device)
    check_model_runs(model, data, adapter, resolved)
    ctx = context(data, adapter=adapter, device=resolved, progress=False)
    metrics = resolve_metrics(list(metric_names) or None, have_data=True,
                              task=adapter.task)
    measured = measure_with_context(model, ctx, metrics)
    if as_json:
        click.echo(json.dumps({"values": measured.values, "notes": measured.notes}, indent=2))
        return
    report = Report(metrics=[MetricInfo.of(m, measured.labels.get(m.name)) for m in metrics],
                    stages=[StageResult(model_spec, values=measured.values,
                                        notes={**ctx.stage.notes, **measured.notes})])
    report.drop_inapplicable_metrics()
    _console().print(report.to_rich_table())


def build_cli() -> click.Group:
    """The ``sconce`` group with every plugin's commands added (loads the plugins).

    A plugin whose ``sconce_register_commands`` fails is logged and skipped.
    """
    _plugin_commands_added.clear()  # plugins registered since the last call add theirs
    _add_plugin_commands(cli)
    return cli


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI; a :class:`SconceError` becomes one line and exit status 2."""
    try:
        # without standalone mode, click returns an Exit's code instead of raising it
        code = cli.main(args=argv, prog_name="sconce", standalone_mode=False)
    except SconceError as exc:
        click.echo(f"sconce: error: {exc}", err=True)
        return EXIT_USER_ERROR
    except click.exceptions.Abort:
        click.echo("sconce: aborted", err=True)
        return 130
    except click.UsageError as exc:  # one line, like sconce's own errors
        command = exc.ctx.command_path if exc.ctx is not None else "sconce"
        click.echo(f"sconce: error: {exc.format_message()} (see {command} --help)", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
