"""The per-neuron property table (spec §5, §12) and loaders for notebooks.

    python -m neuron_lib.neuron_df --model stanford-gpt2-small-a [--dataset NAME] [--subsets a,b]

writes ``$DATAFRAMES_DIR/neuron_dfs/{model}.csv`` and ``.parquet`` (one row per neuron in flat order,
row = layer·d_mlp + neuron) with a manifest ``{model}.manifest.json`` next to them listing its input
manifests, and ``$DATAFRAMES_DIR/interpretable_neurons/{model}/universal.csv`` (+ ``manifest.json``)
holding the universal rows in the paper's exact 23-column schema and order.

Columns (the first 23 are the paper's, same names and meaning, in the paper's order):

- correlations (``$DATAFRAMES_DIR/correlations/{model}/{dataset}/neuron_correlations.csv`` of
  ``neuron_lib.correlations_fast``): ``max_corr, mean_corr, min_corr, max_baseline, min_baseline,
  mean_baseline``, ``excess_corr`` = mean_corr − mean_baseline, plus that table's extra columns
  (``rotation_z, is_universal, is_universal_z`` …);
- weights (``$SUMMARY_DIR/{model}/weights/neuron_stats.csv`` of ``neuron_lib.weights``): ``w_in_norm,
  input_bias, w_out_norm, in_out_sim, l2_penalty`` and ``vocab_mean, vocab_var, vocab_skew,
  vocab_kurt`` (the U_out moments);
- activations (``$SUMMARY_DIR/{model}/activations/{subset}/`` of ``neuron_lib.summary``), summed over
  all subsets (the paper's ``'all'``):
  ``mean, var, skew, kurt`` of the pre-activation from the *binned* histogram exactly as the paper
  (``stats.binned_moments``, non-excess kurtosis) and ``sparsity`` as the paper (``stats.binned_sparsity``:
  really the activation frequency, with its one-bin bias), both over **every position** of the rows, BOS/EOS/pad
  included, as the paper's summary counted them (the summary's ``pre_bin_counts_all_positions``); and our exact
  versions from power sums, ``mean_exact, var_exact, skew_exact, kurt_exact`` and ``act_freq_exact``
  (fraction > 0), over the summary's filtered positions (BOS/EOS/pad dropped by default; its manifest's
  ``token_filter``).
- computed: ``is_universal`` (from the correlation table, else ``criteria.universal``: excess_corr > 0.5),
  ``is_sparse`` (``criteria.sparse``: sparsity < 0.02), ``is_prediction`` / ``is_suppression`` (paper §5.1:
  vocab_kurt > 10, ``criteria.vocab_kind``); when the weight summary holds the vocab-kurtosis null
  (``vocab_kurt_null.csv``): ``vocab_kurt_null_q99`` (the neuron's layer's null quantile) and
  ``is_prediction_calibrated`` / ``is_suppression_calibrated`` (vocab_kurt above it).
- gated MLPs (Llama): ``w_gate_norm, w_up_norm, in_out_sim_gate, in_out_sim_up`` (``weights.GATED_DEFINITIONS``;
  ``input_bias`` is NaN: no MLP biases).

A missing input leaves its columns NaN with a warning; inputs whose manifests name another model are
refused (:class:`~neuron_lib.common.ManifestMismatch`).

Loaders: :func:`load_neuron_df` reads our tables and the paper's published CSVs (normalising the
old column names), :func:`load_weights_summary`, :func:`load_activation_summaries`; analysis helpers
:func:`layer_medians` and :func:`compare_universal` (paper Fig. 3).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuron_lib import artifacts, criteria, stage
from neuron_lib.common import (
    ManifestMismatch,
    NeuronLibError,
    atomic_write_json,
    config_field,
    load_tensors,
    make_manifest,
    read_json,
    run_cli,
    save_dataframe_atomic,
    write_manifest,
)
from neuron_lib.models import model_output_name
from neuron_lib.stats import (
    activation_frequency,
    binned_moments,
    binned_sparsity,
    moments_from_power_sums,
    pool_power_sums,
    within_layer_percentiles,
)

STAGE = "neuron_df"
CORR_COLUMNS = ["max_corr", "mean_corr", "min_corr", "max_baseline", "min_baseline", "mean_baseline"]
WEIGHT_COLUMNS = ["w_in_norm", "input_bias", "w_out_norm", "in_out_sim", "l2_penalty"]
ACTIVATION_COLUMNS = ["mean", "var", "skew", "kurt"]
VOCAB_COLUMNS = ["vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt"]
EXACT_COLUMNS = ["mean_exact", "var_exact", "skew_exact", "kurt_exact", "act_freq_exact", "n_active_exact"]
GATED_WEIGHT_COLUMNS = ["w_gate_norm", "w_up_norm", "in_out_sim_gate", "in_out_sim_up"]
#: the paper's universal.csv schema, in its order (spec §12)
PAPER_COLUMNS = (
    ["layer", "neuron"]
    + CORR_COLUMNS
    + WEIGHT_COLUMNS
    + ACTIVATION_COLUMNS
    + VOCAB_COLUMNS
    + ["sparsity", "excess_corr"]
)
#: old names in high_excess_correlation.csv and the original's neuron_stats.csv (spec §18.17)
OLD_COLUMN_NAMES = {
    "input_weight_norm": "w_in_norm",
    "output_weight_norm": "w_out_norm",
    "weight_norm_penalty": "l2_penalty",
    "neuron_ix": "neuron",
    "excess_correlation": "excess_corr",
}
#: the histogram the paper's binned columns come from: every position, BOS/EOS/pad kept (the paper's convention)
PAPER_HISTOGRAM = "pre_bin_counts_all_positions"
#: tables that hold only (old- or new-definition) universal neurons
UNIVERSAL_ONLY_TABLES = {"universal", "high_excess_correlation"}


class MissingInputWarning(UserWarning):
    """An input of the neuron table is missing; its columns are NaN."""


def _warn(msg: str) -> None:
    warnings.warn(msg, MissingInputWarning, stacklevel=3)


# ====================================================================== activation columns
def _power_sums(t: Mapping[str, torch.Tensor]) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    shape = t["pre_sum"].shape
    sums = {0: t["pre_count"].to(torch.float64).expand(shape)}
    for k, key in ((1, "pre_sum"), (2, "pre_sum_sq"), (3, "pre_sum_cube"), (4, "pre_sum_quad")):
        sums[k] = t[key].to(torch.float64)
    return sums, t["pre_shift"].to(torch.float64).expand(shape)


def aggregate_activation_summaries(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Sum the subsets (the paper's ``'all'``): histogram counts, and power sums re-centred on the pooled mean.

    Returns ``{"counts": int64 [L,N,E+1] | None, "edges": float32 [E], "sums": {k: [L,N]} | None,
    "shift": [L,N] | None, "n_positive": [L,N] | None, "subsets": [...]}``.
    """
    counts = edges = n_pos = None
    power = []
    for subset, t in summaries.items():
        if "pre_bin_counts" in t:
            if PAPER_HISTOGRAM not in t:
                raise NeuronLibError(
                    f"activation subset {subset!r} ({t.get('path')}) has no {PAPER_HISTOGRAM}: it was written by an "
                    "older neuron_lib.summary; re-run it with --overwrite"
                )
            e = t["pre_bin_edges"].to(torch.float32)
            if edges is not None and not torch.equal(edges, e):
                raise NeuronLibError(
                    f"activation subset {subset!r} uses other histogram edges than the others; "
                    "re-run neuron_lib.summary for all subsets with the same version"
                )
            edges = e
            c = t[PAPER_HISTOGRAM].to(torch.int64)
            counts = c if counts is None else counts + c
        if "pre_sum" in t:
            power.append(_power_sums(t))
            p = t["pre_n_positive"].to(torch.int64)
            n_pos = p if n_pos is None else n_pos + p
    complete = len(power) == len(summaries)
    sums, shift = pool_power_sums(power) if power and complete else (None, None)
    return {
        "counts": counts,
        "edges": edges,
        "sums": sums,
        "shift": shift,
        "n_positive": n_pos if complete else None,
        "subsets": list(summaries),
    }


