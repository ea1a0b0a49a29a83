"""The entropy-neuron experiment (``python -m neuron_lib.entropy_intervention``; spec §8.2–8.3, paper §5.2).

Each chosen neuron's ``blocks.{l}.mlp.hook_post`` (``--location``) is fixed to each of ``--values`` (default
−0.17, 0, 1, …, 6; −0.17 ≈ GELU's minimum) at every position, one neuron at a time, and the per-token final
LayerNorm scale (``ln_final.hook_scale``, the divisor sqrt(var + ε)), entropy, loss, rank and reciprocal rank
1/(rank+1) are recorded next to the clean run's (the engine of ``neuron_lib.intervention``).

Neurons, all by rule (never typed-in ids):
- **candidates** (``candidates.csv`` lists every neuron of the last ``--last-layers`` layers): on the processed
  weights (LN folded, unembedding centred), the unembedding's effective null space is the span of the left singular
  vectors of W_U [d_model, d_vocab] beyond the top ``ceil((1 − null_fraction)·d_model)``; a neuron's
  ``null_share`` = ‖w_out − P_top w_out‖ / ‖w_out‖ (the share of ‖w_out‖ outside the top singular span) and its
  ``null_norm`` = ‖w_out‖ · null_share. Candidates are the ``--n-candidates`` largest ``null_norm`` among neurons
  with null_share ≥ ``--min-null-share`` (if none qualifies, the largest null_norm overall, with a warning): large
  ‖w_out‖ written mostly where the unembedding cannot read it, so that it moves the final LayerNorm's scale.
- **baselines** (§8.3's rule, with a recorded seed): ``--n-baselines`` neurons drawn without replacement from the
  last two layers (layer > max_layer − 2) with ``l2_penalty`` ≤ its 90th percentile and ``vocab_var`` ≥ its 10th
  percentile (percentiles over the whole neuron dataframe), never a candidate; the original had no seed (§18.16).

Outputs (``$INTERVENTION_DIR/{model}/{dataset}/entropy.{location}/``): ``nominal.safetensors`` (+ ``scale``),
``metrics.safetensors`` (``{label}.{loss,entropy,rank,kl,scale}``, label = ``L{l}.N{n}@{value}``),
``summary.csv`` (per neuron and value: means over valid tokens, Δ with bootstrap intervals; roles ``candidate`` /
``baseline``), ``candidates.csv``, ``neurons.csv``, ``manifest.json``. Resumable as ``neuron_lib.intervention``.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Any

import numpy as np
import torch

from neuron_lib import artifacts, stage
from neuron_lib.common import (
    REQUIRED,
    NeuronLibError,
    config_field,
    config_fingerprint,
    config_identity,
    make_manifest,
    pick_device,
    run_cli,
)
from neuron_lib.intervention import (
    LOCATIONS,
    Ablation,
    check_neurons,
    label_of,
    neuron_hooks,
    parse_neurons,
    run_ablations,
    summarise,
    write_outputs,
)
from neuron_lib.models import DTYPES

STAGE = "entropy_intervention"
FORMAT = 1
SCALE_HOOK = "ln_final.hook_scale"
DEFAULT_VALUES = "-0.17,0,1,2,3,4,5,6"
# §8.3: baselines from the last two layers, not in the top decile of l2_penalty, not in the bottom decile of vocab_var
BASELINE_LAST_LAYERS = 2
BASELINE_MAX_NORM_QUANTILE = 0.9
BASELINE_MIN_VOCAB_VAR_QUANTILE = 0.1


def null_space_shares(W_out: torch.Tensor, W_U: torch.Tensor, null_fraction: float) -> dict[str, torch.Tensor]:
    """Per neuron (W_out [L, N, D], W_U [D, V]): ``w_out_norm``, ``null_share`` (share of ‖w_out‖ outside the span of
    W_U's top ``ceil((1 − null_fraction)·D)`` left singular vectors) and ``null_norm`` = norm × share, all [L, N]."""
    W_out, W_U = W_out.to(torch.float64), W_U.to(torch.float64)
    D = W_U.shape[0]
    k = min(D, max(0, math.ceil((1 - null_fraction) * D)))
    U, _, _ = torch.linalg.svd(W_U, full_matrices=False)  # singular values descending
    top = U[:, :k]
    rest = W_out - (W_out @ top) @ top.T
    norm = W_out.norm(dim=-1)
    share = rest.norm(dim=-1) / norm.clamp(min=1e-30)
    return {"w_out_norm": norm, "null_share": share, "null_norm": norm * share}


def candidate_table(shares: dict[str, torch.Tensor], last_layers: int):
    import pandas as pd

    L, N = shares["w_out_norm"].shape
    layers = list(range(max(0, L - last_layers), L))
    return pd.DataFrame(
        {
            "layer": np.repeat(layers, N),
            "neuron": np.tile(np.arange(N), len(layers)),
            **{k: v[layers].reshape(-1).numpy() for k, v in shares.items()},
        }
    ).sort_values("null_norm", ascending=False, kind="mergesort")


def pick_candidates(table, n: int, min_null_share: float) -> list[tuple[int, int]]:
    ok = table[table["null_share"] >= min_null_share]
    if ok.empty:
        warnings.warn(
            f"no neuron of the last layers has null_share ≥ {min_null_share}; taking the largest null_norm instead",
            stacklevel=2,
        )
        ok = table
    head = ok.head(n)
    return [(int(l), int(n_)) for l, n_ in zip(head["layer"], head["neuron"])]


def sample_baseline_neurons(df, k: int, seed: int, exclude=()) -> list[tuple[int, int]]:
    """§8.3's baseline rule with a seed: k neurons of layer > max_layer − 2, l2_penalty ≤ q90, vocab_var ≥ q10."""
    for col in ("l2_penalty", "vocab_var"):
        if col not in df.columns:
            raise NeuronLibError(
                f"the neuron dataframe has no {col!r} column (run neuron_lib.weights with its vocabulary part, "
                "then neuron_lib.neuron_df)"
            )
    max_layer = int(df["layer"].max())
    ok = (
        (df["layer"] > max_layer - BASELINE_LAST_LAYERS)
        & (df["l2_penalty"] <= df["l2_penalty"].quantile(BASELINE_MAX_NORM_QUANTILE))
        & (df["vocab_var"] >= df["vocab_var"].quantile(BASELINE_MIN_VOCAB_VAR_QUANTILE))
    )
    pool = [
        (int(l), int(n))
        for l, n in zip(df.loc[ok, "layer"], df.loc[ok, "neuron"])
        if (int(l), int(n)) not in set(exclude)
    ]
    if len(pool) < k:
        raise NeuronLibError(f"only {len(pool)} neurons satisfy the baseline rule, fewer than --n-baselines {k}")
    idx = np.random.default_rng(seed).choice(len(pool), size=k, replace=False)
    return sorted(pool[i] for i in idx)


def parse_values(text: str) -> list[float]:
    try:
        values = [float(t) for t in str(text).split(",") if t.strip()]
    except ValueError as exc:
        raise NeuronLibError(f"--values must be comma-separated numbers, got {text!r}") from exc
    if not values:
        raise NeuronLibError("--values is empty")
    return values


@dataclasses.dataclass
class EntropyInterventionConfig:
    """Fix candidate entropy neurons and rule-drawn baselines to a range of values; record LN scale and entropy."""

    model: str = config_field(REQUIRED, "model name: zoo name, paper alias, local model folder or hub id")
    token_dataset: str = config_field(REQUIRED, "token dataset folder (neuron_lib.corpus layout)")
    values: str = config_field(DEFAULT_VALUES, "fixed activation values, comma-separated")
    location: str = config_field("post", "post (mlp.hook_post, the paper) or pre")
    neurons: str | None = config_field(None, "extra neurons to intervene on (layer.neuron, comma-separated)")
    n_candidates: int = config_field(2, "entropy-neuron candidates chosen by the null-space rule")
    last_layers: int = config_field(1, "candidates come from the last this-many layers")
    null_fraction: float = config_field(0.1, "share of W_U's singular directions (smallest) counted as null space")
    min_null_share: float = config_field(0.5, "a candidate writes at least this share of ‖w_out‖ into the null space")
    n_baselines: int = config_field(10, "baseline neurons drawn by §8.3's rule (the paper: 20)")
    neuron_df: str | None = config_field(None, "neuron dataframe (l2_penalty, vocab_var); none = the model's own")
    max_tokens: int | None = config_field(4096, "tokens from the dataset's start (whole rows); none = all")
    batch_size: int = config_field(16, "dataset rows per forward pass")
    n_bootstrap: int = config_field(500, "bootstrap resamples of rows for the confidence intervals")
    seed: int = config_field(0, "seed of the baseline draw and of the bootstrap")
    checkpoint_every: int = config_field(4, "batches between resumable checkpoints")
    device: str = config_field("auto", "auto | cpu | cuda[:i]")
    dtype: str = config_field("float32", "model dtype")
    overwrite: bool = config_field(False, "replace results of another configuration (or corrupt ones)")

    def validate(self) -> EntropyInterventionConfig:
        if not self.model or not self.token_dataset:
            raise NeuronLibError("--model and --token-dataset are required")
        parse_values(self.values)
        parse_neurons(self.neurons)
        if self.location not in LOCATIONS:
            raise NeuronLibError(f"--location must be one of {LOCATIONS}, got {self.location!r}")
        if not 0 <= float(self.null_fraction) < 1 or not 0 <= float(self.min_null_share) <= 1:
            raise NeuronLibError("--null-fraction must lie in [0, 1) and --min-null-share in [0, 1]")
        for f in ("last_layers", "batch_size", "n_bootstrap", "checkpoint_every"):
            if int(getattr(self, f)) < 1:
                raise NeuronLibError(f"--{f.replace('_', '-')} must be ≥ 1")
        if int(self.n_candidates) < 0 or int(self.n_baselines) < 0:
            raise NeuronLibError("--n-candidates and --n-baselines must be ≥ 0")
        if self.dtype not in DTYPES:
            raise NeuronLibError(f"--dtype must be one of {sorted(DTYPES)}")
        return self

    def identity(self) -> dict[str, Any]:
        ident = config_identity(
            self, exclude=("batch_size", "device", "overwrite", "checkpoint_every"), paths=("neuron_df",)
        )
        return {**ident, "format": FORMAT}


def value_label(layer: int, neuron: int, value: float) -> str:
    return f"{label_of(layer, neuron)}@{value:g}"


def run_entropy_intervention(cfg: EntropyInterventionConfig) -> stage.StageResult:
    import pandas as pd

    from neuron_lib.intervention import _load_df
    from neuron_lib.models import load_model
    from neuron_lib.streaming import drop_ids_for
    from neuron_lib.weights import extract_weights

    cfg.validate()
    values = parse_values(cfg.values)
    inputs = stage.open_inputs(cfg.model, cfg.token_dataset, cfg.max_tokens)
    identity = {**cfg.identity(), "token_dataset": inputs.dataset_identity}
    fingerprint = config_fingerprint(identity)
    folder = artifacts.intervention_results(cfg.model, inputs.dataset_name, f"entropy.{cfg.location}")
    files = [
        artifacts.INTERVENTION_NOMINAL_FILE,
        artifacts.INTERVENTION_METRICS_FILE,
        artifacts.INTERVENTION_SUMMARY_FILE,
        artifacts.INTERVENTION_NEURONS_FILE,
        artifacts.ENTROPY_CANDIDATES_FILE,
    ]
    state = stage.folder_state(folder, STAGE, fingerprint, files)
    if not stage.must_run(folder, state, cfg.overwrite, STAGE):
        stage.log(STAGE, f"{folder} already holds these results (skipped: same configuration)")
        return stage.StageResult(STAGE, "skipped", {"folder": str(folder)})

    device = pick_device(cfg.device)
    processed = load_model(cfg.model, device="cpu", process_weights=True)
    w = extract_weights(processed)
    del processed
    shares = null_space_shares(w.W_out, w.W_U, cfg.null_fraction)
    table = candidate_table(shares, cfg.last_layers)
    candidates = pick_candidates(table, cfg.n_candidates, cfg.min_null_share) if cfg.n_candidates else []
    extra = [p for p in parse_neurons(cfg.neurons) if p not in candidates]
    baselines = []
    if cfg.n_baselines:
        df = _load_df(cfg.neuron_df, cfg.model)
        baselines = sample_baseline_neurons(df, cfg.n_baselines, cfg.seed, exclude=candidates + extra)
    model = load_model(cfg.model, device=device, dtype=DTYPES[cfg.dtype])
    L, N = model.cfg.n_layers, model.cfg.d_mlp
    check_neurons(candidates + extra + baselines, L, N)
    if SCALE_HOOK not in model.hook_dict:
        raise NeuronLibError(f"model {cfg.model} has no hook {SCALE_HOOK} (final LayerNorm scale)")
    if not candidates + extra + baselines:
        raise NeuronLibError("no neurons to intervene on: raise --n-candidates / --n-baselines or give --neurons")
    ablations = []
    for role, pairs in (("candidate", candidates), ("extra", extra), ("baseline", baselines)):
        for l, n in pairs:
            for v in values:
                ablations.append(
                    Ablation(
                        value_label(l, n, v),
                        neuron_hooks(model, [(l, n)], cfg.location, "fixed", [v]),
                        {
                            "layer": l,
                            "neuron": n,
                            "role": role,
                            "intervention": "fixed",
                            "location": cfg.location,
                            "value": v,
                            "w_out_norm": float(shares["w_out_norm"][l, n]),
                            "null_share": float(shares["null_share"][l, n]),
                        },
                    )
                )
    n_rows, ctx = inputs.n_rows, inputs.ctx
    stage.log(
        STAGE,
        f"plan: {len(candidates)} candidate(s) {[label_of(*p) for p in candidates]}, {len(extra)} extra, "
        f"{len(baselines)} baseline(s) (seed {cfg.seed}) x {len(values)} values = {len(ablations)} interventions "
        f"over {n_rows * ctx:,} tokens",
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
        record_scale=SCALE_HOOK,
        log_stage=STAGE,
    )
    seconds = time.perf_counter() - t0
    summary = summarise(nominal, metrics, ablations, cfg.n_bootstrap, cfg.seed)
    neurons_df = pd.DataFrame(
        [
            {"layer": l, "neuron": n, "role": r}
            for r, ps in (("candidate", candidates), ("extra", extra), ("baseline", baselines))
            for l, n in ps
        ]
    )
    manifest = make_manifest(
        STAGE,
        identity,
        config_fingerprint=fingerprint,
        **inputs.manifest_fields(model),
        n_rows=n_rows,
        ctx_len=ctx,
        n_tokens=n_rows * ctx,
        n_valid_tokens=int(nominal["valid"].sum()),
        values=values,
        candidates=[list(p) for p in candidates],
        baselines=[list(p) for p in baselines],
        baselines_seed=cfg.seed,
        candidate_rule=(
            f"last {cfg.last_layers} layer(s); null space = W_U left singular vectors beyond the top "
            f"ceil({1 - cfg.null_fraction:g}·d_model); largest ‖w_out‖·null_share with null_share ≥ {cfg.min_null_share}"
        ),
        baseline_rule="layer > max_layer-2, l2_penalty <= q90, vocab_var >= q10 (spec §8.3), seeded",
        scale_hook=SCALE_HOOK,
        files=files,
        seconds=seconds,
    )
    write_outputs(
        folder,
        nominal,
        metrics,
        {
            artifacts.INTERVENTION_SUMMARY_FILE: summary,
            artifacts.INTERVENTION_NEURONS_FILE: neurons_df,
            artifacts.ENTROPY_CANDIDATES_FILE: table,
        },
        manifest,
    )
    stage.log(STAGE, f"{len(ablations)} interventions in {seconds:.1f} s -> {folder}")
    return stage.StageResult(
        STAGE,
        "done",
        {"folder": str(folder), **{f: str(folder / f) for f in files}},
        n_rows * ctx,
        seconds,
        details={"candidates": candidates, "baselines": baselines},
    )


main = stage.cli(
    EntropyInterventionConfig,
    run_entropy_intervention,
    "python -m neuron_lib.entropy_intervention",
    "Fix rule-chosen entropy-neuron candidates and seeded baselines to a range of values; final norm scale, "
    "entropy, loss, rank and reciprocal rank per token.",
)


if __name__ == "__main__":
    run_cli(main)
