"""Built-in plugin: adapters for Hugging Face ``transformers`` models (never imports it)."""

from __future__ import annotations

from torch import nn

from sconce.adapter import ModelAdapter
from sconce.hookspecs import hookimpl
from sconce.textmodels import transformers_adapter


@hookimpl(trylast=True)
def sconce_model_adapter(model: nn.Module) -> ModelAdapter | None:
    """A causal-LM, encoder or classifier adapter for ``transformers`` models; None else.

    Runs after the plugins' answers (``trylast``), so a plugin may still claim such a model.

    Example:
        >>> sconce_model_adapter(nn.Linear(2, 2)) is None
        True
    """
    return transformers_adapter(model)
