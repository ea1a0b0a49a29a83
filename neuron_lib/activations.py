"""Cache activations of a neuron subset or of whole layers, plus per-token loss/entropy/rank
(``python -m neuron_lib.activations``; the paper's ``activations.py``, spec §6).

Selection: ``--neurons 1.23,0.5`` and/or ``--neuron-csv FILE`` (columns ``layer`` and ``neuron`` or
``neuron_ix``), or ``--layers 0,1`` (every neuron of those layers). ``--location pre`` (default, as the paper:
``mlp.hook_pre``) or ``post``.

Rows: the first ``ceil(max_tokens / ctx)`` rows of the token dataset (all rows by default).
- ``--aggregation none`` (default): one value per token position, ``[n_rows·ctx]`` in flat-index order
  row·ctx + pos (the summaries' ``top_index`` points straight into it). No position is dropped.
- ``mean`` / ``max`` / ``last``: one value per row, over the row's positions that survive the token filter
  (BOS/EOS/pad dropped by default, ``--keep-bos`` keeps them, ``--drop-newline`` drops the newline token);
  ``last`` is the value at the last kept position (the original's 'last' branch never ran, spec §18.7).
  A row without any kept position is invalid (``row_valid`` False; loaders return NaN there).

Storage (``$CACHED_ACTIVATIONS_DIR/{model}/{dataset}/``, safetensors + ``manifest.json``):
- ``neurons.safetensors`` (subset mode) or ``layer{l}.safetensors`` (layer mode): ``values`` [rows, K]
  (uint8 for ``--precision 8``, float16 for ``16``), ``neurons`` int64 [K, 2] (layer, neuron), and for 8 bits
  the per-neuron ``scale`` float32 [K] and ``zero_point`` int64 [K] of the paper's quantisation
  scale = (max − min)/255, zero_point = round(−min/scale), q = clamp(round(x/scale) + zero_point, 0, 255),
  x ≈ (q − zero_point)·scale (error ≤ scale/2). A constant neuron gets scale = |min|/255 (1 if min is 0) so
  that it is reproduced exactly. Aggregated runs also store ``row_valid`` bool [rows].
- ``metrics.safetensors`` (unless ``--skip-metrics``): ``loss`` float32 [n_rows, ctx] = next-token cross
  entropy in nats (last position 0), ``entropy`` float32 [n_rows, ctx] = entropy of the next-token
  distribution in nats (exact ``−Σ p log p`` from ``log_softmax``), ``rank`` int32 [n_rows, ctx] = number of
  logits strictly greater than the true next token's logit (0 = top-1; last position 0) — a count, not a
  full sort of the vocabulary (spec §18.29).

``load_cached_activations(model, dataset, neuron)`` dequantises one neuron to a float32 vector;
``load_cached_metrics(model, dataset)`` returns the metric tensors.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

from neuron_lib import artifacts, stage, stats
from neuron_lib.common import (
    REQUIRED,
    ManifestMismatch,
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

STAGE = "activations"
AGGREGATIONS = ("none", "mean", "max", "last")


@dataclasses.dataclass
class ActivationsConfig:
    """Cache the activations of some neurons (or whole layers) over a token dataset."""

    model: str = config_field(REQUIRED, "model name: zoo name, paper alias, local model folder or hub id")
    token_dataset: str = config_field(REQUIRED, "token dataset folder (neuron_lib.corpus layout)")
    neurons: str | None = config_field(None, "neurons to cache as layer.neuron, comma-separated, e.g. 1.23,0.5")
    neuron_csv: str | None = config_field(None, "CSV with columns layer and neuron (or neuron_ix) of neurons to cache")
    layers: str | None = config_field(None, "cache every neuron of these layers, comma-separated, e.g. 0,1")
    location: str = config_field("pre", "pre (mlp.hook_pre, the paper's default) or post (mlp.hook_post)")
    precision: int = config_field(8, "8: per-neuron uint8 quantisation; 16: float16")
    aggregation: str = config_field("none", "none | mean | max | last (per row, over the kept positions)")
    skip_metrics: bool = config_field(False, "do not compute the per-token loss / entropy / rank")
    batch_size: int = config_field(32, "dataset rows per forward pass")
    max_tokens: int | None = config_field(None, "use the first ceil(max_tokens/ctx) rows; none = all")
    device: str = config_field("auto", "auto | cpu | cuda[:i]")
    dtype: str = config_field("float32", "model dtype")
    keep_bos: bool = config_field(False, "aggregation only: keep BOS/EOS/pad positions")
    drop_newline: bool = config_field(False, "aggregation only: also drop the newline token")
    max_memory: str = config_field("8GiB", "the cache is assembled in memory (float32) before it is quantised")
    overwrite: bool = config_field(False, "replace a cache of another configuration (or a corrupt one)")

    def validate(self) -> ActivationsConfig:
        if not self.model or not self.token_dataset:
            raise NeuronLibError("--model and --token-dataset are required")
        if self.layers and (self.neurons or self.neuron_csv):
            raise NeuronLibError("give either --layers or --neurons/--neuron-csv, not both")
        if not (self.layers or self.neurons or self.neuron_csv):
            raise NeuronLibError("nothing to cache: give --neurons 1.23,0.5, --neuron-csv FILE or --layers 0,1")
        if self.location not in ("pre", "post"):
            raise NeuronLibError(f"--location must be pre or post, got {self.location!r}")
        if int(self.precision) not in (8, 16):
            raise NeuronLibError(f"--precision must be 8 or 16, got {self.precision}")
        if self.aggregation not in AGGREGATIONS:
            raise NeuronLibError(f"--aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if int(self.batch_size) < 1:
            raise NeuronLibError("--batch-size must be ≥ 1")
        if self.max_tokens is not None and int(self.max_tokens) < 1:
            raise NeuronLibError("--max-tokens must be positive")
        if self.dtype not in DTYPES:
            raise NeuronLibError(f"--dtype must be one of {sorted(DTYPES)}")
        parse_memory(self.max_memory)
        return self

    def identity(self) -> dict[str, Any]:
        """The fields that determine the cache (not batch size, device, memory budget or --overwrite)."""
        return config_identity(self, exclude=("batch_size", "device", "overwrite", "max_memory"), paths=("neuron_csv",))


# ---------------------------------------------------------------- neuron selection
def parse_neuron(text) -> tuple[int, int]:
    """'12.345' or (12, 345) → (12, 345)."""
    if isinstance(text, (tuple, list)) and len(text) == 2:
        return int(text[0]), int(text[1])
    parts = str(text).strip().split(".")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise NeuronLibError(f"cannot read neuron {text!r}; write layer.neuron, e.g. 1.23")
    return int(parts[0]), int(parts[1])


def selected_neurons(cfg: ActivationsConfig, n_layers: int, d_mlp: int) -> list[tuple[int, int]]:
    """Sorted, de-duplicated (layer, neuron) pairs of the config, checked against the model's shape."""
    pairs: list[tuple[int, int]] = []
    if cfg.layers:
        layers = [int(x) for x in str(cfg.layers).split(",") if x.strip()]
        bad = [l for l in layers if not 0 <= l < n_layers]
        if bad:
            raise NeuronLibError(f"layers {bad} do not exist (the model has {n_layers} layers)")
        pairs = [(l, n) for l in layers for n in range(d_mlp)]
    if cfg.neurons:
        pairs += [parse_neuron(t) for t in str(cfg.neurons).split(",") if t.strip()]
    if cfg.neuron_csv:
        import pandas as pd

        path = Path(cfg.neuron_csv)
        if not path.exists():
            raise NeuronLibError(f"--neuron-csv {path} does not exist")
        df = pd.read_csv(path)
        col = "neuron" if "neuron" in df.columns else "neuron_ix" if "neuron_ix" in df.columns else None
        if "layer" not in df.columns or col is None:
            raise NeuronLibError(f"{path} needs columns layer and neuron (or neuron_ix); it has {list(df.columns)}")
        pairs += [(int(l), int(n)) for l, n in zip(df["layer"], df[col])]
    bad = [p for p in pairs if not (0 <= p[0] < n_layers and 0 <= p[1] < d_mlp)]
    if bad:
        raise NeuronLibError(f"neurons {bad[:5]} do not exist in a model with {n_layers} layers x {d_mlp} neurons")
    if not pairs:
        raise NeuronLibError("the neuron selection is empty")
    return sorted(set(pairs))


