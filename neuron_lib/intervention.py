"""Neuron ablations with per-token effects (``python -m neuron_lib.intervention``; the paper's ``intervention.py``,
spec §8.1).

What it does: for every selected neuron, one at a time, the model is run over the first ``ceil(max_tokens / ctx)``
rows of a token dataset with that neuron's activation replaced at ``blocks.{l}.mlp.hook_{pre,post}`` (hook names
from ``models.mlp_hook_names``) at every position, and the per-token next-token metrics are compared with the clean
run's.

Interventions (``--intervention``; ``--value`` is the parameter):
- ``mean`` (default): the neuron's mean activation at that hook over the analysis split, pooled over the subsets of
  the activation summary's exact power sums (``moments.safetensors``; run ``neuron_lib.summary`` first);
- ``zero``: 0; ``threshold``: min(act, value); ``relu``: max(act, 0); ``fixed``: value; ``multiply``: act × value.
At ``hook_pre`` the ablated value passes through the activation function (zero at hook_pre gives GELU(0) = 0).

Neurons: ``--neurons 1.23,0.5``, or the top ``--top-k`` neurons of the neuron dataframe by ``--rank-column``
(default: the chosen universality criterion's score, ``alignment_mean``; any column can be used), plus ``--controls-per-neuron``
random neurons of the same layer as each selected one (never a selected neuron; drawn with ``--seed``, recorded in
``neurons.csv`` and the manifest).

Outputs (``$INTERVENTION_DIR/{model}/{dataset}/{intervention}.{location}[_{value}]/``, safetensors + CSV +
``manifest.json`` written last):
- ``nominal.safetensors``: the clean run's ``loss``, ``entropy`` (nats), ``rank`` (# logits > the true token's, 0 =
  top-1), all [rows, ctx] (``stats.token_metrics``, the activation cache's metrics), and ``valid`` bool [rows, ctx]:
  positions that predict a next token (not the last) whose current token is not BOS/EOS/pad;
- ``metrics.safetensors``: per ablation ``{label}.loss``, ``.entropy``, ``.rank`` and ``.kl`` = KL(p_clean ‖
  p_ablated) per token (``stats.token_kl``), [rows, ctx] (label = ``L{layer}.N{neuron}``);
- ``summary.csv``: per ablation (and per group ``selected`` / ``control`` and their difference) the means over valid
  tokens of loss, Δloss, entropy, Δentropy, KL, rank and reciprocal rank, with percentile bootstrap 95% intervals of
  Δloss, Δentropy and KL over rows (``--n-bootstrap`` resamples, ``--seed``; the same resamples for every row, so
  differences are paired);
- ``neurons.csv``: the selection.

Resume: after every ``--checkpoint-every`` batches the filled rows are saved to ``partial.safetensors`` with the
run's fingerprint; a killed run restarts from there (every batch is deterministic, so the result is identical to an
uninterrupted run); the file is removed when the run finishes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuron_lib import artifacts, criteria, fused, stage, stats
from neuron_lib.common import (
    REQUIRED,
    NeuronLibError,
    config_field,
    config_fingerprint,
    config_identity,
    human_bytes,
    load_tensors,
    make_manifest,
    pick_device,
    run_cli,
    save_tensors_atomic,
)
from neuron_lib.models import DTYPES, mlp_hook_names

STAGE = "intervention"
FORMAT = 1
INTERVENTIONS = ("mean", "zero", "threshold", "relu", "fixed", "multiply")
NEEDS_VALUE = ("threshold", "fixed", "multiply")
LOCATIONS = ("pre", "post")
METRICS = ("loss", "entropy", "rank", "kl")


# =============================================================== ablation hooks
def parse_neurons(text: str | None) -> list[tuple[int, int]]:
    """'1.23,0.5' → [(1, 23), (0, 5)] (order kept, duplicates dropped)."""
    from neuron_lib.activations import parse_neuron

    out: list[tuple[int, int]] = []
    for t in str(text or "").split(","):
        if t.strip() and parse_neuron(t) not in out:
            out.append(parse_neuron(t))
    return out


def check_intervention(kind: str, value: float | None) -> None:
    if kind not in INTERVENTIONS:
        raise NeuronLibError(f"unknown intervention {kind!r}; choose one of {', '.join(INTERVENTIONS)}")
    if kind in NEEDS_VALUE and value is None:
        raise NeuronLibError(f"intervention {kind!r} needs a parameter: pass --value (e.g. --value 0.5)")


def replace_values(kind: str, act: torch.Tensor, value: float | torch.Tensor | None) -> torch.Tensor:
    """The ablated values of ``act`` (any shape) for intervention ``kind`` (``value``: parameter or mean)."""
    if kind in ("mean", "fixed"):
        return torch.as_tensor(value, dtype=act.dtype, device=act.device).expand_as(act).clone()
    if kind == "zero":
        return torch.zeros_like(act)
    if kind == "threshold":
        return torch.minimum(act, torch.as_tensor(value, dtype=act.dtype, device=act.device))
    if kind == "relu":
        return torch.relu(act)
    if kind == "multiply":
        return act * value
    raise NeuronLibError(f"unknown intervention {kind!r}; choose one of {', '.join(INTERVENTIONS)}")


def ablation_hook(kind: str, dims: Sequence[int], values: Sequence[float | None]) -> Callable:
    """A TransformerLens forward hook that replaces ``act[..., dims[i]]`` by ``replace_values(kind, ., values[i])``."""
    dims = [int(d) for d in dims]

    def hook(act, hook=None):
        act = act.clone()
        for d, v in zip(dims, values):
            act[..., d] = replace_values(kind, act[..., d], v)
        return act

    return hook


def neuron_hooks(
    model, neurons: Sequence[tuple[int, int]], location: str, kind: str, values: Sequence[float | None]
) -> list[tuple[str, Callable]]:
    """Hooks ablating ``neurons`` (together) at ``hook_{location}``; ``values[i]`` is neuron i's parameter."""
    by_layer: dict[int, tuple[list[int], list]] = {}
    for (l, n), v in zip(neurons, values):
        by_layer.setdefault(int(l), ([], []))
        by_layer[int(l)][0].append(int(n))
        by_layer[int(l)][1].append(v)
    hooks = []
    for l, (dims, vals) in sorted(by_layer.items()):
        name = hook_name(model, l, location)
        hooks.append((name, ablation_hook(kind, dims, vals)))
    return hooks


