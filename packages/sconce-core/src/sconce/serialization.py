"""Save a compressed model and load it back without unpickling code.

A saved folder holds ``model.pt`` (the state dict, loaded with ``weights_only=True``) and
``model.json`` (how to rebuild the architecture: the model spec and, for each stage that
changed structure, the technique's restore record). :func:`load` rebuilds the architecture
from the spec (or from a fresh instance the caller passes), replays each technique's
``restore``, then loads the weights. When neither is possible, a ``model.pt2`` written with
``torch.export`` at save time is loaded instead.

Example:
    >>> import tempfile, torch
    >>> from torch import nn
    >>> folder = tempfile.mkdtemp()
    >>> save_model(nn.Linear(2, 2), folder, architecture=Architecture(spec=None))
    >>> isinstance(load(folder, model=nn.Linear(2, 2)), nn.Linear)
    True
"""

from __future__ import annotations

import copy
import io
import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sconce.errors import ModelError, UnknownNameError
from sconce.storage import atomic_torch_save, atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)

FORMAT = "sconce-model"
FORMAT_VERSION = 1


@dataclass
class StageRecord:
    """A stage as needed to rebuild its structure: technique, config, restore record."""

    technique: str
    config: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] | None = None


@dataclass
class Architecture:
    """How to rebuild a model: a spec for the original, then each stage's restore."""

    spec: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    stages: list[StageRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        if data.get("format") != FORMAT:
            raise ModelError("model.json is not a sconce model description")
        return cls(spec=data.get("spec"), kwargs=dict(data.get("kwargs", {})),
                   stages=[StageRecord(**s) for s in data.get("stages", [])])


def save_model(model: nn.Module, folder: str | Path, *, architecture: Architecture,
               example_inputs: Any = None) -> None:
    """Write ``model.pt`` and ``model.json`` (and ``model.pt2`` when no spec is known).

    Each file is written atomically.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(folder / "model.pt", model.state_dict())
    atomic_write_json(folder / "model.json", architecture.to_dict())
    if architecture.spec is None and example_inputs is not None:
        _export_program(model, folder / "model.pt2", example_inputs)


def _export_program(model: nn.Module, path: Path, example_inputs: Any) -> None:
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    was_training = model.training
    try:
        model.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's internal chatter is not for users
            program = torch.export.export(model, args)
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        atomic_write_bytes(path, buffer.getvalue())
    except Exception as exc:  # export is a convenience; the architecture record is the format
        logger.info("torch.export could not export the model (%s); load it with "
                    "sconce.load(folder, model=<a fresh instance of its class>)", exc)
    finally:
        model.train(was_training)


def rebuild(base: nn.Module, stages: list[StageRecord]) -> nn.Module:
    """Replay each stage's ``restore`` on ``base`` (a fresh original-architecture model)."""
    from sconce.plugins import registry
    from sconce.technique import make_config

    model = base
    for stage in stages:
        try:
            technique = registry().lookup("techniques", stage.technique)
        except UnknownNameError as exc:
            raise ModelError(
                f"this model was compressed with {stage.technique!r}, which is not installed; "
                f"install the plugin that provides it ({exc})"
            ) from None
        restore = getattr(technique, "restore", None)
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


def load(folder: str | Path, model: nn.Module | None = None, *, map_location: str = "cpu"
         ) -> nn.Module:
    """Load a model saved by sconce, in eval mode.

    Args:
        folder: the folder ``result.save()`` or ``sconce compress`` wrote.
        model: a fresh instance of the original architecture, when the folder has no spec
            (models handed to the Python API as objects). It is copied, never modified.
        map_location: device for the weights.

    Raises:
        ModelError: the folder is not a sconce model, or the architecture cannot be rebuilt.
    """
    folder = Path(folder)
    description = folder / "model.json"
    if not description.is_file():
        raise ModelError(f"{str(folder)!r} has no model.json; is it a folder sconce saved?")
    try:
        architecture = Architecture.from_dict(json.loads(description.read_text("utf-8")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelError(f"{str(description)!r} is damaged: {exc}") from None
    if model is not None:
        base = copy.deepcopy(model)
    elif architecture.spec is not None:
        from sconce.modelspec import build_model

        base = build_model(architecture.spec, **architecture.kwargs)
    elif (folder / "model.pt2").is_file():
        return torch.export.load(folder / "model.pt2").module()
    else:
        raise ModelError(
            f"{str(folder)!r} does not say how to build the architecture; "
            "call sconce.load(folder, model=<a fresh instance of the original model>)"
        )
    rebuilt = rebuild(base, architecture.stages)
    state = torch.load(folder / "model.pt", map_location=map_location, weights_only=True)
    try:
        rebuilt.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"the saved weights do not fit the rebuilt architecture: "
                         f"{str(exc).splitlines()[0]}") from None
    return rebuilt.eval()