# ---------------------------------------------------------------- quantisation
def quantize_per_neuron(x: torch.Tensor, valid: torch.Tensor | None = None):
    """uint8 per-column quantisation of ``x`` [rows, K] (the paper's formula); returns (q, scale, zero_point)."""
    x64 = x.to(torch.float64)
    if valid is not None:
        pick = x64[valid]
    else:
        pick = x64
    if pick.shape[0] == 0:
        pick = torch.zeros(1, x.shape[1], dtype=torch.float64)
    mn, mx = pick.min(0).values, pick.max(0).values
    scale = (mx - mn) / 255.0
    const = scale <= 0
    scale = torch.where(const, torch.where(mn != 0, mn.abs() / 255.0, torch.ones_like(mn)), scale)
    zero_point = torch.round(-mn / scale)
    q = torch.clamp(torch.round(torch.nan_to_num(x64) / scale) + zero_point, 0, 255).to(torch.uint8)
    return q, scale.to(torch.float32), zero_point.to(torch.int64)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    return ((q.to(torch.float64) - zero_point.to(torch.float64)) * scale.to(torch.float64)).to(torch.float32)


# ---------------------------------------------------------------- per-token metrics
token_metrics = stats.token_metrics  # the one definition lives in stats.py (shared with the interventions)


# ---------------------------------------------------------------- loading
def _read_cache_manifest(model: str, dataset: str) -> tuple[Path, dict]:
    folder = artifacts.activation_cache(model, dataset)
    if not artifacts.manifest_path(folder).exists():
        raise NeuronLibError(
            f"no cached activations at {folder}; run `python -m neuron_lib.activations --model {model} "
            f"--token-dataset .../{artifacts.dataset_name(dataset)} --neurons ...` first"
        )
    return folder, read_json(artifacts.manifest_path(folder))


