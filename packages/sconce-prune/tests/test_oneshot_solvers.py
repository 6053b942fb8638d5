"""The one-shot solvers on single layers: reconstruction quality, exact OBS, N:M patterns."""

from __future__ import annotations

import itertools

import pytest
import torch

from sconce.errors import ConfigError
from sconce_prune.oneshot import (
    OBCConfig,
    SparseGPTConfig,
    SparseGPTSettings,
    WandaConfig,
    obc_prune,
    sparsegpt_prune,
    wanda_prune,
)
from sconce_prune.oneshot.obc import obc_row_batch
from sconce_prune.oneshot.patterns import lowest


def _layer(rows: int = 24, cols: int = 48, samples: int = 1024, seed: int = 0):
    """A weight and correlated calibration inputs whose features differ in scale."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.eye(cols) + 0.4 * torch.randn(cols, cols, generator=generator)
    scales = torch.exp(torch.randn(cols, generator=generator))
    x = (torch.randn(samples, cols, generator=generator) @ mixing) * scales
    w = torch.randn(rows, cols, generator=generator)
    return w, x, 2 * x.t() @ x / samples


def _error(w: torch.Tensor, pruned: torch.Tensor, x: torch.Tensor) -> float:
    return float(((pruned - w) @ x.t()).square().sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_reconstruction_error_sparsegpt_below_wanda_below_magnitude(seed: int) -> None:
    w, x, h = _layer(seed=seed)
    magnitude = w.masked_fill(lowest(w.abs(), w.numel() // 2), 0.0)
    wanda = wanda_prune(w, (x**2).sum(0), sparsity=0.5)
    sparsegpt = sparsegpt_prune(w, h, SparseGPTSettings(sparsity=0.5)).weight
    for pruned in (magnitude, wanda, sparsegpt):
        assert int((pruned == 0).sum()) == w.numel() // 2
    assert _error(w, sparsegpt, x) < _error(w, wanda, x) < _error(w, magnitude, x)
    # the exact solver is the best of all
    assert _error(w, obc_prune(w, h, sparsity=0.5, damp=1e-4), x) < _error(w, sparsegpt, x)


def _optimal_error(w: torch.Tensor, h: torch.Tensor, pruned: list[int]) -> tuple[float, torch.Tensor]:
    """Brute force: the least ``(w - v) H (w - v)^T`` over rows ``v`` zero at ``pruned``."""
    free = [j for j in range(len(w)) if j not in pruned]
    v = torch.zeros_like(w, dtype=torch.float64)
    wd, hd = w.double(), h.double()
    if free:  # set the gradient over the free weights to zero: H_FF (v_F - w_F) = H_FS w_S
        rhs = hd[free][:, pruned] @ wd[pruned] if pruned else torch.zeros(len(free), dtype=torch.float64)
        v[free] = wd[free] + torch.linalg.solve(hd[free][:, free], rhs)
    d = wd - v
    return float(d @ hd @ d), v


def test_obc_matches_a_brute_force_obs_check() -> None:
    w, _, h = _layer(rows=3, cols=6, samples=64, seed=3)
    damp = 0.01
    damped = h + damp * torch.diagonal(h).mean() * torch.eye(6)
    counts = torch.tensor([1, 2, 4])
    pruned, losses = obc_row_batch(w, torch.linalg.inv(damped), counts)
    for row in range(3):
        chosen: list[int] = []
        for step in range(int(counts[row])):
            # each step removes the weight whose removal, with the best update of the others,
            # costs least: found here by trying every candidate
            costs = {j: _optimal_error(w[row], damped, [*chosen, j])[0]
                     for j in range(6) if j not in chosen}
            best = min(costs, key=costs.get)
            before = _optimal_error(w[row], damped, chosen)[0]
            assert losses[row, step].item() == pytest.approx((costs[best] - before) / 2, rel=1e-3)
            chosen.append(best)
        assert sorted(chosen) == torch.nonzero(pruned[row] == 0).flatten().tolist()
        _, optimal = _optimal_error(w[row], damped, chosen)
        torch.testing.assert_close(pruned[row].double(), optimal, rtol=1e-3, atol=1e-4)
    # pruning one weight per row: greedy is the global optimum over all single weights
    single = min(itertools.combinations(range(6), 1),
                 key=lambda s: _optimal_error(w[0], damped, list(s))[0])
    assert torch.nonzero(pruned[0] == 0).flatten().tolist() == list(single)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
def test_nm_patterns_hold_exactly(n: int, m: int) -> None:
    w, x, h = _layer(rows=8, cols=32, seed=1)
    results = {
        "wanda": wanda_prune(w, (x**2).sum(0), sparsity=0.0, n=n, m=m),
        "sparsegpt": sparsegpt_prune(w, h, SparseGPTSettings(n=n, m=m, block_size=8)).weight,
        "sparsegpt int4": sparsegpt_prune(w, h, SparseGPTSettings(n=n, m=m, bits=4,
                                                                  group_size=16)).weight,
        "obc": obc_prune(w, h, sparsity=0.0, n=n, m=m),
    }
    for name, pruned in results.items():
        zeros = (pruned.reshape(8, 32 // m, m) == 0).sum(-1)
        assert bool((zeros >= m - n).all()), name
        assert int((pruned == 0).sum()) <= 8 * 32 * (m - n) // m + 2, name  # int4 may round to 0


def test_joint_quantization_codes_store_the_pruned_weight_exactly() -> None:
    w, x, h = _layer(rows=8, cols=64, seed=2)
    for bits in (4, 8):
        result = sparsegpt_prune(w, h, SparseGPTSettings(sparsity=0.5, bits=bits, group_size=32))
        assert result.codes is not None and result.codes.bits == bits
        assert torch.equal(result.codes.dequantize(), result.weight)
        assert int((result.weight == 0).sum()) >= w.numel() // 2
    int4 = sparsegpt_prune(w, h, SparseGPTSettings(sparsity=0.5, bits=4, group_size=32)).weight
    int8 = sparsegpt_prune(w, h, SparseGPTSettings(sparsity=0.5, bits=8, group_size=32)).weight
    plain = sparsegpt_prune(w, h, SparseGPTSettings(sparsity=0.5)).weight
    assert _error(w, plain, x) <= _error(w, int8, x) < _error(w, int4, x)


def test_sparsity_is_exact_over_the_layer_for_every_block_size() -> None:
    w, _, h = _layer(rows=7, cols=50, seed=4)
    for block in (1, 16, 128):
        pruned = sparsegpt_prune(w, h, SparseGPTSettings(sparsity=0.3, block_size=block)).weight
        assert int((pruned == 0).sum()) == round(0.3 * 7 * 50)
    assert int((obc_prune(w, h, sparsity=0.3) == 0).sum()) == round(0.3 * 7 * 50)


def test_bad_configs_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0.0, 1.0\), got 1.0"):
        SparseGPTConfig(sparsity=1.0)
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0.0, 1.0\), got -0.1"):
        WandaConfig(sparsity=-0.1)
    with pytest.raises(ConfigError, match="n must be smaller than m"):
        OBCConfig(n=4, m=4)
    with pytest.raises(ConfigError, match="N:M needs both n and m"):
        WandaConfig(m=4)
    with pytest.raises(ConfigError, match="does not match 2:4"):
        SparseGPTConfig(sparsity=0.7, n=2, m=4)
    with pytest.raises(ConfigError, match="bits must be one of 4, 8"):
        SparseGPTConfig(bits=3)
    assert SparseGPTConfig.from_dict(SparseGPTConfig(n=2, m=4).to_dict()).pattern == "2:4"


def _column_by_column(w: torch.Tensor, h: torch.Tensor, sparsity: float, n: int, m: int,
                      block: int) -> torch.Tensor:
    """SparseGPT as the paper writes it: one column at a time, lazy updates per block."""
    from sconce.layerwise import damped_inverse

    w = w.clone()
    rows, cols = w.shape
    upper = damped_inverse(h, 0.01, cholesky=True)
    target, done = round(sparsity * rows * cols), 0
    for start in range(0, cols, block):
        end = min(start + block, cols)
        w1, h1 = w[:, start:end].clone(), upper[start:end, start:end]
        errors = torch.zeros_like(w1)
        diag = torch.diagonal(h1)
        mask = torch.zeros_like(w1, dtype=torch.bool)
        if not m:
            count = round(target * end / cols) - done
            mask = lowest(w1**2 / diag**2, count)
            done += count
        for i in range(end - start):
            if m and i % m == 0:
                scores = w1[:, i:i + m] ** 2 / diag[i:i + m] ** 2
                cut = torch.topk(scores, m - n, dim=1, largest=False).indices
                mask[:, i:i + m].scatter_(1, cut, True)
            error = torch.where(mask[:, i], w1[:, i], 0.0) / h1[i, i]
            w1[:, i:] -= error[:, None] * h1[i, i:][None, :]
            errors[:, i] = error
        w1[mask] = 0.0
        w[:, start:end] = w1
        w[:, end:] -= errors @ upper[start:end, end:]
    return w


@pytest.mark.parametrize(("sparsity", "n", "m", "block"), [(0.5, 0, 0, 16), (0.37, 0, 0, 128),
                                                           (0.5, 2, 4, 16), (0.5, 4, 8, 32)])
def test_batched_triangular_solves_equal_the_column_by_column_algorithm(
        sparsity: float, n: int, m: int, block: int) -> None:
    w, _, h = _layer(rows=20, cols=40 if not m else 32, seed=5)
    ours = sparsegpt_prune(w, h, SparseGPTSettings(sparsity=sparsity, n=n, m=m,
                                                   block_size=block)).weight
    reference = _column_by_column(w, h, sparsity, n, m, block)
    assert torch.equal(ours == 0, reference == 0)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
