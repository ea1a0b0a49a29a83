"""Activation summaries per model and dataset subset, streamed in one pass (``python -m neuron_lib.summary``).

Output: ``$SUMMARY_DIR/{model}/activations/{subset}/`` with one folder per value of the dataset's
``subset`` column (no ``all`` folder: consumers sum the subsets, e.g. ``neuron_df``), each holding

``histogram.safetensors``
    ``pre_bin_counts_all_positions`` int64 [L, N, 257]: the pre-activation histogram over **every** position of
    the subset's rows, BOS/EOS/pad included — the paper's convention (its summary filtered nothing), from which
    ``neuron_df`` computes the paper's binned columns; equal to ``pre_bin_counts`` when nothing is dropped.
    ``pre_bin_counts`` int64 [L, N, 257] on ``pre_bin_edges`` (kept positions only) = float32 linspace(−10, 15, 256) with the
    paper's rule (left ``searchsorted``: bin i holds edges[i−1] < v ≤ edges[i], bin 0 holds v ≤ edges[0],
    bin 256 holds v > edges[255]); values and edges are both float32 (the original mixed fp16 values with
    fp32 edges, spec §18.14). ``post_bin_counts`` int64 [L, N, 257] on ``post_bin_edges`` = float32
    linspace(−0.2, 10, 256) (GELU outputs lie above ≈ −0.17; values above 10 land in the last bin).
``moments.safetensors``
    exact streaming power sums in float64 about a per-neuron shift (the first batch's per-neuron mean of
    the run, ``pre_shift`` / ``post_shift`` [L, N], shared by all subsets of one run):
    ``{pre,post}_sum``, ``_sum_sq``, ``_sum_cube``, ``_sum_quad`` = Σ(x−shift)^k, ``_count`` int64 and
    ``_n_positive`` int64 (exact number of x > 0). :func:`moments_from_power_sums` turns them into
    population mean/var/skew/non-excess kurtosis; :func:`activation_frequency` gives n_positive / count.
``top_examples.safetensors`` (post-activations)
    * token level (the paper): ``top_values`` float32 [L, N, k], ``top_index`` int64 [L, N, k] = flat token
      index row·ctx + pos in the token dataset (rows of the whole dataset, not of the subset);
    * text level (Neuroscope): ``text_top_values`` (max of the neuron over a row), ``text_top_rows`` (row
      index), ``text_top_pos`` (position of that max in the row; first position on ties);
    * ``random_index`` int64 [R] and ``random_values`` [L, N, R]: R uniformly random kept token positions,
      the same for every neuron (a seeded hash of the flat index ranks tokens; the R smallest win);
    * quantile samples (OpenAI ``random_sample_by_quantile``, simplified): per neuron, bins cut at
      ``quantile_boundaries`` [L, N, Q] = the ``quantile_probs`` [Q] quantiles of the neuron's
      post-activation in the run's first batch (bins v ≤ b₀, b₀ < v ≤ b₁, …, v > b_{Q−1});
      ``quantile_bin_counts`` int64 [L, N, Q+1] exact counts per bin over the subset;
      ``quantile_index`` / ``quantile_values`` [L, N, Q+1, m]: m uniformly random tokens of each bin
      (same hash ranking as above; −1 / NaN where a bin has fewer than m tokens).
    Ranks are total orders: highest value first, ties to the lowest flat index (row for texts). Slots
    never filled hold value −inf and index −1 (no (0, index 0) placeholders).
``vocab.safetensors`` (post-activations, per token id)
    ``vocab_counts`` int64 [V] (kept tokens only); ``vocab_max_top_values`` / ``_ix`` [L, N, kv]: the tokens
    with the largest per-token max activation (every seen token is a candidate; unseen tokens are never
    listed; kept exactly in O(L·N·kv) memory by a streaming merge); ``vocab_mean_top_values`` / ``_ix``
    [L, N, kv]: largest mean activation per token over tokens with count ≥ ``vocab_mean_min_count``.
    The mean needs a float64 sum for every (neuron, token) pair, [L, N, V'], for the V' tokens it covers.
    ``vocab_mean_min_count`` is ``min_token_count`` (default 1) unless [L, N, V'] would not fit the
    ``--max-memory`` budget; then it is raised to the smallest count threshold whose tokens fit, so the
    result is still the exact top-kv by mean over the tokens with count ≥ the recorded threshold (rare
    tokens, whose means are noise anyway, drop out first). ``vocab_mean_token_ids`` lists the tokens covered.
    Ties: lowest token id first. The original kept dense [L, N, V] fp32 sums + fp16 max (≈ 11 GB for
    GPT-2 small) with max initialised at 0 (spec §18.14/§18.28).
``manifest.json``
    model, dataset, tokenizer fingerprint, n_tokens, subset, token filter (ids), config and its
    fingerprint, effective vocab threshold, versions; ``row_ids`` (the subset's dataset rows summarised) and
    ``row_sampling`` (``all``; or, under a ``--max-tokens`` cap, ``first`` / ``spread``: ``--rows``,
    ``streaming.select_rows``). Written last: a folder without it is unfinished.

Re-runs: a subset folder whose manifest has the same config fingerprint (batch size, device and the
``--subsets`` selection excluded) is skipped, so an interrupted run resumes at subset granularity; a folder of
another configuration is refused unless ``--overwrite``.

Token filter: BOS/EOS/pad positions are dropped from every statistic by default except
``pre_bin_counts_all_positions`` (the original kept them everywhere); ``--keep-bos`` keeps them, ``--drop-newline``
also drops the single-token newline (as the correlation stage does).
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import time
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from neuron_lib import artifacts, fused, stage
from neuron_lib.common import (
    REQUIRED,
    NeuronLibError,
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
)
from neuron_lib.models import DTYPES, model_output_name
from neuron_lib.stats import histogram_counts, moments_from_power_sums, post_bin_edges, pre_bin_edges
from neuron_lib.streaming import check_row_sampling, select_rows

STAGE = "summary"
SUMMARY_FORMAT = 2  # 2: adds pre_bin_counts_all_positions (part of the identity: older folders are refused)
NEG_INF = float("-inf")
_M32 = 0xFFFFFFFF
_M31 = 0x7FFFFFFF


# =============================================================== numeric helpers
def moments_from_file(tensors: Mapping[str, torch.Tensor], which: str = "pre") -> dict[str, torch.Tensor]:
    """mean/var/skew/kurt and ``act_freq`` (fraction > 0) from one ``moments.safetensors`` dict (``which``: pre/post)."""
    from neuron_lib.stats import activation_frequency

    t = tensors
    sums = {
        0: t[f"{which}_count"],
        1: t[f"{which}_sum"],
        2: t[f"{which}_sum_sq"],
        3: t[f"{which}_sum_cube"],
        4: t[f"{which}_sum_quad"],
    }
    out = moments_from_power_sums(sums, t[f"{which}_shift"])
    out["act_freq"] = activation_frequency(t[f"{which}_n_positive"], t[f"{which}_count"])
    return out


def index_reduce(
    target: torch.Tensor, dim: int, index: torch.Tensor, source: torch.Tensor, reduce: str
) -> torch.Tensor:
    """``target.index_reduce_`` without torch's 'beta API' warning on every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="index_reduce")
        return target.index_reduce_(dim, index, source, reduce)


