"""Figures and rules of the explanation notebooks (``unigram_neurons``, ``alphabet_neurons``,
``previous_token_neurons``, ``position_neurons``, ``syntax_neurons``, ``topic_neurons``, ``family_count``,
``mysteries``; paper §4.3, §6, Fig 1a–c, 4a–c, 9–11, 15–20).

Three layers, so that every rule is testable on a small synthetic table:

* **loaders**: :func:`find_explanations` / :func:`load` (a finished ``python -m neuron_lib.explain`` run, or an error
  naming the command), :class:`FeatureContext` (the boolean feature of any explained column at every token of the
  rows explain used: vocabulary and unigram features by token id, spaCy labels from the dataset's cache, position
  buckets and subsets, the ``prev_`` version shifted **within** rows), :func:`neuron_activations` (pre- or
  post-activations of chosen neurons on those rows);
* **rules** on the tables: :func:`all_vr`, :func:`best_of` (best feature per neuron over a subset of kinds /
  families), :func:`unigram_families`, :func:`alphabet_neurons`, :func:`explanation_family`,
  :func:`position_mutual_information` (the §15 formula), :func:`max_cosine_similarity` (blocked, never N × N);
* **figures**, each a :class:`figures.FigureResult` holding the numbers it drew: :func:`class_histograms`,
  :func:`class_boxplots`, :func:`position_profiles`, :func:`topic_heatmap`, :func:`family_counts`,
  :func:`sparsity_vs_in_out_sim`, :func:`max_weight_similarity`.

Activations: the notebooks histogram the **pre**-activation, as the paper's figures do; the variance reductions
they quote were computed by explain on the model's own post-activation (``blocks.{l}.mlp.hook_post``).
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from neuron_lib import artifacts
from neuron_lib.common import NeuronLibError
from neuron_lib.figures import FigureResult, _grid, new_figure

ID_COLUMNS = ("neuron", "layer", "neuron_index")
SPACY_FAMILY_NAMES = ("pos", "dep", "morph", "entity", "misc")
LETTERS = tuple(string.ascii_lowercase)
FAMILY_ORDER = ("unigram", "alphabet", "token (vocabulary)", "previous token", "position", "syntax", "topic / subset")
UNEXPLAINED = "unexplained"


def explain_command(model: str) -> str:
    return (
        f"`make all` (or `python -m neuron_lib.explain --model {model} --token-dataset PATH`, "
        "which `python -m neuron_lib.pipeline explain` runs on the zoo)"
    )


# ---------------------------------------------------------------- loaders
def find_explanations(model: str, dataset: str | None = None) -> Path:
    """The finished folder ``$DATAFRAMES_DIR/explanations/{model}/{dataset}``; without ``dataset`` the only one."""
    root = artifacts.root("DATAFRAMES_DIR") / "explanations" / artifacts.model_name(model)
    if dataset:
        folders = [artifacts.explanations(model, dataset)]
    else:
        folders = sorted(p for p in root.glob("*") if p.is_dir()) if root.exists() else []
    done = [f for f in folders if artifacts.manifest_path(f).exists()]
    if not done:
        raise NeuronLibError(
            f"no finished explanations of {model!r} under {root}. Produce them with {explain_command(model)}."
        )
    if len(done) > 1:
        raise NeuronLibError(
            f"several datasets have explanations of {model!r}: {[f.name for f in done]}; pass dataset=..."
        )
    return done[0]


def load(model: str, dataset: str | None = None) -> dict:
    """``explain.load_explanations`` of the folder :func:`find_explanations` finds."""
    from neuron_lib.explain import load_explanations

    folder = find_explanations(model, dataset)
    return load_explanations(model, folder.name)


def all_vr(exp: Mapping) -> pd.DataFrame:
    """Neurons × every explained feature (previous-token features prefixed ``prev_``), indexed by neuron name."""
    vr = exp["vr"].set_index("neuron")
    prev = exp["prev_vr"].set_index("neuron").drop(columns=["layer", "neuron_index"]).add_prefix("prev_")
    return pd.concat([vr, prev], axis=1)


def feature_table(exp: Mapping) -> pd.DataFrame:
    """features.csv of the kept features, indexed by the (``prev_``-prefixed) feature name."""
    f = exp["features"]
    return f[~f["skipped"].astype(bool)].set_index("feature")


def best_of(
    exp: Mapping,
    kinds: Sequence[str] | None = None,
    families: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    exclude_families: Sequence[str] = (),
) -> pd.DataFrame:
    """Per neuron, the feature of highest VR among the kept features of ``kinds`` / ``families`` / ``columns``
    (less ``exclude_families``):
    columns neuron, layer, neuron_index, feature, vr, kind, family; sorted by vr descending (ties: flat order)."""
    table = all_vr(exp)
    feats = feature_table(exp)
    cols = [c for c in table.columns if c in feats.index]
    if kinds is not None:
        cols = [c for c in cols if feats.at[c, "kind"] in kinds]
    if families is not None:
        cols = [c for c in cols if feats.at[c, "family"] in families]
    if columns is not None:
        cols = [c for c in cols if c in set(columns)]
    cols = [c for c in cols if feats.at[c, "family"] not in exclude_families]
    out = table[["layer", "neuron_index"]].reset_index()
    if not cols:
        out["feature"], out["vr"], out["kind"], out["family"] = "", 0.0, "", ""
        return out.iloc[0:0]
    values = table[cols].to_numpy(float)
    arg = values.argmax(1)
    out["feature"] = [cols[i] for i in arg]
    out["vr"] = values[np.arange(len(values)), arg]
    out["kind"] = [feats.at[f, "kind"] for f in out["feature"]]
    out["family"] = [feats.at[f, "family"] for f in out["feature"]]
    order = np.lexsort((out["layer"].to_numpy() * 10**9 + out["neuron_index"].to_numpy(), -out["vr"].to_numpy()))
    return out.iloc[order].reset_index(drop=True)


def explanation_family(feature: str, kind: str, family: str) -> str:
    """The paper's neuron family (§4.3) that a best feature names."""
    if family == "position":  # the previous position's bucket is a position feature, not one of the previous token
        return "position"
    if family == "subset":  # the previous token's row is the token's row
        return "topic / subset"
    if kind in ("prev_token", "prev_sequence"):
        return "previous token"
    if kind == "token":
        if family == "unigram":
            word = feature[: -len("_unigram")]
            return "alphabet" if len(word) == 1 and word.isalpha() else "unigram"
        return "token (vocabulary)"
    if family == "position":
        return "position"
    if family == "subset":
        return "topic / subset"
    return "syntax"