def activation_columns(agg: Mapping[str, Any], n_layers: int, d_mlp: int) -> dict[str, np.ndarray]:
    """The activation columns (flat order) from :func:`aggregate_activation_summaries`; NaN where missing."""
    nan = np.full(n_layers * d_mlp, np.nan)
    cols = {c: nan.copy() for c in ACTIVATION_COLUMNS + ["sparsity"] + EXACT_COLUMNS}

    def flat(t: torch.Tensor, what: str) -> np.ndarray:
        if tuple(t.shape[:2]) != (n_layers, d_mlp):
            raise ManifestMismatch(
                f"activation summary {what} has shape {tuple(t.shape)}, but the model has "
                f"[{n_layers}, {d_mlp}] neurons: it belongs to another model"
            )
        return t.reshape(n_layers * d_mlp).numpy()

    if agg.get("counts") is not None:
        with np.errstate(all="ignore"):
            for k, v in binned_moments(agg["counts"], agg["edges"]).items():
                cols[k] = flat(v, "pre_bin_counts")
            cols["sparsity"] = flat(binned_sparsity(agg["counts"], agg["edges"]), "pre_bin_counts")
    if agg.get("sums") is not None:
        for k, v in moments_from_power_sums(agg["sums"], agg["shift"]).items():
            cols[f"{k}_exact"] = flat(v, "moments")
        if agg.get("n_positive") is not None:
            cols["act_freq_exact"] = flat(activation_frequency(agg["n_positive"], agg["sums"][0]), "pre_n_positive")
            cols["n_active_exact"] = flat(agg["n_positive"], "pre_n_positive").astype(np.float64)
    return cols