def hook_name(model, layer: int, location: str) -> str:
    """``blocks.{layer}.mlp.hook_{location}`` through ``models.mlp_hook_names``; a hook the model lacks is an error."""
    if location not in LOCATIONS:
        raise NeuronLibError(f"--location must be one of {LOCATIONS}, got {location!r}")
    name = mlp_hook_names(model, int(layer))[LOCATIONS.index(location)]
    if name not in model.hook_dict:
        raise NeuronLibError(f"model {model.cfg.model_name} has no hook {name}: it cannot be intervened on")
    return name


def check_neurons(neurons: Sequence[tuple[int, int]], n_layers: int, d_mlp: int) -> None:
    bad = [f"{l}.{n}" for l, n in neurons if not (0 <= l < n_layers and 0 <= n < d_mlp)]
    if bad:
        raise NeuronLibError(
            f"neurons {bad[:5]} do not exist: the model has {n_layers} layers x {d_mlp} neurons (layer.neuron, 0-based)"
        )


def summary_means(model: str, location: str) -> torch.Tensor:
    """[L, N] float64 mean activation at ``hook_{location}`` pooled over the activation summary's subsets."""
    from neuron_lib.neuron_df import load_activation_summaries

    summaries = load_activation_summaries(model, files=["moments"])
    key = f"{location}_sum"
    parts = [t for t in summaries.values() if key in t]
    if not parts:
        raise NeuronLibError(
            f"mean ablation needs the activation summary of {model!r} (moments.safetensors with {key}) under "
            f"{artifacts.activation_summary_root(model)}; run `python -m neuron_lib.summary --model {model} "
            "--token-dataset ...` first, or choose another --intervention"
        )
    power = []
    for t in parts:
        shape = t[key].shape
        sums = {0: t[f"{location}_count"].to(torch.float64).expand(shape)}
        for k, suffix in ((1, "sum"), (2, "sum_sq"), (3, "sum_cube"), (4, "sum_quad")):
            sums[k] = t[f"{location}_{suffix}"].to(torch.float64)
        power.append((sums, t[f"{location}_shift"].to(torch.float64).expand(shape)))
    _, mean = stats.pool_power_sums(power)
    return mean


# =============================================================== the engine (shared with entropy_intervention)
@dataclasses.dataclass
class Ablation:
    """One intervention: a label (safetensors key prefix), its hooks and what the summary table records about it."""

    label: str
    hooks: list[tuple[str, Callable]]
    info: dict[str, Any]


