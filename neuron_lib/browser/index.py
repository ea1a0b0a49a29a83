"""The browser's index: one SQLite file built once from what the engine wrote (``python -m neuron_lib.browser build``).

Why SQLite (not parquet): the server's hot path is "one neuron's document by (model, layer, neuron)", which SQLite
answers with one primary-key B-tree lookup reading a few pages, from a process whose memory does not grow with the
number of neurons (the page cache is bounded; nothing is loaded up front), with any number of concurrent
read-only connections; property-range search is an indexed ``WHERE`` on the same file; it is in the standard
library (no new dependency) and is one file to copy. Parquet would need the table (or a row group) in memory per
lookup and an extra query engine for search.

Tables (``artifacts.browser_index()``):

``models`` (model, meta JSON)
    n_layers, d_mlp, dataset, the services present, histogram edges, per-layer counts, the top neurons per layer
    by several measures, the neuron dataframe's columns and the sources (paths + manifest fingerprints) read.
``neurons`` (model, layer, neuron, <every numeric / boolean column of the neuron dataframe>, importance)
    the searchable properties (``query.parse_filter`` checks names against these columns).
``docs`` (model, layer, neuron, doc BLOB)
    zlib-compressed JSON of every service of one neuron: ``properties`` (the dataframe row), ``histogram``,
    ``examples`` (token-level and text-level top examples with per-token activations), ``samples`` (random and
    quantile), ``vocab`` (top / bottom tokens by cos(W_U, w_out) and by mean / max activation), ``partners``
    (best match in every other seed model: correlation, baseline, excess, verdict), ``coactivation``
    (graph neighbours), ``explanation`` and ``interventions`` (rows of those tables when they exist). A service
    whose data is absent is left out of the document and of its ``available`` list, never an error.
``tokens`` (model, token_id, token) and ``token_effects`` (model, token_id, kind, layer, neuron, value)
    search by token: kind ``max_act`` / ``mean_act`` (the neuron's top tokens by max / mean activation, from the
    summary), ``promote`` / ``suppress`` (top / bottom cos(W_U[:, v], w_out), from the weight summary).
``features`` (model, feature, layer, neuron, score)
    search by explanation feature, when explanation tables exist.

Importance score (``neurons.importance``, documented formula): the mean, over the available measures, of the
neuron's within-model percentile rank (0–1) of ``excess_corr`` (universality), ``kurt`` (activation kurtosis),
``vocab_kurt`` (prediction / suppression strength), ``w_out_norm`` (output weight norm) and ``1 − sparsity``
(rarely firing neurons rank high); measures that are NaN for the whole model are skipped.

Per-token activations of the examples: the summaries store only the value at each example's own position, so the
index runs the model once over the rows the token-level, text-level and random examples come from
(``--context-activations``, default on; all layers in one pass) and keeps the neuron's activation on every window
token; quantile samples, and every example when the model cannot be loaded, carry only their own token's value
(other window tokens ``null``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sqlite3
import time
import zlib
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any

import numpy as np

from neuron_lib import artifacts, stage
from neuron_lib.common import (
    NeuronLibError,
    atomic_write_json,
    config_field,
    config_fingerprint,
    make_manifest,
    read_json,
    write_manifest,
)

STAGE = "browser"
INDEX_FORMAT = 1
EXPORT_STAMP = "export.json"  # in the static export: the index fingerprint and page code it was written from
#: measures the model page ranks neurons by (column, descending?) — absent columns are skipped
MEASURES: dict[str, tuple[str, bool]] = {
    "universality": ("excess_corr", True),
    "kurtosis": ("kurt", True),
    "prediction": ("vocab_kurt", True),
    "importance": ("importance", True),
    "explanation_score": ("explanation_score", True),
}
CONTEXT_KINDS = ("top", "text", "random")  # examples whose every window token gets its activation
IMPORTANCE_MEASURES = (("excess_corr", 1), ("kurt", 1), ("vocab_kurt", 1), ("w_out_norm", 1), ("sparsity", -1))
#: the universality verdict columns shown with partners (the paper's, the z criterion, and the alignment criterion
#: another stage adds; each shown when present)
VERDICT_COLUMNS = (
    "is_universal",
    "excess_corr",
    "is_universal_z",
    "rotation_z",
    "alignment_mean",
    "is_universal_aligned",
    "n_models_agree",
)


@dataclasses.dataclass
class BrowserConfig:
    """The browser stage: index, static export and dashboard."""

    models: list[str] = config_field([], "comma-separated models to index (default: every model with a neuron df)")
    n_examples: int = config_field(8, "token-level top examples kept per neuron")
    n_text_examples: int = config_field(4, "text-level top examples kept per neuron")
    n_samples: int = config_field(4, "random samples kept per neuron, and per quantile bin")
    before: int = config_field(12, "tokens shown before an example's token")
    after: int = config_field(4, "tokens shown after an example's token")
    n_vocab: int = config_field(10, "tokens listed per vocabulary effect")
    n_neighbours: int = config_field(10, "co-activation / weight neighbours listed per neuron")
    context_activations: bool = config_field(True, "run the model over example rows for per-token activations")
    export: bool = config_field(True, "also write the static export (artifacts.browser_site)")
    dashboard: bool = config_field(True, "also write the dashboard (artifacts.browser_dashboard)")
    batch_size: int = config_field(16, "rows per forward pass for context activations")
    device: str = config_field("cpu", "device for context activations")
    overwrite: bool = config_field(False, "replace an index of another configuration")
    jobs: int = config_field(0, "processes building the index's documents and the export's pages (0: min(4, cores))")

    def validate(self) -> BrowserConfig:
        for f in ("n_examples", "n_text_examples", "n_samples", "before", "after", "n_vocab", "n_neighbours"):
            if getattr(self, f) < 0:
                raise NeuronLibError(f"--{f.replace('_', '-')} must be ≥ 0")
        if self.jobs < 0:
            raise NeuronLibError("--jobs must be ≥ 0 (0: min(4, cores))")
        if self.batch_size <= 0:
            raise NeuronLibError("--batch-size must be positive")
        return self

    def identity(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("batch_size", "device", "overwrite", "export", "dashboard", "jobs"):
            d.pop(k)
        return d


# ====================================================================== small helpers
def _finite(x: Any) -> Any:
    """JSON-safe scalar: NaN/inf → None, numpy → python."""
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def _round(x: Any, nd: int = 4) -> Any:
    x = _finite(x)
    return round(x, nd) if isinstance(x, float) else x


def pack(doc: Any) -> bytes:
    # level 1: 2.2x faster than 6 on SmolLM2's documents (46,080 of ~20 KB JSON each) for a 15 % larger index
    return zlib.compress(json.dumps(doc, separators=(",", ":"), allow_nan=False).encode(), 1)


def unpack(blob: bytes) -> Any:
    return json.loads(zlib.decompress(blob))


def valid_column(name: str) -> bool:
    """Columns the index keeps searchable: printable names without quotes or whitespace."""
    return bool(name) and len(name) <= 120 and all(c.isalnum() or c in "_-.+" for c in name)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    h.update(str(path.stat().st_size).encode())
    h.update(str(int(path.stat().st_mtime_ns)).encode())
    return h.hexdigest()[:16]


# ====================================================================== sources of one model
@dataclasses.dataclass
class ModelSources:
    name: str
    df_path: Path
    summary_folders: list[Path]
    weights: Path | None
    correlation_table: Path | None
    graph_runs: list[str]
    explanations: list[Path]
    interventions: list[Path]

    def digest(self) -> dict[str, str]:
        files = [self.df_path]
        files += [artifacts.manifest_path(f) for f in self.summary_folders]
        if self.weights:
            files.append(artifacts.manifest_path(self.weights))
        if self.correlation_table:
            files.append(artifacts.manifest_path(self.correlation_table))
        for run in self.graph_runs:
            files.append(artifacts.manifest_path(artifacts.coactivation_graph(self.name, run)))
        files += self.explanations + self.interventions
        return {str(p): _file_digest(p) for p in files if p.exists()}


def find_sources(model: str) -> ModelSources:
    df_path = artifacts.neuron_df_file(model)
    if not df_path.exists():
        raise NeuronLibError(
            f"no neuron dataframe for {model!r} at {df_path}: run `python -m neuron_lib.neuron_df --model {model}`"
        )
    root = artifacts.activation_summary_root(model)
    folders = sorted(p for p in root.iterdir() if artifacts.manifest_path(p).exists()) if root.exists() else []
    if len(folders) > 1:
        folders = [p for p in folders if p.name != "all"]
    weights = artifacts.weights_summary(model)
    try:
        corr = artifacts.find_correlation_table(model)
    except NeuronLibError:
        corr = None
    return ModelSources(
        name=artifacts.model_name(model),
        df_path=df_path,
        summary_folders=folders,
        weights=weights if artifacts.manifest_path(weights).exists() else None,
        correlation_table=corr,
        graph_runs=artifacts.list_prompt_runs(model),
        explanations=artifacts.explanation_tables(model),
        interventions=artifacts.intervention_tables(model),
    )


def _read_table(path: Path):
    import pandas as pd

    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


class _Parts:
    """Layer slices of safetensors files without loading whole tensors (bounded memory)."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        self._f = safe_open(str(path), framework="np")
        self.keys = set(self._f.keys())

    def has(self, key: str) -> bool:
        return key in self.keys

    def layer(self, key: str, layer: int) -> np.ndarray:
        return self._f.get_slice(key)[layer]

    def full(self, key: str) -> np.ndarray:
        return self._f.get_tensor(key)


