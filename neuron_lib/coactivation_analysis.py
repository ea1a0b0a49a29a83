"""Analyses and heatmaps of a prompt run's neuron activity (drawn by ``paper_notebooks/coactivation_graph.ipynb``).

Input: a finished ``prompts`` run (:func:`load_run`): the per-token table (``tokens``), the per-sample table
(``samples``), the binary samples × neurons matrix and the binary generated-tokens × neurons matrix (format 2 of
the prompts stage; row ``r`` = row ``r`` of ``tokens``), and the column → neuron map (``neurons``). A neuron is
active on a token where ``hook_post > threshold`` at the position that predicted it (the input's last token,
``input_token``); active in a sample where it is active on one of its generated tokens.

Every function returns a :class:`figures.FigureResult` whose ``data`` is what was drawn:

- :func:`token_clusters`: PCA of the tokens' activation patterns (the linear-kernel Gram matrix ``X Xᵀ``,
  double-centred, eigendecomposed: the exact PCA scores without densifying ``X``), k-means
  (``scipy.cluster.vq.kmeans2``, seeded, ``minit="++"``) on the first ``n_components`` scores, drawn in the
  first two and coloured by token and by cluster;
- :func:`frequent_neurons`: the neurons active in the most samples;
- :func:`token_specific_neurons` / :func:`position_specific_neurons`: for neuron ``n`` and label ``v`` (a token,
  or a position), over generated tokens: ``precision = |n fires ∧ label v| / |n fires|``,
  ``recall = |n fires ∧ label v| / |label v|``, ``f1``; each neuron's best label (highest f1; ties → the more
  frequent, then the first label in sort order);
- :func:`prompt_similarity`: Jaccard similarity of the samples' active sets, mean over pairs of samples of the
  same prompt (within) and over pairs of samples of different prompts (across), per prompt and overall;
- :func:`activity_heatmap` (:func:`sample_heatmap`, :func:`token_heatmap`): each layer's neurons folded into a
  near-square grid (:func:`fold_shape`; neuron ``d`` at row ``d // cols``, column ``d % cols``), all layers in
  one figure in ``figure_rows`` rows, in the modes ``default`` (blue background, red active neurons, the prompt,
  the text and each layer's active count as text), ``cinematic`` (black background, white active neurons, the
  input text only, transparent figure background) and ``cinematic_no_text``. A sample's heatmap shows its
  per-sample activity (active on some generated token); a token's heatmap that of one generated token.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neuron_lib import artifacts
from neuron_lib.common import NeuronLibError
from neuron_lib.figures import FigureResult, new_figure

HEATMAP_MODES = ("default", "cinematic", "cinematic_no_text")


# ---------------------------------------------------------------- inputs
@dataclasses.dataclass
class PromptRun:
    """A finished prompt run's tables and matrices."""

    model: str
    run: str
    folder: Path
    manifest: dict
    tokens: pd.DataFrame
    samples: pd.DataFrame
    matrix: Any  # CSR samples × columns
    token_matrix: Any  # CSR generated tokens × columns
    neurons: pd.DataFrame  # column, id, layer, dimension
    n_layers: int
    d_mlp: int

    @property
    def ids(self) -> np.ndarray:
        return self.neurons["id"].to_numpy(np.int64)

    def sample_ids(self, sample_id: int) -> np.ndarray:
        """The neuron ids active in one sample."""
        return self.ids[self.matrix[int(sample_id)].indices]

    def token_ids(self, token_row: int) -> np.ndarray:
        """The neuron ids active on one generated token (a row of ``tokens``)."""
        return self.ids[self.token_matrix[int(token_row)].indices]

    def source(self) -> dict:
        return {"kind": "prompt run", "model": self.model, "path": str(self.folder), "manifest": self.manifest}


