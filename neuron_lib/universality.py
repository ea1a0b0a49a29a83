"""All-pairs cross-seed correlations in one data pass, the candidate universality criteria, and their controls.

Why: the paper's criterion (excess correlation > 0.5) is tuned to GPT-2 small's rotation baseline (~0.15); a
narrower model has a higher one (the zoo's ~0.3-0.4), so the criterion's meaning changes with the model's size.
This stage computes every candidate criterion exactly from one set of float64 accumulators, with the controls
that tell a criterion from its artefacts, and picks none by matching the paper's share (docs/universality.md).

**Worlds.** A world is a set of models whose pairwise moments are accumulated over the same tokens:

- ``trained``: the model set (``--models``), every analysis token, in two halves (alternate batches; their
  Chan merge is the whole) — the split-half control costs nothing;
- ``untrained``: the reference (first model) against freshly initialised models of its configuration;
- ``step{s}``: the set at a training snapshot (zoo ``snapshot_steps``);
- ``final@cap``: the trained world's moments after the control worlds' tokens (a copy taken in the pass), so
  training-length shares compare like with like.

Control worlds stream only the dataset's first ``control_tokens`` tokens, in the same pass. The **rotated**
control needs no pass: every model's basis rotated per layer (R_m C R_nᵀ, covariances R Σ Rᵀ).

**Moments** (float64, fp32 GEMMs with the exact mean correction of ``correlations_fast``): per world (and
half) the token count n, and for every model pair i ≤ j the co-moment ``C_ij = Σ_t (x_i − μ_i)(x_j − μ_j)ᵀ``
[N_i, N_j]; ``C_ii`` is model i's covariance (× n), whose diagonal gives the variances, whose within-layer
blocks give the rotation baseline, and whose whole gives the multiple correlation R.

**Candidates** (per neuron i of reference m, against each other model o; criteria.py):

- paper: ``excess_corr`` = mean_o max_j ρ − mean_o rotation baseline > 0.5 (``is_universal``);
- aligned: ``alignment_o = max_j ρ(i, o_j) / R_{i,o}``, R² = c_iᵀ (Σ_o + λI)⁻¹ c_i / σ_i² (λ = ridge ·
  mean diag Σ_o; R over all of o's layers); ``is_universal_aligned``: mean > 1/√2;
- mutual star (``is_mutual_star``: i's best partner has i as its best partner, in every other model) and
  clique (``is_mutual_clique``: i and its partners are pairwise mutual best matches);
- the rotation z-criterion (``is_universal_z``) for comparison.

**File contract.**

- ``artifacts.correlation_table_dir(m, dataset)/neuron_correlations.{csv,parquet}`` for *every* model m of the
  set (the paper's columns of ``correlations_fast.build_universal_table`` plus ``alignment_{o}``,
  ``mutual_{o}``, ``alignment_mean``, ``alignment_min``, ``n_models_aligned``, ``n_models_mutual``,
  ``is_universal_aligned``, ``is_mutual_star``, ``is_mutual_clique``, ``r2_mean``; the reference's also
  ``alignment_mean_rotated`` / ``excess_corr_rotated``: its scores in the rotated control, for Fig. 3's control
  set), manifest ``stage = universality.table``;
- ``artifacts.universality_run(key, dataset)/``: ``criteria_controls.{csv,parquet}`` (one row per candidate ×
  layer, ``all`` included: ``share`` in the trained world for the reference, ``share_all_refs`` averaged over
  every model as reference, ``rotated``, ``untrained``, ``half1``, ``half2``, ``jaccard_halves``,
  ``final_at_cap``, ``step{s}``, ``spearman_act_freq`` and ``spearman_act_freq_untrained`` — Spearman of the
  candidate's score with the reference's exact activation frequency, against the trained set and against untrained
  models: the sparsity artefact a score shows with no true counterpart), ``pair_summary.csv`` (ordered pair ×
  layer: median best correlation, median alignment), manifest last.

CLI: ``python -m neuron_lib.universality --help``.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from neuron_lib import artifacts, criteria, stage
from neuron_lib.common import (
    REQUIRED,
    NeuronLibError,
    atomic_write_json,
    config_field,
    config_fingerprint,
    config_identity,
    human_bytes,
    load_tensors,
    make_manifest,
    parse_memory,
    pick_device,
    read_json,
    run_cli,
    save_dataframe_atomic,
    save_tensors_atomic,
    write_manifest,
)
from neuron_lib.correlations_fast import (
    StreamingCorrelation,
    auto_memory_budget,
    build_universal_table,
    dead_mask,
    derive_seed,
    prepare_activations,
    random_rotation,
    rotation_seed,
)
from neuron_lib.models import model_output_name

STAGE = "universality"
TABLE_STAGE = "universality.table"
ALIGNMENT_SWEEP = (0.6, 0.8, 0.9)  # extra rows of the control table: alignment_mean > t (reported, not chosen)
_TABLE_FILES = tuple(f"{artifacts.CORRELATION_TABLE_STEM}.{fmt}" for fmt in ("csv", "parquet"))
_RUN_FILES = (
    f"{artifacts.UNIVERSALITY_CONTROLS_STEM}.csv",
    f"{artifacts.UNIVERSALITY_CONTROLS_STEM}.parquet",
    f"{artifacts.UNIVERSALITY_PAIRS_STEM}.csv",
)


# =============================================================================== configuration
@dataclass
class UniversalityConfig:
    """An all-pairs universality run; ``validate()`` checks it before any model is loaded."""

    models: list[str] = config_field(REQUIRED, "comma-separated model set (>= 2); the first is the controls' reference")
    token_dataset: str = config_field(REQUIRED, "token dataset folder (neuron_lib.corpus layout)")
    untrained: list[str] = config_field(
        [], "comma-separated untrained models of the reference's shape (the untrained control; zoo: _untrained/)"
    )
    snapshot_steps: list[int] = config_field(
        [], "training steps whose zoo snapshots (artifacts.zoo_snapshot) form training-length control worlds"
    )
    control_tokens: int = config_field(60_000, "tokens (the dataset's first rows) the control worlds stream")
    n_rotations: int = config_field(3, "seeded rotations per other model (the paper's baseline is their mean)")
    ridge: float = config_field(criteria.ALIGNMENT_RIDGE, "R² ridge, as a fraction of the mean neuron variance")
    alignment_threshold: float = config_field(criteria.ALIGNMENT_THRESHOLD, "is_universal_aligned: alignment_mean >")
    universal_threshold: float = config_field(criteria.UNIVERSAL_THRESHOLD, "is_universal: excess_corr > (paper)")
    min_models: int | None = config_field(
        None, "require this many other models per candidate (default: 1 for paper/aligned, all for mutual star)"
    )
    seed: int = config_field(0, "seed of the rotations (baselines and the rotated control)")
    batch_size: int = config_field(24, "dataset rows per forward pass")
    max_tokens: int | None = config_field(None, "use the first ceil(max_tokens/ctx) rows (default: all)")
    device: str = config_field("auto", "auto | cpu | cuda[:i]")
    max_memory: str = config_field("auto", "budget for the accumulators, e.g. 4GB; auto: half the free memory")
    checkpoint_every: int = config_field(100, "batches between checkpoints (0: never)")
    overwrite: bool = config_field(False, "replace outputs of another configuration (or corrupt ones)")
    progress: bool = config_field(True, "show a progress bar (--no-progress to hide)")

    def __post_init__(self):
        for name in ("models", "untrained"):
            v = getattr(self, name)
            if isinstance(v, str):
                setattr(self, name, [m for m in v.split(",") if m])
        if isinstance(self.snapshot_steps, str):
            self.snapshot_steps = [int(s) for s in self.snapshot_steps.split(",") if s]

    def validate(self) -> UniversalityConfig:
        if len(self.models) < 2:
            raise NeuronLibError(f"--models needs at least two models, got {self.models}")
        names = [model_output_name(m) for m in self.models + self.untrained]
        if len(set(names)) != len(names):
            raise NeuronLibError(f"models resolve to clashing output names {names}; rename the folders")
        n_others = len(self.models) - 1
        if self.min_models is not None and not 1 <= self.min_models <= n_others:
            raise NeuronLibError(
                f"--min-models {self.min_models} is outside [1, {n_others}]: the set has {n_others} other model(s)"
            )
        if self.n_rotations < 2:
            raise NeuronLibError("--n-rotations must be >= 2 (the rotated control uses one rotation as its baseline)")
        for field in ("batch_size", "control_tokens"):
            if getattr(self, field) <= 0:
                raise NeuronLibError(f"--{field.replace('_', '-')} must be positive")
        if not 0 <= self.ridge < 1:
            raise NeuronLibError(f"--ridge {self.ridge} must be in [0, 1)")
        return self

    def identity(self) -> dict:
        return config_identity(self, exclude=("device", "max_memory", "checkpoint_every", "overwrite", "progress"))

    @property
    def key(self) -> str:
        """The run's folder name: the reference's name without its last ``-x`` part (zoo-gpt2-a → zoo-gpt2)."""
        ref = model_output_name(self.models[0])
        return ref.rsplit("-", 1)[0] if "-" in ref else ref


# =============================================================================== moments
@dataclass
class WorldMoments:
    """Finalised float64 moments of one world: n, per-model means and every pair's co-moment (i ≤ j)."""

    names: list[str]
    shapes: dict[str, tuple[int, int]]  # name -> (n_layers, d_mlp)
    n: int
    mean: dict[str, torch.Tensor]
    blocks: dict[tuple[str, str], torch.Tensor]  # (a, b) with a before b in ``names`` (and (a, a))

    def block(self, a: str, b: str) -> Float[torch.Tensor, "Na Nb"]:
        return self.blocks[a, b] if (a, b) in self.blocks else self.blocks[b, a].T

    def var(self, a: str) -> Float[torch.Tensor, " Na"]:
        return self.blocks[a, a].diagonal().clamp_min(0)

    def dead(self, a: str) -> torch.Tensor:
        return dead_mask("pearson", self.n, self.mean[a], self.var(a))


