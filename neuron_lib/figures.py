"""Figure functions the paper notebooks call. Each returns the figure *and* the data it draws.

Every plotting function returns a :class:`FigureResult`, a ``(fig, data)`` pair (so
``fig, data = f(df)`` works) with a ``note`` attribute. ``fig`` is a bare matplotlib ``Figure``
drawn on the Agg canvas (no pyplot state, nothing to close); ``data`` is a DataFrame holding exactly
the numbers drawn, so tests assert on numbers rather than pixels. When the input cannot support a
figure (e.g. within-layer percentiles from a table that holds only universal neurons), ``fig`` and
``data`` are None and ``note`` says why; when it supports a reduced figure, the figure is drawn and
``note`` says what is missing.

Figure families (paper numbers refer to arXiv v1 of Gurnee et al. 2024):
- universal neurons: :func:`universal_share_by_layer` (§4.1 counts), :func:`correlation_vs_baseline`
  (Fig 2-style per-layer panels), :func:`correlation_densities` (Fig 11 / 2a),
  :func:`universal_property_percentiles` (Fig 3), :func:`properties_by_layer` (Fig 14),
  :func:`universal_property_distributions` (fallback for universal-only tables);
- prediction / suppression neurons (§5.1): :func:`vocab_percentiles_by_layer` (Fig 6a,b),
  :func:`prediction_suppression_by_layer`, :func:`prediction_skew_density` (Fig 6c);
- dataset summary: :func:`neuron_activation_histograms` (pre-activation histograms per subset),
  :func:`top_example_windows`, :func:`highlight_tokens_html`, :func:`top_examples_html`,
  :func:`plot_highlighted_examples`.

:class:`FigureWriter` saves results as PNG + SVG + CSV and keeps ``figures.json`` (captions, data
source) that ``neuron_lib.notebooks`` turns into ``$FIGURES_DIR/index.html``.
"""

from __future__ import annotations

import html
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator

from neuron_lib import artifacts, criteria
from neuron_lib.stats import within_layer_percentiles

PROPERTY_LABELS = {
    "sparsity": "act. frequency",
    "mean": "act. mean",
    "var": "act. variance",
    "skew": "act. skew",
    "kurt": "act. kurtosis",
    "input_bias": "input bias",
    "in_out_sim": "cos(w_in, w_out)",
    "l2_penalty": "L2 penalty",
    "w_in_norm": "|w_in|",
    "w_out_norm": "|w_out|",
    "vocab_mean": "vocab mean",
    "vocab_var": "vocab variance",
    "vocab_skew": "vocab skew",
    "vocab_kurt": "vocab kurtosis",
    "mean_corr": "mean max-correlation",
    "mean_baseline": "mean baseline (rotation)",
    "max_corr": "max max-correlation",
    "min_corr": "min max-correlation",
    "excess_corr": "excess correlation",
}
# Fig 3 metrics (spec §15) plus vocab_skew, which §5.1 and the brief also ask for.
FIG3_METRICS = (
    "sparsity",
    "mean",
    "skew",
    "kurt",
    "input_bias",
    "in_out_sim",
    "l2_penalty",
    "vocab_skew",
    "vocab_kurt",
)
FIG14_METRICS = ("vocab_kurt", "vocab_skew", "in_out_sim", "l2_penalty", "sparsity", "skew", "kurt")
SUMMARY_COLUMNS = (
    "max_corr",
    "mean_corr",
    "min_corr",
    "mean_baseline",
    "excess_corr",
    "w_in_norm",
    "input_bias",
    "w_out_norm",
    "in_out_sim",
    "l2_penalty",
    "mean",
    "var",
    "skew",
    "kurt",
    "vocab_mean",
    "vocab_var",
    "vocab_skew",
    "vocab_kurt",
    "sparsity",
)
UNIVERSAL_COLOR = "tab:blue"
OTHER_COLOR = "tab:gray"
PREDICTION_COLOR = "tab:blue"
SUPPRESSION_COLOR = "tab:red"


def label(column: str) -> str:
    return PROPERTY_LABELS.get(column, column)


# ---------------------------------------------------------------- result type
class FigureResult(tuple):
    """``(fig, data)`` with ``.fig``, ``.data`` and ``.note`` (what the input could not support)."""

    def __new__(cls, fig: Figure | None, data: pd.DataFrame | None, note: str | None = None):
        self = super().__new__(cls, (fig, data))
        self.note = note
        return self

    @property
    def fig(self) -> Figure | None:
        return self[0]

    @property
    def data(self) -> pd.DataFrame | None:
        return self[1]


