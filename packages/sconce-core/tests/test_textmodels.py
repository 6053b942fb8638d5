"""Adapters, metrics and offline text for language models (no transformers needed)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sconce
from sconce.api import resolve_metrics
from sconce.datasets.text import causal_lm_text, english_text, sentence_text
from sconce.textmodels import CausalLMAdapter, EncoderAdapter, transformers_adapter

VOCAB = 40


def _tokenize(text: str) -> list[int]:
    return [2 + ord(c) % (VOCAB - 2) for c in text]


class TinyCausalLM(nn.Module):
    """A bigram model with a transformers-like keyword interface."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="tiny")
        self.embed = nn.Embedding(VOCAB, 16)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, input_ids, attention_mask=None, use_cache=True):
        return SimpleNamespace(logits=self.head(torch.tanh(self.embed(input_ids))))


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="tiny")
        self.embed = nn.Embedding(VOCAB, 8)
        self.mix = nn.Linear(8, 8)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(last_hidden_state=self.mix(self.embed(input_ids)))


# classes that look like they come from the transformers package, by name and module
TinyForCausalLM = type("TinyForCausalLM", (TinyCausalLM,), {"__module__": "transformers.tiny"})
TinyModel = type("TinyModel", (TinyEncoder,), {"__module__": "transformers.tiny"})


def test_transformers_models_are_recognised_by_class_without_importing_transformers() -> None:
    assert isinstance(sconce.get_adapter(TinyForCausalLM()), CausalLMAdapter)
    encoder = TinyModel()
    adapter = sconce.get_adapter(encoder)
    assert isinstance(adapter, EncoderAdapter) and adapter.reference is encoder
    assert transformers_adapter(TinyCausalLM()) is None  # same code, not from transformers
    assert type(sconce.get_adapter(nn.Linear(2, 2))).__name__ == "ClassifierAdapter"


def test_offline_text_calibration_and_evaluation_never_overlap() -> None:
    evaluation = set(english_text("evaluation").split("\n\n"))
    calibration = english_text("calibration", min_chars=60_000).split("\n\n")
    assert len("".join(calibration)) >= 55_000
    assert not evaluation & set(calibration)
    data = causal_lm_text(_tokenize, length=32, calibration_samples=16, evaluation_samples=8)
    windows = data.calibration.dataset.tensors[0]
    test = data.test.dataset.tensors[0]
    assert windows.shape == (16, 32) and test.shape == (8, 32)
    assert not {tuple(w.tolist()) for w in windows} & {tuple(w.tolist()) for w in test}


def test_perplexity_is_exp_of_the_mean_next_token_loss() -> None:
    torch.manual_seed(0)
    model = TinyForCausalLM()
    data = causal_lm_text(_tokenize, length=16, calibration_samples=4, evaluation_samples=6,
                          batch_size=4)
    values = sconce.measure(model, data, metrics=["perplexity", "accuracy"])
    windows = data.test.dataset.tensors[0]
    with torch.no_grad():
        logits = model(windows).logits[:, :-1]
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), windows[:, 1:].reshape(-1))
    assert values["perplexity"] == pytest.approx(math.exp(float(loss)), rel=1e-5)
    accuracy = (logits.argmax(-1) == windows[:, 1:]).float().mean() * 100
    assert values["accuracy"] == pytest.approx(float(accuracy), rel=1e-5)


def test_default_metrics_follow_the_adapter_task() -> None:
    classifier = {m.name for m in resolve_metrics(None, have_data=True)}
    causal = {m.name for m in resolve_metrics(None, have_data=True, task="causal-lm")}
    embedding = {m.name for m in resolve_metrics(None, have_data=True, task="embedding")}
    assert "perplexity" not in classifier and "embedding_cosine" not in classifier
    assert {"perplexity", "accuracy"} <= causal
    assert "embedding_cosine" in embedding and "accuracy" not in embedding


def test_embedding_cosine_compares_with_the_reference_model() -> None:
    torch.manual_seed(0)
    encoder = TinyModel()
    data = sentence_text(_tokenize, max_length=24, calibration_samples=8, evaluation_samples=12)
    assert sconce.measure(encoder, data, metrics=["embedding_cosine"])[
        "embedding_cosine"] == pytest.approx(1.0, abs=1e-6)
    changed = TinyModel()
    changed.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        changed.mix.weight.mul_(-1.0)
    adapter = EncoderAdapter(reference=encoder)
    value = sconce.measure(changed, data, metrics=["embedding_cosine"], adapter=adapter)
    cosines = []
    with torch.no_grad():
        for ((ids, mask),) in data.test:
            ours = EncoderAdapter.pool(changed(ids).last_hidden_state, mask)
            theirs = EncoderAdapter.pool(encoder(ids).last_hidden_state, mask)
            cosines.append(F.cosine_similarity(ours, theirs))
    assert value["embedding_cosine"] < 0.999
    assert torch.cat(cosines).mean().item() == pytest.approx(value["embedding_cosine"], rel=1e-5)
    padded_out = EncoderAdapter.pool(torch.ones(1, 3, 2), torch.tensor([[1, 1, 0]]))
    assert torch.equal(padded_out, torch.ones(1, 2))