def _pairs(names: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(names) for b in names[i:]]


class WorldAccumulator:
    """Co-moments of every model pair of one world, per half, fed with prepared batches (one per model)."""

    def __init__(self, names: list[str], sizes: Mapping[str, int], halves: int, device, matmul_dtype):
        self.names, self.halves = list(names), int(halves)
        self.streams = {
            (h, a, b): StreamingCorrelation(sizes[a], sizes[b], device=device, matmul_dtype=matmul_dtype)
            for h in range(self.halves)
            for a, b in _pairs(self.names)
        }

    def share_buffer(self, buf: torch.Tensor) -> None:
        for sc in self.streams.values():
            sc._buf = buf  # the streams run one after the other: one GEMM buffer for all

    def update(self, prepared: Mapping[str, Any], half: int) -> None:
        for a, b in _pairs(self.names):
            self.streams[half, a, b].update_prepared(prepared[a], prepared[b])

    def moments(self, shapes: Mapping[str, tuple[int, int]], half: int | None = None) -> WorldMoments:
        """One half's moments, or (``half=None``) both merged."""
        blocks, mean, n = {}, {}, None
        for a, b in _pairs(self.names):
            if half is None:
                sc = copy.deepcopy(self.streams[0, a, b])
                for h in range(1, self.halves):
                    sc.merge_(self.streams[h, a, b])
            else:
                sc = self.streams[half, a, b]
            blocks[a, b] = sc.C.clone()
            mean.setdefault(a, sc.ref_mean.clone())
            mean.setdefault(b, sc.oth_mean.clone())
            n = sc.n
        return WorldMoments(self.names, {k: tuple(shapes[k]) for k in self.names}, int(n or 0), mean, blocks)

    def nbytes(self) -> int:
        return sum(sc.C.numel() * 8 for sc in self.streams.values())

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {}
        for (h, a, b), sc in self.streams.items():
            out.update({f"{prefix}.{h}.{a}.{b}.{k}": v for k, v in sc.state_dict().items()})
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor], prefix: str) -> None:
        for (h, a, b), sc in self.streams.items():
            p = f"{prefix}.{h}.{a}.{b}."
            sc.load_state_dict({k[len(p) :]: v for k, v in state.items() if k.startswith(p)})