# ====================================================================== loaders of the inputs
def load_activation_summaries(
    model: str, subsets: Iterable[str] | None = None, files: Iterable[str] | None = None
) -> dict[str, dict[str, Any]]:
    """``{subset: {"manifest": dict, "path": Path, <tensor name>: tensor, ...}}`` of ``model``'s activation summaries.

    ``files`` limits which summary parts are read (default: all of ``artifacts.SUMMARY_PARTS``). A folder named
    ``all`` is skipped when other subsets exist (the table sums the subsets itself). Unfinished folders
    (no manifest) are skipped with a warning. Returns ``{}`` when nothing is there.
    """
    root = artifacts.activation_summary_root(model)
    if not root.exists():
        return {}
    wanted = set(subsets) if subsets else None
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if wanted is None and len(folders) > 1:
        folders = [p for p in folders if p.name != "all"]
    parts = list(files) if files is not None else list(artifacts.SUMMARY_PARTS)
    out: dict[str, dict[str, Any]] = {}
    for folder in folders:
        if wanted is not None and folder.name not in wanted:
            continue
        if not artifacts.manifest_path(folder).exists():
            _warn(f"activation summary {folder} has no manifest (unfinished?); skipped")
            continue
        entry: dict[str, Any] = {"manifest": read_json(artifacts.manifest_path(folder)), "path": folder}
        for part in parts:
            if artifacts.summary_part(folder, part).exists():
                entry.update(load_tensors(artifacts.summary_part(folder, part)))
        out[folder.name] = entry
    if wanted is not None and set(out) != wanted:
        raise NeuronLibError(
            f"activation subsets {sorted(wanted - set(out))} of {model!r} are missing under {root}; "
            f"present: {sorted(p.name for p in root.iterdir() if p.is_dir())}"
        )
    return out


def load_weights_summary(model: str, raw: bool = False, tensors: bool = True) -> dict[str, Any]:
    """``{"manifest", "neuron_stats" (DataFrame), "vocab", "neurons", "heads", "path"}`` of ``neuron_lib.weights``.

    ``vocab``/``neurons`` are ``{type: {key: tensor}}`` (types E_in…, in_in…), ``heads`` ``{name: tensor}``;
    a part that was not computed is absent. ``tensors=False`` reads only the CSV and the manifest.
    """
    import pandas as pd

    folder = artifacts.weights_summary(model, raw)
    manifest = _read_manifest_or_none(folder)
    if manifest is None or not (folder / artifacts.WEIGHT_STATS_FILE).exists():
        raise NeuronLibError(
            f"no finished weight summary in {folder}; run `python -m neuron_lib.weights --model {model}`"
        )
    out: dict[str, Any] = {
        "manifest": manifest,
        "path": folder,
        "neuron_stats": pd.read_csv(folder / artifacts.WEIGHT_STATS_FILE),
    }
    if tensors:
        for part, fname in (("vocab", artifacts.WEIGHT_VOCAB_FILE), ("neurons", artifacts.WEIGHT_NEURON_FILE)):
            f = folder / fname
            if f.exists():
                nested: dict[str, dict[str, torch.Tensor]] = {}
                for key, val in load_tensors(f).items():
                    if "." in key:
                        t, k = key.split(".", 1)
                        nested.setdefault(t, {})[k] = val
                    else:
                        nested[key] = val  # hist_edges
                out[part] = nested
        f = folder / artifacts.WEIGHT_HEAD_FILE
        if f.exists():
            out["heads"] = load_tensors(f)
    return out


