"""The fused CPU kernels (neuron_lib.fused) against the torch path of summary.SubsetStats, which the float64
oracles of tests/test_summary.py check: every statistic of several batches must come out the same (counts, ranked
lists and samples exactly; float64 power sums to rounding)."""

from __future__ import annotations

import pytest
import torch

from neuron_lib import fused
from neuron_lib import summary as S

pytestmark = pytest.mark.skipif(
    not fused.available(), reason="numba is a dependency: this runs wherever it is installed"
)


def _batches(L, N, V, B, P, n_batches, ties: bool, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_batches):
        keep = torch.rand(B, P, generator=g) > 0.15
        keep[:, 0] = False  # a dropped BOS
        if i == 1:
            keep[1] = False  # a row with no kept token
        T = int(keep.sum())
        pre = torch.randn(L, T, N, generator=g) * 2 - 0.5
        if ties:
            pre = torch.round(pre * 2) / 2  # many equal values: the tie rules decide
        post = torch.nn.functional.gelu(pre)
        toks = torch.randint(1, V, (T,), generator=g)
        rows = torch.arange(i * B, (i + 1) * B)
        b_idx, p_idx = keep.nonzero(as_tuple=True)
        flat = rows[b_idx] * P + p_idx
        out.append((pre, post, toks, flat, keep, rows))
    return out


def _run(batches, L, N, V, cfg, mean_ids, use_fused: bool, monkeypatch):
    monkeypatch.setenv("NEURON_LIB_FUSED", "1" if use_fused else "0")
    pre0, post0 = batches[0][0], batches[0][1]
    pilot = S._make_pilot(pre0.transpose(1, 2), post0.transpose(1, 2), cfg.quantile_probs)
    st = S.SubsetStats(L, N, V, cfg, pilot, mean_ids, torch.device("cpu"))
    for b in batches:
        st.update(*b)
        assert st._fused is use_fused
    return st.finalize(1)


@pytest.mark.parametrize("ties", [False, True])
def test_fused_equals_torch_path(monkeypatch, ties):
    L, N, V, B, P = 2, 37, 23, 3, 19
    cfg = S.SummaryConfig(model="m", token_dataset="d", top_k=7, vocab_top_k=5, n_random=4, n_per_quantile=3).validate()
    batches = _batches(L, N, V, B, P, 6, ties)
    mean_ids = torch.arange(0, V, 2)  # a partial mean-by-token set: tokens outside it are not summed
    ref = _run(batches, L, N, V, cfg, mean_ids, False, monkeypatch)
    got = _run(batches, L, N, V, cfg, mean_ids, True, monkeypatch)
    for part in ref:
        for key, want in ref[part].items():
            have = got[part][key]
            assert have.dtype == want.dtype and have.shape == want.shape, key
            if want.dtype == torch.float64 and key.endswith(("_sum", "_sum_sq", "_sum_cube", "_sum_quad")):
                torch.testing.assert_close(have, want, rtol=1e-12, atol=1e-9, msg=key)
            else:
                assert torch.equal(torch.nan_to_num(have, nan=7e7), torch.nan_to_num(want, nan=7e7)), key


def test_fused_lists_are_full_and_ranked(monkeypatch):
    """The fused path on its own: a list holds the k best (value, id) pairs, best first (can fail independently of
    the torch path)."""
    L, N, V, B, P = 1, 5, 11, 2, 13
    cfg = S.SummaryConfig(model="m", token_dataset="d", top_k=4, vocab_top_k=3).validate()
    batches = _batches(L, N, V, B, P, 3, ties=True, seed=3)
    out = _run(batches, L, N, V, cfg, torch.arange(V), True, monkeypatch)["top_examples"]
    x = torch.cat([b[1][0] for b in batches])  # post [T, N]
    flat = torch.cat([b[3] for b in batches])
    for n in range(N):
        pairs = sorted(zip((-x[:, n]).tolist(), flat.tolist()))[:4]
        assert out["top_values"][0, n].tolist() == [-v for v, _ in pairs]
        assert out["top_index"][0, n].tolist() == [i for _, i in pairs]