def new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.0, 4.0), **subplot_kw):
    """A pyplot-free figure on the Agg canvas and a 2-D array of axes."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, axes


def _add_note(fig: Figure, note: str | None) -> None:
    if fig is not None and note:
        fig.supxlabel(note, fontsize=8, color="dimgray", wrap=True)


def _grid(n: int, ncols: int) -> tuple[int, int]:
    ncols = max(1, min(ncols, n))
    return math.ceil(n / ncols), ncols


# ---------------------------------------------------------------- universality helpers
def is_only_universal(
    df: pd.DataFrame, threshold: float | criteria.Universality = criteria.UNIVERSAL_THRESHOLD
) -> bool:
    """True when the table holds universal neurons only (``attrs["only_universal"]`` or no other rows)."""
    if df.attrs.get("only_universal"):
        return True
    return len(df) > 0 and bool(criteria.universal_mask(df, threshold).all())


def _as_model_dict(dfs) -> dict[str, pd.DataFrame]:
    if isinstance(dfs, pd.DataFrame):
        return {str(dfs.attrs.get("model", "model")): dfs}
    return {str(k): v for k, v in dict(dfs).items()}


def _layers(df: pd.DataFrame, n_layers: int | None = None) -> list[int]:
    present = sorted(int(x) for x in df["layer"].dropna().unique())
    top = max(present, default=-1) + 1
    return list(range(max(top, n_layers or 0)))


ONLY_UNIVERSAL_NOTE = (
    "The table holds only universal neurons, so comparisons with the whole population "
    "(shares of a layer, within-layer percentiles, universal vs other) cannot be computed."
)


# ---------------------------------------------------------------- universal neurons (Fig 2-4, 11, 14)
def universal_share_by_layer(
    df: pd.DataFrame,
    threshold: float | criteria.Universality = criteria.UNIVERSAL_THRESHOLD,
    d_mlp: int | None = None,
    n_layers: int | None = None,
) -> FigureResult:
    """Share of each layer's neurons that are universal (excess_corr > threshold, and ``is_universal_z``).

    For a universal-only table the share needs ``d_mlp`` (neurons per layer); without it the
    counts are drawn instead and ``share_universal`` is NaN.
    """
    only = is_only_universal(df, threshold)
    uni = criteria.universal_mask(df, threshold)
    layers = _layers(df, n_layers)
    counts = df.groupby("layer").size().reindex(layers, fill_value=0)
    n_uni = uni.groupby(df["layer"]).sum().reindex(layers, fill_value=0)
    data = pd.DataFrame({"layer": layers, "n_universal": n_uni.to_numpy().astype(int)})
    if only:
        data["n_neurons"] = d_mlp if d_mlp else np.nan
    else:
        data["n_neurons"] = counts.to_numpy().astype(int)
    data["share_universal"] = data["n_universal"] / data["n_neurons"]
    has_z = "is_universal_z" in df and not only
    if has_z:
        n_z = df["is_universal_z"].fillna(False).astype(bool).groupby(df["layer"]).sum().reindex(layers, fill_value=0)
        data["n_universal_z"] = n_z.to_numpy().astype(int)
        data["share_universal_z"] = data["n_universal_z"] / data["n_neurons"]
    note = None
    fig, axes = new_figure(figsize=(max(5.0, 0.45 * len(layers) + 2.5), 3.4))
    ax = axes[0, 0]
    x = np.arange(len(layers))
    if only and not d_mlp:
        note = ONLY_UNIVERSAL_NOTE + " Pass d_mlp to draw shares; counts are drawn instead."
        ax.bar(x, data["n_universal"], color=UNIVERSAL_COLOR)
        ax.set_ylabel("universal neurons (count)")
    else:
        width = 0.4 if has_z else 0.8
        ax.bar(
            x - (width / 2 if has_z else 0),
            100 * data["share_universal"],
            width,
            color=UNIVERSAL_COLOR,
            label=f"{criteria.as_universality(threshold)}",
        )
        if has_z:
            ax.bar(x + width / 2, 100 * data["share_universal_z"], width, color="tab:orange", label="is_universal_z")
            ax.legend(frameon=False, fontsize=8)
        ax.set_ylabel("universal neurons (% of layer)")
        if only:
            note = f"The table holds only universal neurons; shares are counts / d_mlp = {d_mlp}."
    ax.set_xticks(x, layers)
    ax.set_xlabel("layer")
    total = int(data["n_universal"].sum())
    denom = f" of {int(data['n_neurons'].sum()):,}" if data["n_neurons"].notna().all() else ""
    ax.set_title(f"Universal neurons per layer ({total:,}{denom})")
    _add_note(fig, note)
    return FigureResult(fig, data, note)


def correlation_vs_baseline(
    df: pd.DataFrame,
    threshold: float | criteria.Universality = criteria.UNIVERSAL_THRESHOLD,
    kind: str = "auto",
    bins: int = 50,
    ncols: int = 6,
) -> FigureResult:
    """Per layer: mean_baseline (x) against mean_corr (y) on [0,1]², dashed diagonal, line y = x + threshold."""
    cols = ["layer", "neuron", "mean_baseline", "mean_corr"]
    missing = [c for c in cols if c not in df]
    if missing:
        return FigureResult(None, None, f"the table lacks {missing}; cannot draw correlation against baseline")
    data = df[cols].copy()
    data["excess_corr"] = criteria.excess_correlation(df).to_numpy()
    data["is_universal"] = criteria.universal_mask(df, threshold).to_numpy()
    data = data.dropna(subset=["mean_baseline", "mean_corr"]).reset_index(drop=True)
    layers = _layers(data) if len(data) else []
    if not layers:
        return FigureResult(None, data, "no neuron has both a correlation and a baseline")
    if kind == "auto":
        kind = "hist2d" if len(data) > 5000 else "scatter"
    nrows, ncols = _grid(len(layers), ncols)
    # few panels still need room for the two-line title and the shared axis labels
    fig, axes = new_figure(
        nrows, ncols, figsize=(max(2.8 * ncols + 1.2, 7.5), 2.8 * nrows + 1.2), sharex=True, sharey=True
    )
    mappable, norm = None, None
    if kind == "hist2d":  # one colour scale for all panels
        peak = max(
            np.histogram2d(s["mean_baseline"], s["mean_corr"], bins=bins, range=[[0, 1], [0, 1]])[0].max()
            for _, s in data.groupby("layer")
        )
        norm = LogNorm(vmin=1, vmax=max(2.0, peak))
    for i, layer in enumerate(layers):
        ax = axes.flat[i]
        sub = data[data["layer"] == layer]
        if kind == "hist2d" and len(sub):
            *_, mappable = ax.hist2d(
                sub["mean_baseline"],
                sub["mean_corr"],
                bins=bins,
                range=[[0, 1], [0, 1]],
                norm=norm,
                cmap="viridis",
                cmin=1,
                rasterized=True,
            )
        else:
            ax.scatter(
                sub["mean_baseline"],
                sub["mean_corr"],
                s=4,
                alpha=0.5,
                linewidths=0,
                rasterized=True,
                c=np.where(sub["is_universal"], UNIVERSAL_COLOR, OTHER_COLOR),
            )
        ax.plot([0, 1], [0, 1], ls="--", color="black", lw=0.8)
        line = criteria.as_universality(threshold).excess_threshold
        ax.plot([0, 1 - line], [line, 1], ls="-", color="tab:red", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xticks([0, 0.5, 1], ["0", "0.5", "1"])
        ax.set_yticks([0, 0.5, 1], ["0", "0.5", "1"])
        ax.set_aspect("equal")
        ax.set_title(f"layer {layer}: {int(sub['is_universal'].sum())}/{len(sub)} universal", fontsize=9)
    for ax in axes.flat[len(layers) :]:
        ax.set_visible(False)
    fig.supxlabel("mean baseline correlation (rotated activations)")
    fig.supylabel("mean max correlation across models")
    fig.suptitle(
        f"Max correlation vs rotation baseline per layer\n(dashed: y = x; red: y = x + "
        f"{criteria.as_universality(threshold).excess_threshold:g}; colour: {criteria.as_universality(threshold)})",
        fontsize=11,
    )
    if mappable is not None:
        fig.colorbar(mappable, ax=axes, shrink=0.6, label="neurons")
    note = None
    if is_only_universal(df, threshold):
        note = "The table holds only universal neurons: every point lies above the red threshold line."
        fig.text(0.01, 0.0, note, fontsize=8, color="dimgray", va="bottom")
    return FigureResult(fig, data, note)


def partner_models(df: pd.DataFrame) -> list[str]:
    """The other models of a per-pair correlation table: those with ``max_corr_layer_{m}`` columns (correlations_fast
    ``build_universal_table``), in column order."""
    prefix = "max_corr_layer_"
    return [c[len(prefix) :] for c in df.columns if c.startswith(prefix)]


def max_min_correlation(
    dfs, threshold: float | criteria.Universality = criteria.UNIVERSAL_THRESHOLD, bins: int = 50, ncols: int = 5
) -> FigureResult:
    """Fig 2b (one model) / Fig 12 (every seed as the reference): per neuron, the max over the other models of its
    best-partner correlation (``max_corr``) against the min over them (``min_corr``); universal neurons coloured.
    A neuron near the diagonal has an equally good partner in every other model.

    ``data``: model, layer, neuron, max_corr, min_corr, spread (= max − min), is_universal. The note gives the
    mean spread over all and over universal neurons (the paper's family_count statistic: 0.0492 / 0.1053 on
    GPT-2 medium).
    """
    models = _as_model_dict(dfs)
    parts = []
    for name, df in models.items():
        if not {"max_corr", "min_corr"} <= set(df.columns):
            continue
        part = df[["layer", "neuron", "max_corr", "min_corr"]].copy()
        part.insert(0, "model", name)
        part["spread"] = part["max_corr"] - part["min_corr"]
        part["is_universal"] = criteria.universal_mask(df, threshold).to_numpy()
        parts.append(part.dropna(subset=["max_corr", "min_corr"]))
    if not parts:
        return FigureResult(None, None, "no table has max_corr and min_corr")
    data = pd.concat(parts, ignore_index=True)
    names = list(dict.fromkeys(data["model"]))
    nrows, ncols = _grid(len(names), ncols)
    fig, axes = new_figure(nrows, ncols, figsize=(3.2 * ncols + 0.6, 3.2 * nrows + 0.8), sharex=True, sharey=True)
    stats = []
    for i, name in enumerate(names):
        ax, sub = axes.flat[i], data[data["model"] == name]
        uni = sub["is_universal"].to_numpy()
        if len(sub) > 5000:
            ax.hist2d(sub["max_corr"], sub["min_corr"], bins=bins, range=[[0, 1], [0, 1]], cmap="Greys", cmin=1,
                      norm=LogNorm(), rasterized=True)  # fmt: skip
        else:
            ax.scatter(sub.loc[~uni, "max_corr"], sub.loc[~uni, "min_corr"], s=3, color=OTHER_COLOR, alpha=0.4, lw=0)
        ax.scatter(sub.loc[uni, "max_corr"], sub.loc[uni, "min_corr"], s=5, color=UNIVERSAL_COLOR, lw=0,
                   label=f"universal ({int(uni.sum())})")  # fmt: skip
        ax.plot([0, 1], [0, 1], ls="--", color="black", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        mean_all = float(sub["spread"].mean())
        mean_uni = float(sub.loc[uni, "spread"].mean()) if uni.any() else float("nan")
        stats.append(f"{name}: {mean_all:.4f} all, {mean_uni:.4f} universal")
        ax.set_title(f"{name}\nmean(max − min) {mean_all:.3f} (universal {mean_uni:.3f})", fontsize=9)
        ax.legend(frameon=False, fontsize=7, loc="upper left")
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    fig.supxlabel("max over other models of the best-partner correlation")
    fig.supylabel("min over other models")
    fig.suptitle(f"Best-partner correlation: best vs worst other model ({criteria.as_universality(threshold)})",
                 fontsize=10)  # fmt: skip
    return FigureResult(fig, data, "mean(max_corr − min_corr): " + "; ".join(stats))


def depth_specialisation(dfs, ncols: int = 5) -> FigureResult:
    """Fig 2c (one model) / Fig 13 (every seed as the reference): for each layer l of the reference, the share of its
    neurons whose most-correlated neuron in another model lies in layer l', averaged over the other models (from the
    per-pair ``max_corr_layer_{m}`` columns). A heavy diagonal means depth specialisation.

    ``data``: model, layer, partner_layer, share (mean over the other models), share_min, share_max, n_models.
    """
    models = _as_model_dict(dfs)
    parts = []
    for name, df in models.items():
        others = partner_models(df)
        if not others:
            continue
        L = len(_layers(df))
        layer = df["layer"].to_numpy()
        per = []
        for o in others:
            partner = df[f"max_corr_layer_{o}"].to_numpy()
            ok = ~pd.isna(partner)
            counts = np.zeros((L, L))
            np.add.at(counts, (layer[ok].astype(int), partner[ok].astype(int)), 1)
            per.append(counts / np.maximum(counts.sum(1, keepdims=True), 1))
        per = np.stack(per)  # [models, L, L']
        ll, pp = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
        parts.append(pd.DataFrame({
            "model": name, "layer": ll.ravel(), "partner_layer": pp.ravel(), "share": per.mean(0).ravel(),
            "share_min": per.min(0).ravel(), "share_max": per.max(0).ravel(), "n_models": len(others),
        }))  # fmt: skip
    if not parts:
        return FigureResult(None, None, "no table has per-pair partner layers (max_corr_layer_{m} columns)")
    data = pd.concat(parts, ignore_index=True)
    names = list(dict.fromkeys(data["model"]))
    nrows, ncols = _grid(len(names), ncols)
    fig, axes = new_figure(nrows, ncols, figsize=(3.0 * ncols + 1.0, 3.0 * nrows + 0.6))
    for i, name in enumerate(names):
        ax, sub = axes.flat[i], data[data["model"] == name]
        L = int(sub["layer"].max()) + 1
        mat = sub.pivot(index="layer", columns="partner_layer", values="share").to_numpy()
        im = ax.imshow(mat, vmin=0, vmax=1, cmap="Blues", origin="upper")
        if L <= 12:
            for (a, b), v in np.ndenumerate(mat):
                ax.text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v > 0.6 else "black")
        ax.set_xticks(range(L))
        ax.set_yticks(range(L))
        diag = float(np.trace(mat) / L)
        ax.set_title(f"{name}\nsame layer: {diag:.2f} (chance {1 / L:.2f})", fontsize=9)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    fig.supxlabel("layer of the most-correlated neuron (other model)")
    fig.supylabel("layer (reference)")
    fig.colorbar(im, ax=axes, shrink=0.7, label="share of the layer's neurons")
    fig.suptitle("Depth specialisation: where each neuron's best partner lives", fontsize=10)
    return FigureResult(fig, data, None)


def correlation_densities(
    dfs,
    columns: Sequence[str] = ("mean_corr", "mean_baseline", "excess_corr"),
    bins: int | None = None,
    threshold: float | criteria.Universality = criteria.UNIVERSAL_THRESHOLD,
) -> FigureResult:
    """Fig 11: density step histograms of mean_corr, mean_baseline and excess_corr, one curve per model.

    ``bins`` defaults to the paper's 200 for large tables, fewer (≈ 2√n, at least 20) for small ones."""
    models = _as_model_dict(dfs)
    rows = []
    for col in columns:
        values = {}
        for name, df in models.items():
            if col == "excess_corr":
                try:
                    v = criteria.excess_correlation(df)
                except KeyError:
                    continue
            elif col in df:
                v = df[col].astype(float)
            else:
                continue
            v = v.dropna().to_numpy()
            if len(v):
                values[name] = v
        if not values:
            continue
        lo = min(v.min() for v in values.values())
        hi = max(v.max() for v in values.values())
        if hi <= lo:
            hi = lo + 1e-6
        n_bins = bins or int(min(200, max(20, 2 * math.sqrt(min(len(v) for v in values.values())))))
        edges = np.linspace(lo, hi, n_bins + 1)
        for name, v in values.items():
            density, _ = np.histogram(v, bins=edges, density=True)
            rows.append(
                pd.DataFrame(
                    {
                        "model": name,
                        "column": col,
                        "bin_left": edges[:-1],
                        "bin_right": edges[1:],
                        "density": density,
                        "n": len(v),
                    }
                )
            )
    if not rows:
        return FigureResult(None, None, f"none of {list(columns)} has values in the table")
    data = pd.concat(rows, ignore_index=True)
    drawn = list(dict.fromkeys(data["column"]))
    fig, axes = new_figure(1, len(drawn), figsize=(4 * len(drawn), 3.0))
    for ax, col in zip(axes.flat, drawn):
        for name, sub in data[data["column"] == col].groupby("model", sort=False):
            ax.stairs(
                sub["density"].to_numpy(), np.r_[sub["bin_left"].to_numpy(), sub["bin_right"].iloc[-1]], label=name
            )
        if col == "excess_corr":
            line = criteria.as_universality(threshold).excess_threshold
            ax.axvline(line, color="black", ls="--", lw=0.8, label=f"threshold {line:g}")
        ax.set_xlabel(label(col))
        ax.set_ylabel("density")
    axes.flat[0].legend(frameon=False, fontsize=8)
    fig.suptitle("Correlation with other seeds, rotation baseline and excess correlation (all neurons)")
    only = [name for name, df in models.items() if is_only_universal(df, threshold)]
    note = None
    if only:
        note = f"{', '.join(only)}: only universal neurons in the table, so these densities are truncated at the threshold."
        fig.suptitle("Correlation densities of universal neurons only")
        _add_note(fig, note)
    return FigureResult(fig, data, note)


