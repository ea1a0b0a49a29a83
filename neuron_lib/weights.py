"""Weight statistics of every MLP neuron, on the paper's processed weights (spec §4).

    python -m neuron_lib.weights --model stanford-gpt2-small-a
    python -m neuron_lib.weights --model zoo-gpt2-a --raw-weights      # unprocessed HF weights

Outputs go to ``$SUMMARY_DIR/{model}/weights/`` (``weights_raw/`` with ``--raw-weights``):

``neuron_stats.csv``
    one row per neuron in flat order (row = layer·d_mlp + neuron): ``layer, neuron, w_in_norm``
    (‖w_in‖), ``input_bias`` (b_in), ``w_out_norm`` (‖w_out‖), ``in_out_sim`` (cos(w_in, w_out)),
    ``l2_penalty`` (‖w_in‖² + ‖w_out‖²) and, when the vocabulary part ran, ``vocab_mean, vocab_var,
    vocab_skew, vocab_kurt`` (the ``U_out`` moments, the columns the paper's dataframe uses).
    Here w_in = W_in[l][:, n] (what the neuron reads) and w_out = W_out[l][n, :] (what it writes).

``vocab_composition.safetensors``
    for each type T in ``E_in, U_in, E_out, U_out`` the cosines of a neuron vector with every token
    vector: ``E_*`` with the rows W_E[v], ``U_*`` with the columns W_U[:, v]; ``*_in`` uses w_in,
    ``*_out`` uses w_out. Keys ``T.top_value/T.top_index`` and ``T.bottom_value/T.bottom_index``
    [L, N, k] (k = ``--vocab-top-k`` capped at d_vocab; bottom-k in ascending order), ``T.hist``
    [L, N, 101] int32 on ``hist_edges`` = linspace(−1, 1, 100) with the paper's binning (bin i holds
    edges[i−1] < v ≤ edges[i], bin 0 holds v ≤ edges[0], bin 100 holds v > edges[99]), and the
    population moments over the vocabulary ``T.mean, T.var, T.skew, T.kurt`` [L, N] float64
    (kurtosis NOT excess: a Gaussian gives 3).

``neuron_composition.safetensors``
    for each type ``in_in, in_out, out_in, out_out`` (first word: the side of neuron (l, n), second
    word: the side of the partner neuron) the cosines of neuron (l, n) against every neuron of every
    layer. ``T.top_value/T.top_index`` and ``T.bottom_value/T.bottom_index`` [L, N, k] (k =
    ``--neuron-top-k``, default 20; index = flat partner index l'·d_mlp + n'), ``T.hist`` [L, N, 101]
    and ``T.mean/var/skew/kurt``. **The self pair (same layer and index) is excluded** from the top/
    bottom lists, the histogram and the moments (the original set it to 0 instead, which puts one
    spurious 0 into each row's histogram and moments; over 36,863 partners the difference is
    negligible). For ``in_out``/``out_in`` the excluded self pair is cos(w_in, w_out) = ``in_out_sim``.

``vocab_kurt_null.csv``
    the calibrated null of ``vocab_kurt`` (``--vocab-null-samples``, default 1000; 0 = none): one row per layer,
    ``layer, n_samples, seed, null_mean, null_q50, null_q99, null_q999, null_max, isotropic_q99`` — the vocabulary
    kurtosis of random directions drawn with that layer's w_out covariance (``vocab_kurtosis_null``), against the
    model's own W_U. ``neuron_df`` turns ``null_q99`` into the calibrated prediction / suppression flags.

``head_composition.safetensors``
    attention-head composition scores, float32 [L_neuron, N, L_attn, H], computed for every
    (neuron layer, attention layer) pair (also heads *before* the neuron, which cannot read it; slice
    ``[:, :, l+1:]`` for the causal ones). TransformerLens convention: a head's attention score is
    ``x_q W_Q W_Kᵀ x_kᵀ`` (x_q the residual at the query position, x_k at the key position) and it
    writes ``x_k W_V W_O``. With ``‖·‖_F`` the Frobenius norm:

    - ``neuron_out_to_head_q`` = ‖w_outᵀ W_Q W_Kᵀ‖ / (‖W_Q W_Kᵀ‖_F ‖w_out‖): the neuron's output read
      by the head's *query* side (contracts the W_Q index). Equals the original's ``k_comp``
      (spec §18.10: the original's K/Q names are swapped).
    - ``neuron_out_to_head_k`` = ‖W_Q W_Kᵀ w_out‖ / (‖W_Q W_Kᵀ‖_F ‖w_out‖): read by the *key* side
      (contracts the W_K index). The original's ``q_comp``.
    - ``neuron_out_to_head_v`` = ‖w_outᵀ W_V W_O‖ / (‖W_V W_O‖_F ‖w_out‖): read by the value side.
      The original's ``v_comp``.
    - ``head_out_to_neuron_in`` = ‖W_V W_O w_in‖ / (‖W_V W_O‖_F ‖w_in‖): the head's output read by
      the neuron's input. The original's ``o_comp``.

``manifest.json``
    provenance, the weight processing (requested, what TransformerLens applied, what this module
    applied itself, and the measured centring residuals), the self-pair policy and the file list.

**Weight processing.** ``load_model(..., process_weights=True)`` calls TransformerLens 4's
``enable_compatibility_mode()``, the same processing as ``HookedTransformer.from_pretrained``
defaults (fold_ln, center_writing_weights, center_unembed, fold_value_biases), which is what the
paper used (spec §0.1). Verified on TL 4.3 for GPT-2 (tests/test_weights.py redoes it by hand from
the HF state dict): W_in = centre_d(diag(γ₂) W_in_raw), b_in = b_in_raw + β₂ W_in_raw; W_out, W_E,
W_pos, W_O centred along d_model; W_Q/W_K/W_V = centre_d(diag(γ₁) W_raw); W_U =
centre_vocab(centre_d(diag(γ_f) W_U_raw)); LayerNorm weights become 1 and biases 0. :func:`extract_weights` re-checks this on every run: if a centring is missing
it centres the matrix itself, and if LayerNorm gains were not folded (an LN weight ≠ 1) it folds
them itself from the bridge's LN parameters; either is recorded in the manifest.

All statistics are computed in float64, chunked over neurons (``--chunk-size`` rows at a time), so
GPT-2-small's 3072 × 50257 cosines per layer never sit in memory at once.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from neuron_lib import artifacts, fused, stage
from neuron_lib.common import (
    NeuronLibError,
    config_field,
    config_fingerprint,
    config_identity,
    human_bytes,
    make_manifest,
    parse_memory,
    pick_device,
    run_cli,
    save_dataframe_atomic,
    save_tensors_atomic,
    write_manifest,
)
from neuron_lib.models import model_output_name
from neuron_lib.stats import cosine_edges, histogram_counts, row_moments

VOCAB_TYPES = ("E_in", "U_in", "E_out", "U_out")
NEURON_TYPES = ("in_in", "in_out", "out_in", "out_out")
HEAD_TYPES = ("neuron_out_to_head_q", "neuron_out_to_head_k", "neuron_out_to_head_v", "head_out_to_neuron_in")
# the original's file names for the same quantities (spec §4, §18.10)
ORIGINAL_HEAD_NAMES = {
    "neuron_out_to_head_q": "k_comp",
    "neuron_out_to_head_k": "q_comp",
    "neuron_out_to_head_v": "v_comp",
    "head_out_to_neuron_in": "o_comp",
}
#: what the weight columns mean for a gated MLP (Llama: hook_pre = x W_gate, hook_post = silu(x W_gate) · x W_up)
GATED_DEFINITIONS = {
    "w_in": "w_gate = W_gate[l][:, n] (what hook_pre, the gate's pre-activation, reads); E_in/U_in use it",
    "w_in_norm": "= w_gate_norm",
    "w_up_norm": "||w_up||, w_up = W_up[l][:, n] (TransformerLens W_in of a gated MLP: hook_pre_linear)",
    "in_out_sim": "= in_out_sim_gate = cos(w_gate, w_out); in_out_sim_up = cos(w_up, w_out)",
    "l2_penalty": "||w_gate||^2 + ||w_up||^2 + ||w_out||^2",
    "input_bias": "NaN: no MLP biases",
}
NEURON_STATS_COLUMNS = ["layer", "neuron", "w_in_norm", "input_bias", "w_out_norm", "in_out_sim", "l2_penalty"]
VOCAB_MOMENT_COLUMNS = ["vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt"]
SELF_PAIR_POLICY = "excluded"
STAGE = "weights"
_CENTRE_TOL = 1e-5  # relative residual above which a matrix counts as not centred


# ====================================================================== configuration
@dataclasses.dataclass
class WeightsConfig:
    """Settings of one weight-statistics run."""

    model: str = config_field("", "model name: zoo name, paper alias, local model folder or hub id")
    raw_weights: bool = config_field(False, "use the unprocessed HF weights (written to weights_raw/)")
    vocab: bool = config_field(True, "vocabulary composition (E_in, U_in, E_out, U_out)")
    neurons: bool = config_field(True, "neuron-to-neuron weight cosines")
    heads: bool = config_field(True, "attention-head composition")
    vocab_top_k: int = config_field(100, "top/bottom tokens kept per neuron (capped at d_vocab)")
    neuron_top_k: int = config_field(20, "top/bottom partner neurons kept per neuron")
    chunk_size: int = config_field(256, "neurons processed at once (memory ~ chunk_size x d_vocab x 8 B x 6)")
    device: str = config_field("cpu", "cpu, cuda or auto")
    overwrite: bool = config_field(False, "replace a weight summary of another configuration")
    progress: bool = config_field(True, "progress bars")
    vocab_types: str = config_field(
        ",".join(VOCAB_TYPES), "comma-separated vocabulary-composition types (U_out alone gives the vocab_* columns)"
    )
    vocab_null_samples: int = config_field(
        1000,
        "random w_out directions per layer for the calibrated vocab-kurtosis null (vocab_kurt_null.csv; with --vocab "
        "only); 0 = none",
    )
    null_seed: int = config_field(0, "seed of the vocab-kurtosis null's random directions")
    max_memory: str | None = config_field(
        None, "memory budget of one vocabulary block (chunk rows x d_vocab x 8 B x 6); lowers --chunk-size to fit"
    )

    def validate(self) -> WeightsConfig:
        if not self.model:
            raise NeuronLibError("--model is required (a zoo name, paper alias, local model folder or hub id)")
        if self.vocab_top_k < 1 or self.neuron_top_k < 1:
            raise NeuronLibError("--vocab-top-k and --neuron-top-k must be ≥ 1")
        if self.chunk_size < 1:
            raise NeuronLibError("--chunk-size must be ≥ 1")
        unknown = [t for t in self.vocab_type_list() if t not in VOCAB_TYPES]
        if unknown or not self.vocab_type_list():
            raise NeuronLibError(f"--vocab-types: unknown {unknown}; choose from {', '.join(VOCAB_TYPES)}")
        if self.vocab_null_samples < 0 or self.vocab_null_samples == 1:
            raise NeuronLibError("--vocab-null-samples must be 0 (no null) or ≥ 2 (a quantile needs several draws)")
        if self.max_memory is not None:
            parse_memory(self.max_memory)
        return self

    def vocab_type_list(self) -> list[str]:
        return [t.strip() for t in str(self.vocab_types).split(",") if t.strip()]

    def identity(self) -> dict[str, Any]:
        """The fields that change the results (a finished run with the same ones is reused). Options added later
        count only when they differ from their defaults, so earlier finished runs keep their fingerprints."""
        ident = config_identity(
            self,
            exclude=("device", "overwrite", "progress", "chunk_size", "max_memory")
            + (("vocab_types",) if self.vocab_type_list() == list(VOCAB_TYPES) else ()),
        )
        return ident

    def block_rows(self, d_vocab: int) -> int:
        """Neurons per vocabulary block: ``chunk_size``, lowered to fit ``max_memory`` (6 float64 [rows, d_vocab])."""
        if self.max_memory is None:
            return self.chunk_size
        return max(1, min(self.chunk_size, parse_memory(self.max_memory) // (6 * 8 * max(1, d_vocab))))


# ====================================================================== weight extraction
@dataclasses.dataclass
class ModelWeights:
    """The weights the statistics read, as float64 tensors in TransformerLens layout."""

    W_in: torch.Tensor  # [L, d_model, d_mlp]
    b_in: torch.Tensor  # [L, d_mlp]
    W_out: torch.Tensor  # [L, d_mlp, d_model]
    W_E: torch.Tensor  # [d_vocab, d_model]
    W_U: torch.Tensor  # [d_model, d_vocab]
    W_Q: torch.Tensor  # [L, H, d_model, d_head]
    W_K: torch.Tensor  # [L, H, d_model, d_head]
    W_V: torch.Tensor  # [L, H, d_model, d_head]
    W_O: torch.Tensor  # [L, H, d_head, d_model]
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)
    # gated MLPs (Llama): W_gate [L, d_model, d_mlp] is what hook_pre reads; W_in is then the up projection
    W_gate: torch.Tensor | None = None
    # None when the model has MLP input biases; else why ``input_bias`` is NaN (e.g. Llama has no MLP biases)
    no_input_bias: str | None = None

    @property
    def n_layers(self) -> int:
        return self.W_in.shape[0]

    @property
    def d_mlp(self) -> int:
        return self.W_in.shape[2]

    @property
    def d_vocab(self) -> int:
        return self.W_E.shape[0]

    def to(self, device) -> ModelWeights:
        kw = {
            f.name: (
                getattr(self, f.name).to(device)
                if isinstance(getattr(self, f.name), torch.Tensor)
                else getattr(self, f.name)
            )
            for f in dataclasses.fields(self)
        }
        return ModelWeights(**kw)


NO_INPUT_BIAS_REASON = "the MLP has no input bias (Llama-style gated MLPs have no biases): input_bias is NaN, not 0"


def _ln_params(module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(weight, bias) of a (bridged) LayerNorm, or (None, None) when it has none."""
    if module is None:
        return None, None
    w = b = None
    for name, p in module.named_parameters():
        if name.endswith("weight") and p.ndim == 1:
            w = p.detach()
        elif name.endswith("bias") and p.ndim == 1:
            b = p.detach()
    return w, b