# =============================================================================== finalisation (exact, no data)
def pair_stream(w: WorldMoments, a: str, b: str) -> StreamingCorrelation:
    """A ``StreamingCorrelation`` holding a's rows against b, with b's within-layer covariance as ``W``, so that
    ``finalize`` / ``finalize_rotated`` compute exactly what a reference-vs-others run computes."""
    Lb, db = w.shapes[b]
    S = w.blocks[b, b]
    W = torch.stack([S[l * db : (l + 1) * db, l * db : (l + 1) * db] for l in range(Lb)])
    return StreamingCorrelation.from_moments(w.n, (w.mean[a], w.var(a)), (w.mean[b], w.var(b)), w.block(a, b), W)


def multiple_correlation_sq(
    C_ab: Float[torch.Tensor, "Na Nb"],
    S_b: Float[torch.Tensor, "Nb Nb"],
    var_a: Float[torch.Tensor, " Na"],
    ridge: float,
) -> Float[torch.Tensor, " Na"]:
    """R² of each a-neuron regressed on all b-neurons: c_iᵀ (Σ_b + λI)⁻¹ c_i / σ_i², λ = ridge · mean diag Σ_b
    (co-moments, so the n's cancel); 0 for a zero-variance a-neuron."""
    lam = ridge * S_b.diagonal().clamp_min(0).mean()
    eye = torch.eye(S_b.shape[0], dtype=S_b.dtype, device=S_b.device)
    L, info = torch.linalg.cholesky_ex(S_b + (lam if lam > 0 else 1e-12 * S_b.diagonal().abs().max()) * eye)
    if int(info) != 0:
        raise NeuronLibError("the other model's covariance is not positive definite even with the ridge: raise --ridge")
    Y = torch.linalg.solve_triangular(L, C_ab.T, upper=False)
    r2 = (Y * Y).sum(0)
    return torch.where(var_a > 0, r2 / var_a.clamp_min(1e-300), torch.zeros_like(r2)).clamp_(0, 1)