def load_correlation_table(folder: Path):
    import pandas as pd

    parquet, csv = artifacts.correlation_table_file(folder, "parquet"), artifacts.correlation_table_file(folder, "csv")
    df = pd.read_parquet(parquet) if parquet.exists() else pd.read_csv(csv)
    missing = [c for c in ("layer", "neuron") if c not in df.columns]
    if missing:
        raise NeuronLibError(f"{folder} correlation table lacks columns {missing}")
    return df


def _read_manifest_or_none(folder: Path) -> dict | None:
    path = artifacts.manifest_path(folder)
    return read_json(path) if path.exists() else None


def _manifest_models(manifest: Mapping[str, Any]) -> list[str]:
    """Model names a manifest claims (``model``, or the config's ``model`` / ``reference_model``)."""
    names = (
        [model_output_name(manifest["model"])] if isinstance(manifest.get("model"), str) and manifest["model"] else []
    )
    cfg = manifest.get("config")
    if not names and isinstance(cfg, dict):
        for key in ("model", "reference_model"):
            v = cfg.get(key)
            if isinstance(v, str) and v:
                names.append(model_output_name(v))
    return names


def check_same_model(model: str, manifest: Mapping[str, Any] | None, where: str) -> None:
    """Refuse an input whose manifest names another model than ``model``."""
    if not manifest:
        return
    claimed = _manifest_models(manifest)
    if claimed and claimed[0] != model:
        raise ManifestMismatch(
            f"{where} was made for model {claimed[0]!r}, not {model!r}; "
            "re-run that stage for this model or point the output roots elsewhere"
        )


def _input_record(path: Path, manifest: Mapping[str, Any] | None) -> dict[str, Any]:
    m = manifest or {}
    return {
        "path": str(path),
        "stage": m.get("stage"),
        "model": m.get("model"),
        "dataset": m.get("dataset"),
        "n_tokens": m.get("n_tokens"),
        "created_unix": m.get("created_unix"),
    }


# ====================================================================== table assembly
@dataclasses.dataclass
class NeuronDfConfig:
    """Settings of the per-neuron table."""

    model: str = config_field("", "model name as used by the other stages")
    dataset: str = config_field("", "correlation dataset folder name ('' = the only one present)")
    subsets: str = config_field("", "comma-separated activation subsets ('' = all)")
    universal_threshold: float = config_field(
        criteria.UNIVERSAL_THRESHOLD,
        "excess_corr threshold, used only when the correlation table has no is_universal column",
    )
    formats: str = config_field("csv,parquet", "comma list of csv, parquet")
    overwrite: bool = config_field(
        False,
        "what `make all OVERWRITE=neuron_df` passes; changes nothing: the table is always rebuilt from its inputs "
        "(files whose bytes would not change are kept)",
    )

    def validate(self) -> NeuronDfConfig:
        if not self.model:
            raise NeuronLibError("--model is required")
        bad = [f for f in self.format_list() if f not in ("csv", "parquet")]
        if bad or not self.format_list():
            raise NeuronLibError(f"--formats must be a comma list of csv, parquet (got {self.formats!r})")
        return self

    def format_list(self) -> list[str]:
        return [f.strip() for f in self.formats.split(",") if f.strip()]

    def subset_list(self) -> list[str] | None:
        subs = [s.strip() for s in self.subsets.split(",") if s.strip()]
        return subs or None


def _model_shape(weights: dict | None, acts: dict, corr_df) -> tuple[int, int]:
    if weights is not None:
        m = weights["manifest"]
        if "n_layers" in m and "d_mlp" in m:
            return int(m["n_layers"]), int(m["d_mlp"])
        st = weights["neuron_stats"]
        return int(st.layer.max()) + 1, int(st.neuron.max()) + 1
    for t in acts.values():
        for key in ("pre_bin_counts", "pre_sum"):
            if key in t:
                return int(t[key].shape[0]), int(t[key].shape[1])
    if corr_df is not None:
        return int(corr_df.layer.max()) + 1, int(corr_df.neuron.max()) + 1
    raise NeuronLibError(
        "no input found for this model: run neuron_lib.weights, neuron_lib.summary or "
        "neuron_lib.correlations_fast first"
    )


