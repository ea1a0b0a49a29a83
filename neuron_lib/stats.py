"""The paper's numerics, once: histogram edges and binning, binned and exact moments, sparsity, percentiles.

Every stage and figure that needs one of these calls it from here (tests check each against an
independent float64 reference in tests/test_stats.py).

Binning rule (spec §0.4, a left-sided ``searchsorted``): with E edges there are E + 1 bins; bin 0 holds
v ≤ edges[0], bin i holds edges[i−1] < v ≤ edges[i], bin E holds v > edges[E−1]; NaN goes to the last bin.

Moments are population moments; kurtosis is NOT excess (a Gaussian gives 3), as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int

from neuron_lib.common import NeuronLibError

# ---------------------------------------------------------------- histogram edges
N_HIST_EDGES = 256  # the paper's activation histogram: 256 edges → 257 bins
N_COSINE_EDGES = 100  # the paper's cosine / correlation histogram: 100 edges → 101 bins


def pre_bin_edges(n_edges: int = N_HIST_EDGES) -> Float[torch.Tensor, " edges"]:
    """The paper's pre-activation edges: float32 linspace(−10, 15, n_edges)."""
    return torch.linspace(-10.0, 15.0, n_edges, dtype=torch.float32)


def post_bin_edges(n_edges: int = N_HIST_EDGES) -> Float[torch.Tensor, " edges"]:
    """Post-activation edges: float32 linspace(−0.2, 10, n_edges) (GELU ≥ −0.17; > 10 lands in the last bin)."""
    return torch.linspace(-0.2, 10.0, n_edges, dtype=torch.float32)


def cosine_edges(dtype: torch.dtype = torch.float64) -> Float[torch.Tensor, " edges"]:
    """The paper's cosine / correlation edges: linspace(−1, 1, 100) computed in float64, cast to ``dtype``."""
    return torch.linspace(-1.0, 1.0, N_COSINE_EDGES, dtype=torch.float64).to(dtype)


# ---------------------------------------------------------------- binning
def bin_index(values: torch.Tensor, edges: Float[torch.Tensor, " edges"]) -> torch.Tensor:
    """Bin of each value under the paper's rule = ``searchsorted(edges, v, right=False)``.

    Computed in float64 for float64 values and in float32 otherwise (edges cast to the same dtype). For
    uniform edges (linspace) the bin is estimated arithmetically and corrected by one exact comparison on
    each side, which gives the binary search's bins at a fraction of its cost; other edges use
    ``torch.searchsorted``. NaN goes to the last bin.
    """
    dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    values = values.to(dtype)
    edges = edges.to(device=values.device, dtype=dtype).contiguous()
    E = edges.numel()
    step = (edges[-1] - edges[0]) / (E - 1) if E > 1 else None
    if step is None or step <= 0 or not torch.allclose(edges[1:] - edges[:-1], step.expand(E - 1), rtol=1e-3, atol=0):
        idx = torch.searchsorted(edges, values.contiguous(), right=False)
        return torch.where(torch.isnan(values), torch.full_like(idx, E), idx)
    inf = torch.tensor([float("inf")], device=values.device, dtype=dtype)
    ext = torch.cat([-inf, edges, inf])  # bin i holds ext[i] < v <= ext[i + 1]
    est = (values - edges[0]).mul_(1.0 / step).ceil_()
    idx = est.nan_to_num_(nan=float(E), posinf=float(E), neginf=0.0).clamp_(0, E).to(torch.long)
    idx += (values > torch.take(ext, idx + 1)).to(torch.long)
    idx -= ((values <= torch.take(ext, idx)) & (idx > 0)).to(torch.long)
    return idx


def histogram_counts(
    values: torch.Tensor, edges: torch.Tensor, dim: int = 1, exclude: torch.Tensor | None = None
) -> Int[torch.Tensor, "rows bins"]:
    """int64 [R, E+1] counts of ``values`` under the paper's rule, counted along ``dim``.

    ``values`` is [R, C] with dim=1 (default) or [C, R] with dim=0; ``exclude`` (bool, same shape) drops entries.
    """
    n_bins = edges.numel() + 1
    idx = bin_index(values, edges)
    if exclude is not None:
        idx = idx.masked_fill(exclude, n_bins)  # an overflow bin, cut off below
    R = values.shape[1 - dim]
    width = n_bins + (exclude is not None)
    offsets = torch.arange(R, device=values.device) * width
    offsets = offsets.unsqueeze(1) if dim == 1 else offsets.unsqueeze(0)
    counts = torch.bincount((idx + offsets).reshape(-1), minlength=R * width).view(R, width)
    return counts[:, :n_bins] if exclude is not None else counts


