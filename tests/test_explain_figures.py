"""The explanation notebooks' rules and figures on small synthetic tables with planted answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from neuron_lib import explain_figures as EF
from neuron_lib.common import NeuronLibError


def _exp(vr: dict, prev: dict, kinds: dict, families: dict, skipped=()) -> dict:
    """An in-memory explain result: VR tables for neurons 0.0, 0.1, 1.0, 1.1 and their features table."""
    names = ["0.0", "0.1", "1.0", "1.1"]
    ids = {"neuron": names, "layer": [0, 0, 1, 1], "neuron_index": [0, 1, 0, 1]}
    feats = [{"feature": f, "kind": kinds[f], "family": families[f], "skipped": f in skipped} for f in vr]
    feats += [
        {"feature": f"prev_{f}", "kind": f"prev_{kinds[f]}", "family": families[f], "skipped": f"prev_{f}" in skipped}
        for f in prev
    ]
    return {
        "vr": pd.DataFrame({**ids, **vr}),
        "prev_vr": pd.DataFrame({**ids, **prev}),
        "features": pd.DataFrame(feats),
    }


KINDS = {
    "on_unigram": "token",
    "a_unigram": "token",
    "all_caps": "token",
    "is_spacy_noun": "sequence",
    "is_position_0": "sequence",
}
FAMS = {
    "on_unigram": "unigram",
    "a_unigram": "unigram",
    "all_caps": "type",
    "is_spacy_noun": "pos",
    "is_position_0": "position",
}


def test_best_of_restricted_kinds_and_planted_order():
    vr = {
        "on_unigram": [0.9, 0.1, 0.2, 0.05],
        "a_unigram": [0.1, 0.2, 0.3, 0.0],
        "all_caps": [0.0, 0.0, 0.0, 0.0],
        "is_spacy_noun": [0.0, 0.6, 0.1, 0.0],
        "is_position_0": [0.0, 0.0, 0.0, 0.4],
    }
    prev = {k: [0.0, 0.0, 0.0, 0.0] for k in vr}
    prev["all_caps"] = [0.0, 0.0, 0.95, 0.0]  # planted: neuron 1.0 is a previous-token neuron
    exp = _exp(vr, prev, KINDS, FAMS, skipped={"prev_is_position_0"})
    top = EF.best_of(exp, kinds=["prev_token", "prev_sequence"])
    assert top["neuron"].iloc[0] == "1.0" and top["feature"].iloc[0] == "prev_all_caps"
    assert top["vr"].iloc[0] == pytest.approx(0.95) and top["kind"].iloc[0] == "prev_token"
    assert top["vr"].is_monotonic_decreasing
    spacy = EF.best_of(exp, kinds=["sequence"], families=["pos"])
    assert spacy["neuron"].iloc[0] == "0.1" and spacy["feature"].iloc[0] == "is_spacy_noun"
    uni = EF.best_of(exp, families=["unigram"]).set_index("neuron")
    assert uni.loc["0.0", "feature"] == "on_unigram" and uni.loc["1.0", "feature"] == "a_unigram"
    # skipped features are never chosen
    assert "prev_is_position_0" not in set(EF.best_of(exp)["feature"])
    assert EF.best_of(exp, kinds=["nothing"]).empty
    assert "prev_all_caps" in EF.all_vr(exp).columns
    no_caps = EF.best_of(exp, kinds=["prev_token"], exclude_families=["type"])
    assert "prev_all_caps" not in set(no_caps["feature"])


def _best(rows):
    return pd.DataFrame(rows, columns=["neuron", "layer", "neuron_index", "best_feature", "best_kind", "best_vr"])


def test_unigram_families_and_family_names():
    best = _best(
        [
            ("0.0", 0, 0, "on_unigram", "token", 0.9),
            ("0.1", 0, 1, "on_unigram", "token", 0.7),
            ("0.2", 0, 2, "on_unigram", "token", 0.6),
            ("0.3", 0, 3, "on_unigram", "token", 0.4),  # below the threshold: not in the family
            ("1.0", 1, 0, "to_unigram", "token", 0.8),
            ("1.1", 1, 1, "prev_on_unigram", "prev_token", 0.99),  # a previous-token feature is no family member
            ("1.2", 1, 2, "a_unigram", "token", 0.3),
        ]
    )
    fam = EF.unigram_families(best, 0.5)
    assert fam["feature"].tolist() == ["on_unigram", "to_unigram"]
    assert fam["n_neurons"].tolist() == [3, 1]
    assert fam["neurons"].iloc[0] == ["0.0", "0.1", "0.2"]  # best first
    assert EF.unigram_families(best, 0.95).empty
    named = EF.with_families(best, 0.35).set_index("neuron")["family"]
    assert named["0.0"] == "unigram" and named["1.1"] == "previous token" and named["1.2"] == "unexplained"
    assert EF.explanation_family("a_unigram", "token", "unigram") == "alphabet"
    assert EF.explanation_family("is_position_0", "sequence", "position") == "position"
    assert EF.explanation_family("is_subset_wiki", "sequence", "subset") == "topic / subset"
    assert EF.explanation_family("is_spacy_noun", "sequence", "pos") == "syntax"
    # the previous position's bucket is still a position feature; a prev_ spaCy label is a previous-token feature
    assert EF.explanation_family("prev_is_position_4_7", "prev_sequence", "position") == "position"
    assert EF.explanation_family("prev_is_spacy_noun", "prev_sequence", "pos") == "previous token"
    pos = _best([("0.0", 0, 0, "prev_is_position_1", "prev_sequence", 0.9)])
    assert EF.with_families(pos, 0.5)["family"].tolist() == ["position"]


def test_alphabet_neurons_planted_letter():
    vr = pd.DataFrame(
        {
            "neuron": ["0.0", "0.1", "1.0"],
            "a_unigram": [0.1, 0.8, 0.2],
            "b_unigram": [0.3, 0.1, 0.36],
            "on_unigram": [1, 1, 1],
        }
    )
    out = EF.alphabet_neurons(vr, threshold=0.37).set_index("letter")
    assert out.loc["a", "neuron"] == "0.1" and out.loc["a", "vr"] == pytest.approx(0.8) and out.loc["a", "above"]
    assert out.loc["b", "neuron"] == "1.0" and not out.loc["b", "above"]  # 0.36 < 0.37
    assert out.loc["c", "neuron"] == "" and math.isnan(out.loc["c", "vr"]) and not out.loc["c", "above"]
    assert len(out) == 26


def _mi_reference(fire: np.ndarray) -> float:
    """§15's formula written out position by position in float64 (fire: bool [tokens per position, positions])."""
    f = fire.mean()
    d = fire.shape[1]
    total = 0.0
    for p in range(d):
        fp = fire[:, p].mean()
        total += fp * math.log(fp / f + 1e-9) + (1 - fp) * math.log((1 - fp) / (1 - f) + 1e-9)
    return total / d