def _ordered_bits(values: torch.Tensor) -> torch.Tensor:
    """int64 that orders like the float32 values (NaN → −inf, −0 → +0)."""
    v = values.to(torch.float32)
    v = torch.where(torch.isnan(v), torch.full_like(v, NEG_INF), v) + 0.0
    b = v.contiguous().view(torch.int32).to(torch.int64)
    return torch.where(b < 0, b ^ _M31, b)


def topk_lowest_id(values: torch.Tensor, ids: torch.Tensor, k: int):
    """Top ``k`` along the last dim by value (descending), ties → lowest id; deterministic total order.

    ``ids`` (int64, broadcastable to ``values``, each < 2³²; −1 marks an empty slot that loses every tie).
    Returns ``(values, ids, positions)`` of shape [..., k]; entries with value −inf get id −1 and are padded
    with (−inf, −1, −1) when fewer than k candidates exist.
    """
    ids = ids.expand_as(values)
    low = torch.where(ids < 0, torch.zeros_like(ids), _M32 - ids)
    key = (_ordered_bits(values) << 32) | low
    kk = min(k, values.shape[-1])
    _, pos = key.topk(kk, dim=-1, largest=True, sorted=True)
    vals = values.gather(-1, pos)
    out_ids = torch.where(vals == NEG_INF, torch.full_like(pos, -1), ids.gather(-1, pos))
    if kk < k:
        pad = list(values.shape[:-1]) + [k - kk]
        vals = torch.cat([vals, torch.full(pad, NEG_INF, dtype=vals.dtype, device=vals.device)], -1)
        out_ids = torch.cat([out_ids, torch.full(pad, -1, dtype=torch.long, device=vals.device)], -1)
        pos = torch.cat([pos, torch.full(pad, -1, dtype=torch.long, device=vals.device)], -1)
    return vals, out_ids, pos


def token_priority(flat_index: torch.Tensor, seed: int) -> torch.Tensor:
    """Seeded pseudo-random 31-bit priority of each flat token index (independent of batching)."""
    x = (flat_index.to(torch.int64) + ((int(seed) * 0x9E3779B1 + 0x7F4A7C15) & _M32)) & _M32
    x = x ^ ((flat_index.to(torch.int64) >> 32) & _M32)
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (x >> 16) ^ x
    return x & _M31


def _smallest_priority(prio: torch.Tensor, flat: torch.Tensor, k: int):
    """Positions of the k smallest (priority, flat) pairs along the last dim; empty slots have flat −1."""
    hi = torch.where(flat < 0, torch.full_like(prio, -1), _M31 - prio)
    low = torch.where(flat < 0, torch.zeros_like(flat), _M32 - flat)
    key = (hi << 32) | low
    kk = min(k, key.shape[-1])
    return key.topk(kk, dim=-1, largest=True, sorted=True).indices


# =============================================================== config and CLI
@dataclasses.dataclass
class SummaryConfig:
    """Activation summary of one model over a token dataset (one output folder per dataset subset)."""

    model: str = config_field(REQUIRED, "model name: zoo name, paper alias, local model folder or hub id")
    token_dataset: str = config_field(REQUIRED, "token dataset folder (neuron_lib.corpus layout)")
    batch_size: int = config_field(32, "dataset rows per forward pass")
    max_tokens: int | None = config_field(
        None, "raw tokens (before the filter): ceil(max_tokens / ctx) rows, taken as --rows says; none = all"
    )
    rows: str = config_field(
        "first",
        "which rows a token cap takes: first (the first rows) or spread (evenly spaced over the dataset, so every "
        "subset of a dataset sorted by subset is summarised)",
    )
    top_k: int = config_field(50, "token-level and text-level max-activating examples per neuron")
    vocab_top_k: int = config_field(100, "tokens kept per neuron by max and by mean activation")
    min_token_count: int = config_field(1, "tokens seen fewer times are left out of the mean-by-token ranking")
    n_random: int = config_field(20, "random token positions (shared by all neurons)")
    quantile_probs: tuple[float, ...] = config_field(
        (0.5, 0.9, 0.99, 0.999), "quantiles that cut the bins of the quantile samples"
    )
    n_per_quantile: int = config_field(5, "random examples per quantile bin and neuron (0 disables)")
    subsets: str | None = config_field(None, "comma-separated subset names to summarise; none = all")
    device: str = config_field("auto", "auto | cpu | cuda[:i]")
    dtype: str = config_field("float32", "model dtype; statistics always use float32 activations, float64 sums")
    max_memory: str = config_field("4GiB", "budget for the accumulators (the per-token mean sums take what is left)")
    keep_bos: bool = config_field(False, "keep BOS/EOS/pad positions in every statistic (the original did)")
    drop_newline: bool = config_field(False, "also drop the single-token newline (the correlation stage's filter)")
    seed: int = config_field(0, "seed of the random and quantile samples")
    overwrite: bool = config_field(False, "replace a summary of another configuration (or a corrupt one)")

    def validate(self) -> SummaryConfig:
        if not self.model:
            raise NeuronLibError("--model is required")
        if not self.token_dataset:
            raise NeuronLibError("--token-dataset is required (a folder written by neuron_lib.corpus)")
        for name in ("batch_size", "top_k", "vocab_top_k", "min_token_count"):
            if int(getattr(self, name)) < 1:
                raise NeuronLibError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        for name in ("n_random", "n_per_quantile"):
            if int(getattr(self, name)) < 0:
                raise NeuronLibError(f"--{name.replace('_', '-')} must be ≥ 0")
        if self.max_tokens is not None and int(self.max_tokens) < 1:
            raise NeuronLibError("--max-tokens must be positive (or omitted for the whole dataset)")
        check_row_sampling(self.rows)
        probs = [float(p) for p in self.quantile_probs]
        if any(not 0 < p < 1 for p in probs) or any(b <= a for a, b in zip(probs, probs[1:])):
            raise NeuronLibError(f"--quantile-probs must be increasing values in (0, 1), got {probs}")
        self.quantile_probs = tuple(probs)
        if self.dtype not in DTYPES:
            raise NeuronLibError(f"--dtype must be one of {sorted(DTYPES)}")
        parse_memory(self.max_memory)
        return self

    def identity(self) -> dict[str, Any]:
        """The fields that determine the results (not batch size, device, subset selection or --overwrite)."""
        identity = config_identity(self, exclude=("batch_size", "device", "overwrite", "subsets"))
        if self.row_sampling() != "spread":  # all rows, or the first ones (what every summary before --rows
            identity.pop("rows")  # took): the fingerprints of those summaries stay valid
        return {**identity, "format": SUMMARY_FORMAT}

    def row_sampling(self) -> str:
        """The rows a run takes: ``all`` without a --max-tokens cap (--rows then changes nothing), else --rows."""
        return "all" if self.max_tokens is None else self.rows


