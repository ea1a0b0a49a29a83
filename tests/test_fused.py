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