def universal_property_percentiles(
    dfs,
    metrics: Sequence[str] = FIG3_METRICS,
    threshold: float | criteria.Universality = criteria.UNIVERSAL_THRESHOLD,
    masks: Mapping[str, np.ndarray] | None = None,
) -> FigureResult:
    """Fig 3: universal neurons' within-layer percentiles (over ALL neurons of the layer) on each property.

    ``masks`` replaces the universal set of the named entries (e.g. a control set: the same-size top set of the
    rotated control). A model whose table holds only universal neurons is left out (the percentiles need the
    whole layer); if none is left, returns ``(None, None)`` with a note.
    """
    models = _as_model_dict(dfs)
    masks = dict(masks or {})
    parts, only, empty = [], [], []
    for name, df in models.items():
        if name not in masks and is_only_universal(df, threshold):
            only.append(name)
            continue
        uni = np.asarray(masks[name], bool) if name in masks else criteria.universal_mask(df, threshold).to_numpy()
        if not uni.any():
            empty.append(name)
            continue
        pct = within_layer_percentiles(df, metrics)
        long = pct[uni].assign(layer=df.loc[uni, "layer"].to_numpy(), neuron=df.loc[uni, "neuron"].to_numpy())
        long = long.melt(id_vars=["layer", "neuron"], var_name="metric", value_name="percentile")
        parts.append(long.assign(model=name))
    notes = []
    if only:
        notes.append(
            f"Left out {', '.join(only)}: within-layer percentiles need every neuron of the layer, "
            "but the table holds only universal neurons."
        )
    if empty:
        notes.append(f"Left out {', '.join(empty)}: no universal neurons.")
    note = " ".join(notes) or None
    if not parts:
        return FigureResult(None, None, note or "no universal neurons to draw")
    data = pd.concat(parts, ignore_index=True)[["model", "layer", "neuron", "metric", "percentile"]]
    order = [m for m in metrics if m in set(data["metric"])]
    data["label"] = data["metric"].map(label)
    fig, axes = new_figure(figsize=(max(8.0, 1.45 * len(order)), 3.75))
    ax = axes[0, 0]
    import seaborn as sns

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sns.boxenplot(
            data=data, x="label", y="percentile", hue="model", order=[label(m) for m in order], showfliers=False, ax=ax
        )
    ax.axhline(50, color="black", ls=":", lw=0.8)
    ax.set_ylim(0, 100)
    ax.set_xlabel("")
    ax.set_ylabel("percentile within layer")
    n_uni = data.groupby("model")["neuron"].size() // max(1, len(order))
    ax.set_title(
        f"Universal neurons ({criteria.as_universality(threshold)}): within-layer percentiles ("
        + ", ".join(f"{m}: {n:,} neurons" for m, n in n_uni.items())
        + ")"
    )
    ax.legend(title="model", frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _add_note(fig, note)
    return FigureResult(fig, data, note)


def universal_property_distributions(
    df: pd.DataFrame,
    metrics: Sequence[str] = FIG3_METRICS,
    threshold: float | criteria.Universality = criteria.UNIVERSAL_THRESHOLD,
    bins: int = 40,
    ncols: int = 5,
) -> FigureResult:
    """Raw distributions of universal neurons' properties (what a universal-only table supports)."""
    uni = df[criteria.universal_mask(df, threshold).to_numpy()]
    metrics = [m for m in metrics if m in uni]
    if not len(uni) or not metrics:
        return FigureResult(None, None, "no universal neurons or none of the metrics present")
    data = uni[["layer", "neuron", *metrics]].melt(id_vars=["layer", "neuron"], var_name="metric", value_name="value")
    nrows, ncols = _grid(len(metrics), ncols)
    fig, axes = new_figure(nrows, ncols, figsize=(2.8 * ncols, 2.4 * nrows + 0.5))
    for ax, m in zip(axes.flat, metrics):
        v = uni[m].dropna().to_numpy(dtype=float)
        lo, hi = np.percentile(v, [0.5, 99.5]) if len(v) else (0, 1)
        ax.hist(np.clip(v, lo, hi), bins=bins, color=UNIVERSAL_COLOR)
        med = float(np.median(v)) if len(v) else np.nan
        ax.axvline(med, color="black", ls="--", lw=0.8)
        ax.set_title(f"{label(m)} (median {med:.3g})", fontsize=9)
        ax.set_ylabel("neurons")
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    fig.suptitle(f"Properties of the {len(uni):,} universal neurons (0.5–99.5 percentile range)")
    note = None
    if is_only_universal(df, threshold):
        note = "Only universal neurons in the table: raw values are drawn, with no comparison group."
        _add_note(fig, note)
    return FigureResult(fig, data, note)


def properties_by_layer(
    df: pd.DataFrame,
    metrics: Sequence[str] = FIG14_METRICS,
    threshold: float | criteria.Universality = criteria.UNIVERSAL_THRESHOLD,
    clip: tuple[float, float] = (0.25, 99.75),
) -> FigureResult:
    """Fig 14: one row per metric, boxen plots per layer, universal vs other neurons.

    ``data`` summarises what each box shows: n, q25, median, q75 per (metric, layer, group).
    The y-axis is clipped to the ``clip`` percentiles of the metric.
    """
    import seaborn as sns

    metrics = [m for m in metrics if m in df]
    if not metrics:
        return FigureResult(None, None, "none of the metrics is in the table")
    only = is_only_universal(df, threshold)
    group = np.where(criteria.universal_mask(df, threshold).to_numpy(), "universal", "other")
    frame = df[["layer", *metrics]].assign(group=group)
    stats = []
    for m in metrics:
        g = frame.groupby(["layer", "group"])[m]
        s = pd.DataFrame({"n": g.count(), "q25": g.quantile(0.25), "median": g.median(), "q75": g.quantile(0.75)})
        stats.append(s.reset_index().assign(metric=m))
    data = pd.concat(stats, ignore_index=True)[["metric", "layer", "group", "n", "q25", "median", "q75"]]
    layers = _layers(df)
    hue_order = ["universal"] if only else ["other", "universal"]
    palette = {"other": OTHER_COLOR, "universal": UNIVERSAL_COLOR}
    fig, axes = new_figure(
        len(metrics), 1, figsize=(max(7.0, 0.55 * len(layers) + 2.5), 2.0 * len(metrics) + 0.6), sharex=True
    )
    for ax, m in zip(axes.flat, metrics):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sns.boxenplot(
                data=frame,
                x="layer",
                y=m,
                hue="group",
                hue_order=hue_order,
                order=layers,
                palette=palette,
                showfliers=False,
                ax=ax,
                legend=(ax is axes.flat[0]),
            )
        v = frame[m].dropna()
        if len(v):
            lo, hi = np.percentile(v, clip)
            pad = 0.05 * (hi - lo) if hi > lo else 1.0
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_ylabel(label(m))
        ax.set_xlabel("")
    axes.flat[-1].set_xlabel("layer")
    if axes.flat[0].get_legend() is not None:
        axes.flat[0].legend(title=None, frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("Neuron properties by layer: universal vs other neurons")
    note = None
    if only:
        note = "Only universal neurons in the table: no 'other' group to compare with."
        fig.suptitle("Properties of universal neurons by layer")
        _add_note(fig, note)
    return FigureResult(fig, data, note)


def universal_summary_table(
    df: pd.DataFrame, threshold: float | criteria.Universality = criteria.UNIVERSAL_THRESHOLD
) -> pd.DataFrame:
    """Column medians and a few shares for universal (and, if present, other) neurons (spec §13 table)."""
    uni = criteria.universal_mask(df, threshold).to_numpy()
    groups = {"universal": df[uni]}
    if not is_only_universal(df, threshold):
        groups["other"] = df[~uni]
    rows = {}
    for name, sub in groups.items():
        r = {f"median {c}": sub[c].median() for c in SUMMARY_COLUMNS if c in sub}
        r["n neurons"] = len(sub)
        for c, op, v in (("skew", ">", 0), ("kurt", ">", 3), ("input_bias", "<", 0)):
            if c in sub and len(sub):
                r[f"share {c} {op} {v}"] = float((sub[c] > v).mean() if op == ">" else (sub[c] < v).mean())
        if "vocab_kurt" in sub:
            r[f"count vocab_kurt > {criteria.PREDICTION_KURTOSIS:g}"] = int(
                (sub["vocab_kurt"] > criteria.PREDICTION_KURTOSIS).sum()
            )
        rows[name] = r
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- prediction / suppression neurons (§5.1, Fig 6)
def classify_vocab_neurons(df: pd.DataFrame, kurt_threshold: float | str = criteria.PREDICTION_KURTOSIS) -> pd.Series:
    """'prediction' / 'suppression' / 'other' per neuron (``criteria.vocab_kind``); ``kurt_threshold`` a number or
    ``criteria.CALIBRATED`` (each neuron's layer's null quantile)."""
    thr = criteria.kurtosis_threshold(df, kurt_threshold)
    return pd.Series(criteria.vocab_kind(df["vocab_kurt"], df["vocab_skew"], thr), index=df.index, name="vocab_class")


def high_kurtosis(df: pd.DataFrame, kurt_threshold: float | str = criteria.PREDICTION_KURTOSIS) -> pd.Series:
    """vocab_kurt above the threshold (a number or ``criteria.CALIBRATED``), per neuron."""
    return df["vocab_kurt"] > criteria.kurtosis_threshold(df, kurt_threshold)


def vocab_percentiles_by_layer(
    dfs,
    columns: Sequence[str] = ("vocab_kurt", "vocab_skew"),
    percentiles: Sequence[float] = (5, 10, 50, 90, 95),
    log_scale: Sequence[str] = ("vocab_kurt",),
    threshold: float | criteria.Universality = criteria.UNIVERSAL_THRESHOLD,
) -> FigureResult:
    """Fig 6a,b: per-layer percentiles of each column (numpy linear interpolation) and the mean.

    With several models each line is the mean over models and the band spans their min–max (paper);
    with one model, bands join symmetric percentile pairs (5–95, 10–90, …).
    """
    models = _as_model_dict(dfs)
    rows = []
    for name, df in models.items():
        for col in columns:
            if col not in df:
                continue
            for layer, v in df.groupby("layer")[col]:
                v = v.dropna().to_numpy(dtype=float)
                if not len(v):
                    continue
                vals = np.percentile(v, percentiles)
                for p, x in zip(percentiles, vals):
                    rows.append((name, col, int(layer), f"p{p:g}", float(p), float(x)))
                rows.append((name, col, int(layer), "mean", np.nan, float(v.mean())))
    if not rows:
        return FigureResult(None, None, f"none of {list(columns)} is in the table")
    data = pd.DataFrame(rows, columns=["model", "column", "layer", "statistic", "percentile", "value"])
    drawn = list(dict.fromkeys(data["column"]))
    stats = [f"p{p:g}" for p in percentiles] + ["mean"]
    cmap = colormaps["coolwarm"]
    colors = {s: cmap(i / max(1, len(percentiles) - 1)) for i, s in enumerate(stats[:-1])}
    colors["mean"] = colors["p50"] = "black"
    fig, axes = new_figure(1, len(drawn), figsize=(5.0 * len(drawn) + 1.0, 3.4))
    for ax, col in zip(axes.flat, drawn):
        sub = data[data["column"] == col]
        agg = sub.groupby(["statistic", "layer"])["value"].agg(["mean", "min", "max"]).reset_index()
        single = sub["model"].nunique() == 1
        if single:
            ps = sorted(percentiles)
            for lo_p, hi_p in zip(ps[: len(ps) // 2], ps[::-1][: len(ps) // 2]):
                lo = agg[agg["statistic"] == f"p{lo_p:g}"].sort_values("layer")
                hi = agg[agg["statistic"] == f"p{hi_p:g}"].sort_values("layer")
                ax.fill_between(lo["layer"], lo["mean"], hi["mean"], color="tab:blue", alpha=0.12, lw=0)
        for s in stats:
            a = agg[agg["statistic"] == s].sort_values("layer")
            if not len(a):
                continue
            ax.plot(
                a["layer"],
                a["mean"],
                color=colors[s],
                lw=2 if s in ("p50", "mean") else 1.2,
                ls="--" if s == "mean" else "-",
                label=s.replace("p", "") + ("th pct" if s != "mean" else ""),
            )
            if not single:
                ax.fill_between(a["layer"], a["min"], a["max"], color=colors[s], alpha=0.2, lw=0)
        if col in log_scale:
            ax.set_yscale("log")
            plain = FuncFormatter(
                lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (1, 2, 3, 5) else ""
            )
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are integers, even with 2 of them
        ax.set_ylabel(label(col))
        ax.set_title(
            f"{label(col)} by layer"
            + ("\n(moments of cos(w_out, W_U[:, v]) over the vocabulary)" if col.startswith("vocab_") else ""),
            fontsize=10,
        )
    axes.flat[-1].legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if len(models) > 1:
        fig.suptitle(f"Mean over {len(models)} models, band = min–max")
    note = None
    only = [n for n, df in models.items() if is_only_universal(df, threshold)]
    if only:
        note = (
            f"{', '.join(only)}: only universal neurons in the table, so the percentiles describe universal "
            "neurons, not whole layers."
        )
        _add_note(fig, note)
    return FigureResult(fig, data, note)


def prediction_suppression_by_layer(
    df: pd.DataFrame,
    kurt_threshold: float | str = criteria.PREDICTION_KURTOSIS,
    threshold: float | criteria.Universality = criteria.UNIVERSAL_THRESHOLD,
    d_mlp: int | None = None,
    n_layers: int | None = None,
) -> FigureResult:
    """Counts per layer of prediction (vocab_kurt > t, skew > 0) and suppression (skew < 0) neurons.

    ``data`` has one row per (group, layer): group 'all neurons' (full tables only) and
    'universal neurons'; columns n_neurons, n_high_kurtosis, n_prediction, n_suppression and
    the shares of the group's neurons in that layer.
    """
    if not {"vocab_kurt", "vocab_skew"} <= set(df.columns):
        return FigureResult(None, None, "the table lacks vocab_kurt / vocab_skew")
    only = is_only_universal(df, threshold)
    cls = classify_vocab_neurons(df, kurt_threshold)
    uni = criteria.universal_mask(df, threshold).to_numpy()
    layers = _layers(df, n_layers)
    groups = {"universal neurons": uni} if only else {"all neurons": np.ones(len(df), bool), "universal neurons": uni}
    measured = criteria.has_universality(df, threshold)
    if not measured:  # a single model (no other seeds): no universal group to count
        groups.pop("universal neurons")
    parts = []
    for gname, mask in groups.items():
        sub_cls, sub_layer = cls[mask], df.loc[mask, "layer"]

        def count(k, sub_cls=sub_cls, sub_layer=sub_layer):
            return (sub_cls == k).groupby(sub_layer).sum().reindex(layers, fill_value=0).to_numpy().astype(int)

        n = sub_layer.groupby(sub_layer).size().reindex(layers, fill_value=0).to_numpy().astype(int)
        high = high_kurtosis(df, kurt_threshold)[mask].groupby(sub_layer).sum().reindex(layers, fill_value=0)
        part = pd.DataFrame(
            {
                "group": gname,
                "layer": layers,
                "n_neurons": n,
                "n_high_kurtosis": high.to_numpy().astype(int),
                "n_prediction": count("prediction"),
                "n_suppression": count("suppression"),
            }
        )
        denom = d_mlp if (only and d_mlp) else part["n_neurons"].replace(0, np.nan)
        part["share_prediction"] = part["n_prediction"] / denom
        part["share_suppression"] = part["n_suppression"] / denom
        parts.append(part)
    data = pd.concat(parts, ignore_index=True)
    gnames = list(groups)
    fig, axes = new_figure(1, len(gnames), figsize=(max(5.0, 0.4 * len(layers) + 2.5) * len(gnames), 3.4))
    x = np.arange(len(layers))
    for ax, gname in zip(axes.flat, gnames):
        part = data[data["group"] == gname]
        ax.bar(x - 0.2, part["n_prediction"], 0.4, color=PREDICTION_COLOR, label="prediction (skew > 0)")
        ax.bar(x + 0.2, part["n_suppression"], 0.4, color=SUPPRESSION_COLOR, label="suppression (skew < 0)")
        ax.set_xticks(x, layers)
        ax.set_xlabel("layer")
        ax.set_ylabel("neurons")
        ax.set_title(
            f"{gname}: vocab kurtosis > {criteria.kurtosis_threshold_label(kurt_threshold)} "
            f"({int(part['n_prediction'].sum())} pred., {int(part['n_suppression'].sum())} supp.)",
            fontsize=10,
        )
    axes.flat[0].legend(frameon=False, fontsize=8)
    note = None
    if only:
        note = "Only universal neurons in the table: counts among universal neurons only."
    elif not measured:
        note = "No universality measurement in this table (a single model, no other seeds): all neurons only."
    if note:
        _add_note(fig, note)
    return FigureResult(fig, data, note)


def prediction_skew_density(
    dfs,
    layers: Sequence[int] | None = None,
    kurt_threshold: float | str = criteria.PREDICTION_KURTOSIS,
    bw: float = 0.5,
    xlim: tuple[float, float] = (-7.0, 7.0),
    n_grid: int = 1000,
) -> FigureResult:
    """Fig 6c: KDE (bandwidth factor ``bw``) of vocab_skew of high-kurtosis neurons, per layer (default: last 4).

    With several models the line is the mean density over models and the band their min–max.
    """
    from scipy.stats import gaussian_kde

    models = _as_model_dict(dfs)
    if layers is None:
        top = max(int(df["layer"].max()) for df in models.values())
        layers = list(range(max(0, top - 3), top + 1))
    grid = np.linspace(*xlim, n_grid)
    rows, skipped = [], []
    for layer in layers:
        for name, df in models.items():
            v = (
                df.loc[(df["layer"] == layer) & high_kurtosis(df, kurt_threshold), "vocab_skew"]
                .dropna()
                .to_numpy(float)
            )
            if len(v) < 2 or np.ptp(v) == 0:
                skipped.append(f"{name} L{layer} ({len(v)} neurons)")
                dens = np.zeros_like(grid)
            else:
                dens = gaussian_kde(v, bw_method=bw)(grid)
            rows.append(pd.DataFrame({"model": name, "layer": layer, "x": grid, "density": dens, "n_neurons": len(v)}))
    data = pd.concat(rows, ignore_index=True)
    fig, axes = new_figure(figsize=(6.0, 3.4))
    ax = axes[0, 0]
    cmap = colormaps["viridis"]
    for i, layer in enumerate(layers):
        sub = data[data["layer"] == layer]
        agg = sub.groupby("x")["density"].agg(["mean", "min", "max"]).reset_index()
        n_mean = sub.groupby("model")["n_neurons"].first().mean()
        color = cmap(i / max(1, len(layers) - 1))
        ax.plot(agg["x"], agg["mean"], color=color, label=f"layer {layer} (n = {n_mean:.0f})")
        if len(models) > 1:
            ax.fill_between(agg["x"], agg["min"], agg["max"], color=color, alpha=0.2, lw=0)
    ax.axvline(0, color="black", lw=0.6, ls=":")
    ax.set_xlim(*xlim)
    ax.set_xlabel("vocab skew (left: suppression, right: prediction)")
    ax.set_ylabel("density")
    ax.set_title(f"Skew of neurons with vocab kurtosis > {criteria.kurtosis_threshold_label(kurt_threshold)}")
    ax.legend(frameon=False, fontsize=8)
    note = f"Too few high-kurtosis neurons for a density: {', '.join(skipped)}." if skipped else None
    _add_note(fig, note)
    return FigureResult(fig, data, note)


def vocab_kurtosis_null_by_layer(df: pd.DataFrame, n_layers: int | None = None) -> FigureResult:
    """The paper's fixed vocab-kurtosis threshold (10) against the layer's calibrated null (``criteria.CALIBRATED``).

    ``data``: one row per layer with ``n_neurons``, the neurons' vocab_kurt median and q99, the null's q99
    (``criteria.NULL_QUANTILE_COLUMN``), and the prediction / suppression counts under each threshold
    (``{kind}_paper``, ``{kind}_calibrated``). The figure draws each layer's neurons (log scale) with the two lines.
    """
    if criteria.NULL_QUANTILE_COLUMN not in df or "vocab_kurt" not in df:
        return FigureResult(None, None, f"the table has no {criteria.NULL_QUANTILE_COLUMN} (no null was run)")
    layers = _layers(df, n_layers)
    paper, calibrated = (classify_vocab_neurons(df, t) for t in (criteria.PREDICTION_KURTOSIS, criteria.CALIBRATED))
    rows = []
    for layer in layers:
        m = (df["layer"] == layer).to_numpy()
        k = df.loc[m, "vocab_kurt"].to_numpy(float)
        row = {
            "layer": layer,
            "n_neurons": int(m.sum()),
            "vocab_kurt_median": float(np.nanmedian(k)) if m.any() else np.nan,
            "vocab_kurt_q99": float(np.nanquantile(k, 0.99)) if m.any() else np.nan,
            "null_q99": float(df.loc[m, criteria.NULL_QUANTILE_COLUMN].iloc[0]) if m.any() else np.nan,
            "paper_threshold": criteria.PREDICTION_KURTOSIS,
        }
        for kind in ("prediction", "suppression"):
            row[f"{kind}_paper"] = int((paper[m] == kind).sum())
            row[f"{kind}_calibrated"] = int((calibrated[m] == kind).sum())
        rows.append(row)
    data = pd.DataFrame(rows)
    fig, axes = new_figure(figsize=(max(4.5, 0.6 * len(layers) + 2.5), 3.4))
    ax = axes[0, 0]
    rng = np.random.default_rng(0)  # horizontal jitter only
    for i, layer in enumerate(layers):
        k = df.loc[df["layer"] == layer, "vocab_kurt"].to_numpy(float)
        ax.scatter(i + rng.uniform(-0.25, 0.25, len(k)), k, s=3, color="gray", alpha=0.4, lw=0)
        ax.hlines(data["null_q99"].iloc[i], i - 0.35, i + 0.35, color="C3", lw=2, label="null q99" if i == 0 else None)
    ax.axhline(criteria.PREDICTION_KURTOSIS, color="black", ls="--", lw=0.8, label="paper: 10")
    ax.set_yscale("log")
    ax.set_xticks(range(len(layers)), layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("vocab kurtosis")
    ax.set_title("Vocab kurtosis: the paper's 10 vs the layer's random-direction null", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    return FigureResult(fig, data, None)


# ---------------------------------------------------------------- dataset summary: histograms
def padded_bin_edges(edges) -> np.ndarray:
    """The E+1 histogram bins of §0.4 as E+2 finite edges: one extra step on each side (spec §5)."""
    e = np.asarray(edges, dtype=float)
    step = e[1] - e[0]
    return np.r_[e[0] - step, e, e[-1] + step]


def neuron_activation_histograms(
    counts_by_subset: Mapping[str, Any],
    edges,
    neurons: Sequence[tuple[int, int]],
    density: bool = True,
    ncols: int = 3,
    title: str | None = None,
) -> FigureResult:
    """Pre-activation histograms of chosen neurons, one step curve per dataset subset.

    ``counts_by_subset[subset]`` is ``pre_bin_counts`` [L, N, E+1] on ``edges`` (E edges); bin 0
    holds values ≤ edges[0] and bin E values > edges[-1] (drawn one bin wide at the ends).
    """
    padded = padded_bin_edges(edges)
    rows = []
    for subset, counts in counts_by_subset.items():
        counts = np.asarray(counts)
        for layer, neuron in neurons:
            c = counts[int(layer), int(neuron)].astype(np.int64)
            total = c.sum()
            widths = np.diff(padded)
            dens = c / (total * widths) if total else np.zeros(len(c))
            rows.append(
                pd.DataFrame(
                    {
                        "subset": subset,
                        "layer": int(layer),
                        "neuron": int(neuron),
                        "bin_left": padded[:-1],
                        "bin_right": padded[1:],
                        "count": c,
                        "density": dens,
                    }
                )
            )
    if not rows:
        return FigureResult(None, None, "no subsets or no neurons given")
    data = pd.concat(rows, ignore_index=True)
    y = "density" if density else "count"
    nrows, ncols = _grid(len(neurons), ncols)
    fig, axes = new_figure(nrows, ncols, figsize=(3.8 * ncols + 1.2, 2.8 * nrows + 0.6))
    for ax, (layer, neuron) in zip(axes.flat, neurons):
        sub = data[(data["layer"] == int(layer)) & (data["neuron"] == int(neuron))]
        for subset, s in sub.groupby("subset", sort=False):
            ax.stairs(s[y].to_numpy(), np.r_[s["bin_left"].to_numpy(), s["bin_right"].iloc[-1]], label=subset)
        nz = sub.loc[sub["count"] > 0]
        if len(nz):
            lo, hi = nz["bin_left"].min(), nz["bin_right"].max()
            pad = 0.05 * (hi - lo)
            ax.set_xlim(lo - pad, hi + pad)
        ax.axvline(0, color="black", lw=0.6, ls=":")
        ax.set_title(f"L{int(layer)}.{int(neuron)}", fontsize=10)
        ax.set_xlabel("pre-activation")
        ax.set_ylabel(y)
    for ax in axes.flat[len(neurons) :]:
        ax.set_visible(False)
    handles, labels_ = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels_, title="subset", frameon=False, fontsize=8, loc="outside right upper")
    fig.suptitle(title or "Pre-activation distribution per dataset subset")
    return FigureResult(fig, data)


# ---------------------------------------------------------------- dataset summary: top-activating examples
def top_example_windows(
    values,
    flat_indices,
    tokens,
    ctx_len: int | None = None,
    before: int = 20,
    after: int = 5,
    layer: int | None = None,
    neuron: int | None = None,
    subsets: Sequence[str] | None = None,
    drop_zero: bool = True,
) -> pd.DataFrame:
    """Token windows around a neuron's top-k activations.

    ``values``/``flat_indices`` [k] come from the summary (flat index = row·ctx + pos), ``tokens`` is
    the dataset's [rows, ctx] token array. Returns one row per example: rank, value, row, pos,
    subset, token_ids (window), target (index of the top token in the window) and context_values:
    the neuron's activation on each window token where the top-k list knows it (NaN elsewhere).
    """
    values = np.asarray(values, dtype=float).reshape(-1)
    flat = np.asarray(flat_indices, dtype=np.int64).reshape(-1)
    tokens = np.asarray(tokens)
    ctx = int(ctx_len or tokens.shape[1])
    known = dict(zip(flat.tolist(), values.tolist()))
    order = np.argsort(-values, kind="stable")
    rows = []
    for rank, i in enumerate(order):
        if flat[i] < 0 or not np.isfinite(values[i]) or (drop_zero and values[i] == 0 and flat[i] == 0):
            continue  # an unfilled top-k slot: (-inf, -1) in our summaries, (0, 0) in the original's
        row, pos = divmod(int(flat[i]), ctx)
        if row >= len(tokens):
            continue
        start, end = max(0, pos - before), min(ctx, pos + after + 1)
        ids = [int(t) for t in tokens[row, start:end]]
        ctx_vals = [known.get(row * ctx + p, np.nan) for p in range(start, end)]
        rows.append(
            {
                "layer": layer,
                "neuron": neuron,
                "rank": rank,
                "value": float(values[i]),
                "row": row,
                "pos": pos,
                "subset": subsets[row] if subsets is not None else None,
                "token_ids": ids,
                "target": pos - start,
                "context_values": ctx_vals,
            }
        )
    return pd.DataFrame(rows)


def decode_tokens(tokenizer, ids: Sequence[int]) -> list[str]:
    """One string per token id (each decoded alone, so byte-level pieces keep their leading space)."""
    return [tokenizer.decode([int(t)]) for t in ids]


def activation_color(value: float, vmax: float, cmap: str = "Oranges") -> str | None:
    """Hex colour ∝ value/vmax (clipped to [0, 1]); None for NaN or non-positive values."""
    if value is None or not np.isfinite(value) or value <= 0 or not vmax or vmax <= 0:
        return None
    frac = float(min(1.0, value / vmax))
    return to_hex(colormaps[cmap](0.1 + 0.75 * frac))


def _visible(token: str) -> str:
    return token.replace("\n", "↵").replace("\t", "⇥")


def highlight_tokens_html(
    tokens: Sequence[str],
    values: Sequence[float],
    vmax: float | None = None,
    target: int | None = None,
    cmap: str = "Oranges",
) -> str:
    """HTML ``<span>`` per token with background colour ∝ activation; tokens are HTML-escaped.

    The ``target`` token (the top activation) is bold and underlined; each span's title shows its
    activation (or 'n/a' where unknown).
    """
    vals = [float(v) if v is not None else np.nan for v in values]
    finite = [v for v in vals if np.isfinite(v)]
    vmax = vmax if vmax is not None else (max(finite) if finite else 0.0)
    parts = []
    for i, (tok, v) in enumerate(zip(tokens, vals)):
        style = ["white-space:pre"]
        color = activation_color(v, vmax, cmap)
        if color:
            style.append(f"background-color:{color}")
        if i == target:
            style.append("font-weight:bold;text-decoration:underline")
        title = f"{v:.3f}" if np.isfinite(v) else "n/a"
        parts.append(f'<span style="{";".join(style)}" title="act {title}">{html.escape(_visible(str(tok)))}</span>')
    return '<span style="font-family:monospace">' + "".join(parts) + "</span>"


def top_examples_html(examples: pd.DataFrame, title: str = "Top-activating examples", full_page: bool = True) -> str:
    """HTML table of examples (from :func:`top_example_windows` plus a ``tokens`` column of strings)."""
    out = [f"<h2>{html.escape(title)}</h2>"]
    for (layer, neuron), sub in examples.groupby(["layer", "neuron"], sort=False):
        vmax = float(sub["value"].max()) if len(sub) else 0.0
        out.append(f"<h3>L{int(layer)}.{int(neuron)} (max {vmax:.3f})</h3>")
        out.append(
            '<table style="border-collapse:collapse"><tr><th>#</th><th>act</th><th>subset</th><th>context</th></tr>'
        )
        for _, r in sub.iterrows():
            text = highlight_tokens_html(r["tokens"], r["context_values"], vmax=vmax, target=int(r["target"]))
            subset = html.escape(str(r["subset"])) if r.get("subset") is not None else ""
            out.append(f"<tr><td>{int(r['rank'])}</td><td>{r['value']:.3f}</td><td>{subset}</td><td>{text}</td></tr>")
        out.append("</table>")
    body = "\n".join(out)
    if not full_page:
        return body
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
        + html.escape(title)
        + "</title><style>td{padding:2px 8px;vertical-align:top}</style></head><body>"
        + body
        + "</body></html>"
    )


def plot_highlighted_examples(
    examples: pd.DataFrame,
    max_examples: int = 6,
    width_in: float = 11.0,
    fontsize: float = 8.5,
    cmap: str = "Oranges",
    title: str | None = None,
) -> FigureResult:
    """Matplotlib rendering of :func:`top_examples_html` (monospace, per-token coloured boxes) for PNG export."""
    if examples is None or not len(examples):
        return FigureResult(None, examples, "no top-activating examples to draw")
    ex = examples.groupby(["layer", "neuron"], sort=False).head(max_examples).reset_index(drop=True)
    char_w = 0.6 * fontsize / 72  # DejaVu Sans Mono advance width ≈ 0.6 em
    line_h = 1.55 * fontsize / 72
    label_w = 0.6
    max_chars = int((width_in - label_w - 0.3) / char_w)
    # lay out every line first (wrapping long windows) to size the figure
    layout = []  # (kind, payload)
    for (layer, neuron), sub in ex.groupby(["layer", "neuron"], sort=False):
        layout.append(
            ("header", f"L{int(layer)}.{int(neuron)}  (max {sub['value'].max():.3f})", float(sub["value"].max()))
        )
        for _, r in sub.iterrows():
            toks = [_visible(str(t)) for t in r["tokens"]]
            line, used, first = [], 0, True
            for i, t in enumerate(toks):
                if used + len(t) > max_chars and line:
                    layout.append(("line", (f"{r['value']:.2f}" if first else "", line), float(sub["value"].max())))
                    line, used, first = [], 0, False
                line.append((t, r["context_values"][i], i == int(r["target"])))
                used += len(t)
            layout.append(("line", (f"{r['value']:.2f}" if first else "", line), float(sub["value"].max())))
    title_h = 0.5
    height = title_h + line_h * (len(layout) + 0.5)
    fig = Figure(figsize=(width_in, height))
    FigureCanvasAgg(fig)
    tr = fig.dpi_scale_trans
    fig.text(
        0.15,
        height - 0.12,
        title or "Top-activating examples (colour ∝ activation)",
        transform=tr,
        fontsize=fontsize + 2,
        va="top",
        weight="bold",
    )
    y = height - title_h - line_h
    for kind, payload, vmax in layout:
        if kind == "header":
            fig.text(0.15, y, payload, transform=tr, fontsize=fontsize + 1, weight="bold", va="bottom")
        else:
            lab, line = payload
            fig.text(0.15, y, lab, transform=tr, fontsize=fontsize, family="monospace", va="bottom", color="dimgray")
            x = label_w
            for tok, v, is_target in line:
                color = activation_color(v, vmax, cmap)
                w = char_w * len(tok)
                if color:
                    fig.add_artist(
                        Rectangle((x, y - 0.02), w, line_h * 0.85, transform=tr, facecolor=color, edgecolor="none")
                    )
                fig.text(
                    x,
                    y,
                    tok,
                    transform=tr,
                    fontsize=fontsize,
                    family="monospace",
                    va="bottom",
                    weight="bold" if is_target else "normal",
                )
                if is_target:
                    fig.add_artist(
                        Rectangle((x, y - 0.03), w, 0.012, transform=tr, facecolor="black", edgecolor="none")
                    )
                x += w
        y -= line_h
    return FigureResult(fig, ex)


# ---------------------------------------------------------------- saving


class SavedFigure:
    """What :meth:`FigureWriter.save` returns; shows the saved PNG (or the note) in a notebook."""

    def __init__(self, name: str, files: dict[str, str], caption: str, note: str | None, folder: Path):
        self.name, self.files, self.caption, self.note, self.folder = name, files, caption, note, Path(folder)

    def _repr_png_(self):
        png = self.files.get("png")
        return (self.folder / png).read_bytes() if png else None

    def _repr_markdown_(self):
        if self.files.get("png"):
            return None
        return f"**{self.name}**: not drawn. {self.note or ''}"

    def __repr__(self) -> str:
        return f"SavedFigure({self.name!r}, files={self.files}, note={self.note!r})"


class FigureWriter:
    """Save figures (PNG + SVG), the data drawn (CSV) and captions into one folder.

    ``figures.json`` in that folder lists every figure with its caption, note, files and the data
    source (path + manifest); ``neuron_lib.notebooks.write_index`` builds index.html from it. A new
    writer starts a fresh list (a notebook run replaces its previous figures).
    """

    def __init__(
        self,
        folder: str | Path,
        notebook: str,
        title: str = "",
        source: Mapping[str, Any] | None = None,
        formats: Sequence[str] = ("png", "svg"),
        dpi: int = 130,
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.record = {"notebook": notebook, "title": title or notebook, "source": dict(source or {}), "figures": []}
        self.formats, self.dpi = tuple(formats), dpi
        self._write()

    def _write(self) -> None:
        from neuron_lib.common import atomic_write_json

        atomic_write_json(self.folder / artifacts.FIGURES_JSON, self.record)

    def _add(self, entry: dict) -> None:
        self.record["figures"] = [f for f in self.record["figures"] if f["name"] != entry["name"]] + [entry]
        self._write()

    def save(self, result, name: str, caption: str) -> SavedFigure:
        """Save a :class:`FigureResult` (or a bare Figure); a None figure is recorded with its note."""
        if isinstance(result, Figure):
            fig, data, note = result, None, None
        else:
            fig, data, note = result[0], result[1], getattr(result, "note", None)
        files = {}
        if fig is not None:
            for fmt in self.formats:
                path = self.folder / f"{name}.{fmt}"
                fig.savefig(path, dpi=self.dpi, bbox_inches="tight")
                files[fmt] = path.name
        if isinstance(data, pd.DataFrame):
            path = self.folder / f"{name}.csv"
            data.to_csv(path, index=False)
            files["csv"] = path.name
        self._add({"name": name, "caption": caption, "note": note, "files": files, "kind": "figure"})
        return SavedFigure(name, files, caption, note, self.folder)

    def save_html(self, html_text: str, name: str, caption: str) -> Path:
        path = self.folder / f"{name}.html"
        path.write_text(html_text, encoding="utf-8")
        self._add({"name": name, "caption": caption, "note": None, "files": {"html": path.name}, "kind": "html"})
        return path

    def save_table(self, table: pd.DataFrame, name: str, caption: str, index: bool = True) -> Path:
        path = self.folder / f"{name}.csv"
        table.to_csv(path, index=index)
        self._add({"name": name, "caption": caption, "note": None, "files": {"csv": path.name}, "kind": "table"})
        return path


def read_figures_json(folder: str | Path) -> dict | None:
    path = Path(folder) / artifacts.FIGURES_JSON
    return json.loads(path.read_text()) if path.exists() else None


def rotated_control_mask(df: pd.DataFrame, chosen: np.ndarray, score: str = "alignment_mean_rotated") -> np.ndarray:
    """The control set of Fig. 3: in each layer, as many neurons as the chosen set has there, the top ones by their
    score in the rotated control (``universality``'s ``*_rotated`` columns); empty when the column is absent."""
    out = np.zeros(len(df), bool)
    if score not in df:
        return out
    chosen = np.asarray(chosen, bool)
    for layer in np.unique(df["layer"]):
        rows = np.flatnonzero(df["layer"].to_numpy() == layer)
        k = int(chosen[rows].sum())
        if k:
            top = rows[np.argsort(-df[score].to_numpy(float)[rows], kind="stable")[:k]]
            out[top] = True
    return out