def valid_mask(tokens: torch.Tensor, drop_ids: Sequence[int]) -> torch.Tensor:
    """[B, P] bool: positions that predict a next token (not the last) whose current token is not in ``drop_ids``."""
    valid = ~torch.isin(tokens, torch.as_tensor(list(drop_ids), dtype=torch.long))
    valid[:, -1] = False
    return valid


def first_layer(hooks: Sequence[tuple[str, Callable]]) -> int:
    """The lowest block an ablation's hooks touch (``blocks.{l}.…``); 0 when a hook lies outside the blocks."""
    layers = []
    for name, _ in hooks:
        head, _, rest = str(name).partition(".")
        number = rest.split(".", 1)[0]
        if head != "blocks" or not number.isdigit():
            return 0
        layers.append(int(number))
    return min(layers, default=0)


def resid_pre_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def _forward(
    model, tokens: torch.Tensor, hooks, record: Sequence[str], start_at_layer: int | None = None
) -> tuple[torch.Tensor, dict]:
    """Logits (float32) and the recorded hook values of one forward pass with ``hooks`` attached; with
    ``start_at_layer`` = l, ``tokens`` is the residual stream entering block l and the blocks before it are skipped."""
    seen: dict[str, torch.Tensor] = {}

    def recorder(name):
        def fn(act, hook=None):
            seen[name] = act.detach()

        return fn

    all_hooks = list(hooks) + [(name, recorder(name)) for name in record]
    with torch.no_grad(), model.hooks(fwd_hooks=all_hooks), _blocks_skipped(model, start_at_layer or 0):
        logits = model(tokens) if start_at_layer is None else model(tokens, start_at_layer=start_at_layer)
    return logits.float(), seen