def load_run(model: str, run: str, activation_threshold: float | None = None) -> PromptRun:
    """A finished prompt run (``prompts.load_prompt_run``: another model or threshold is refused) with its
    per-token and per-sample tables; a run without the per-token matrix (format 1) is refused."""
    from neuron_lib.prompts import load_prompt_run

    r = load_prompt_run(model, run, expect_threshold=activation_threshold)
    if r["token_matrix"] is None:
        raise NeuronLibError(
            f"{r['folder']} has no {artifacts.PROMPT_TOKEN_MATRIX_FILE} (a prompt run of format 1); re-run "
            f"`python -m neuron_lib.prompts --model {model} --prompts-csv <csv> --overwrite`"
        )
    folder = Path(r["folder"])
    info = r["manifest"]["model_info"]
    tokens = pd.read_parquet(folder / f"{artifacts.PROMPT_TOKENS_STEM}.parquet")
    samples = pd.read_parquet(folder / f"{artifacts.PROMPT_SAMPLES_STEM}.parquet")
    return PromptRun(
        model,
        run,
        folder,
        r["manifest"],
        tokens,
        samples,
        r["matrix"],
        r["token_matrix"],
        r["neurons"],
        int(info["n_layers"]),
        int(info["d_mlp"]),
    )


def _neuron_frame(neurons: pd.DataFrame, cols: np.ndarray) -> pd.DataFrame:
    return neurons.iloc[cols][["id", "layer", "dimension"]].reset_index(drop=True)