def test_row_moments_hist_against_float64_numpy():
    """weights.cosine_summary's fused sweep: moments against an independent numpy float64 two-pass reference, the
    histogram exactly against numpy.searchsorted (the paper's rule), values on the edges and a constant row too."""
    import numpy as np

    from neuron_lib import stats

    g = torch.Generator().manual_seed(3)
    x = torch.rand(7, 301, generator=g, dtype=torch.float64) * 2 - 1
    edges = stats.cosine_edges()
    x[0, :5] = edges[[0, 1, 50, 98, 99]]  # exactly on edges: bin i holds edges[i-1] < v <= edges[i]
    x[1] = 0.25  # constant row: zero variance -> NaN skew and kurtosis, as stats.row_moments
    x[2, :3] = torch.tensor([-1.5, 1.5, 1.0], dtype=torch.float64)  # outside the range: the end bins
    mean, var, skew, kurt, hist = fused.row_moments_hist(x, edges)
    xn, en = x.numpy(), edges.numpy()
    d = xn - xn.mean(1, keepdims=True)
    v = (d**2).mean(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        want = {"mean": xn.mean(1), "var": v, "skew": (d**3).mean(1) / v**1.5, "kurt": (d**4).mean(1) / v**2}
    for name, have in (("mean", mean), ("var", var), ("skew", skew), ("kurt", kurt)):
        np.testing.assert_allclose(have.numpy(), want[name], rtol=1e-10, atol=1e-14, err_msg=name)
    want_hist = np.stack([np.bincount(np.searchsorted(en, r, side="left"), minlength=len(en) + 1) for r in xn])
    np.testing.assert_array_equal(hist.numpy(), want_hist)
    assert hist.sum(1).tolist() == [301] * 7


def test_cosine_summary_fused_equals_torch_path(monkeypatch):
    from neuron_lib.weights import cosine_summary

    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(11, 9, generator=g), torch.randn(40, 9, generator=g)
    monkeypatch.setenv("NEURON_LIB_FUSED", "0")
    ref = cosine_summary(q, k, 5, chunk_size=4)
    monkeypatch.setenv("NEURON_LIB_FUSED", "1")
    got = cosine_summary(q, k, 5, chunk_size=4)
    for key, want in ref.items():
        if want.dtype == torch.float64:
            torch.testing.assert_close(got[key], want, rtol=1e-12, atol=1e-14)
        else:
            assert torch.equal(got[key], want), key


@pytest.mark.parametrize("with_base", [False, True])
def test_token_metrics_against_float64_torch_path(with_base):
    """The interventions' fused per-token metrics against stats.token_metrics / token_kl on the same logits in
    float64: loss, entropy and KL to float32 rounding, ranks exactly (ties with the true logit not counted)."""
    from neuron_lib import stats

    g = torch.Generator().manual_seed(5)
    B, P, V = 3, 7, 501
    logits = (torch.randn(B, P, V, generator=g) * 3).float()
    logits[0, 2, :10] = logits[0, 2, 10]  # ties around a true logit
    tokens = torch.randint(0, V, (B, P), generator=g)
    tokens[0, 3] = 10
    base = (logits + torch.randn(B, P, V, generator=g)).float() if with_base else None
    got = fused.token_metrics(logits, tokens, base)
    want = stats.token_metrics(logits.double(), tokens)
    for k in ("loss", "entropy"):
        torch.testing.assert_close(got[k].double(), want[k], rtol=1e-6, atol=1e-6)
    assert torch.equal(got["rank"], want["rank"])
    assert got["loss"][:, -1].eq(0).all() and got["rank"][:, -1].eq(0).all()  # no next token at the last position
    if with_base:
        torch.testing.assert_close(
            got["kl"].double(), stats.token_kl(base.double(), logits.double()), rtol=1e-5, atol=1e-6
        )
        same = fused.token_metrics(base, tokens, base)["kl"]
        assert same.abs().max() < 1e-6  # KL of a distribution with itself
    else:
        assert "kl" not in got