def with_families(best: pd.DataFrame, min_vr: float) -> pd.DataFrame:
    """The best-feature table with a ``family`` column (``unexplained`` where best_vr ≤ ``min_vr``)."""
    out = best.copy()
    kinds = out["best_kind"].to_numpy()
    feats = out["best_feature"].to_numpy()
    fam = []
    for f, k, v in zip(feats, kinds, out["best_vr"].to_numpy(float)):
        base = f[len("prev_") :] if k.startswith("prev") else f
        if v <= min_vr:
            fam.append(UNEXPLAINED)
        elif k in ("sequence", "prev_sequence"):
            family = (
                "position"
                if base.startswith("is_position_")
                else "subset"
                if base.startswith("is_subset_")
                else "spacy"
            )
            fam.append(explanation_family(f, k, family))
        else:
            fam.append(explanation_family(f, k, "unigram" if base.endswith("_unigram") else "vocab"))
    out["family"] = fam
    return out


def unigram_families(best: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Families (paper): the neurons whose best feature is the same unigram feature with VR > ``threshold``.
    One row per feature: feature, n_neurons, neurons ("l.n" list, best first), best_vr, mean_vr; largest first."""
    b = best[
        (best["best_kind"] == "token") & best["best_feature"].str.endswith("_unigram") & (best["best_vr"] > threshold)
    ]
    rows = []
    for feat, g in b.groupby("best_feature"):
        g = g.sort_values("best_vr", ascending=False)
        rows.append(
            {
                "feature": feat,
                "n_neurons": len(g),
                "neurons": list(g["neuron"]),
                "best_vr": float(g["best_vr"].iloc[0]),
                "mean_vr": float(g["best_vr"].mean()),
            }
        )
    cols = ["feature", "n_neurons", "neurons", "best_vr", "mean_vr"]
    if not rows:
        return pd.DataFrame(columns=cols)
    return pd.DataFrame(rows, columns=cols).sort_values(["n_neurons", "best_vr"], ascending=False, ignore_index=True)


def alphabet_neurons(vr: pd.DataFrame, threshold: float = 0.37, letters: Sequence[str] = LETTERS) -> pd.DataFrame:
    """For each letter c, the neuron of highest VR for ``{c}_unigram`` (paper Fig 17): letter, feature, neuron,
    vr, above (vr > threshold); letters whose unigram feature does not exist (too rare / too few variants) have
    an empty neuron and NaN vr."""
    table = vr.set_index("neuron") if "neuron" in vr.columns else vr
    rows = []
    for c in letters:
        col = f"{c}_unigram"
        if col in table.columns:
            v = table[col].astype(float)
            n = v.idxmax()
            rows.append({"letter": c, "feature": col, "neuron": n, "vr": float(v.max())})
        else:
            rows.append({"letter": c, "feature": col, "neuron": "", "vr": float("nan")})
    out = pd.DataFrame(rows)
    out["above"] = out["vr"].fillna(-1) > threshold
    return out


def position_mutual_information(fire_counts: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """§15's binary mutual information between firing and position, per neuron:

    MI = (1/d) Σ_p [ f_p ln(f_p/f + 1e-9) + (1−f_p) ln((1−f_p)/(1−f) + 1e-9) ]

    with f_p = fire_counts[p] / totals[p] the firing rate at position p, f the overall rate and d the number of
    positions (with tokens). ``fire_counts`` [P, N], ``totals`` [P]. A neuron that never or always fires gets 0."""
    fire = np.asarray(fire_counts, dtype=np.float64)
    tot = np.asarray(totals, dtype=np.float64)
    fire = fire.reshape(len(tot), -1)
    ok = tot > 0
    fire, tot = fire[ok], tot[ok]
    f_p = fire / tot[:, None]
    f = fire.sum(0) / tot.sum()
    degenerate = (f <= 0) | (f >= 1)
    fs = np.where(degenerate, 0.5, f)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = f_p * np.log(f_p / fs + 1e-9)
        b = (1 - f_p) * np.log((1 - f_p) / (1 - fs) + 1e-9)
    mi = (np.nan_to_num(a) + np.nan_to_num(b)).sum(0) / len(tot)
    return np.where(degenerate, 0.0, mi)


def max_cosine_similarity(vectors, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each row i, max_{j≠i} cos(v_i, v_j) and its argmax j, computed ``block`` rows at a time (memory
    block × N, never N × N). The paper zeroed the diagonal of the full matrix (so its minimum is 0); here the
    diagonal is excluded. Zero rows have similarity 0 to everything."""
    import torch

    v = torch.as_tensor(np.asarray(vectors), dtype=torch.float32)
    norm = v.norm(dim=1, keepdim=True)
    u = torch.where(norm > 0, v / norm.clamp(min=1e-30), torch.zeros_like(v))
    n = len(u)
    best = np.empty(n, dtype=np.float32)
    arg = np.empty(n, dtype=np.int64)
    for start in range(0, n, block):
        end = min(start + block, n)
        sim = u[start:end] @ u.T  # [b, N]
        sim[torch.arange(end - start), torch.arange(start, end)] = -math.inf
        val, idx = sim.max(1)
        best[start:end] = val.numpy() if n > 1 else 0.0
        arg[start:end] = idx.numpy()
    return best, arg


# ---------------------------------------------------------------- feature values and activations on explain's rows
class FeatureContext:
    """Tokens of the rows an explain run used and the value of any explained feature at every position."""

    def __init__(self, model: str, manifest: Mapping, tokenizer=None, max_rows: int | None = None):
        from neuron_lib import vocab_features as vf
        from neuron_lib.corpus import load_token_dataset
        from neuron_lib.models import load_tokenizer

        self.model, self.manifest = model, dict(manifest)
        path = Path(manifest.get("dataset_path") or "")
        if not path.is_dir():
            found = artifacts.find_token_dataset(manifest["dataset"])
            if found is None:
                raise NeuronLibError(
                    f"the token dataset {manifest['dataset']!r} of the explanations is missing; rebuild it with `make all`"
                )
            path = found
        self.dataset_path = path
        self.tokenizer = tokenizer or load_tokenizer(model)
        ds, _ = load_token_dataset(path, self.tokenizer)
        n_all = int(manifest["n_rows"])
        # the rows explain analysed (older manifests: the first n_rows)
        self.row_ids = np.asarray(manifest.get("row_ids") or range(n_all), dtype=np.int64)
        ds = ds.select(self.row_ids.tolist())
        rows = ds[:n_all]["tokens"]
        all_tokens = np.asarray(rows.numpy() if hasattr(rows, "numpy") else rows, dtype=np.int64)
        keep_all = ~np.isin(all_tokens, manifest.get("token_filter_ids") or [])
        self.n_rows = n_all if max_rows is None else min(n_all, int(max_rows))
        self.tokens = all_tokens[: self.n_rows]
        self.keep = keep_all[: self.n_rows]
        self.ctx = self.tokens.shape[1]
        self.subsets = list(ds[: self.n_rows]["subset"]) if "subset" in ds.column_names else None
        self.strings = vf.decoded_vocab(self.tokenizer)
        V = max(len(self.strings), int(all_tokens.max()) + 1)
        self.strings = self.strings + [""] * (V - len(self.strings))
        self.V = V
        self._vocab = None
        if manifest.get("vocab_table"):
            vdf, _ = vf.load_vocab_df(self.tokenizer, Path(manifest["vocab_table"]).stem)
            self._vocab = vdf
        counts = np.bincount(all_tokens[keep_all], minlength=V)  # as explain counted them (all its rows)
        threshold = manifest.get("unigram_count_threshold")
        self._unigram = vf.unigram_features(self.strings, counts, int(threshold)) if threshold is not None else None
        self._spacy = None

    def token_flags(self, name: str) -> np.ndarray:
        """Boolean [V] of a token feature (vocabulary or unigram column)."""
        for table in (self._unigram, self._vocab):
            if table is not None and name in table.columns:
                out = np.zeros(self.V, dtype=bool)
                vals = table[name].to_numpy(bool)
                out[: len(vals)] = vals
                return out
        raise KeyError(name)

    def _spacy_grid(self) -> pd.DataFrame:
        if self._spacy is None:
            path = artifacts.dataset_df_dir(self.dataset_path) / artifacts.SEQUENCE_FEATURES_FILE
            if not path.exists():
                raise NeuronLibError(f"no spaCy labels cached at {path}; run explain with sequence features")
            df = pd.read_parquet(path)
            rows = df["row"].to_numpy()[:: self.ctx][: self.n_rows]
            if len(rows) < self.n_rows or not (rows == self.row_ids[: self.n_rows]).all():
                raise NeuronLibError(
                    f"the spaCy labels cached at {path} are of other rows than these explanations'; rerun "
                    f"`python -m neuron_lib.explain --model {self.model} --overwrite`"
                )
            self._spacy = df
        return self._spacy

    def mask(self, name: str) -> np.ndarray:
        """Boolean [rows, ctx]: the feature at each position; ``prev_X`` = X one position earlier in the row."""
        from neuron_lib.explain import previous_in_row
        from neuron_lib.sequence_features import position_buckets, position_column

        if name.startswith("prev_"):
            return previous_in_row(self.mask(name[len("prev_") :]), False)
        try:
            return self.token_flags(name)[self.tokens]
        except KeyError:
            pass
        if name.startswith("is_position_"):
            for lo, hi in position_buckets(self.ctx):
                if position_column(lo, hi) == name:
                    pos = np.arange(self.ctx)
                    return np.broadcast_to((pos >= lo) & (pos <= hi), self.tokens.shape).copy()
        if name.startswith("is_subset_") and self.subsets is not None:
            sub = np.array([f"is_subset_{s}" for s in self.subsets])
            return np.broadcast_to((sub == name)[:, None], self.tokens.shape).copy()
        df = self._spacy_grid()
        if name in df.columns:
            return df[name].to_numpy(bool)[: self.n_rows * self.ctx].reshape(self.n_rows, self.ctx)
        raise KeyError(f"feature {name!r} is neither a token, position, subset nor spaCy feature of this run")

    def token_ids_of(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.token_flags(name))


def neuron_activations(
    model, tokens: np.ndarray, neurons: Sequence[tuple[int, int]], hook: str = "pre", batch_size: int = 32
) -> np.ndarray:
    """Activations [rows, ctx, k] (float32) of ``neurons`` on ``tokens``; ``hook`` "pre" or "post". ``model`` is
    a name or a loaded model."""
    import torch

    from neuron_lib.streaming import mlp_activations

    if isinstance(model, str):
        from neuron_lib.models import load_model

        model = load_model(model)
    layers = torch.as_tensor([l for l, _ in neurons], dtype=torch.long)
    idx = torch.as_tensor([n for _, n in neurons], dtype=torch.long)
    out = np.zeros((*tokens.shape, len(neurons)), dtype=np.float32)
    for start in range(0, len(tokens), batch_size):
        toks = torch.as_tensor(tokens[start : start + batch_size], dtype=torch.long)
        pre, post = mlp_activations(model, toks, want_pre=hook == "pre", want_post=hook == "post")
        acts = (pre if hook == "pre" else post).float().cpu()  # [L, B, P, N]
        out[start : start + len(toks)] = acts[layers, :, :, idx].permute(1, 2, 0).numpy()
    return out


def parse_neuron(name: str) -> tuple[int, int]:
    layer, neuron = str(name).upper().lstrip("L").replace("N", "").split(".")
    return int(layer), int(neuron)


def split_classes(values: np.ndarray, masks: Mapping[str, np.ndarray], keep: np.ndarray, other: str | None = "other"):
    """``{class: values where its mask holds}`` over kept positions; classes are exclusive, in the given order
    (a position goes to the first class whose mask holds); ``other`` (if not None) takes the rest."""
    taken = np.zeros(values.shape, dtype=bool)
    out = {}
    for name, m in masks.items():
        sel = m & keep & ~taken
        out[name] = values[sel]
        taken |= sel
    if other is not None:
        out[other] = values[keep & ~taken]
    return out


def unigram_roles(ctx: FeatureContext, feature: str) -> dict[str, np.ndarray]:
    """Fig 4a's classes of a unigram feature: the token as a whole word (``_on_``), at the beginning of a word
    (next token has no leading space and is alphabetic: ``_on|[a-z]``), in the middle of a word (the token has no
    leading space and the previous one ends in a letter: ``[a-z]|on``); the rest is "other"."""
    from neuron_lib.explain import previous_in_row

    on = ctx.token_flags(feature)[ctx.tokens]
    s = ctx.strings
    starts_alpha_nospace = np.array([bool(t) and t[0].isalpha() for t in s])
    ends_alpha = np.array([bool(t) and t[-1].isalpha() for t in s])
    has_space = np.array([bool(t) and t[0].isspace() for t in s])
    nxt = np.empty_like(ctx.tokens)
    nxt[:, :-1] = ctx.tokens[:, 1:]
    nxt[:, -1] = ctx.tokens[:, -1]
    has_next = np.ones(ctx.tokens.shape, dtype=bool)
    has_next[:, -1] = False
    prev = previous_in_row(ctx.tokens, -1)
    middle = on & ~has_space[ctx.tokens] & (prev >= 0) & ends_alpha[np.clip(prev, 0, None)]
    begin = on & has_next & starts_alpha_nospace[nxt]
    word = feature[: -len("_unigram")]
    return {f"[a-z]|{word}": middle, f"_{word}|[a-z]": begin & ~middle, f"_{word}_": on & ~middle & ~begin}


# ---------------------------------------------------------------- figures
def _panels(values: Mapping[str, Mapping[str, np.ndarray]]):
    return [(p, {c: np.asarray(v, dtype=np.float64) for c, v in classes.items()}) for p, classes in values.items()]


def class_histograms(
    values: Mapping[str, Mapping[str, np.ndarray]],
    ncols: int = 5,
    bins: int = 40,
    log: bool = False,
    xlabel: str = "pre-activation",
    titles: Mapping[str, str] | None = None,
) -> FigureResult:
    """One panel per neuron: density histograms of its activation split by class (Fig 16–18, 20, 1b, 4b).
    ``values`` = {panel: {class: 1-D values}}. Data: panel, class, n, mean, bin_left, bin_right, density."""
    panels = _panels(values)
    if not panels:
        return FigureResult(None, None, "no neurons to draw")
    rows, cols = _grid(len(panels), ncols)
    fig, axes = new_figure(rows, cols, figsize=(3.0 * cols, 2.3 * rows))
    parts = []
    for ax, (panel, classes) in zip(axes.flat, panels):
        nonempty = [v for v in classes.values() if len(v)]
        if not nonempty:
            ax.set_title(f"{panel}: no tokens", fontsize=8)
            continue
        lo = min(v.min() for v in nonempty)
        hi = max(v.max() for v in nonempty)
        edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
        for i, (cls, v) in enumerate(classes.items()):
            if not len(v):
                continue
            dens, _ = np.histogram(v, bins=edges, density=True)
            ax.stairs(dens, edges, label=f"{cls} ({len(v):,})", color=f"C{i}", fill=i == 0, alpha=0.45 if i == 0 else 1)
            parts.append(
                pd.DataFrame(
                    {
                        "panel": panel,
                        "class": cls,
                        "n": len(v),
                        "mean": float(v.mean()),
                        "bin_left": edges[:-1],
                        "bin_right": edges[1:],
                        "density": dens,
                    }
                )
            )
        if log:
            ax.set_yscale("log")
        ax.set_title((titles or {}).get(panel, panel), fontsize=8)
        ax.legend(fontsize=6, frameon=False)
        ax.set_xlabel(xlabel, fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    return FigureResult(fig, pd.concat(parts, ignore_index=True) if parts else None)


def class_boxplots(
    values: Mapping[str, Mapping[str, np.ndarray]],
    ncols: int = 3,
    ylim: tuple[float, float] | None = None,
    ylabel: str = "pre-activation",
    titles: Mapping[str, str] | None = None,
) -> FigureResult:
    """One panel per neuron: box plots (5–95% whiskers) of its activation by class (Fig 15, 1a, 4a; the paper used
    boxen plots). Data: panel, class, n, mean, q05, q25, q50, q75, q95."""
    panels = _panels(values)
    if not panels:
        return FigureResult(None, None, "no neurons to draw")
    rows, cols = _grid(len(panels), ncols)
    fig, axes = new_figure(rows, cols, figsize=(3.4 * cols, 2.6 * rows))
    recs = []
    for ax, (panel, classes) in zip(axes.flat, panels):
        names = [c for c, v in classes.items() if len(v)]
        stats = []
        for c in names:
            v = classes[c]
            q = np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95])
            recs.append(
                {
                    "panel": panel,
                    "class": c,
                    "n": len(v),
                    "mean": float(v.mean()),
                    **dict(zip(("q05", "q25", "q50", "q75", "q95"), q)),
                }
            )
            stats.append(
                {"label": c, "whislo": q[0], "q1": q[1], "med": q[2], "q3": q[3], "whishi": q[4], "fliers": []}
            )
        if stats:
            ax.bxp(stats, showfliers=False)
        ax.tick_params(axis="x", labelsize=7, rotation=20)
        ax.set_title((titles or {}).get(panel, panel), fontsize=8)
        ax.set_ylabel(ylabel, fontsize=7)
        if ylim:
            ax.set_ylim(*ylim)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    return FigureResult(fig, pd.DataFrame(recs))