def load_cached_activations(
    model: str, dataset: str, neuron, location: str | None = None, aggregation: str | None = None
) -> torch.Tensor:
    """Dequantised float32 activations of one neuron: [n_rows·ctx] (flat index) or [n_rows] when aggregated."""
    layer, index = parse_neuron(neuron)
    folder, manifest = _read_cache_manifest(model, dataset)
    for key, want in (("location", location), ("aggregation", aggregation)):
        if want is not None and manifest["config"][key] != want:
            raise ManifestMismatch(
                f"{folder} caches {key}={manifest['config'][key]!r}, not {want!r}; re-run "
                "neuron_lib.activations with that setting (--overwrite)"
            )
    for entry in manifest["files"]:
        pairs = (
            [tuple(p) for p in entry["neurons"]]
            if "neurons" in entry
            else [(entry["layer"], n) for n in range(entry["d_mlp"])]
        )
        if (layer, index) in pairs:
            col = pairs.index((layer, index))
            t = load_tensors(folder / entry["file"])
            if "scale" in t:
                out = dequantize(t["values"][:, col], t["scale"][col], t["zero_point"][col])
            else:
                out = t["values"][:, col].to(torch.float32)
            if "row_valid" in t:
                out = torch.where(t["row_valid"], out, torch.full_like(out, float("nan")))
            return out
    raise NeuronLibError(
        f"neuron {layer}.{index} is not in the cache at {folder}; cached: {[e['file'] for e in manifest['files']]}"
    )


def load_cached_metrics(model: str, dataset: str) -> dict[str, torch.Tensor]:
    folder, manifest = _read_cache_manifest(model, dataset)
    if not manifest.get("metrics_file"):
        raise NeuronLibError(f"{folder} has no per-token metrics (it was made with --skip-metrics)")
    return load_tensors(folder / manifest["metrics_file"])


