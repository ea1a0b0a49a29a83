"""The MLP neurons a model fires on one text (``python -m neuron_lib.trace``).

    python -m neuron_lib.trace --model zoo-gpt2-a --text "The quick brown fox"
    python -m neuron_lib.trace --model zoo-gpt2-a --text "The quick brown fox" --all-positions --out traced/

The text is encoded as the prompts stage encodes a prompt (``generation.encode_prompt``: the characters as
given, BOS in front unless ``--no-prepend-bos``) and run through the model once. Neuron ``l · d_mlp + d`` is
*active* at a position when ``blocks.{l}.mlp.hook_post[pos, d] > --activation-threshold`` (default 0).
Positions: the last one (the position that predicts the next token), or every one with ``--all-positions``.

Printed (stdout): one line per traced position, ``position<TAB>token<TAB>ids`` (ids space-separated, sorted).
With ``--out DIR``: ``trace.json`` (model, text, token ids and strings, threshold, BOS flag, and per traced
position ``{position, token_id, token, n_active, n_active_per_layer, active}``), ``active_neurons.txt`` (the
printed lines' ids only: one position per line) and ``manifest.json`` (last).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuron_lib import artifacts, stage
from neuron_lib.common import (
    REQUIRED,
    NeuronLibError,
    atomic_write_json,
    atomic_write_text,
    config_field,
    config_fingerprint,
    config_identity,
    make_manifest,
    pick_device,
    run_cli,
    write_manifest,
)

STAGE = "trace"
FORMAT = 1


@dataclasses.dataclass
class TraceConfig:
    """The active MLP neurons of a model on one text."""

    model: str = config_field(REQUIRED, "model name: zoo name, paper alias, local model folder or hub id")
    text: str = config_field(REQUIRED, "the text to trace (encoded as given; BOS in front unless --no-prepend-bos)")
    activation_threshold: float = config_field(0.0, "a neuron is active where mlp.hook_post > this value")
    all_positions: bool = config_field(False, "trace every position (default: the last position only)")
    prepend_bos: bool = config_field(True, "put the tokenizer's BOS token in front of the text")
    out: str | None = config_field(None, "folder for trace.json, active_neurons.txt and a manifest; none = print only")
    device: str = config_field("auto", "auto | cpu | cuda[:i]")

    def validate(self) -> TraceConfig:
        if not self.model:
            raise NeuronLibError("--model is required")
        if self.text is None or self.text == "":
            raise NeuronLibError("--text must not be empty")
        return self

    def identity(self) -> dict[str, Any]:
        return {**config_identity(self, exclude=("device", "out")), "format": FORMAT}


def active_at_positions(model, token_ids, threshold: float = 0.0, positions=None) -> torch.Tensor:
    """``[len(positions), n_layers, d_mlp]`` bool: ``blocks.{l}.mlp.hook_post > threshold`` at each position of
    one forward pass over ``token_ids`` (positions: indices into the sequence; None = all)."""
    from neuron_lib.streaming import mlp_activations

    seq_len = len(token_ids)
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    if n_ctx and seq_len > n_ctx:
        raise NeuronLibError(f"the text is {seq_len} tokens long, more than the model's context of {n_ctx}")
    pos = torch.arange(seq_len) if positions is None else torch.as_tensor(list(positions), dtype=torch.long)
    tokens = torch.tensor([list(token_ids)], dtype=torch.long)
    _, post = mlp_activations(model, tokens, want_pre=False, want_post=True)  # [L, 1, P, N], no unembedding
    return (post[:, 0, pos.to(post.device)] > threshold).transpose(0, 1).cpu()


def trace_text(model, tokenizer, text: str, threshold: float = 0.0, all_positions: bool = False, prepend_bos=True):
    """The trace record of ``text`` (the ``trace.json`` layout of the module docstring)."""
    from neuron_lib import generation

    ids = generation.encode_prompt(tokenizer, text, prepend_bos)
    positions = list(range(len(ids))) if all_positions else [len(ids) - 1]
    active = active_at_positions(model, ids, threshold, positions)
    d_mlp = model.cfg.d_mlp
    records = []
    for i, p in enumerate(positions):
        flat = torch.nonzero(active[i].reshape(-1)).squeeze(-1).numpy().astype(np.int64)  # id = l * d_mlp + d
        records.append(
            {
                "position": p,
                "token_id": int(ids[p]),
                "token": tokenizer.decode([ids[p]]),
                "n_active": len(flat),
                "n_active_per_layer": np.bincount(flat // d_mlp, minlength=model.cfg.n_layers).tolist(),
                "active": flat.tolist(),
            }
        )
    return {
        "text": text,
        "token_ids": [int(i) for i in ids],
        "tokens": [tokenizer.decode([i]) for i in ids],
        "bos_prepended": bool(prepend_bos),
        "activation_threshold": float(threshold),
        "n_layers": int(model.cfg.n_layers),
        "d_mlp": int(d_mlp),
        "positions": records,
    }


def id_lines(trace: dict) -> list[str]:
    """One line of space-separated active ids per traced position."""
    return [" ".join(map(str, r["active"])) for r in trace["positions"]]


def run_trace(cfg: TraceConfig) -> stage.StageResult:
    from neuron_lib.models import load_model, load_tokenizer, model_info, model_output_name

    cfg.validate()
    device = pick_device(cfg.device)
    model = load_model(cfg.model, device=device)
    tokenizer = load_tokenizer(cfg.model)
    t0 = time.perf_counter()
    trace = trace_text(model, tokenizer, cfg.text, cfg.activation_threshold, cfg.all_positions, cfg.prepend_bos)
    seconds = time.perf_counter() - t0
    trace["model"] = model_output_name(cfg.model)
    for r in trace["positions"]:
        print(f"{r['position']}\t{r['token']!r}\t{' '.join(map(str, r['active']))}", flush=True)
    outputs: dict[str, str] = {}
    if cfg.out:
        folder = Path(cfg.out)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / artifacts.TRACE_JSON_FILE, trace)
        atomic_write_text(folder / artifacts.TRACE_IDS_FILE, "\n".join(id_lines(trace)) + "\n")
        identity = cfg.identity()
        manifest = make_manifest(
            STAGE,
            identity,
            config_fingerprint=config_fingerprint(identity),
            model=trace["model"],
            model_info=model_info(model),
            activation_threshold=float(cfg.activation_threshold),
            files=[artifacts.TRACE_JSON_FILE, artifacts.TRACE_IDS_FILE],
            device=str(device),
            seconds=seconds,
        )
        write_manifest(folder, manifest)
        outputs = {"trace": str(folder / artifacts.TRACE_JSON_FILE), "ids": str(folder / artifacts.TRACE_IDS_FILE)}
        stage.log(STAGE, f"{len(trace['positions'])} position(s) -> {folder}")
    return stage.StageResult(
        STAGE, "done", outputs, len(trace["token_ids"]), seconds, {"trace": trace, "lines": id_lines(trace)}
    )


main = stage.cli(
    TraceConfig,
    run_trace,
    "python -m neuron_lib.trace",
    "The MLP neurons (hook_post > threshold) a model fires on one text, at the last or every position.",
)


if __name__ == "__main__":
    run_cli(main)