def rotate_world(w: WorldMoments, seed: int) -> WorldMoments:
    """The world with every model's basis rotated per layer by a seeded Haar rotation Q: C'_ab = Q_a C_ab Q_bᵀ,
    means Q μ (the rotated control; exact, no pass)."""
    Q = {}
    for name in w.names:
        L, d = w.shapes[name]
        Q[name] = torch.stack(
            [random_rotation(d, derive_seed(seed, "rotated-world", name, l), w.mean[name].device) for l in range(L)]
        )

    def rot_rows(name: str, x: torch.Tensor) -> torch.Tensor:  # Q x, x [N, ...]
        L, d = w.shapes[name]
        return torch.bmm(Q[name], x.reshape(L, d, -1)).reshape(x.shape)

    blocks = {(a, b): rot_rows(b, rot_rows(a, C).T.contiguous()).T.contiguous() for (a, b), C in w.blocks.items()}
    mean = {name: rot_rows(name, m[:, None])[:, 0] for name, m in w.mean.items()}
    return WorldMoments(list(w.names), dict(w.shapes), w.n, mean, blocks)


def _baseline_rotation(seed: int, name: str, d: int, k: int):
    """Layer → the k-th baseline rotation of model ``name`` (the seeds of ``correlations_fast``)."""
    return lambda layer: random_rotation(d, rotation_seed(seed, name, k, layer))


@dataclass
class _Best:
    max_corr: torch.Tensor  # [Na] float64
    ix: torch.Tensor  # [Na] int64, flat index into b


def world_tables(w: WorldMoments, refs: Iterable[str], cfg: UniversalityConfig) -> dict[str, Any]:
    """Per reference in ``refs``: the per-neuron table of every candidate against the other models of the world."""
    best: dict[tuple[str, str], _Best] = {}
    for a, b in _pairs(w.names):
        if a == b:
            continue
        corr = pair_stream(w, a, b).finalize().double()
        m_ab, i_ab = corr.max(1)
        m_ba, i_ba = corr.max(0)
        best[a, b], best[b, a] = _Best(m_ab, i_ab), _Best(m_ba, i_ba)
        del corr
    out = {}
    for ref in refs:
        others = [o for o in w.names if o != ref]
        L, d = w.shapes[ref]
        N = L * d
        arange = torch.arange(N)
        per_model, extra = {}, {}
        align, mutual, r2s = [], [], []
        for o in others:
            sc = pair_stream(w, ref, o)
            null = torch.stack(
                [
                    sc.finalize_rotated(_baseline_rotation(cfg.seed, o, w.shapes[o][1], k))[0].max(1).values
                    for k in range(cfg.n_rotations)
                ],
                1,
            ).double()
            bm = best[ref, o]
            per_model[o] = {
                "max_corr": bm.max_corr,
                "max_corr_ix": bm.ix,
                "baseline": null.mean(1),
                "null_max": null,
                "d_mlp": w.shapes[o][1],
            }
            r2 = multiple_correlation_sq(sc.C, w.blocks[o, o], w.var(ref), cfg.ridge)
            a_o = torch.where(r2 > 0, bm.max_corr.clamp_min(0) / r2.clamp_min(1e-300).sqrt(), torch.zeros_like(r2))
            mu = best[o, ref].ix[bm.ix] == arange
            extra[f"alignment_{o}"] = a_o.numpy()
            extra[f"mutual_{o}"] = mu.numpy()
            align.append(a_o)
            mutual.append(mu)
            r2s.append(r2)
        dead = w.dead(ref)
        df = build_universal_table(
            per_model,
            L,
            d,
            dead=dead,
            universal_threshold=cfg.universal_threshold,
            min_models=cfg.min_models or 1,
            z_threshold=criteria.Z_THRESHOLD,
        )
        A, M = torch.stack(align, 1).numpy(), torch.stack(mutual, 1).numpy()
        for k, v in extra.items():
            df[k] = v
        df["r2_mean"] = torch.stack(r2s, 1).mean(1).numpy()
        df["alignment_mean"], df["alignment_min"] = A.mean(1), A.min(1)
        df["n_models_aligned"] = (A > cfg.alignment_threshold).sum(1)
        df["n_models_mutual"] = M.sum(1)
        df["is_universal_aligned"] = criteria.universal(
            df["alignment_mean"], df["n_models_aligned"], dead.numpy(), cfg.alignment_threshold, cfg.min_models or 1
        )
        df["is_mutual_star"] = criteria.mutual_star(df["n_models_mutual"], len(others), cfg.min_models, dead.numpy())
        # clique: every pair of the partners p_o, p_o' is a mutual best match too
        clique = M.all(1)
        partners = {o: best[ref, o].ix for o in others}
        for i, o in enumerate(others):
            for o2 in others[i + 1 :]:
                p, p2 = partners[o], partners[o2]
                clique &= ((best[o, o2].ix[p] == p2) & (best[o2, o].ix[p2] == p)).numpy()
        df["is_mutual_clique"] = clique & ~dead.numpy()
        out[ref] = df
    return out


