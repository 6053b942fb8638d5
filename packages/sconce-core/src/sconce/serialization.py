"""Save a compressed model and load it back without unpickling code.

A saved folder holds ``model.pt`` (the state dict, loaded with ``weights_only=True``) and
``model.json`` (how to rebuild the architecture: the model spec and, for each stage that
changed structure, the technique's restore record). :func:`load_saved` rebuilds the
architecture from a fresh instance the caller passes (or from the spec), replays each
technique's ``restore``, then loads the weights. When neither an instance nor a spec is
known, the folder's ``model.pt2`` (the model exported at save time, see
:mod:`sconce.exported`) is loaded instead, with ``trust_code=True`` only (``torch.export.load``
unpickles): a module with a dynamic batch dimension whose ``.eval()`` / ``.train()`` /
``.to()`` work.

A saved folder is data, never code: the spec in ``model.json`` may name a registered model
(or another folder sconce saved); one that names code (``pkg.module:callable``,
``file.py:Name``) is refused unless the caller passes ``trust_code=True``, and the keyword
arguments it records must be plain JSON values. See ``SECURITY.md`` at the repository root.

This module knows no registry: the caller passes the installed techniques and the registered
model factories (:func:`sconce.load` does).

Example:
    >>> import tempfile, torch
    >>> from torch import nn
    >>> folder = tempfile.mkdtemp()
    >>> save_model(nn.Linear(2, 2), folder, architecture=Architecture(spec=None))
    >>> isinstance(load_saved(folder, nn.Linear(2, 2), techniques={}, models={}), nn.Linear)
    True
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sconce.errors import ModelError
from sconce.exported import export_program, load_program
from sconce.modelspec import build_model
from sconce.storage import atomic_save, atomic_torch_save, atomic_write_json
from sconce.technique import make_config

logger = logging.getLogger(__name__)

FORMAT = "sconce-model"
FORMAT_VERSION = 1
PROGRAM_NAME = "model.pt2"


@dataclass
class StageRecord:
    """A stage as needed to rebuild its structure: technique, config, restore record.

    Example:
        >>> StageRecord("prune.channel", {"sparsity": 0.5}, {"widths": {}}).technique
        'prune.channel'
    """

    technique: str
    config: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] | None = None


@dataclass
class Architecture:
    """How to rebuild a model: a spec for the original, then each stage's restore.

    Attributes:
        spec: a registered model name or ``pkg.module:factory`` that builds the original
            architecture (None when the model was handed over as an object).
        kwargs: the keyword arguments the spec was built with.
        stages: one record per stage, in order.

    Example:
        >>> Architecture.from_dict(Architecture("vgg", {"num_classes": 10}).to_dict()).spec
        'vgg'
    """

    spec: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    stages: list[StageRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form written to ``model.json``."""
        return {"format": FORMAT, "version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Architecture:
        """Read ``model.json``'s content back.

        Raises:
            ModelError: the data is not a sconce model description.
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ModelError("model.json is not a sconce model description")
        spec, kwargs, stages = data.get("spec"), data.get("kwargs", {}), data.get("stages", [])
        if spec is not None and not isinstance(spec, str):
            raise ModelError(f"model.json's spec must be a string, got {spec!r}")
        if not isinstance(kwargs, Mapping) or not all(
                isinstance(k, str) and _plain(v) for k, v in kwargs.items()):
            raise ModelError("model.json's kwargs must map names to plain JSON values")
        if not isinstance(stages, list) or not all(
                isinstance(s, Mapping) and isinstance(s.get("technique"), str) for s in stages):
            raise ModelError("model.json's stages must be a list of {technique, config, record}")
        try:
            records = [StageRecord(**s) for s in stages]
        except TypeError as exc:
            raise ModelError(f"model.json has a damaged stage record ({exc})") from None
        return cls(spec=spec, kwargs=dict(kwargs), stages=records)


def _plain(value: Any) -> bool:
    """A JSON scalar, or a list of them: all a model.json may pass to a model factory."""
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def names_code(spec: str) -> bool:
    """Whether a model spec names code to import (``pkg.module:attr`` or ``file.py:Name``)
    rather than a registered model.

    Example:
        >>> names_code("os:system"), names_code("x.py:Net"), names_code("vgg")
        (True, True, False)
    """
    return ":" in spec or spec.endswith(".py")


def save_model(model: nn.Module, folder: str | Path, *, architecture: Architecture,
               example_inputs: Any = None) -> None:
    """Write ``model.pt`` and ``model.json`` (and ``model.pt2`` when no spec is known and
    ``example_inputs`` are given), each atomically.

    Example:
        >>> save_model(model, "out/", architecture=Architecture())  # doctest: +SKIP
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(folder / "model.pt", model.state_dict())
    atomic_write_json(folder / "model.json", architecture.to_dict())
    if architecture.spec is None and example_inputs is not None:
        _save_program(model, folder / PROGRAM_NAME, example_inputs)


def _save_program(model: nn.Module, path: Path, example_inputs: Any) -> None:
    was_training = model.training
    try:
        model.eval()
        program = export_program(model, example_inputs)
        atomic_save(path, lambda handle: torch.export.save(program, handle))
    except Exception as exc:  # export is a convenience; the architecture record is the format
        logger.info("torch.export could not export the model (%s); load it with "
                    "sconce.load(folder, model=<a fresh instance of its class>)", exc)
    finally:
        model.train(was_training)


def rebuild(base: nn.Module, stages: list[StageRecord], techniques: Mapping[str, Any]
            ) -> nn.Module:
    """Replay each stage's ``restore`` on ``base`` (a fresh original-architecture model).

    Args:
        base: changed in place (and returned, or what ``restore`` returns).
        stages: the records of the stages, in order.
        techniques: installed techniques by name.

    Raises:
        ModelError: a technique is not installed, or its ``restore`` fails on ``base``.

    Example:
        >>> rebuild(nn.Linear(2, 2), [], {}).out_features
        2
    """
    model = base
    for stage in stages:
        technique = techniques.get(stage.technique)
        if technique is None:
            raise ModelError(
                f"this model was compressed with {stage.technique!r}, which is not installed; "
                "install the plugin that provides it (see `sconce techniques`)"
            )
        restore: Callable[..., nn.Module] | None = getattr(technique, "restore", None)
        if restore is None:
            continue
        config = make_config(technique, stage.config)
        try:
            model = restore(model, config, stage.record or {})
        except Exception as exc:
            raise ModelError(
                f"{stage.technique} could not rebuild its structure on this model "
                f"({type(exc).__name__}: {exc}); the weights do not fit this architecture — "
                "give a fresh instance of the original model"
            ) from None
    return model


def read_architecture(folder: str | Path) -> Architecture:
    """The architecture record of a saved folder.

    Raises:
        ModelError: the folder has no ``model.json``, or it is damaged.

    Example:
        >>> read_architecture("out/").stages  # doctest: +SKIP
        [StageRecord(technique='prune.channel', ...)]
    """
    description = Path(folder) / "model.json"
    if not description.is_file():
        raise ModelError(f"{str(folder)!r} has no model.json; is it a folder sconce saved?")
    try:
        return Architecture.from_dict(json.loads(description.read_text("utf-8")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelError(f"{str(description)!r} is damaged: {exc}") from None


def load_saved(folder: str | Path, model: nn.Module | None = None, *,
               techniques: Mapping[str, Any], models: Mapping[str, Callable[..., nn.Module]],
               map_location: str | torch.device = "cpu", trust_code: bool = False,
               _seen: frozenset[Path] = frozenset()) -> nn.Module:
    """Load a model saved by sconce, in eval mode (see the module docstring for the order).

    Args:
        folder: the folder ``result.save()`` or ``sconce compress`` wrote.
        model: a fresh instance of the original architecture; copied, never modified.
        techniques: installed techniques by name (for their ``restore``).
        models: registered model factories (for a spec that names one).
        map_location: device for the weights.
        trust_code: allow a spec that names code (``pkg.module:factory``, ``file.py:Name``)
            to be imported and called; only for folders you trust as you trust your own code.

    Raises:
        ModelError: the folder is not a sconce model, the architecture cannot be rebuilt,
            or it names code and ``trust_code`` is False.
    """
    folder = Path(folder)
    architecture = read_architecture(folder)
    spec = architecture.spec
    if model is not None:
        base = copy.deepcopy(model)
    elif spec is not None and spec not in models and (Path(spec) / "model.json").is_file():
        nested = Path(spec).resolve()
        if nested in _seen or nested == folder.resolve():
            raise ModelError(f"{str(folder)!r}: model.json refers to itself in a loop")
        base = load_saved(nested, techniques=techniques, models=models, trust_code=trust_code,
                          _seen=_seen | {folder.resolve()})
    elif spec is not None:
        if spec not in models and names_code(spec) and not trust_code:
            raise ModelError(
                f"{str(folder)!r}: model.json names code ({spec!r}), which sconce never runs "
                "from a saved folder; pass trust_code=True (--trust-code) only if you trust "
                "its source, or give model=<a fresh instance> (see SECURITY.md)")
        base = build_model(spec, models, **architecture.kwargs)
    elif (folder / PROGRAM_NAME).is_file():
        if not trust_code:
            raise ModelError(
                f"{str(folder)!r} holds its model as {PROGRAM_NAME}, which torch.export.load "
                "unpickles (it can run code); pass trust_code=True (--trust-code) only if you "
                "made or trust this folder, or give model=<a fresh instance> (see SECURITY.md)")
        return load_program(folder / PROGRAM_NAME).to(map_location)
    else:
        raise ModelError(
            f"{str(folder)!r} does not say how to build the architecture; "
            "call sconce.load(folder, model=<a fresh instance of the original model>)"
        )
    rebuilt = rebuild(base, architecture.stages, techniques)
    state = read_weights(folder / "model.pt", map_location)
    try:
        rebuilt.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"the saved weights do not fit the rebuilt architecture: "
                         f"{str(exc).splitlines()[0]}") from None
    return rebuilt.eval()


def read_weights(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The state dict in ``path``, loaded with ``weights_only=True``.

    Raises:
        ModelError: the file is missing, damaged, or holds something else than weights.

    Example:
        >>> read_weights(Path("missing/model.pt"))
        Traceback (most recent call last):
        ...
        sconce.errors.ModelError: 'missing/model.pt' is missing; the saved folder is incomplete
    """
    if not path.is_file():
        raise ModelError(f"{str(path)!r} is missing; the saved folder is incomplete")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a bad archive
        raise ModelError(f"{str(path)!r} is damaged or not a weights file (torch.load "
                         f"refused it: {type(exc).__name__}); save the model again") from None
    if not isinstance(state, dict):
        raise ModelError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict")
    return state  # as loaded: its ``_metadata`` (module versions) must reach load_state_dict
