"""Prompt sets and seeded generation with our own sampling loop (shared by ``prompts`` and ``perturb``).

A prompt set is a CSV with columns ``prompts,number_of_new_tokens,num_samples`` (one row per prompt, e.g.
``"I think love is ",20,5``); :func:`read_prompts` checks every row and names the bad one.

:func:`generate` is a plain loop over full forward passes of a TransformerBridge on token ids (no KV cache, no
``model.generate``): the input of step ``t`` is the prompt plus the ``t`` tokens generated so far, the next
token is drawn from the last position's logits:

- ``temperature == 0``: greedy (``argmax``; ties go to the lowest token id);
- otherwise ``softmax(logits / temperature)`` restricted to the ``top_k`` largest logits (``top_k = 0``: all),
  sampled with ``torch.multinomial`` on a CPU ``torch.Generator`` seeded from ``(seed, prompt_idx)``
  (:func:`prompt_generator`), so one prompt's samples do not depend on the other prompts, the batch size or the
  device.

Token ids: the prompt is encoded with ``tokenizer.encode(text, add_special_tokens=False)`` — exactly the
characters of the CSV cell, a trailing space included — and, when ``prepend_bos`` (the default), the
tokenizer's BOS id is put in front (the zoo's token datasets start every row with BOS, so the models were
trained that way). Nothing else is added; generated tokens are never stopped at EOS (``number_of_new_tokens`` are
always drawn).

Hooks: ``fwd_hooks`` (TransformerLens ``(name, fn)`` pairs, e.g. a zero ablation) are attached with
``model.hooks(...)`` for the duration of the call and removed afterwards, also when the loop raises.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from neuron_lib.common import NeuronLibError

PROMPT_COLUMNS = ("prompts", "number_of_new_tokens", "num_samples")


@dataclasses.dataclass(frozen=True)
class Prompt:
    text: str
    n_new: int  # number_of_new_tokens
    n_samples: int  # num_samples


def read_prompts(path: str | Path) -> list[Prompt]:
    """The rows of a prompt CSV; a missing column, a non-integer or non-positive count is an error naming the row
    (rows count from 1, the header not included; the file line is row + 1)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise NeuronLibError(f"prompt file {path} does not exist")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise NeuronLibError(f"cannot read the prompt CSV {path}: {exc}") from exc
    missing = [c for c in PROMPT_COLUMNS if c not in df.columns]
    if missing:
        raise NeuronLibError(
            f"prompt CSV {path} lacks column(s) {missing}; its header must be {','.join(PROMPT_COLUMNS)} "
            f"(found {list(df.columns)})"
        )
    if len(df) == 0:
        raise NeuronLibError(f"prompt CSV {path} has no rows")
    prompts = []
    for i, row in enumerate(df.itertuples(index=False), start=1):
        values = row._asdict()
        counts = {}
        for col in PROMPT_COLUMNS[1:]:
            text = str(values[col]).strip()
            try:
                counts[col] = int(text)
            except ValueError:
                counts[col] = None
            if counts[col] is None or counts[col] < 1:
                raise NeuronLibError(
                    f"prompt CSV {path} row {i} (line {i + 1}): {col} must be a positive integer, got {text!r}"
                )
        prompts.append(Prompt(str(values["prompts"]), counts["number_of_new_tokens"], counts["num_samples"]))
    return prompts


def encode_prompt(tokenizer, text: str, prepend_bos: bool = True) -> list[int]:
    """The prompt's token ids: the text as it is, BOS first when ``prepend_bos`` (see the module docstring)."""
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if prepend_bos:
        if tokenizer.bos_token_id is None:
            raise NeuronLibError("the tokenizer has no BOS token; pass --no-prepend-bos")
        ids = [int(tokenizer.bos_token_id), *ids]
    if not ids:
        raise NeuronLibError(f"prompt {text!r} encodes to no tokens (and no BOS is prepended)")
    return ids


def prompt_generator(seed: int, prompt_idx: int) -> torch.Generator:
    """The CPU generator of one prompt's samples: seeded from ``(seed, prompt_idx)`` by numpy's SeedSequence."""
    state = int(np.random.SeedSequence([int(seed), int(prompt_idx)]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(state & 0x7FFF_FFFF_FFFF_FFFF)


def next_tokens(
    logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row of ``logits`` [batch, vocab] (greedy when ``temperature == 0``)."""
    logits = logits.detach().float().cpu()
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / float(temperature)
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(int(top_k), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclasses.dataclass
class Generation:
    """``n_samples`` continuations of one prompt."""

    prompt_ids: list[int]
    tokens: torch.Tensor  # [n_samples, n_new] generated ids
    # [n_new, n_samples, n_layers, d_mlp] bool: hook_post > threshold at the position that predicted each token
    active: torch.Tensor | None


def generate(
    model,
    prompt_ids: Sequence[int],
    n_new: int,
    n_samples: int,
    temperature: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    record_threshold: float | None = None,
    fwd_hooks: Sequence[tuple[str, Callable]] = (),
) -> Generation:
    """Generate ``n_new`` tokens for ``n_samples`` copies of ``prompt_ids`` (one batch); with
    ``record_threshold`` also record which MLP neurons (``blocks.{l}.mlp.hook_post``) are above it at the last
    position of every step. ``fwd_hooks`` run before the recording hooks (so recording sees their effect)."""
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    if n_ctx and len(prompt_ids) + n_new > n_ctx:
        raise NeuronLibError(
            f"a prompt of {len(prompt_ids)} tokens plus {n_new} new tokens exceeds the model's context of {n_ctx}"
        )
    device = model.cfg.device
    tokens = torch.tensor([list(prompt_ids)] * n_samples, dtype=torch.long, device=device)
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    active = torch.zeros(n_new, n_samples, n_layers, d_mlp, dtype=torch.bool) if record_threshold is not None else None
    step = [0]
    hooks = list(fwd_hooks)
    if active is not None:

        def recorder(layer):
            def hook(act, hook=None):
                active[step[0], :, layer] = (act[:, -1, :] > record_threshold).cpu()

            return hook

        hooks += [(f"blocks.{l}.mlp.hook_post", recorder(l)) for l in range(n_layers)]
    out = torch.empty(n_samples, n_new, dtype=torch.long)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        for t in range(n_new):
            step[0] = t
            logits = model(tokens)[:, -1, :]
            nxt = next_tokens(logits, temperature, top_k, generator)
            out[:, t] = nxt
            tokens = torch.cat([tokens, nxt.to(device)[:, None]], dim=1)
    return Generation(list(prompt_ids), out, active)


def zero_ablation_hooks(neuron_ids: Sequence[int] | np.ndarray, d_mlp: int) -> list[tuple[str, Callable]]:
    """Hooks that set the chosen neurons' ``hook_post`` to 0 at every position (ids = layer · d_mlp + dim)."""
    ids = np.asarray(neuron_ids, dtype=np.int64)
    hooks = []
    for layer in np.unique(ids // d_mlp):
        dims = torch.as_tensor(np.sort(ids[ids // d_mlp == layer] % d_mlp))

        def hook(act, hook=None, dims=dims):
            act = act.clone()
            act[..., dims.to(act.device)] = 0.0
            return act

        hooks.append((f"blocks.{int(layer)}.mlp.hook_post", hook))
    return hooks


def attached_hook_count(model) -> int:
    """How many forward/backward hooks are attached to the model's hook points (0 after a clean run)."""
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())