# ---------------------------------------------------------------- binned statistics (the paper's columns)
def padded_bin_centres(edges: torch.Tensor) -> Float[torch.Tensor, " bins"]:
    """Bin centres of the paper's binned moments (spec §5.3), float64 [E+1].

    The E edges are padded with one step on each side (edge₀ − step, …, edge_{E−1} + step): E+2 edges and
    E+1 centres, one per histogram bin (the end bins' centres lie half a step outside the range).
    """
    e = edges.to(torch.float64)
    step = e[1] - e[0]
    padded = torch.cat([e[:1] - step, e, e[-1:] + step])
    return (padded[:-1] + padded[1:]) / 2


def binned_moments(counts: torch.Tensor, edges: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Mean, variance, skew and NON-excess kurtosis from histogram counts [..., E+1] (paper, spec §5.3).

    μ = Σ c_k f_k / F, var = Σ (c_k − μ)² f_k / F, skew = Σ (c_k − μ)³ f_k / (F var^1.5),
    kurt = Σ (c_k − μ)⁴ f_k / (F var²), with c_k the padded bin centres. float64; NaN for empty rows.
    """
    edges = pre_bin_edges() if edges is None else edges
    c = padded_bin_centres(edges)
    if counts.shape[-1] != c.numel():
        raise NeuronLibError(f"histogram has {counts.shape[-1]} bins but the edges give {c.numel()}")
    f = counts.to(torch.float64)
    F = f.sum(-1)
    mean = (f * c).sum(-1) / F
    d = c - mean[..., None]
    var = (f * d**2).sum(-1) / F
    skew = (f * d**3).sum(-1) / (F * var**1.5)
    kurt = (f * d**4).sum(-1) / (F * var**2)
    return {"mean": mean, "var": var, "skew": skew, "kurt": kurt}


def first_nonnegative_edge(edges: torch.Tensor) -> int:
    """Index z of the first edge ≥ 0 (an edge that is 0 up to float rounding counts as 0).

    For the paper's edges z = 102 (edge 102 is 0.0 in float32 numpy, +1.6e−7 in float32 torch and
    −1.4e−16 in float64; the tolerance makes all three agree with the paper).
    """
    e = edges.to(torch.float64)
    tol = 1e-4 * float((e[1:] - e[:-1]).abs().min())
    nonneg = torch.nonzero(e >= -tol).flatten()
    if nonneg.numel() == 0:
        raise NeuronLibError("no histogram edge is ≥ 0: the paper's sparsity is undefined for these edges")
    return int(nonneg[0])


def binned_sparsity(counts: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's ``sparsity`` (spec §5.4): Σ_{k ≥ z} counts_k / Σ_k counts_k, z = first edge ≥ 0.

    Really an activation *frequency*; bin z holds edges[z−1] < v ≤ edges[z], so it counts values above
    edges[z−1] ≈ −0.098 (the paper's one-bin bias). float64.
    """
    edges = pre_bin_edges() if edges is None else edges
    z = first_nonnegative_edge(edges)
    f = counts.to(torch.float64)
    return f[..., z:].sum(-1) / f.sum(-1)


# ---------------------------------------------------------------- exact moments from power sums
PowerSums = Mapping[int, torch.Tensor]  # {k: Σ (x − shift)^k} for k = 0..4 (S₀ = count)


