"""Explanations by reduction in variance (paper eq. 4, spec §7): ``python -m neuron_lib.explain``.

For a model, a token dataset and a neuron selection (all / some layers, e.g. the last K / the universal set / a
list), the variance reduction of each neuron's activation by every boolean feature and by the previous-token version
of every feature, a best-feature table, explanation scores on held-out rows and per-neuron activation records.

Activations: the model's own MLP post-activation (``blocks.{l}.mlp.hook_post``, i.e. gelu_new for GPT-2 — the
original applied exact-erf GELU to cached pre-activations, spec §18.15), streamed batch by batch through
``streaming.mlp_activations``; BOS / EOS / pad positions are dropped (``streaming.drop_ids_for``).

Features (one column each; ``features.csv`` lists kind and family):

* **token** features, functions of the token id: the vocabulary table (``vocab_features``, spec §7.2, refused when
  made for another tokenizer) and the unigram features (§7.3; count threshold = the paper's 3000 per 10M tokens
  scaled to the tokens analysed, recorded in the manifest);
* **sequence** features, per position: spaCy labels (§7.4, ``sequence_features``), position buckets
  (``is_position_…``) and subset/topic one-hots (``is_subset_{subset}``).

Previous-token features: feature of the token one position earlier **in the same row**; the first position of a
row has no previous token, so every previous-token feature is False there (the original rolled the flattened
array and wrapped across rows, §18.15).

Numerics: per-class counts, sums and sums of squares — token features through per-token-id sums ([V', N]
``index_add_`` over the V' token ids that occur in the analysed rows, not the whole vocabulary: an absent id is in
no class, so the sums are the same, and a 49,152-token vocabulary does not cost [49,152, N] float64 accumulators;
then one [F, V'] × [V', N] product), sequence features through [T, F]ᵀ × [T, N] products per batch —
in float64 about a per-neuron shift; ``stats.variance_reduction`` (population variances; see there why).

Held-out split: a seeded ``heldout_fraction`` of the rows (``heldout_rows`` in the manifest). The VR tables, the
best features and the combinations are computed on the other rows ("selection rows"); the scores only on the
held-out rows. Features with fewer than ``min_class_count`` positive (or negative) selection tokens are skipped:
they are absent from the VR tables (never NaN), flagged in ``features.csv`` and counted in the manifest.

Scores (beyond the paper, OpenAI automated interpretability): simulate each neuron's activation by the
selection-row class-conditional means of (a) its best feature and (b) the best combination of 2 and of 3 of its
``n_candidates`` best features (all 2^k cells), and score the Pearson correlation of simulated and true
activations on the held-out rows (``stats.cell_model_correlation``, exact from held-out cell sums).

Output ``$DATAFRAMES_DIR/explanations/{model}/{dataset}/`` (``artifacts.explanations``):
``variance_reduction.parquet`` / ``prev_token_variance_reduction.parquet`` (rows = neurons, columns ``neuron``
("l.n"), ``layer``, ``neuron_index`` then one per kept feature), ``features.csv``, ``best_features.{csv,parquet}``
(per neuron: ``best_feature`` (prev-token features prefixed ``prev_``), ``best_kind`` ∈ token / sequence /
prev_token / prev_sequence, ``best_vr``, ``runner_up``, ``runner_up_vr``, the best of each kind, the selection
flag), ``scores.{csv,parquet}`` (``score_best``, ``combo2``, ``score_combo2``, ``combo3``, ``score_combo3``,
train VRs of the combinations), ``records/{layer}/{neuron}.json`` (OpenAI ``NeuronRecord``: top-activating,
random and per-quantile records with token strings and activations), ``manifest.json`` last.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from neuron_lib import artifacts, stage, stats
from neuron_lib.common import (
    REQUIRED,
    NeuronLibError,
    atomic_write_json,
    config_field,
    config_fingerprint,
    config_identity,
    human_bytes,
    make_manifest,
    pick_device,
    save_dataframe_atomic,
)
from neuron_lib.streaming import check_row_sampling, select_rows

STAGE = "explain"
FEATURE_GROUPS = ("token", "sequence", "position", "subset")
KINDS = ("token", "sequence", "prev_token", "prev_sequence")
DEFAULT_MAX_TOKENS = 98_304  # 768 rows of 128 tokens: the spaCy parse (2 processes) + two model passes fit 4 minutes


@dataclasses.dataclass
class ExplainConfig:
    """Variance-reduction explanations of a model's neurons over a token dataset."""

    model: str = config_field(REQUIRED, "model name: zoo name, paper alias, local model folder or hub id")
    token_dataset: str = config_field(REQUIRED, "token dataset folder (neuron_lib.corpus layout)")
    neurons: str = config_field(
        "all",
        "all | layer:L | layers:A,B or layers:A-B (inclusive) | last:K (the last K layers) | universal (rows of the "
        "neuron table flagged by --selection-column) | L.N,L.N,...",
    )
    selection_column: str = config_field(
        "is_universal", "boolean neuron_df column that --neurons universal selects (and the report splits by)"
    )
    features: str = config_field(
        "token,sequence,position,subset", "feature groups: token, sequence (spaCy), position, subset"
    )
    max_tokens: int | None = config_field(
        DEFAULT_MAX_TOKENS,
        "raw tokens analysed (ceil(max_tokens / ctx) rows), all spaCy-parsed (~2-4k tokens/s per process); the "
        "default keeps make all's explain within 4 minutes on 2 cores; none = all",
    )
    rows: str = config_field(
        "spread",
        "which rows a token cap takes: spread (evenly spaced over the dataset, so every subset is represented) or "
        "first (the first rows)",
    )
    heldout_fraction: float = config_field(0.2, "share of rows held out for the explanation scores")
    seed: int = config_field(0, "seed of the held-out split and the random activation records")
    min_class_count: int = config_field(20, "features with fewer positive (or negative) selection tokens are skipped")
    n_candidates: int = config_field(5, "best features per neuron searched for the best 2- and 3-feature combination")
    vocab_name: str = config_field("", "vocabulary table name (dataframes/vocab_dfs/{name}); empty = from the model")
    records: bool = config_field(True, "write activation records (OpenAI NeuronRecord JSON) per neuron")
    record_top_k: int = config_field(10, "top-activating records per neuron")
    record_random: int = config_field(5, "random records per neuron")
    record_per_quantile: int = config_field(3, "records per quantile bin (bins from a shared random pool)")
    record_pool: int = config_field(200, "random token positions shared by all neurons (random and quantile samples)")
    record_before: int = config_field(24, "tokens before the record's token")
    record_after: int = config_field(7, "tokens after the record's token")
    spacy_processes: int = config_field(2, "spaCy parser processes")
    spacy_batch_size: int = config_field(64, "segments per spaCy pipe batch")
    batch_size: int = config_field(32, "dataset rows per forward pass")
    replay_mib: int = config_field(
        2048,
        "pass 2 reads pass 1's activations from memory instead of running the model again when the selected "
        "neurons' float32 activations (neurons x tokens x 4 bytes) fit in this many MiB; 0: always two forward passes",
    )
    device: str = config_field("auto", "auto | cpu | cuda[:i]")
    overwrite: bool = config_field(False, "replace explanations of another configuration (or a corrupt folder)")

    def validate(self) -> ExplainConfig:
        if not self.model:
            raise NeuronLibError("--model is required")
        if not self.token_dataset:
            raise NeuronLibError("--token-dataset is required (a folder written by neuron_lib.corpus)")
        groups = [g.strip() for g in str(self.features).split(",") if g.strip()]
        bad = [g for g in groups if g not in FEATURE_GROUPS]
        if bad or not groups:
            raise NeuronLibError(f"--features takes a comma list of {', '.join(FEATURE_GROUPS)}; got {self.features!r}")
        self.features = ",".join(groups)
        if not 0 < float(self.heldout_fraction) < 1:
            raise NeuronLibError("--heldout-fraction must lie strictly between 0 and 1")
        if int(self.replay_mib) < 0:
            raise NeuronLibError("--replay-mib must be ≥ 0 (0: run the model for both passes)")
        for name in ("min_class_count", "n_candidates", "batch_size", "spacy_processes", "spacy_batch_size"):
            if int(getattr(self, name)) < 1:
                raise NeuronLibError(f"--{name.replace('_', '-')} must be ≥ 1")
        for name in (
            "record_top_k",
            "record_random",
            "record_per_quantile",
            "record_pool",
            "record_before",
            "record_after",
        ):
            if int(getattr(self, name)) < 0:
                raise NeuronLibError(f"--{name.replace('_', '-')} must be ≥ 0")
        if self.max_tokens is not None and int(self.max_tokens) < 1:
            raise NeuronLibError("--max-tokens must be positive (or omitted for the whole dataset)")
        check_row_sampling(self.rows)
        return self

    @property
    def groups(self) -> list[str]:
        return str(self.features).split(",")

    def identity(self) -> dict[str, Any]:
        ident = config_identity(
            self,
            exclude=(
                "batch_size",
                "replay_mib",
                "device",
                "overwrite",
                "spacy_processes",
                "spacy_batch_size",
                "token_dataset",
            ),
        )
        ident["model"] = artifacts.model_name(self.model)
        return ident