def _open_parts(folder: Path, part: str) -> _Parts | None:
    path = artifacts.summary_part(folder, part)
    return _Parts(path) if path.exists() else None


# ====================================================================== tokens of the dataset
class _Tokens:
    def __init__(self, summary_folders: list[Path], model: str):
        self.tokens: np.ndarray | None = None
        self.subsets: list[str] | None = None
        self.dataset = None
        self.tokenizer = None
        self.dataset_name = None
        manifests = [read_json(artifacts.manifest_path(f)) for f in summary_folders]
        if not manifests:
            return
        m = manifests[0]
        self.dataset_name = m.get("dataset")
        path = Path(m.get("dataset_path") or "")
        if not path.exists() and self.dataset_name:
            path = artifacts.find_token_dataset(self.dataset_name) or path
        if not path.exists():
            return
        from neuron_lib.corpus import load_token_dataset

        try:
            ds, dman = load_token_dataset(path)
        except NeuronLibError:
            return
        self.dataset = ds
        raw = ds.with_format(None) if hasattr(ds, "with_format") else ds
        self.tokens = np.asarray(raw["tokens"], dtype=np.int64)
        if "subset" in getattr(ds, "column_names", []):
            self.subsets = list(raw["subset"])
        try:
            from neuron_lib.notebooks import resolve_tokenizer

            self.tokenizer = resolve_tokenizer(model, None, dman)
        except Exception:
            self.tokenizer = None

    @property
    def ctx(self) -> int:
        return int(self.tokens.shape[1]) if self.tokens is not None else 0