def test_position_mutual_information_against_hand_computation():
    rng = np.random.default_rng(0)
    rows, P = 400, 16
    rate = np.linspace(0.05, 0.9, P)
    position_neuron = rng.random((rows, P)) < rate  # planted: firing depends on position
    flat_neuron = rng.random((rows, P)) < 0.3
    never = np.zeros((rows, P), dtype=bool)
    fires = np.stack([position_neuron, flat_neuron, never], -1)  # [rows, P, N]
    mi = EF.position_mutual_information(fires.sum(0), np.full(P, rows))
    assert mi[0] == pytest.approx(_mi_reference(position_neuron), abs=1e-12)
    assert mi[1] == pytest.approx(_mi_reference(flat_neuron), abs=1e-12)
    assert mi[2] == 0.0  # never fires: no information, not NaN
    assert mi[0] > 10 * mi[1] > 0
    # a position with a firing rate of exactly 0 contributes (1 - 0) ln(1/(1-f)) and no NaN
    edge = np.zeros((10, 2), dtype=bool)
    edge[:, 1] = True
    assert EF.position_mutual_information(edge.sum(0)[:, None], np.full(2, 10))[0] == pytest.approx(
        0.5 * (math.log(1 / 0.5 + 1e-9) + math.log(1e-9) * 0 + math.log(1 / 0.5 + 1e-9)), rel=1e-9
    )