# ---------------------------------------------------------------- token clusters
def pca_scores(matrix, n_components: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """PCA scores ``[rows, n_components]`` of the rows of a (sparse) matrix and each component's share of the
    variance, from the double-centred Gram matrix; signs fixed so each component's largest |score| is positive."""
    import scipy.sparse as sp

    X = sp.csr_matrix(matrix, dtype=np.float64)
    n = X.shape[0]
    if n < 2:
        raise NeuronLibError(f"PCA needs at least 2 rows, got {n}")
    K = np.asarray((X @ X.T).todense())
    row = K.mean(1, keepdims=True)
    Kc = K - row - row.T + K.mean()
    vals, vecs = np.linalg.eigh(Kc)
    order = np.argsort(vals)[::-1][: min(n_components, n)]
    vals, vecs = np.clip(vals[order], 0, None), vecs[:, order]
    scores = vecs * np.sqrt(vals)
    flip = np.sign(scores[np.abs(scores).argmax(0), np.arange(scores.shape[1])])
    scores *= np.where(flip == 0, 1, flip)
    total = max(float(np.trace(Kc)), 1e-300)
    return scores, vals / total


def token_clusters(
    matrix,
    labels: Sequence[str],
    n_clusters: int = 8,
    n_components: int = 10,
    seed: int = 0,
    top_labels: int = 10,
    title: str = "Tokens by activation pattern",
) -> FigureResult:
    """PCA + seeded k-means of the rows' activation patterns, drawn coloured by token and by cluster."""
    from scipy.cluster.vq import kmeans2

    labels = np.asarray([str(v) for v in labels], dtype=object)
    scores, share = pca_scores(matrix, n_components)
    k = max(1, min(int(n_clusters), len(labels)))
    with np.errstate(all="ignore"):
        _, cluster = kmeans2(scores, k, minit="++", rng=np.random.default_rng(seed))
    pc2 = scores[:, 1] if scores.shape[1] > 1 else np.zeros(len(scores))
    data = pd.DataFrame({"row": np.arange(len(labels)), "label": labels, "pc1": scores[:, 0], "pc2": pc2})
    data["cluster"] = cluster.astype(np.int64)
    frequent = pd.Series(labels).value_counts(sort=True).index[:top_labels].tolist()
    data["colour_label"] = np.where(np.isin(labels, frequent), labels, "other")

    fig, axes = new_figure(1, 2, figsize=(11, 4.5))
    ax = axes[0, 0]
    cmap = _colours(len(frequent))
    other = data[data.colour_label == "other"]
    ax.scatter(other.pc1, other.pc2, s=10, c="lightgray", label="other")
    for i, lab in enumerate(frequent):
        part = data[data.colour_label == lab]
        ax.scatter(part.pc1, part.pc2, s=12, color=cmap[i], label=repr(lab))
    ax.legend(fontsize=7, markerscale=1.5, loc="best", title="token", title_fontsize=7)
    ax.set_title("coloured by token")
    ax2 = axes[0, 1]
    sc = ax2.scatter(data.pc1, data.pc2, s=10, c=data.cluster, cmap="tab10" if k <= 10 else "tab20")
    fig.colorbar(sc, ax=ax2, label="k-means cluster")
    ax2.set_title(f"coloured by k-means cluster (k = {k}, seed {seed})")
    for a in (ax, ax2):
        a.set_xlabel(f"PC1 ({share[0]:.0%} of variance)")
        a.set_ylabel(f"PC2 ({share[1]:.0%} of variance)" if len(share) > 1 else "PC2")
    fig.suptitle(title)
    return FigureResult(fig, data.drop(columns="colour_label"))


def _colours(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


# ---------------------------------------------------------------- frequencies and specificity
def frequent_neurons(matrix, neurons: pd.DataFrame, top: int = 20, what: str = "samples") -> FigureResult:
    """The ``top`` neurons active in the most rows (samples or tokens) of a binary matrix."""
    counts = np.asarray(matrix.sum(0)).ravel().astype(np.int64)
    n_rows = matrix.shape[0]
    order = np.lexsort((neurons["id"].to_numpy(), -counts))[:top]
    data = _neuron_frame(neurons, order).assign(count=counts[order], frequency=counts[order] / max(n_rows, 1))
    fig, axes = new_figure(figsize=(max(5, 0.35 * len(data) + 2), 3.8))
    ax = axes[0, 0]
    ax.bar(np.arange(len(data)), data["frequency"], color="tab:blue")
    ax.set_xticks(np.arange(len(data)), [f"L{r.layer}.{r.dimension}" for r in data.itertuples()], rotation=90)
    ax.set_ylabel(f"fraction of {what} where active")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"The {len(data)} most frequently active neurons ({n_rows} {what})")
    return FigureResult(fig, data)


def label_specificity(matrix, labels: Sequence, min_support: int = 1) -> pd.DataFrame:
    """Every (neuron column, label) pair that co-occurs: ``column, label, support`` (rows with the label),
    ``fires`` (rows where the column is active), ``both``, ``precision``, ``recall``, ``f1``."""
    import scipy.sparse as sp

    X = sp.csr_matrix(matrix, dtype=np.int64)
    values, codes = np.unique(np.asarray(labels), return_inverse=True)
    onehot = sp.csr_matrix(
        (np.ones(len(codes), np.int64), (codes, np.arange(len(codes)))), shape=(len(values), len(codes))
    )
    both = (onehot @ X).tocoo()  # labels × columns
    support = np.bincount(codes, minlength=len(values))
    fires = np.asarray(X.sum(0)).ravel()
    df = pd.DataFrame(
        {
            "column": both.col.astype(np.int64),
            "label": values[both.row],
            "support": support[both.row],
            "fires": fires[both.col],
            "both": both.data.astype(np.int64),
        }
    )
    df = df[(df.both > 0) & (df.support >= min_support)]
    df["precision"] = df.both / df.fires
    df["recall"] = df.both / df.support
    df["f1"] = 2 * df.precision * df.recall / (df.precision + df.recall)
    return df.reset_index(drop=True)


def best_labels(matrix, neurons: pd.DataFrame, labels: Sequence, min_support: int = 1) -> pd.DataFrame:
    """Each neuron's best label by f1 (ties → larger support, then the first label), best neurons first."""
    df = label_specificity(matrix, labels, min_support)
    df = df.sort_values(["column", "f1", "support", "label"], ascending=[True, False, False, True], kind="stable")
    best = df.drop_duplicates("column").sort_values(["f1", "both", "column"], ascending=[False, False, True])
    cols = best["column"].to_numpy()
    out = _neuron_frame(neurons, cols)
    for c in ("label", "support", "fires", "both", "precision", "recall", "f1"):
        out[c] = best[c].to_numpy()
    return out


def _specificity_figure(data: pd.DataFrame, top: int, what: str, title: str) -> FigureResult:
    fig, axes = new_figure(figsize=(6, 4.5))
    ax = axes[0, 0]
    ax.scatter(data["recall"], data["precision"], s=8, c="lightgray", label="every neuron's best " + what)
    head = data.head(top)
    ax.scatter(head["recall"], head["precision"], s=14, c="tab:red", label=f"top {len(head)} by f1")
    for r in head.head(10).itertuples():
        ax.annotate(f"L{r.layer}.{r.dimension}: {r.label!r}", (r.recall, r.precision), fontsize=6)
    ax.set_xlabel(f"recall: P(fires | {what})")
    ax.set_ylabel(f"precision: P({what} | fires)")
    ax.set_xlim(-0.02, 1.05)
    ax.set_ylim(-0.02, 1.05)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(title)
    return FigureResult(fig, data)


def token_specific_neurons(
    matrix, neurons: pd.DataFrame, tokens: Sequence[str], top: int = 20, min_support: int = 2
) -> FigureResult:
    """Neurons whose firing singles out one token (precision / recall over generated tokens; tokens seen fewer
    than ``min_support`` times are not candidates). ``data``: every neuron's best token, best first."""
    data = best_labels(matrix, neurons, [str(t) for t in tokens], min_support)
    return _specificity_figure(data, top, "token", "Token-specific neurons")


def position_specific_neurons(
    matrix, neurons: pd.DataFrame, positions: Sequence[int], top: int = 20, min_support: int = 2
) -> FigureResult:
    """Neurons whose firing singles out one position (``token_position``: 0 = first generated token)."""
    data = best_labels(matrix, neurons, np.asarray(positions, dtype=np.int64), min_support)
    return _specificity_figure(data, top, "position", "Position-specific neurons")


# ---------------------------------------------------------------- same versus different prompt
def jaccard_matrix(matrix) -> np.ndarray:
    """Pairwise Jaccard similarity of the rows' active sets (two empty sets: 1)."""
    import scipy.sparse as sp

    X = sp.csr_matrix(matrix, dtype=np.float64)
    inter = np.asarray((X @ X.T).todense())
    size = np.diag(inter)
    union = size[:, None] + size[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 1.0)


def prompt_similarity(matrix, prompt_idx: Sequence[int]) -> FigureResult:
    """Mean Jaccard similarity of the samples' active sets within a prompt and across prompts."""
    prompt_idx = np.asarray(prompt_idx, dtype=np.int64)
    J = jaccard_matrix(matrix)
    n = len(prompt_idx)
    same = prompt_idx[:, None] == prompt_idx[None, :]
    off = ~np.eye(n, dtype=bool)
    rows = []
    for p in np.unique(prompt_idx):
        mine = prompt_idx == p
        within = J[np.ix_(mine, mine)][off[np.ix_(mine, mine)]]
        across = J[np.ix_(mine, ~mine)].ravel()
        rows.append(_sim_row(int(p), within, across))
    rows.append(_sim_row("all", J[same & off], J[~same]))
    data = pd.DataFrame(rows)

    fig, axes = new_figure(1, 2, figsize=(11, 4.5))
    order = np.argsort(prompt_idx, kind="stable")
    im = axes[0, 0].imshow(J[np.ix_(order, order)], vmin=0, vmax=1, cmap="viridis")
    fig.colorbar(im, ax=axes[0, 0], label="Jaccard")
    axes[0, 0].set_title("samples (sorted by prompt)")
    per = data[data.prompt != "all"]
    x = np.arange(len(per))
    ax = axes[0, 1]
    ax.bar(x - 0.2, per["within"], 0.4, label="same prompt")
    ax.bar(x + 0.2, per["across"], 0.4, label="different prompts")
    ax.set_xticks(x, [str(p) for p in per["prompt"]])
    ax.set_xlabel("prompt")
    ax.set_ylabel("mean Jaccard of active sets")
    overall = data.iloc[-1]
    ax.set_title(f"overall: same {overall.within:.3f}, different {overall.across:.3f}")
    ax.legend(fontsize=8)
    note = None
    if per["within"].isna().any():
        note = "prompts with a single sample have no within-prompt pair (NaN)"
    return FigureResult(fig, data, note)


def _sim_row(prompt, within: np.ndarray, across: np.ndarray) -> dict:
    """Means over ordered pairs (each unordered pair twice within, so the mean is the same)."""
    return {
        "prompt": prompt,
        "within": float(within.mean()) if len(within) else float("nan"),
        "across": float(across.mean()) if len(across) else float("nan"),
    }


# ---------------------------------------------------------------- heatmaps
def fold_shape(d_mlp: int) -> tuple[int, int]:
    """``(rows, cols)`` of the near-square grid one layer's ``d_mlp`` neurons are folded into
    (``cols = ceil(sqrt(d_mlp))``, ``rows = ceil(d_mlp / cols)``; e.g. 3072 → 55 × 56)."""
    cols = math.ceil(math.sqrt(int(d_mlp)))
    return math.ceil(int(d_mlp) / cols), cols


def activity_grid(active_ids, n_layers: int, d_mlp: int) -> np.ndarray:
    """``[n_layers, rows, cols]`` float: 1 where the neuron is active, 0 where not, NaN past ``d_mlp``."""
    rows, cols = fold_shape(d_mlp)
    flat = np.zeros((n_layers, rows * cols))
    flat[:, d_mlp:] = np.nan
    ids = np.asarray(active_ids, dtype=np.int64)
    if len(ids) and (ids.min() < 0 or ids.max() >= n_layers * d_mlp):
        raise NeuronLibError(f"neuron ids must be in [0, {n_layers * d_mlp}), got {ids.min()}..{ids.max()}")
    flat[ids // d_mlp, ids % d_mlp] = 1.0
    return flat.reshape(n_layers, rows, cols)


def activity_heatmap(
    active_ids,
    n_layers: int,
    d_mlp: int,
    mode: str = "default",
    figure_rows: int = 2,
    prompt: str | None = None,
    text: str | None = None,
    title: str | None = None,
    panel_size: float = 2.2,
) -> FigureResult:
    """All layers' active neurons as folded heatmaps in ``figure_rows`` rows (modes in the module docstring).
    ``data``: one row per neuron (``id, layer, dimension, row, col, active``)."""
    from matplotlib.colors import ListedColormap

    if mode not in HEATMAP_MODES:
        raise NeuronLibError(f"heatmap mode must be one of {HEATMAP_MODES}, got {mode!r}")
    grid = activity_grid(active_ids, n_layers, d_mlp)
    rows, cols = fold_shape(d_mlp)
    n_rows = max(1, min(int(figure_rows), n_layers))
    n_cols = math.ceil(n_layers / n_rows)
    cinematic = mode != "default"
    back, front = ("black", "white") if cinematic else ("#1f4e9c", "#e8292b")
    fig, axes = new_figure(n_rows, n_cols, figsize=(panel_size * n_cols + 0.5, panel_size * n_rows * rows / cols + 1))
    cmap = ListedColormap([back, front]).with_extremes(bad=back if cinematic else "white")
    counts = np.nansum(grid.reshape(n_layers, -1), 1).astype(int)
    for i, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n_layers:
            ax.set_axis_off()
            continue
        ax.imshow(np.ma.masked_invalid(grid[i]), cmap=cmap, vmin=0, vmax=1, interpolation="nearest", aspect="equal")
        for spine in ax.spines.values():
            spine.set_visible(not cinematic)
        if mode == "default":
            ax.set_title(f"layer {i}: {counts[i]} active", fontsize=8)
    if mode == "default":
        lines = [title] if title else []
        if prompt is not None:
            lines.append("prompt: " + _short(prompt))
        if text is not None:
            lines.append("text: " + _short(text))
        lines.append(f"{int(counts.sum())} of {n_layers * d_mlp} neurons active")
        fig.suptitle("\n".join(lines), fontsize=8)
    else:
        fig.patch.set_alpha(0.0)  # a transparent figure background (the axes stay black)
        if mode == "cinematic" and text is not None:
            fig.suptitle(_short(text, 200), color="white", fontsize=9)
    ids = np.arange(n_layers * d_mlp)
    dims = ids % d_mlp
    data = pd.DataFrame(
        {
            "id": ids,
            "layer": ids // d_mlp,
            "dimension": dims,
            "row": dims // cols,
            "col": dims % cols,
            "active": grid.reshape(n_layers, -1)[:, :d_mlp].reshape(-1).astype(np.int8),
        }
    )
    return FigureResult(fig, data)


def _short(text: str, width: int = 120) -> str:
    text = str(text).replace("\n", "⏎")
    return "\n".join(textwrap.wrap(text, width)[:3]) or "''"


def sample_heatmap(run: PromptRun, sample_id: int, mode: str = "default", figure_rows: int = 2) -> FigureResult:
    """One sample's activity (the neurons active on some generated token) as :func:`activity_heatmap`."""
    row = run.samples[run.samples.sample_id == int(sample_id)]
    if row.empty:
        raise NeuronLibError(f"no sample {sample_id} in {run.folder} (it has {len(run.samples)})")
    r = row.iloc[0]
    full = f"{r.prompt}{r.generated_text}"
    return activity_heatmap(
        run.sample_ids(int(sample_id)),
        run.n_layers,
        run.d_mlp,
        mode,
        figure_rows,
        prompt=r.prompt,
        text=full if mode != "default" else r.generated_text,
        title=f"sample {int(sample_id)} (prompt {int(r.prompt_idx)})",
    )


def token_heatmap(run: PromptRun, token_row: int, mode: str = "default", figure_rows: int = 2) -> FigureResult:
    """One generated token's activity (a row of ``tokens``) as :func:`activity_heatmap`."""
    if not 0 <= int(token_row) < len(run.tokens):
        raise NeuronLibError(f"no token row {token_row} in {run.folder} (it has {len(run.tokens)})")
    r = run.tokens.iloc[int(token_row)]
    prompt = run.samples.set_index("sample_id").loc[int(r.sample_id), "prompt"]
    return activity_heatmap(
        run.token_ids(int(token_row)),
        run.n_layers,
        run.d_mlp,
        mode,
        figure_rows,
        prompt=prompt,
        text=r.input_text if mode != "default" else f"{r.input_text} → {r.output!r}",
        title=f"sample {int(r.sample_id)}, generated token {int(r.token_position)}: input token {r.input_token!r}",
    )


# ---------------------------------------------------------------- the graph's and the perturbations' outputs
@dataclasses.dataclass
class GraphOutputs:
    """A finished co-activation graph (``coactivation``) and, when it ran, its perturbation results (``perturb``)."""

    folder: Path
    manifest: dict
    thresholds: pd.DataFrame
    histograms: dict[str, pd.DataFrame]  # node_weight, edge_weight, degree → bin_left, bin_right, count
    nodes: pd.DataFrame
    perturb_folder: Path
    perturb_manifest: dict | None
    loss_kl: pd.DataFrame | None
    comparison: pd.DataFrame | None

    def source(self) -> dict:
        return {
            "kind": "co-activation graph",
            "model": self.manifest.get("model"),
            "path": str(self.folder),
            "manifest": self.manifest,
            "note": None if self.loss_kl is not None else "no perturbation loss / KL results",
        }


HISTOGRAMS = ("node_weight", "edge_weight", "degree")


def load_graph_outputs(model: str, run: str, activation_threshold: float | None = None) -> GraphOutputs:
    """The graph's tables (refusing a graph of another model or threshold) and the perturbation tables if any."""
    from neuron_lib.coactivation import open_graph
    from neuron_lib.common import read_json

    folder, manifest = open_graph(model, run, activation_threshold)
    hists = {w: pd.read_csv(folder / (artifacts.GRAPH_HISTOGRAM_STEM.format(what=w) + ".csv")) for w in HISTOGRAMS}
    pfolder = artifacts.perturbation_results(model, run)
    pmanifest = read_json(artifacts.manifest_path(pfolder)) if artifacts.manifest_path(pfolder).exists() else None
    loss_kl = comparison = None
    if pmanifest is not None and (pfolder / artifacts.PERTURB_LOSS_FILE).exists():
        loss_kl = pd.read_csv(pfolder / artifacts.PERTURB_LOSS_FILE)
        if (pfolder / artifacts.PERTURB_COMPARISON_FILE).exists():
            comparison = pd.read_csv(pfolder / artifacts.PERTURB_COMPARISON_FILE)
    return GraphOutputs(
        folder,
        manifest,
        pd.read_csv(folder / artifacts.GRAPH_THRESHOLDS_FILE),
        hists,
        pd.read_csv(folder / artifacts.GRAPH_NODES_FILE),
        pfolder,
        pmanifest,
        loss_kl,
        comparison,
    )


def histograms_figure(histograms: dict[str, pd.DataFrame], log: bool = True) -> FigureResult:
    """The graph's node-weight, edge-weight and degree histograms (from the stage's ``histogram_*.csv``)."""
    fig, axes = new_figure(1, len(histograms), figsize=(4.2 * len(histograms), 3.5))
    parts = []
    for ax, (what, h) in zip(axes.ravel(), histograms.items()):
        if len(h):
            ax.bar(h.bin_left, h["count"], width=h.bin_right - h.bin_left, align="edge", color="tab:blue")
        if log and (h["count"] > 0).any():
            ax.set_yscale("log")
        ax.set_xlabel(what.replace("_", " "))
        ax.set_ylabel("count")
        ax.set_title(f"{what.replace('_', ' ')} ({int(h['count'].sum())})")
        parts.append(h.assign(what=what))
    data = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return FigureResult(fig, data)


def perturbation_figure(loss_kl: pd.DataFrame | None, comparison: pd.DataFrame | None = None) -> FigureResult:
    """Δloss (ablated − unperturbed held-out loss) and KL(unperturbed ‖ ablated) of every subset with their
    bootstrap 95% intervals, centrality subsets beside their random controls; and, from ``comparison``, the
    paired difference subset − mean of its controls with its interval (above 0: the centrality subset matters
    more than chance)."""
    if loss_kl is None or not len(loss_kl):
        return FigureResult(None, None, "no perturbation loss / KL results (run perturb with --token-dataset)")
    base = loss_kl[loss_kl.kind == "none"]
    base_loss = float(base.loss_mean.iloc[0]) if len(base) else float("nan")
    d = loss_kl[loss_kl.kind != "none"].copy()
    d["stem"] = [s.split(".", 1)[1] if k == "random" else s for s, k in zip(d.subset, d.kind)]
    d = d.sort_values(["stem", "kind", "control"], kind="stable").reset_index(drop=True)
    d["delta_loss"] = d.loss_mean - base_loss
    d["delta_loss_ci_low"] = d.loss_ci_low - base_loss
    d["delta_loss_ci_high"] = d.loss_ci_high - base_loss
    n_panels = 3 if comparison is not None and len(comparison) else 2
    fig, axes = new_figure(1, n_panels, figsize=(4.8 * n_panels, 4))
    x = np.arange(len(d))
    colours = np.where(d.kind == "centrality", "tab:red", "tab:gray")
    for ax, (col, lo, hi, ylabel) in zip(
        axes.ravel(),
        [
            ("delta_loss", "delta_loss_ci_low", "delta_loss_ci_high", "Δ loss (nats)"),
            ("kl_mean", "kl_ci_low", "kl_ci_high", "KL(unperturbed ‖ ablated)"),
        ],
    ):
        err = np.vstack([d[col] - d[lo], d[hi] - d[col]])
        ax.bar(x, d[col], color=colours, yerr=np.nan_to_num(err), capsize=2)
        ax.set_xticks(x, d.subset, rotation=90, fontsize=6)
        ax.set_ylabel(ylabel)
        ax.axhline(0, color="black", lw=0.5)
    axes[0, 0].set_title("red: centrality subset, gray: random controls")
    if n_panels == 3:
        ax = axes[0, 2]
        c = comparison.reset_index(drop=True)
        xs = np.arange(len(c))
        for off, col, colour in ((-0.2, "loss_diff", "tab:blue"), (0.2, "kl_diff", "tab:orange")):
            err = np.vstack([c[col] - c[f"{col}_ci_low"], c[f"{col}_ci_high"] - c[col]])
            ax.bar(xs + off, c[col], 0.4, yerr=np.nan_to_num(err), capsize=2, color=colour, label=col)
        ax.set_xticks(xs, c.subset, rotation=90, fontsize=6)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_ylabel("subset − mean of random controls")
        ax.legend(fontsize=7)
        ax.set_title("paired difference, 95% bootstrap CI")
    return FigureResult(fig, d)
