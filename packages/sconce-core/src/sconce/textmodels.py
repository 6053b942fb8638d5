"""Adapters for Hugging Face ``transformers`` models: causal LMs, encoders, classifiers.

The core never imports ``transformers``: a model is recognised by its class coming from the
``transformers`` package (duck typing), and run through its keyword interface. The core's
built-in ``sconce_model_adapter`` answers with :func:`transformers_adapter`:

- ``...ForCausalLM`` / ``...LMHeadModel``: :class:`CausalLMAdapter`, token ids in, next-token
  logits out; the targets are the ids shifted by one, so the loss is the language-modelling
  loss, accuracy is next-token accuracy and the ``perplexity`` metric applies.
- ``...ForSequenceClassification``: :class:`SequenceClassifierAdapter`, a plain classifier
  over ``(input_ids, attention_mask)``.
- other models (``BertModel``, ``LlamaModel``, ...): :class:`EncoderAdapter`, whose output is
  the mean-pooled last hidden state (a sentence embedding); the ``embedding_cosine`` metric
  compares it with the embeddings of the reference model (the one the adapter was made for).

Example:
    >>> import torch
    >>> from torch import nn
    >>> transformers_adapter(nn.Linear(2, 2)) is None  # not a transformers model: pass
    True
    >>> adapter = CausalLMAdapter()
    >>> ids = torch.tensor([[5, 6, 7]])
    >>> inputs, targets = adapter.split_batch((ids,))
    >>> targets  # the next token of each position
    tensor([[6, 7]])
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sconce.adapter import ModelAdapter
from sconce.data import split_batch
from sconce.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["CausalLMAdapter", "EncoderAdapter", "SequenceClassifierAdapter",
           "is_transformers_model", "transformers_adapter"]

_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def is_transformers_model(model: object) -> bool:
    """Whether ``model`` is a ``transformers`` model (checked without importing it).

    Example:
        >>> is_transformers_model(nn.Linear(2, 2))
        False
    """
    return hasattr(model, "config") and any(
        cls.__module__.startswith("transformers.") for cls in type(model).__mro__)


def transformers_adapter(model: nn.Module) -> ModelAdapter | None:
    """The adapter for a ``transformers`` model, by its class name; None for other models.

    Example:
        >>> transformers_adapter(nn.ReLU()) is None
        True
    """
    if not is_transformers_model(model):
        return None
    name = type(model).__name__
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return CausalLMAdapter()
    if name.endswith("ForSequenceClassification"):
        return SequenceClassifierAdapter()
    if name.endswith("Model"):
        return EncoderAdapter(reference=model)
    logger.info("no adapter for transformers model %s; running it as a classifier", name)
    return None


def _keywords(inputs: Any) -> dict[str, torch.Tensor]:
    """``input_ids`` (and ``attention_mask``, ``token_type_ids``) from a tensor or a tuple."""
    tensors = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    if not tensors or not isinstance(tensors[0], torch.Tensor) or len(tensors) > 3:
        raise DataError("a transformers model takes token ids, optionally with an attention "
                        "mask (and token type ids); give batches of (ids,) or ((ids, mask),)")
    return dict(zip(_INPUT_NAMES, tensors, strict=False))


class CausalLMAdapter(ModelAdapter):
    """Runs a causal language model on token ids, without a KV cache.

    Batches hold token ids (optionally with an attention mask); the targets are the ids
    shifted by one. Outputs are the ``(batch, length, vocab)`` logits; the loss is the mean
    next-token cross-entropy, so ``exp(loss)`` is the perplexity.

    Example:
        >>> adapter = CausalLMAdapter()
        >>> logits = torch.zeros(1, 3, 10)
        >>> float(adapter.loss(logits, torch.tensor([[1, 2]])))  # uniform over 10 tokens
        2.302...
    """

    task = "causal-lm"

    def split_batch(self, batch: Any) -> tuple[Any, torch.Tensor | None]:
        """``(ids,)`` or ``((ids, mask),)`` -> inputs and next-token targets (padding, where
        the mask is 0, is ignored: -100); ``(inputs, labels)`` uses the labels, shifted."""
        inputs, labels = split_batch(batch)
        keywords = _keywords(inputs)
        ids = keywords["input_ids"]
        if labels is None:
            labels = ids
        if labels.shape != ids.shape:
            raise DataError(f"labels of shape {tuple(labels.shape)} do not match token ids of "
                            f"shape {tuple(ids.shape)}; give (ids,) or ((ids, mask),) batches")
        mask = keywords.get("attention_mask")
        if mask is not None:
            labels = labels.masked_fill(mask == 0, -100)
        return inputs, labels[:, 1:]

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        return model(**_keywords(inputs), use_cache=False).logits

    def logits(self, outputs: Any) -> torch.Tensor:
        """Next-token logits of every position but the last: ``(batch, length - 1, vocab)``."""
        logits = outputs.logits if hasattr(outputs, "logits") else outputs
        return logits[:, :-1]

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        logits = self.logits(outputs)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))

    def predict(self, outputs: Any) -> torch.Tensor:
        return self.logits(outputs).argmax(dim=-1)

    def distillation_loss(self, outputs: Any, teacher_outputs: Any,
                          temperature: float = 4.0) -> torch.Tensor:
        """Token-level KL divergence between softened distributions, times T^2."""
        student = self.logits(outputs)
        teacher = self.logits(teacher_outputs).detach()
        vocab = student.shape[-1]
        return F.kl_div(F.log_softmax(student.reshape(-1, vocab).float() / temperature, dim=-1),
                        F.softmax(teacher.reshape(-1, vocab).float() / temperature, dim=-1),
                        reduction="batchmean") * temperature**2


class SequenceClassifierAdapter(ModelAdapter):
    """A ``...ForSequenceClassification`` model over ``(input_ids, attention_mask)``.

    Example:
        >>> SequenceClassifierAdapter().predict(torch.tensor([[0.2, 0.8]]))
        tensor([1])
    """

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        return model(**_keywords(inputs)).logits


class EncoderAdapter(ModelAdapter):
    """Runs an encoder (or any base model) and returns mean-pooled sentence embeddings.

    Batches hold ``(input_ids, attention_mask)`` as one input (``((ids, mask),)``), or bare
    ids. Padding positions are left out of the mean.

    Args:
        reference: the model the ``embedding_cosine`` metric compares with (the original,
            never modified); None leaves that metric unmeasured.

    Example:
        >>> hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0]]])
        >>> EncoderAdapter.pool(hidden, torch.tensor([[1, 0]]))  # the padded token is ignored
        tensor([[1., 1.]])
    """

    task = "embedding"

    def __init__(self, reference: nn.Module | None = None) -> None:
        self.reference = reference

    @staticmethod
    def pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The mean of ``hidden`` over the positions ``mask`` keeps."""
        if mask is None:
            return hidden.mean(dim=1)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        keywords = _keywords(inputs)
        outputs = model(**keywords)
        hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") \
            else outputs[0]
        return self.pool(hidden, keywords.get("attention_mask"))

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """Mean squared error to target embeddings (an encoder has no class labels)."""
        return F.mse_loss(outputs, targets.to(outputs.dtype))

    def distillation_loss(self, outputs: Any, teacher_outputs: Any,
                          temperature: float = 4.0) -> torch.Tensor:
        """``1 - cosine`` between the student's and the teacher's embeddings."""
        return (1.0 - F.cosine_similarity(outputs, teacher_outputs.detach(), dim=-1)).mean()