# ---------------------------------------------------------------- neuron selection
def parse_neurons(spec: str, n_layers: int, d_mlp: int, neuron_table: pd.DataFrame | None, column: str) -> np.ndarray:
    """Flat neuron ids (layer·d_mlp + n) of a ``--neurons`` value; every id checked before any work."""
    spec = str(spec).strip()
    total = n_layers * d_mlp
    if spec == "all":
        return np.arange(total)
    if spec.startswith(("layer:", "layers:", "last:")):
        layers = _parse_layers(spec, n_layers)
        return np.concatenate([np.arange(layer * d_mlp, (layer + 1) * d_mlp) for layer in layers])
    if spec == "universal":
        if neuron_table is None:
            raise NeuronLibError(
                "--neurons universal needs the model's neuron table; run `python -m neuron_lib.neuron_df` first"
            )
        if column not in neuron_table.columns:
            raise NeuronLibError(
                f"the neuron table has no column {column!r} (--selection-column); its boolean columns: "
                f"{[c for c in neuron_table.columns if neuron_table[c].dtype == bool]}"
            )
        flags = neuron_table[column].fillna(False).astype(bool).to_numpy()
        ids = (neuron_table["layer"].to_numpy() * d_mlp + neuron_table["neuron"].to_numpy())[flags]
        if len(ids) == 0:
            raise NeuronLibError(f"no neuron of the table has {column} = True; choose --neurons all or a list")
        return np.sort(ids.astype(np.int64))
    ids = []
    for item in spec.split(","):
        item = item.strip()
        try:
            l, n = (int(x) for x in item.split("."))
        except ValueError:
            raise NeuronLibError(f"--neurons: {item!r} is not LAYER.NEURON (e.g. 1.42)") from None
        if not (0 <= l < n_layers and 0 <= n < d_mlp):
            raise NeuronLibError(
                f"--neurons: neuron {item} is out of range (the model has {n_layers} layers x {d_mlp} neurons)"
            )
        ids.append(l * d_mlp + n)
    return np.unique(np.array(ids, dtype=np.int64))


def _parse_layers(spec: str, n_layers: int) -> list[int]:
    """``layer:L`` / ``layers:A,B`` / ``layers:A-B`` (inclusive) / ``last:K`` (the last K layers) → sorted layers."""
    kind, _, body = spec.partition(":")
    try:
        if kind == "last":
            k = int(body)
            if not 1 <= k <= n_layers:
                raise NeuronLibError(f"--neurons {spec!r}: K must lie in 1..{n_layers} (the model's layers)")
            return list(range(n_layers - k, n_layers))
        layers: set[int] = set()
        for part in body.split(","):
            lo, dash, hi = part.strip().partition("-")
            a, b = int(lo), int(hi) if dash else int(lo)
            if a > b:
                raise NeuronLibError(f"--neurons {spec!r}: the range {part.strip()!r} is empty")
            layers.update(range(a, b + 1))
    except ValueError:
        raise NeuronLibError(
            f"--neurons {spec!r}: layers must be integers (layer:L, layers:A,B, layers:A-B or last:K)"
        ) from None
    bad = sorted(layer for layer in layers if not 0 <= layer < n_layers)
    if bad:
        raise NeuronLibError(f"--neurons {spec!r}: layer {bad[0]} is out of range (the model has {n_layers} layers)")
    return sorted(layers)


def neuron_names(ids: np.ndarray, d_mlp: int) -> list[str]:
    return [f"{i // d_mlp}.{i % d_mlp}" for i in ids]


def previous_in_row(grid: np.ndarray, fill) -> np.ndarray:
    """``grid`` [rows, ctx, ...] shifted one position right **within each row**: out[r, p] = grid[r, p − 1], and
    out[r, 0] = ``fill`` (the original rolled the flattened array, so row r's last token leaked into row r+1)."""
    out = np.empty_like(grid)
    out[:, 0] = fill
    out[:, 1:] = grid[:, :-1]
    return out