# =============================================================================== the control table
def _candidates(cfg: UniversalityConfig) -> list[tuple[str, str, str]]:
    """(candidate name, flag column, score column); alignment sweep rows are derived from alignment_mean."""
    rows = [
        ("paper_excess>0.5", "is_universal", "excess_corr"),
        (f"alignment>{cfg.alignment_threshold:.3f}", "is_universal_aligned", "alignment_mean"),
        ("mutual_star", "is_mutual_star", "n_models_mutual"),
        ("mutual_clique", "is_mutual_clique", "is_mutual_clique"),
        ("rotation_z>3", "is_universal_z", "rotation_z"),
    ]
    rows += [(f"alignment>{t}", f"alignment_mean>{t}", "alignment_mean") for t in ALIGNMENT_SWEEP]
    return rows


def _flag(df, column: str) -> np.ndarray:
    if column.startswith("alignment_mean>"):
        return criteria.universal(df["alignment_mean"], dead=df["dead"], threshold=float(column.split(">")[1]))
    return df[column].to_numpy(bool)


def _spearman(x, y) -> float:
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(spearmanr(x[ok], y[ok]).statistic)


def controls_table(tables: Mapping[str, Mapping[str, Any]], ref: str, cfg: UniversalityConfig, act_freq=None):
    """One row per candidate × layer (and ``all``): the reference's share in every world, split-half Jaccard,
    and the sparsity-artefact Spearman. ``tables[world][model]`` are :func:`world_tables` outputs."""
    import pandas as pd

    main = tables["trained"][ref]
    layers = main["layer"].to_numpy()
    groups = [("all", np.ones(len(main), bool))] + [(str(l), layers == l) for l in np.unique(layers)]
    rows = []
    for name, flag, score in _candidates(cfg):
        per_world = {w: _flag(t[ref if ref in t else next(iter(t))], flag) for w, t in tables.items()}
        all_refs = [_flag(t, flag) for t in tables["trained"].values()]
        for layer, sel in groups:
            row = {"candidate": name, "layer": layer, "n_neurons": int(sel.sum())}
            row["share"] = per_world["trained"][sel].mean()
            row["share_all_refs"] = float(np.mean([f[sel].mean() for f in all_refs]))
            for w, f in per_world.items():
                if w != "trained":
                    row[w.replace("@", "_at_")] = f[sel].mean()
            if "half1" in per_world:
                h1, h2 = per_world["half1"][sel], per_world["half2"][sel]
                union = (h1 | h2).sum()
                row["jaccard_halves"] = (h1 & h2).sum() / union if union else float("nan")
            if act_freq is not None:  # the same neurons' scores: trained set, and against untrained models
                row["spearman_act_freq"] = _spearman(main[score].to_numpy(float)[sel], act_freq[sel])
                if "untrained" in tables:
                    null = tables["untrained"][ref][score].to_numpy(float)[sel]
                    row["spearman_act_freq_untrained"] = _spearman(null, act_freq[sel])
            rows.append(row)
    return pd.DataFrame(rows)


def pair_summary(tables: Mapping[str, Any]):
    """Ordered model pair × layer of the trained world: median best correlation and alignment (the heatmap data)."""
    import pandas as pd

    rows = []
    for ref, df in tables.items():
        for c in df.columns:
            if c.startswith("alignment_") and c[len("alignment_") :] in tables:
                o = c[len("alignment_") :]
                for layer, sub in df.groupby("layer"):
                    rows.append(
                        {
                            "reference": ref,
                            "other": o,
                            "layer": int(layer),
                            "median_max_corr": float(sub[f"max_corr_{o}"].median()),
                            "median_alignment": float(sub[c].median()),
                            "share_mutual": float(sub[f"mutual_{o}"].mean()),
                        }
                    )
    return pd.DataFrame(rows)


def _act_freq(ref: str, dataset: str) -> np.ndarray | None:
    """The reference's exact activation frequency from its activation summary (None with a warning when absent)."""
    from neuron_lib import neuron_df

    acts = neuron_df.load_activation_summaries(ref, files=("moments",))
    if not acts:
        stage.log(STAGE, f"no activation summary of {ref}: the sparsity-artefact columns are NaN (run the summary)")
        return None
    agg = neuron_df.aggregate_activation_summaries(acts)
    if agg.get("sums") is None or agg.get("n_positive") is None:
        return None
    L, N = agg["sums"][0].shape[:2]
    return neuron_df.activation_columns(agg, L, N)["act_freq_exact"]


# =============================================================================== the pass
@dataclass
class _World:
    name: str
    models: list[str]  # output names
    end_row: int
    halves: int
    acc: WorldAccumulator | None = None