def _identity_block(*args, **kwargs):
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def _blocks_skipped(model, n: int):
    """Blocks [0, n) as identities for one pass. A TransformerBridge's ``start_at_layer`` = n still runs the HF
    forward through every block (block n swaps the injected residual in and discards what the blocks before it
    produced), so without this the skip saves nothing; with the earlier blocks' HF layers returning their input
    unchanged the logits are the same (block n's input is replaced either way) and the blocks' cost is gone
    (their hook points then fire on that pass-through: record nothing from blocks < n). Models without HF layers
    under ``blocks`` (HookedTransformer skips the blocks itself) are left as they are."""
    layers = [getattr(b, "original_component", None) for b in list(getattr(model, "blocks", []))[:n]]
    if not n or any(layer is None for layer in layers):
        yield
        return
    for layer in layers:
        layer.forward = _identity_block  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def run_ablations(
    model,
    dataset,
    n_rows: int,
    batch_size: int,
    ablations: Sequence[Ablation],
    drop_ids: Sequence[int],
    partial: Path | None = None,
    fingerprint: str = "",
    checkpoint_every: int = 1,
    record_scale: str | None = None,
    log_stage: str = STAGE,
    skip_clean_layers: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-token metrics of the clean run and of every ablation over rows [0, n_rows).

    An ablation whose hooks all lie in blocks ≥ l (``first_layer``) cannot change the blocks before l: with
    ``skip_clean_layers`` it starts from the clean run's ``blocks.{l}.hook_resid_pre`` (recorded in the clean pass)
    instead of the tokens, which gives the same logits (the same operations on the same inputs) at a fraction of
    the cost for late-layer neurons (the entropy experiment's last layers: ~4x fewer FLOPs on SmolLM2-135M).

    Returns ``(nominal, metrics)``: ``nominal`` {loss, entropy, rank, valid[, scale]} and ``metrics``
    {``{label}.{loss,entropy,rank,kl[,scale]}``}, each [n_rows, ctx] on the CPU. ``record_scale`` names a hook
    (e.g. ``ln_final.hook_scale``) whose per-token value is recorded as ``scale``. With ``partial`` the filled rows
    are checkpointed there every ``checkpoint_every`` batches and a checkpoint of the same ``fingerprint`` is resumed.
    """
    from tqdm import tqdm

    from neuron_lib.streaming import tokens_tensor

    ctx = len(dataset[0]["tokens"])
    device = model.cfg.device
    names = list(METRICS) + (["scale"] if record_scale else [])

    def empty(metric):
        dt = torch.int32 if metric == "rank" else torch.float32
        return torch.zeros(n_rows, ctx, dtype=dt)

    nominal = {m: empty(m) for m in names if m != "kl"}
    nominal["valid"] = torch.zeros(n_rows, ctx, dtype=torch.bool)
    metrics = {f"{a.label}.{m}": empty(m) for a in ablations for m in names}
    done = 0
    if partial is not None and partial.exists():
        saved = load_tensors(partial)
        if _partial_fingerprint(partial) == fingerprint and set(saved) == {f"nominal.{k}" for k in nominal} | set(
            metrics
        ) | {"rows_done"}:
            done = int(saved["rows_done"])
            for k in nominal:
                nominal[k] = saved[f"nominal.{k}"]
            for k in metrics:
                metrics[k] = saved[k]
            stage.log(log_stage, f"resuming at row {done} of {n_rows} from {partial}")
    record = [record_scale] if record_scale else []
    starts = {a.label: first_layer(a.hooks) if skip_clean_layers else 0 for a in ablations}
    starts = {k: l if resid_pre_hook(l) in model.hook_dict else 0 for k, l in starts.items()}
    resid_record = sorted({resid_pre_hook(l) for l in starts.values() if l > 0})
    bar = tqdm(total=n_rows * ctx, initial=done * ctx, unit="tok", desc=log_stage, leave=False)
    batches = 0
    for start in range(done, n_rows, batch_size):
        end = min(start + batch_size, n_rows)
        tokens = tokens_tensor(dataset, start, end)
        dev_tokens = tokens.to(device)
        base, seen = _forward(model, dev_tokens, [], record + resid_record)
        resid = {name: seen.pop(name) for name in resid_record}
        use_fused = fused.usable(base)  # one numba sweep per position instead of [B, P, V] temporaries
        base_lse = fused.logsumexp(base.reshape(-1, base.shape[-1])) if use_fused else None
        for k, v in _metrics(base, dev_tokens, None, None, use_fused).items():
            nominal[k][start:end] = v.cpu().to(nominal[k].dtype)
        nominal["valid"][start:end] = valid_mask(tokens, drop_ids)
        if record_scale:
            nominal["scale"][start:end] = _scale(seen[record_scale])
        for a in ablations:
            start_layer = starts[a.label]
            inp = resid[resid_pre_hook(start_layer)] if start_layer else dev_tokens
            logits, seen = _forward(model, inp, a.hooks, record, start_layer or None)
            for k, v in _metrics(logits, dev_tokens, base, base_lse, use_fused).items():
                metrics[f"{a.label}.{k}"][start:end] = v.cpu().to(metrics[f"{a.label}.{k}"].dtype)
            if record_scale:
                metrics[f"{a.label}.scale"][start:end] = _scale(seen[record_scale])
        batches += 1
        bar.update((end - start) * ctx)
        if partial is not None and end < n_rows and batches % max(1, checkpoint_every) == 0:
            _save_partial(partial, fingerprint, end, nominal, metrics)
    bar.close()
    return nominal, metrics


def _metrics(logits, tokens, base, base_lse, use_fused: bool) -> dict[str, torch.Tensor]:
    """``stats.token_metrics`` (+ ``kl`` = ``stats.token_kl(base, logits)`` when ``base`` is given), by the fused
    CPU kernel (``fused.token_metrics``, held to the torch path by tests/test_fused.py) or by torch."""
    if use_fused:
        return fused.token_metrics(logits, tokens.cpu(), base, base_lse)
    out = stats.token_metrics(logits, tokens)
    if base is not None:
        out["kl"] = stats.token_kl(base, logits)
    return out


def _scale(t: torch.Tensor) -> torch.Tensor:
    """A LayerNorm's ``hook_scale`` [B, P, 1] (or [B, P]) → [B, P] float32 on the CPU."""
    t = t.detach().float().cpu()
    return t.reshape(t.shape[0], t.shape[1], -1)[..., 0]


def _partial_fingerprint(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("fingerprint")
    except Exception:
        return None


def _save_partial(path: Path, fingerprint: str, rows_done: int, nominal: dict, metrics: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"nominal.{k}": v for k, v in nominal.items()}
    tensors.update(metrics)
    tensors["rows_done"] = torch.tensor(rows_done, dtype=torch.int64)
    save_tensors_atomic(path, tensors, metadata={"fingerprint": fingerprint})


# =============================================================== summaries
def row_means(values: torch.Tensor, valid: torch.Tensor) -> np.ndarray:
    """Per row: the mean of ``values`` [R, P] over its valid positions (rows without any are dropped)."""
    v = values.to(torch.float64)
    n = valid.sum(1)
    s = torch.where(valid, v, torch.zeros_like(v)).sum(1)
    return (s[n > 0] / n[n > 0]).numpy()


def token_mean(values: torch.Tensor, valid: torch.Tensor) -> float:
    return float(values.to(torch.float64)[valid].mean()) if bool(valid.any()) else float("nan")


def summarise(
    nominal: dict[str, torch.Tensor],
    metrics: dict[str, torch.Tensor],
    ablations: Sequence[Ablation],
    n_bootstrap: int,
    seed: int,
    groups: dict[str, list[str]] | None = None,
):
    """The summary table: one row per ablation (+ per group and group difference), means over valid tokens."""
    import pandas as pd

    valid = nominal["valid"]
    n_rows_valid = int((valid.sum(1) > 0).sum())
    index = stats.bootstrap_index(n_rows_valid, n_bootstrap, seed)
    extra = ["scale"] if "scale" in nominal else []
    base_recip = stats.reciprocal_rank(nominal["rank"])

    def deltas(label: str) -> dict[str, torch.Tensor]:
        return {
            "loss": metrics[f"{label}.loss"].double() - nominal["loss"].double(),
            "entropy": metrics[f"{label}.entropy"].double() - nominal["entropy"].double(),
            "kl": metrics[f"{label}.kl"].double(),
        }

    rows = []
    nominal_row = {
        "label": "nominal",
        "role": "nominal",
        "n_tokens": int(valid.sum()),
        "loss": token_mean(nominal["loss"], valid),
        "entropy": token_mean(nominal["entropy"], valid),
        "rank": token_mean(nominal["rank"], valid),
        "recip_rank": token_mean(base_recip, valid),
        **{m: token_mean(nominal[m], valid) for m in extra},
    }
    rows.append(nominal_row)
    per_row: dict[str, dict[str, np.ndarray]] = {}
    for a in ablations:
        d = deltas(a.label)
        per_row[a.label] = {k: row_means(v, valid) for k, v in d.items()}
        recip = stats.reciprocal_rank(metrics[f"{a.label}.rank"])
        row = {
            "label": a.label,
            **a.info,
            "n_tokens": int(valid.sum()),
            "loss": token_mean(metrics[f"{a.label}.loss"], valid),
            "entropy": token_mean(metrics[f"{a.label}.entropy"], valid),
            "rank": token_mean(metrics[f"{a.label}.rank"], valid),
            "recip_rank": token_mean(recip, valid),
            "delta_recip_rank": token_mean(recip - base_recip, valid),
            **{m: token_mean(metrics[f"{a.label}.{m}"], valid) for m in extra},
        }
        row.update(_delta_columns(per_row[a.label], index, {k: token_mean(v, valid) for k, v in d.items()}))
        rows.append(row)
    for group, labels in (groups or {}).items():
        if labels:
            mean_rows = {k: np.mean([per_row[l][k] for l in labels], 0) for k in ("loss", "entropy", "kl")}
            tok = {k: float(np.mean([rows_by(rows, l)[k2] for l in labels])) for k, k2 in _DELTA_KEYS.items()}
            rows.append(
                {
                    "label": f"group:{group}",
                    "role": group,
                    "n_neurons": len(labels),
                    **_delta_columns(mean_rows, index, tok),
                }
            )
    if groups and len(groups) == 2 and all(groups.values()):
        (ga, la), (gb, lb) = groups.items()
        diff = {
            k: np.mean([per_row[l][k] for l in la], 0) - np.mean([per_row[l][k] for l in lb], 0)
            for k in ("loss", "entropy", "kl")
        }
        tok = {
            k: float(np.mean([rows_by(rows, l)[k2] for l in la]) - np.mean([rows_by(rows, l)[k2] for l in lb]))
            for k, k2 in _DELTA_KEYS.items()
        }
        rows.append({"label": f"group:{ga}-{gb}", "role": f"{ga}-{gb}", **_delta_columns(diff, index, tok)})
    return pd.DataFrame(rows)


_DELTA_KEYS = {"loss": "delta_loss", "entropy": "delta_entropy", "kl": "kl"}


def rows_by(rows: list[dict], label: str) -> dict:
    return next(r for r in rows if r["label"] == label)


def _delta_columns(per_row: dict[str, np.ndarray], index: np.ndarray, token_means: dict[str, float]) -> dict:
    out = {}
    for k, col in _DELTA_KEYS.items():
        out[col] = token_means[k]
        out[f"{col}_ci_low"], out[f"{col}_ci_high"] = stats.bootstrap_ci_index(per_row[k], index)
    return out


# =============================================================== the stage
@dataclasses.dataclass
class InterventionConfig:
    """Ablate neurons one at a time; per-token loss / entropy / rank / KL against the clean run."""

    model: str = config_field(REQUIRED, "model name: zoo name, paper alias, local model folder or hub id")
    token_dataset: str = config_field(REQUIRED, "token dataset folder (neuron_lib.corpus layout)")
    neurons: str | None = config_field(None, "neurons to ablate as layer.neuron, comma-separated; none = --top-k")
    top_k: int = config_field(10, "without --neurons: the top-k neurons of the neuron dataframe by --rank-column")
    rank_column: str = config_field(
        criteria.criterion_columns(criteria.FIGURE_CRITERION)[1],
        "neuron-dataframe column whose largest values select neurons (default: the chosen universality score)",
    )
    neuron_df: str | None = config_field(
        None, "neuron dataframe CSV/parquet; none = the model's own (neuron_lib.neuron_df)"
    )
    controls_per_neuron: int = config_field(1, "random neurons of the same layer per selected neuron (controls)")
    intervention: str = config_field("mean", f"one of {', '.join(INTERVENTIONS)}")
    value: float | None = config_field(None, "the parameter of threshold / fixed / multiply")
    location: str = config_field("post", "post (mlp.hook_post) or pre (mlp.hook_pre; the value passes through GELU)")
    max_tokens: int | None = config_field(16384, "tokens from the dataset's start (whole rows); none = all")
    batch_size: int = config_field(16, "dataset rows per forward pass")
    n_bootstrap: int = config_field(1000, "bootstrap resamples of rows for the confidence intervals")
    seed: int = config_field(0, "seed of the random controls and of the bootstrap")
    checkpoint_every: int = config_field(4, "batches between resumable checkpoints")
    device: str = config_field("auto", "auto | cpu | cuda[:i]")
    dtype: str = config_field("float32", "model dtype")
    overwrite: bool = config_field(False, "replace results of another configuration (or corrupt ones)")

    def validate(self) -> InterventionConfig:
        if not self.model or not self.token_dataset:
            raise NeuronLibError("--model and --token-dataset are required")
        check_intervention(self.intervention, self.value)
        if self.location not in LOCATIONS:
            raise NeuronLibError(f"--location must be one of {LOCATIONS}, got {self.location!r}")
        parse_neurons(self.neurons)
        for f in ("top_k", "batch_size", "n_bootstrap", "checkpoint_every"):
            if int(getattr(self, f)) < 1:
                raise NeuronLibError(f"--{f.replace('_', '-')} must be ≥ 1")
        if int(self.controls_per_neuron) < 0:
            raise NeuronLibError("--controls-per-neuron must be ≥ 0")
        if self.max_tokens is not None and int(self.max_tokens) < 1:
            raise NeuronLibError("--max-tokens must be positive")
        if self.dtype not in DTYPES:
            raise NeuronLibError(f"--dtype must be one of {sorted(DTYPES)}")
        return self

    def identity(self) -> dict[str, Any]:
        ident = config_identity(
            self, exclude=("batch_size", "device", "overwrite", "checkpoint_every"), paths=("neuron_df",)
        )
        return {**ident, "format": FORMAT}

    def run_name(self) -> str:
        value = "" if self.intervention not in NEEDS_VALUE else f"_{float(self.value):g}"
        return f"{self.intervention}{value}.{self.location}"


def top_neurons(df, column: str, k: int) -> list[tuple[int, int]]:
    """The ``k`` neurons with the largest ``column`` (NaN left out; ties: lower layer, then lower index)."""
    if column not in df.columns:
        raise NeuronLibError(
            f"the neuron dataframe has no column {column!r}; choose --rank-column from {sorted(df.columns)}"
        )
    d = df[["layer", "neuron", column]].dropna().sort_values([column, "layer", "neuron"], ascending=[False, True, True])
    return [(int(l), int(n)) for l, n in zip(d["layer"].head(k), d["neuron"].head(k))]


def same_layer_controls(
    selected: Sequence[tuple[int, int]], d_mlp: int, per_neuron: int, seed: int
) -> list[tuple[int, int]]:
    """``per_neuron`` random neurons of each selected neuron's layer, never a selected neuron, no repeats."""
    rng = np.random.default_rng(seed)
    taken = set(selected)
    out: list[tuple[int, int]] = []
    for l, _ in selected:
        free = [n for n in range(d_mlp) if (l, n) not in taken]
        if len(free) < per_neuron:
            raise NeuronLibError(f"layer {l} has too few other neurons for {per_neuron} controls per neuron")
        for n in rng.choice(free, size=per_neuron, replace=False):
            out.append((l, int(n)))
            taken.add((l, int(n)))
    return out


def label_of(layer: int, neuron: int) -> str:
    return f"L{int(layer)}.N{int(neuron)}"


def _load_df(cfg_neuron_df: str | None, model: str):
    from neuron_lib.neuron_df import load_neuron_df

    return load_neuron_df(cfg_neuron_df or model)


def run_intervention(cfg: InterventionConfig) -> stage.StageResult:
    """Ablate each selected neuron and each control; write per-token metrics and the summary table."""
    import pandas as pd

    from neuron_lib.models import load_model
    from neuron_lib.streaming import drop_ids_for

    cfg.validate()
    inputs = stage.open_inputs(cfg.model, cfg.token_dataset, cfg.max_tokens)
    identity = {**cfg.identity(), "token_dataset": inputs.dataset_identity}
    fingerprint = config_fingerprint(identity)
    folder = artifacts.intervention_results(cfg.model, inputs.dataset_name, cfg.run_name())
    files = [
        artifacts.INTERVENTION_NOMINAL_FILE,
        artifacts.INTERVENTION_METRICS_FILE,
        artifacts.INTERVENTION_SUMMARY_FILE,
        artifacts.INTERVENTION_NEURONS_FILE,
    ]
    state = stage.folder_state(folder, STAGE, fingerprint, files)
    if not stage.must_run(folder, state, cfg.overwrite, STAGE):
        stage.log(STAGE, f"{folder} already holds these results (skipped: same configuration)")
        return stage.StageResult(STAGE, "skipped", {"folder": str(folder)})

    # ---- everything that can be wrong is checked before the first forward pass
    df = None
    selected = parse_neurons(cfg.neurons)
    if not selected:
        df = _load_df(cfg.neuron_df, cfg.model)
        selected = top_neurons(df, cfg.rank_column, cfg.top_k)
        if not selected:
            raise NeuronLibError(f"column {cfg.rank_column!r} of the neuron dataframe has no values")
    device = pick_device(cfg.device)
    model = load_model(cfg.model, device=device, dtype=DTYPES[cfg.dtype])
    L, N = model.cfg.n_layers, model.cfg.d_mlp
    check_neurons(selected, L, N)
    controls = same_layer_controls(selected, N, cfg.controls_per_neuron, cfg.seed)
    means = summary_means(cfg.model, cfg.location) if cfg.intervention == "mean" else None
    if means is not None and tuple(means.shape) != (L, N):
        raise NeuronLibError(f"the activation summary has shape {tuple(means.shape)}, the model [{L}, {N}]")

    def value_of(l, n):
        return float(means[l, n]) if means is not None else cfg.value

    rank_values = {}
    if df is not None:
        rank_values = {(int(l), int(n)): float(v) for l, n, v in zip(df["layer"], df["neuron"], df[cfg.rank_column])}
    ablations = []
    for role, pairs in (("selected", selected), ("control", controls)):
        for l, n in pairs:
            ablations.append(
                Ablation(
                    label_of(l, n),
                    neuron_hooks(model, [(l, n)], cfg.location, cfg.intervention, [value_of(l, n)]),
                    {
                        "layer": l,
                        "neuron": n,
                        "role": role,
                        "intervention": cfg.intervention,
                        "location": cfg.location,
                        "value": value_of(l, n),
                        cfg.rank_column: rank_values.get((l, n), float("nan")),
                    },
                )
            )
    n_rows, ctx = inputs.n_rows, inputs.ctx
    n_tok = n_rows * ctx
    stage.log(
        STAGE,
        f"plan: {cfg.intervention} ablation at hook_{cfg.location} of {len(selected)} neuron(s) + {len(controls)} "
        f"same-layer control(s) (seed {cfg.seed}) of {inputs.dataset_name} rows 0..{n_rows} ({n_tok:,} tokens); "
        f"{len(ablations) + 1} forward passes per batch; results ≈ {human_bytes(len(ablations) * 4 * n_tok * 4)}",
    )
    drop = drop_ids_for(inputs.tokenizer, keep_bos=False, drop_newline=False)
    t0 = time.perf_counter()
    nominal, metrics = run_ablations(
        model,
        inputs.dataset,
        n_rows,
        cfg.batch_size,
        ablations,
        drop,
        partial=folder / artifacts.INTERVENTION_PARTIAL_FILE,
        fingerprint=fingerprint,
        checkpoint_every=cfg.checkpoint_every,
    )
    seconds = time.perf_counter() - t0
    groups = {"selected": [label_of(*p) for p in selected], "control": [label_of(*p) for p in controls]}
    table = summarise(nominal, metrics, ablations, cfg.n_bootstrap, cfg.seed, groups if controls else None)
    neurons_df = pd.DataFrame([{k: v for k, v in a.info.items()} | {"label": a.label} for a in ablations])
    manifest = make_manifest(
        STAGE,
        identity,
        config_fingerprint=fingerprint,
        **inputs.manifest_fields(model),
        n_rows=n_rows,
        ctx_len=ctx,
        n_tokens=n_tok,
        n_valid_tokens=int(nominal["valid"].sum()),
        selected=[list(p) for p in selected],
        controls=[list(p) for p in controls],
        controls_seed=cfg.seed,
        selection="--neurons" if cfg.neurons else f"top {cfg.top_k} by {cfg.rank_column}",
        hook=f"mlp.hook_{cfg.location}",
        valid_tokens="positions < ctx-1 whose token is not BOS/EOS/pad",
        dropped_ids=list(drop),
        files=files,
        seconds=seconds,
    )
    write_outputs(
        folder,
        nominal,
        metrics,
        {artifacts.INTERVENTION_SUMMARY_FILE: table, artifacts.INTERVENTION_NEURONS_FILE: neurons_df},
        manifest,
    )
    stage.log(STAGE, f"{len(ablations)} ablations x {n_tok:,} tokens in {seconds:.1f} s -> {folder}")
    for _, r in table[table["label"].str.startswith("group:")].iterrows():
        stage.log(
            STAGE,
            f"{r['label']}: Δloss {r['delta_loss']:+.4f} [{r['delta_loss_ci_low']:+.4f}, {r['delta_loss_ci_high']:+.4f}]",
        )
    return stage.StageResult(
        STAGE,
        "done",
        {"folder": str(folder), **{f: str(folder / f) for f in files}},
        n_tok,
        seconds,
        details={"selected": selected, "controls": controls},
    )


def write_outputs(folder: Path, nominal: dict, metrics: dict, tables: dict, manifest: dict, extra_tensors=None) -> None:
    """The finished folder: tensors, CSV tables, manifest last; the resume checkpoint is removed."""
    from neuron_lib.common import atomic_write_text, write_manifest

    folder.mkdir(parents=True, exist_ok=True)
    artifacts.manifest_path(folder).unlink(missing_ok=True)
    save_tensors_atomic(folder / artifacts.INTERVENTION_NOMINAL_FILE, nominal, metadata={"stage": manifest["stage"]})
    save_tensors_atomic(folder / artifacts.INTERVENTION_METRICS_FILE, metrics, metadata={"stage": manifest["stage"]})
    for name, tensors in (extra_tensors or {}).items():
        save_tensors_atomic(folder / name, tensors, metadata={"stage": manifest["stage"]})
    for name, table in tables.items():
        atomic_write_text(folder / name, table.to_csv(index=False))
    (folder / artifacts.INTERVENTION_PARTIAL_FILE).unlink(missing_ok=True)
    write_manifest(folder, manifest)


def load_intervention_summary(model: str, dataset: str, run: str):
    """The ``summary.csv`` of a finished run (pandas), with a clear error naming the command when it is missing."""
    import pandas as pd

    folder = artifacts.intervention_results(model, dataset, run)
    if not artifacts.manifest_path(folder).exists():
        raise NeuronLibError(
            f"no finished intervention results at {folder}; run `python -m neuron_lib.intervention --model {model} "
            "--token-dataset ...` first"
        )
    return pd.read_csv(folder / artifacts.INTERVENTION_SUMMARY_FILE)


main = stage.cli(
    InterventionConfig,
    run_intervention,
    "python -m neuron_lib.intervention",
    "Ablate neurons (mean / zero / threshold / relu / fixed / multiply at hook_pre or hook_post), one at a time, "
    "with same-layer random controls; per-token loss, entropy, rank and KL; summary with bootstrap intervals.",
)


if __name__ == "__main__":
    run_cli(main)