def compact_token_ids(tokens: np.ndarray, token_matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The token ids that occur in ``tokens`` [rows, ctx], numbered 0..V'-1 in id order: ``(compact [rows, ctx],
    previous [rows, ctx] (the compact id of the token one position earlier in the row; V' at a row's first
    position, "no previous token"), token_matrix[present] [V', F])``. Class sums over these V' ids equal those over
    the whole vocabulary (an absent id adds nothing to any class) at V'/V of the memory."""
    present = np.unique(tokens)
    index = np.full(int(present[-1]) + 1 if len(present) else 1, -1, dtype=np.int64)
    index[present] = np.arange(len(present))
    compact = index[tokens]
    return compact, previous_in_row(compact, len(present)), token_matrix[present]


def heldout_rows(n_rows: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean [rows]: the seeded held-out rows (at least one, and at least one selection row)."""
    rng = np.random.default_rng(seed)
    held = rng.random(n_rows) < fraction
    if n_rows >= 2:
        if not held.any():
            held[rng.integers(n_rows)] = True
        if held.all():
            held[0] = False
    return held


# ---------------------------------------------------------------- streaming accumulators
class ClassSums:
    """Counts, Σa, Σa² per (feature, neuron) for the token features (via per-token-id sums) and the sequence
    features (via matrix products), current and previous token, for the selection and the held-out rows."""

    def __init__(self, n_vocab: int, n_seq: int, n_neurons: int):
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
        self.V = n_vocab
        # index V of the "prev" sums = no previous token (first position of a row)
        self.tok = {sp: {"n": z(n_vocab), "s": z(n_vocab, n_neurons), "q": z(n_vocab, n_neurons)} for sp in (0, 1)}
        self.prev = {
            sp: {"n": z(n_vocab + 1), "s": z(n_vocab + 1, n_neurons), "q": z(n_vocab + 1, n_neurons)} for sp in (0, 1)
        }
        self.seq = {sp: {"n": z(n_seq), "s": z(n_seq, n_neurons), "q": z(n_seq, n_neurons)} for sp in (0, 1)}
        self.pseq = {sp: {"n": z(n_seq), "s": z(n_seq, n_neurons), "q": z(n_seq, n_neurons)} for sp in (0, 1)}
        self.total = {sp: {k: z(n_neurons) for k in ("n", "s", "q", "c", "f")} for sp in (0, 1)}

    def add(
        self,
        split: int,
        acts: torch.Tensor,
        tok: torch.Tensor,
        prev: torch.Tensor,
        seq: torch.Tensor,
        pseq: torch.Tensor,
    ):
        """acts [T, N] float64 (shifted), tok/prev [T] ids (prev = V when none), seq/pseq [T, F] float64 0/1."""
        sq = acts * acts
        for acc, idx in ((self.tok[split], tok), (self.prev[split], prev)):
            acc["n"].index_add_(0, idx, torch.ones(len(idx), dtype=torch.float64))
            acc["s"].index_add_(0, idx, acts)
            acc["q"].index_add_(0, idx, sq)
        for acc, x in ((self.seq[split], seq), (self.pseq[split], pseq)):
            if x.shape[1]:
                acc["n"] += x.sum(0)
                acc["s"] += x.T @ acts
                acc["q"] += x.T @ sq
        t = self.total[split]
        t["n"] += len(acts)
        t["s"] += acts.sum(0)
        t["q"] += sq.sum(0)
        t["c"] += (sq * acts).sum(0)
        t["f"] += (sq * sq).sum(0)


def _token_class_sums(acc, matrix: torch.Tensor):
    """Per-feature sums from per-token-id sums: [F, V] @ [V, N]."""
    return matrix @ acc["n"], matrix @ acc["s"], matrix @ acc["q"]


# ---------------------------------------------------------------- records (OpenAI NeuronRecord)
class RecordCollector:
    """Per-neuron top-k windows and windows at a shared random pool of positions, gathered while streaming."""

    def __init__(self, n_neurons: int, top_k: int, before: int, after: int, pool_flat: np.ndarray):
        self.k, self.before, self.after = top_k, before, after
        self.W = before + after + 1
        self.top_vals = torch.full((n_neurons, top_k), -math.inf)
        self.top_flat = torch.full((n_neurons, top_k), -1, dtype=torch.long)
        self.top_acts = torch.zeros(n_neurons, top_k, self.W)
        self.top_toks = torch.full((n_neurons, top_k, self.W), -1, dtype=torch.long)
        self.pool_flat = torch.as_tensor(np.sort(pool_flat), dtype=torch.long)
        R = len(self.pool_flat)
        self.pool_vals = torch.full((R, n_neurons), float("nan"))
        self.pool_acts = torch.zeros(R, n_neurons, self.W)
        self.pool_toks = torch.full((R, self.W), -1, dtype=torch.long)

    def _windows(self, dense, tokens, rows_idx, pos_idx):
        """dense [B, P, N], tokens [B, P]; rows/pos [...] → acts [..., N?] windows; handled by callers."""
        offs = torch.arange(-self.before, self.after + 1)
        wp = pos_idx[..., None] + offs  # [..., W]
        valid = (wp >= 0) & (wp < dense.shape[1])
        wpc = wp.clamp(0, dense.shape[1] - 1)
        return wpc, valid

    def add(self, dense: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor, start_row: int):
        B, P, N = dense.shape
        if self.k:
            vals = torch.where(keep[..., None], dense, torch.tensor(-math.inf)).reshape(B * P, N)
            k = min(self.k, B * P)
            bv, bi = vals.topk(k, dim=0)  # [k, N]
            r, p = bi // P, bi % P
            wpc, valid = self._windows(dense, tokens, r, p)  # [k, N, W]
            nidx = torch.arange(N)[None, :, None].expand_as(wpc)
            acts = dense[r[..., None].expand_as(wpc), wpc, nidx] * valid
            toks = torch.where(valid, tokens[r[..., None].expand_as(wpc), wpc], torch.tensor(-1))
            flat = (r + start_row) * P + p
            cat_v = torch.cat([self.top_vals, bv.T], 1)
            cat_f = torch.cat([self.top_flat, flat.T], 1)
            cat_a = torch.cat([self.top_acts, acts.permute(1, 0, 2)], 1)
            cat_t = torch.cat([self.top_toks, toks.permute(1, 0, 2)], 1)
            # total order: value desc, then lowest flat index (stable across batch sizes)
            order = torch.argsort(cat_f, dim=1, stable=True)
            cat_v, cat_f = cat_v.gather(1, order), cat_f.gather(1, order)
            cat_a = cat_a.gather(1, order[..., None].expand_as(cat_a))
            cat_t = cat_t.gather(1, order[..., None].expand_as(cat_t))
            sel = torch.argsort(-cat_v, dim=1, stable=True)[:, : self.k]
            self.top_vals = cat_v.gather(1, sel)
            self.top_flat = torch.where(torch.isfinite(self.top_vals), cat_f.gather(1, sel), torch.tensor(-1))
            self.top_acts = cat_a.gather(1, sel[..., None].expand(-1, -1, self.W))
            self.top_toks = cat_t.gather(1, sel[..., None].expand(-1, -1, self.W))
        lo, hi = start_row * P, (start_row + B) * P
        inside = (self.pool_flat >= lo) & (self.pool_flat < hi)
        if inside.any():
            where = inside.nonzero().flatten()
            local = self.pool_flat[where] - lo
            r, p = local // P, local % P
            wpc, valid = self._windows(dense, tokens, r, p)  # [m, W]
            self.pool_vals[where] = dense[r, p]
            self.pool_acts[where] = (dense[r[:, None].expand_as(wpc), wpc] * valid[..., None]).permute(0, 2, 1)
            self.pool_toks[where] = torch.where(valid, tokens[r[:, None].expand_as(wpc), wpc], torch.tensor(-1))


def _record(strings, toks, acts) -> dict:
    keep = toks >= 0
    return {
        "tokens": [strings[int(t)] for t in toks[keep]],
        "activations": [round(float(a), 6) for a in acts[keep]],
    }


def neuron_records(
    rc: RecordCollector, moments: dict, strings, d_mlp: int, ids: np.ndarray, n_random: int, per_quantile: int
) -> dict[int, dict]:
    """OpenAI ``NeuronRecord`` dicts (neuron_explainer.activations.activations) per flat neuron id."""
    out = {}
    probs = (0.5, 0.9, 0.99)
    for j, nid in enumerate(ids):
        tops = [
            _record(strings, rc.top_toks[j, i], rc.top_acts[j, i])
            for i in range(rc.k)
            if torch.isfinite(rc.top_vals[j, i])
        ]
        pv = rc.pool_vals[:, j]
        ok = (~torch.isnan(pv)).nonzero().flatten()
        randoms = [_record(strings, rc.pool_toks[i], rc.pool_acts[i, j]) for i in ok[:n_random].tolist()]
        bounds, by_q = [], []
        if len(ok):
            vals = pv[ok].double()
            bounds = [float(torch.quantile(vals, p)) for p in probs]
            edges = [-math.inf, *bounds, math.inf]
            for lo, hi in zip(edges, edges[1:]):
                members = ok[(vals > lo) & (vals <= hi)] if lo > -math.inf else ok[vals <= hi]
                by_q.append(
                    [_record(strings, rc.pool_toks[i], rc.pool_acts[i, j]) for i in members[:per_quantile].tolist()]
                )
        out[int(nid)] = {
            "dataclass_name": "NeuronRecord",
            "neuron_id": {
                "dataclass_name": "NeuronId",
                "layer_index": int(nid // d_mlp),
                "neuron_index": int(nid % d_mlp),
            },
            "random_sample": randoms,
            "random_sample_by_quantile": by_q,
            "quantile_boundaries": bounds,
            "mean": float(moments["mean"][j]),
            "stddev": float(moments["var"][j]) ** 0.5,
            "skewness": float(moments["skew"][j]) if math.isfinite(float(moments["skew"][j])) else None,
            "kurtosis": float(moments["kurt"][j]) if math.isfinite(float(moments["kurt"][j])) else None,
            "most_positive_activation_records": tops,
        }
    return out


# ---------------------------------------------------------------- the run
def _load_neuron_table(model: str) -> pd.DataFrame | None:
    path = artifacts.neuron_df_file(model)
    if not path.exists():
        return None
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _plan_memory(V: int, F_seq: int, N: int, T_batch: int) -> int:
    per_split = 8 * (2 * (V + 1) * N * 2 + 2 * F_seq * N * 2)
    return 2 * per_split + 8 * T_batch * N * 4


def run_explain(cfg: ExplainConfig) -> stage.StageResult:
    from tqdm import tqdm

    from neuron_lib import sequence_features as sf
    from neuron_lib import vocab_features as vf
    from neuron_lib.models import load_model
    from neuron_lib.streaming import drop_ids_for, mlp_activations, tokens_tensor

    cfg.validate()
    t0 = time.time()
    inputs = stage.open_inputs(cfg.model, cfg.token_dataset, cfg.max_tokens)
    tokenizer = inputs.tokenizer
    # the model's shape without loading weights twice: load once (needed for the forward passes anyway)
    device = pick_device(cfg.device)
    model = load_model(cfg.model, device=device)
    L, D = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    neuron_table = _load_neuron_table(cfg.model)
    ids = parse_neurons(cfg.neurons, L, D, neuron_table, cfg.selection_column)  # before any heavy work
    groups = cfg.groups
    if "sequence" in groups:
        sf.load_spacy()  # a missing parser is an error now, not after the forward passes

    ident = {
        **cfg.identity(),
        "dataset": inputs.dataset_identity,
        "neuron_ids": ids.tolist() if len(ids) < 4096 else None,
    }
    if len(ids) >= 4096:
        ident["neuron_ids_hash"] = config_fingerprint({"ids": ids.tolist()})
    fingerprint = config_fingerprint(ident)
    folder = artifacts.explanations(cfg.model, inputs.dataset_path)
    required = [
        artifacts.EXPLAIN_VR_FILE,
        artifacts.EXPLAIN_PREV_VR_FILE,
        artifacts.EXPLAIN_FEATURES_FILE,
        f"{artifacts.EXPLAIN_BEST_STEM}.parquet",
        f"{artifacts.EXPLAIN_SCORES_STEM}.parquet",
    ]
    state = stage.folder_state(folder, STAGE, fingerprint, required)
    if not stage.must_run(folder, state, cfg.overwrite, STAGE):
        stage.log(STAGE, f"finished explanations found at {folder}; reusing them")
        return stage.StageResult(STAGE, "skipped", {"explanations": str(folder)}, seconds=time.time() - t0)

    # ------------------------------------------------ inputs: tokens, split, features
    row_ids = select_rows(len(inputs.dataset), inputs.n_rows, cfg.rows)
    rows_ds = inputs.dataset.select(row_ids.tolist())
    n_rows, ctx = len(row_ids), inputs.ctx
    tokens_np = tokens_tensor(rows_ds, 0, n_rows).numpy()
    drop = drop_ids_for(tokenizer, keep_bos=False, drop_newline=False)
    keep_np = ~np.isin(tokens_np, drop)
    held = heldout_rows(n_rows, cfg.heldout_fraction, cfg.seed)
    strings = vf.decoded_vocab(tokenizer)
    V = max(len(strings), int(tokens_np.max()) + 1)
    strings = strings + [""] * (V - len(strings))

    token_names: list[str] = []
    token_family: list[str] = []
    token_matrix = np.zeros((V, 0), dtype=bool)
    unigram_threshold = None
    vocab_manifest = None
    if "token" in groups:
        name = cfg.vocab_name or vf.tokenizer_name(cfg.model)
        vcfg = vf.VocabFeaturesConfig(model=cfg.model, name=name)
        vdf, vocab_manifest, _ = vf.ensure_vocab_df(vcfg, tokenizer=tokenizer, model=model)
        vf.check_vocab_fingerprint(vocab_manifest, tokenizer, artifacts.vocab_df_file(name))
        bool_cols = [c for c in vf.FEATURE_COLUMNS if c in vdf.columns]
        if "small_norm" in vdf.columns:
            bool_cols.append("small_norm")
        vm = np.zeros((V, len(bool_cols)), dtype=bool)
        vm[: len(vdf)] = vdf[bool_cols].to_numpy(bool)
        counts = np.bincount(tokens_np[keep_np], minlength=V)
        n_kept = int(keep_np.sum())
        unigram_threshold = vf.unigram_count_threshold(n_kept)
        uni = vf.unigram_features(strings, counts, unigram_threshold)
        token_names = bool_cols + list(uni.columns)
        token_family = [vf.feature_family(c) if c != "small_norm" else "norm" for c in bool_cols] + ["unigram"] * len(
            uni.columns
        )
        token_matrix = np.concatenate([vm, uni.to_numpy(bool)], axis=1) if len(uni.columns) else vm

    seq_parts, seq_names, seq_family = [], [], []
    spacy_manifest = None
    if "sequence" in groups:
        arr, spacy_manifest = sf.cached_spacy_features(
            inputs.dataset_path,
            inputs.dataset_identity,
            tokens_np,
            tokenizer,
            strings,
            set(drop),
            row_ids=row_ids,
            n_process=cfg.spacy_processes,
            batch_size=cfg.spacy_batch_size,
        )
        seq_parts.append(arr)
        seq_names += list(sf.SPACY_COLUMNS)
        seq_family += [fam for fam, cols in sf.SPACY_FAMILIES.items() for _ in cols]
    if "position" in groups:
        arr, names = sf.position_features(n_rows, ctx)
        seq_parts.append(arr)
        seq_names += names
        seq_family += ["position"] * len(names)
    if "subset" in groups and "subset" in inputs.dataset.column_names:
        arr, names = sf.subset_features(rows_ds["subset"], ctx)
        seq_parts.append(arr)
        seq_names += names
        seq_family += ["subset"] * len(names)
    seq_grid = np.concatenate(seq_parts, axis=2) if seq_parts else np.zeros((n_rows, ctx, 0), dtype=bool)
    prev_grid = previous_in_row(seq_grid, False)
    # class sums over the token ids present in the rows (compact ids 0..V'-1; V' = "no previous token", in no class)
    tok_c, prev_c, token_matrix_c = compact_token_ids(tokens_np, token_matrix)
    Vc = len(token_matrix_c)

    N = len(ids)
    Ft, Fs = token_matrix.shape[1], seq_grid.shape[2]
    # pass 2 needs pass 1's activations again: kept in memory when they fit (the same values: no second forward)
    replay_bytes = 4 * N * n_rows * ctx
    replay: list | None = [] if replay_bytes <= int(cfg.replay_mib) * 2**20 else None
    passes_note = (
        f"pass 2 replays pass 1's activations, {human_bytes(replay_bytes)}"
        if replay is not None
        else f"the model runs twice: the activations, {human_bytes(replay_bytes)}, exceed --replay-mib"
    )
    stage.log(
        STAGE,
        f"plan: {len(ids):,} neurons of {cfg.model}, {n_rows:,} rows x {ctx} = {n_rows * ctx:,} tokens "
        f"({int(held.sum())} rows held out), {Ft} token + {Fs} sequence features (x2 with previous token); "
        f"{Vc:,} distinct token ids; accumulators ~{human_bytes(_plan_memory(Vc, Fs, N, cfg.batch_size * ctx))}; "
        f"two passes over the data ({passes_note})",
    )

    ids_t = torch.as_tensor(ids, dtype=torch.long)
    rng = np.random.default_rng(cfg.seed + 1)
    kept_flat = np.flatnonzero(keep_np.reshape(-1))
    pool = (
        rng.choice(kept_flat, size=min(cfg.record_pool, len(kept_flat)), replace=False)
        if cfg.records
        else np.zeros(0, np.int64)
    )
    rc = RecordCollector(N, cfg.record_top_k if cfg.records else 0, cfg.record_before, cfg.record_after, pool)
    sums = ClassSums(Vc, Fs, N)
    shift = None

    def batches(desc, record: bool):
        """(start, end, tokens, activations [B, P, N]) per batch of rows: from the model (kept for the replay
        when ``record``), or replayed from pass 1."""
        if replay and not record:
            yield from tqdm(replay, desc=f"{desc} (replayed)", unit="batch", leave=False)
            return
        for start in tqdm(range(0, n_rows, cfg.batch_size), desc=desc, unit="batch", leave=False):
            end = min(start + cfg.batch_size, n_rows)
            toks = torch.as_tensor(tokens_np[start:end]).long()
            _, post = mlp_activations(model, toks, want_pre=False, want_post=True)
            B, P = toks.shape
            dense = post.permute(1, 2, 0, 3).reshape(B, P, L * D)[..., ids_t.to(post.device)].float().cpu()
            if record and replay is not None:
                replay.append((start, end, toks, dense))
            yield start, end, toks, dense

    # ------------------------------------------------ pass 1: class sums for every feature, records
    t1 = time.time()
    for start, end, toks, dense in batches("explain pass 1", record=True):
        keep = torch.as_tensor(keep_np[start:end])
        if cfg.records:
            rc.add(dense, toks, keep, start)
        acts_all = dense[keep].double()
        if shift is None:
            shift = acts_all.mean(0) if len(acts_all) else torch.zeros(N, dtype=torch.float64)
        row_of = torch.arange(start, end)[:, None].expand_as(keep)[keep].numpy()
        pos_of = torch.arange(toks.shape[1])[None, :].expand_as(keep)[keep].numpy()
        for split in (0, 1):
            m = held[row_of] == bool(split)
            if not m.any():
                continue
            a = acts_all[torch.as_tensor(m)] - shift
            r, p = row_of[m], pos_of[m]
            sums.add(
                split,
                a,
                torch.as_tensor(tok_c[r, p], dtype=torch.long),
                torch.as_tensor(prev_c[r, p], dtype=torch.long),
                torch.as_tensor(seq_grid[r, p], dtype=torch.float64),
                torch.as_tensor(prev_grid[r, p], dtype=torch.float64),
            )
    pass1_s = time.time() - t1

    # ------------------------------------------------ VR tables (selection rows)
    tm = torch.as_tensor(token_matrix_c.T, dtype=torch.float64)  # [Ft, V']
    tm_prev = torch.cat([tm, torch.zeros(Ft, 1, dtype=torch.float64)], 1)  # "no previous token" is in no class
    tot = sums.total[0]

    def class_stats(split):
        out = {}
        out["token"] = _token_class_sums(sums.tok[split], tm)
        out["prev_token"] = _token_class_sums(sums.prev[split], tm_prev)
        out["sequence"] = (sums.seq[split]["n"], sums.seq[split]["s"], sums.seq[split]["q"])
        out["prev_sequence"] = (sums.pseq[split]["n"], sums.pseq[split]["s"], sums.pseq[split]["q"])
        return out

    cs_train, cs_held = class_stats(0), class_stats(1)
    names_of = {"token": token_names, "prev_token": token_names, "sequence": seq_names, "prev_sequence": seq_names}
    family_of = {"token": token_family, "prev_token": token_family, "sequence": seq_family, "prev_sequence": seq_family}
    n_total = tot["n"][0]  # every neuron sees the same tokens
    vr_by_kind, kept_by_kind, feature_rows = {}, {}, []
    for kind in KINDS:
        n1, s1, q1 = cs_train[kind]
        if len(n1) == 0:
            vr_by_kind[kind] = torch.zeros(0, N, dtype=torch.float64)
            kept_by_kind[kind] = np.zeros(0, dtype=bool)
            continue
        vr = stats.variance_reduction(tot["n"], tot["s"], tot["q"], n1[:, None], s1, q1)
        ok = ((n1 >= cfg.min_class_count) & (n_total - n1 >= cfg.min_class_count)).numpy()
        vr_by_kind[kind] = vr
        kept_by_kind[kind] = ok
        for f, name in enumerate(names_of[kind]):
            feature_rows.append(
                {
                    "feature": name if not kind.startswith("prev") else f"prev_{name}",
                    "base_feature": name,
                    "kind": kind,
                    "family": family_of[kind][f],
                    "n_positive_selection": int(n1[f]),
                    "n_positive_heldout": int(cs_held[kind][0][f]),
                    "skipped": not bool(ok[f]),
                }
            )
    features_df = pd.DataFrame(feature_rows)
    dead = (tot["q"] - tot["s"] ** 2 / tot["n"].clamp(min=1)) <= 1e-12 * tot["q"].abs().clamp(min=1e-300)

    def vr_table(kinds):
        cols, names = [], []
        for kind in kinds:
            ok = kept_by_kind[kind]
            cols.append(vr_by_kind[kind][torch.as_tensor(ok)].T.float().numpy())
            names += [n for n, k in zip(names_of[kind], ok) if k]
        data = np.concatenate(cols, axis=1) if cols else np.zeros((N, 0), np.float32)
        df = pd.DataFrame(data, columns=names)
        df.insert(0, "neuron_index", ids % D)
        df.insert(0, "layer", ids // D)
        df.insert(0, "neuron", neuron_names(ids, D))
        return df

    vr_df = vr_table(["token", "sequence"])
    prev_df = vr_table(["prev_token", "prev_sequence"])

    # ------------------------------------------------ best features
    all_vr, all_name, all_kind, all_ref = [], [], [], []  # all_ref: (kind, index within kind)
    for kind in KINDS:
        ok = kept_by_kind[kind]
        if not ok.any():
            continue
        idx = np.flatnonzero(ok)
        all_vr.append(vr_by_kind[kind][torch.as_tensor(idx)])
        prefix = "prev_" if kind.startswith("prev") else ""
        all_name += [prefix + names_of[kind][i] for i in idx]
        all_kind += [kind] * len(idx)
        all_ref += [(kind, int(i)) for i in idx]
    if not all_vr:
        raise NeuronLibError(
            f"every feature has fewer than {cfg.min_class_count} positive or negative tokens on {n_rows * ctx:,} "
            "tokens: raise --max-tokens or lower --min-class-count"
        )
    VRm = torch.cat(all_vr, 0)  # [F_all, N]
    n_cand = min(cfg.n_candidates, VRm.shape[0])
    top_v, top_i = VRm.topk(max(2, n_cand) if VRm.shape[0] >= 2 else 1, dim=0)  # [k, N]
    best = {
        "neuron": neuron_names(ids, D),
        "layer": ids // D,
        "neuron_index": ids % D,
        "best_feature": [all_name[i] for i in top_i[0].tolist()],
        "best_kind": [all_kind[i] for i in top_i[0].tolist()],
        "best_vr": top_v[0].numpy(),
        "runner_up": [all_name[i] for i in top_i[1].tolist()] if top_i.shape[0] > 1 else [""] * N,
        "runner_up_vr": top_v[1].numpy() if top_i.shape[0] > 1 else np.zeros(N),
    }
    kind_arr = np.array(all_kind)
    for kind in KINDS:
        rows = np.flatnonzero(kind_arr == kind)
        if len(rows):
            v, i = VRm[torch.as_tensor(rows)].max(0)
            best[f"best_{kind}_feature"] = [all_name[rows[j]] for j in i.tolist()]
            best[f"best_{kind}_vr"] = v.numpy()
    best_df = pd.DataFrame(best)
    best_df["constant_activation"] = dead.numpy()
    if neuron_table is not None and cfg.selection_column in neuron_table.columns:
        flag = pd.Series(
            neuron_table[cfg.selection_column].fillna(False).astype(bool).to_numpy(),
            index=neuron_table["layer"].to_numpy() * D + neuron_table["neuron"].to_numpy(),
        )
        best_df[cfg.selection_column] = flag.reindex(ids).fillna(False).to_numpy(bool)

    # ------------------------------------------------ scores: best feature, best 2- and 3-feature combination
    # best single feature: 2 cells (y=0, y=1)
    held_t = sums.total[1]
    b_idx = top_i[0]
    n1_tr = torch.stack([cs_train[all_ref[i][0]][0][all_ref[i][1]] for i in b_idx.tolist()])
    s1_tr = torch.stack([cs_train[all_ref[i][0]][1][all_ref[i][1], j] for j, i in enumerate(b_idx.tolist())])
    n1_h = torch.stack([cs_held[all_ref[i][0]][0][all_ref[i][1]] for i in b_idx.tolist()])
    s1_h = torch.stack([cs_held[all_ref[i][0]][1][all_ref[i][1], j] for j, i in enumerate(b_idx.tolist())])
    tn = torch.stack([tot["n"] - n1_tr, n1_tr], -1)
    ts = torch.stack([tot["s"] - s1_tr, s1_tr], -1)
    hn = torch.stack([held_t["n"] - n1_h, n1_h], -1)
    hs = torch.stack([held_t["s"] - s1_h, s1_h], -1)
    score_best = stats.cell_model_correlation(stats.cell_model_fit(tn, ts), hn, hs, held_t["q"])

    # pass 2: 2^k cells of each neuron's k candidates
    k = min(cfg.n_candidates, VRm.shape[0])
    cand = VRm.topk(k, dim=0).indices.T.contiguous()  # [N, k] rows of VRm
    C = 2**k
    cell = {
        sp: {"n": torch.zeros(N * C, dtype=torch.float64), "s": torch.zeros(N * C, dtype=torch.float64)}
        for sp in (0, 1)
    }
    # a column index into one per-token [T, F_all] feature matrix per batch
    kind_offset, off = {}, 0
    for kind in KINDS:
        kind_offset[kind] = off
        off += len(names_of[kind])
    cand_col = torch.as_tensor([[kind_offset[all_ref[i][0]] + all_ref[i][1] for i in row] for row in cand.tolist()])
    weights = (2 ** torch.arange(k)).long()
    t2 = time.time()
    tmb = torch.as_tensor(token_matrix_c)
    tmb_prev = torch.cat([tmb, torch.zeros(1, Ft, dtype=torch.bool)], 0)
    for start, end, toks, dense in batches("explain pass 2", record=False):
        keep = torch.as_tensor(keep_np[start:end])
        a = dense[keep].double() - shift
        row_of = torch.arange(start, end)[:, None].expand_as(keep)[keep].numpy()
        pos_of = torch.arange(toks.shape[1])[None, :].expand_as(keep)[keep].numpy()
        feats = torch.cat(
            [
                tmb[torch.as_tensor(tok_c[row_of, pos_of], dtype=torch.long)],
                torch.as_tensor(seq_grid[row_of, pos_of]),
                tmb_prev[torch.as_tensor(prev_c[row_of, pos_of], dtype=torch.long)],
                torch.as_tensor(prev_grid[row_of, pos_of]),
            ],
            1,
        )  # [T, F_all] in KINDS order
        g = feats[:, cand_col]  # [T, N, k]
        cid = (g.long() * weights).sum(-1) + torch.arange(N) * C  # [T, N]
        split_t = torch.as_tensor(held[row_of])
        for sp in (0, 1):
            m = split_t == bool(sp)
            if m.any():
                cell[sp]["n"].index_add_(0, cid[m].flatten(), torch.ones(int(m.sum()) * N, dtype=torch.float64))
                cell[sp]["s"].index_add_(0, cid[m].flatten(), a[m].flatten())
    pass2_s = time.time() - t2
    replayed, replay = replay is not None, None  # the kept activations are not needed any more
    cn = {sp: cell[sp]["n"].view(N, C) for sp in (0, 1)}
    cs_ = {sp: cell[sp]["s"].view(N, C) for sp in (0, 1)}
    codes = torch.arange(C)

    def marginal(x, subset):
        """Sum cells over the candidates not in ``subset``: [N, 2^k] → [N, 2^|subset|]."""
        key = sum(((codes >> j) & 1) << t for t, j in enumerate(subset))
        out = torch.zeros(N, 2 ** len(subset), dtype=torch.float64)
        return out.index_add_(1, key, x)

    combos = {}
    for size in (2, 3):
        if k < size:
            continue
        best_vr = torch.full((N,), -1.0, dtype=torch.float64)
        best_sub = [None] * N
        best_score = torch.zeros(N, dtype=torch.float64)
        for subset in itertools.combinations(range(k), size):
            tn_, ts_ = marginal(cn[0], subset), marginal(cs_[0], subset)
            vr = stats.cell_model_vr(tn_, ts_, tot["q"])
            sc = stats.cell_model_correlation(
                stats.cell_model_fit(tn_, ts_), marginal(cn[1], subset), marginal(cs_[1], subset), held_t["q"]
            )
            better = vr > best_vr
            best_vr = torch.where(better, vr, best_vr)
            best_score = torch.where(better, sc, best_score)
            for j in better.nonzero().flatten().tolist():
                best_sub[j] = subset
        combos[size] = (best_vr, best_score, best_sub)
    scores = {
        "neuron": neuron_names(ids, D),
        "layer": ids // D,
        "neuron_index": ids % D,
        "best_feature": best_df["best_feature"],
        "best_vr": best_df["best_vr"],
        "score_best": score_best.numpy(),
    }
    for size, (vr, sc, sub) in combos.items():
        scores[f"combo{size}"] = [
            " & ".join(all_name[int(cand[j, t])] for t in s) if s is not None else "" for j, s in enumerate(sub)
        ]
        scores[f"combo{size}_vr"] = vr.clamp(min=0).numpy()
        scores[f"score_combo{size}"] = sc.numpy()
    scores_df = pd.DataFrame(scores)
    if cfg.selection_column in best_df.columns:
        scores_df[cfg.selection_column] = best_df[cfg.selection_column].to_numpy()

    # ------------------------------------------------ write
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    from neuron_lib.common import _atomic_replace

    for df, fname in ((vr_df, artifacts.EXPLAIN_VR_FILE), (prev_df, artifacts.EXPLAIN_PREV_VR_FILE)):
        _atomic_replace(folder / fname, lambda tmp, df=df: df.to_parquet(tmp, index=False))
    _atomic_replace(folder / artifacts.EXPLAIN_FEATURES_FILE, lambda tmp: features_df.to_csv(tmp, index=False))
    save_dataframe_atomic(best_df, folder / artifacts.EXPLAIN_BEST_STEM)
    save_dataframe_atomic(scores_df, folder / artifacts.EXPLAIN_SCORES_STEM)
    n_records = 0
    if cfg.records:
        t_all = {i: (sums.total[0][key] + sums.total[1][key]) for i, key in enumerate("nsqcf")}
        moments = stats.moments_from_power_sums(t_all, shift)
        recs = neuron_records(rc, moments, strings, D, ids, cfg.record_random, cfg.record_per_quantile)
        for nid, rec in recs.items():
            atomic_write_json(folder / artifacts.EXPLAIN_RECORDS_DIR / str(nid // D) / f"{nid % D}.json", rec)
        n_records = len(recs)
    skipped = features_df.groupby("kind")["skipped"].sum().astype(int).to_dict() if len(features_df) else {}
    summary = explanation_summary(best_df, scores_df, cfg.selection_column)
    seconds = time.time() - t0
    manifest = make_manifest(
        STAGE,
        cfg,
        config_fingerprint=fingerprint,
        **inputs.manifest_fields(model),
        n_rows=n_rows,
        row_sampling=cfg.rows,
        row_ids=row_ids.tolist(),  # the dataset rows analysed; heldout_rows and records index into this list
        n_tokens=int(keep_np.sum()),
        n_token_ids=Vc,  # distinct token ids in the rows: the token class sums are [n_token_ids, neurons]
        n_tokens_selection=int(tot["n"][0]) if N else 0,
        n_tokens_heldout=int(held_t["n"][0]) if N else 0,
        heldout_rows=np.flatnonzero(held).tolist(),
        heldout_fraction=cfg.heldout_fraction,
        token_filter_ids=drop,
        activation="blocks.{l}.mlp.hook_post (the model's own activation function)",
        variance="population (ddof=0): eq. 4 is then exactly the between-class share of the variance, in [0, 1]",
        neurons=len(ids),
        n_features={kind: len(names_of[kind]) for kind in KINDS},
        n_skipped_features=skipped,
        min_class_count=cfg.min_class_count,
        constant_neurons=int(dead.sum()),
        unigram_count_threshold=unigram_threshold,
        unigram_rule=f"> {unigram_threshold} occurrences (paper: 3000 per 10M tokens, scaled) and > {vf.PAPER_UNIGRAM_VARIANTS} variants",
        vocab_table=str(artifacts.vocab_df_file(vocab_manifest["tokenizer_name"])) if vocab_manifest else None,
        vocab_tokenizer_fingerprint=vocab_manifest.get("tokenizer_fingerprint") if vocab_manifest else None,
        spacy=(
            {k: spacy_manifest.get(k) for k in ("spacy", "spacy_module", "n_rows", "tokens_per_second")}
            if spacy_manifest
            else None
        ),
        records=n_records,
        files=required + [f"{artifacts.EXPLAIN_BEST_STEM}.csv", f"{artifacts.EXPLAIN_SCORES_STEM}.csv"],
        summary=summary,
        seconds=seconds,
        pass_seconds={"pass1": pass1_s, "pass2": pass2_s},
        pass2_replayed=replayed,
    )
    atomic_write_json(artifacts.manifest_path(folder), manifest)
    stage.log(STAGE, f"wrote {folder}: {len(ids)} neurons, best VR > 0.5: {summary['share_best_vr_gt_0.5']:.1%}")
    stage.log(STAGE, f"done in {seconds:.0f} s ({n_rows * ctx / max(seconds, 1e-9):,.0f} tokens/s)")
    return stage.StageResult(
        STAGE, "done", {"explanations": str(folder)}, n_tokens=int(keep_np.sum()), seconds=seconds, details=summary
    )


def explanation_summary(best_df: pd.DataFrame, scores_df: pd.DataFrame, column: str) -> dict[str, Any]:
    """The numbers a report quotes: the ten best-explained neurons, the share with best VR > 0.5 (split by the
    selection column when present), the distribution of the scores."""
    top = best_df.sort_values("best_vr", ascending=False).head(10)
    out: dict[str, Any] = {
        "top10": [
            {"neuron": r.neuron, "feature": r.best_feature, "kind": r.best_kind, "vr": round(float(r.best_vr), 4)}
            for r in top.itertuples()
        ],
        "share_best_vr_gt_0.5": float((best_df["best_vr"] > 0.5).mean()) if len(best_df) else 0.0,
    }
    if column in best_df.columns:
        for flag, name in ((True, "selected"), (False, "not_selected")):
            part = best_df[best_df[column] == flag]
            out[f"share_best_vr_gt_0.5_{name}"] = float((part["best_vr"] > 0.5).mean()) if len(part) else None
            out[f"n_{name}"] = int(len(part))
    for col in [c for c in scores_df.columns if c.startswith("score_")]:
        q = scores_df[col].quantile([0.1, 0.25, 0.5, 0.75, 0.9]).round(4)
        out[f"{col}_quantiles"] = {str(k): float(v) for k, v in q.items()}
        out[f"{col}_mean"] = float(scores_df[col].mean())
    return out


def load_explanations(model: str, dataset: str) -> dict[str, Any]:
    """The tables of a finished explain run: ``{"manifest", "vr", "prev_vr", "features", "best", "scores"}``."""
    from neuron_lib.common import read_json

    folder = artifacts.explanations(model, dataset)
    if not artifacts.manifest_path(folder).exists():
        raise NeuronLibError(
            f"no finished explanations at {folder}; run `python -m neuron_lib.explain --model {model} --token-dataset ...`"
        )
    return {
        "manifest": read_json(artifacts.manifest_path(folder)),
        "vr": pd.read_parquet(folder / artifacts.EXPLAIN_VR_FILE),
        "prev_vr": pd.read_parquet(folder / artifacts.EXPLAIN_PREV_VR_FILE),
        "features": pd.read_csv(folder / artifacts.EXPLAIN_FEATURES_FILE),
        "best": pd.read_parquet(folder / f"{artifacts.EXPLAIN_BEST_STEM}.parquet"),
        "scores": pd.read_parquet(folder / f"{artifacts.EXPLAIN_SCORES_STEM}.parquet"),
        "folder": folder,
    }


main = stage.cli(
    ExplainConfig,
    run_explain,
    "python -m neuron_lib.explain",
    "variance-reduction explanations of neurons by token, syntax, position and subset features, with scores",
)

if __name__ == "__main__":
    from neuron_lib.common import run_cli

    run_cli(main)