def _centre_residual(t: torch.Tensor, dim: int) -> float:
    """max |mean along dim| relative to max |t| (0 for a centred matrix)."""
    scale = t.abs().max().item() or 1.0
    return t.mean(dim).abs().max().item() / scale


def extract_weights(model, processed: bool | None = None, dtype: torch.dtype = torch.float64) -> ModelWeights:
    """Read the weights from a TransformerBridge and make sure they carry the processing asked for.

    ``processed=None`` takes ``model.neuron_lib_processed`` (set by ``models.load_model``). For a
    processed model the LN-folding and centring are verified and, where TransformerLens skipped
    something, done here (see the module docstring); the report lands in ``.processing``.
    """
    if processed is None:
        processed = bool(getattr(model, "neuron_lib_processed", False))
    with torch.no_grad():
        get = lambda name: getattr(model, name).detach().to("cpu", dtype).clone()  # noqa: E731
        try:
            b_in, no_bias = get("b_in"), None
        except Exception:  # bias-free MLPs (Llama): TransformerLens exposes no b_in
            W = get("W_in")
            b_in, no_bias = torch.zeros(W.shape[0], W.shape[2], dtype=dtype), NO_INPUT_BIAS_REASON
        w = ModelWeights(
            W_in=get("W_in"),
            b_in=b_in,
            W_out=get("W_out"),
            W_E=get("W_E"),
            W_U=get("W_U"),
            W_Q=get("W_Q"),
            W_K=get("W_K"),
            W_V=get("W_V"),
            W_O=get("W_O"),
        )
        try:
            W_pos = get("W_pos")
        except Exception:  # rotary models have none
            W_pos = None
        if getattr(model.cfg, "gated_mlp", False):
            w.W_gate = get("W_gate")
        w.no_input_bias = no_bias
        if w.W_K.shape[1] != w.W_Q.shape[1]:  # grouped-query attention: each query head reads its K/V group
            rep = w.W_Q.shape[1] // w.W_K.shape[1]
            w.W_K, w.W_V = w.W_K.repeat_interleave(rep, 1), w.W_V.repeat_interleave(rep, 1)
        rms = str(getattr(model.cfg, "normalization_type", "") or "").upper().startswith("RMS")
        L, D, N = w.W_in.shape
        if (
            w.W_out.shape != (L, N, D)
            or w.b_in.shape != (L, N)
            or w.W_U.shape[0] != D
            or w.W_E.shape[1] != D
            or (w.W_gate is not None and w.W_gate.shape != (L, D, N))
        ):
            raise NeuronLibError(
                f"unexpected weight shapes W_in {tuple(w.W_in.shape)}, W_out {tuple(w.W_out.shape)}, "
                f"b_in {tuple(w.b_in.shape)}"
                + (f", W_gate {tuple(w.W_gate.shape)}" if w.W_gate is not None else "")
                + ": unsupported architecture"
            )
        report: dict[str, Any] = {
            "requested": "processed" if processed else "raw",
            "transformer_lens_processed": bool(getattr(model, "_weights_processed", False)),
            "applied_by_neuron_lib": [],
        }
        if processed:
            ln2 = [_ln_params(getattr(model.blocks[l], "ln2", None)) for l in range(L)]
            unfolded = [
                l
                for l, (g, _) in enumerate(ln2)
                if g is not None and not torch.allclose(g.double(), torch.ones_like(g, dtype=torch.float64))
            ]
            if unfolded:
                # TL did not fold ln2 into W_in: do it (W_in ← diag(γ) W_in, b_in ← b_in + β W_in).
                for l in unfolded:
                    g, b = (t.to("cpu", dtype) if t is not None else None for t in ln2[l])
                    if b is not None:
                        w.b_in[l] += b @ w.W_in[l]
                    w.W_in[l] = g[:, None] * w.W_in[l]
                    if w.W_gate is not None:
                        w.W_gate[l] = g[:, None] * w.W_gate[l]
                report["applied_by_neuron_lib"].append(
                    f"fold ln2 into W_in/b_in{'/W_gate' if w.W_gate is not None else ''} for layers {unfolded}"
                )
            ln1 = [_ln_params(getattr(model.blocks[l], "ln1", None)) for l in range(L)]
            unfolded1 = [
                l
                for l, (g, _) in enumerate(ln1)
                if g is not None and not torch.allclose(g.double(), torch.ones_like(g, dtype=torch.float64))
            ]
            for l in unfolded1:  # W_Q/W_K/W_V ← diag(γ₁) W (their biases are not used here)
                g = ln1[l][0].to("cpu", dtype)
                for attr in ("W_Q", "W_K", "W_V"):
                    getattr(w, attr)[l] = g[None, :, None] * getattr(w, attr)[l]
            if unfolded1:
                report["applied_by_neuron_lib"].append(f"fold ln1 gain into W_Q/W_K/W_V for layers {unfolded1}")
            gf, _ = _ln_params(getattr(model, "ln_final", None))
            if gf is not None and not torch.allclose(gf.double(), torch.ones_like(gf, dtype=torch.float64)):
                w.W_U = gf.to("cpu", dtype)[:, None] * w.W_U
                report["applied_by_neuron_lib"].append("fold ln_final gain into W_U")
            # (matrix, dim to centre along, description); W_U is centred along d_model by LN folding too
            checks = [
                ("W_in", 1, "W_in along d_model"),
                ("W_out", -1, "W_out along d_model"),
                ("W_E", -1, "W_E along d_model"),
                ("W_O", -1, "W_O along d_model"),
                ("W_Q", 2, "W_Q along d_model"),
                ("W_K", 2, "W_K along d_model"),
                ("W_V", 2, "W_V along d_model"),
                ("W_U", 0, "W_U along d_model"),
                ("W_U", -1, "W_U across vocab"),
            ]
            residuals = {}
            if w.W_gate is not None:
                checks.insert(1, ("W_gate", 1, "W_gate along d_model"))
            if rms:
                # RMSNorm does not subtract the mean: centring along d_model would change the function; only the
                # unembedding's centring across the vocabulary (softmax-invariant) applies
                checks = [c for c in checks if c[2] == "W_U across vocab"]
                report["rmsnorm"] = "no centring along d_model (RMSNorm reads the mean direction)"
            for attr, dim, desc in checks:
                t = getattr(w, attr)
                r = _centre_residual(t, dim)
                if r > _CENTRE_TOL:
                    setattr(w, attr, t - t.mean(dim, keepdim=True))
                    report["applied_by_neuron_lib"].append(f"centre {desc}")
                residuals[desc] = r
            if W_pos is not None:
                residuals["W_pos along d_model"] = _centre_residual(W_pos, -1)
            report["centring_residual_before"] = residuals
            report["ln_weights_are_identity"] = not unfolded and not unfolded1
    w.processing = report
    return w