def make_neuron_df(
    model: str,
    dataset: str = "",
    subsets: list[str] | None = None,
    universal_threshold: float = criteria.UNIVERSAL_THRESHOLD,
):
    """Assemble the per-neuron table; returns ``(df, inputs)`` with ``inputs`` the input records for the manifest."""
    import pandas as pd

    name = model_output_name(model)
    inputs: dict[str, Any] = {}

    # ---- weights
    try:
        weights = load_weights_summary(name, tensors=False)
    except NeuronLibError as exc:
        weights = None
        _warn(f"no weight summary for {name!r} ({exc}); weight and vocab columns are NaN")
    if weights is not None:
        check_same_model(name, weights["manifest"], f"weight summary {weights['path']}")
        inputs["weights"] = _input_record(weights["path"], weights["manifest"])

    # ---- activations
    acts = load_activation_summaries(name, subsets, files=("histogram", "moments"))
    if not acts:
        _warn(
            f"no activation summary under {artifacts.activation_summary_root(name)}; activation columns are NaN "
            f"(run `python -m neuron_lib.summary --model {model} ...`)"
        )
    for t in acts.values():
        check_same_model(name, t["manifest"], f"activation summary {t['path']}")
    inputs["activations"] = {s: _input_record(t["path"], t["manifest"]) for s, t in acts.items()}

    # ---- correlations
    corr_folder = artifacts.find_correlation_table(name, dataset)
    corr_df = None
    if corr_folder is None:
        _warn(
            f"no correlation table for {name!r}{' on ' + dataset if dataset else ''} under "
            f"{artifacts.correlation_tables_root(name)}; correlation columns are NaN"
        )
    else:
        corr_manifest = _read_manifest_or_none(corr_folder)
        check_same_model(name, corr_manifest, f"correlation table {corr_folder}")
        corr_df = load_correlation_table(corr_folder)
        inputs["correlations"] = _input_record(corr_folder, corr_manifest)

    L, N = _model_shape(weights, acts, corr_df)
    df = pd.DataFrame({"layer": np.repeat(np.arange(L), N), "neuron": np.tile(np.arange(N), L)})

    # correlations: left join on (layer, neuron)
    for c in CORR_COLUMNS + ["excess_corr"]:
        df[c] = np.nan
    if corr_df is not None:
        if corr_df.layer.max() >= L or corr_df.neuron.max() >= N or corr_df.duplicated(["layer", "neuron"]).any():
            raise ManifestMismatch(
                f"correlation table {corr_folder} has neurons outside [{L}, {N}] or duplicate rows: "
                "it belongs to another model"
            )
        extra = corr_df.drop(columns=[c for c in ("layer", "neuron") if c in corr_df.columns])
        keyed = corr_df[["layer", "neuron"]].astype("int64")
        flat = (keyed.layer * N + keyed.neuron).to_numpy()
        for c in extra.columns:
            col = extra[c].to_numpy()
            if col.dtype == bool or c.startswith("is_"):
                full = np.zeros(L * N, dtype=bool)
                full[flat] = _as_bool(pd.Series(col)).to_numpy()
            elif np.issubdtype(col.dtype, np.number):
                full = np.full(L * N, np.nan)
                full[flat] = col
            else:
                full = np.full(L * N, None, dtype=object)
                full[flat] = col
            df[c] = full
        if "excess_corr" not in corr_df.columns or df["excess_corr"].isna().all():
            df["excess_corr"] = df["mean_corr"] - df["mean_baseline"]

    # weights
    for c in WEIGHT_COLUMNS + VOCAB_COLUMNS:
        df[c] = np.nan
    if weights is not None:
        st = weights["neuron_stats"]
        if len(st) != L * N or not (st.layer.to_numpy() * N + st.neuron.to_numpy() == np.arange(L * N)).all():
            raise ManifestMismatch(f"weight summary {weights['path']} does not have {L}×{N} neurons in flat order")
        for c in WEIGHT_COLUMNS + VOCAB_COLUMNS:
            if c in st.columns:
                df[c] = st[c].to_numpy()
        for c in GATED_WEIGHT_COLUMNS:  # gated MLPs only (weights.GATED_DEFINITIONS)
            if c in st.columns:
                df[c] = st[c].to_numpy()
        null_file = Path(weights["path"]) / artifacts.WEIGHT_VOCAB_NULL_FILE
        if null_file.exists():
            null = pd.read_csv(null_file)
            if len(null) != L or not (null["layer"].to_numpy() == np.arange(L)).all():
                raise ManifestMismatch(f"{null_file} has {len(null)} layers, the model {L}: rerun the weights stage")
            df[criteria.NULL_QUANTILE_COLUMN] = null[f"null_q{criteria.NULL_QUANTILE * 100:g}"].to_numpy()[
                df["layer"].to_numpy()
            ]
            inputs["vocab_null"] = str(null_file)

    # activations
    agg = aggregate_activation_summaries(acts) if acts else {}
    for c, v in activation_columns(agg, L, N).items():
        df[c] = v
    if acts:
        inputs["activation_edges"] = agg["edges"].tolist()

    # computed flags
    if "is_universal" not in df.columns:
        df["is_universal"] = criteria.universal(df["excess_corr"], threshold=universal_threshold)
    df["is_sparse"] = criteria.sparse(df["sparsity"])
    kinds = {"": criteria.PREDICTION_KURTOSIS}
    if criteria.NULL_QUANTILE_COLUMN in df:
        kinds["_calibrated"] = criteria.kurtosis_threshold(df, criteria.CALIBRATED)
    for suffix, kurt_threshold in kinds.items():
        kind = criteria.vocab_kind(df["vocab_kurt"], df["vocab_skew"], kurt_threshold)
        df[f"is_prediction{suffix}"] = kind == "prediction"
        df[f"is_suppression{suffix}"] = kind == "suppression"
    if df["n_active_exact"].notna().any():
        df["low_count"] = criteria.low_count(df["n_active_exact"])

    ordered = PAPER_COLUMNS + [c for c in EXACT_COLUMNS if c in df.columns]
    df = df[ordered + [c for c in df.columns if c not in ordered]]
    return df, inputs