def moments_from_power_sums(sums: PowerSums, shift=0.0) -> dict[str, torch.Tensor]:
    """Population mean, variance, skew and NON-excess kurtosis from power sums {k: Σ (x − shift)^k}, k = 0..4.

    The variance is clamped at 0 (rounding can make it slightly negative for constant inputs); a zero
    variance gives NaN skew/kurt and a zero count NaN everywhere. float64.
    """
    n = torch.as_tensor(sums[0]).to(torch.float64)
    m1, m2, m3, m4 = (torch.as_tensor(sums[k]).to(torch.float64) / n for k in (1, 2, 3, 4))
    var = torch.clamp(m2 - m1**2, min=0.0)
    mu3 = m3 - 3 * m1 * m2 + 2 * m1**3
    mu4 = m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4
    return {
        "mean": torch.as_tensor(shift, dtype=torch.float64) + m1,
        "var": var,
        "skew": mu3 / var**1.5,
        "kurt": mu4 / var**2,
    }


def shift_power_sums(sums: PowerSums, from_shift, to_shift) -> dict[int, torch.Tensor]:
    """Re-centre power sums: {k: Σ (x − s)^k} → {k: Σ (x − t)^k}, k = 0..4 (binomial expansion, exact algebra)."""
    d = torch.as_tensor(from_shift, dtype=torch.float64) - torch.as_tensor(to_shift, dtype=torch.float64)
    return {k: sum(math.comb(k, j) * sums[j].to(torch.float64) * d ** (k - j) for j in range(k + 1)) for k in range(5)}


