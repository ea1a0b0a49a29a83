"""neuron_lib.stats against independent float64 references (numpy, scipy) on small inputs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from neuron_lib import stats as St
from neuron_lib.common import NeuronLibError

RNG = np.random.default_rng(0)


def _probe_values(edges: np.ndarray, dtype) -> np.ndarray:
    e = edges.astype(dtype)
    return np.concatenate(
        [
            e,
            np.nextafter(e, dtype(np.inf)),
            np.nextafter(e, dtype(-np.inf)),
            RNG.normal(0, 8, 5000).astype(dtype),
            np.array([-np.inf, np.inf, -1e30, 1e30, 0.0, -0.0], dtype=dtype),
        ]
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("edges_fn", [St.pre_bin_edges, St.post_bin_edges, St.cosine_edges])
def test_bin_index_is_left_searchsorted(dtype, edges_fn):
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    edges = edges_fn().to(dtype).numpy()
    vals = _probe_values(edges, np_dtype)
    got = St.bin_index(torch.from_numpy(vals), torch.from_numpy(edges)).numpy()
    np.testing.assert_array_equal(got, np.searchsorted(edges, vals, side="left"))
    # NaN goes to the last bin; non-uniform edges take the binary search
    assert St.bin_index(torch.tensor([float("nan")], dtype=dtype), torch.from_numpy(edges)).item() == len(edges)
    uneven = torch.tensor([0.0, 1.0, 5.0, 6.0], dtype=dtype)
    v = torch.tensor([-1.0, 0.0, 2.0, 5.0, 5.5, 9.0, float("nan")], dtype=dtype)
    assert St.bin_index(v, uneven).tolist() == [0, 0, 2, 2, 3, 4, 4]


def test_histogram_counts_rows_columns_and_exclusion():
    edges = St.cosine_edges()
    x = torch.from_numpy(RNG.uniform(-1.2, 1.2, (7, 300)))
    exclude = torch.from_numpy(RNG.random((7, 300)) < 0.2)
    ref = np.stack(
        [
            np.bincount(np.searchsorted(edges.numpy(), r[~m], side="left"), minlength=101)
            for r, m in zip(x.numpy(), exclude.numpy())
        ]
    )
    np.testing.assert_array_equal(St.histogram_counts(x, edges, exclude=exclude).numpy(), ref)
    full = np.stack([np.bincount(np.searchsorted(edges.numpy(), r, side="left"), minlength=101) for r in x.numpy()])
    np.testing.assert_array_equal(St.histogram_counts(x, edges).numpy(), full)
    np.testing.assert_array_equal(St.histogram_counts(x.T.contiguous(), edges, dim=0).numpy(), full)


def test_binned_moments_and_sparsity_match_bin_centres():
    edges = St.pre_bin_edges()
    e = edges.numpy().astype(np.float64)
    counts = torch.from_numpy(RNG.integers(0, 50, (3, 4, 257)))
    step = e[1] - e[0]
    centres = np.concatenate([[e[0] - step / 2], (e[:-1] + e[1:]) / 2, [e[-1] + step / 2]])
    f = counts.numpy().astype(np.float64)
    mu = (f * centres).sum(-1) / f.sum(-1)
    d = centres - mu[..., None]
    var = (f * d**2).sum(-1) / f.sum(-1)
    got = St.binned_moments(counts, edges)
    np.testing.assert_allclose(got["mean"].numpy(), mu, rtol=1e-12)
    np.testing.assert_allclose(got["var"].numpy(), var, rtol=1e-12)
    np.testing.assert_allclose(got["skew"].numpy(), (f * d**3).sum(-1) / f.sum(-1) / var**1.5, rtol=1e-10)
    np.testing.assert_allclose(got["kurt"].numpy(), (f * d**4).sum(-1) / f.sum(-1) / var**2, rtol=1e-10)
    # the paper's sparsity: share of counts from the first edge >= 0 on (edge 102 of linspace(-10, 15, 256))
    assert St.first_nonnegative_edge(edges) == 102 == St.first_nonnegative_edge(edges.double())
    np.testing.assert_allclose(St.binned_sparsity(counts, edges).numpy(), f[..., 102:].sum(-1) / f.sum(-1))
    with pytest.raises(NeuronLibError, match="bins"):
        St.binned_moments(counts[..., :-1], edges)


@pytest.mark.parametrize("offset", [0.0, 1000.0, 1e4])  # the shift avoids cancellation
def test_power_sum_moments_shift_and_pool(offset):
    x = RNG.gamma(2.0, 1.5, (2, 3, 400)) + offset
    shift = x[..., :10].mean(-1)
    d = x - shift[..., None]
    sums = {k: torch.from_numpy((d**k).sum(-1)) for k in range(5)}
    got = St.moments_from_power_sums(sums, torch.from_numpy(shift))
    c = x - x.mean(-1, keepdims=True)
    var = (c**2).mean(-1)
    np.testing.assert_allclose(got["mean"].numpy(), x.mean(-1), rtol=1e-12)
    np.testing.assert_allclose(got["var"].numpy(), var, rtol=1e-7)
    np.testing.assert_allclose(got["skew"].numpy(), scipy.stats.skew(x, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(got["kurt"].numpy(), scipy.stats.kurtosis(x, axis=-1, fisher=False), rtol=1e-5)
    # re-centring is exact algebra; pooling two parts equals the moments of the concatenation
    moved = St.shift_power_sums(sums, torch.from_numpy(shift), torch.zeros_like(torch.from_numpy(shift)) + offset)
    np.testing.assert_allclose(moved[2].numpy(), ((x - offset) ** 2).sum(-1), rtol=1e-9)
    a, b = x[..., :150], x[..., 150:]
    parts = []
    for part in (a, b):
        s = part[..., 0]
        parts.append(
            ({k: torch.from_numpy(((part - s[..., None]) ** k).sum(-1)) for k in range(5)}, torch.from_numpy(s))
        )
    pooled, pooled_shift = St.pool_power_sums(parts)
    np.testing.assert_allclose(pooled_shift.numpy(), x.mean(-1), rtol=1e-12)
    np.testing.assert_allclose(St.moments_from_power_sums(pooled, pooled_shift)["var"].numpy(), var, rtol=1e-9)


def test_power_sum_moments_degenerate_inputs():
    const = {
        0: torch.tensor([4.0]),
        1: torch.tensor([0.0]),
        2: torch.tensor([-1e-18]),
        3: torch.tensor([0.0]),
        4: torch.tensor([0.0]),
    }
    got = St.moments_from_power_sums(const, 2.5)
    assert got["var"].item() == 0.0 and got["mean"].item() == 2.5 and torch.isnan(got["skew"]).all()
    assert St.activation_frequency(torch.tensor([3]), torch.tensor([4])).item() == 0.75


def test_row_moments_with_exclusion():
    x = torch.from_numpy(RNG.normal(0, 1, (5, 60)))
    ex = torch.from_numpy(RNG.random((5, 60)) < 0.3)
    mean, var, skew, kurt = St.row_moments(x, ex)
    for i in range(5):
        v = x[i].numpy()[~ex[i].numpy()]
        assert mean[i].item() == pytest.approx(v.mean(), rel=1e-12)
        assert var[i].item() == pytest.approx(v.var(), rel=1e-12)
        assert skew[i].item() == pytest.approx(scipy.stats.skew(v), rel=1e-9)
        assert kurt[i].item() == pytest.approx(scipy.stats.kurtosis(v, fisher=False), rel=1e-9)


def test_percentiles_match_scipy_rank_kind():
    pop = np.array([1.0, 2.0, 2.0, 3.0, np.nan, 5.0])
    scores = [2.0, 0.0, 5.0, 2.5, np.nan]
    got = St.percentile_of_score(pop, scores)
    clean = pop[~np.isnan(pop)]
    expect = [scipy.stats.percentileofscore(clean, s, kind="rank") for s in scores[:4]]
    np.testing.assert_allclose(got[:4], expect)
    assert np.isnan(got[4])
    import pandas as pd

    df = pd.DataFrame({"layer": [0, 0, 0, 1, 1], "kurt": [3.0, 1.0, 2.0, 10.0, 20.0]})
    pct = St.within_layer_percentiles(df, ["kurt", "missing"])
    assert list(pct.columns) == ["kurt"]
    np.testing.assert_allclose(pct["kurt"].to_numpy(), [100.0, 100 / 3, 200 / 3, 50.0, 100.0])  # ranks / n
