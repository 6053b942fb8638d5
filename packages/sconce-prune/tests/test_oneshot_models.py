"""The one-shot pruners on whole models: order of layers, errors, the pipeline, save/load,
and tiny random-init BERT and LLaMA models from transformers (skipped without it)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sconce
from sconce.errors import ConfigError, DataError
from sconce.lowbit import LowBitLinear
from sconce_prune.oneshot import (
    OBC,
    OBCConfig,
    SparseGPT,
    SparseGPTConfig,
    SparseGPTSettings,
    Wanda,
    WandaConfig,
    sparsegpt_prune,
)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                         nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3))


def _data(samples: int = 96, features: int = 12) -> sconce.Data:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(samples, features, generator=generator)
    loader = DataLoader(TensorDataset(x, torch.zeros(samples, dtype=torch.long)), batch_size=32)
    return sconce.Data(train=loader, test=loader, calibration=loader, num_classes=3)


def _inputs_of(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_pre_hook(
        lambda module, args: seen.append(args[0].detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def test_later_layers_are_solved_on_the_outputs_of_the_pruned_earlier_ones() -> None:
    dense = _mlp()
    data = _data()
    x = data.calibration.dataset.tensors[0]
    pruned = SparseGPT().apply(_mlp(), SparseGPTConfig(sparsity=0.5, layers=("2", "4")),
                               sconce.Context(data=data))
    # layer 4 must have been solved on what the pruned layer 2 feeds it, not the dense one
    expected, stale = [], []
    for model, out in ((pruned, expected), (dense, stale)):
        inputs = _inputs_of(model, "4", x)
        hessian = 2 * inputs.t() @ inputs / len(inputs)
        out.append(sparsegpt_prune(dense[4].weight.detach(), hessian,
                                   SparseGPTSettings(sparsity=0.5)).weight)
    torch.testing.assert_close(pruned[4].weight.detach(), expected[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(pruned[4].weight.detach(), stale[0], atol=1e-3)


@pytest.mark.parametrize("technique", [SparseGPT(), OBC(), Wanda()])
def test_default_layers_and_exact_sparsity_on_an_mlp(technique) -> None:
    model = _mlp()
    ctx = sconce.Context(data=_data())
    pruned = technique.apply(model, technique.Config(sparsity=0.5), ctx)
    for index in (2, 4):
        assert float((pruned[index].weight == 0).float().mean()) == 0.5
    for index in (0, 6):  # first and last left dense
        assert int((pruned[index].weight == 0).sum()) == 0
    assert ctx.stage.notes["skipped layers"] == "0, 6"
    assert "48 samples" not in ctx.stage.notes["calibration"]


def test_conv_layers_nm_groups_run_along_input_channels() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(16, 3, 6, 6)
    model(x)
    loader = DataLoader(TensorDataset(x, torch.zeros(16, dtype=torch.long)), batch_size=8)
    data = sconce.Data(train=loader, test=loader, num_classes=2)
    for technique in (SparseGPT(), OBC(), Wanda()):
        pruned = technique.apply(model, technique.Config(n=2, m=4, layers=("2", "4")),
                                 sconce.Context(data=data))
        for index in (2, 4):
            weight = pruned[index].weight.detach().permute(0, 2, 3, 1)  # channels innermost
            kept = (weight.reshape(-1, 4) != 0).sum(-1)
            assert int(kept.max()) <= 2, technique.name


def test_bad_inputs_are_one_line_errors() -> None:
    model = _mlp()
    errors = []
    with pytest.raises(DataError, match="prune.sparsegpt needs calibration data") as caught:
        SparseGPT().apply(model, SparseGPTConfig(), sconce.Context())
    errors.append(caught.value)
    full = _data()
    empty = DataLoader(TensorDataset(torch.zeros(0, 12), torch.zeros(0, dtype=torch.long)))
    data = sconce.Data(train=full.train, test=full.test, calibration=empty, num_classes=3)
    with pytest.raises(DataError, match="prune.wanda needs calibration data: .*empty") as caught:
        Wanda().apply(model, WandaConfig(), sconce.Context(data=data))
    errors.append(caught.value)
    data = _data()
    data.calibration.dataset.tensors[0][3, 5] = float("nan")
    with pytest.raises(DataError, match="layer '2' hold NaN or Inf") as caught:
        SparseGPT().apply(_mlp(), SparseGPTConfig(), sconce.Context(data=data))
    errors.append(caught.value)
    with pytest.raises(ConfigError, match=r"layer '2' has 24 inputs .*use prune.sparsegpt") as caught:
        OBC().apply(_mlp(), OBCConfig(max_columns=16), sconce.Context(data=_data()))
    errors.append(caught.value)
    with pytest.raises(ConfigError, match="no prunable layer is called 'fc'") as caught:
        Wanda().apply(_mlp(), WandaConfig(skip_layers=("fc",)), sconce.Context(data=_data()))
    errors.append(caught.value)
    assert all("\n" not in str(error) for error in errors)


def test_pipeline_with_joint_int4_saves_true_size_and_reloads(tmp_path) -> None:
    model = _mlp()
    data = _data()
    result = sconce.compress(model, data, recipe=[("prune.sparsegpt", {
        "sparsity": 0.5, "bits": 4, "group_size": 8, "layers": ["0", "2", "4"]})],
        finetune_epochs=0, metrics=["size", "sparsity"], progress=False, device="cpu")
    compressed = result.model
    assert all(isinstance(compressed[i], LowBitLinear) for i in (0, 2, 4))
    dense_bytes = sum(compressed[i].in_features * compressed[i].out_features * 4
                      for i in (0, 2, 4))
    packed_bytes = sum(compressed[i].qweight.numel() + compressed[i].scales.numel() * 3
                       for i in (0, 2, 4))
    size = result.report.value("Pruned", "size") * 2**20
    assert size < result.report.value("Original", "size") * 2**20 - dense_bytes + packed_bytes + 1
    assert result.report.value("Pruned", "sparsity") > 40  # zeros stay zero in the codes
    result.save(tmp_path / "out")
    again = sconce.load(tmp_path / "out", model=_mlp())
    x = data.test.dataset.tensors[0]
    with torch.no_grad():
        torch.testing.assert_close(again(x), compressed(x))


def test_original_api_prune_modes_run_these_techniques() -> None:
    legacy = sconce.sconce()
    for mode, name in (("sparseGPT", "prune.sparsegpt"), ("OBC", "prune.obc"),
                       ("SparseGpt", "prune.sparsegpt"), ("wanda", "prune.wanda")):
        legacy.prune_mode = mode
        legacy.quantize = False
        assert legacy.recipe() == [name]


# --- transformers models ----------------------------------------------------------------------
transformers = pytest.importorskip("transformers")


def _ids(vocab: int, count: int = 16, length: int = 24) -> torch.Tensor:
    return torch.randint(4, vocab, (count, length), generator=torch.Generator().manual_seed(0))


def _llama() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(config).eval()


def _bert() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=96, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=64)
    return transformers.BertModel(config, add_pooling_layer=True).eval()


@pytest.mark.parametrize("technique", ["prune.sparsegpt", "prune.wanda"])
def test_tiny_llama_end_to_end(technique: str) -> None:
    model = _llama()
    ids = _ids(96)
    loader = DataLoader(TensorDataset(ids), batch_size=8)
    data = sconce.Data(train=loader, test=loader, calibration=loader)
    result = sconce.compress(model, data, recipe=[(technique, {"n": 2, "m": 4})],
                             finetune_epochs=0, metrics=["perplexity", "sparsity"],
                             progress=False, device="cpu")
    pruned = result.model
    layer = pruned.model.layers[1]
    for linear in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.mlp.down_proj):
        assert int((linear.weight.reshape(-1, 4) != 0).sum(-1).max()) == 2
    assert int((pruned.model.embed_tokens.weight == 0).sum()) == 0  # embeddings and head kept
    notes = result.report.stages[1].notes
    assert "model.embed_tokens" not in notes["pruned layers"]
    perplexity = result.report.value("Pruned", "perplexity")
    assert math.isfinite(perplexity) and perplexity > 1


def test_tiny_llama_joint_int4_sequential_saves_and_reloads(tmp_path) -> None:
    model = _llama()
    ids = _ids(96)
    loader = DataLoader(TensorDataset(ids), batch_size=8)
    data = sconce.Data(train=loader, test=loader, calibration=loader)
    result = sconce.compress(model, data, recipe=[("prune.sparsegpt", {
        "bits": 4, "group_size": 16, "sequential": True})], finetune_epochs=0,
        metrics=["perplexity", "size"], progress=False, device="cpu", out=tmp_path / "out")
    pruned = result.model
    assert isinstance(pruned.model.layers[0].mlp.up_proj, LowBitLinear)
    assert not isinstance(pruned.lm_head, LowBitLinear)  # tied to the embedding: left alone
    assert math.isfinite(result.report.value("Pruned", "perplexity"))
    assert result.report.value("Pruned", "size") < result.report.value("Original", "size")
    again = sconce.load(tmp_path / "out", model=_llama())
    assert isinstance(again.model.layers[1].self_attn.v_proj, LowBitLinear)
    with torch.no_grad():
        torch.testing.assert_close(again(ids[:2]).logits, pruned(ids[:2]).logits)


def test_tiny_bert_end_to_end_keeps_embeddings_close() -> None:
    model = _bert()
    ids = _ids(96, count=16, length=16)
    mask = torch.ones_like(ids)
    mask[:, 12:] = 0

    class Sentences(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ids)

        def __getitem__(self, index: int):
            return ((ids[index], mask[index]),)

    loader = DataLoader(Sentences(), batch_size=8)
    data = sconce.Data(train=loader, test=loader, calibration=loader)
    results = {}
    for technique in ("prune.sparsegpt", "prune.wanda", "prune.obc"):
        result = sconce.compress(model, data, recipe=[(technique, {"sparsity": 0.5})],
                                 finetune_epochs=0, metrics=["embedding_cosine", "sparsity"],
                                 progress=False, device="cpu")
        notes = result.report.stages[1].notes["pruned layers"]
        assert notes.startswith("12 layers")  # 6 Linear per block, not the pooler
        results[technique] = result.report.value("Pruned", "embedding_cosine")
        assert result.report.value("Original", "embedding_cosine") == pytest.approx(1.0)
    assert all(0.0 < value < 1.0 for value in results.values()), results
