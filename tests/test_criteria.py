"""neuron_lib.criteria on synthetic tables with planted answers (recall and false positives asserted)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neuron_lib import criteria as C


def planted_table(n: int = 400, n_universal: int = 40, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Per-model max correlations and baselines; planted universal neurons match in every one of 4 models."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(n, dtype=bool)
    truth[rng.choice(n, n_universal, replace=False)] = True
    cols = {"layer": np.arange(n) // 100, "neuron": np.arange(n) % 100}
    maxc, base = [], []
    for m in "bcde":
        b = rng.uniform(0.1, 0.3, n)
        c = b + np.where(truth, rng.uniform(0.55, 0.8, n), rng.uniform(0.0, 0.35, n))
        cols[f"max_corr_{m}"], cols[f"baseline_{m}"] = c, b
        maxc.append(c), base.append(b)
    df = pd.DataFrame(cols)
    df["mean_corr"], df["mean_baseline"] = np.mean(maxc, 0), np.mean(base, 0)
    df["excess_corr"] = df["mean_corr"] - df["mean_baseline"]
    return df, truth


def test_universal_recovers_planted_neurons_without_false_positives():
    df, truth = planted_table()
    got = C.universal_mask(df).to_numpy()
    assert got[truth].mean() == 1.0  # recall
    assert got[~truth].mean() == 0.0  # false-positive rate
    # a dead neuron is never universal, even with a high excess; NaN excess is not universal
    df.loc[0, "excess_corr"], df["dead"] = 0.9, False
    df.loc[0, "dead"] = True
    df.loc[1, "excess_corr"] = np.nan
    got = C.universal_mask(df).to_numpy()
    assert not got[0] and not got[1]


def test_min_models_uses_per_model_columns():
    df, truth = planted_table()
    # neuron 5: huge excess against one model only; the mean passes, 2-of-4 does not
    i = 5
    for m in "cde":
        df.loc[i, f"max_corr_{m}"] = df.loc[i, f"baseline_{m}"] + 0.1
    df.loc[i, "max_corr_b"] = df.loc[i, "baseline_b"] + 3.0
    df["excess_corr"] = df[[f"max_corr_{m}" for m in "bcde"]].mean(1) - df[[f"baseline_{m}" for m in "bcde"]].mean(1)
    assert C.universal_mask(df, min_models=1)[i]
    assert not C.universal_mask(df, min_models=2)[i]
    maxc = df[[f"max_corr_{m}" for m in "bcde"]].to_numpy()
    base = df[[f"baseline_{m}" for m in "bcde"]].to_numpy()
    assert C.n_models_above(maxc, base)[i] == 1
    np.testing.assert_array_equal(
        C.universal(df["excess_corr"], C.n_models_above(maxc, base), None, 0.5, 2),
        C.universal_mask(df, min_models=2).to_numpy(),
    )


def test_threshold_is_strict_and_table_fallback():
    tiny = pd.DataFrame({"excess_corr": [0.5, 0.5000001, np.nan, 0.1]})
    assert C.universal_mask(tiny).tolist() == [False, True, False, False]
    only_flag = pd.DataFrame({"is_universal": [True, None, False]})
    assert C.universal_mask(only_flag).tolist() == [True, False, False]
    assert C.universal_mask(tiny, threshold=0.05).tolist() == [True, True, False, True]


def test_z_criterion_sparse_and_vocab_kind():
    z = np.array([5.0, 5.0, 2.0, np.nan])
    n_z = np.array([4, 0, 4, 4])
    assert C.universal_z(z, n_z, dead=[False, False, False, False]).tolist() == [True, False, False, False]
    assert C.sparse([0.01, 0.02, np.nan, 0.5]).tolist() == [True, False, False, False]
    kinds = C.vocab_kind([12, 12, 3, 50, np.nan], [1.0, -1.0, 5.0, 0.0, 1.0])
    assert kinds.tolist() == ["prediction", "suppression", "other", "other", "other"]
    assert C.UNIVERSAL_THRESHOLD == 0.5 and C.FIGURE_CRITERION in C.CRITERIA
    # a threshold per neuron (the calibrated null): each neuron against its own
    df = pd.DataFrame(
        {"vocab_kurt": [5.0, 5.0, 50.0], "vocab_skew": [1.0, -1.0, 1.0], C.NULL_QUANTILE_COLUMN: [4, 6, 60]}
    )
    thr = C.kurtosis_threshold(df, C.CALIBRATED)
    assert C.vocab_kind(df.vocab_kurt, df.vocab_skew, thr).tolist() == ["prediction", "other", "other"]
    assert C.kurtosis_threshold(df) == 10.0 and C.kurtosis_threshold(df, 3) == 3.0
    with pytest.raises(KeyError, match="vocab-null-samples"):
        C.kurtosis_threshold(df.drop(columns=C.NULL_QUANTILE_COLUMN), C.CALIBRATED)
    with pytest.raises(ValueError, match="calibrated"):
        C.kurtosis_threshold(df, "q99")
    assert "q99" in C.kurtosis_threshold_label(C.CALIBRATED) and C.kurtosis_threshold_label(None) == "10"


def test_aligned_criterion_mutual_star_low_count_and_universality_spec():
    df = pd.DataFrame(
        {
            "alignment_mean": [0.71, 0.70, 0.9, np.nan],
            "alignment_b": [0.9, 0.9, 0.6, 0.1],
            "alignment_c": [0.6, 0.5, 0.95, 0.1],
            "dead": [False, False, True, False],
        }
    )
    assert C.ALIGNMENT_THRESHOLD == pytest.approx(0.5**0.5)
    assert C.universal_mask(df, criterion="aligned").tolist() == [True, False, False, False]
    assert C.universal_mask(df, C.Universality("aligned", 0.65)).tolist() == [True, True, False, False]
    assert C.universal_mask(df, C.Universality("aligned", 0.65), min_models=2).tolist() == [False, False, False, False]
    only_flag = pd.DataFrame({"is_universal_aligned": [True, False]})
    assert C.universal_mask(only_flag, criterion="aligned").tolist() == [True, False]
    spec = C.Universality("aligned")
    assert f"{spec}" == "alignment_mean > 0.707" and spec.excess_threshold == C.UNIVERSAL_THRESHOLD
    assert C.as_universality(0.3) == C.Universality("paper", 0.3) and C.as_universality(0.3).excess_threshold == 0.3
    with pytest.raises(KeyError, match="unknown universality criterion"):
        C.Universality("share-matched")
    assert C.mutual_star([4, 3, 4], 4).tolist() == [True, False, True]
    assert C.mutual_star([4, 3, 4], 4, min_models=3, dead=[False, False, True]).tolist() == [True, True, False]
    assert C.low_count([99, 100, np.nan]).tolist() == [True, False, True]


def test_has_universality():
    """A table measures universality when its criterion's score is known for a neuron (or, without the score's
    columns, it carries the flag); a single model's all-NaN scores do not."""
    nan = [np.nan, np.nan]
    assert not C.has_universality(pd.DataFrame({"excess_corr": nan, "is_universal": [False, False]}))
    assert C.has_universality(pd.DataFrame({"excess_corr": [0.1, np.nan]}))
    assert C.has_universality(pd.DataFrame({"mean_corr": [0.5, 0.4], "mean_baseline": [0.1, 0.1]}), 0.3)
    assert C.has_universality(pd.DataFrame({"is_universal": [True, False]}))  # a published table
    assert not C.has_universality(pd.DataFrame({"vocab_kurt": [3.0, 4.0]}))
    aligned = C.Universality("aligned")
    assert not C.has_universality(pd.DataFrame({"alignment_mean": nan}), aligned)
    assert C.has_universality(pd.DataFrame({"alignment_mean": [0.8, np.nan]}), aligned)
    assert C.has_universality(pd.DataFrame({"is_universal_aligned": [True, False]}), aligned)