def gelu_new(x: np.ndarray) -> np.ndarray:
    """GPT-2's activation (tanh approximation of GELU)."""
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def position_profiles(pre: np.ndarray, keep: np.ndarray, names: Sequence[str], ncols: int = 5) -> FigureResult:
    """Fig 19 / 1c: mean ± std per position of the pre-activation and of gelu_new(pre), one panel per neuron.
    ``pre`` [rows, ctx, k], ``keep`` [rows, ctx]. Data: neuron, position, n, pre_mean, pre_std, post_mean, post_std."""
    if pre.shape[-1] == 0:
        return FigureResult(None, None, "no neurons to draw")
    w = keep.astype(np.float64)[..., None]
    n = w.sum(0)  # [ctx, 1]
    nz = np.maximum(n, 1)
    parts = []
    for vals, label in ((pre.astype(np.float64), "pre"), (gelu_new(pre.astype(np.float64)), "post")):
        mean = (vals * w).sum(0) / nz
        var = ((vals - mean) ** 2 * w).sum(0) / nz
        parts.append((label, mean, np.sqrt(var)))
    recs = []
    for j, name in enumerate(names):
        for p in range(pre.shape[1]):
            if n[p, 0] == 0:
                continue
            recs.append(
                {
                    "neuron": name,
                    "position": p,
                    "n": int(n[p, 0]),
                    **{
                        f"{lab}_{s}": float(arr[p, j])
                        for lab, mean, std in parts
                        for s, arr in (("mean", mean), ("std", std))
                    },
                }
            )
    data = pd.DataFrame(recs)
    rows, cols = _grid(len(names), ncols)
    fig, axes = new_figure(rows, cols, figsize=(3.0 * cols, 2.2 * rows))
    for ax, name in zip(axes.flat, names):
        d = data[data["neuron"] == name]
        for lab, color in (("pre", "C0"), ("post", "C1")):
            ax.plot(d["position"], d[f"{lab}_mean"], color=color, lw=1, label=lab)
            ax.fill_between(
                d["position"],
                d[f"{lab}_mean"] - d[f"{lab}_std"],
                d[f"{lab}_mean"] + d[f"{lab}_std"],
                color=color,
                alpha=0.2,
            )
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("position", fontsize=7)
    axes.flat[0].legend(fontsize=6, frameon=False)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    return FigureResult(fig, data)