class _Vocab:
    """Token strings, decoded once per id."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, tid: int) -> str:
        tid = int(tid)
        s = self.cache.get(tid)
        if s is None:
            try:
                s = self.tokenizer.decode([tid]) if self.tokenizer is not None else f"#{tid}"
            except Exception:
                s = f"#{tid}"
            self.cache[tid] = s
        return s


# ====================================================================== building one model
class _ModelBuilder:
    def __init__(self, cfg: BrowserConfig, src: ModelSources, log):
        self.cfg, self.src, self.log = cfg, src, log
        self.df = _read_table(src.df_path).reset_index(drop=True)
        if not {"layer", "neuron"} <= set(self.df.columns):
            raise NeuronLibError(f"{src.df_path} lacks the layer / neuron columns")
        self.n_layers = int(self.df["layer"].max()) + 1
        self.d_mlp = int(self.df["neuron"].max()) + 1
        self.toks = _Tokens(src.summary_folders, src.name)
        self.vocab = _Vocab(self.toks.tokenizer)
        self._windows: dict[
            tuple[int, int], tuple[int, list[int], list[str]]
        ] = {}  # (row, pos) -> (start, ids, tokens)
        self.summaries = {f.name: {p: _open_parts(f, p) for p in artifacts.SUMMARY_PARTS} for f in src.summary_folders}
        self.vocab_comp = None
        if src.weights and (src.weights / artifacts.WEIGHT_VOCAB_FILE).exists():
            self.vocab_comp = _Parts(src.weights / artifacts.WEIGHT_VOCAB_FILE)
        self.neuron_comp = None
        if src.weights and (src.weights / artifacts.WEIGHT_NEURON_FILE).exists():
            self.neuron_comp = _Parts(src.weights / artifacts.WEIGHT_NEURON_FILE)

    # ------------------------------------------------------------ importance
    def add_importance(self) -> None:
        parts = []
        for col, sign in IMPORTANCE_MEASURES:
            if col in self.df and self.df[col].notna().any():
                parts.append((sign * self.df[col].astype(float)).rank(pct=True))
        self.df["importance"] = sum(parts) / len(parts) if parts else np.nan

    # ------------------------------------------------------------ examples
    def _window(self, row: int, pos: int) -> tuple[int, int]:
        ctx = self.toks.ctx
        return max(0, pos - self.cfg.before), min(ctx, pos + self.cfg.after + 1)

    def _example(self, value: float, row: int, pos: int, subset: str | None) -> dict | None:
        if self.toks.tokens is None or row < 0 or row >= len(self.toks.tokens) or not math.isfinite(value):
            return None
        row, pos = int(row), int(pos)
        window = self._windows.get((row, pos))
        if window is None:  # decoded once per position: the random samples share theirs across every neuron
            start, end = self._window(row, pos)
            ids = self.toks.tokens[row, start:end].tolist()
            window = self._windows[(row, pos)] = (start, ids, [self.vocab(t) for t in ids])
        start, ids, tokens = window  # shared, read-only lists (a document is packed, never edited in place)
        value = _round(value)
        vals = [None] * len(ids)
        vals[pos - start] = value
        ex = {
            "value": value,
            "row": row,
            "pos": pos,
            "target": pos - start,
            "start": start,
            "token_ids": ids,
            "tokens": tokens,
            "values": vals,
        }
        if subset is not None:
            ex["subset"] = subset
        elif self.toks.subsets is not None:
            ex["subset"] = self.toks.subsets[row]
        return ex

    def layer_examples(self, layer: int, kinds=("top", "text", "random", "quantile")) -> dict[int, dict[str, Any]]:
        """{neuron: {"top": [...], "text": [...], "random": [...], "quantile": [...]}} for one layer."""
        cfg, ctx = self.cfg, self.toks.ctx
        out: dict[int, dict[str, Any]] = defaultdict(dict)
        if self.toks.tokens is None or not self.summaries:
            return out
        top_v, top_i, txt_v, txt_r, txt_p, rnd, quant = [], [], [], [], [], [], []
        for subset, parts in self.summaries.items():
            te = parts.get("top_examples")
            if te is None:
                continue
            if te.has("top_values"):
                top_v.append(te.layer("top_values", layer))
                top_i.append(te.layer("top_index", layer))
            if te.has("text_top_values"):
                txt_v.append(te.layer("text_top_values", layer))
                txt_r.append(te.layer("text_top_rows", layer))
                txt_p.append(te.layer("text_top_pos", layer))
            if te.has("random_index"):
                rnd.append((te.full("random_index"), te.layer("random_values", layer), subset))
            if te.has("quantile_index"):
                quant.append(
                    (
                        te.layer("quantile_index", layer),
                        te.layer("quantile_values", layer),
                        te.layer("quantile_bin_counts", layer),
                        te.layer("quantile_boundaries", layer),
                        subset,
                    )
                )
        N = self.d_mlp
        if top_v and "top" in kinds:
            V, I = np.concatenate(top_v, 1).astype(np.float64), np.concatenate(top_i, 1).astype(np.int64)
            V = np.where(I >= 0, V, -np.inf)
            for n in range(N):
                order = np.lexsort((I[n], -V[n]))
                seen, exs = set(), []
                for j in order:
                    if len(exs) >= cfg.n_examples or not np.isfinite(V[n, j]):
                        break
                    if I[n, j] in seen:
                        continue
                    seen.add(int(I[n, j]))
                    ex = self._example(V[n, j], *divmod(int(I[n, j]), ctx), None)
                    if ex:
                        exs.append(ex)
                if exs:
                    out[n]["top"] = exs
        if txt_v and "text" in kinds:
            V = np.concatenate(txt_v, 1).astype(np.float64)
            R, P = np.concatenate(txt_r, 1).astype(np.int64), np.concatenate(txt_p, 1).astype(np.int64)
            V = np.where(R >= 0, V, -np.inf)
            for n in range(N):
                order = np.lexsort((R[n], -V[n]))
                exs = []
                for j in order[: cfg.n_text_examples]:
                    if not np.isfinite(V[n, j]):
                        break
                    ex = self._example(V[n, j], int(R[n, j]), int(P[n, j]), None)
                    if ex:
                        exs.append(ex)
                if exs:
                    out[n]["text"] = exs
        if rnd and cfg.n_samples and "random" in kinds:
            idx, vals, subset = rnd[0]
            for n in range(N):
                exs = [
                    self._example(float(vals[n, j]), *divmod(int(idx[j]), ctx), subset)
                    for j in range(min(cfg.n_samples, len(idx)))
                    if idx[j] >= 0
                ]
                exs = [e for e in exs if e]
                if exs:
                    out[n]["random"] = exs
        if quant and cfg.n_samples and "quantile" in kinds:
            qi, qv, qc, qb, subset = quant[0]
            n_bins, k = qi.shape[1], min(cfg.n_samples, qi.shape[2])
            qi, qv = qi[:, :, :k].tolist(), qv[:, :, :k].astype(np.float64).tolist()  # Python scalars: one conversion
            qc, qb = qc.tolist(), [[_round(x) for x in r] for r in qb.astype(np.float64).tolist()]
            for n in range(N):
                bins = []
                for b in range(n_bins):
                    exs = [self._example(v, *divmod(i, ctx), subset) for i, v in zip(qi[n][b], qv[n][b]) if i >= 0]
                    lo = qb[n][b - 1] if b > 0 else None
                    hi = qb[n][b] if b < len(qb[n]) else None
                    bins.append(
                        {"bin": b, "low": lo, "high": hi, "count": int(qc[n][b]), "examples": [e for e in exs if e]}
                    )
                out[n]["quantile"] = bins
        return out

    def context_table(self) -> dict[tuple[int, int, int, int, int], np.ndarray] | None:
        """Every window token's activation for the token-level, text-level and random examples:
        ``{(layer, neuron, row, start, length): values}``, from one forward pass over the union of the rows they come from
        (all layers at once; memory: the windows only). None when the model cannot be loaded."""
        if not self.cfg.context_activations or self.toks.tokens is None or not self.summaries:
            return None
        try:
            from neuron_lib.models import load_model

            model = load_model(self.src.name, device=self.cfg.device)
        except Exception as exc:  # the model is not here: windows keep only their own value
            self.log(f"{self.src.name}: no per-token activations ({type(exc).__name__}: {exc})")
            return None
        import torch

        from neuron_lib.streaming import mlp_activations

        refs: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)
        for layer_refs in _map_layers(self, _context_refs):
            for row, *ref in layer_refs:
                refs[row].append(tuple(ref))
        rows = sorted(refs)
        t0 = time.time()
        table: dict[tuple[int, int, int, int, int], np.ndarray] = {}
        bs = self.cfg.batch_size
        with torch.no_grad():
            for i in range(0, len(rows), bs):
                chunk = rows[i : i + bs]
                _, post = mlp_activations(model, torch.as_tensor(self.toks.tokens[chunk]), False, True)
                post = post.float().cpu().numpy()  # [L, B, P, N]
                for j, r in enumerate(chunk):
                    for layer, n, s, ln in refs[r]:
                        table[(layer, n, r, s, ln)] = post[layer, j, s : s + ln, n].copy()
        self.log(f"{self.src.name}: per-token activations of {len(rows)} example rows in {time.time() - t0:.1f} s")
        return table

    @staticmethod
    def fill_context(layer: int, examples: dict[int, dict[str, Any]], table) -> bool:
        if table is None:
            return False
        for n, services in examples.items():
            for kind in CONTEXT_KINDS:
                for ex in services.get(kind, []):
                    vals = table.get((layer, n, ex["row"], ex["start"], len(ex["token_ids"])))
                    if vals is not None:
                        ex["values"] = [_round(v) for v in vals]
        return True

    # ------------------------------------------------------------ histograms
    def layer_histograms(self, layer: int) -> dict[str, np.ndarray]:
        sums: dict[str, np.ndarray] = {}
        for parts in self.summaries.values():
            h = parts.get("histogram")
            if h is None:
                continue
            for key, name in (("pre_bin_counts", "pre"), ("post_bin_counts", "post")):
                if h.has(key):
                    v = h.layer(key, layer).astype(np.int64)
                    sums[name] = sums[name] + v if name in sums else v
        return sums

    # ------------------------------------------------------------ vocabulary
    def layer_vocab(self, layer: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """kind → (ids [N, k], values [N, k])."""
        k = self.cfg.n_vocab
        out = {}
        if self.vocab_comp is not None:
            for kind, key in (("promote", "U_out.top"), ("suppress", "U_out.bottom"), ("input", "E_in.top")):
                if self.vocab_comp.has(f"{key}_index"):
                    out[kind] = (
                        self.vocab_comp.layer(f"{key}_index", layer)[:, :k],
                        self.vocab_comp.layer(f"{key}_value", layer)[:, :k],
                    )
        for parts in self.summaries.values():  # the first subset that has them (subsets are not pooled here)
            v = parts.get("vocab")
            if v is None:
                continue
            for kind, key in (("max_act", "vocab_max_top"), ("mean_act", "vocab_mean_top")):
                if kind not in out and v.has(f"{key}_ix"):
                    out[kind] = (v.layer(f"{key}_ix", layer)[:, :k], v.layer(f"{key}_values", layer)[:, :k])
        return out

    # ------------------------------------------------------------ everything
    def prepare(self) -> None:
        """What every layer's documents read: the table's records, its partner models and the per-token activations
        of the example windows (one forward pass). Call once, after the last change to ``df``."""
        cols = list(self.df.columns)
        self.partner_models = sorted(
            {c[len("max_corr_layer_") :] for c in cols if c.startswith("max_corr_layer_")}, key=str
        )
        self.records = self.df.to_dict("records")
        self.context = self.context_table()

    def layer_documents(self, layer: int, other_meta: dict[str, dict], coact: dict, extra_tables: dict) -> Any:
        """Yield (neuron, doc, token effects) for every neuron of ``layer`` (after ``prepare``)."""
        records, partner_models = self.records, self.partner_models
        examples = self.layer_examples(layer)
        had_context = self.fill_context(layer, examples, self.context)
        hists = self.layer_histograms(layer)
        vocab = {k: (i.tolist(), v.astype(np.float64).tolist()) for k, (i, v) in self.layer_vocab(layer).items()}
        ncomp = None
        if self.neuron_comp is not None and self.neuron_comp.has("out_in.top_index"):
            ncomp = (
                self.neuron_comp.layer("out_in.top_index", layer)[:, : self.cfg.n_neighbours],
                self.neuron_comp.layer("out_in.top_value", layer)[:, : self.cfg.n_neighbours],
            )
        for n in range(self.d_mlp):
            flat = layer * self.d_mlp + n
            row = records[flat] if flat < len(records) else {"layer": layer, "neuron": n}
            props = {k: _finite(v) for k, v in row.items() if not isinstance(v, (list, dict))}
            doc: dict[str, Any] = {"properties": props}
            if hists:
                doc["histogram"] = {k: v[n].tolist() for k, v in hists.items()}
            ex = examples.get(n, {})
            if ex.get("top") or ex.get("text"):
                doc["examples"] = {k: ex[k] for k in ("top", "text") if ex.get(k)} | {
                    "context_activations": had_context
                }
            if ex.get("random") or ex.get("quantile"):
                doc["samples"] = {k: ex[k] for k in ("random", "quantile") if ex.get(k)}
            effects = []
            if vocab:
                doc["vocab"] = {}
                for kind, (ids, vals) in vocab.items():
                    lst = [
                        {"token_id": t, "token": self.vocab(t), "value": round(v, 4)}
                        for t, v in zip(ids[n], vals[n])
                        if t >= 0 and math.isfinite(v)
                    ]
                    doc["vocab"][kind] = lst
                    if kind != "input":
                        effects += [(e["token_id"], kind, e["value"]) for e in lst]
            partners = []
            for m in partner_models:
                pl, pn = row.get(f"max_corr_layer_{m}"), row.get(f"max_corr_neuron_{m}")
                if _finite(pl) is None or _finite(pn) is None:
                    continue
                corr, base = _finite(row.get(f"max_corr_{m}")), _finite(row.get(f"baseline_{m}"))
                p = {
                    "model": m,
                    "layer": int(pl),
                    "neuron": int(pn),
                    "corr": _round(corr),
                    "baseline": _round(base),
                    "excess": _round(corr - base) if corr is not None and base is not None else None,
                    "rotation_z": _round(row.get(f"rotation_z_{m}")),
                    "indexed": m in other_meta,
                    "link": f"/api/{m}/{int(pl)}/{int(pn)}",
                }
                partners.append(p)
            if partners:
                doc["partners"] = {
                    "best_match": partners,
                    "verdict": {c: _round(row.get(c)) for c in VERDICT_COLUMNS if c in row},
                }
            if ncomp is not None:
                doc["weight_neighbours"] = [
                    {
                        "layer": int(i) // self.d_mlp,
                        "neuron": int(i) % self.d_mlp,
                        "cos_out_in": _round(v),
                        "link": f"/api/{self.src.name}/{int(i) // self.d_mlp}/{int(i) % self.d_mlp}",
                    }
                    for i, v in zip(ncomp[0][n], ncomp[1][n])
                    if i >= 0 and np.isfinite(v)
                ]
            if flat in coact:
                doc["coactivation"] = coact[flat]
            for service, by_neuron in extra_tables.items():
                rows = by_neuron.get((layer, n))
                if rows:
                    doc[service] = rows
            yield n, doc, effects


def _layer_rows(b: _ModelBuilder, layer: int, *args) -> tuple[list, list, set[str], list[tuple[int, str]]]:
    """One layer's ``docs`` rows (packed), ``token_effects`` rows, the services its documents carry and the token
    strings decoded for them (new to ``b.vocab``)."""
    t0, name, known = time.time(), b.src.name, len(b.vocab.cache)
    docs, effects, services = [], [], set()
    for n, doc, eff in b.layer_documents(layer, *args):
        services |= set(doc)
        docs.append((name, layer, n, pack(doc)))
        effects += [(name, t, kind, layer, n, v) for t, kind, v in eff]
    b.log(f"{name}: layer {layer} indexed in {time.time() - t0:.1f} s")
    return docs, effects, services, list(b.vocab.cache.items())[known:]


def _context_refs(b: _ModelBuilder, layer: int) -> list[tuple[int, int, int, int, int]]:
    """(row, layer, neuron, start, length) of every window the context activations fill in ``layer``."""
    return [
        (ex["row"], layer, n, ex["start"], len(ex["token_ids"]))
        for n, services in b.layer_examples(layer, CONTEXT_KINDS).items()
        for kind in CONTEXT_KINDS
        for ex in services.get(kind, [])
    ]


#: the builder, function and arguments of a layer map, set before its workers fork (they inherit them: nothing is
#: sent to them but a layer number)
_FORKED: dict[str, Any] = {}


def _forked_layer(layer: int):
    return _FORKED["fn"](_FORKED["builder"], layer, *_FORKED["args"])


def _map_layers(b: _ModelBuilder, fn, *args) -> Any:
    """Yield ``fn(b, layer, *args)`` for every layer in order: in ``browser_jobs(b.cfg.jobs)`` forked processes
    where there are ≥ 2 layers (building documents is pure Python: one core each; the parent takes the results as
    they come), else here."""
    jobs = min(browser_jobs(b.cfg.jobs), b.n_layers)
    if jobs < 2 or "fork" not in get_all_start_methods():
        for layer in range(b.n_layers):
            yield fn(b, layer, *args)
        return
    _FORKED.update(builder=b, fn=fn, args=args)
    try:
        with ProcessPoolExecutor(jobs, mp_context=get_context("fork")) as pool:
            yield from pool.map(_forked_layer, range(b.n_layers))
    finally:
        _FORKED.clear()


def browser_jobs(jobs: int = 0) -> int:
    """Processes for the index's documents and the static export's pages: ``jobs``, else min(4, cores)."""
    return jobs or min(4, os.cpu_count() or 1)


def _coactivation(model: str, runs: list[str], d_mlp: int, k: int) -> dict[int, dict]:
    """{flat id: {"run", "node": {...}, "neighbours": [...]}} from the first run's graph (edges in both directions)."""
    import pandas as pd

    if not runs:
        return {}
    run = runs[0]
    folder = artifacts.coactivation_graph(model, run)
    nodes = pd.read_csv(folder / artifacts.GRAPH_NODES_FILE)
    edges_path = folder / artifacts.GRAPH_EDGES_FILE
    edges = pd.read_parquet(edges_path) if edges_path.exists() else pd.DataFrame(columns=["src", "dst", "weight"])
    both = pd.concat(
        [
            edges.rename(columns={"src": "a", "dst": "b"}),
            edges.rename(columns={"dst": "a", "src": "b"}),
        ]
    )
    both = both.sort_values(["a", "weight", "b"], ascending=[True, False, True])
    top = both.groupby("a", sort=False).head(k)
    neigh: dict[int, list] = defaultdict(list)
    for a, b, w, c in zip(top["a"], top["b"], top["weight"], top.get("count", top["weight"])):
        neigh[int(a)].append(
            {
                "layer": int(b) // d_mlp,
                "neuron": int(b) % d_mlp,
                "weight": _round(w),
                "count": _finite(c),
                "link": f"/api/{model}/{int(b) // d_mlp}/{int(b) % d_mlp}",
            }
        )
    out = {}
    for rec in nodes.to_dict("records"):
        i = int(rec["id"])
        node = {k2: _round(v) for k2, v in rec.items() if k2 in ("weight", "degree", "weighted_degree")}
        out[i] = {"run": run, "node": node, "neighbours": neigh.get(i, [])}
    return out