# =============================================================== reading summaries
def subset_folder_name(subset: str) -> str:
    """A dataset subset's value as a folder name (``artifacts.activation_summary(model, name)``)."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(subset)).strip("._") or "subset"


def load_summary(model: str, subset: str, parts: Iterable[str] = artifacts.SUMMARY_PARTS) -> dict[str, Any]:
    """``{"manifest": ..., "histogram": {...}, "moments": {...}, "top_examples": {...}, "vocab": {...}}``."""
    folder = artifacts.activation_summary(model, subset)
    if not artifacts.manifest_path(folder).exists():
        raise NeuronLibError(
            f"no finished activation summary at {folder}; run `python -m neuron_lib.summary "
            f"--model {model} --token-dataset ...` (finished subsets: "
            f"{artifacts.list_summary_subsets(model)})"
        )
    out: dict[str, Any] = {"manifest": read_json(artifacts.manifest_path(folder))}
    for part in parts:
        out[part] = load_tensors(artifacts.summary_part(folder, part))
    return out


def context_tokens(dataset, flat_index: int, before: int = 20, after: int = 5) -> tuple[list[int], int]:
    """Token ids around a flat index (row·ctx + pos) of ``dataset`` and the target's offset in that list."""
    flat_index = int(flat_index)
    if flat_index < 0:
        raise NeuronLibError("flat index −1 marks an empty top-k slot (the neuron saw fewer than k tokens)")
    ctx = len(dataset[0]["tokens"])
    row, pos = divmod(flat_index, ctx)
    tokens = [int(t) for t in dataset[row]["tokens"]]
    lo, hi = max(0, pos - before), min(ctx, pos + after + 1)
    return tokens[lo:hi], pos - lo


# =============================================================== accumulators
@dataclasses.dataclass
class _Pilot:
    """Run-wide reference values from the first batch: moment shifts and quantile boundaries."""

    pre_shift: torch.Tensor  # [L, N] float64
    post_shift: torch.Tensor
    quantile_boundaries: torch.Tensor  # [L, N, Q] float32


def _make_pilot(pre: torch.Tensor, post: torch.Tensor, probs: tuple[float, ...]) -> _Pilot:
    """From the first batch, [L, N, T]."""
    T = post.shape[-1]
    pre_shift = pre.to(torch.float64).mean(-1)
    post_shift = post.to(torch.float64).mean(-1)
    if probs:
        sorted_post = post.contiguous().sort(dim=-1).values  # contiguous first: a strided sort costs ~1.6×
        # lower-interpolation quantile: the ceil(p·T)-th smallest value
        idx = torch.tensor([min(T - 1, max(0, math.ceil(p * T) - 1)) for p in probs], device=post.device)
        bounds = sorted_post.index_select(-1, idx)
    else:
        bounds = post.new_zeros(post.shape[0], post.shape[1], 0)
    return _Pilot(pre_shift, post_shift, bounds.to(torch.float32))


def accumulator_bytes(n_layers: int, d_mlp: int, cfg: SummaryConfig) -> dict[str, int]:
    """Bytes held by the fixed-size accumulators of one subset (the vocabulary mean sums come on top)."""
    LN = n_layers * d_mlp
    nb = 257
    q = len(cfg.quantile_probs) + 1
    return {
        "histograms": 2 * LN * nb * 8,
        "moments": 2 * LN * (4 * 8 + 2 * 8 + 8),
        "top_examples": LN * cfg.top_k * 12 + LN * cfg.top_k * 20,
        "random_samples": LN * cfg.n_random * 4 + LN * q * (8 + cfg.n_per_quantile * 20) + LN * 4 * (q - 1),
        "vocab_max": LN * cfg.vocab_top_k * 12,
    }


