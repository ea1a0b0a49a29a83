"""Stream MLP activations of a model over a token dataset, batch by batch.

Yields pre/post activations of all layers as ``[layers, d_mlp, tokens]`` after the paper's token
filter (drop BOS/pad and newline tokens; configurable). Logits are never computed: hooks copy each layer's
activations into one preallocated [layers, batch, pos, d_mlp] buffer per hook kind (no activation cache, no
stacking), and the forward pass is stopped (TransformerLens' ``StopAtLayerException``) right after the last
block's ``mlp.hook_post``, before the final norm and the unembedding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from neuron_lib.common import NeuronLibError


@dataclasses.dataclass
class TokenFilter:
    """Which token positions statistics ignore. Paper: pad/BOS (same id in GPT-2) and the newline token."""

    drop_bos: bool = True
    drop_newline: bool = True
    extra_drop_ids: tuple[int, ...] = ()

    def drop_ids(self, tokenizer) -> list[int]:
        ids: set[int] = set(self.extra_drop_ids)
        if self.drop_bos:
            for tid in (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id):
                if tid is not None:
                    ids.add(int(tid))
            # every special token (SmolLM2: <|endoftext|>, the document separator and our BOS, is neither its
            # bos nor its eos); GPT-2 and the zoo have only <|endoftext|>, so their filter is unchanged
            ids.update(int(t) for t in getattr(tokenizer, "all_special_ids", []) or [])
        if self.drop_newline:
            newline = tokenizer.encode("\n", add_special_tokens=False)
            if len(newline) == 1:
                ids.add(int(newline[0]))
        return sorted(ids)


def drop_ids_for(tokenizer, keep_bos: bool, drop_newline: bool) -> list[int]:
    """Token ids a statistics stage drops: BOS/EOS/pad unless ``keep_bos``, plus the newline if ``drop_newline``."""
    return TokenFilter(drop_bos=not keep_bos, drop_newline=drop_newline).drop_ids(tokenizer)


@dataclasses.dataclass
class ActivationBatch:
    """One batch of filtered activations. ``flat_index`` = row·ctx + pos in the dataset (paper's layout)."""

    pre: Float[torch.Tensor, "layers d_mlp tokens"] | None
    post: Float[torch.Tensor, "layers d_mlp tokens"] | None
    token_ids: Int[torch.Tensor, " tokens"]
    flat_index: Int[torch.Tensor, " tokens"]
    keep: Bool[torch.Tensor, "batch pos"]
    rows: tuple[int, int]  # [start, end) dataset rows of this batch
    # pre-activations at the positions the filter dropped (only with ``want_dropped_pre``; row-major order)
    dropped_pre: Float[torch.Tensor, "layers d_mlp dropped"] | None = None
    # gated MLPs only (``want_pre_linear``): the up projection ``hook_pre_linear`` (``pre`` is the gate's)
    pre_linear: Float[torch.Tensor, "layers d_mlp tokens"] | None = None


def tokens_tensor(dataset, start: int, end: int) -> Int[torch.Tensor, "batch pos"]:
    rows = dataset[start:end]["tokens"]
    return rows if isinstance(rows, torch.Tensor) else torch.tensor(rows, dtype=torch.long)


#: Which rows a token cap takes (``select_rows``; the ``--rows`` option of summary and explain).
ROW_SAMPLING = ("spread", "first")


def check_row_sampling(how: str) -> str:
    if how not in ROW_SAMPLING:
        raise NeuronLibError(f"--rows takes {' or '.join(ROW_SAMPLING)}, not {how!r}")
    return how


def select_rows(n_total: int, n_rows: int, how: str = "spread") -> Int[np.ndarray, " rows"]:
    """Dataset row ids a token cap analyses: ``first`` = 0..n_rows−1; ``spread`` = n_rows ids evenly spaced over
    all ``n_total`` rows (first and last included), so that a dataset sorted by subset keeps every subset. Sorted,
    unique; all rows when ``n_rows ≥ n_total``."""
    check_row_sampling(how)
    if n_rows >= n_total or how == "first":
        return np.arange(min(n_rows, n_total))
    return np.unique(np.linspace(0, n_total - 1, n_rows).round().astype(np.int64))


def n_rows_for_tokens(dataset, max_tokens: int | None) -> int:
    """Rows needed for ``max_tokens`` tokens (all rows if None); too small a dataset is a clear error."""
    ctx = len(dataset[0]["tokens"])
    if max_tokens is None:
        return len(dataset)
    needed = -(-int(max_tokens) // ctx)
    if needed > len(dataset):
        raise NeuronLibError(
            f"the token dataset has {len(dataset)} rows x {ctx} = {len(dataset) * ctx:,} tokens, fewer than the "
            f"{max_tokens:,} requested; lower --max-tokens or build a bigger dataset (python -m neuron_lib.corpus)."
        )
    return needed


@torch.no_grad()
def mlp_activations(
    model,
    tokens: Int[torch.Tensor, "batch pos"],
    want_pre: bool,
    want_post: bool,
    want_pre_linear: bool = False,
    reuse: dict[str, torch.Tensor] | None = None,
):
    """Run ``tokens`` through all blocks (no unembedding) and return stacked [layers, batch, pos, d_mlp] tensors.

    Gated MLPs (``models.is_gated``): ``pre`` is the gate's pre-activation (``hook_pre``), ``post`` the product
    act(gate) · up (``hook_post``); ``want_pre_linear`` adds the up projection (``hook_pre_linear``) as a third
    value (only then is a triple returned). ``reuse``: a dict the caller keeps between calls; the buffers in it
    are written again when their shape fits (so the returned tensors are overwritten by the next call: callers
    that pass it copy what they keep)."""
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    n_layers = model.cfg.n_layers
    kinds = [k for k, want in (("pre", want_pre), ("post", want_post), ("pre_linear", want_pre_linear)) if want]
    if want_pre_linear and not getattr(model.cfg, "gated_mlp", False):
        raise NeuronLibError("hook_pre_linear exists only in gated MLPs (Llama-style); this model has a plain MLP")
    tokens = tokens.to(model.cfg.device)
    kept = reuse if reuse is not None else {}
    buffers: dict[str, torch.Tensor] = {}

    def capture(kind: str, layer: int):
        def hook(tensor: torch.Tensor, hook) -> torch.Tensor:  # [batch, pos, d_mlp] -> buffers[kind][layer]
            if kind not in buffers:
                old = kept.get(kind)
                fits = old is not None and old.shape[1:] == tensor.shape and old.dtype == tensor.dtype
                buffers[kind] = kept[kind] = old if fits else tensor.new_empty((n_layers, *tensor.shape))
            buffers[kind][layer].copy_(tensor)
            return tensor

        return hook

    def stop(tensor: torch.Tensor, hook):  # after the last block's MLP: no final norm, no unembedding
        raise StopAtLayerException(tensor)

    hooks = [(f"blocks.{l}.mlp.hook_{k}", capture(k, l)) for l in range(n_layers) for k in kinds]
    hooks.append((f"blocks.{n_layers - 1}.mlp.hook_post", stop))  # fires after hook_pre / hook_pre_linear too
    model.run_with_hooks(tokens, fwd_hooks=hooks)
    missing = [k for k in kinds if k not in buffers]
    if missing:
        raise NeuronLibError(f"the model fired no mlp.hook_{missing[0]}: unsupported architecture for streaming")
    pre, post = buffers.get("pre"), buffers.get("post")
    if want_pre_linear:
        return pre, post, buffers["pre_linear"]
    return pre, post


def iter_mlp_activations(
    model,
    dataset,
    batch_size: int,
    drop_ids: list[int] | None = None,
    want_pre: bool = False,
    want_post: bool = True,
    start_row: int = 0,
    end_row: int | None = None,
    dtype: torch.dtype = torch.float32,
    want_dropped_pre: bool = False,
    want_pre_linear: bool = False,
) -> Iterator[ActivationBatch]:
    """Yield filtered activations ``[layers, d_mlp, tokens]`` for dataset rows [start_row, end_row).

    ``want_dropped_pre`` also yields the pre-activations of the dropped positions (``dropped_pre``), for statistics
    that follow the paper's convention of keeping every position; ``want_pre_linear`` (gated MLPs) the up
    projection (``pre_linear``).
    """
    end_row = len(dataset) if end_row is None else end_row
    drop = torch.tensor(sorted(drop_ids or []), dtype=torch.long)
    reuse: dict[str, torch.Tensor] = {}  # activation buffers kept between batches (what is yielded is copied out)
    for start in range(start_row, end_row, batch_size):
        end = min(start + batch_size, end_row)
        tokens = tokens_tensor(dataset, start, end)
        keep = ~torch.isin(tokens, drop) if len(drop) else torch.ones_like(tokens, dtype=torch.bool)
        acts = mlp_activations(model, tokens, want_pre, want_post, want_pre_linear, reuse=reuse)
        pre, post = acts[0], acts[1]
        pre_linear = acts[2] if want_pre_linear else None
        keep_dev = keep.to(pre.device if pre is not None else post.device)
        # [L, B, P, N] -> [L, N, kept tokens], sequence-major token order as in the paper
        select = lambda acts, keep=keep_dev: acts[:, keep].transpose(1, 2).to(dtype) if acts is not None else None  # noqa: E731
        ctx = tokens.shape[1]
        flat = (torch.arange(start, end)[:, None] * ctx + torch.arange(ctx)[None, :])[keep]
        dropped = pre[:, ~keep_dev].transpose(1, 2).to(dtype) if want_dropped_pre and pre is not None else None
        yield ActivationBatch(
            select(pre), select(post), tokens[keep], flat, keep, (start, end), dropped, select(pre_linear)
        )