#: the columns of the explain and intervention tables a neuron document keeps (others are left out)
EXTRA_COLUMNS = {
    "explanation": (
        "best_feature", "best_kind", "best_vr", "runner_up", "runner_up_vr",  # best_features
        "score_best", "combo2", "score_combo2", "combo3", "score_combo3",  # scores (held-out)
    ),
    "interventions": (
        "role", "intervention", "location", "value", "delta_loss", "delta_loss_ci_low", "delta_loss_ci_high",
        "delta_entropy", "kl", "entropy", "scale",
    ),
}  # fmt: skip


def _extra_tables(paths: list[Path], service: str) -> dict[tuple[int, int], list[dict]]:
    """Rows of explanation / intervention tables by (layer, neuron); tables without those columns are skipped.

    explain's tables key neurons by ``layer`` + ``neuron_index`` (their ``neuron`` is the "l.n" name); an
    intervention run's rows without a neuron (nominal, groups) are skipped; the run is its folder's name."""
    out: dict[tuple[int, int], list[dict]] = defaultdict(list)
    keep = EXTRA_COLUMNS.get(service)
    for path in paths:
        try:
            t = _read_table(path)
        except Exception:
            continue
        if "neuron_index" in t.columns:
            t = t.drop(columns=["neuron"]).rename(columns={"neuron_index": "neuron"})
        if not {"layer", "neuron"} <= set(t.columns):
            continue
        if keep is not None and any(c in t.columns for c in keep):
            t = t[["layer", "neuron", *[c for c in keep if c in t.columns]]]
        source = path.parent.name if path.name == artifacts.INTERVENTION_SUMMARY_FILE else path.name
        for rec in t.to_dict("records"):
            try:
                key = (int(rec["layer"]), int(rec["neuron"]))
            except (TypeError, ValueError):
                continue
            clean = {
                k: _round(v) if not isinstance(v, str) else v for k, v in rec.items() if k not in ("layer", "neuron")
            }
            clean["source"] = source
            out[key].append(clean)
    return out