def topic_heatmap(table: pd.DataFrame, n_tokens: int = 10) -> FigureResult:
    """Fig 4c: for each neuron (column), its top ``n_tokens`` tokens by mean activation; colour = value / the
    column's max, annotation = the token string. ``table``: neuron, rank, token, value (rank 0 = best).
    Data: neuron, rank, token, value, normalised."""
    if table is None or table.empty:
        return FigureResult(None, None, "no tokens to draw")
    t = table[table["rank"] < n_tokens].copy()
    t["normalised"] = t["value"] / t.groupby("neuron")["value"].transform(lambda s: s.abs().max() or 1.0)
    neurons = list(dict.fromkeys(t["neuron"]))
    R = int(t["rank"].max()) + 1
    grid = np.full((R, len(neurons)), np.nan)
    for r in t.itertuples():
        grid[int(r.rank), neurons.index(r.neuron)] = r.normalised
    fig, axes = new_figure(1, 1, figsize=(1.7 * len(neurons) + 1, 0.35 * R + 1.2))
    ax = axes[0][0]
    im = ax.imshow(grid, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for r in t.itertuples():
        ax.text(
            neurons.index(r.neuron), int(r.rank), repr(str(r.token))[1:-1][:14], ha="center", va="center", fontsize=7
        )
    ax.set_xticks(range(len(neurons)), neurons, fontsize=7, rotation=20)
    ax.set_yticks(range(R), [str(i + 1) for i in range(R)], fontsize=7)
    ax.set_ylabel("rank by mean activation")
    fig.colorbar(im, ax=ax, label="mean activation / column max")
    return FigureResult(fig, t.reset_index(drop=True))


def family_counts(best: pd.DataFrame, universal: np.ndarray, min_vr: float) -> FigureResult:
    """Neurons per explanation family (the family of the best feature when best VR > ``min_vr``; else
    unexplained), universal vs other, as shares of each group. Data: family, group, n, share."""
    fam = with_families(best, min_vr)
    uni = np.asarray(universal, dtype=bool)
    order = [*FAMILY_ORDER, UNEXPLAINED]
    recs = []
    for group, mask in (("universal", uni), ("other", ~uni)):
        total = int(mask.sum())
        counts = fam.loc[mask, "family"].value_counts()
        for f in order:
            n = int(counts.get(f, 0))
            recs.append({"family": f, "group": group, "n": n, "share": n / total if total else float("nan")})
    data = pd.DataFrame(recs)
    fig, axes = new_figure(1, 1, figsize=(8, 3.2))
    ax = axes[0][0]
    x = np.arange(len(order))
    for i, group in enumerate(("universal", "other")):
        d = data[data["group"] == group]
        n_total = int(d["n"].sum())
        ax.bar(x + (i - 0.5) * 0.4, d["share"].fillna(0), width=0.4, label=f"{group} ({n_total})", color=f"C{i}")
    ax.set_xticks(x, order, rotation=25, fontsize=8, ha="right")
    ax.set_ylabel("share of the group")
    ax.set_title(f"family of the best feature (best VR > {min_vr:g})", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    return FigureResult(fig, data)


def sparsity_vs_in_out_sim(dfs: Mapping[str, pd.DataFrame], bins: int = 100) -> FigureResult:
    """Fig 9: 2-D histogram of activation frequency (``sparsity``) against cos(w_in, w_out) per model, with a
    least-squares line and Pearson r. Data (per non-empty bin): model, x_left, x_right, y_left, y_right, count,
    and per model n, slope, intercept, r."""
    items = [(m, df.dropna(subset=["sparsity", "in_out_sim"])) for m, df in dfs.items()]
    items = [(m, df) for m, df in items if len(df) > 1]
    if not items:
        return FigureResult(None, None, "no table has both sparsity and in_out_sim")
    fig, axes = new_figure(1, len(items), figsize=(3.6 * len(items), 3.2))
    parts = []
    xe, ye = np.linspace(-0.02, 1, bins + 1), np.linspace(-1, 1, bins + 1)
    for ax, (model, df) in zip(axes.flat, items):
        x, y = df["sparsity"].to_numpy(float), df["in_out_sim"].to_numpy(float)
        slope, intercept = np.polyfit(x, y, 1) if np.ptp(x) > 0 else (0.0, float(y.mean()))
        r = float(np.corrcoef(x, y)[0, 1]) if np.ptp(x) > 0 and np.ptp(y) > 0 else float("nan")
        h, _, _ = np.histogram2d(x, y, bins=[xe, ye])
        ax.pcolormesh(xe, ye, np.where(h.T > 0, h.T, np.nan), cmap="viridis")
        xs = np.array([x.min(), x.max()])
        ax.plot(xs, slope * xs + intercept, color="C3", lw=1, label=f"fit, r = {r:.2f}")
        ax.set_xlim(-0.02, 1)
        ax.set_ylim(-1, 1)
        ax.set_xlabel("activation frequency")
        ax.set_ylabel("cos(w_in, w_out)")
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=7, frameon=False)
        i, j = np.nonzero(h)
        parts.append(
            pd.DataFrame(
                {
                    "model": model,
                    "x_left": xe[i],
                    "x_right": xe[i + 1],
                    "y_left": ye[j],
                    "y_right": ye[j + 1],
                    "count": h[i, j].astype(int),
                    "n": len(x),
                    "slope": float(slope),
                    "intercept": float(intercept),
                    "r": r,
                }
            )
        )
    return FigureResult(fig, pd.concat(parts, ignore_index=True))


def max_weight_similarity(sims: Mapping[str, np.ndarray], universal: np.ndarray, bins: int = 60) -> FigureResult:
    """Fig 10: density of each neuron's max cosine similarity to any other neuron, per weight (W_in rows,
    W_out rows), universal vs other. Data: weight, group, n, bin_left, bin_right, density."""
    uni = np.asarray(universal, dtype=bool)
    fig, axes = new_figure(len(sims), 1, figsize=(6, 2.4 * len(sims)))
    parts = []
    for ax, (weight, s) in zip(axes.flat, sims.items()):
        s = np.asarray(s, dtype=np.float64)
        edges = np.linspace(min(0.0, s.min()), 1.0, bins + 1)
        for i, (group, mask) in enumerate((("universal", uni), ("other", ~uni))):
            v = s[mask]
            if not len(v):
                continue
            dens, _ = np.histogram(v, bins=edges, density=True)
            ax.stairs(dens, edges, label=f"{group} ({len(v)})", color=f"C{i}")
            parts.append(
                pd.DataFrame(
                    {
                        "weight": weight,
                        "group": group,
                        "n": len(v),
                        "bin_left": edges[:-1],
                        "bin_right": edges[1:],
                        "density": dens,
                    }
                )
            )
        ax.set_xlabel(f"max cosine similarity of {weight} to another neuron")
        ax.set_ylabel("density")
        ax.legend(fontsize=7, frameon=False)
    return FigureResult(fig, pd.concat(parts, ignore_index=True) if parts else None)


# ---------------------------------------------------------------- notebook helpers
def optional_neuron_table(model: str, path=None, dataset: str | None = None):
    """The per-neuron table (``notebooks.load_neuron_table``) or None when there is none (a table made for another
    model or dataset is still an error)."""
    from neuron_lib import notebooks as nb
    from neuron_lib.common import ManifestMismatch

    try:
        return nb.load_neuron_table(nb.validate_neuron_df(model, path, dataset))
    except ManifestMismatch:
        raise
    except NeuronLibError as exc:
        print(f"no per-neuron table, so no universal flags: {exc}")
        return None


def universal_flags(rows: pd.DataFrame, table: pd.DataFrame | None, universality) -> np.ndarray | None:
    """Universal flag (``criteria.universal_mask`` of ``table``) for each (layer, neuron_index) of ``rows``."""
    from neuron_lib import criteria

    if table is None:
        return None
    flag = pd.Series(
        criteria.universal_mask(table, universality).to_numpy(bool),
        index=pd.MultiIndex.from_arrays([table["layer"].to_numpy(), table["neuron"].to_numpy()]),
    )
    key = pd.MultiIndex.from_arrays([rows["layer"].to_numpy(), rows["neuron_index"].to_numpy()])
    return flag.reindex(key).fillna(False).to_numpy(bool)


def source(exp: Mapping) -> dict:
    """The figures' data source: the explanations folder and its manifest (without the held-out row list)."""
    man = {k: v for k, v in exp["manifest"].items() if k not in ("heldout_rows", "summary")}
    return {"kind": "explanations", "model": man.get("model"), "path": str(exp["folder"]), "manifest": man}


def describe(exp: Mapping) -> str:
    m = exp["manifest"]
    n_feat = {k: v for k, v in m.get("n_features", {}).items()}
    return (
        f"explanations {exp['folder']}: {m.get('neurons')} neurons of {m.get('model')} on {m.get('dataset')} "
        f"({m.get('n_tokens', 0):,} tokens in {m.get('n_rows')} rows; {m.get('n_tokens_selection', 0):,} selection "
        f"tokens); features per kind {n_feat}, skipped (too few positives) {m.get('n_skipped_features')}; "
        f"unigram rule: {m.get('unigram_rule')}; activation: {m.get('activation')}"
    )


def firing_by_position(model, tokens: np.ndarray, keep: np.ndarray, batch_size: int = 32):
    """Per position, how many kept tokens make each neuron fire (pre-activation > 0), streamed over batches:
    (fire_counts [ctx, L·N] int64, totals [ctx] int64, d_mlp)."""
    import torch

    from neuron_lib.streaming import mlp_activations

    if isinstance(model, str):
        from neuron_lib.models import load_model

        model = load_model(model)
    L, D = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    fire = torch.zeros(tokens.shape[1], L * D, dtype=torch.int64)
    for start in range(0, len(tokens), batch_size):
        toks = torch.as_tensor(tokens[start : start + batch_size], dtype=torch.long)
        k = torch.as_tensor(keep[start : start + batch_size])
        pre, _ = mlp_activations(model, toks, want_pre=True, want_post=False)  # [L, B, P, N]
        pos = (pre.cpu() > 0) & k[None, :, :, None]
        fire += pos.permute(2, 0, 3, 1).sum(-1).reshape(tokens.shape[1], L * D)
    return fire.numpy(), keep.sum(0).astype(np.int64), D


def mean_activation_tokens(
    summary_folder, neurons: Sequence[tuple[int, int]], strings: Sequence[str], min_count: int = 1, n_tokens: int = 10
) -> pd.DataFrame:
    """The summary's top tokens by mean post-activation (``vocab_mean_top_values`` / ``_ix``) for each neuron,
    keeping tokens seen at least ``min_count`` times in that subset: neuron, rank, token_id, token, value, count."""
    from neuron_lib.common import load_tensors

    t = load_tensors(artifacts.summary_part(summary_folder, "vocab"))
    vals, ix, counts = t["vocab_mean_top_values"].float().numpy(), t["vocab_mean_top_ix"].long().numpy(), None
    counts = t["vocab_counts"].long().numpy()
    recs = []
    for layer, n in neurons:
        rank = 0
        for v, i in zip(vals[layer, n], ix[layer, n]):
            if i < 0 or not np.isfinite(v) or counts[i] < min_count:
                continue
            recs.append(
                {
                    "neuron": f"{layer}.{n}",
                    "rank": rank,
                    "token_id": int(i),
                    "token": strings[i],
                    "value": float(v),
                    "count": int(counts[i]),
                }
            )
            rank += 1
            if rank >= n_tokens:
                break
    return pd.DataFrame(recs, columns=["neuron", "rank", "token_id", "token", "value", "count"])


def subset_means(folders: Mapping[str, Path]) -> pd.DataFrame:
    """Mean post-activation of every neuron in each subset's summary (``moments``: Σ(x − shift) / count + shift):
    index "l.n", one column per subset."""
    from neuron_lib.common import load_tensors

    cols = {}
    for subset, folder in folders.items():
        t = load_tensors(artifacts.summary_part(folder, "moments"))
        count = t["post_count"].double().clamp(min=1)
        cols[subset] = (t["post_sum"] / count + t["post_shift"]).reshape(-1).numpy()
        L, N = t["post_count"].shape
    index = [f"{l}.{n}" for l in range(L) for n in range(N)]
    return pd.DataFrame(cols, index=index)


def topic_neurons(vr: pd.DataFrame, means: pd.DataFrame, per_subset: int = 2) -> list[tuple[str, str]]:
    """For each subset s, the ``per_subset`` neurons of highest VR for ``is_subset_{s}`` among those whose mean
    activation in s exceeds their mean in every other subset (with two subsets the two features are complements
    with equal VR; the sign says which subset a neuron prefers). ``vr`` indexed by neuron name."""
    out = []
    for s in means.columns:
        col = f"is_subset_{s}"
        if col not in vr.columns:
            continue
        others = means.drop(columns=[s])
        prefers = means[s] > (others.max(axis=1) if len(others.columns) else -np.inf)
        ranked = vr[col].sort_values(ascending=False, kind="stable")
        ranked = ranked[prefers.reindex(ranked.index).fillna(False).to_numpy(bool)]
        out += [(n, s) for n in ranked.index[:per_subset]]
    return out


def subset_variance_reduction(folders: Mapping[str, Path], hook: str = "post") -> pd.DataFrame:
    """Eq. 4 VR (population variances) of every neuron's activation by each one-vs-rest subset feature
    ``is_subset_{s}``, exactly, from the summaries' per-subset power sums (Σ(x − shift), Σ(x − shift)², count; one
    shift per run, shared by the subsets) over **all** kept tokens of every subset — for when the explain run's
    token cap saw one subset only. Index "l.n", one column per subset feature."""
    from neuron_lib.common import load_tensors

    n, s, q = {}, {}, {}
    for subset, folder in folders.items():
        t = load_tensors(artifacts.summary_part(folder, "moments"))
        n[subset] = t[f"{hook}_count"].double().reshape(-1).numpy()
        s[subset] = t[f"{hook}_sum"].double().reshape(-1).numpy()
        q[subset] = t[f"{hook}_sum_sq"].double().reshape(-1).numpy()
        L, N = t[f"{hook}_count"].shape
    nt, st, qt = sum(n.values()), sum(s.values()), sum(q.values())
    total = qt - st**2 / np.maximum(nt, 1)
    out = {}
    for sub in folders:
        nr, sr, qr = nt - n[sub], st - s[sub], qt - q[sub]
        within = (q[sub] - s[sub] ** 2 / np.maximum(n[sub], 1)) + (qr - sr**2 / np.maximum(nr, 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            vr = 1 - within / total
        ok = (total > 1e-12 * np.maximum(np.abs(qt), 1e-300)) & (n[sub] > 0) & (nr > 0)
        out[f"is_subset_{sub}"] = np.where(ok, np.clip(vr, 0, 1), 0.0)
    return pd.DataFrame(out, index=[f"{l}.{i}" for l in range(L) for i in range(N)])
