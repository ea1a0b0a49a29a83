"""The analysis dashboard: one self-contained interactive HTML file (plotly, its JS embedded, no CDN).

    python -m neuron_lib.browser dashboard [--out figures/browser/dashboard.html]

Four panels, drawn from the index's ``neurons`` table (the neuron dataframes' columns):

1. correlation distributions — ``max_corr``, ``mean_corr``, ``mean_baseline`` and ``excess_corr`` of every
   model that has a correlation table;
2. universal vs other neurons — box plots of activation, weight and vocabulary properties split by the paper's
   ``is_universal`` (and by ``is_universal_aligned`` when the alignment criterion's columns exist);
3. cross-seed layer matches — for each other seed model, the share of a reference layer's neurons whose best
   match (``max_corr_layer_{m}``) lies in each layer of model m;
4. the network of universal neurons' connections across the seed models — nodes: the reference model's universal
   neurons and their best matches in each other model (x = model, y = layer + neuron / d_mlp); edges: best-match
   links, coloured by correlation.
"""

from __future__ import annotations

import html
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from neuron_lib import artifacts
from neuron_lib.browser.store import BrowserStore
from neuron_lib.common import atomic_write_text

PROPERTY_PANELS = ("kurt", "skew", "sparsity", "input_bias", "w_out_norm", "vocab_kurt", "in_out_sim", "mean")