def run_neuron_df(cfg: NeuronDfConfig) -> stage.StageResult:
    """Build and write the table (and universal.csv when correlations exist) at ``artifacts.neuron_df``."""
    cfg.validate()
    name = model_output_name(cfg.model)
    df, inputs = make_neuron_df(name, cfg.dataset, cfg.subset_list(), cfg.universal_threshold)
    stem = artifacts.neuron_df(name)
    written = save_dataframe_atomic(df, stem, cfg.format_list())
    n_tokens = sum((r.get("n_tokens") or 0) for r in inputs.get("activations", {}).values()) or None
    has_corr = "correlations" in inputs
    manifest = make_manifest(
        STAGE,
        cfg,
        model=name,
        dataset=cfg.dataset or None,
        n_tokens=n_tokens,
        inputs=inputs,
        n_rows=len(df),
        columns=list(df.columns),
        files=[p.name for p in written],
        n_universal=int(df["is_universal"].sum()) if has_corr else None,
        definitions={
            "mean/var/skew/kurt": "binned pre-activation moments (paper §5.3), non-excess kurt, over every "
            "position (BOS/EOS/pad kept, the paper's convention)",
            "sparsity": "paper's activation frequency from the histogram (first edge >= 0 onward), every position",
            "*_exact": "from float64 power sums over the summary's filtered positions (its token_filter); "
            "act_freq_exact = fraction of pre-activations > 0, n_active_exact = their count",
            "low_count": f"n_active_exact < {criteria.LOW_COUNT}: frequency, moments and correlations are noisy",
            "alignment_*": "the scale-free universality criterion (docs/universality.md): best-partner correlation / "
            "multiple correlation with the whole other model; is_universal_aligned: alignment_mean > "
            f"{criteria.ALIGNMENT_THRESHOLD:.4f}",
            "excess_corr": "mean_corr - mean_baseline",
            "is_sparse": f"sparsity < {criteria.SPARSE_THRESHOLD}",
            "is_prediction / is_suppression": f"paper §5.1: vocab_kurt > {criteria.PREDICTION_KURTOSIS:g} and "
            "vocab_skew > 0 / < 0",
            criteria.NULL_QUANTILE_COLUMN: f"the layer's q{criteria.NULL_QUANTILE * 100:g} of the vocab kurtosis of "
            "random directions drawn with the layer's w_out covariance (weights vocab_kurt_null.csv; draw and seed in "
            "the weights manifest)",
            "is_*_calibrated": f"vocab_kurt > {criteria.NULL_QUANTILE_COLUMN} and vocab_skew > 0 / < 0",
        },
    )
    atomic_write_json(artifacts.neuron_df_manifest(name), manifest)
    outputs = {"table": str(stem), **{p.suffix.lstrip("."): str(p) for p in written}}
    if has_corr:
        universal = df.loc[df["is_universal"].astype(bool), PAPER_COLUMNS]
        udir = artifacts.interpretable_neurons(name)
        save_dataframe_atomic(universal, artifacts.universal_table(name).with_suffix(""), ("csv",))
        files = [artifacts.universal_table(name).name]
        if "is_universal_aligned" in df:  # the chosen criterion's set, the paper's schema plus its own columns
            extra = [c for c in ("alignment_mean", "alignment_min", "n_models_aligned") if c in df]
            aligned = df.loc[df["is_universal_aligned"].astype(bool), PAPER_COLUMNS + extra]
            save_dataframe_atomic(aligned, artifacts.universal_aligned_table(name).with_suffix(""), ("csv",))
            files.append(artifacts.universal_aligned_table(name).name)
            outputs["universal_aligned"] = str(artifacts.universal_aligned_table(name))
        write_manifest(
            udir,
            make_manifest(
                STAGE,
                cfg,
                model=name,
                dataset=cfg.dataset or None,
                n_tokens=n_tokens,
                inputs={"neuron_df": str(artifacts.neuron_df_manifest(name)), **inputs},
                n_rows=len(universal),
                columns=PAPER_COLUMNS,
                files=files,
            ),
        )
        outputs["universal"] = str(artifacts.universal_table(name))
    else:
        _warn(f"no correlation table: {artifacts.universal_table(name)} not written")
    stage.log(STAGE, f"wrote {stem}.{{{cfg.formats}}}")
    return stage.StageResult(STAGE, "done", outputs, n_tokens)