FEATURE_KEYS = ("feature", "best_feature", "features", "explanation")
SCORE_KEYS = ("score_best", "score", "variance_reduction", "explanation_score")  # explain: the held-out score


def explanation_summary(rows: list[dict]) -> tuple[list[str], float | None]:
    """(features, best score) of a neuron's explanation rows (column names as the explain stage may spell them)."""
    feats, score = [], None
    for r in rows:
        for k in FEATURE_KEYS:
            v = r.get(k)
            if isinstance(v, str) and v:
                feats += [f.strip() for f in v.replace(";", ",").split(",") if f.strip()]
        for k in SCORE_KEYS:
            v = r.get(k)
            if isinstance(v, (int, float)) and v is not None and math.isfinite(v):
                score = v if score is None else max(score, v)
    return list(dict.fromkeys(feats)), score


# ====================================================================== the whole index
SCHEMA = """
CREATE TABLE models (model TEXT PRIMARY KEY, meta TEXT NOT NULL);
CREATE TABLE docs (model TEXT, layer INTEGER, neuron INTEGER, doc BLOB, PRIMARY KEY (model, layer, neuron))
    WITHOUT ROWID;
CREATE TABLE tokens (model TEXT, token_id INTEGER, token TEXT, PRIMARY KEY (model, token_id)) WITHOUT ROWID;
CREATE TABLE token_effects (model TEXT, token_id INTEGER, kind TEXT, layer INTEGER, neuron INTEGER, value REAL);
CREATE TABLE features (model TEXT, feature TEXT, layer INTEGER, neuron INTEGER, score REAL);
"""