def _frame(store: BrowserStore) -> pd.DataFrame:
    con = sqlite3.connect(f"{store.path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return pd.read_sql_query("SELECT * FROM neurons", con)
    finally:
        con.close()


def figures(store: BrowserStore) -> list[tuple[str, object]]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    df = _frame(store)
    out: list[tuple[str, object]] = []
    # 1 -------------------------------------------------------------- correlation distributions
    have = df[df["mean_corr"].notna()] if "mean_corr" in df else df.iloc[:0]
    fig = go.Figure()
    for col in ("max_corr", "mean_corr", "mean_baseline", "excess_corr"):
        if col in have and have[col].notna().any():
            for model, g in have.groupby("model"):
                fig.add_trace(go.Histogram(x=g[col], name=f"{model} {col}", opacity=0.6, nbinsx=60))
    fig.update_layout(barmode="overlay", title="Correlation distributions", xaxis_title="correlation", height=420)
    out.append(("correlations", fig))
    # 2 -------------------------------------------------------------- universal vs other
    props = [p for p in PROPERTY_PANELS if p in df and df[p].notna().any()]
    splits = [c for c in ("is_universal", "is_universal_aligned") if c in df and df[c].notna().any()]
    if props and splits:
        fig = make_subplots(rows=1, cols=len(props), subplot_titles=props)
        for j, p in enumerate(props, 1):
            for split in splits:
                for flag, colour in ((1, "#2f855a"), (0, "#a0aec0")):
                    vals = df.loc[df[split] == flag, p].dropna()
                    label = f"{split}={'yes' if flag else 'no'}"
                    fig.add_trace(
                        go.Box(y=vals, name=label, marker_color=colour, showlegend=j == 1, legendgroup=label),
                        row=1,
                        col=j,
                    )
        fig.update_layout(title="Universal vs other neurons", height=420)
    else:
        fig = go.Figure().update_layout(title="Universal vs other neurons (no universality columns yet)")
    out.append(("properties", fig))
    # 3 -------------------------------------------------------------- cross-seed layer matches
    others = sorted(c[len("max_corr_layer_") :] for c in df.columns if c.startswith("max_corr_layer_"))
    refs = [m for m, g in df.groupby("model") if others and g[f"max_corr_layer_{others[0]}"].notna().any()]
    if others and refs:
        fig = make_subplots(rows=1, cols=len(others), subplot_titles=[f"{refs[0]} → {m}" for m in others])
        ref = df[df["model"] == refs[0]]
        for j, m in enumerate(others, 1):
            col = f"max_corr_layer_{m}"
            sub = ref[ref[col].notna()]
            tab = pd.crosstab(sub["layer"], sub[col].astype(int), normalize="index")
            fig.add_trace(
                go.Heatmap(
                    z=tab.to_numpy(),
                    x=[f"L{int(c)}" for c in tab.columns],
                    y=[f"L{int(r)}" for r in tab.index],
                    coloraxis="coloraxis",
                    hovertemplate="ref %{y} → %{x}: %{z:.2f}<extra></extra>",
                ),
                row=1,
                col=j,
            )
        fig.update_layout(
            title="Cross-seed layer matches (share of a layer's best matches)",
            height=380,
            coloraxis={"colorscale": "Viridis"},
        )
    else:
        fig = go.Figure().update_layout(title="Cross-seed layer matches (no correlation table yet)")
    out.append(("layer_matches", fig))
    # 4 -------------------------------------------------------------- network of universal neurons
    fig = go.Figure()
    if others and refs and "is_universal" in df:
        ref = df[(df["model"] == refs[0]) & (df["is_universal"] == 1)]
        models = [refs[0], *others]
        dm = {m: store.model(m)["d_mlp"] if store.model(m) else int(df["neuron"].max()) + 1 for m in models}
        dm[refs[0]] = store.model(refs[0])["d_mlp"]
        ex, ey, nodes = [], [], {}
        corr_x, corr_y, corr_c, corr_t = [], [], [], []
        for r in ref.itertuples(index=False):
            d = r._asdict()
            y0 = d["layer"] + d["neuron"] / dm[refs[0]]
            nodes[(refs[0], d["layer"], d["neuron"])] = (0, y0)
            for j, m in enumerate(others, 1):
                pl, pn, c = d.get(f"max_corr_layer_{m}"), d.get(f"max_corr_neuron_{m}"), d.get(f"max_corr_{m}")
                if pl is None or pn is None or (isinstance(pl, float) and np.isnan(pl)):
                    continue
                y1 = int(pl) + int(pn) / dm.get(m, dm[refs[0]])
                nodes[(m, int(pl), int(pn))] = (j, y1)
                ex += [0, j, None]
                ey += [y0, y1, None]
                corr_x.append(j / 2)
                corr_y.append((y0 + y1) / 2)
                corr_c.append(c)
                corr_t.append(f"{refs[0]} L{d['layer']} N{d['neuron']} ↔ {m} L{int(pl)} N{int(pn)}: {c:.3f}")
        fig.add_trace(
            go.Scatter(
                x=ex, y=ey, mode="lines", line={"width": 0.6, "color": "#a0aec0"}, hoverinfo="skip", name="best match"
            )
        )
        fig.add_trace(
            go.Scatter(
                x=corr_x,
                y=corr_y,
                mode="markers",
                marker={"size": 4, "color": corr_c, "colorscale": "Viridis", "showscale": True},
                text=corr_t,
                hoverinfo="text",
                name="correlation",
            )
        )
        xs = [v[0] for v in nodes.values()]
        ys = [v[1] for v in nodes.values()]
        labels = [f"{m} L{l} N{n}" for (m, l, n) in nodes]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                marker={"size": 7, "color": "#dd6b20"},
                text=labels,
                hoverinfo="text",
                name="neuron",
            )
        )
        fig.update_layout(
            title=f"Universal neurons of {refs[0]} and their best matches ({len(ref)} universal neurons)",
            xaxis={"tickvals": list(range(len(models))), "ticktext": models},
            yaxis_title="layer (+ neuron / d_mlp)",
            height=560,
        )
    else:
        fig.update_layout(title="Network of universal neurons (no correlation table yet)")
    out.append(("network", fig))
    return out


def write_dashboard(out: str | Path, index: str | Path | None = None) -> Path:
    """Write the dashboard HTML (plotly.js embedded once) and return its path."""
    store = BrowserStore(index or artifacts.browser_index())
    parts = []
    for i, (name, fig) in enumerate(figures(store)):
        div = fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"panel-{name}")
        parts.append(f"<section class='panel' data-panel='{html.escape(name)}'>{div}</section>")
    text = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>neuron_lib dashboard</title>"
        "<style>body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}</style></head><body>"
        f"<h1>neuron_lib analysis dashboard</h1><p>models: {html.escape(', '.join(store.model_names()))}</p>"
        + "".join(parts)
        + "</body></html>"
    )
    return atomic_write_text(Path(out), text)