# ====================================================================== loaders for notebooks
def _normalise_columns(df):
    unnamed = [c for c in df.columns if str(c).startswith("Unnamed:") or str(c) == ""]
    df = df.drop(columns=unnamed)  # the unnamed index of high_excess_correlation.csv (= flat index)
    return df.rename(columns={k: v for k, v in OLD_COLUMN_NAMES.items() if k in df.columns and v not in df.columns})


def _as_bool(series):
    if series.dtype == bool:
        return series
    if series.dtype == object or str(series.dtype).startswith(("string", "str")):
        mapped = series.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0") if v is not None else False)
        return mapped.astype(bool)
    return (series.fillna(0) != 0).astype(bool)


def load_neuron_df(model_or_csv_path: str | Path, universal_threshold: float = criteria.UNIVERSAL_THRESHOLD):
    """A neuron table as a DataFrame: ours (by model name or path) or one of the paper's published CSVs.

    Normalises the paper's old names (input_weight_norm → w_in_norm, output_weight_norm → w_out_norm,
    weight_norm_penalty → l2_penalty, neuron_ix → neuron) and drops an unnamed index column; adds
    ``excess_corr`` (mean_corr − mean_baseline) and ``is_universal`` (excess_corr > 0.5) when missing,
    and ``is_sparse`` (sparsity < 0.02). NaN compares False in both flags.

    ``df.attrs``: ``source`` (path), ``table`` (file stem), ``model`` (best guess), ``only_universal``
    (True for ``universal.csv`` and ``high_excess_correlation.csv``, whose rows are all universal
    neurons; the latter by the paper's older definition excess ≈ min_corr − max_baseline),
    ``excess_corr_definition``.
    """
    import pandas as pd

    path = Path(model_or_csv_path).expanduser()
    if path.is_file():
        model_guess = path.parent.name
    else:
        name = model_output_name(str(model_or_csv_path))
        path, model_guess = artifacts.neuron_df_file(name), name
        if not path.exists():
            raise NeuronLibError(
                f"no neuron table for {model_or_csv_path!r} (looked for {path} and .parquet); "
                f"run `python -m neuron_lib.neuron_df --model {model_or_csv_path}` or give a CSV path"
            )
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(path)
    old_names = [c for c in df.columns if c in OLD_COLUMN_NAMES]
    df = _normalise_columns(df)
    definition = "mean_corr - mean_baseline"
    if path.stem == "high_excess_correlation":
        definition = "old: approx. min_corr - max_baseline (spec §12)"
    if "excess_corr" not in df.columns:
        if {"mean_corr", "mean_baseline"} <= set(df.columns):
            df["excess_corr"] = df["mean_corr"] - df["mean_baseline"]
        else:
            df["excess_corr"] = np.nan
    if "is_universal" in df.columns:
        df["is_universal"] = _as_bool(df["is_universal"])
    else:
        df["is_universal"] = criteria.universal(df["excess_corr"], threshold=universal_threshold)
    df["is_sparse"] = criteria.sparse(df["sparsity"]) if "sparsity" in df.columns else False
    if "is_universal_z" in df.columns:
        df["is_universal_z"] = _as_bool(df["is_universal_z"])
    df.attrs.update(
        {
            "source": str(path),
            "table": path.stem,
            "model": model_guess,
            "only_universal": path.stem in UNIVERSAL_ONLY_TABLES,
            "excess_corr_definition": definition,
            "renamed_old_columns": old_names,
        }
    )
    return df