def _neuron_columns(df) -> list[tuple[str, str]]:
    cols = []
    for c in df.columns:
        c = str(c)
        if c in ("layer", "neuron") or not valid_column(c):
            continue
        kind = df[c].dtype.kind
        if kind == "b":
            cols.append((c, "INTEGER"))
        elif kind in "iuf":
            cols.append((c, "REAL"))
    return cols


def _q(name: str) -> str:
    if not valid_column(name):
        raise NeuronLibError(f"invalid column name {name!r}")
    return '"' + name + '"'


def build_index(cfg: BrowserConfig, sources: list[ModelSources], path: Path, log=print) -> dict[str, Any]:
    """Write the SQLite index at ``path`` (atomically: a temporary file renamed at the end). Returns facts."""
    import pandas as pd  # noqa: F401

    from neuron_lib.stats import post_bin_edges, pre_bin_edges

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    con.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + SCHEMA)
    builders = {s.name: _ModelBuilder(cfg, s, log) for s in sources}
    all_cols: dict[str, str] = {}
    for b in builders.values():
        b.add_importance()
        for c, t in _neuron_columns(b.df):
            all_cols.setdefault(c, t)
    all_cols.setdefault("explanation_score", "REAL")
    col_sql = ", ".join(f"{_q(c)} {t}" for c, t in all_cols.items())
    con.execute(
        f"CREATE TABLE neurons (model TEXT, layer INTEGER, neuron INTEGER, {col_sql}, "
        "PRIMARY KEY (model, layer, neuron)) WITHOUT ROWID"
    )
    facts: dict[str, Any] = {"models": {}}
    meta_all = {name: {"n_layers": b.n_layers, "d_mlp": b.d_mlp} for name, b in builders.items()}
    for name, b in builders.items():
        t0 = time.time()
        expl = _extra_tables(b.src.explanations, "explanation")
        interv = _extra_tables(b.src.interventions, "interventions")
        coact = _coactivation(name, b.src.graph_runs, b.d_mlp, cfg.n_neighbours)
        if expl:
            scores = {k: explanation_summary(v)[1] for k, v in expl.items()}
            b.df["explanation_score"] = [scores.get((int(l), int(n))) for l, n in zip(b.df["layer"], b.df["neuron"])]
            b.df["explanation_score"] = b.df["explanation_score"].astype(float)
            rows = [
                (name, f.lower(), l, n, explanation_summary(v)[1])
                for (l, n), v in expl.items()
                for f in explanation_summary(v)[0]
            ]
            con.executemany("INSERT INTO features VALUES (?,?,?,?,?)", rows)
        services: set[str] = set()
        b.prepare()
        args = (meta_all, coact, {"explanation": expl, "interventions": interv})
        for docs, effects, layer_services, tokens in _map_layers(b, _layer_rows, *args):
            services |= layer_services
            b.vocab.cache.update(tokens)
            con.executemany("INSERT INTO docs VALUES (?,?,?,?)", docs)
            con.executemany("INSERT INTO token_effects VALUES (?,?,?,?,?,?)", effects)
        con.executemany("INSERT INTO tokens VALUES (?,?,?)", [(name, t, s) for t, s in sorted(b.vocab.cache.items())])
        ncols = [c for c in all_cols if c in b.df.columns]
        sub = b.df[["layer", "neuron"] + ncols]
        values = [
            (name, int(r[0]), int(r[1]), *[_finite(v) for v in r[2:]]) for r in sub.itertuples(index=False, name=None)
        ]
        placeholders = ",".join("?" * (3 + len(ncols)))
        con.executemany(
            f"INSERT INTO neurons (model, layer, neuron{''.join(', ' + _q(c) for c in ncols)}) VALUES ({placeholders})",
            values,
        )
        meta = _model_meta(b, services, cfg)
        meta["histogram_edges"] = {
            "pre": [round(float(x), 5) for x in pre_bin_edges().tolist()],
            "post": [round(float(x), 5) for x in post_bin_edges().tolist()],
        }
        con.execute("INSERT INTO models VALUES (?, ?)", (name, json.dumps(meta, allow_nan=False)))
        facts["models"][name] = {"neurons": len(b.df), "services": sorted(services), "seconds": time.time() - t0}
        log(f"{name}: {len(b.df)} neurons, services {', '.join(sorted(services))} ({time.time() - t0:.1f} s)")
    con.executescript(
        "CREATE INDEX token_effects_ix ON token_effects (model, token_id, kind, value);"
        "CREATE INDEX tokens_str ON tokens (token);"
        "CREATE INDEX features_ix ON features (feature);"
        "ANALYZE;"
    )
    con.commit()
    con.close()
    tmp.replace(path)
    return facts


