"""Prediction and suppression neurons against vocabulary features (paper §5.1; Fig 5, 23, 24, 1e).

A neuron's *vocabulary effect* is the direct effect of its output weight on every token's logit,
``effect[v] = w_out · W_U[:, v]`` (processed weights: W_U centred across the vocabulary, so a constant shift of
all logits is gone). A prediction neuron raises a small set of tokens, a suppression neuron lowers them; which set
is a question for the vocabulary features (``vocab_features``, spec §7.2).

The paper picked its neurons and features by hand (``PRED_NEURONS``, 144 tuples for GPT-2 medium). Here they come
by rule: for each neuron, the boolean vocabulary feature whose split best explains its effect vector — the
variance reduction of eq. 4 over the vocabulary (``stats.variance_reduction``, one formula with ``explain``) —
and the neurons drawn are the prediction / suppression neurons (``criteria.vocab_kind``) with the highest such VR.

Every figure function returns a :class:`~neuron_lib.figures.FigureResult` with the data it drew.

- :func:`vocab_effects` [K, V] for a list of neurons, from ``weights.extract_weights``;
- :func:`feature_variance_reduction` [K, F]; :func:`best_vocab_features` (one row per neuron, best and runner-up);
- :func:`vocab_effect_histograms` — Fig 5 (three pairs), Fig 1e (one suppression neuron), Fig 23 (a grid);
- :func:`next_token_activations` + :func:`prediction_duplicates` — Fig 24: features that several neurons predict,
  their effect split by feature tokens (left) and their pre-activation split by whether the *next* token has the
  feature (right).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from neuron_lib import stats
from neuron_lib.figures import PREDICTION_COLOR, SUPPRESSION_COLOR, FigureResult, _grid, new_figure

Neuron = tuple[int, int]


def feature_columns(vocab_df: pd.DataFrame) -> list[str]:
    """The boolean feature columns of a vocabulary table (``vocab_features.FEATURE_COLUMNS`` present in it)."""
    from neuron_lib.vocab_features import FEATURE_COLUMNS

    return [c for c in FEATURE_COLUMNS if c in vocab_df.columns]


def vocab_effects(weights, neurons: Sequence[Neuron]) -> Float[np.ndarray, "k vocab"]:
    """``w_out · W_U[:, v]`` for each (layer, neuron) of ``neurons`` (float64, ``weights.ModelWeights``)."""
    if not len(neurons):
        return np.zeros((0, weights.d_vocab))
    w_out = torch.stack([weights.W_out[layer, n] for layer, n in neurons]).to(torch.float64)
    return (w_out @ weights.W_U.to(torch.float64)).numpy()


def feature_variance_reduction(
    effects: Float[np.ndarray, "k vocab"], features: np.ndarray
) -> Float[np.ndarray, "k n_features"]:
    """Eq. 4 over the vocabulary: the share of the variance of each effect vector explained by splitting the tokens
    on each boolean feature (``features`` [vocab, F]); population variances, 0 for an all-True / all-False column."""
    e = torch.as_tensor(effects, dtype=torch.float64)
    x = torch.as_tensor(np.asarray(features, dtype=np.float64))
    e = e - e.mean(1, keepdim=True)  # the shift keeps the sums of squares from cancelling
    n = torch.tensor(float(e.shape[1]))
    n1 = x.sum(0)[:, None]  # [F, 1]
    vr = stats.variance_reduction(n, e.sum(1), (e * e).sum(1), n1, x.T @ e.T, x.T @ (e * e).T)  # [F, K]
    return vr.T.numpy()


def best_vocab_features(
    effects: Float[np.ndarray, "k vocab"], vocab_df: pd.DataFrame, neurons: Sequence[Neuron], min_tokens: int = 5
) -> pd.DataFrame:
    """Per neuron: the vocabulary feature with the highest VR of its effect (and the runner-up), the mean effect
    on the feature's tokens and on the others. Features with fewer than ``min_tokens`` tokens (or all but fewer
    than that) are not considered: a one-token feature explains a single outlier, not a class."""
    cols = feature_columns(vocab_df)
    X = vocab_df[cols].astype(bool).to_numpy()
    size = X.sum(0)
    keep = (size >= min_tokens) & (len(X) - size >= min_tokens)
    cols, X = [c for c, k in zip(cols, keep) if k], X[:, keep]
    vr = feature_variance_reduction(effects, X)
    rows = []
    for i, (layer, n) in enumerate(neurons):
        order = np.argsort(-vr[i])
        best, second = order[0], order[1] if len(order) > 1 else order[0]
        mask = X[:, best]
        rows.append(
            {
                "layer": int(layer),
                "neuron": int(n),
                "feature": cols[best],
                "vr": float(vr[i, best]),
                "runner_up": cols[second],
                "runner_up_vr": float(vr[i, second]),
                "n_feature_tokens": int(mask.sum()),
                "mean_effect_feature": float(effects[i, mask].mean()),
                "mean_effect_other": float(effects[i, ~mask].mean()),
            }
        )
    return pd.DataFrame(rows)


def pick_prediction_pairs(
    best: pd.DataFrame, kinds: pd.Series, k: int, kind: str | None = None, distinct_features: bool = True
) -> pd.DataFrame:
    """The ``k`` (neuron, feature) pairs with the highest VR among neurons of ``kind`` ('prediction' /
    'suppression' / None = every row), at most one neuron per feature when ``distinct_features``. ``kinds``: one
    label per row of ``best`` (``criteria.vocab_kind``)."""
    sub = best.assign(kind=np.asarray(kinds))
    if kind is not None:
        sub = sub[sub["kind"] == kind]
    sub = sub.sort_values("vr", ascending=False)
    if distinct_features:
        sub = sub.drop_duplicates("feature")
    return sub.head(k).reset_index(drop=True)


def vocab_effect_histograms(
    effects: dict[Neuron, np.ndarray],
    vocab_df: pd.DataFrame,
    pairs: pd.DataFrame,
    bins: int = 100,
    log: bool = True,
    ncols: int = 3,
    title: str = "Vocabulary effect split by the best feature",
) -> FigureResult:
    """Fig 5 / 1e / 23: per (neuron, feature) of ``pairs`` (columns layer, neuron, feature[, kind]), the histogram of
    ``w_out · W_U[:, v]`` over tokens, tokens with the feature (coloured) stacked on the others (grey).

    ``data``: one row per (pair, bin, class) with ``count``; ``class`` is 'feature' or 'other'."""
    if not len(pairs):
        return FigureResult(None, None, "no (neuron, feature) pair to draw")
    nrows, ncols = _grid(len(pairs), ncols)
    fig, axes = new_figure(nrows, ncols, figsize=(3.4 * ncols, 2.6 * nrows + 0.4))
    parts = []
    for i, row in enumerate(pairs.itertuples()):
        ax = axes.flat[i]
        e = effects[(row.layer, row.neuron)]
        mask = vocab_df[row.feature].astype(bool).to_numpy()
        edges = np.histogram_bin_edges(e, bins=bins)
        color = SUPPRESSION_COLOR if getattr(row, "kind", "prediction") == "suppression" else PREDICTION_COLOR
        counts = {}
        for cls, m in (("other", ~mask), ("feature", mask)):
            counts[cls] = np.histogram(e[m], bins=edges)[0]
            parts.append(
                pd.DataFrame(
                    {
                        "layer": row.layer,
                        "neuron": row.neuron,
                        "feature": row.feature,
                        "class": cls,
                        "bin_left": edges[:-1],
                        "bin_right": edges[1:],
                        "count": counts[cls],
                    }
                )
            )
        width = np.diff(edges)
        ax.bar(edges[:-1], counts["other"], width, align="edge", color="lightgray", label="other tokens", lw=0)
        ax.bar(edges[:-1], counts["feature"], width, bottom=counts["other"], align="edge", color=color,
               label=row.feature, lw=0)  # fmt: skip
        if log:
            ax.set_yscale("log")
        ax.set_title(f"L{row.layer}.N{row.neuron}: {row.feature}", fontsize=9)
        ax.legend(frameon=False, fontsize=7)
    for ax in axes.flat[len(pairs) :]:
        ax.set_visible(False)
    fig.supxlabel("w_out · W_U[:, v] (direct effect on the token's logit)")
    fig.supylabel("tokens")
    fig.suptitle(title, fontsize=10)
    return FigureResult(fig, pd.concat(parts, ignore_index=True), None)


@torch.no_grad()
def next_token_activations(
    model, tokens: torch.Tensor, neurons: Sequence[Neuron], drop_ids: Sequence[int] = ()
) -> pd.DataFrame:
    """Pre-activations (``blocks.{l}.mlp.hook_pre``) of ``neurons`` at every position that has a next token in its
    row, with that next token's id: columns ``next_token`` and one ``L{l}.N{n}`` per neuron. Positions whose own
    or next token is in ``drop_ids`` (BOS / EOS / pad) are left out."""
    layers = sorted({layer for layer, _ in neurons})
    names = [f"blocks.{layer}.mlp.hook_pre" for layer in layers]
    _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=names, stop_at_layer=max(layers) + 1)
    keep = torch.ones(tokens.shape[0], tokens.shape[1] - 1, dtype=torch.bool)
    for t in drop_ids:
        keep &= (tokens[:, :-1] != t) & (tokens[:, 1:] != t)
    out = {"next_token": tokens[:, 1:][keep].numpy()}
    for layer, n in neurons:
        out[f"L{layer}.N{n}"] = cache[f"blocks.{layer}.mlp.hook_pre"][:, :-1, n][keep].float().cpu().numpy()
    return pd.DataFrame(out)


def prediction_duplicates(
    effects: dict[Neuron, np.ndarray],
    vocab_df: pd.DataFrame,
    groups: dict[str, list[Neuron]],
    next_acts: pd.DataFrame | None = None,
) -> FigureResult:
    """Fig 24: for each feature predicted by several neurons (``groups``: feature → neurons), left the neurons'
    vocabulary effect on feature tokens vs the others (box plots), right their pre-activation at positions whose
    next token has the feature vs not (from :func:`next_token_activations`; omitted when ``next_acts`` is None).

    ``data``: one row per (feature, neuron, side, class) with n, mean, median, q05, q95."""
    groups = {f: ns for f, ns in groups.items() if ns}
    if not groups:
        return FigureResult(None, None, "no feature is the best feature of a prediction / suppression neuron")
    ncols = 2 if next_acts is not None else 1
    fig, axes = new_figure(len(groups), ncols, figsize=(5.5 * ncols, 2.4 * len(groups) + 0.4))
    rows = []

    def summarise(values, feature, neuron, side, cls):
        v = np.asarray(values, float)
        q = np.quantile(v, [0.05, 0.5, 0.95]) if len(v) else [np.nan] * 3
        rows.append({"feature": feature, "layer": neuron[0], "neuron": neuron[1], "side": side, "class": cls,
                     "n": len(v), "mean": float(v.mean()) if len(v) else np.nan, "q05": q[0], "median": q[1],
                     "q95": q[2]})  # fmt: skip

    def boxes(ax, values, split, classes, feature, neurons, side, ylabel, title):
        """Two boxes per neuron (``split`` True / False of ``values[neuron]``), summarised into ``rows``."""
        data, labels, colors = [], [], []
        for nrn in neurons:
            v = values(nrn)
            for cls, m, c in ((classes[0], split, PREDICTION_COLOR), (classes[1], ~split, "lightgray")):
                data.append(v[m])
                labels.append(f"L{nrn[0]}.N{nrn[1]}\n{cls}")
                colors.append(c)
                summarise(v[m], feature, nrn, side, cls)
        bp = ax.boxplot(data, showfliers=False, patch_artist=True)
        for patch, c in zip(bp["boxes"], colors):
            patch.set_facecolor(c)
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=6)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(title, fontsize=9)

    for r, (feature, neurons) in enumerate(groups.items()):
        mask = vocab_df[feature].astype(bool).to_numpy()
        boxes(axes[r, 0], lambda nrn: effects[nrn], mask, ("feature", "other"), feature, neurons, "vocab_effect",
              "w_out · W_U", f"{feature}: {len(neurons)} neurons, vocabulary effect")  # fmt: skip
        if next_acts is not None:
            has = mask[next_acts["next_token"].to_numpy()]
            boxes(axes[r, 1], lambda nrn: next_acts[f"L{nrn[0]}.N{nrn[1]}"].to_numpy(), has,
                  ("next has", "next lacks"), feature, neurons, "pre_activation", "pre-activation",
                  f"{feature}: activation by the next token ({int(has.sum())} positions with it)")  # fmt: skip
    fig.suptitle("Features predicted by several neurons", fontsize=10)
    return FigureResult(fig, pd.DataFrame(rows), None)


def duplicate_groups(
    pairs: pd.DataFrame, min_neurons: int = 2, max_features: int = 5, max_neurons: int = 6
) -> dict[str, list[Neuron]]:
    """Features that are the best feature of at least ``min_neurons`` neurons of ``pairs`` (the largest groups
    first, at most ``max_features``): the zoo's version of the paper's Fig 24 selection. Each group keeps its
    ``max_neurons`` neurons of highest variance reduction (``vr``; the paper shows a handful per feature: on a
    30-layer model a feature can be the best of hundreds of neurons, one box each would be unreadable)."""
    sizes = pairs.groupby("feature").size().sort_values(ascending=False)
    chosen = sizes[sizes >= min_neurons].head(max_features).index
    groups = {}
    for f in chosen:
        rows = pairs[pairs["feature"] == f]
        rows = rows.sort_values("vr", ascending=False, kind="stable") if "vr" in rows else rows
        groups[f] = [(int(r.layer), int(r.neuron)) for r in rows.head(max_neurons).itertuples()]
    return groups