def layer_medians(df, columns: Iterable[str] | None = None, split_universal: bool = False):
    """Per-layer medians of ``columns`` (default: the paper's numeric property columns present).

    ``split_universal=True`` groups by (layer, is_universal).
    """
    if columns is None:
        columns = [c for c in PAPER_COLUMNS[2:] if c in df.columns]
    columns = list(columns)
    keys = ["layer", "is_universal"] if split_universal else ["layer"]
    return df.groupby(keys)[columns].median()


#: property → direction the paper reports for universal neurons (Fig. 3, within-layer percentiles)
PAPER_FIG3_EXPECTATION = {
    "kurt": "higher",
    "skew": "higher",
    "input_bias": "lower",
    "sparsity": "lower",
    "act_freq_exact": "lower",
    "l2_penalty": "higher",
    "vocab_kurt": "higher",
}


def compare_universal(df, properties: Iterable[str] | None = None):
    """Median within-layer percentile of universal vs other neurons per property (paper Fig. 3).

    Each neuron's value is ranked within its layer (``stats.within_layer_percentiles``, 0–100, the same
    percentiles as the Fig. 3 figure); the table gives the median
    percentile of universal and of non-universal neurons, their raw medians, the counts, the paper's
    expected direction and whether the data agree. Needs the full table (both groups).
    """
    import pandas as pd

    if df.attrs.get("only_universal"):
        raise NeuronLibError(
            "compare_universal needs the full neuron table (all neurons), but this one holds only "
            f"universal neurons ({df.attrs.get('source')})"
        )
    if "is_universal" not in df.columns:
        raise NeuronLibError("the table has no is_universal column (no correlation results)")
    uni = df["is_universal"].astype(bool)
    if not uni.any() or uni.all():
        raise NeuronLibError(
            f"compare_universal needs both universal and other neurons; found {int(uni.sum())} universal of {len(df)}"
        )
    props = list(properties) if properties is not None else list(PAPER_FIG3_EXPECTATION)
    rows = []
    for p in props:
        if p not in df.columns or df[p].isna().all():
            continue
        pct = within_layer_percentiles(df, [p])[p]
        u_pct, o_pct = pct[uni].median(), pct[~uni].median()
        expected = PAPER_FIG3_EXPECTATION.get(p)
        agrees = None if expected is None else bool((u_pct > o_pct) if expected == "higher" else (u_pct < o_pct))
        rows.append(
            {
                "property": p,
                "universal_percentile": u_pct,
                "other_percentile": o_pct,
                "universal_median": df.loc[uni, p].median(),
                "other_median": df.loc[~uni, p].median(),
                "n_universal": int(df.loc[uni, p].notna().sum()),
                "n_other": int(df.loc[~uni, p].notna().sum()),
                "paper_expectation": expected,
                "agrees_with_paper": agrees,
            }
        )
    return pd.DataFrame(rows).set_index("property")


# ====================================================================== CLI
main = stage.cli(NeuronDfConfig, run_neuron_df, "python -m neuron_lib.neuron_df", __doc__.split("\n\n")[0])


if __name__ == "__main__":
    run_cli(main)
