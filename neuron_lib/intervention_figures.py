"""Figures of the intervention stages (``entropy_neurons`` and ``bos_signal_neurons`` notebooks), each a
``figures.FigureResult`` with the data it drew; loaders that find a finished run and refuse a missing one with the
command that makes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from neuron_lib import artifacts
from neuron_lib.common import NeuronLibError, load_tensors, read_json
from neuron_lib.figures import FigureResult, new_figure

ENTROPY_PANELS = (
    ("scale", "final norm scale"),  # LayerNorm (GPT-2, Pythia) or RMSNorm (Llama) divisor: ln_final.hook_scale
    ("recip_rank", "mean reciprocal rank"),
    ("entropy", "entropy (nats)"),
    ("loss", "loss (nats)"),
)


def find_run(model: str, run: str, dataset: str | None = None) -> Path:
    """The finished folder ``$INTERVENTION_DIR/{model}/{dataset}/{run}``; without ``dataset`` the only one there."""
    root = artifacts.root("INTERVENTION_DIR") / artifacts.model_name(model)
    if dataset:
        folders = [artifacts.intervention_results(model, dataset, run)]
    else:
        folders = sorted(p / run for p in root.glob("*") if (p / run).is_dir()) if root.exists() else []
    done = [f for f in folders if artifacts.manifest_path(f).exists()]
    if not done:
        stage = {"attention_deactivation": "attention_deactivation"}.get(
            run, "entropy_intervention" if run.startswith("entropy") else "intervention"
        )
        raise NeuronLibError(
            f"no finished {run!r} results of {model!r} under {root}; run `python -m neuron_lib.{stage} --model {model} "
            "--token-dataset ...` (or `make all`)"
        )
    if len(done) > 1:
        raise NeuronLibError(f"several datasets have {run!r} results: {[str(f) for f in done]}; pass dataset=...")
    return done[0]


def load_run(folder: Path) -> dict:
    out = {"folder": folder, "manifest": read_json(artifacts.manifest_path(folder))}
    for name in (
        artifacts.INTERVENTION_SUMMARY_FILE,
        artifacts.ENTROPY_CANDIDATES_FILE,
        artifacts.ATTENTION_PAIRS_FILE,
        artifacts.ATTENTION_TOP_PAIRS_FILE,
        artifacts.INTERVENTION_NEURONS_FILE,
    ):
        if (folder / name).exists():
            out[name] = pd.read_csv(folder / name)
    return out


# ---------------------------------------------------------------- entropy neurons (Fig 7, 25, 1f)
def entropy_curves(summary: pd.DataFrame, panels=ENTROPY_PANELS) -> FigureResult:
    """Mean metric against the fixed value: candidates in colour, baselines thin grey, nominal dashed (Fig 7c–f)."""
    rows = summary[summary["role"].isin(["candidate", "extra", "baseline"])].copy()
    nominal = summary[summary["role"] == "nominal"].iloc[0]
    fig, axes = new_figure(1, len(panels), figsize=(3.2 * len(panels), 3.0))
    for ax, (col, title) in zip(axes[0], panels):
        for (role, l, n), g in rows.groupby(["role", "layer", "neuron"]):
            g = g.sort_values("value")
            if role == "baseline":
                ax.plot(g["value"], g[col], color="0.6", lw=0.8, alpha=0.7)
            else:
                ax.plot(g["value"], g[col], marker="o", lw=2, label=f"L{int(l)}.N{int(n)} ({role})")
        if col in nominal and pd.notna(nominal[col]):
            ax.axhline(nominal[col], color="k", ls="--", lw=1, label="nominal")
        ax.set_xlabel("fixed activation")
        ax.set_title(title)
    axes[0][0].legend(fontsize=7)
    data = rows[["role", "layer", "neuron", "value", *[c for c, _ in panels if c in rows]]]
    return FigureResult(fig, data.reset_index(drop=True))


def entropy_weight_panels(
    candidates: pd.DataFrame, chosen: pd.DataFrame, neuron_df: pd.DataFrame | None = None
) -> FigureResult:
    """(a) ‖w_out‖ (or l2_penalty) histogram of the last layers, (b) null-space share histogram; chosen neurons marked
    (the analogue of Fig 7a–b: the paper's entropy neurons have large norm and write into W_U's null space)."""
    fig, axes = new_figure(1, 2, figsize=(8, 3))
    marks = chosen.merge(candidates, on=["layer", "neuron"], how="left")
    for ax, col, title in (
        (axes[0][0], "w_out_norm", "‖w_out‖"),
        (axes[0][1], "null_share", "share of ‖w_out‖ in W_U's null space"),
    ):
        ax.hist(candidates[col], bins=60, color="0.7", log=True)
        for _, r in marks.iterrows():
            if pd.notna(r.get(col)):
                ax.axvline(
                    r[col],
                    color="C3" if r["role"] == "candidate" else "C0",
                    lw=1.5 if r["role"] == "candidate" else 0.6,
                )
        ax.set_title(title)
        ax.set_ylabel("neurons (last layers)")
    return FigureResult(fig, marks)


def best_candidate(summary: pd.DataFrame) -> tuple[int, int] | None:
    """The candidate whose entropy moves most between the smallest and largest fixed value."""
    c = summary[summary["role"] == "candidate"]
    if c.empty:
        return None
    span = c.groupby(["layer", "neuron"])["entropy"].agg(lambda s: s.max() - s.min())
    return tuple(int(x) for x in span.idxmax())


# ---------------------------------------------------------------- BOS signal neurons (Fig 8)
def heuristic_histogram(folder: Path) -> FigureResult:
    """|h_n| of every (head, earlier neuron) pair against unit Gaussian directions (Fig 8a)."""
    t = load_tensors(folder / artifacts.ATTENTION_SCORES_FILE)
    s, r = t["score"].double().numpy().ravel(), t["random_score"].double().numpy().ravel()
    s, r = s[~np.isnan(s)], r[~np.isnan(r)]
    fig, axes = new_figure(1, 1, figsize=(5, 3))
    ax = axes[0][0]
    hi = float(max(np.abs(s).max(), np.abs(r).max()))
    bins = np.linspace(0, hi, 80)
    ax.hist(np.abs(s), bins=bins, alpha=0.6, label="W_out (unit)", density=True, log=True)
    ax.hist(np.abs(r), bins=bins, alpha=0.6, label="random unit directions", density=True, log=True)
    ax.set_xlabel("|h_n|")
    ax.legend()
    data = pd.DataFrame(
        {
            "quantity": ["abs_score", "abs_random"],
            "mean": [np.abs(s).mean(), np.abs(r).mean()],
            "p99": [np.quantile(np.abs(s), 0.99), np.quantile(np.abs(r), 0.99)],
            "max": [np.abs(s).max(), np.abs(r).max()],
        }
    )
    return FigureResult(fig, data)


def path_ablation_scatter(folder: Path, pair: str, max_points: int = 20000, seed: int = 0) -> FigureResult:
    """Activation vs ΔP(BOS) and ΔP(BOS) vs fractional Δ‖z‖ × 100 with least-squares lines and Pearson ρ (Fig 8b, c)."""
    from neuron_lib import stats

    t = load_tensors(folder / artifacts.ATTENTION_PATH_FILE)
    a = t[f"{pair}.activation"].double().numpy()
    bos = t[f"{pair}.bos_diff"].double().numpy()
    frac = t[f"{pair}.frac_norm_diff"].double().numpy() * 100
    df = pd.DataFrame(
        {
            "Activation Diff": a,
            "BOS Prob Diff": bos,
            "Fractional Norm Diff": frac / 100,
            "Norm Diff": t[f"{pair}.norm_diff"].double().numpy(),
        }
    )
    fig, axes = new_figure(1, 2, figsize=(8, 3.2))
    pick = np.random.default_rng(seed).permutation(len(a))[:max_points]
    for ax, (x, y, xl, yl) in zip(
        axes[0], ((a, bos, "neuron activation (removed)", "Δ P(BOS)"), (bos, frac, "Δ P(BOS)", "Δ‖z‖ / ‖z‖ × 100"))
    ):
        ax.scatter(x[pick], y[pick], s=2, alpha=0.3)
        if len(x) > 1 and np.ptp(x) > 0:
            k, b = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 2)
            ax.plot(xs, k * xs + b, color="C3")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(f"{pair}: ρ = {stats.pearson(x, y):+.3f}")
    return FigureResult(fig, df)