# ---------------------------------------------------------------- the run
def _aggregate(acts: torch.Tensor, keep: torch.Tensor, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """acts [B, P, K], keep [B, P] → ([B, K], valid [B])."""
    valid = keep.any(1)
    k = keep.unsqueeze(-1).to(acts.dtype)
    if how == "mean":
        out = (acts * k).sum(1) / k.sum(1).clamp(min=1)
    elif how == "max":
        out = torch.where(keep.unsqueeze(-1), acts, torch.full_like(acts, float("-inf"))).max(1).values
    elif how == "last":
        P = keep.shape[1]
        last = (keep * torch.arange(1, P + 1, device=keep.device)).argmax(1)  # index of the last kept position
        out = acts[torch.arange(acts.shape[0], device=acts.device), last]
    else:  # pragma: no cover - validated
        raise NeuronLibError(f"unknown aggregation {how!r}")
    out = torch.where(valid.unsqueeze(-1), out, torch.full_like(out, float("nan")))
    return out, valid


def _cached_files(manifest: dict) -> list[str]:
    return [e["file"] for e in manifest.get("files", [])] + (
        [manifest["metrics_file"]] if manifest.get("metrics_file") else []
    )


def _stream(
    model, inputs: stage.StageInputs, cfg: ActivationsConfig, pairs: list[tuple[int, int]], drop: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]:
    """One pass: the selected activations ``values`` [rows, K] (flat or per row), ``valid`` [rows], metrics."""
    from tqdm import tqdm

    from neuron_lib.streaming import tokens_tensor

    n_rows, ctx = inputs.n_rows, inputs.ctx
    layers = sorted({l for l, _ in pairs})
    columns = {l: [n for ll, n in pairs if ll == l] for l in layers}
    hook = "hook_pre" if cfg.location == "pre" else "hook_post"
    names = [f"blocks.{l}.mlp.{hook}" for l in layers]
    out_rows = n_rows * ctx if cfg.aggregation == "none" else n_rows
    values = torch.empty(out_rows, len(pairs), dtype=torch.float32)
    valid = torch.ones(out_rows, dtype=torch.bool)
    metrics = (
        None
        if cfg.skip_metrics
        else {
            k: torch.zeros(n_rows, ctx, dtype=torch.int32 if k == "rank" else torch.float32)
            for k in ("loss", "entropy", "rank")
        }
    )
    bar = tqdm(total=n_rows * ctx, unit="tok", unit_scale=True, desc="activations", file=sys.stderr, mininterval=1.0)
    with torch.no_grad():
        for start in range(0, n_rows, cfg.batch_size):
            end = min(start + cfg.batch_size, n_rows)
            tokens = tokens_tensor(inputs.dataset, start, end)
            dev_tokens = tokens.to(model.cfg.device)
            if metrics is not None:
                logits, cache = model.run_with_cache(dev_tokens, names_filter=names)
                for k, v in token_metrics(logits, dev_tokens).items():
                    metrics[k][start:end] = v.cpu().to(metrics[k].dtype)
                del logits
            else:
                _, cache = model.run_with_cache(dev_tokens, names_filter=names, stop_at_layer=max(layers) + 1)
            # [B, P, K] in the order of `pairs` (sorted by layer, then neuron)
            acts = (
                torch.cat([cache[f"blocks.{l}.mlp.{hook}"][..., columns[l]] for l in layers], -1)
                .to(torch.float32)
                .cpu()
            )
            if cfg.aggregation == "none":
                values[start * ctx : end * ctx] = acts.reshape(-1, acts.shape[-1])
            else:
                keep = ~torch.isin(tokens, drop) if len(drop) else torch.ones_like(tokens, dtype=torch.bool)
                values[start:end], valid[start:end] = _aggregate(acts, keep, cfg.aggregation)
            del cache
            bar.update((end - start) * ctx)
    bar.close()
    return values, valid, metrics


def _cache_tensors(
    values: torch.Tensor, valid: torch.Tensor | None, neurons: list[tuple[int, int]], precision: int
) -> dict[str, torch.Tensor]:
    """One cache file's tensors: values (uint8 + scale/zero point, or float16), neuron ids, row validity."""
    tensors: dict[str, torch.Tensor] = {"neurons": torch.tensor(neurons, dtype=torch.int64).view(-1, 2)}
    if precision == 8:
        q, scale, zp = quantize_per_neuron(values, valid)
        tensors.update(values=q, scale=scale, zero_point=zp)
    else:
        tensors["values"] = values.to(torch.float16)
    if valid is not None:
        tensors["row_valid"] = valid
    return tensors


def run_activations(cfg: ActivationsConfig) -> stage.StageResult:
    """Cache the selected activations (and per-token metrics) of ``cfg.model`` over ``cfg.token_dataset``."""
    from neuron_lib.models import load_model
    from neuron_lib.streaming import drop_ids_for

    cfg.validate()
    inputs = stage.open_inputs(cfg.model, cfg.token_dataset, cfg.max_tokens)
    identity = {**cfg.identity(), "token_dataset": inputs.dataset_identity}  # content, not the folder's path
    fingerprint = config_fingerprint(identity)
    folder = artifacts.activation_cache(cfg.model, inputs.dataset_name)
    state = stage.folder_state(folder, STAGE, fingerprint, _cached_files)
    if not stage.must_run(folder, state, cfg.overwrite, STAGE):
        stage.log(STAGE, f"{folder} already holds this cache (skipped: same configuration)")
        return stage.StageResult(STAGE, "skipped", {"folder": str(folder)})

    device = pick_device(cfg.device)
    model = load_model(cfg.model, device=device, dtype=DTYPES[cfg.dtype])
    L, N = model.cfg.n_layers, model.cfg.d_mlp
    pairs = selected_neurons(cfg, L, N)
    drop = torch.tensor(drop_ids_for(inputs.tokenizer, cfg.keep_bos, cfg.drop_newline), dtype=torch.long)
    n_rows, ctx = inputs.n_rows, inputs.ctx
    out_rows = n_rows * ctx if cfg.aggregation == "none" else n_rows
    need = out_rows * len(pairs) * 4 + (n_rows * ctx * 12 if not cfg.skip_metrics else 0)
    stage.log(
        STAGE,
        f"plan: {len(pairs)} neuron(s) of {model_output_name(cfg.model)} ({cfg.location}, {cfg.precision}-bit, "
        f"aggregation {cfg.aggregation}) over {n_rows} rows x {ctx} = {n_rows * ctx:,} tokens; {out_rows:,} "
        f"rows cached; in memory {human_bytes(need)}; on disk ≈ "
        f"{human_bytes(out_rows * len(pairs) * cfg.precision // 8)}" + ("" if cfg.skip_metrics else " + metrics"),
    )
    if need > parse_memory(cfg.max_memory):
        raise NeuronLibError(
            f"the cache needs {human_bytes(need)} in memory > --max-memory {cfg.max_memory}; cache fewer "
            "neurons or tokens (--max-tokens), aggregate per row, or raise --max-memory"
        )

    t0 = time.perf_counter()
    values, valid, metrics = _stream(model, inputs, cfg, pairs, drop)
    seconds = time.perf_counter() - t0
    ok = valid if cfg.aggregation != "none" else None
    if cfg.layers:  # one file per layer, columns in neuron order
        col_of = {p: i for i, p in enumerate(pairs)}
        blocks = {
            artifacts.cache_layer_file(l): ([col_of[(l, n)] for n in range(N)], {"layer": l, "d_mlp": N})
            for l in sorted({l for l, _ in pairs})
        }
    else:
        blocks = {artifacts.CACHE_NEURONS_FILE: (list(range(len(pairs))), {"neurons": [list(p) for p in pairs]})}
    files = {
        name: _cache_tensors(values[:, cols], ok, [pairs[c] for c in cols], cfg.precision)
        for name, (cols, _) in blocks.items()
    }
    entries = [{"file": name, **entry} for name, (_, entry) in blocks.items()]
    metrics_file = None
    if metrics is not None:
        metrics_file = artifacts.CACHE_METRICS_FILE
        files[metrics_file] = metrics
    manifest = make_manifest(
        STAGE,
        identity,
        config_fingerprint=fingerprint,
        **inputs.manifest_fields(model),
        ctx_len=ctx,
        n_rows=n_rows,
        n_tokens=n_rows * ctx,
        rows_cached=out_rows,
        row_layout="flat token index row*ctx+pos"
        if cfg.aggregation == "none"
        else f"one row per sequence ({cfg.aggregation})",
        token_filter={
            "applies_to": "aggregation only",
            "keep_bos": cfg.keep_bos,
            "drop_newline": cfg.drop_newline,
            "dropped_ids": drop.tolist(),
        },
        files=entries,
        metrics_file=metrics_file,
        batch_size=cfg.batch_size,
        device=str(device),
    )
    stage.write_folder(
        folder,
        files,
        manifest,
        metadata={"stage": STAGE, "location": cfg.location, "aggregation": cfg.aggregation, "ctx_len": str(ctx)},
    )
    stage.log(
        STAGE,
        f"{n_rows * ctx:,} tokens in {seconds:.1f} s ({n_rows * ctx / max(seconds, 1e-9):,.0f} tokens/s) -> {folder}",
    )
    return stage.StageResult(
        STAGE,
        "done",
        {"folder": str(folder), **{name: str(folder / name) for name in files}},
        n_rows * ctx,
        seconds,
        details={"neurons": pairs, "metrics_file": metrics_file, "files": [e["file"] for e in entries]},
    )


main = stage.cli(
    ActivationsConfig,
    run_activations,
    "python -m neuron_lib.activations",
    "Cache activations of neurons or layers (8-bit per-neuron or fp16) plus per-token loss/entropy/rank.",
)


if __name__ == "__main__":
    run_cli(main)