def pool_power_sums(parts: Sequence[tuple[PowerSums, torch.Tensor]]) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Pool several (power sums, shift) pairs into power sums about their pooled mean (NaN-free)."""
    if not parts:
        raise NeuronLibError("no power sums to pool")
    total_n = sum(s[0].to(torch.float64) for s, _ in parts)
    pooled = torch.nan_to_num(sum(s[0] * (sh + s[1] / s[0]) for s, sh in parts) / total_n)
    out = {k: torch.zeros_like(pooled) for k in range(5)}
    for s, sh in parts:
        moved = shift_power_sums(s, sh, pooled)
        for k in range(5):
            out[k] = out[k] + moved[k]
    return out, pooled


def activation_frequency(n_positive, count) -> torch.Tensor:
    """Exact fraction of activations > 0 (the paper's 'sparsity', without its one-bin offset)."""
    return torch.as_tensor(n_positive).to(torch.float64) / torch.as_tensor(count).to(torch.float64)


def row_moments(values: Float[torch.Tensor, "rows cols"], exclude: torch.Tensor | None = None):
    """Two-pass population mean, variance, skew = mean(z³) and NON-excess kurtosis = mean(z⁴) of each row.

    ``exclude`` (bool [R, C]) drops entries. Returns ``(mean, var, skew, kurt)``, each [R].
    """
    if exclude is None:
        n = torch.full((values.shape[0],), values.shape[1], dtype=values.dtype, device=values.device)
        mean = values.mean(1)
        d = values - mean[:, None]
    else:
        keep = ~exclude
        n = keep.sum(1).to(values.dtype)
        mean = torch.where(keep, values, 0).sum(1) / n
        d = torch.where(keep, values - mean[:, None], 0)
    d2 = d * d
    return central_moments(n, mean, d2.sum(1), (d2 * d).sum(1), (d2 * d2).sum(1))


def central_moments(n, mean: torch.Tensor, s2: torch.Tensor, s3: torch.Tensor, s4: torch.Tensor):
    """``(mean, var, skew, kurt)`` from the central power sums s_k = Σ (x − mean)^k of n values: population
    variance, skew = mean(z³), NON-excess kurtosis = mean(z⁴) (0/0 → NaN). ``row_moments`` and the fused row
    sweep (``fused.row_moments_hist``) both end here."""
    var = s2 / n
    return mean, var, s3 / n / var.pow(1.5), s4 / n / var.pow(2)


# ---------------------------------------------------------------- percentiles (Fig. 3)
def percentile_of_score(population, scores) -> np.ndarray:
    """scipy ``percentileofscore(population, score, kind='rank')`` (0–100) for many scores at once.

    NaNs are left out of the population and give NaN percentiles.
    """
    pop = np.asarray(population, dtype=float)
    pop = np.sort(pop[~np.isnan(pop)])
    scores = np.asarray(scores, dtype=float)
    if len(pop) == 0:
        return np.full(scores.shape, np.nan)
    left = np.searchsorted(pop, scores, side="left")
    right = np.searchsorted(pop, scores, side="right")
    pct = (left + right + (right > left)) * (50.0 / len(pop))
    return np.where(np.isnan(scores), np.nan, pct)


def within_layer_percentiles(df, metrics):
    """Each neuron's percentile (0–100, :func:`percentile_of_score`) on each metric among its layer's neurons."""
    import pandas as pd

    metrics = [m for m in metrics if m in df]
    out = pd.DataFrame(index=df.index, columns=metrics, dtype=float)
    for _, idx in df.groupby("layer").groups.items():
        for m in metrics:
            values = df.loc[idx, m].to_numpy(dtype=float)
            out.loc[idx, m] = percentile_of_score(values, values)
    return out


# ---------------------------------------------------------------- per-token metrics of next-token predictions
@torch.no_grad()
def token_metrics(logits: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """loss / entropy (nats) / rank [B, P] from logits [B, P, V] and tokens [B, P] (rank = # logits > true).

    loss and rank describe the prediction of token p+1 at position p; the last position is 0. The rank counts
    the logits strictly greater than the true token's (0 = top-1) instead of sorting the vocabulary (spec §18.29).
    """
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.to(torch.float32)
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    B, P = tokens.shape
    loss = torch.zeros(B, P, dtype=logits.dtype, device=logits.device)
    rank = torch.zeros(B, P, dtype=torch.int32, device=logits.device)
    if P > 1:
        nxt = tokens[:, 1:].to(logits.device).unsqueeze(-1)
        loss[:, :-1] = -logp[:, :-1].gather(-1, nxt).squeeze(-1)
        true_logit = logits[:, :-1].gather(-1, nxt)
        rank[:, :-1] = (logits[:, :-1] > true_logit).sum(-1).to(torch.int32)
    return {"loss": loss, "entropy": entropy, "rank": rank}


@torch.no_grad()
def token_kl(base_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p_base ‖ p) in nats of the next-token distributions, per position: [B, P] from two [B, P, V] logits."""
    dt = torch.float64 if torch.float64 in (base_logits.dtype, logits.dtype) else torch.float32
    base = torch.log_softmax(base_logits.to(dt), -1)
    logp = torch.log_softmax(logits.to(dt), -1)
    return (base.exp() * (base - logp)).sum(-1).clamp(min=0.0)


def reciprocal_rank(rank: torch.Tensor) -> torch.Tensor:
    """1 / (rank + 1) for ranks counted from 0 (spec §8.3's ``recip_rank``)."""
    return 1.0 / (rank.to(torch.float64) + 1.0)


# ---------------------------------------------------------------- bootstrap intervals and correlations
def bootstrap_ci(values: np.ndarray, n_boot: int, rng: np.random.Generator, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling entries with replacement)."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return float("nan"), float("nan")
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def bootstrap_index(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] resample indices (with replacement) from ``seed``: one draw shared by every quantity of a run,
    so paired differences between interventions use the same resamples."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci_index(values: np.ndarray, index: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` [n] over the resamples ``index`` [n_boot, n]."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return float("nan"), float("nan")
    means = values[index].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def pearson(x, y) -> float:
    """Pearson correlation (float64, two-pass); NaN when either side is constant or has < 2 values."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    den = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / den) if den > 0 else float("nan")


def average_ranks(x) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy ``rankdata(method='average')``)."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], len(xs)]
    ranks = np.empty(len(x), np.float64)
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def spearman(x, y) -> float:
    """Spearman correlation = Pearson of the average ranks."""
    return pearson(average_ranks(x), average_ranks(y))


# ---------------------------------------------------------------- explanations (explain.py): variance reduction
def variance_reduction(n, s, q, n1, s1, q1) -> torch.Tensor:
    """Paper eq. 4 from per-class sufficient statistics, float64, population variances:

        VR = 1 − [(1−β)·Var(a | y=0) + β·Var(a | y=1)] / Var(a),   β = n1 / n,

    with ``n, s, q`` = count, Σa, Σa² over all tokens ([N] or broadcastable) and ``n1, s1, q1`` the same over the
    tokens where the feature is true ([F, N] or broadcastable). Sums should be taken about a per-neuron shift (the
    result is shift invariant; the shift keeps Σa² − (Σa)²/n from cancelling). Population variances (ddof 0) make
    eq. 4 exactly the between-class share of the variance (the correlation ratio, = the squared point-biserial
    correlation of a and y), so VR lies in [0, 1] and is comparable across features of any frequency; the
    original's pandas ddof=1 variances shift it by O(1/class size) and can make it negative for tiny classes.
    Degenerate cases (a class empty, or Var(a) = 0) give 0, never NaN; rounding is clamped into [0, 1]."""
    f64 = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
    n, s, q, n1, s1, q1 = map(f64, (n, s, q, n1, s1, q1))
    n0, s0, q0 = n - n1, s - s1, q - q1
    ss_tot = q - s * s / n.clamp(min=1)
    ss1 = q1 - s1 * s1 / n1.clamp(min=1)
    ss0 = q0 - s0 * s0 / n0.clamp(min=1)
    ok = (n1 > 0) & (n0 > 0) & (ss_tot > 1e-12 * q.abs().clamp(min=1e-300))
    vr = 1 - (ss0 + ss1) / torch.where(ok, ss_tot, torch.ones_like(ss_tot))
    return torch.where(ok, vr, torch.zeros_like(vr)).clamp(0.0, 1.0)


def cell_model_fit(train_n, train_s) -> torch.Tensor:
    """Class-conditional means of a cell model (cells on the last dim); an empty cell takes the overall mean."""
    train_n = torch.as_tensor(train_n, dtype=torch.float64)
    train_s = torch.as_tensor(train_s, dtype=torch.float64)
    overall = train_s.sum(-1, keepdim=True) / train_n.sum(-1, keepdim=True).clamp(min=1)
    return torch.where(train_n > 0, train_s / train_n.clamp(min=1), overall.expand_as(train_s))


def cell_model_vr(n, s, q_total) -> torch.Tensor:
    """Variance explained by the class-conditional means of a partition into cells (last dim): SS_between /
    SS_total = eq. 4 generalised to many classes (population variances). ``q_total`` = Σa² over all cells."""
    n = torch.as_tensor(n, dtype=torch.float64)
    s = torch.as_tensor(s, dtype=torch.float64)
    q_total = torch.as_tensor(q_total, dtype=torch.float64)
    N, S = n.sum(-1), s.sum(-1)
    ss_tot = q_total - S * S / N.clamp(min=1)
    ss_between = (s * s / n.clamp(min=1)).sum(-1) - S * S / N.clamp(min=1)
    ok = ss_tot > 1e-12 * q_total.abs().clamp(min=1e-300)
    return torch.where(
        ok, ss_between / torch.where(ok, ss_tot, torch.ones_like(ss_tot)), torch.zeros_like(ss_tot)
    ).clamp(0, 1)


def cell_model_correlation(means, held_n, held_s, held_q) -> torch.Tensor:
    """OpenAI automated-interpretability score of a simulation that predicts ``means[c]`` for every token of cell c:
    the Pearson correlation of simulated and true activations over held-out tokens, from the held-out cell counts
    ``held_n``, sums ``held_s`` (cells on the last dim) and the total Σa² ``held_q``. Exact (no per-token pass):
    Σ_t (sim_t − sim̄)(a_t − ā) = Σ_c (μ_c − sim̄)·s_c. A constant simulation or activation scores 0."""
    mu = torch.as_tensor(means, dtype=torch.float64)
    n = torch.as_tensor(held_n, dtype=torch.float64)
    s = torch.as_tensor(held_s, dtype=torch.float64)
    q = torch.as_tensor(held_q, dtype=torch.float64)
    N, S = n.sum(-1), s.sum(-1)
    mbar = (n * mu).sum(-1, keepdim=True) / N.clamp(min=1)[..., None]
    cov = ((mu - mbar) * s).sum(-1)
    var_sim = (n * (mu - mbar) ** 2).sum(-1)
    var_a = q - S * S / N.clamp(min=1)
    denom = var_sim * var_a
    ok = (var_sim > 1e-24) & (var_a > 1e-12 * q.abs().clamp(min=1e-300))
    return torch.where(ok, cov / torch.where(ok, denom, torch.ones_like(denom)).sqrt(), torch.zeros_like(cov)).clamp(
        -1, 1
    )
