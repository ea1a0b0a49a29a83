"""The classification rules, once: universal, sparse, prediction / suppression neurons, each threshold spelled here.

Tables (correlations_fast, neuron_df) and figures call the same functions, so a figure's "universal"
is the table's "universal" at the same threshold. Later criteria (entropy candidates, the scale-free
universality criterion) join this module.

- **universal** (paper eq. 3): excess_corr = mean_corr − mean_baseline > 0.5, and not dead; with
  ``min_models`` k, also max_corr − baseline > threshold against at least k of the other models (k = 1 is
  implied by the mean and is the paper's criterion).
- **universal (rotation z)**: mean rotation z-score > 3 and z > 3 against at least ``min_models`` models.
  Kept as a column, not a criterion to use: it tests "beats a random direction", which nearly every neuron of a
  privileged (GELU) basis does (docs/universality.md).
- **universal, aligned** (the scale-free criterion, docs/universality.md; chosen from the controls):
  alignment_{m} = max_j ρ(i, m_j) / R_{i,m}, where R_{i,m} is the multiple correlation of neuron i with *all* of
  model m's neurons — the share of what the whole other model linearly explains about i that its single best
  partner captures. ``is_universal_aligned``: mean alignment over the other models > 1/√2 (the best single partner
  explains more of the neuron's explainable variance than the rest of the other model together: ρ² > R²/2), ≥
  ``min_models`` models individually above it, not dead. The threshold is fixed a priori by that reading, not by
  any share.
- **mutual best match** (star): i's best partner in model m has i as its own best partner, in ≥ ``min_models``
  other models (default: all); **clique**: i and its best partners in every other model are all pairwise mutual
  best matches.
- **sparse**: the paper's binned ``sparsity`` (an activation frequency) < 0.02.
- **prediction / suppression** (paper §5.1): vocab_kurt > 10 and vocab_skew > 0 / < 0.
- **prediction / suppression, calibrated**: vocab_kurt above its layer's ``NULL_QUANTILE`` of the vocab kurtosis of
  random directions drawn with that layer's w_out covariance, against the model's own W_U
  (``weights.vocab_kurtosis_null``; the neuron dataframe's ``NULL_QUANTILE_COLUMN``). The paper's fixed 10 was read
  off GPT-2's unembedding; the null says what "heavy-tailed" means for the model at hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

UNIVERSAL_THRESHOLD = 0.5  # paper eq. 3: universal iff excess_corr > 0.5 (strict)
Z_THRESHOLD = 3.0  # rotation z-criterion
SPARSE_THRESHOLD = 0.02  # paper: sparsity < 0.02
ALIGNMENT_THRESHOLD = math.sqrt(0.5)  # aligned iff ρ_best² > R²/2: the best partner explains the majority
ALIGNMENT_RIDGE = 1e-3  # R² uses Σ_m + ridge · mean(diag Σ_m) · I (Σ_m: the other model's neuron covariance)
LOW_COUNT = 100  # neurons active (pre-activation > 0) on fewer tokens than this get the low_count flag
PREDICTION_KURTOSIS = 10.0  # paper §5.1: vocab_kurt > 10 → prediction (skew > 0) / suppression (skew < 0)
NULL_QUANTILE = 0.99  # calibrated: vocab_kurt > the layer's q99 of the random-direction null
NULL_QUANTILE_COLUMN = "vocab_kurt_null_q99"  # the neuron dataframe's column holding that per-layer quantile
CALIBRATED = "calibrated"  # the kurtosis-threshold name that means "the neuron's NULL_QUANTILE_COLUMN"
# The criterion the figures of our own runs use (the all-pairs tables carry it for every model); the paper's
# published tables have no alignment columns and keep "paper". Chosen from the controls, not from any share.
FIGURE_CRITERION = "aligned"


def _array(values) -> np.ndarray:
    return np.asarray(getattr(values, "to_numpy", lambda: values)(), dtype=float)


def excess_correlation(df):
    """``excess_corr`` if present, else mean_corr − mean_baseline (paper eq. 3), as a float Series."""
    if "excess_corr" in df:
        return df["excess_corr"].astype(float)
    if {"mean_corr", "mean_baseline"} <= set(df.columns):
        return (df["mean_corr"] - df["mean_baseline"]).astype(float)
    raise KeyError("the table has neither excess_corr nor mean_corr and mean_baseline")


def universal(
    excess, n_models_above=None, dead=None, threshold: float = UNIVERSAL_THRESHOLD, min_models: int = 1
) -> np.ndarray:
    """The paper's criterion on arrays: excess > threshold (NaN → False), ≥ min_models models above, not dead."""
    with np.errstate(invalid="ignore"):
        out = np.nan_to_num(_array(excess), nan=-np.inf) > threshold
    if n_models_above is not None:
        out &= np.asarray(n_models_above) >= min_models
    if dead is not None:
        out &= ~np.asarray(dead, dtype=bool)
    return out