def _model_meta(b: _ModelBuilder, services: set[str], cfg: BrowserConfig) -> dict[str, Any]:
    df = b.df
    top: dict[str, dict[str, list]] = {}
    for measure, (col, desc) in MEASURES.items():
        if col not in df or not df[col].notna().any():
            continue
        per_layer = {}
        for layer, g in df.groupby("layer"):
            g = g[g[col].notna()].sort_values([col, "neuron"], ascending=[not desc, True]).head(10)
            per_layer[str(int(layer))] = [{"neuron": int(n), "value": _round(v)} for n, v in zip(g["neuron"], g[col])]
        top[measure] = per_layer
    layers = []
    for layer, g in df.groupby("layer"):
        entry = {"layer": int(layer), "n_neurons": int(len(g))}
        for c in ("is_universal", "is_universal_z", "is_universal_aligned", "is_sparse"):
            if c in g:
                entry[f"n_{c}"] = int(g[c].fillna(False).astype(bool).sum())
        for c in ("excess_corr", "kurt", "alignment_mean"):
            if c in g and g[c].notna().any():
                entry[f"median_{c}"] = _round(g[c].median())
        layers.append(entry)
    manifest = {}
    man_path = artifacts.table_manifest(b.src.df_path)
    if man_path.exists():
        try:
            manifest = read_json(man_path)
        except NeuronLibError:
            manifest = {}
    return {
        "model": b.src.name,
        "n_layers": b.n_layers,
        "d_mlp": b.d_mlp,
        "n_neurons": int(len(df)),
        "dataset": manifest.get("dataset") or b.toks.dataset_name,
        "services": sorted(services),
        "columns": [str(c) for c in df.columns],
        "layers": layers,
        "top_neurons": top,
        "subsets": [f.name for f in b.src.summary_folders],
        "coactivation_runs": b.src.graph_runs,
        "sources": {
            "neuron_df": b.src.df_path.name,
            "summaries": [f.name for f in b.src.summary_folders],
            "weights": bool(b.src.weights),
            "correlation_table": bool(b.src.correlation_table),
            "explanations": [p.name for p in b.src.explanations],
            "interventions": [p.name for p in b.src.interventions],
        },
    }