def test_max_cosine_similarity_blocked_equals_full_matrix():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(37, 8))
    v[5] = 3 * v[20]  # planted duplicate direction
    v[9] = 0.0  # a zero row
    full = (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30)) @ (
        v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30)
    ).T
    np.fill_diagonal(full, -np.inf)
    for block in (1, 7, 64):
        best, arg = EF.max_cosine_similarity(v, block=block)
        np.testing.assert_allclose(best, full.max(1), atol=1e-5)
        assert arg[5] == 20 and arg[20] == 5 and best[5] == pytest.approx(1.0, abs=1e-5)
    assert best[9] == pytest.approx(0.0)


def test_split_classes_exclusive_in_order():
    values = np.arange(6.0).reshape(2, 3)
    keep = np.array([[True, True, True], [True, True, False]])
    a = np.array([[True, False, False], [True, False, True]])
    b = np.array([[True, True, False], [False, False, False]])
    out = EF.split_classes(values, {"a": a, "b": b}, keep)
    assert out["a"].tolist() == [0.0, 3.0]  # position (1, 2) is dropped by keep
    assert out["b"].tolist() == [1.0]  # (0, 0) went to "a" first
    assert out["other"].tolist() == [2.0, 4.0]


def test_class_figures_hold_the_numbers_drawn():
    rng = np.random.default_rng(2)
    on, off = rng.normal(3, 0.5, 500), rng.normal(-1, 0.5, 2000)
    res = EF.class_histograms({"0.1": {"tok": on, "other": off}})
    d = res.data
    assert set(d["class"]) == {"tok", "other"} and res.fig is not None
    for cls, v in (("tok", on), ("other", off)):
        part = d[d["class"] == cls]
        assert part["n"].iloc[0] == len(v) and part["mean"].iloc[0] == pytest.approx(v.mean())
        assert (part["density"] * (part["bin_right"] - part["bin_left"])).sum() == pytest.approx(1.0)
    box = EF.class_boxplots({"0.1": {"tok": on, "other": off}}).data.set_index("class")
    assert box.loc["tok", "q50"] == pytest.approx(np.median(on)) and box.loc["other", "q95"] == pytest.approx(
        np.quantile(off, 0.95)
    )
    assert EF.class_histograms({}).fig is None


def test_position_profiles_mean_and_std():
    pre = np.zeros((3, 4, 1), dtype=np.float32)
    pre[:, :, 0] = [[0, 1, 2, 3], [2, 1, 2, 5], [1, 1, 2, 100]]
    keep = np.ones((3, 4), dtype=bool)
    keep[2, 3] = False  # the 100 is a dropped token
    d = EF.position_profiles(pre, keep, ["0.7"]).data.set_index("position")
    assert d.loc[0, "pre_mean"] == pytest.approx(1.0) and d.loc[0, "pre_std"] == pytest.approx(np.std([0, 2, 1]))
    assert d.loc[3, "pre_mean"] == pytest.approx(4.0) and d.loc[3, "n"] == 2
    assert d.loc[1, "post_mean"] == pytest.approx(EF.gelu_new(np.array(1.0)))


def test_family_counts_shares():
    best = _best(
        [
            ("0.0", 0, 0, "on_unigram", "token", 0.9),
            ("0.1", 0, 1, "is_position_0", "sequence", 0.8),
            ("0.2", 0, 2, "prev_all_caps", "prev_token", 0.6),
            ("0.3", 0, 3, "is_spacy_noun", "sequence", 0.01),
        ]
    )
    d = EF.family_counts(best, np.array([True, True, False, False]), 0.5).data
    u = d[d.group == "universal"].set_index("family")
    o = d[d.group == "other"].set_index("family")
    assert u.loc["unigram", "n"] == 1 and u.loc["position", "share"] == 0.5
    assert o.loc["previous token", "n"] == 1 and o.loc[EF.UNEXPLAINED, "n"] == 1 and o.loc["syntax", "n"] == 0