def n_models_above(max_corr: np.ndarray, baseline: np.ndarray, threshold: float = UNIVERSAL_THRESHOLD) -> np.ndarray:
    """Number of other models whose max_corr − baseline exceeds ``threshold``; arrays [N, models]."""
    return ((np.asarray(max_corr) - np.asarray(baseline)) > threshold).sum(1)


def universal_z(z_mean, n_models_z, dead=None, threshold: float = Z_THRESHOLD, min_models: int = 1) -> np.ndarray:
    """The rotation z-criterion: mean z > threshold and z > threshold against ≥ min_models models, not dead."""
    with np.errstate(invalid="ignore"):
        out = (np.nan_to_num(_array(z_mean), nan=-np.inf) > threshold) & (np.asarray(n_models_z) >= min_models)
    if dead is not None:
        out &= ~np.asarray(dead, dtype=bool)
    return out


#: the universality criteria a table or figure can select by name: (flag column, score column, default threshold)
CRITERIA = {
    "paper": ("is_universal", "excess_corr", UNIVERSAL_THRESHOLD),
    "aligned": ("is_universal_aligned", "alignment_mean", ALIGNMENT_THRESHOLD),
}


def criterion_columns(criterion: str) -> tuple[str, str, float]:
    """(flag column, score column, default threshold) of a named criterion, with an error listing the names."""
    if criterion not in CRITERIA:
        raise KeyError(f"unknown universality criterion {criterion!r}; choose from {sorted(CRITERIA)}")
    return CRITERIA[criterion]


def mutual_star(n_models_mutual, n_others: int, min_models: int | None = None, dead=None) -> np.ndarray:
    """Mutual best match with ≥ ``min_models`` (default: all ``n_others``) other models, not dead."""
    k = n_others if min_models is None else min_models
    out = np.asarray(n_models_mutual) >= k
    if dead is not None:
        out &= ~np.asarray(dead, dtype=bool)
    return out


def low_count(n_active) -> np.ndarray:
    """Neurons active on fewer than LOW_COUNT tokens: their frequency, moments and correlations are noisy."""
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(_array(n_active), nan=0.0) < LOW_COUNT


@dataclass(frozen=True)
class Universality:
    """A named universality criterion at a threshold (None: the criterion's default) — what figures and notebooks
    pass around where they used to pass the excess-correlation threshold; formats as its rule."""

    criterion: str = "paper"
    threshold: float | None = None

    def __post_init__(self):
        criterion_columns(self.criterion)

    @property
    def value(self) -> float:
        return criterion_columns(self.criterion)[2] if self.threshold is None else float(self.threshold)

    @property
    def score(self) -> str:
        return criterion_columns(self.criterion)[1]

    @property
    def excess_threshold(self) -> float:
        """The excess-correlation line drawn on excess plots: this threshold for ``paper``, else the paper's."""
        return self.value if self.criterion == "paper" else UNIVERSAL_THRESHOLD

    def __format__(self, spec: str) -> str:
        return f"{self.score} > {self.value:.3g}"

    __str__ = __repr__ = lambda self: format(self, "")  # noqa: E731


def as_universality(threshold: float | Universality | None) -> Universality:
    """A float is the paper's excess-correlation threshold (the figures' old argument); None the paper's default."""
    if isinstance(threshold, Universality):
        return threshold
    return Universality("paper", None if threshold is None else float(threshold))


def has_universality(df, threshold: float | Universality | None = None) -> bool:
    """Whether a neuron table holds a universality measurement for the criterion of ``threshold`` (a number: the
    paper's): its score (excess correlation; alignment_mean) is known for at least one neuron, or, without the
    score's columns, the table carries the criterion's flag (a published table). A single model's table (no other
    seeds: every score NaN) has none."""
    criterion = as_universality(threshold).criterion
    flag, score, _ = criterion_columns(criterion)
    if criterion == "aligned":
        return bool(df[score].notna().any()) if score in df else flag in df
    try:
        return bool(excess_correlation(df).notna().any())
    except KeyError:
        return "is_universal" in df