def _resolve_worlds(cfg: UniversalityConfig, n_rows: int, ctx: int) -> tuple[list[_World], dict[str, str], int]:
    """The worlds, each model's load spec by output name, and the control worlds' row count."""
    specs = {model_output_name(m): m for m in cfg.models}
    names = list(specs)
    cap_rows = min(n_rows, math.ceil(math.ceil(cfg.control_tokens / ctx) / cfg.batch_size) * cfg.batch_size)
    worlds = [_World("trained", names, n_rows, 2)]
    if cfg.untrained:
        u = {model_output_name(m): m for m in cfg.untrained}
        specs.update(u)
        worlds.append(_World("untrained", [names[0], *u], cap_rows, 1))
    for step in cfg.snapshot_steps:
        paths = [artifacts.zoo_snapshot(m, step) for m in names]
        missing = [str(p) for p in paths if not (p / "config.json").exists()]
        if missing:  # a zoo trained before snapshots were kept: say so, and go on without this control
            stage.log(
                STAGE,
                f"warning: no snapshots at step {step} ({', '.join(missing)}); the training-length control "
                f"step{step} is left out. A zoo trained with `--snapshot-steps {step}` has them (retrain: delete "
                "the zoo's folders and rerun `make zoo`)",
            )
            continue
        specs.update({p.name: str(p) for p in paths})
        worlds.append(_World(f"step{step}", [p.name for p in paths], cap_rows, 1))
    return worlds, specs, cap_rows