def choose_mean_tokens(counts: torch.Tensor, min_count: int, budget_bytes: int, bytes_per_token: int):
    """Tokens whose mean is ranked: count ≥ threshold, threshold ≥ min_count raised until [L,N,V'] fits."""
    max_tokens = max(0, int(budget_bytes // max(1, bytes_per_token)))
    eligible = counts >= min_count
    threshold = int(min_count)
    if int(eligible.sum()) > max_tokens:
        ordered = torch.sort(counts[eligible], descending=True).values
        threshold = int(ordered[max_tokens]) + 1 if max_tokens < len(ordered) else threshold
    ids = torch.nonzero(counts >= threshold).flatten()
    return ids, threshold


def _first_per_group(group: torch.Tensor, n_groups: int, m: int | None = None) -> torch.Tensor:
    """For entries listed in priority order with group ids ``group`` [E], the entry numbers of each group's
    first ``m`` entries (all when m is None): int64 [n_groups, m], −1 where a group has fewer."""
    counts = torch.bincount(group, minlength=n_groups)
    width = int(counts.max()) if m is None else int(m)
    out = torch.full((n_groups, max(width, 0)), -1, dtype=torch.long, device=group.device)
    if group.numel() == 0 or width == 0:
        return out
    perm = torch.argsort(group, stable=True)
    g = group[perm]
    slot = torch.arange(len(perm), device=group.device) - (torch.cumsum(counts, 0) - counts)[g]
    keep = slot < width
    out[g[keep], slot[keep]] = perm[keep]
    return out


class SubsetStats:
    """Every streaming statistic of one subset; ``update`` per batch, ``finalize`` → the four files' tensors.

    Batches arrive token-major ([L, T, N], the layout the model produces), so that per-neuron reductions
    run over contiguous rows. Top-k updates only look at tokens that can still enter a neuron's list
    (value above its current k-th value) and gather those sparsely; the dense path is used while lists fill.
    """

    DENSE_FRACTION = 0.125  # candidates above this share of T·N → dense merge instead of sparse gather
    QUANTILE_DENSE_FACTOR = 4  # more than this·m·N quantile-bin candidates → prune by a cumulative count first

    def __init__(
        self,
        n_layers: int,
        d_mlp: int,
        d_vocab: int,
        cfg: SummaryConfig,
        pilot: _Pilot,
        mean_token_ids: torch.Tensor,
        device: torch.device,
    ):
        L, N, V = n_layers, d_mlp, d_vocab
        self.L, self.N, self.V, self.cfg, self.pilot, self.device = L, N, V, cfg, pilot, device
        dev = dict(device=device)
        self.pre_edges = pre_bin_edges().to(device)
        self.post_edges = post_bin_edges().to(device)
        self.hist = {w: torch.zeros(L, N, 257, dtype=torch.int64, **dev) for w in ("pre", "post")}
        self.sums = {w: torch.zeros(4, L, N, dtype=torch.float64, **dev) for w in ("pre", "post")}
        self.n_pos = {w: torch.zeros(L, N, dtype=torch.int64, **dev) for w in ("pre", "post")}
        self.count = 0
        k = cfg.top_k
        self.top_val = torch.full((L, N, k), NEG_INF, **dev)
        self.top_ix = torch.full((L, N, k), -1, dtype=torch.long, **dev)
        self.text_val = torch.full((L, N, k), NEG_INF, **dev)
        self.text_row = torch.full((L, N, k), -1, dtype=torch.long, **dev)
        self.text_pos = torch.full((L, N, k), -1, dtype=torch.long, **dev)
        R = cfg.n_random
        self.rand_flat = torch.full((R,), -1, dtype=torch.long, **dev)
        self.rand_prio = torch.full((R,), _M31, dtype=torch.long, **dev)
        self.rand_val = torch.full((L, R, N), float("nan"), **dev)
        Q, m = len(cfg.quantile_probs), cfg.n_per_quantile
        self.q_counts = torch.zeros(L, N, Q + 1, dtype=torch.int64, **dev)
        self.q_flat = torch.full((L, N, Q + 1, m), -1, dtype=torch.long, **dev)
        self.q_prio = torch.full((L, N, Q + 1, m), _M31, dtype=torch.long, **dev)
        self.q_val = torch.full((L, N, Q + 1, m), float("nan"), **dev)
        self.vocab_counts = torch.zeros(V, dtype=torch.int64, **dev)
        kv = cfg.vocab_top_k
        self.vmax_val = torch.full((L, N, kv), NEG_INF, **dev)
        self.vmax_tok = torch.full((L, N, kv), -1, dtype=torch.long, **dev)
        self.mean_ids = mean_token_ids.to(device)
        self.mean_map = torch.full((V,), -1, dtype=torch.long, **dev)
        self.mean_map[self.mean_ids] = torch.arange(len(self.mean_ids), **dev)
        self.vsum = torch.zeros(L, len(self.mean_ids), N, dtype=torch.float64, **dev)
        self._arN = torch.arange(N, **dev)
        self._fused = False  # set per batch by update (with _mpos_all, _tok_row, _tok_pos, _umap)

    # ------------------------------------------------------------ per batch
    @torch.no_grad()
    def update(
        self,
        pre: torch.Tensor,
        post: torch.Tensor,
        token_ids: torch.Tensor,
        flat: torch.Tensor,
        keep: torch.Tensor,
        batch_rows: torch.Tensor,
    ) -> None:
        """pre/post [L, T, N] float32 (token-major); token_ids/flat [T]; keep [B, P] (kept positions, row-major
        in the same order as the T tokens); batch_rows [B] dataset row ids of the batch."""
        T = post.shape[1]
        if T == 0:
            return
        dev = self.device
        pre, post = pre.to(dev).contiguous(), post.to(dev).contiguous()
        token_ids, flat, keep, batch_rows = (x.to(dev) for x in (token_ids, flat, keep, batch_rows))
        self.count += T
        self.vocab_counts += torch.bincount(token_ids, minlength=self.V)[: self.V]
        prio = token_priority(flat, self.cfg.seed)
        self._update_random(post, prio, flat)
        order = torch.argsort((prio << 32) | flat)  # tokens by (priority, flat)
        prio_sorted = prio[order]
        uniq, inv = torch.unique(token_ids, return_inverse=True)
        mpos_all = self.mean_map[token_ids]  # each token's row of the mean sums (−1: not ranked by mean)
        self._fused = fused.usable(pre, post)  # one fused pass per group (neuron_lib.fused) on the CPU
        msel = mpos = None  # the torch path's kept tokens and their rows
        if not self._fused:
            msel = torch.nonzero(mpos_all >= 0).flatten()
            mpos = mpos_all[msel]
        else:
            self._mpos_all = mpos_all
            self._tok_row, self._tok_pos = keep.nonzero(as_tuple=True)  # kept tokens, row-major like x
            self._umap = torch.full((self.V,), -1, dtype=torch.long, device=dev)  # token id → its row in uniq
            self._umap[uniq] = torch.arange(len(uniq), device=dev)
        for l in range(self.L):
            self._moments_hist("pre", l, pre[l], self.pilot.pre_shift[l], self.pre_edges)
            x = post[l]  # [T, N]
            self._moments_hist("post", l, x, self.pilot.post_shift[l], self.post_edges)
            self._update_top(l, x, flat)
            self._update_text(l, x, keep, batch_rows)
            self._update_quantiles(l, x, flat, order, prio_sorted)
            self._update_vocab(l, x, uniq, inv, mpos, msel)

    def _moments_hist(self, which: str, l: int, x: torch.Tensor, shift: torch.Tensor, edges: torch.Tensor) -> None:
        if self._fused:
            fused.moments_hist_(x, shift, edges, self.hist[which][l], self.sums[which][:, l], self.n_pos[which][l])
            return
        self.hist[which][l] += histogram_counts(x, edges, dim=0)
        d = x.to(torch.float64) - shift.unsqueeze(0)
        d2 = d * d
        s = self.sums[which]
        s[0, l] += d.sum(0)
        s[1, l] += d2.sum(0)
        d2 *= d
        s[2, l] += d2.sum(0)
        d2 *= d
        s[3, l] += d2.sum(0)
        self.n_pos[which][l] += (x > 0).sum(0)

    def _candidates(self, x: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor):
        """Values/ids [N, c] of the entries of x [E, N] where mask [E, N] holds, per neuron (padded −inf/−1),
        or None when there is none. ``ids`` [E] names the rows of x."""
        nnz = int(mask.sum())
        if nnz == 0:
            return None
        if nnz > self.DENSE_FRACTION * mask.numel():
            vals = torch.where(mask, x, torch.full_like(x, NEG_INF)).t()
            return vals, ids.unsqueeze(0).expand(self.N, -1)
        e_idx, n_idx = mask.nonzero(as_tuple=True)
        slots = _first_per_group(n_idx, self.N)
        ok = slots >= 0
        sc = slots.clamp(min=0)
        vals = torch.where(ok, x[e_idx[sc], n_idx[sc]], torch.full(sc.shape, NEG_INF, device=x.device))
        return vals, torch.where(ok, ids[e_idx[sc]], torch.full_like(sc, -1))

    def _update_top(self, l: int, x: torch.Tensor, flat: torch.Tensor) -> None:
        if self._fused:
            fused.top_merge_(x, flat, self.top_val[l], self.top_ix[l])
            return
        # later tokens have larger flat indices, so a tie with the k-th value never enters: strict >
        cand = self._candidates(x, x > self.top_val[l, :, -1].unsqueeze(0), flat)
        if cand is None:
            return
        vals = torch.cat([self.top_val[l], cand[0]], 1)
        ids = torch.cat([self.top_ix[l], cand[1]], 1)
        self.top_val[l], self.top_ix[l], _ = topk_lowest_id(vals, ids, self.cfg.top_k)

    def _update_text(self, l: int, x: torch.Tensor, keep: torch.Tensor, batch_rows: torch.Tensor) -> None:
        if self._fused:
            fused.text_merge_(
                x, self._tok_row, self._tok_pos, batch_rows, self.text_val[l], self.text_row[l], self.text_pos[l]
            )
            return
        B, P = keep.shape
        dense = torch.full((B, P, self.N), NEG_INF, device=x.device)
        dense[keep] = x
        row_max, row_pos = dense.max(dim=1)  # [B, N]; the first position on ties
        vals = torch.cat([self.text_val[l], row_max.t()], 1)
        rows = torch.cat([self.text_row[l], batch_rows.unsqueeze(0).expand(self.N, -1)], 1)
        poss = torch.cat([self.text_pos[l], row_pos.t()], 1)
        self.text_val[l], self.text_row[l], sel = topk_lowest_id(vals, rows, self.cfg.top_k)
        p = poss.gather(1, sel.clamp(min=0))
        self.text_pos[l] = torch.where(self.text_row[l] < 0, torch.full_like(p, -1), p)

    def _update_random(self, post: torch.Tensor, prio: torch.Tensor, flat: torch.Tensor) -> None:
        R = self.cfg.n_random
        if R == 0:
            return
        all_prio = torch.cat([self.rand_prio, prio])
        all_flat = torch.cat([self.rand_flat, flat])
        sel = _smallest_priority(all_prio, all_flat, R)
        old = self.rand_val.index_select(1, sel.clamp(max=R - 1))
        new = post.index_select(1, (sel - R).clamp(min=0))
        vals = torch.where((sel < R).view(1, -1, 1), old, new)
        self.rand_prio, self.rand_flat = all_prio[sel], all_flat[sel]
        self.rand_val = torch.where((self.rand_flat < 0).view(1, -1, 1), torch.full_like(vals, float("nan")), vals)

    def _update_quantiles(
        self, l: int, x: torch.Tensor, flat: torch.Tensor, order: torch.Tensor, prio_sorted: torch.Tensor
    ) -> None:
        bnd = self.pilot.quantile_boundaries[l]  # [N, Q]
        Q = bnd.shape[1]
        T, N = x.shape
        if self._fused:
            fused.quantile_counts_(x, bnd, self.q_counts[l])
        else:
            above = [(x > bnd[:, j].unsqueeze(0)).sum(0) for j in range(Q)]  # tokens above each boundary
            edges_count = torch.stack(
                [torch.full_like(above[0], T) if Q else torch.full((N,), T, device=x.device)]
                + above
                + [torch.zeros(N, dtype=torch.long, device=x.device)],
                1,
            )
            self.q_counts[l] += edges_count[:, :-1] - edges_count[:, 1:]
        m = self.cfg.n_per_quantile
        if m == 0:
            return
        if self._fused:
            q = (self.q_flat[l], self.q_prio[l], self.q_val[l])
            fused.quantile_samples_(x, order, prio_sorted, flat, bnd, *q, _M31)
            return
        # only tokens ranked before a bin's current m-th sample (or any, while a slot is empty) can enter it
        stored_prio = torch.where(
            self.q_flat[l, :, :, -1] < 0, torch.full_like(self.q_prio[l, :, :, -1], _M31 + 1), self.q_prio[l, :, :, -1]
        )  # [N, Q+1]
        width = int(torch.searchsorted(prio_sorted, stored_prio.max()).item()) if T else 0
        if width == 0:
            return
        idx = order[:width]
        xs = x.index_select(0, idx)  # [W, N] in priority order
        bins = torch.zeros(xs.shape, dtype=torch.uint8, device=x.device)
        for j in range(Q):
            bins += xs > bnd[:, j].unsqueeze(0)
        ps = prio_sorted[:width].unsqueeze(1)
        for j in range(Q + 1):
            mask = (bins == j) & (ps < stored_prio[:, j].unsqueeze(0))
            if (
                int(mask.sum()) > self.QUANTILE_DENSE_FACTOR * m * N
            ):  # many candidates: keep each neuron's first m (in priority order) first
                mask &= mask.cumsum(0, dtype=torch.int32) <= m
            e_idx, n_idx = mask.nonzero(as_tuple=True)
            if e_idx.numel() == 0:
                continue
            slots = _first_per_group(n_idx, N, m)
            ok = slots >= 0
            sc = slots.clamp(min=0)
            e = e_idx[sc]
            c_flat = torch.where(ok, flat[idx[e]], torch.full_like(sc, -1))
            c_prio = torch.where(ok, prio_sorted[e], torch.full_like(sc, _M31))
            c_val = torch.where(ok, xs[e, n_idx[sc]], torch.full(sc.shape, float("nan"), device=x.device))
            all_flat = torch.cat([self.q_flat[l, :, j], c_flat], 1)
            all_prio = torch.cat([self.q_prio[l, :, j], c_prio], 1)
            all_val = torch.cat([self.q_val[l, :, j], c_val], 1)
            sel = _smallest_priority(all_prio, all_flat, m)
            self.q_flat[l, :, j] = all_flat.gather(1, sel)
            self.q_prio[l, :, j] = all_prio.gather(1, sel)
            self.q_val[l, :, j] = all_val.gather(1, sel)

    def _update_vocab(self, l, x, uniq, inv, mpos, msel) -> None:
        U = uniq.shape[0]
        bmax = torch.full((U, self.N), NEG_INF, device=x.device)  # [U, N] per-token max of this batch
        if self._fused:
            fused.vocab_(x, self._mpos_all, inv, self.vsum[l], bmax)
            fused.vocab_merge_(bmax, uniq, self._umap, self.vmax_val[l], self.vmax_tok[l])
            return
        if len(msel):
            self.vsum[l].index_add_(0, mpos, x.index_select(0, msel).to(torch.float64))
        bmax = index_reduce(bmax, 0, inv, x, "amax")
        s_tok, s_val = self.vmax_tok[l], self.vmax_val[l]
        where = torch.searchsorted(uniq, s_tok.clamp(min=0)).clamp(max=U - 1)  # [N, kv]
        present = (uniq[where] == s_tok) & (s_tok >= 0)
        rows_n = self._arN.unsqueeze(1).expand_as(where)
        s_val = torch.where(present, torch.maximum(s_val, bmax[where, rows_n]), s_val)
        # tokens already listed compete through their (updated) entry, not twice
        bmax[where[present], rows_n[present]] = NEG_INF
        # a new token enters only at or above the lowest listed value (ties go to the lower token id)
        floor = s_val.min(1).values.unsqueeze(0)
        cand = self._candidates(bmax, (bmax >= floor) & (bmax > NEG_INF), uniq)
        if cand is None:
            vals, toks = s_val, s_tok
        else:
            vals, toks = torch.cat([s_val, cand[0]], 1), torch.cat([s_tok, cand[1]], 1)
        self.vmax_val[l], self.vmax_tok[l], _ = topk_lowest_id(vals, toks, self.cfg.vocab_top_k)

    # ------------------------------------------------------------ results
    @torch.no_grad()
    def finalize(self, mean_min_count: int) -> dict[str, dict[str, torch.Tensor]]:
        cpu = lambda t: t.detach().cpu()  # noqa: E731
        count = torch.full((self.L, self.N), self.count, dtype=torch.int64)
        moments = {}
        for w, shift in (("pre", self.pilot.pre_shift), ("post", self.pilot.post_shift)):
            s = cpu(self.sums[w])
            moments.update(
                {
                    f"{w}_shift": cpu(shift),
                    f"{w}_sum": s[0],
                    f"{w}_sum_sq": s[1],
                    f"{w}_sum_cube": s[2],
                    f"{w}_sum_quad": s[3],
                    f"{w}_count": count.clone(),
                    f"{w}_n_positive": cpu(self.n_pos[w]),
                }
            )
        kv = self.cfg.vocab_top_k
        mean_vals = torch.full((self.L, self.N, kv), NEG_INF)
        mean_ix = torch.full((self.L, self.N, kv), -1, dtype=torch.long)
        if len(self.mean_ids):
            denom = self.vocab_counts[self.mean_ids].to(torch.float64).unsqueeze(1)
            for l in range(self.L):
                means = (self.vsum[l] / denom).t().to(torch.float32)  # [N, V']
                v, i, _ = topk_lowest_id(means, self.mean_ids.unsqueeze(0), kv)
                mean_vals[l], mean_ix[l] = cpu(v), cpu(i)
        return {
            "histogram": {
                "pre_bin_counts": cpu(self.hist["pre"]),
                "pre_bin_edges": cpu(self.pre_edges),
                "post_bin_counts": cpu(self.hist["post"]),
                "post_bin_edges": cpu(self.post_edges),
            },
            "moments": moments,
            "top_examples": {
                "top_values": cpu(self.top_val),
                "top_index": cpu(self.top_ix),
                "text_top_values": cpu(self.text_val),
                "text_top_rows": cpu(self.text_row),
                "text_top_pos": cpu(self.text_pos),
                "random_index": cpu(self.rand_flat),
                "random_values": cpu(self.rand_val.transpose(1, 2)),
                "quantile_probs": torch.tensor(self.cfg.quantile_probs, dtype=torch.float64),
                "quantile_boundaries": cpu(self.pilot.quantile_boundaries),
                "quantile_bin_counts": cpu(self.q_counts),
                "quantile_index": cpu(self.q_flat),
                "quantile_values": cpu(self.q_val),
            },
            "vocab": {
                "vocab_counts": cpu(self.vocab_counts),
                "vocab_mean_top_values": mean_vals,
                "vocab_mean_top_ix": mean_ix,
                "vocab_max_top_values": cpu(self.vmax_val),
                "vocab_max_top_ix": cpu(self.vmax_tok),
                "vocab_mean_token_ids": cpu(self.mean_ids),
                "vocab_mean_min_count": torch.tensor(int(mean_min_count), dtype=torch.int64),
            },
        }


# =============================================================== the run
def _subset_rows(ds, row_ids: list[int], fallback: str) -> dict[str, list[int]]:
    """The dataset rows ``row_ids`` grouped by their subset: {subset: [row id, ...]} (ascending)."""
    if "subset" in ds.column_names:
        names = ds.select_columns(["subset"]).with_format(None)[row_ids]["subset"]
    else:
        names = [fallback] * len(row_ids)
    groups: dict[str, list[int]] = {}
    for i, s in zip(row_ids, names):
        groups.setdefault(str(s), []).append(int(i))
    return groups


def _count_tokens(ds, rows: list[int], drop: torch.Tensor, V: int, chunk: int = 2048) -> torch.Tensor:
    from neuron_lib.streaming import tokens_tensor

    counts = torch.zeros(V, dtype=torch.int64)
    sub = ds.select(rows) if len(rows) != len(ds) else ds
    for a in range(0, len(sub), chunk):
        t = tokens_tensor(sub, a, min(a + chunk, len(sub))).reshape(-1)
        if len(drop):
            t = t[~torch.isin(t, drop)]
        if len(t) and int(t.max()) >= V:
            raise NeuronLibError(
                f"the token dataset holds token id {int(t.max())} but the model's vocabulary has {V} "
                "entries: the data was tokenized for another model"
            )
        counts += torch.bincount(t, minlength=V)
    return counts


def _estimate_seconds(model, ctx: int, n_rows: int) -> float:
    """Rough run time: one timed single-row forward pass (after a warm-up) x rows x 3 (statistics ≈ 2 forwards)."""
    from neuron_lib.streaming import mlp_activations

    probe = torch.zeros(1, ctx, dtype=torch.long)
    mlp_activations(model, probe[:, : min(ctx, 8)], True, True)
    t0 = time.perf_counter()
    mlp_activations(model, probe, True, True)
    return (time.perf_counter() - t0) * n_rows * 3.0


def _select_subsets(cfg: SummaryConfig, inputs: stage.StageInputs) -> dict[str, list[int]]:
    """Dataset rows of each subset to summarise (``--subsets`` or all, among the rows ``--rows`` takes), checked."""
    row_ids = select_rows(len(inputs.dataset), inputs.n_rows, cfg.rows).tolist()
    groups = _subset_rows(inputs.dataset, row_ids, inputs.dataset_name)
    if cfg.subsets:
        wanted = [s.strip() for s in cfg.subsets.split(",") if s.strip()]
        missing = [s for s in wanted if s not in groups]
        if missing:
            raise NeuronLibError(
                f"subsets {missing} are not in the {len(row_ids)} rows ({cfg.rows}) of {cfg.token_dataset}; "
                f"present: {sorted(groups)}"
                + ("; --rows spread takes rows from every subset" if cfg.rows == "first" else "")
            )
        groups = {s: groups[s] for s in wanted}
    return groups


def _plan(
    cfg: SummaryConfig,
    model,
    inputs: stage.StageInputs,
    groups: Mapping[str, list[int]],
    todo: list[str],
    drop_list: list[int],
) -> tuple[dict[str, tuple[torch.Tensor, int]], int]:
    """Print the plan (memory, tokens, time); return each subset's mean-by-token plan (token ids, count threshold)
    and the number of tokens the run keeps."""
    L, N, V = model.cfg.n_layers, model.cfg.d_mlp, model.cfg.d_vocab
    drop = torch.tensor(drop_list, dtype=torch.long)
    fixed = accumulator_bytes(L, N, cfg)
    fixed_total = sum(fixed.values())
    budget = parse_memory(cfg.max_memory)
    if fixed_total > budget:
        raise NeuronLibError(
            f"the fixed accumulators need {human_bytes(fixed_total)} > --max-memory {cfg.max_memory}; "
            "raise --max-memory or lower --top-k/--vocab-top-k"
        )
    counts = {s: _count_tokens(inputs.dataset, groups[s], drop, V) for s in todo}
    mean_plan = {s: choose_mean_tokens(counts[s], cfg.min_token_count, budget - fixed_total, L * N * 8) for s in todo}
    empty = [s for s in todo if int(counts[s].sum()) == 0]
    if empty:
        raise NeuronLibError(f"subsets {empty} have no tokens left after the token filter (dropped ids {drop_list})")
    ctx = inputs.ctx
    stage.log(
        STAGE,
        f"plan: model {model_output_name(cfg.model)} ({L} layers x {N} neurons, vocab {V}) on "
        f"{model.cfg.device}; dataset {inputs.dataset_name}, {inputs.n_rows} rows x {ctx} = "
        f"{inputs.n_rows * ctx:,} tokens; dropping token ids {drop_list}",
    )
    stage.log(
        STAGE,
        f"  accumulators: {', '.join(f'{k} {human_bytes(v)}' for k, v in fixed.items())}; activations per "
        f"batch ≈ {human_bytes(2 * L * N * cfg.batch_size * ctx * 4)}; budget --max-memory {cfg.max_memory}",
    )
    for s in todo:
        ids, thr = mean_plan[s]
        kept = int(counts[s].sum())
        covered = float(counts[s][ids].sum()) / max(1, kept)
        raised = (
            "" if thr == cfg.min_token_count else f"  [threshold raised from {cfg.min_token_count} to fit the budget]"
        )
        stage.log(
            STAGE,
            f"  subset {s!r}: {len(groups[s])} rows, {kept:,} kept tokens, {int((counts[s] > 0).sum()):,} "
            f"distinct; mean-by-token over {len(ids):,} tokens with count ≥ {thr} ({100 * covered:.1f}% of "
            f"tokens), sums {human_bytes(len(ids) * L * N * 8)}{raised}",
        )
    eta = _estimate_seconds(model, ctx, sum(len(groups[s]) for s in todo))
    stage.log(STAGE, f"  estimated time ≈ {eta:.0f} s (rough, from one probe forward pass)")
    return mean_plan, sum(int(counts[s].sum()) for s in todo)


def _summarise_subset(
    model,
    inputs: stage.StageInputs,
    rows: list[int],
    cfg: SummaryConfig,
    drop_list: list[int],
    mean_ids: torch.Tensor,
    pilot: _Pilot | None,
    bar,
) -> tuple[SubsetStats, _Pilot, torch.Tensor]:
    """Stream one subset's rows through the model into a :class:`SubsetStats`; also returns the pre-activation
    histogram of the positions the filter dropped, int64 [L, N, 257] (for the paper's all-positions histogram)."""
    from neuron_lib.streaming import iter_mlp_activations

    L, N, V, ctx = model.cfg.n_layers, model.cfg.d_mlp, model.cfg.d_vocab, inputs.ctx
    row_ids = torch.tensor(rows, dtype=torch.long)
    sub = inputs.dataset.select(rows) if len(rows) != len(inputs.dataset) else inputs.dataset
    stats: SubsetStats | None = None
    edges = pre_bin_edges()
    dropped_hist = torch.zeros(L, N, edges.numel() + 1, dtype=torch.int64)
    batches = iter_mlp_activations(
        model, sub, cfg.batch_size, drop_list, want_pre=True, want_post=True, want_dropped_pre=True
    )
    for batch in batches:
        if batch.dropped_pre.shape[-1]:
            for l in range(L):
                dropped_hist[l] += histogram_counts(batch.dropped_pre[l], edges.to(batch.dropped_pre.device)).cpu()
        if batch.flat_index.shape[0] == 0:
            continue
        if pilot is None:
            pilot = _make_pilot(batch.pre, batch.post, cfg.quantile_probs)
        if stats is None:
            stats = SubsetStats(L, N, V, cfg, pilot, mean_ids, torch.device(batch.post.device))
        start, end = batch.rows
        global_rows = row_ids[start:end]
        flat = global_rows[batch.flat_index // ctx - start] * ctx + batch.flat_index % ctx
        # the streamed [L, N, T] is a view of the model's token-major [L, T, N]: use that layout
        stats.update(
            batch.pre.transpose(1, 2), batch.post.transpose(1, 2), batch.token_ids, flat, batch.keep, global_rows
        )
        bar.update(batch.flat_index.shape[0])
    return stats, pilot, dropped_hist


def run_summary(cfg: SummaryConfig) -> stage.StageResult:
    """Summarise ``cfg.model`` over ``cfg.token_dataset``, one output folder per dataset subset."""
    from tqdm import tqdm

    from neuron_lib.models import load_model
    from neuron_lib.streaming import drop_ids_for

    cfg.validate()
    inputs = stage.open_inputs(cfg.model, cfg.token_dataset, cfg.max_tokens)
    identity = {**cfg.identity(), "token_dataset": inputs.dataset_identity}  # content, not the folder's path
    fingerprint = config_fingerprint(identity)
    groups = _select_subsets(cfg, inputs)
    folders = {s: artifacts.activation_summary(cfg.model, subset_folder_name(s)) for s in groups}
    if len(set(folders.values())) != len(folders):
        raise NeuronLibError(f"subset names {sorted(groups)} collide after making them folder names")
    files = [artifacts.summary_part_file(p) for p in artifacts.SUMMARY_PARTS]
    todo = [
        s
        for s, f in folders.items()
        if stage.must_run(f, stage.folder_state(f, STAGE, fingerprint, files), cfg.overwrite, STAGE)
    ]
    outputs = {s: str(f) for s, f in folders.items()}
    if not todo:
        stage.log(
            STAGE,
            f"{len(groups)} subset(s) of {model_output_name(cfg.model)} already done in "
            f"{artifacts.activation_summary_root(cfg.model)} (skipped: same configuration)",
        )
        return stage.StageResult(STAGE, "skipped", outputs)

    device = pick_device(cfg.device)
    model = load_model(cfg.model, device=device, dtype=DTYPES[cfg.dtype])
    drop_list = drop_ids_for(inputs.tokenizer, cfg.keep_bos, cfg.drop_newline)
    mean_plan, total_kept = _plan(cfg, model, inputs, groups, todo, drop_list)

    pilot, n_tokens = None, 0
    bar = tqdm(total=total_kept, unit="tok", unit_scale=True, desc="summary", file=sys.stderr, mininterval=1.0)
    t_start = time.perf_counter()
    try:
        for s in todo:
            stats, pilot, dropped_hist = _summarise_subset(
                model, inputs, groups[s], cfg, drop_list, mean_plan[s][0], pilot, bar
            )
            n_tokens += int(stats.count)
            manifest = make_manifest(
                STAGE,
                identity,
                config_fingerprint=fingerprint,
                **inputs.manifest_fields(model),
                subset=s,
                ctx_len=inputs.ctx,
                n_rows=len(groups[s]),
                row_sampling=cfg.row_sampling(),
                row_ids=groups[s],
                n_tokens=int(stats.count),
                n_tokens_raw=len(groups[s]) * inputs.ctx,
                token_filter={"keep_bos": cfg.keep_bos, "drop_newline": cfg.drop_newline, "dropped_ids": drop_list},
                vocab_mean_min_count=int(mean_plan[s][1]),
                vocab_mean_n_tokens=int(len(mean_plan[s][0])),
                batch_size=cfg.batch_size,
                device=str(device),
                dtype=cfg.dtype,
                bins={
                    "pre": "float32 linspace(-10, 15, 256), left searchsorted",
                    "post": "float32 linspace(-0.2, 10, 256), left searchsorted",
                    "pre_all_positions": "as pre, over every position of the rows (BOS/EOS/pad kept: the paper's "
                    "convention)",
                },
            )
            parts = stats.finalize(mean_plan[s][1])
            hist = parts["histogram"]
            hist["pre_bin_counts_all_positions"] = hist["pre_bin_counts"] + dropped_hist
            stage.write_folder(
                folders[s],
                {artifacts.summary_part_file(p): t for p, t in parts.items()},
                manifest,
                metadata={"stage": STAGE, "subset": s, "ctx_len": str(inputs.ctx)},
            )
    finally:
        bar.close()
    seconds = time.perf_counter() - t_start
    stage.log(
        STAGE,
        f"{n_tokens:,} tokens in {seconds:.1f} s ({n_tokens / max(seconds, 1e-9):,.0f} tokens/s) -> "
        f"{artifacts.activation_summary_root(cfg.model)}",
    )
    return stage.StageResult(STAGE, "done", outputs, n_tokens, seconds, details={"written": todo})


main = stage.cli(
    SummaryConfig,
    run_summary,
    "python -m neuron_lib.summary",
    "Activation summaries (histograms, exact moments, top-k examples, vocab stats) per dataset subset.",
)


if __name__ == "__main__":
    run_cli(main)