def universal_mask(df, threshold: float | Universality | None = None, min_models: int = 1, criterion: str = "paper"):
    """Universal neurons of a neuron table by a named criterion at ``threshold`` (default: the criterion's), a bool
    Series aligned with ``df``.

    ``paper``: excess_corr; uses the table's ``dead`` flag and, when the per-model columns ``max_corr_{m}`` /
    ``baseline_{m}`` are there, requires ``min_models`` models above the threshold; a table without correlation
    columns falls back to its ``is_universal``. ``aligned``: alignment_mean (per-model ``alignment_{m}``), falling
    back to ``is_universal_aligned``.
    """
    import pandas as pd

    if isinstance(threshold, Universality):
        criterion, threshold = threshold.criterion, threshold.threshold
    flag, score, default = criterion_columns(criterion)
    threshold = default if threshold is None else threshold
    if criterion == "aligned":
        if score not in df:
            if flag in df:
                return df[flag].fillna(False).astype(bool)
            raise KeyError("cannot tell aligned-universal neurons apart: no alignment_mean or is_universal_aligned")
        per_model = [
            c
            for c in df.columns
            if c.startswith("alignment_") and c[len("alignment_") :] not in ("mean", "min", "mean_rotated")
        ]
        above = (df[per_model].to_numpy(float) > threshold).sum(1) if per_model and min_models > 1 else None
        dead = df["dead"].fillna(False).astype(bool).to_numpy() if "dead" in df else None
        return pd.Series(universal(df[score], above, dead, threshold, min_models), index=df.index)

    try:
        excess = excess_correlation(df)
    except KeyError:
        if "is_universal" in df:
            return df["is_universal"].fillna(False).astype(bool)
        raise KeyError(
            "cannot tell universal neurons apart: no excess_corr, mean_corr/mean_baseline or is_universal"
        ) from None
    models = [
        c[len("max_corr_") :]
        for c in df.columns
        if c.startswith("max_corr_")
        and not c.startswith(("max_corr_layer_", "max_corr_neuron_"))
        and f"baseline_{c[len('max_corr_') :]}" in df
    ]
    above = None
    if models and min_models > 1:
        above = n_models_above(
            df[[f"max_corr_{m}" for m in models]].to_numpy(float),
            df[[f"baseline_{m}" for m in models]].to_numpy(float),
            threshold,
        )
    dead = df["dead"].fillna(False).astype(bool).to_numpy() if "dead" in df else None
    return pd.Series(universal(excess, above, dead, threshold, min_models), index=df.index)


def sparse(sparsity) -> np.ndarray:
    """The paper's sparse neurons: binned sparsity < 0.02 (NaN → False)."""
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(_array(sparsity), nan=np.inf) < SPARSE_THRESHOLD


def kurtosis_threshold(df, kurt_threshold: float | str | None = None):
    """The vocab-kurtosis threshold of each row of ``df``: a number (default the paper's 10) as it is, or
    ``CALIBRATED`` → the row's ``NULL_QUANTILE_COLUMN`` (its layer's null quantile; the column must exist)."""
    if kurt_threshold is None:
        return PREDICTION_KURTOSIS
    if isinstance(kurt_threshold, str):
        if kurt_threshold != CALIBRATED:
            raise ValueError(f"kurt_threshold: a number or {CALIBRATED!r}, not {kurt_threshold!r}")
        if NULL_QUANTILE_COLUMN not in df:
            raise KeyError(
                f"the table has no {NULL_QUANTILE_COLUMN} column: run `python -m neuron_lib.weights "
                "--vocab-null-samples 1000` and `python -m neuron_lib.neuron_df` (or `make all`), or pass a number"
            )
        return _array(df[NULL_QUANTILE_COLUMN])
    return float(kurt_threshold)


def kurtosis_threshold_label(kurt_threshold: float | str | None = None) -> str:
    """How figures and tables name a kurtosis threshold: "10" or "the layer's null q99"."""
    if kurt_threshold == CALIBRATED:
        return f"the layer's null q{NULL_QUANTILE * 100:g}"
    return f"{PREDICTION_KURTOSIS if kurt_threshold is None else float(kurt_threshold):g}"


def vocab_kind(vocab_kurt, vocab_skew, kurt_threshold=PREDICTION_KURTOSIS) -> np.ndarray:
    """'prediction' (vocab_kurt > t, vocab_skew > 0), 'suppression' (vocab_kurt > t, vocab_skew < 0), else 'other'.

    ``kurt_threshold`` is a number or one threshold per neuron (the calibrated null: ``kurtosis_threshold``)."""
    kurt, skew = _array(vocab_kurt), _array(vocab_skew)
    with np.errstate(invalid="ignore"):
        high = kurt > _array(kurt_threshold)
        return np.where(high & (skew > 0), "prediction", np.where(high & (skew < 0), "suppression", "other"))