def _check_shapes(models: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(n_layers, d_mlp) of every model; a set whose shapes or vocabularies differ is refused."""
    shapes = {n: (m.cfg.n_layers, m.cfg.d_mlp) for n, m in models.items()}
    vocab = {n: m.cfg.d_vocab for n, m in models.items()}
    if len(set(shapes.values())) != 1 or len(set(vocab.values())) != 1:
        raise NeuronLibError(
            f"the model set must share one shape and vocabulary: (n_layers, d_mlp) {shapes}, d_vocab {vocab}"
        )
    return shapes


def run_universality(cfg: UniversalityConfig) -> stage.StageResult:
    """Run (resume, or skip when finished) the all-pairs pass, the candidate tables and the control table."""
    from tqdm.auto import tqdm

    from neuron_lib.corpus import tokenizer_fingerprint
    from neuron_lib.models import load_model, load_tokenizer
    from neuron_lib.streaming import TokenFilter, iter_mlp_activations

    cfg.validate()
    t0 = time.time()
    inputs = stage.open_inputs(cfg.models[0], cfg.token_dataset, cfg.max_tokens)
    n_rows, ctx = inputs.n_rows, inputs.ctx
    worlds, specs, cap_rows = _resolve_worlds(cfg, n_rows, ctx)
    fps = {n: tokenizer_fingerprint(load_tokenizer(s)) for n, s in specs.items()}
    if any(fp != inputs.tokenizer_fingerprint for fp in fps.values()):
        raise NeuronLibError(
            f"every model must share the dataset's tokenizer ({inputs.tokenizer_fingerprint}); got {fps}"
        )
    trained = worlds[0].models
    identity = {**cfg.identity(), "token_dataset": inputs.dataset_identity, "n_rows": n_rows, "cap_rows": cap_rows}
    fp = config_fingerprint(identity)
    run_dir = artifacts.universality_run(cfg.key, inputs.dataset_name)
    table_dirs = {m: artifacts.correlation_table_dir(m, inputs.dataset_name) for m in trained}
    outputs = {"run": str(run_dir), **{f"table/{m}": str(d) for m, d in table_dirs.items()}}
    states = {d: stage.folder_state(d, TABLE_STAGE, fp, _TABLE_FILES) for d in table_dirs.values()}
    for d, state in states.items():  # a reference-only table first: its message says what replaces it
        if state == "other" and not cfg.overwrite:
            old = read_json(artifacts.manifest_path(d)).get("stage")
            if old == "correlations.table":
                raise NeuronLibError(
                    f"{d} holds a reference-only table of `python -m neuron_lib.correlations_fast`; the all-pairs run "
                    "replaces it: rerun with --overwrite (`python -m neuron_lib.universality --models "
                    f"{','.join(cfg.models)} --token-dataset {cfg.token_dataset} --overwrite`)"
                )

    todo = stage.must_run(run_dir, stage.folder_state(run_dir, STAGE, fp, _RUN_FILES), cfg.overwrite, STAGE)
    for d, state in states.items():
        todo |= stage.must_run(d, state, cfg.overwrite, TABLE_STAGE)
    if not todo:
        stage.log(STAGE, f"{cfg.key} on {inputs.dataset_name} is complete; nothing to do")
        return stage.StageResult(STAGE, "skipped", outputs)

    device = pick_device(cfg.device)
    models = {n: load_model(s, device=device) for n, s in specs.items()}
    shapes = _check_shapes(models)
    sizes = {n: L * d for n, (L, d) in shapes.items()}
    # ---- plan
    acc_bytes = (
        sum(w.halves * sum(sizes[a] * sizes[b] for a, b in _pairs(w.models)) * 8 for w in worlds)
        + sum(sizes[a] * sizes[b] for a, b in _pairs(trained)) * 8
    )  # + the final@cap copy
    budget = parse_memory(cfg.max_memory) or auto_memory_budget(device)
    stage.log(
        STAGE,
        f"plan: {len(trained)} models, {len(_pairs(trained))} blocks (pairs and covariances) over {n_rows} rows "
        f"x {ctx}; controls {[w.name for w in worlds[1:]]} over the first {cap_rows} rows; accumulators "
        f"{human_bytes(acc_bytes)} of a {human_bytes(budget)} budget; {cfg.n_rotations} rotations",
    )
    if acc_bytes > budget:
        raise NeuronLibError(
            f"the accumulators need {human_bytes(acc_bytes)}, over the {human_bytes(budget)} budget: raise "
            "--max-memory, drop control worlds, or run `python -m neuron_lib.correlations_fast` per reference "
            "(it blocks reference rows over several passes)"
        )
    mm = torch.float32
    for w in worlds:
        w.acc = WorldAccumulator(w.models, sizes, w.halves, device, mm)
    big = max(sizes.values())
    shared = torch.empty(big * big, dtype=mm, device=device)
    for w in worlds:
        w.acc.share_buffer(shared)

    # ---- resume
    ckpt_dir = artifacts.universality_checkpoint(cfg.key, inputs.dataset_name)
    at_cap: WorldMoments | None = None
    next_row, batches = 0, 0
    state_file = ckpt_dir / "state.json"
    if state_file.exists() and read_json(state_file).get("fingerprint") == fp:
        st = read_json(state_file)
        tensors = load_tensors(ckpt_dir / st["tensors"])
        for w in worlds:
            w.acc.load_state_dict(tensors, w.name)
        if st.get("at_cap"):
            at_cap = WorldMoments(
                trained,
                {m: shapes[m] for m in trained},
                int(st["at_cap_n"]),
                {m: tensors[f"at_cap.mean.{m}"] for m in trained},
                {(a, b): tensors[f"at_cap.block.{a}.{b}"] for a, b in _pairs(trained)},
            )
        next_row, batches = int(st["next_row"]), int(st["batches"])
        stage.log(STAGE, f"resuming from its checkpoint at dataset row {next_row}")
    else:
        shutil.rmtree(ckpt_dir, ignore_errors=True)

    drop_ids = TokenFilter().drop_ids(inputs.tokenizer)
    all_names = list(models)
    ends = {n: max(w.end_row for w in worlds if n in w.models) for n in all_names}
    iters = {
        n: iter_mlp_activations(
            models[n], inputs.dataset, cfg.batch_size, drop_ids=drop_ids, start_row=next_row, end_row=ends[n]
        )
        for n in all_names
    }
    bar = tqdm(total=n_rows, initial=next_row, unit="row", desc=f"universality {cfg.key}", disable=not cfg.progress)
    n_tokens = 0
    try:
        for start in range(next_row, n_rows, cfg.batch_size):
            active = [n for n in all_names if start < ends[n]]
            batch = {n: next(iters[n]) for n in active}
            ref_batch = batch[trained[0]]
            if any(not torch.equal(b.keep, ref_batch.keep) for b in batch.values()):
                raise NeuronLibError("models disagree on the token filter; they must share the tokenizer")
            T = ref_batch.post.shape[-1]
            prepared = {n: prepare_activations(b.post.reshape(sizes[n], T), matmul_dtype=mm) for n, b in batch.items()}
            half = (start // cfg.batch_size) % 2
            for w in worlds:
                if start < w.end_row:
                    w.acc.update(prepared, half if w.halves == 2 else 0)
            del prepared, batch
            n_tokens += T
            end = min(start + cfg.batch_size, n_rows)
            if end == cap_rows and at_cap is None:
                at_cap = worlds[0].acc.moments(shapes)
            batches += 1
            bar.update(end - start)
            if cfg.checkpoint_every and batches % cfg.checkpoint_every == 0 and end < n_rows:
                _checkpoint(ckpt_dir, worlds, at_cap, end, batches, fp)
    finally:
        bar.close()
    pass_seconds = time.time() - t0
    stage.log(STAGE, f"pass done in {pass_seconds:.0f} s ({n_tokens:,} tokens this run)")

    # ---- finalise: every world, every candidate
    t1 = time.time()
    main = worlds[0].acc
    trained_w = main.moments(shapes)
    tables = {"trained": world_tables(trained_w, trained, cfg)}
    rotated_w = rotate_world(trained_w, cfg.seed)
    tables["rotated"] = world_tables(rotated_w, [trained[0]], cfg)
    for h in range(2):
        tables[f"half{h + 1}"] = world_tables(main.moments(shapes, half=h), [trained[0]], cfg)
    if at_cap is not None and cap_rows < n_rows:
        tables["final@cap"] = world_tables(at_cap, [trained[0]], cfg)
    for w in worlds[1:]:
        tables[w.name] = world_tables(w.acc.moments(shapes), [w.models[0]], cfg)
    ref = trained[0]
    act_freq = _act_freq(ref, inputs.dataset_name)
    controls = controls_table(tables, ref, cfg, act_freq)
    pairs = pair_summary(tables["trained"])
    stage.log(STAGE, f"criteria and controls computed in {time.time() - t1:.0f} s")

    # ---- write: per-model tables, then the run folder (manifest last)
    manifest_common = dict(
        config_fingerprint=fp,
        dataset=inputs.dataset_name,
        dataset_identity=inputs.dataset_identity,
        n_tokens=int(trained_w.n),
        control_tokens=int(at_cap.n) if at_cap is not None else int(trained_w.n),
        models=trained,
        worlds={w.name: w.models for w in worlds},
        rotation_seeds="correlations_fast.rotation_seed(seed, other, k, layer); rotated control: "
        "derive_seed(seed, 'rotated-world', model, layer)",
        ridge=cfg.ridge,
        r_scope="model (all of the other model's layers)",
    )
    for m in trained:
        df = tables["trained"][m]
        if m == ref:
            df["alignment_mean_rotated"] = tables["rotated"][ref]["alignment_mean"].to_numpy()
            df["excess_corr_rotated"] = tables["rotated"][ref]["excess_corr"].to_numpy()
        d = table_dirs[m]
        if d.exists() and cfg.overwrite:
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
        save_dataframe_atomic(df, d / artifacts.CORRELATION_TABLE_STEM)
        man = make_manifest(
            TABLE_STAGE,
            identity,
            model=m,
            other_models=[o for o in trained if o != m],
            n_neurons=len(df),
            n_universal=int(df["is_universal"].sum()),
            n_universal_aligned=int(df["is_universal_aligned"].sum()),
            files=list(_TABLE_FILES),
            **manifest_common,
        )
        write_manifest(d, man)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    save_dataframe_atomic(controls, run_dir / artifacts.UNIVERSALITY_CONTROLS_STEM)
    save_dataframe_atomic(pairs, run_dir / artifacts.UNIVERSALITY_PAIRS_STEM, ("csv",))
    write_manifest(
        run_dir,
        make_manifest(STAGE, identity, files=list(_RUN_FILES), seconds=time.time() - t0, **manifest_common),
    )
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    _print_controls(controls)
    return stage.StageResult(
        STAGE,
        "done",
        outputs,
        int(trained_w.n),
        time.time() - t0,
        details={
            "pass_seconds": pass_seconds,
            "n_universal_aligned": {m: int(t["is_universal_aligned"].sum()) for m, t in tables["trained"].items()},
        },
    )


def _checkpoint(ckpt_dir: Path, worlds: list[_World], at_cap, next_row: int, batches: int, fp: str) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for w in worlds:
        tensors.update(w.acc.state_dict(w.name))
    if at_cap is not None:
        tensors.update({f"at_cap.mean.{m}": v for m, v in at_cap.mean.items()})
        tensors.update({f"at_cap.block.{a}.{b}": v for (a, b), v in at_cap.blocks.items()})
    name = f"state-{batches:08d}.safetensors"
    save_tensors_atomic(ckpt_dir / name, {k: v.contiguous() for k, v in tensors.items()})
    atomic_write_json(
        ckpt_dir / "state.json",
        {
            "fingerprint": fp,
            "tensors": name,
            "next_row": next_row,
            "batches": batches,
            "at_cap": at_cap is not None,
            "at_cap_n": at_cap.n if at_cap is not None else 0,
        },
    )
    for old in ckpt_dir.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _print_controls(controls) -> None:
    cols = [
        c
        for c in (
            "share",
            "share_all_refs",
            "rotated",
            "untrained",
            "half1",
            "half2",
            "jaccard_halves",
            "final_at_cap",
            "spearman_act_freq",
            "spearman_act_freq_untrained",
        )
        if c in controls
    ]
    cols += [c for c in controls.columns if c.startswith("step")]
    table = controls[controls.layer == "all"].set_index("candidate")[cols]
    for line in ("candidates (reference, all layers):\n" + table.to_string(float_format=lambda v: f"{v:.4f}")).split(
        "\n"
    ):
        stage.log(STAGE, line)


main = stage.cli(
    UniversalityConfig,
    run_universality,
    "python -m neuron_lib.universality",
    "All-pairs cross-seed correlations in one pass, the candidate universality criteria and their controls.",
)

if __name__ == "__main__":
    run_cli(main)