# ====================================================================== the stage
def resolve_models(cfg: BrowserConfig) -> list[str]:
    if cfg.models:
        return [artifacts.model_name(m) for m in cfg.models]
    return artifacts.list_neuron_dfs()


def run_browser(cfg: BrowserConfig) -> stage.StageResult:
    """Build the index (unless finished with the same configuration and inputs), then the export and dashboard."""
    cfg.validate()
    t0 = time.time()
    names = resolve_models(cfg)
    if not names:
        raise NeuronLibError(
            f"nothing to index: no neuron dataframe under {artifacts.root('DATAFRAMES_DIR') / 'neuron_dfs'}; "
            "run `make neuron_df` (or `python -m neuron_lib.neuron_df --model M`) first"
        )
    sources = [find_sources(m) for m in names]
    inputs = {s.name: s.digest() for s in sources}
    fingerprint = config_fingerprint({"config": cfg.identity(), "inputs": inputs, "format": INDEX_FORMAT})
    folder = artifacts.browser_index_dir()
    state = stage.folder_state(folder, STAGE, fingerprint, [artifacts.BROWSER_INDEX_FILE])
    if state == "other":  # the index is derived data: new inputs simply replace it
        state = "absent"
    log = lambda msg: stage.log(STAGE, msg)  # noqa: E731
    outputs = {"index": str(artifacts.browser_index())}
    status = "skipped"
    facts: dict[str, Any] = {}
    if stage.must_run(folder, state, cfg.overwrite, STAGE):
        status = "done"
        log(f"plan: index {len(sources)} models ({', '.join(names)}) into {artifacts.browser_index()}")
        artifacts.manifest_path(folder).unlink(missing_ok=True)
        facts = build_index(cfg, sources, artifacts.browser_index(), log)
        write_manifest(
            folder,
            make_manifest(STAGE, cfg, config_fingerprint=fingerprint, inputs=inputs, models=names, facts=facts),
        )
        log(f"index written in {time.time() - t0:.1f} s")
    else:
        log(f"index {artifacts.browser_index()} is up to date (same configuration and inputs)")
    if cfg.export:
        from neuron_lib.browser.export import export_site

        t1 = time.time()
        site = artifacts.browser_site()
        # the export is a pure function of the index and of the page code: the same pair is not written again
        code = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py"))))
        key = config_fingerprint({"index": fingerprint, "code": code.hexdigest()})
        stamp = site / EXPORT_STAMP
        if stamp.exists() and read_json(stamp).get("key") == key:
            log(f"static export {site} is up to date (same index and page code)")
        else:
            export_site(site, jobs=browser_jobs(cfg.jobs))
            atomic_write_json(stamp, {"key": key, "index_fingerprint": fingerprint})
            log(f"static export {site} in {time.time() - t1:.1f} s")
        outputs["site"] = str(site)
    if cfg.dashboard:
        from neuron_lib.browser.dashboard import write_dashboard
        from neuron_lib.notebooks import write_index

        t1 = time.time()
        dash = write_dashboard(artifacts.browser_dashboard())
        write_index(artifacts.figures_root())
        outputs["dashboard"] = str(dash)
        log(f"dashboard {dash} in {time.time() - t1:.1f} s (linked from {artifacts.figures_index()})")
    seconds = time.time() - t0
    log(f"stage time {seconds:.1f} s")
    return stage.StageResult(STAGE, status, outputs, seconds=seconds, details=facts)