# ====================================================================== numeric helpers
def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm (a zero row stays zero, so its cosines are 0)."""
    norm = x.norm(dim=-1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


def _progress(iterable: Iterable, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False)


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def cosine_summary(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    chunk_size: int = 256,
    exclude_self: bool = False,
    progress: bool = False,
    desc: str = "",
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """For each query row, summarise its cosines with every key row.

    ``queries`` [Q, D], ``keys`` [K, D]. Returns ``top_value/top_index`` and ``bottom_value/bottom_index``
    [Q, k'] (k' = min(k, number of partners); top descending, bottom ascending), ``hist`` [Q, 101]
    (paper's binning on linspace(−1, 1, 100)), and ``mean/var/skew/kurt`` [Q] float64. With
    ``exclude_self`` query i is not compared with key i (same flat index).
    """
    device = torch.device(device)
    q_unit = unit_rows(queries.to(torch.float64))
    k_unit = unit_rows(keys.to(torch.float64)).to(device)
    Q, K = q_unit.shape[0], k_unit.shape[0]
    k = min(k, K - (1 if exclude_self else 0))
    edges = cosine_edges().to(device)
    out: dict[str, list[torch.Tensor]] = {
        key: []
        for key in ("top_value", "top_index", "bottom_value", "bottom_index", "hist", "mean", "var", "skew", "kurt")
    }
    for start, end in _progress(_chunks(Q, chunk_size), progress, desc):
        cos = q_unit[start:end].to(device) @ k_unit.T  # [c, K]
        exclude = None
        if exclude_self:
            rows = torch.arange(end - start, device=device)
            exclude = torch.zeros_like(cos, dtype=torch.bool)
            cols = torch.arange(start, end, device=device)
            inside = cols < K
            exclude[rows[inside], cols[inside]] = True
        top_src = cos if exclude is None else cos.masked_fill(exclude, float("-inf"))
        bot_src = cos if exclude is None else cos.masked_fill(exclude, float("inf"))
        tv, ti = torch.topk(top_src, k, dim=1, largest=True, sorted=True)
        bv, bi = torch.topk(bot_src, k, dim=1, largest=False, sorted=True)
        if exclude is None and fused.usable(cos):  # one numba sweep (the vocabulary blocks: 46k x 49k on SmolLM2)
            mean, var, skew, kurt, hist = fused.row_moments_hist(cos, edges)
        else:
            mean, var, skew, kurt = row_moments(cos, exclude)
            hist = histogram_counts(cos, edges, exclude=exclude)
        for key, val in (
            ("top_value", tv),
            ("top_index", ti),
            ("bottom_value", bv),
            ("bottom_index", bi),
            ("hist", hist),
            ("mean", mean),
            ("var", var),
            ("skew", skew),
            ("kurt", kurt),
        ):
            out[key].append(val.cpu())
        del cos, top_src, bot_src, exclude
    res = {key: torch.cat(vals) for key, vals in out.items()}
    for key in ("top_value", "bottom_value"):
        res[key] = res[key].float()
    for key in ("top_index", "bottom_index", "hist"):
        res[key] = res[key].to(torch.int32)
    return res


# ====================================================================== the four statistics
def neuron_stats(weights: ModelWeights) -> pandas.DataFrame:  # noqa: F821
    """Per-neuron weight columns (flat order): layer, neuron, w_in_norm, input_bias, w_out_norm, in_out_sim, l2_penalty."""
    import pandas as pd

    L, N = weights.n_layers, weights.d_mlp
    vecs = neuron_vectors(weights)
    w_in, w_out = vecs["in"], vecs["out"]  # rows = neurons; gated: "in" is the gate
    in_norm, out_norm = w_in.norm(dim=1), w_out.norm(dim=1)
    sim = (unit_rows(w_in) * unit_rows(w_out)).sum(1)
    bias = weights.b_in.reshape(-1).numpy()
    if weights.no_input_bias:
        bias = np.full(L * N, np.nan)
    penalty = in_norm.square() + out_norm.square()
    gated = {}
    if weights.W_gate is not None:
        up = vecs["up"]
        up_norm = up.norm(dim=1)
        penalty = penalty + up_norm.square()
        gated = {
            "w_gate_norm": in_norm.numpy(),
            "w_up_norm": up_norm.numpy(),
            "in_out_sim_gate": sim.numpy(),
            "in_out_sim_up": (unit_rows(up) * unit_rows(w_out)).sum(1).numpy(),
        }
    return pd.DataFrame(
        {
            "layer": torch.arange(L).repeat_interleave(N).numpy(),
            "neuron": torch.arange(N).repeat(L).numpy(),
            "w_in_norm": in_norm.numpy(),
            "input_bias": bias,
            "w_out_norm": out_norm.numpy(),
            "in_out_sim": sim.numpy(),
            "l2_penalty": penalty.numpy(),
            **gated,
        }
    )


def neuron_vectors(weights: ModelWeights) -> dict[str, torch.Tensor]:
    """w_in and w_out of every neuron as rows in flat order: {'in': [L·N, D], 'out': [L·N, D]}.

    Gated MLPs: 'in' is the gate's w_gate (what hook_pre reads) and 'up' the up projection's w_up is added."""
    L, N = weights.n_layers, weights.d_mlp
    rows = lambda W: W.transpose(1, 2).reshape(L * N, -1)  # noqa: E731
    if weights.W_gate is not None:
        return {"in": rows(weights.W_gate), "up": rows(weights.W_in), "out": weights.W_out.reshape(L * N, -1)}
    return {"in": rows(weights.W_in), "out": weights.W_out.reshape(L * N, -1)}


def vocab_composition(
    weights: ModelWeights,
    k: int = 100,
    chunk_size: int = 256,
    progress: bool = False,
    device="cpu",
    types_: Iterable[str] = VOCAB_TYPES,
) -> dict[str, dict[str, torch.Tensor]]:
    """Cosines of w_in / w_out with every token's embedding row W_E[v] (E_*) and unembedding column W_U[:, v] (U_*)."""
    L, N = weights.n_layers, weights.d_mlp
    vecs = neuron_vectors(weights)
    tokens = {"E": weights.W_E, "U": weights.W_U.T}
    result = {}
    for t in types_:
        side_tokens, side_neuron = t.split("_")
        summ = cosine_summary(
            vecs[side_neuron], tokens[side_tokens], k, chunk_size, progress=progress, desc=f"vocab {t}", device=device
        )
        result[t] = {key: v.reshape(L, N, *v.shape[1:]) for key, v in summ.items()}
    return result


def vocab_kurtosis_null(
    weights: ModelWeights, n_samples: int = 1000, seed: int = 0, chunk_size: int = 256, device="cpu"
) -> pandas.DataFrame:  # noqa: F821
    """The calibrated null of ``vocab_kurt`` (criteria.NULL_QUANTILE): per layer, the vocabulary kurtosis of
    ``n_samples`` random directions drawn like that layer's w_out rows, against the model's own W_U.

    Draw (``torch.Generator`` seeded with ``seed``): w = gᵀ (W_out[l] − mean of its rows) / √d_mlp with
    g ~ N(0, I_{d_mlp}), a Gaussian with the layer's w_out covariance, so the null keeps the layer's anisotropy
    and the unembedding's; the layer's isotropic twin (w ~ N(0, I_{d_model})) is reported beside it. Each w is
    summarised by ``cosine_summary`` exactly as a neuron's U_out composition is (cosines with every W_U[:, v],
    non-excess kurtosis), so the null and ``vocab_kurt`` are one formula.

    Returns one row per layer: ``layer, n_samples, seed, null_mean, null_q50, null_q99, null_q999, null_max,
    isotropic_q99``.
    """
    import pandas as pd

    gen = torch.Generator().manual_seed(int(seed))
    tokens = weights.W_U.T  # [d_vocab, d_model]
    L, N, D = weights.W_out.shape

    def kurtosis(directions: torch.Tensor) -> torch.Tensor:  # [n, D] -> [n] float64
        return cosine_summary(directions, tokens, 1, chunk_size, device=device)["kurt"]

    rows = []
    for layer in range(L):
        W = weights.W_out[layer].to(torch.float64)
        g = torch.randn(n_samples, N, generator=gen, dtype=torch.float64)
        k = kurtosis(g @ (W - W.mean(0, keepdim=True)) / math.sqrt(N))
        iso = kurtosis(torch.randn(n_samples, D, generator=gen, dtype=torch.float64))
        q = torch.quantile(k, torch.tensor([0.5, 0.99, 0.999], dtype=torch.float64))
        rows.append(
            {
                "layer": layer,
                "n_samples": n_samples,
                "seed": int(seed),
                "null_mean": float(k.mean()),
                "null_q50": float(q[0]),
                "null_q99": float(q[1]),
                "null_q999": float(q[2]),
                "null_max": float(k.max()),
                "isotropic_q99": float(torch.quantile(iso, 0.99)),
            }
        )
    return pd.DataFrame(rows)


def neuron_composition(
    weights: ModelWeights,
    k: int = 20,
    chunk_size: int = 256,
    progress: bool = False,
    device="cpu",
    types_: Iterable[str] = NEURON_TYPES,
) -> dict[str, dict[str, torch.Tensor]]:
    """Cosines of each neuron's w_in/w_out with every neuron's w_in/w_out (all layers), self pair excluded."""
    L, N = weights.n_layers, weights.d_mlp
    vecs = neuron_vectors(weights)
    result = {}
    for t in types_:
        mine, theirs = t.split("_")
        summ = cosine_summary(
            vecs[mine],
            vecs[theirs],
            k,
            chunk_size,
            exclude_self=True,
            progress=progress,
            desc=f"neurons {t}",
            device=device,
        )
        result[t] = {key: v.reshape(L, N, *v.shape[1:]) for key, v in summ.items()}
    return result


def head_composition(
    weights: ModelWeights, chunk_size: int = 1024, progress: bool = False, device="cpu"
) -> dict[str, torch.Tensor]:
    """Neuron ↔ attention-head composition scores [L_neuron, N, L_attn, H] (definitions in the module docstring).

    Uses ‖M x‖² = yᵀ G y with y the d_head-dimensional factor and G a d_head × d_head Gram matrix, so
    no d_model × d_model matrix is formed: ‖xᵀ W_Q W_Kᵀ‖² = (xᵀW_Q)(W_KᵀW_K)(W_Qᵀx), etc.
    """
    device = torch.device(device)
    L, N = weights.n_layers, weights.d_mlp
    vecs = {s: unit_rows(v) for s, v in neuron_vectors(weights).items()}
    WQ, WK, WV, WO = (t.to(device) for t in (weights.W_Q, weights.W_K, weights.W_V, weights.W_O))
    gram = lambda A: A.transpose(-1, -2) @ A  # noqa: E731  [.., dh, dh] for A [.., D, dh]
    G_Q, G_K, G_V = gram(WQ), gram(WK), gram(WV)
    G_O = WO @ WO.transpose(-1, -2)  # [La, H, dh, dh]
    fro_qk = torch.einsum("lhij,lhji->lh", G_Q, G_K).clamp_min(0).sqrt()  # ‖W_Q W_Kᵀ‖_F
    fro_ov = torch.einsum("lhij,lhji->lh", G_V, G_O).clamp_min(0).sqrt()  # ‖W_V W_O‖_F
    # (neuron side, factor applied to x [D→dh], Gram of the other factor, Frobenius norm)
    specs = {
        "neuron_out_to_head_q": ("out", WQ, G_K, fro_qk),
        "neuron_out_to_head_k": ("out", WK, G_Q, fro_qk),
        "neuron_out_to_head_v": ("out", WV, G_O, fro_ov),
        "head_out_to_neuron_in": ("in", WO.transpose(-1, -2), G_V, fro_ov),
    }
    out = {}
    for name, (side, factor, G, fro) in specs.items():
        parts = []
        for start, end in _progress(_chunks(L * N, chunk_size), progress, f"heads {name}"):
            x = vecs[side][start:end].to(device)
            y = torch.einsum("md,lhde->mlhe", x, factor)
            sq = (torch.einsum("mlhe,lhef->mlhf", y, G) * y).sum(-1).clamp_min(0)
            parts.append((sq.sqrt() / torch.where(fro > 0, fro, torch.ones_like(fro))).float().cpu())
        out[name] = torch.cat(parts).reshape(L, N, *fro.shape)
    return out


# ====================================================================== runner
def _expected_files(cfg: WeightsConfig) -> list[str]:
    files = [artifacts.WEIGHT_STATS_FILE]
    for wanted, name in (
        (cfg.vocab, artifacts.WEIGHT_VOCAB_FILE),
        (cfg.neurons, artifacts.WEIGHT_NEURON_FILE),
        (cfg.heads, artifacts.WEIGHT_HEAD_FILE),
        (cfg.vocab and cfg.vocab_null_samples > 0, artifacts.WEIGHT_VOCAB_NULL_FILE),
    ):
        if wanted:
            files.append(name)
    return files


def _flatten(prefix_dict: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{t}.{key}": v for t, d in prefix_dict.items() for key, v in d.items()}


def run_weights(cfg: WeightsConfig, model=None) -> stage.StageResult:
    """Compute and write every weight statistic for ``cfg.model`` into ``artifacts.weights_summary``.

    ``model`` may be passed (already loaded with the matching ``process_weights``) to avoid reloading; then the
    statistics are always recomputed. Otherwise a finished run with the same identity is reused unless
    ``cfg.overwrite``.
    """
    from neuron_lib.models import load_model, model_info

    cfg.validate()
    source_name = getattr(getattr(model, "neuron_lib_source", None), "name", None)
    name = model_output_name(source_name or cfg.model)
    out_dir = artifacts.weights_summary(name, cfg.raw_weights)
    fingerprint = config_fingerprint(cfg.identity())
    state = stage.folder_state(out_dir, STAGE, fingerprint, lambda manifest: manifest.get("files", []))
    if not stage.must_run(out_dir, state, cfg.overwrite, STAGE) and model is None:
        stage.log(STAGE, f"{out_dir} is up to date (skipped: same configuration)")
        return stage.StageResult(STAGE, "skipped", {"folder": str(out_dir)})
    device = pick_device(cfg.device)
    if model is None:
        model = load_model(cfg.model, device="cpu", process_weights=not cfg.raw_weights)
    info = {**model_info(model), "model": name}
    weights = extract_weights(model, processed=not cfg.raw_weights)
    L, N = weights.n_layers, weights.d_mlp
    stage.log(
        STAGE,
        f"plan: {name} ({L} layers x {N} neurons, vocab {weights.d_vocab}); parts: "
        f"{', '.join(_expected_files(cfg))}; float64 in chunks of {cfg.chunk_size} neurons",
    )

    rows = cfg.block_rows(weights.d_vocab)
    if cfg.vocab:
        stage.log(
            STAGE,
            f"  vocabulary composition ({', '.join(cfg.vocab_type_list())}) in blocks of {rows} neurons x "
            f"{weights.d_vocab} tokens: ≈ {human_bytes(6 * 8 * rows * weights.d_vocab)} at once (never the dense "
            f"{L * N} x {weights.d_vocab} matrix: {human_bytes(8 * L * N * weights.d_vocab)} in float64)"
            + (f"; budget --max-memory {cfg.max_memory}" if cfg.max_memory else ""),
        )
    stats = neuron_stats(weights)
    tensors_meta = {"self_pair": SELF_PAIR_POLICY, "model": info["model"]}
    if cfg.vocab:
        vocab = vocab_composition(weights, cfg.vocab_top_k, rows, cfg.progress, device, types_=cfg.vocab_type_list())
        if "U_out" in vocab:
            for col, key in zip(VOCAB_MOMENT_COLUMNS, ("mean", "var", "skew", "kurt")):
                stats[col] = vocab["U_out"][key].reshape(-1).numpy()
        save_tensors_atomic(
            out_dir / artifacts.WEIGHT_VOCAB_FILE, {**_flatten(vocab), "hist_edges": cosine_edges()}, tensors_meta
        )
        del vocab
    null_meta = None
    if cfg.vocab and cfg.vocab_null_samples:
        null = vocab_kurtosis_null(weights, cfg.vocab_null_samples, cfg.null_seed, rows, device)
        save_dataframe_atomic(null, (out_dir / artifacts.WEIGHT_VOCAB_NULL_FILE).with_suffix(""), formats=("csv",))
        null_meta = {
            "n_samples": cfg.vocab_null_samples,
            "seed": cfg.null_seed,
            "draw": "per layer: w = g^T (W_out[l] - mean of rows) / sqrt(d_mlp), g ~ N(0, I) (torch.Generator(seed), "
            "layers in order, each followed by its isotropic twin N(0, I_d_model)); kurtosis of cos(w, W_U[:, v]) "
            "over the vocabulary, non-excess, as vocab_kurt",
            "quantile": "torch.quantile (linear interpolation)",
        }
        stage.log(
            STAGE,
            f"  vocab-kurtosis null ({cfg.vocab_null_samples} random w_out directions per layer, seed "
            f"{cfg.null_seed}): q99 per layer {', '.join(f'{v:.2f}' for v in null['null_q99'])} (the paper's fixed "
            f"threshold: 10)",
        )
    if cfg.neurons:
        comp = neuron_composition(weights, cfg.neuron_top_k, cfg.chunk_size, cfg.progress, device)
        save_tensors_atomic(
            out_dir / artifacts.WEIGHT_NEURON_FILE, {**_flatten(comp), "hist_edges": cosine_edges()}, tensors_meta
        )
        del comp
    if cfg.heads:
        heads = head_composition(weights, max(cfg.chunk_size, 256), cfg.progress, device)
        save_tensors_atomic(out_dir / artifacts.WEIGHT_HEAD_FILE, heads, tensors_meta)
    save_dataframe_atomic(stats, (out_dir / artifacts.WEIGHT_STATS_FILE).with_suffix(""), formats=("csv",))

    manifest = make_manifest(
        STAGE,
        cfg,
        **info,
        config_fingerprint=fingerprint,
        weight_processing={
            "processed": not cfg.raw_weights,
            "options": (
                {"fold_ln": True, "center_writing_weights": True, "center_unembed": True, "fold_value_biases": True}
                if not cfg.raw_weights
                else None
            ),
            "via": "TransformerBridge.enable_compatibility_mode()" if not cfg.raw_weights else "none (raw HF weights)",
            **weights.processing,
        },
        self_pair=SELF_PAIR_POLICY,
        **({"vocab_null": null_meta} if null_meta else {}),
        **({"input_bias_missing": weights.no_input_bias} if weights.no_input_bias else {}),
        **({"gated_definitions": GATED_DEFINITIONS} if weights.W_gate is not None else {}),
        hist_edges="linspace(-1, 1, 100), 101 bins, bin i: edges[i-1] < v <= edges[i]",
        moments="population mean/var, skew=mean(z^3), kurt=mean(z^4) (non-excess)",
        head_composition_names=ORIGINAL_HEAD_NAMES,
        vocab_top_k=min(cfg.vocab_top_k, weights.d_vocab),
        neuron_top_k=min(cfg.neuron_top_k, L * N - 1),
        files=_expected_files(cfg),
    )
    write_manifest(out_dir, manifest)
    stage.log(STAGE, f"wrote {out_dir}")
    return stage.StageResult(
        STAGE, "done", {"folder": str(out_dir), **{f: str(out_dir / f) for f in _expected_files(cfg)}}
    )


main = stage.cli(WeightsConfig, run_weights, "python -m neuron_lib.weights", __doc__.split("\n\n")[0])


if __name__ == "__main__":
    run_cli(main)
