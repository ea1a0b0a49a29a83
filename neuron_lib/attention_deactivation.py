"""Attention (de)activation neurons (``python -m neuron_lib.attention_deactivation``; spec §9, paper §5.3).

1. **Heuristic score** for every (attention layer A, head h, earlier MLP layer Q < A, neuron n):
   h_n = ŵ_out[Q, n] · W_Q[A, h] · k_BOS[A, h] / sqrt(d_head), with ŵ_out the **unit-normalised** output weight
   (as the paper's h_n; the original script left it unnormalised, §18.12), W_Q from the processed weights (LN
   folded, as the original loaded the model) and k_BOS the key of head (A, h) at position 0 of a BOS-only prompt.
   The baseline replaces ŵ_out by unit-normalised Gaussian directions (``--seed``), one per neuron.
   ``scores.safetensors``: ``score`` and ``random_score`` [A, H, Q, N] (NaN where Q ≥ A);
   ``heuristic_pairs.csv``: every valid pair sorted by |score|, with its z against the head's random scores.
2. **Path ablation** (§9.1) for the pairs of ``--pairs A.h:Q.n,...`` or the ``--top-k`` pairs by |score| — nothing
   hard-coded — over **every** batch of the first ``ceil(max_tokens / ctx)`` rows (the original kept only the last
   batch's tensors, §18.12): a clean run caches the neuron's post-activation a_t, the head's z and attention pattern,
   and its k and v; the patched run subtracts a_t · w_out[Q, n] from ``blocks.{A}.hook_resid_pre`` at query positions
   ≥ ``--after-pos`` and overwrites ``hook_k`` / ``hook_v`` of layer A with the clean ones, so only the query path
   changes. Recorded per query position ≥ after-pos: the activation, Δ‖z‖ (the head's d_head vector, before W_O;
   patched − clean), the fractional Δ‖z‖ / ‖z_clean‖ and Δ attention probability to position 0 (BOS).
   ``path_ablation.safetensors``: ``{pair}.{activation,norm_diff,frac_norm_diff,bos_diff,clean_norm}`` per token
   (pair = ``A{A}H{h}.L{Q}N{n}``); ``path_ablation.csv``: per pair, Pearson and Spearman of the activation with
   Δ‖z‖ and with ΔP(BOS), the means, the number of tokens.

Hook names: ``blocks.{l}.mlp.hook_post`` through ``models.mlp_hook_names``; attention hooks
``blocks.{A}.attn.hook_{k,v,z,pattern}`` and ``blocks.{A}.hook_resid_pre`` (TransformerLens names).
Resume: finished pairs are checkpointed in ``partial.safetensors`` (same fingerprint) and skipped on a re-run.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from neuron_lib import artifacts, stage, stats
from neuron_lib.common import (
    REQUIRED,
    NeuronLibError,
    atomic_write_text,
    config_field,
    config_fingerprint,
    config_identity,
    load_tensors,
    make_manifest,
    pick_device,
    run_cli,
    save_tensors_atomic,
    write_manifest,
)
from neuron_lib.models import DTYPES, mlp_hook_names

STAGE = "attention_deactivation"
FORMAT = 1
RECORDED = ("activation", "norm_diff", "frac_norm_diff", "bos_diff", "clean_norm")


# =============================================================== hooks and pairs
def attn_hook(layer: int, what: str) -> str:
    return f"blocks.{int(layer)}.attn.hook_{what}"


def resid_pre_hook(layer: int) -> str:
    return f"blocks.{int(layer)}.hook_resid_pre"


@dataclasses.dataclass(frozen=True)
class Pair:
    attn_layer: int
    head: int
    neuron_layer: int
    neuron: int

    @property
    def label(self) -> str:
        return f"A{self.attn_layer}H{self.head}.L{self.neuron_layer}N{self.neuron}"


def parse_pairs(text: str | None) -> list[Pair]:
    """'1.3:0.17,1.0:0.5' (attention layer.head : neuron layer.neuron) → pairs."""
    out = []
    for item in str(text or "").split(","):
        if not item.strip():
            continue
        try:
            head, neuron = item.split(":")
            a, h = (int(x) for x in head.split("."))
            q, n = (int(x) for x in neuron.split("."))
        except ValueError as exc:
            raise NeuronLibError(
                f"cannot read pair {item!r}; write attention_layer.head:neuron_layer.neuron, e.g. 1.3:0.17"
            ) from exc
        out.append(Pair(a, h, q, n))
    return out


def check_pairs(pairs, n_layers: int, n_heads: int, d_mlp: int) -> None:
    for p in pairs:
        if not 0 <= p.attn_layer < n_layers:
            raise NeuronLibError(f"pair {p.label}: attention layer {p.attn_layer} does not exist ({n_layers} layers)")
        if not 0 <= p.head < n_heads:
            raise NeuronLibError(f"pair {p.label}: head {p.head} is out of range (the model has {n_heads} heads)")
        if not 0 <= p.neuron_layer < p.attn_layer:
            raise NeuronLibError(
                f"pair {p.label}: the neuron's layer must come before the attention layer (0 ≤ {p.neuron_layer} < "
                f"{p.attn_layer})"
            )
        if not 0 <= p.neuron < d_mlp:
            raise NeuronLibError(f"pair {p.label}: neuron {p.neuron} is out of range (d_mlp = {d_mlp})")


def check_hooks(model, pairs) -> None:
    need = set()
    for p in pairs:
        need |= {attn_hook(p.attn_layer, w) for w in ("k", "v", "z", "pattern")}
        need |= {resid_pre_hook(p.attn_layer), mlp_hook_names(model, p.neuron_layer)[1]}
    missing = sorted(n for n in need if n not in model.hook_dict)
    if missing:
        raise NeuronLibError(f"model {model.cfg.model_name} lacks hooks {missing[:4]}: path ablation needs them")


# =============================================================== heuristic
def bos_keys(model, bos_id: int) -> torch.Tensor:
    """k_BOS [L, H, d_head]: every layer's keys at position 0 of the BOS-only prompt."""
    L = model.cfg.n_layers
    names = [attn_hook(l, "k") for l in range(L)]
    tokens = torch.tensor([[bos_id]], device=model.cfg.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    return torch.stack([cache[n][0, 0].detach().to("cpu", torch.float64) for n in names])


def heuristic_scores(W_Q: torch.Tensor, W_out: torch.Tensor, k_bos: torch.Tensor, seed: int):
    """(score, random_score) [A, H, Q, N] float64: unit ŵ_out (or unit Gaussian directions) · W_Q k_BOS / sqrt(d_head);
    NaN where Q ≥ A. W_Q [L, H, D, dh], W_out [L, N, D], k_bos [L, H, dh]."""
    W_Q, W_out, k_bos = W_Q.to(torch.float64), W_out.to(torch.float64), k_bos.to(torch.float64)
    L, H, D, dh = W_Q.shape
    qdir = torch.einsum("lhdk,lhk->lhd", W_Q, k_bos) / dh**0.5  # [A, H, D]
    unit = W_out / W_out.norm(dim=-1, keepdim=True).clamp(min=1e-30)
    gen = torch.Generator().manual_seed(int(seed))
    rand = torch.randn(W_out.shape, generator=gen, dtype=torch.float64)
    rand = rand / rand.norm(dim=-1, keepdim=True)
    mask = torch.tril(torch.ones(L, L, dtype=torch.bool), diagonal=-1)  # [A, Q]: Q < A
    out = []
    for vecs in (unit, rand):
        s = torch.einsum("ahd,qnd->ahqn", qdir, vecs)
        s = torch.where(mask[:, None, :, None], s, torch.full_like(s, float("nan")))
        out.append(s)
    return out[0], out[1]


def pair_table(score: torch.Tensor, random_score: torch.Tensor):
    """Every valid pair sorted by |score| with z = score / std(the head's random scores)."""
    import pandas as pd

    A, H, Q, N = score.shape
    idx = torch.nonzero(~torch.isnan(score))
    s = score[~torch.isnan(score)]
    std = torch.stack(
        [
            torch.nan_to_num(random_score[a, h])
            .pow(2)
            .sum()
            .div((~torch.isnan(random_score[a, h])).sum().clamp(min=1))
            .sqrt()
            for a in range(A)
            for h in range(H)
        ]
    ).reshape(A, H)
    df = pd.DataFrame(
        {
            "attn_layer": idx[:, 0].numpy(),
            "head": idx[:, 1].numpy(),
            "neuron_layer": idx[:, 2].numpy(),
            "neuron": idx[:, 3].numpy(),
            "score": s.numpy(),
            "abs_score": s.abs().numpy(),
            "random_rms": std[idx[:, 0], idx[:, 1]].numpy(),
        }
    )
    df["z"] = df["score"] / df["random_rms"]
    return df.sort_values(
        ["abs_score", "attn_layer", "head", "neuron_layer", "neuron"],
        ascending=[False, True, True, True, True],
        kind="mergesort",
    ).reset_index(drop=True)


# =============================================================== path ablation
@torch.no_grad()
def path_ablation_batch(
    model, tokens: torch.Tensor, pair: Pair, w_out: torch.Tensor, after_pos: int
) -> dict[str, torch.Tensor]:
    """The recorded quantities of one batch for one pair, flattened over (row, query position ≥ after_pos)."""
    A, h = pair.attn_layer, pair.head
    post_name = mlp_hook_names(model, pair.neuron_layer)[1]
    names = [post_name, attn_hook(A, "k"), attn_hook(A, "v"), attn_hook(A, "z"), attn_hook(A, "pattern")]
    _, cache = model.run_with_cache(tokens, names_filter=names, stop_at_layer=A + 1)
    act = cache[post_name][..., pair.neuron].detach()  # [B, P]
    clean = {n: cache[n].detach() for n in names}
    seen: dict[str, torch.Tensor] = {}
    w = w_out.to(act.device, act.dtype)

    def subtract(resid, hook=None):
        resid = resid.clone()
        resid[:, after_pos:] = resid[:, after_pos:] - act[:, after_pos:, None] * w
        return resid

    def restore(name):
        return lambda x, hook=None: clean[name]

    def record(name):
        def fn(x, hook=None):
            seen[name] = x.detach()

        return fn

    hooks = [
        (resid_pre_hook(A), subtract),
        (attn_hook(A, "k"), restore(attn_hook(A, "k"))),
        (attn_hook(A, "v"), restore(attn_hook(A, "v"))),
        (attn_hook(A, "z"), record(attn_hook(A, "z"))),
        (attn_hook(A, "pattern"), record(attn_hook(A, "pattern"))),
    ]
    with model.hooks(fwd_hooks=hooks):
        model(tokens, stop_at_layer=A + 1)
    z0 = clean[attn_hook(A, "z")][:, after_pos:, h].to(torch.float64)  # [B, P', dh]
    z1 = seen[attn_hook(A, "z")][:, after_pos:, h].to(torch.float64)
    p0 = clean[attn_hook(A, "pattern")][:, h, after_pos:, 0].to(torch.float64)  # [B, P'] attention to BOS
    p1 = seen[attn_hook(A, "pattern")][:, h, after_pos:, 0].to(torch.float64)
    n0, n1 = z0.norm(dim=-1), z1.norm(dim=-1)
    return {
        "activation": act[:, after_pos:].to(torch.float64).reshape(-1).cpu(),
        "norm_diff": (n1 - n0).reshape(-1).cpu(),
        "frac_norm_diff": ((n1 - n0) / n0.clamp(min=1e-30)).reshape(-1).cpu(),
        "bos_diff": (p1 - p0).reshape(-1).cpu(),
        "clean_norm": n0.reshape(-1).cpu(),
    }


def pair_row(pair: Pair, rec: dict[str, torch.Tensor], score: float) -> dict[str, Any]:
    a = rec["activation"].numpy()
    row = {
        "pair": pair.label,
        **dataclasses.asdict(pair),
        "heuristic_score": score,
        "n_tokens": len(a),
        "mean_activation": float(a.mean()) if len(a) else float("nan"),
    }
    for what in ("norm_diff", "frac_norm_diff", "bos_diff"):
        v = rec[what].numpy()
        row[f"mean_{what}"] = float(v.mean()) if len(v) else float("nan")
        row[f"pearson_{what}"] = stats.pearson(a, v)
        row[f"spearman_{what}"] = stats.spearman(a, v)
    return row


# =============================================================== the stage
@dataclasses.dataclass
class AttentionDeactivationConfig:
    """Heuristic h_n for every (head, earlier neuron) pair; path ablation of chosen or top pairs."""

    model: str = config_field(REQUIRED, "model name: zoo name, paper alias, local model folder or hub id")
    token_dataset: str = config_field(REQUIRED, "token dataset folder (neuron_lib.corpus layout)")
    pairs: str | None = config_field(None, "pairs attn_layer.head:neuron_layer.neuron, comma-separated; none = --top-k")
    top_k: int = config_field(5, "without --pairs: the top-k pairs by |heuristic score|")
    after_pos: int = config_field(32, "query positions ≥ this are ablated and measured (the paper: 64 of 256)")
    max_tokens: int | None = config_field(8192, "tokens from the dataset's start (whole rows); none = all")
    batch_size: int = config_field(16, "dataset rows per forward pass")
    seed: int = config_field(0, "seed of the random-direction baseline")
    device: str = config_field("auto", "auto | cpu | cuda[:i]")
    dtype: str = config_field("float32", "model dtype")
    overwrite: bool = config_field(False, "replace results of another configuration (or corrupt ones)")

    def validate(self) -> AttentionDeactivationConfig:
        if not self.model or not self.token_dataset:
            raise NeuronLibError("--model and --token-dataset are required")
        parse_pairs(self.pairs)
        if int(self.top_k) < 1 or int(self.batch_size) < 1:
            raise NeuronLibError("--top-k and --batch-size must be ≥ 1")
        if int(self.after_pos) < 0:
            raise NeuronLibError("--after-pos must be ≥ 0")
        if self.max_tokens is not None and int(self.max_tokens) < 1:
            raise NeuronLibError("--max-tokens must be positive")
        if self.dtype not in DTYPES:
            raise NeuronLibError(f"--dtype must be one of {sorted(DTYPES)}")
        return self

    def identity(self) -> dict[str, Any]:
        return {**config_identity(self, exclude=("batch_size", "device", "overwrite")), "format": FORMAT}


def run_attention_deactivation(cfg: AttentionDeactivationConfig) -> stage.StageResult:
    import pandas as pd
    from tqdm import tqdm

    from neuron_lib.models import load_model
    from neuron_lib.streaming import tokens_tensor
    from neuron_lib.weights import extract_weights

    cfg.validate()
    inputs = stage.open_inputs(cfg.model, cfg.token_dataset, cfg.max_tokens)
    identity = {**cfg.identity(), "token_dataset": inputs.dataset_identity}
    fingerprint = config_fingerprint(identity)
    folder = artifacts.attention_deactivation(cfg.model, inputs.dataset_name)
    files = [
        artifacts.ATTENTION_SCORES_FILE,
        artifacts.ATTENTION_TOP_PAIRS_FILE,
        artifacts.ATTENTION_PATH_FILE,
        artifacts.ATTENTION_PAIRS_FILE,
    ]
    state = stage.folder_state(folder, STAGE, fingerprint, files)
    if not stage.must_run(folder, state, cfg.overwrite, STAGE):
        stage.log(STAGE, f"{folder} already holds these results (skipped: same configuration)")
        return stage.StageResult(STAGE, "skipped", {"folder": str(folder)})
    if cfg.after_pos >= inputs.ctx:
        raise NeuronLibError(f"--after-pos {cfg.after_pos} leaves no query position (ctx = {inputs.ctx})")
    given = parse_pairs(cfg.pairs)

    device = pick_device(cfg.device)
    model = load_model(cfg.model, device=device, dtype=DTYPES[cfg.dtype])
    L, H, N = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_mlp
    if L < 2:
        raise NeuronLibError("attention (de)activation needs at least two layers (a neuron before a head)")
    check_pairs(given, L, H, N)
    check_hooks(model, given or [Pair(L - 1, 0, 0, 0)])
    bos = inputs.tokenizer.bos_token_id
    if bos is None:
        raise NeuronLibError("the tokenizer has no BOS token: the heuristic needs k_BOS")
    processed = load_model(cfg.model, device="cpu", process_weights=True)
    w = extract_weights(processed)
    k_bos = bos_keys(processed, bos)
    del processed
    score, random_score = heuristic_scores(w.W_Q, w.W_out, k_bos, cfg.seed)
    table = pair_table(score, random_score)
    pairs = given or [
        Pair(int(r.attn_layer), int(r.head), int(r.neuron_layer), int(r.neuron))
        for r in table.head(cfg.top_k).itertuples()
    ]
    W_out_raw = model.W_out.detach()  # the forward model's own output weights [L, N, D]
    n_rows, ctx = inputs.n_rows, inputs.ctx
    stage.log(
        STAGE,
        f"plan: heuristic for {len(table):,} (head, earlier neuron) pairs; path ablation of {len(pairs)} pair(s) "
        f"{[p.label for p in pairs]} over {n_rows} rows x {ctx} tokens (query positions ≥ {cfg.after_pos})",
    )
    partial = folder / artifacts.INTERVENTION_PARTIAL_FILE
    done: dict[str, torch.Tensor] = {}
    if partial.exists():
        from neuron_lib.intervention import _partial_fingerprint

        if _partial_fingerprint(partial) == fingerprint:
            done = load_tensors(partial)
            stage.log(STAGE, f"resuming: {len({k.rsplit('.', 1)[0] for k in done})} pair(s) already done")
    t0 = time.perf_counter()
    records: dict[str, torch.Tensor] = dict(done)
    rows = []
    for pair in pairs:
        s = float(score[pair.attn_layer, pair.head, pair.neuron_layer, pair.neuron])
        if not all(f"{pair.label}.{r}" in records for r in RECORDED):
            parts: dict[str, list] = {r: [] for r in RECORDED}
            for start in tqdm(range(0, n_rows, cfg.batch_size), desc=pair.label, leave=False):
                tokens = tokens_tensor(inputs.dataset, start, min(start + cfg.batch_size, n_rows)).to(device)
                out = path_ablation_batch(model, tokens, pair, W_out_raw[pair.neuron_layer, pair.neuron], cfg.after_pos)
                for r in RECORDED:
                    parts[r].append(out[r])
            for r in RECORDED:
                records[f"{pair.label}.{r}"] = torch.cat(parts[r]).to(torch.float32)
            folder.mkdir(parents=True, exist_ok=True)
            save_tensors_atomic(partial, records, metadata={"fingerprint": fingerprint})
        rows.append(pair_row(pair, {r: records[f"{pair.label}.{r}"].double() for r in RECORDED}, s))
    seconds = time.perf_counter() - t0
    pairs_df = pd.DataFrame(rows)
    manifest = make_manifest(
        STAGE,
        identity,
        config_fingerprint=fingerprint,
        **inputs.manifest_fields(model),
        n_rows=n_rows,
        ctx_len=ctx,
        n_tokens=n_rows * ctx,
        pairs=[p.label for p in pairs],
        selection="--pairs" if given else f"top {cfg.top_k} by |heuristic score|",
        heuristic="unit w_out . W_Q k_BOS / sqrt(d_head) on processed weights; baseline: unit Gaussian directions",
        baseline_seed=cfg.seed,
        files=files,
        seconds=seconds,
    )
    folder.mkdir(parents=True, exist_ok=True)
    artifacts.manifest_path(folder).unlink(missing_ok=True)
    save_tensors_atomic(
        folder / artifacts.ATTENTION_SCORES_FILE,
        {"score": score.float(), "random_score": random_score.float(), "k_bos": k_bos.float()},
        metadata={"stage": STAGE},
    )
    save_tensors_atomic(folder / artifacts.ATTENTION_PATH_FILE, records, metadata={"stage": STAGE})
    atomic_write_text(folder / artifacts.ATTENTION_TOP_PAIRS_FILE, table.to_csv(index=False))
    atomic_write_text(folder / artifacts.ATTENTION_PAIRS_FILE, pairs_df.to_csv(index=False))
    partial.unlink(missing_ok=True)
    write_manifest(folder, manifest)
    stage.log(STAGE, f"{len(pairs)} pair(s) path-ablated in {seconds:.1f} s -> {folder}")
    for r in rows:
        stage.log(
            STAGE,
            f"{r['pair']}: h={r['heuristic_score']:+.3f}, Pearson(act, Δ‖z‖)={r['pearson_norm_diff']:+.3f}, "
            f"Spearman={r['spearman_norm_diff']:+.3f}, Pearson(act, ΔP(BOS))={r['pearson_bos_diff']:+.3f}",
        )
    return stage.StageResult(
        STAGE,
        "done",
        {"folder": str(folder), **{f: str(folder / f) for f in files}},
        n_rows * ctx,
        seconds,
        details={"pairs": [p.label for p in pairs]},
    )


main = stage.cli(
    AttentionDeactivationConfig,
    run_attention_deactivation,
    "python -m neuron_lib.attention_deactivation",
    "Heuristic h_n for every (head, earlier neuron) pair with a random-direction baseline; path ablation of chosen "
    "or top pairs (k and v frozen) with Δ‖z‖ and ΔP(BOS) correlated with the neuron's activation.",
)


if __name__ == "__main__":
    run_cli(main)
