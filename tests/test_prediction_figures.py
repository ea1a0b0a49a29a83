"""prediction_figures: vocabulary effects against vocabulary features (Fig 5, 23, 24, 1e), on planted data and a
tiny model; figures are tested on the data they return."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import make_tiny_model
from neuron_lib import prediction_figures as PF
from neuron_lib.vocab_features import FEATURE_COLUMNS


def vocab_table(V: int, rng) -> pd.DataFrame:
    """A vocabulary table with four real feature names: two random, one 'year' class of 20 tokens, one tiny class."""
    df = pd.DataFrame({"token_id": np.arange(V)})
    df["all_caps"] = rng.random(V) < 0.3
    df["starts_w_space"] = rng.random(V) < 0.5
    df["is_year"] = np.isin(np.arange(V), np.arange(40, 60))
    df["contains_open_paren"] = np.isin(np.arange(V), [3, 7])  # 2 tokens: below min_tokens
    assert set(PF.feature_columns(df)) == {"all_caps", "starts_w_space", "is_year", "contains_open_paren"}
    return df


def test_feature_variance_reduction_against_float64_between_class_share():
    rng = np.random.default_rng(0)
    V, K = 300, 4
    effects = rng.normal(size=(K, V)) + 5.0  # an offset: the formula must be shift invariant
    X = rng.random((V, 3)) < np.array([0.1, 0.5, 0.9])
    vr = PF.feature_variance_reduction(effects, X)
    for k in range(K):
        e = effects[k]
        for f in range(3):
            m = X[:, f]
            within = (m.mean() * e[m].var() + (1 - m.mean()) * e[~m].var()) / e.var()
            assert vr[k, f] == pytest.approx(1 - within, abs=1e-10)
    assert PF.feature_variance_reduction(effects, np.ones((V, 1), bool)).max() == 0  # all-True column: 0, not NaN


def test_best_vocab_features_finds_the_planted_class():
    rng = np.random.default_rng(1)
    V = 400
    df = vocab_table(V, rng)
    effects = 0.1 * rng.normal(size=(3, V))
    effects[0, df["is_year"]] += 1.0  # predicts years
    effects[1, df["is_year"]] -= 1.0  # suppresses years
    effects[2, df["contains_open_paren"]] += 5.0  # two tokens: excluded by min_tokens, so not the best feature
    neurons = [(1, 5), (1, 9), (0, 2)]
    best = PF.best_vocab_features(effects, df, neurons, min_tokens=5)
    assert best["feature"].tolist()[:2] == ["is_year", "is_year"]
    assert best["vr"][0] == pytest.approx(0.0475 / 0.0575, abs=0.04)  # between-class share: p(1-p) / (p(1-p) + 0.01)
    assert best["mean_effect_feature"][0] > best["mean_effect_other"][0]
    assert best["mean_effect_feature"][1] < best["mean_effect_other"][1]
    assert best["feature"][2] != "contains_open_paren" and best["n_feature_tokens"][0] == 20
    kinds = pd.Series(["prediction", "suppression", "other"])
    assert PF.pick_prediction_pairs(best, kinds, 5, "suppression")[["layer", "neuron"]].values.tolist() == [[1, 9]]
    assert len(PF.pick_prediction_pairs(best, kinds, 5)) == 2  # one per feature: the two year neurons collapse
    assert len(PF.pick_prediction_pairs(best, kinds, 5, distinct_features=False)) == 3
    assert PF.duplicate_groups(best[:2]) == {"is_year": [(1, 5), (1, 9)]}
    many = pd.DataFrame({"feature": ["f"] * 9 + ["g"] * 2, "layer": [2] * 11, "neuron": range(11),
                         "vr": [0.1, 0.9, 0.3, 0.8, 0.2, 0.7, 0.4, 0.6, 0.5, 0.1, 0.2]})  # fmt: skip
    assert PF.duplicate_groups(many, max_neurons=3) == {"f": [(2, 1), (2, 3), (2, 5)], "g": [(2, 10), (2, 9)]}

    res = PF.vocab_effect_histograms(dict(zip(neurons, effects)), df, best[:2], bins=30)
    for _, g in res.data.groupby(["layer", "neuron"]):
        assert g["count"].sum() == V
        assert g.loc[g["class"] == "feature", "count"].sum() == 20
    res = PF.prediction_duplicates(dict(zip(neurons, effects)), df, {"is_year": neurons[:2]})
    left = res.data.set_index(["neuron", "class"])
    assert left.loc[(5, "feature"), "n"] == 20 and left.loc[(5, "feature"), "mean"] > left.loc[(5, "other"), "mean"]


def test_vocab_effects_and_next_token_activations_on_a_tiny_model(tmp_path):
    from neuron_lib.models import load_model
    from neuron_lib.weights import extract_weights

    model = load_model(str(make_tiny_model(tmp_path / "tiny-pred")), process_weights=True)
    w = extract_weights(model, processed=True)
    neurons = [(0, 3), (1, 17)]
    eff = PF.vocab_effects(w, neurons)
    ref = np.stack([w.W_out[layer, n].numpy() @ w.W_U.numpy() for layer, n in neurons])
    np.testing.assert_allclose(eff, ref, rtol=1e-10, atol=1e-12)

    tokens = torch.randint(0, model.cfg.d_vocab, (3, 12), generator=torch.Generator().manual_seed(0))
    tokens[1, 5] = 7  # a token to drop: positions 4 (next = 7) and 5 (own = 7) of row 1 go
    acts = PF.next_token_activations(model, tokens, neurons, drop_ids=[7])
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("mlp.hook_pre"))
    keep = (tokens[:, :-1] != 7) & (tokens[:, 1:] != 7)
    assert len(acts) == int(keep.sum())
    np.testing.assert_array_equal(acts["next_token"], tokens[:, 1:][keep].numpy())
    for layer, n in neurons:
        np.testing.assert_allclose(
            acts[f"L{layer}.N{n}"], cache[f"blocks.{layer}.mlp.hook_pre"][:, :-1, n][keep].numpy(), rtol=1e-5
        )
    assert "is_year" in FEATURE_COLUMNS