def test_sparsity_vs_in_out_sim_fit():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 0.5, 300)
    df = pd.DataFrame({"sparsity": x, "in_out_sim": 0.8 - 1.2 * x + rng.normal(0, 0.02, 300)})
    d = EF.sparsity_vs_in_out_sim({"m": df}).data
    assert d["slope"].iloc[0] == pytest.approx(-1.2, abs=0.05) and d["r"].iloc[0] < -0.95
    assert d["count"].sum() == 300


def test_max_weight_similarity_groups():
    sims = {"W_in": np.array([0.9, 0.8, 0.1, 0.2, 0.15])}
    d = EF.max_weight_similarity(sims, np.array([True, True, False, False, False])).data
    assert set(d["group"]) == {"universal", "other"}
    assert d.groupby("group")["n"].first().to_dict() == {"other": 3, "universal": 2}


def test_topic_neurons_choose_by_sign_and_vr():
    vr = pd.DataFrame(
        {"is_subset_wiki": [0.5, 0.4, 0.3], "is_subset_shak": [0.5, 0.4, 0.3]}, index=["0.0", "0.1", "1.0"]
    )
    means = pd.DataFrame({"wiki": [1.0, -1.0, 2.0], "shak": [0.0, 0.0, 0.0]}, index=["0.0", "0.1", "1.0"])
    chosen = EF.topic_neurons(vr, means, per_subset=1)
    assert chosen == [("0.0", "wiki"), ("0.1", "shak")]  # 0.0 fires more in wiki, 0.1 more in shak


def test_topic_heatmap_normalises_by_column():
    t = pd.DataFrame({"neuron": ["a", "a", "b"], "rank": [0, 1, 0], "token": ["x", "y", "z"], "value": [2.0, 1.0, 4.0]})
    d = EF.topic_heatmap(t).data
    assert d["normalised"].tolist() == [1.0, 0.5, 1.0]


def test_missing_explanations_name_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAFRAMES_DIR", str(tmp_path))
    with pytest.raises(NeuronLibError, match=r"python -m neuron_lib.explain --model ghost"):
        EF.find_explanations("ghost")


def test_subset_variance_reduction_from_power_sums(tmp_path):
    """Exact eq. 4 (population variances) of one-vs-rest subset features from per-subset shifted power sums."""
    import torch

    from neuron_lib.common import save_tensors_atomic

    rng = np.random.default_rng(4)
    L, N = 2, 3
    data = {
        "wiki": rng.normal(0, 1, (L, N, 500)),
        "shak": rng.normal(0, 1, (L, N, 300)),
        "code": rng.normal(0, 1, (L, N, 200)),
    }
    data["shak"][1, 2] += 3.0  # planted: neuron 1.2 fires more on shak
    shift = rng.normal(5, 1, (L, N))
    folders = {}
    for sub, x in data.items():
        folder = tmp_path / sub
        folder.mkdir()
        d = x - shift[..., None]
        save_tensors_atomic(
            folder / "moments.safetensors",
            {
                "post_count": torch.full((L, N), x.shape[-1], dtype=torch.int64),
                "post_sum": torch.as_tensor(d.sum(-1)),
                "post_sum_sq": torch.as_tensor((d**2).sum(-1)),
                "post_shift": torch.as_tensor(shift),
            },
        )
        folders[sub] = folder
    vr = EF.subset_variance_reduction(folders)
    allx = np.concatenate([data[s] for s in data], -1)
    for sub in data:
        y = np.concatenate([np.full(data[s].shape[-1], s == sub) for s in data])
        for l in range(L):
            for n in range(N):
                a = allx[l, n]
                beta = y.mean()
                ref = 1 - ((1 - beta) * a[~y].var() + beta * a[y].var()) / a.var()
                assert vr.at[f"{l}.{n}", f"is_subset_{sub}"] == pytest.approx(ref, abs=1e-10)
    assert vr["is_subset_shak"].idxmax() == "1.2" and vr.at["1.2", "is_subset_shak"] > 0.5
