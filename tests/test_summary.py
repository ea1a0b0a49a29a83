"""Activation summaries (neuron_lib.summary) against an independent float64 reference.

The reference runs the tiny model through plain HF ``GPT2LMHeadModel`` in float64 with forward hooks on
``transformer.h[l].mlp.act`` (input = pre-activation, output = post-activation), rounds to float32 (what the
summary sees) and computes every statistic in numpy float64. The summary loads the same weights in float64
(``--dtype float64``), so both see bit-identical float32 activations and counts can be compared exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers import BOS, CTX, VOCAB, build_tiny_model, make_rows, reference_activations, save_dataset  # noqa: E402
from neuron_lib import stats as St  # noqa: E402
from neuron_lib import summary as S  # noqa: E402
from neuron_lib.common import ManifestMismatch, NeuronLibError, load_tensors, read_json, run_cli  # noqa: E402
from neuron_lib.corpus import tokenizer_fingerprint  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("summary")
    model_dir = build_tiny_model(root / "tinygpt")
    fp = tokenizer_fingerprint(AutoTokenizer.from_pretrained(model_dir))
    rows = make_rows(10)
    subsets = ["a", "a", "b", "a", "b", "b", "a", "a", "b", "a"]
    ds_path = save_dataset(root / "data" / "tiny.16", rows, subsets, fp)
    pre, post = reference_activations(model_dir, rows)
    return dict(root=root, model_dir=model_dir, fp=fp, rows=rows, subsets=subsets, ds=ds_path, pre=pre, post=post)


@pytest.fixture
def summary_root(env, tmp_path, monkeypatch):
    monkeypatch.setenv("SUMMARY_DIR", str(tmp_path / "summary_data"))
    return tmp_path / "summary_data"


def config(env, **kw) -> S.SummaryConfig:
    base = dict(
        model=str(env["model_dir"]),
        token_dataset=str(env["ds"]),
        batch_size=2,
        top_k=5,
        vocab_top_k=7,
        n_random=6,
        n_per_quantile=3,
        quantile_probs=(0.5, 0.9),
        dtype="float64",
        device="cpu",
    )
    base.update(kw)
    return S.SummaryConfig(**base)


def subset_ref(env, subset: str, keep_bos: bool = False, among=None):
    """Reference activations of one subset (of the rows ``among``, default all): values [L, N, T] float32, flat
    index, token ids, rows, positions."""
    idx = [i for i, s in enumerate(env["subsets"]) if s == subset and (among is None or i in among)]
    toks = env["rows"][idx]
    keep = np.ones_like(toks, dtype=bool) if keep_bos else toks != BOS
    r, p = np.nonzero(keep)
    rows = np.array(idx)[r]
    flat = rows * CTX + p
    pre = env["pre"][:, rows, p, :].transpose(0, 2, 1)
    post = env["post"][:, rows, p, :].transpose(0, 2, 1)
    return dict(pre=pre, post=post, flat=flat, tokens=toks[keep], rows=rows, pos=p, row_ids=np.array(idx))


def ref_topk(values: np.ndarray, ids: np.ndarray, k: int):
    """Per neuron: highest value first, ties → lowest id; padded with (-inf, -1)."""
    order = np.lexsort((ids, -values.astype(np.float64)))[:k]
    v = np.full(k, -np.inf, dtype=np.float32)
    i = np.full(k, -1, dtype=np.int64)
    v[: len(order)] = values[order]
    i[: len(order)] = ids[order]
    return v, i


def test_histogram_rule_edges_and_outside():
    edges = St.pre_bin_edges()
    e = edges.numpy()
    vals = np.array(
        [
            e[0],
            e[0] - 1e-3,
            -100.0,
            e[255],
            e[255] + 1e-3,
            1e6,
            e[102],
            e[102] + 1e-6,
            e[101],
            np.float32(0.0),
            np.nextafter(e[50], np.float32(-np.inf)),
            np.nextafter(e[50], np.float32(np.inf)),
        ],
        dtype=np.float32,
    )
    counts = St.histogram_counts(torch.tensor(vals).view(1, -1), edges)[0].numpy()
    expected = np.zeros(257, dtype=np.int64)
    for v in vals:  # independent rule: bin i holds edges[i-1] < v <= edges[i]
        i = 0
        while i < 256 and not v <= e[i]:
            i += 1
        expected[i] += 1
    assert counts.dtype == np.int64 and counts.shape == (257,)
    np.testing.assert_array_equal(counts, expected)
    assert counts[0] == 3 and counts[256] == 2  # ≤ edges[0] (incl. the edge itself), > edges[255]
    assert edges.dtype == torch.float32 and len(edges) == 256


def test_topk_helper_ties_and_padding():
    vals = torch.tensor([[1.0, 3.0, 3.0, -0.0, 0.0, 3.0]])
    ids = torch.tensor([[9, 7, 2, 5, 4, 8]])
    v, i, _ = S.topk_lowest_id(vals, ids, 4)
    assert v.tolist() == [[3.0, 3.0, 3.0, 1.0]] and i.tolist() == [[2, 7, 8, 9]]
    v, i, _ = S.topk_lowest_id(vals, ids, 8)
    assert i[0, 4:6].tolist() == [4, 5]  # −0 and +0 tie → lowest id
    assert i[0, 6:].tolist() == [-1, -1] and torch.isinf(v[0, 6:]).all()
    neg = torch.tensor([[-5.0, -1.0, float("-inf"), -3.0]])
    v, i, _ = S.topk_lowest_id(neg, torch.tensor([[0, 1, 2, 3]]), 4)
    assert v.tolist() == [[-1.0, -3.0, -5.0, float("-inf")]] and i.tolist() == [[1, 3, 0, -1]]


def check_subset(
    env, folder: Path, subset: str, cfg: S.SummaryConfig, keep_bos: bool = False, among=None, expect_ties=True
):
    ref = subset_ref(env, subset, keep_bos, among)
    files = {f: load_tensors(folder / f"{f}.safetensors") for f in ("histogram", "moments", "top_examples", "vocab")}
    man = read_json(folder / "manifest.json")
    assert (
        man["n_tokens"] == ref["post"].shape[-1]
        and man["subset"] == subset
        and man["tokenizer_fingerprint"] == env["fp"]
    )
    assert man["vocab_mean_min_count"] == int(files["vocab"]["vocab_mean_min_count"])
    check_stats(ref, files, cfg, VOCAB, expect_ties=expect_ties)
    # the paper's convention: the all-positions histogram counts every position, BOS/EOS included
    every = subset_ref(env, subset, keep_bos=True, among=among)["pre"]
    idx = np.searchsorted(St.pre_bin_edges().numpy(), every, side="left")
    expect = np.apply_along_axis(lambda b: np.bincount(b, minlength=257), -1, idx)
    got = files["histogram"]["pre_bin_counts_all_positions"]
    np.testing.assert_array_equal(got.numpy(), expect)
    assert got.sum(-1).eq(every.shape[-1]).all()
    assert torch.equal(got, files["histogram"]["pre_bin_counts"]) == keep_bos  # differs exactly when BOS is dropped
    return man


def check_stats(ref, files, cfg, V, inner_bins: bool = True, expect_ties: bool = True):
    """Every statistic in ``files`` against numpy float64 computations on the reference activations."""
    L, N, T = ref["post"].shape
    hist, mom, top, voc = (files[f] for f in ("histogram", "moments", "top_examples", "vocab"))

    # histograms: numpy float32 searchsorted (left) on float32 edges
    for which, edges_fn in (("pre", St.pre_bin_edges), ("post", St.post_bin_edges)):
        edges = edges_fn().numpy()
        np.testing.assert_array_equal(hist[f"{which}_bin_edges"].numpy(), edges)
        idx = np.searchsorted(edges, ref[which], side="left")
        expect = np.zeros((L, N, 257), dtype=np.int64)
        for l in range(L):
            for n in range(N):
                expect[l, n] = np.bincount(idx[l, n], minlength=257)
        counts = hist[f"{which}_bin_counts"]
        assert counts.dtype == torch.int64
        np.testing.assert_array_equal(counts.numpy(), expect)
        if inner_bins:
            assert expect[..., 1:-1].sum() > 0.5 * expect.sum()  # the data exercises the inner bins

        # exact moments and activation frequency
        x = ref[which].astype(np.float64)
        got = S.moments_from_file(mom, which)
        c = x - x.mean(-1, keepdims=True)
        var = (c**2).mean(-1)
        np.testing.assert_allclose(got["mean"].numpy(), x.mean(-1), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got["var"].numpy(), var, rtol=1e-8)
        np.testing.assert_allclose(got["skew"].numpy(), (c**3).mean(-1) / var**1.5, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(got["kurt"].numpy(), (c**4).mean(-1) / var**2, rtol=1e-6)
        np.testing.assert_array_equal(mom[f"{which}_n_positive"].numpy(), (ref[which] > 0).sum(-1))
        np.testing.assert_allclose(got["act_freq"].numpy(), (ref[which] > 0).mean(-1))
        assert (mom[f"{which}_count"] == T).all()

        # binned moments (paper §5) from the histogram vs an independent bin-centre computation
        step = float(edges[1]) - float(edges[0])
        centres = np.concatenate(
            [[edges[0] - step / 2], (edges[:-1].astype(np.float64) + edges[1:]) / 2, [edges[-1] + step / 2]]
        )
        f = expect.astype(np.float64)
        mu = (f * centres).sum(-1) / f.sum(-1)
        bvar = (f * (centres - mu[..., None]) ** 2).sum(-1) / f.sum(-1)
        bkurt = (f * (centres - mu[..., None]) ** 4).sum(-1) / f.sum(-1) / bvar**2
        bm = St.binned_moments(counts, hist[f"{which}_bin_edges"])
        np.testing.assert_allclose(bm["mean"].numpy(), mu, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(bm["var"].numpy(), bvar, rtol=1e-6)
        np.testing.assert_allclose(bm["kurt"].numpy(), bkurt, rtol=1e-6)

    post = ref["post"]
    k = cfg.top_k
    n_ties = 0
    for l in range(L):
        for n in range(N):
            v, i = ref_topk(post[l, n], ref["flat"], k)
            np.testing.assert_array_equal(top["top_values"][l, n].numpy(), v)
            np.testing.assert_array_equal(top["top_index"][l, n].numpy(), i)
            n_ties += int(np.sum(v[1:] == v[:-1]))
            # text level: max over each row's kept positions, first position of the max, rows ranked
            rmax, rpos = [], []
            for r in ref["row_ids"]:
                m = ref["rows"] == r
                if not m.any():
                    rmax.append(-np.inf), rpos.append(-1)
                    continue
                vals = post[l, n][m]
                j = int(np.argmax(vals))
                rmax.append(vals[j]), rpos.append(int(ref["pos"][m][j]))
            tv, tr = ref_topk(np.array(rmax, dtype=np.float32), ref["row_ids"], k)
            np.testing.assert_array_equal(top["text_top_values"][l, n].numpy(), tv)
            np.testing.assert_array_equal(top["text_top_rows"][l, n].numpy(), tr)
            pos_of = dict(zip(ref["row_ids"].tolist(), rpos))
            np.testing.assert_array_equal(top["text_top_pos"][l, n].numpy(), [pos_of.get(r, -1) for r in tr.tolist()])
    assert n_ties > 0 or not expect_ties, "the data should produce tied top values"

    # random samples: distinct kept positions, values of those positions, the R smallest seeded priorities
    R = min(cfg.n_random, T)
    ri = top["random_index"].numpy()
    assert len(ri) == cfg.n_random and (ri[R:] == -1).all() and torch.isnan(top["random_values"][..., R:]).all()
    ri = ri[:R]
    assert len(set(ri.tolist())) == R and set(ri.tolist()) <= set(ref["flat"].tolist())
    prio = S.token_priority(torch.tensor(ref["flat"]), cfg.seed).numpy()
    expect_ri = ref["flat"][np.lexsort((ref["flat"], prio))[:R]]
    np.testing.assert_array_equal(ri, expect_ri)
    where = {f: j for j, f in enumerate(ref["flat"].tolist())}
    np.testing.assert_array_equal(top["random_values"][..., :R].numpy(), post[:, :, [where[f] for f in ri]])

    # quantile samples: bins from boundaries, exact bin counts, samples inside their bins
    bnd = top["quantile_boundaries"].numpy()
    bins = (post[:, :, :, None] > bnd[:, :, None, :]).sum(-1)
    Q1 = bnd.shape[-1] + 1
    np.testing.assert_array_equal(
        top["quantile_bin_counts"].numpy(), np.stack([(bins == j).sum(-1) for j in range(Q1)], -1)
    )
    qi, qv = top["quantile_index"].numpy(), top["quantile_values"].numpy()
    for l in range(L):
        for n in range(N):
            for j in range(Q1):
                members = ref["flat"][bins[l, n] == j]
                order = members[np.lexsort((members, prio[bins[l, n] == j]))][: cfg.n_per_quantile]
                got = qi[l, n, j]
                np.testing.assert_array_equal(got[: len(order)], order)
                assert (got[len(order) :] == -1).all()
                np.testing.assert_array_equal(qv[l, n, j, : len(order)], post[l, n, [where[f] for f in order]])

    # vocabulary statistics
    counts = np.bincount(ref["tokens"], minlength=V)
    np.testing.assert_array_equal(voc["vocab_counts"].numpy(), counts)
    min_count = int(voc["vocab_mean_min_count"])
    kv = cfg.vocab_top_k
    for l in range(L):
        for n in range(N):
            x = post[l, n].astype(np.float64)
            sums = np.bincount(ref["tokens"], weights=x, minlength=V)
            maxes = np.full(V, -np.inf)
            np.maximum.at(maxes, ref["tokens"], x)
            ids = np.nonzero(counts >= min_count)[0]
            mv, mi = ref_topk((sums[ids] / counts[ids]).astype(np.float32), ids, kv)
            np.testing.assert_array_equal(voc["vocab_mean_top_ix"][l, n].numpy(), mi)
            np.testing.assert_allclose(voc["vocab_mean_top_values"][l, n].numpy(), mv, rtol=1e-6)
            seen = np.nonzero(counts > 0)[0]
            xv, xi = ref_topk(maxes[seen].astype(np.float32), seen, kv)
            np.testing.assert_array_equal(voc["vocab_max_top_ix"][l, n].numpy(), xi)
            np.testing.assert_array_equal(voc["vocab_max_top_values"][l, n].numpy(), xv)


@pytest.mark.parametrize("dense_fraction", [0.0, 0.125, 2.0])  # always dense / default / always sparse merges
def test_stream_with_many_ties(dense_fraction, monkeypatch):
    """Synthetic activations on a coarse grid (ties everywhere: tokens, rows, within rows, per-token max/mean),
    fed batch by batch, against the numpy reference."""
    monkeypatch.setattr(S.SubsetStats, "DENSE_FRACTION", dense_fraction)
    monkeypatch.setattr(S.SubsetStats, "QUANTILE_DENSE_FACTOR", dense_fraction * 32)
    rng = np.random.default_rng(3)
    L, N, n_rows, ctx, V = 2, 5, 9, 6, 12
    tokens = rng.integers(0, V, size=(n_rows, ctx))
    tokens[:, 0] = 0
    pre = (rng.integers(-8, 9, size=(L, n_rows, ctx, N)) / 2).astype(np.float32)
    post = np.maximum(pre, np.float32(-0.5)) * np.float32(0.25)  # coarse → many ties
    post[:, 3] = post[:, 1]  # identical rows in different batches
    keep = tokens != 0
    cfg = S.SummaryConfig(
        model="m",
        token_dataset="d",
        top_k=4,
        vocab_top_k=5,
        n_random=7,
        n_per_quantile=2,
        quantile_probs=(0.3, 0.8),
        min_token_count=2,
    ).validate()
    stats = None
    for a in range(0, n_rows, 2):
        b = min(a + 2, n_rows)
        k = torch.tensor(keep[a:b])
        r, p = np.nonzero(keep[a:b])
        pre_b = torch.tensor(pre[:, a:b][:, r, p])  # [L, T, N]
        post_b = torch.tensor(post[:, a:b][:, r, p])
        if stats is None:
            pilot = S._make_pilot(pre_b.transpose(1, 2), post_b.transpose(1, 2), cfg.quantile_probs)
            counts = torch.bincount(torch.tensor(tokens[keep]), minlength=V)
            ids, thr = S.choose_mean_tokens(counts, cfg.min_token_count, 10**9, L * N * 8)
            stats = S.SubsetStats(L, N, V, cfg, pilot, ids, torch.device("cpu"))
        flat = torch.tensor((a + r) * ctx + p)
        stats.update(pre_b, post_b, torch.tensor(tokens[a:b][r, p]), flat, k, torch.arange(a, b))
    files = stats.finalize(thr)
    r, p = np.nonzero(keep)
    ref = dict(
        pre=pre[:, r, p].transpose(0, 2, 1),
        post=post[:, r, p].transpose(0, 2, 1),
        flat=r * ctx + p,
        tokens=tokens[r, p],
        rows=r,
        pos=p,
        row_ids=np.arange(n_rows),
    )
    check_stats(ref, files, cfg, V, inner_bins=False)
    assert thr == 2 and int(files["vocab"]["vocab_mean_min_count"]) == 2


def test_summary_matches_reference(env, summary_root):
    cfg = config(env)
    out = S.run_summary(cfg)
    assert out.status == "done" and sorted(out.outputs) == ["a", "b"] and out.n_tokens > 0
    root = summary_root / "tinygpt" / "activations"
    assert sorted(p.name for p in root.iterdir()) == ["a", "b"]  # no 'all' folder
    for subset in ("a", "b"):
        man = check_subset(env, root / subset, subset, cfg)
        assert man["token_filter"]["dropped_ids"] == [BOS] and man["model"] == "tinygpt"
        assert man["vocab_mean_min_count"] == 1
    # both subsets share one shift (the run's first batch), so their power sums add directly
    a, b = (load_tensors(root / s / "moments.safetensors") for s in ("a", "b"))
    assert torch.equal(a["pre_shift"], b["pre_shift"])
    parts = [
        (
            {0: t["pre_count"], 1: t["pre_sum"], 2: t["pre_sum_sq"], 3: t["pre_sum_cube"], 4: t["pre_sum_quad"]},
            t["pre_shift"],
        )
        for t in (a, b)
    ]
    pooled = St.moments_from_power_sums(*St.pool_power_sums(parts))
    allx = np.concatenate([subset_ref(env, s)["pre"] for s in ("a", "b")], -1).astype(np.float64)
    np.testing.assert_allclose(pooled["var"].numpy(), allx.var(-1), rtol=1e-8)
    # the summary's loader and context recovery
    loaded = S.load_summary(str(env["model_dir"]), "a")
    flat = int(loaded["top_examples"]["top_index"][1, 3, 0])
    from neuron_lib.corpus import load_token_dataset

    ds, _ = load_token_dataset(env["ds"])
    toks, at = S.context_tokens(ds, flat, before=3, after=2)
    assert toks[at] == env["rows"][flat // CTX, flat % CTX]


def test_token_cap_takes_spread_rows(env, summary_root):
    """--rows spread: a token cap takes rows evenly spaced over the dataset (0, 4, 9 of 10: subsets a, b, a),
    not the first ones (0, 1, 2); every statistic is computed on exactly those rows."""
    cfg = config(env, max_tokens=3 * CTX, rows="spread")
    out = S.run_summary(cfg)
    assert out.status == "done" and sorted(out.outputs) == ["a", "b"]
    root = summary_root / "tinygpt" / "activations"
    for subset, rows in (("a", [0, 9]), ("b", [4])):
        man = check_subset(env, root / subset, subset, cfg, among=rows, expect_ties=False)  # 1-2 rows: few ties
        assert man["row_ids"] == rows and man["row_sampling"] == "spread" and man["n_rows"] == len(rows)
    # the first rows are another configuration; without a cap both take every row (one identity)
    with pytest.raises(ManifestMismatch):
        S.run_summary(config(env, max_tokens=3 * CTX, rows="first"))
    assert config(env).identity() == config(env, rows="spread").identity()
    assert "rows" not in config(env, max_tokens=CTX).identity()  # summaries from before --rows keep their key
    with pytest.raises(NeuronLibError, match="--rows takes"):
        config(env, rows="middle").validate()


def test_rows_fewer_than_k_keep_bos_and_batch_size_invariance(env, summary_root):
    # more examples / random samples / vocab entries asked for than there are tokens: padded, not invented
    cfg = config(env, top_k=200, subsets="b", keep_bos=True, batch_size=3, vocab_top_k=400, n_random=100)
    S.run_summary(cfg)
    folder = summary_root / "tinygpt" / "activations" / "b"
    check_subset(env, folder, "b", cfg, keep_bos=True)
    top = load_tensors(folder / "top_examples.safetensors")
    T = subset_ref(env, "b", keep_bos=True)["post"].shape[-1]
    assert T < 200 and (top["top_index"][..., T:] == -1).all() and torch.isinf(top["top_values"][..., T:]).all()
    assert (top["top_index"][..., :T] >= 0).all()
    assert read_json(folder / "manifest.json")["token_filter"]["dropped_ids"] == []


def test_vocab_mean_threshold_under_memory_budget(env, summary_root):
    L, N = 2, 64
    cfg = config(env, subsets="a")
    fixed = sum(S.accumulator_bytes(L, N, cfg).values())
    cfg = config(env, subsets="a", max_memory=str(fixed + 12 * L * N * 8))  # room for 12 tokens' sums
    S.run_summary(cfg)
    folder = summary_root / "tinygpt" / "activations" / "a"
    man = check_subset(env, folder, "a", cfg)
    voc = load_tensors(folder / "vocab.safetensors")
    assert man["vocab_mean_min_count"] > 1 and len(voc["vocab_mean_token_ids"]) <= 12
    counts = voc["vocab_counts"]
    assert set(voc["vocab_mean_token_ids"].tolist()) == set(
        torch.nonzero(counts >= man["vocab_mean_min_count"]).flatten().tolist()
    )


def test_rerun_skip_refuse_overwrite(env, summary_root, capsys):
    cfg = config(env, subsets="a")
    assert S.run_summary(cfg).status == "done"
    assert S.run_summary(config(env, subsets="a", batch_size=4)).status == "skipped"  # batch size is not identity
    with pytest.raises(ManifestMismatch, match="another configuration"):
        S.run_summary(config(env, subsets="a", top_k=3))
    out = S.run_summary(config(env, subsets="a", top_k=3, overwrite=True))
    assert out.status == "done"
    assert (
        load_tensors(summary_root / "tinygpt" / "activations" / "a" / "top_examples.safetensors")["top_values"].shape[
            -1
        ]
        == 3
    )
    # the subset selection is not part of a subset's identity: a full run computes only what is missing
    out = S.run_summary(config(env, top_k=3))
    assert out.status == "done" and sorted(out.details["written"]) == ["b"]
    assert S.run_summary(config(env, top_k=3)).status == "skipped"
    assert "summary: plan:" in capsys.readouterr().out


def test_mismatched_tokenizer_refused(env, summary_root, tmp_path):
    bad = save_dataset(tmp_path / "bad.16", env["rows"], env["subsets"], "0123456789abcdef")
    with pytest.raises(ManifestMismatch, match="tokenizer"):
        S.run_summary(config(env, token_dataset=str(bad)))


def test_too_few_tokens_and_cli(env, summary_root, capsys):
    with pytest.raises(NeuronLibError, match="fewer than"):
        S.run_summary(config(env, max_tokens=10_000))
    with pytest.raises(SystemExit) as exc:
        run_cli(
            lambda: S.main(
                [
                    "--model",
                    str(env["model_dir"]),
                    "--token-dataset",
                    str(env["ds"]),
                    "--max-tokens",
                    "10000",
                    "--device",
                    "cpu",
                ]
            )
        )
    assert exc.value.code == 2 and "fewer than" in capsys.readouterr().err
    S.main(
        [
            "--model",
            str(env["model_dir"]),
            "--token-dataset",
            str(env["ds"]),
            "--max-tokens",
            "64",
            "--device",
            "cpu",
            "--quantile-probs",
            "0.5",
            "0.99",
            "--top-k",
            "4",
        ]
    )
    folder = summary_root / "tinygpt" / "activations"
    man = read_json(folder / "a" / "manifest.json")
    assert man["config"]["quantile_probs"] == [0.5, 0.99] and man["n_rows"] == 3  # rows 0, 1, 3 of the first 4
    with pytest.raises(NeuronLibError):
        config(env, quantile_probs=(0.9, 0.5)).validate()


def test_drop_newline_filter(env, summary_root):
    from transformers import AutoTokenizer

    nl = AutoTokenizer.from_pretrained(env["model_dir"]).encode("\n", add_special_tokens=False)
    assert len(nl) == 1
    S.run_summary(config(env, subsets="b", drop_newline=True))
    folder = summary_root / "tinygpt" / "activations" / "b"
    man = read_json(folder / "manifest.json")
    assert man["token_filter"]["dropped_ids"] == sorted({BOS, nl[0]})
    toks = env["rows"][[i for i, s in enumerate(env["subsets"]) if s == "b"]]
    kept = ~np.isin(toks, [BOS, nl[0]])
    assert man["n_tokens"] == int(kept.sum())
    counts = load_tensors(folder / "vocab.safetensors")["vocab_counts"]
    assert int(counts[nl[0]]) == 0 and int(counts[BOS]) == 0
    np.testing.assert_array_equal(counts.numpy(), np.bincount(toks[kept], minlength=VOCAB))


def test_relative_output_root(env, tmp_path, monkeypatch):
    """`make all` uses relative roots (summary_data/): every part lands in the subset folder, not below it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SUMMARY_DIR", "summary_data")
    out = S.run_summary(config(env, subsets="a"))
    folder = Path("summary_data") / "tinygpt" / "activations" / "a"
    assert out.outputs["a"] == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{part}.safetensors" for part in ("histogram", "moments", "top_examples", "vocab")] + ["manifest.json"]
    )
    assert S.run_summary(config(env, subsets="a")).status == "skipped"


def test_finished_outputs_survive_a_moved_checkout(env, tmp_path, monkeypatch):
    """Identities hash the dataset's content, not its absolute path: a moved tree's finished summary is reused."""
    import shutil

    first = tmp_path / "first"
    shutil.copytree(env["ds"], first / "data" / "tiny.16")
    monkeypatch.chdir(first)
    monkeypatch.setenv("SUMMARY_DIR", "summary_data")
    assert S.run_summary(config(env, token_dataset=str(first / "data" / "tiny.16"), subsets="a")).status == "done"
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)
    monkeypatch.chdir(moved)
    again = S.run_summary(config(env, token_dataset=str(moved / "data" / "tiny.16"), subsets="a"))
    assert again.status == "skipped"
