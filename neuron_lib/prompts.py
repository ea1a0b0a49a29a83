"""Generate continuations of a prompt set and record which MLP neurons fire on every generated token
(``python -m neuron_lib.prompts``).

Input: a CSV with columns ``prompts,number_of_new_tokens,num_samples`` (``generation.read_prompts``: a missing
column, a non-integer or non-positive count is an error naming the row). For prompt ``i`` the stage draws
``num_samples`` continuations of ``number_of_new_tokens`` tokens with ``generation.generate`` (our own loop of
full forward passes; ``--temperature 0`` = greedy, else softmax sampling over the ``--top-k`` largest logits with a
generator seeded from ``(--seed, i)``; BOS is prepended unless ``--no-prepend-bos``: see generation.py).

A neuron (layer ``l``, dimension ``d``; id ``l · d_mlp + d``) is *active on a token* when
``blocks.{l}.mlp.hook_post`` at the position that predicted the token is ``> --activation-threshold`` (default 0),
and *active in a sample* when it is active on at least one of the sample's generated tokens (prompt positions
are not counted).

Outputs (``$GRAPHS_DIR/{model}/{run}/activations/``, run = ``--run`` or the CSV's stem; no pickle):

- ``tokens.{csv,parquet}``: one row per generated token: ``sample_id, prompt_idx, prompt_sample_idx,
  token_position`` (0 = first generated token), ``input_text`` (the decoded model input, special tokens
  skipped), ``input_token``, ``input_id`` (the token at the recorded position: the input's last token),
  ``output``, ``output_id``, ``number_of_active_neurons``, ``layer_{l}_num_active_neurons``;
- ``samples.{csv,parquet}``: one row per sample: ``sample_id, prompt_idx, prompt_sample_idx, prompt,
  generated_text, generated_ids`` (space-separated), ``number_of_active_neurons``;
- ``active_neurons.json``: ``{sample_id: [active neuron ids, sorted]}``;
- ``activation_matrix.npz``: ``scipy.sparse`` CSR, samples × neurons, 1 where the neuron is active in the sample
  (``scipy.sparse.load_npz``); columns are the neurons active in at least one sample, in id order;
- ``token_activation_matrix.npz``: the same per generated token: row ``r`` is row ``r`` of ``tokens``, 1 where
  the neuron is active on that token; the same columns (a sample's row is the union of its tokens' rows);
- ``neurons.csv``: ``column, id, layer, dimension`` — the matrix column → neuron map and the neurons' attributes;
- ``neuron_frequency.csv``: ``id, layer, dimension, count, frequency`` (samples in which the neuron is active,
  ÷ number of samples), most frequent first;
- ``manifest.json`` (last): model, activation threshold, the prompts themselves, generation settings.
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
    save_dataframe_atomic,
    save_sparse_atomic,
    write_manifest,
)

STAGE = "prompts"
FORMAT = 2  # 2: token_activation_matrix.npz


@dataclasses.dataclass
class PromptsConfig:
    """Generate from a prompt CSV and record the active MLP neurons of every generated token."""

    model: str = config_field(REQUIRED, "model name: zoo name, paper alias, local model folder or hub id")
    prompts_csv: str = config_field(REQUIRED, "CSV with columns prompts,number_of_new_tokens,num_samples")
    run: str | None = config_field(None, "name of this prompt run (output folder); none = the CSV's file stem")
    seed: int = config_field(0, "sampling seed (each prompt's generator is seeded from (seed, prompt index))")
    temperature: float = config_field(1.0, "softmax temperature; 0 = greedy decoding")
    top_k: int = config_field(0, "sample among the k most likely tokens; 0 = the whole vocabulary")
    activation_threshold: float = config_field(0.0, "a neuron is active where mlp.hook_post > this value")
    prepend_bos: bool = config_field(True, "put the tokenizer's BOS token in front of every prompt")
    device: str = config_field("auto", "auto | cpu | cuda[:i]")
    overwrite: bool = config_field(False, "replace a run of another configuration (or a corrupt one)")

    def validate(self) -> PromptsConfig:
        if not self.model:
            raise NeuronLibError("--model is required")
        if not self.prompts_csv:
            raise NeuronLibError("--prompts-csv is required")
        if float(self.temperature) < 0:
            raise NeuronLibError(f"--temperature must be ≥ 0 (0 = greedy), got {self.temperature}")
        if int(self.top_k) < 0:
            raise NeuronLibError(f"--top-k must be ≥ 0 (0 = no limit), got {self.top_k}")
        return self

    def run_name(self) -> str:
        return self.run or Path(self.prompts_csv).stem

    def identity(self) -> dict[str, Any]:
        """Everything but the device and --overwrite; the prompts enter through their content, not the path."""
        identity = config_identity(self, exclude=("device", "overwrite", "prompts_csv"))
        return {**identity, "run": self.run_name(), "format": FORMAT}


def output_files() -> list[str]:
    A = artifacts
    return [
        f"{A.PROMPT_TOKENS_STEM}.csv",
        f"{A.PROMPT_TOKENS_STEM}.parquet",
        f"{A.PROMPT_SAMPLES_STEM}.csv",
        f"{A.PROMPT_SAMPLES_STEM}.parquet",
        A.PROMPT_ACTIVE_FILE,
        A.PROMPT_MATRIX_FILE,
        A.PROMPT_TOKEN_MATRIX_FILE,
        A.PROMPT_NEURONS_FILE,
        A.PROMPT_FREQUENCY_FILE,
    ]


def run_prompts(cfg: PromptsConfig) -> stage.StageResult:
    """Generate every prompt's samples with ``cfg.model`` and write the per-token table and activation matrix."""
    import pandas as pd
    import scipy.sparse as sp

    from neuron_lib import generation
    from neuron_lib.models import load_model, load_tokenizer, model_info, model_output_name

    cfg.validate()
    prompts = generation.read_prompts(cfg.prompts_csv)
    identity = {**cfg.identity(), "prompts": [dataclasses.asdict(p) for p in prompts]}
    fingerprint = config_fingerprint(identity)
    folder = artifacts.prompt_activations(cfg.model, cfg.run_name())
    outputs = {"activations": str(folder)}
    state = stage.folder_state(folder, STAGE, fingerprint, output_files())
    if not stage.must_run(folder, state, cfg.overwrite, STAGE):
        stage.log(STAGE, f"{folder} already done (skipped: same configuration)")
        return stage.StageResult(STAGE, "skipped", outputs)

    n_total = sum(p.n_new * p.n_samples for p in prompts)
    stage.log(
        STAGE,
        f"{len(prompts)} prompts, {sum(p.n_samples for p in prompts)} samples, {n_total} generated tokens "
        f"(temperature {cfg.temperature}, top-k {cfg.top_k}, seed {cfg.seed}) -> {folder}",
    )
    device = pick_device(cfg.device)
    model = load_model(cfg.model, device=device)
    tokenizer = load_tokenizer(cfg.model)
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    t0 = time.perf_counter()

    token_rows: list[dict] = []
    sample_rows: list[dict] = []
    sample_active: list[np.ndarray] = []  # per sample: sorted active neuron ids
    token_active: list[np.ndarray] = []  # per generated token (the rows of token_rows): sorted active ids
    sample_id = 0
    for i, p in enumerate(prompts):
        try:
            ids = generation.encode_prompt(tokenizer, p.text, cfg.prepend_bos)
            gen = generation.generate(
                model,
                ids,
                p.n_new,
                p.n_samples,
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                generator=generation.prompt_generator(cfg.seed, i),
                record_threshold=cfg.activation_threshold,
            )
        except NeuronLibError as exc:
            raise NeuronLibError(f"prompt CSV {cfg.prompts_csv} row {i + 1}: {exc}") from exc
        per_layer = gen.active.sum(-1)  # [n_new, n_samples, L]
        for s in range(p.n_samples):
            generated = gen.tokens[s].tolist()
            for t, out_id in enumerate(generated):
                row = {
                    "sample_id": sample_id,
                    "prompt_idx": i,
                    "prompt_sample_idx": s,
                    "token_position": t,
                    "input_text": tokenizer.decode(ids + generated[:t], skip_special_tokens=True),
                    "input_token": tokenizer.decode([(ids + generated[:t])[-1]]),
                    "input_id": int((ids + generated[:t])[-1]),
                    "output": tokenizer.decode([out_id]),
                    "output_id": int(out_id),
                    "number_of_active_neurons": int(per_layer[t, s].sum()),
                }
                row.update({f"layer_{l}_num_active_neurons": int(per_layer[t, s, l]) for l in range(n_layers)})
                token_rows.append(row)
                token_active.append(torch.nonzero(gen.active[t, s].reshape(-1)).squeeze(-1).numpy().astype(np.int64))
            union = gen.active[:, s].any(0).reshape(-1)  # [L * d_mlp], id = l * d_mlp + d
            active_ids = torch.nonzero(union).squeeze(-1).numpy().astype(np.int64)
            sample_active.append(active_ids)
            sample_rows.append(
                {
                    "sample_id": sample_id,
                    "prompt_idx": i,
                    "prompt_sample_idx": s,
                    "prompt": p.text,
                    "generated_text": tokenizer.decode(generated, skip_special_tokens=True),
                    "generated_ids": " ".join(map(str, generated)),
                    "number_of_active_neurons": len(active_ids),
                }
            )
            sample_id += 1
    seconds = time.perf_counter() - t0

    n_samples = len(sample_active)
    columns = np.unique(np.concatenate(sample_active)) if n_samples else np.zeros(0, np.int64)
    col_of = {int(n): c for c, n in enumerate(columns)}

    def binary_rows(rows: list[np.ndarray]):
        indptr = np.cumsum([0] + [len(a) for a in rows])
        indices = np.array([col_of[int(n)] for a in rows for n in a], dtype=np.int32)
        return sp.csr_matrix(
            (np.ones(len(indices), dtype=np.int8), indices, indptr), shape=(len(rows), len(columns))
        ).astype(np.int8)

    matrix = binary_rows(sample_active)
    token_matrix = binary_rows(token_active)
    counts = np.asarray(matrix.sum(0)).ravel().astype(np.int64)
    neurons = pd.DataFrame(
        {"column": np.arange(len(columns)), "id": columns, "layer": columns // d_mlp, "dimension": columns % d_mlp}
    )
    freq = neurons.drop(columns="column").assign(count=counts, frequency=counts / max(n_samples, 1))
    freq = freq.sort_values(["count", "id"], ascending=[False, True], kind="stable")

    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    layer_cols = [f"layer_{l}_num_active_neurons" for l in range(n_layers)]
    token_df = pd.DataFrame(
        token_rows,
        columns=[
            "sample_id",
            "prompt_idx",
            "prompt_sample_idx",
            "token_position",
            "input_text",
            "input_token",
            "input_id",
            "output",
            "output_id",
            "number_of_active_neurons",
            *layer_cols,
        ],
    )
    save_dataframe_atomic(token_df, folder / artifacts.PROMPT_TOKENS_STEM)
    save_dataframe_atomic(pd.DataFrame(sample_rows), folder / artifacts.PROMPT_SAMPLES_STEM)
    atomic_write_json(folder / artifacts.PROMPT_ACTIVE_FILE, {str(k): a.tolist() for k, a in enumerate(sample_active)})
    save_sparse_atomic(folder / artifacts.PROMPT_MATRIX_FILE, matrix)
    save_sparse_atomic(folder / artifacts.PROMPT_TOKEN_MATRIX_FILE, token_matrix)
    atomic_write_text(folder / artifacts.PROMPT_NEURONS_FILE, neurons.to_csv(index=False))
    atomic_write_text(folder / artifacts.PROMPT_FREQUENCY_FILE, freq.to_csv(index=False))
    manifest = make_manifest(
        STAGE,
        identity,
        config_fingerprint=fingerprint,
        model=model_output_name(cfg.model),
        model_info=model_info(model),
        activation_threshold=float(cfg.activation_threshold),
        prompts_csv=str(Path(cfg.prompts_csv).resolve()),
        n_prompts=len(prompts),
        n_samples=n_samples,
        n_tokens=len(token_rows),
        n_active_neurons=len(columns),
        bos_prepended=bool(cfg.prepend_bos),
        files=output_files(),
        device=str(device),
        seconds=seconds,
    )
    write_manifest(folder, manifest)
    stage.log(
        STAGE,
        f"{len(token_rows)} tokens in {seconds:.1f} s; {len(columns)} of {n_layers * d_mlp} neurons active in "
        f"some sample -> {folder}",
    )
    return stage.StageResult(STAGE, "done", outputs, len(token_rows), seconds, {"n_samples": n_samples})


def load_prompt_run(model: str, run: str, expect_threshold: float | None = None) -> dict[str, Any]:
    """A finished prompt run: ``{"manifest", "matrix" (CSR samples × neurons), "token_matrix" (CSR tokens ×
    neurons), "neurons" (DataFrame)}``,
    refusing a run of another model or (with ``expect_threshold``) another activation threshold."""
    import pandas as pd
    import scipy.sparse as sp

    from neuron_lib.common import ManifestMismatch, read_manifest
    from neuron_lib.models import model_output_name

    folder = artifacts.prompt_activations(model, run)
    manifest = read_manifest(folder, f"python -m neuron_lib.prompts --model {model} --prompts-csv <csv>")
    if manifest.get("stage") != STAGE:
        raise ManifestMismatch(f"{folder} was written by stage {manifest.get('stage')!r}, not {STAGE!r}")
    if manifest.get("model") != model_output_name(model):
        raise ManifestMismatch(f"{folder} holds a prompt run of model {manifest.get('model')!r}, not {model!r}")
    if expect_threshold is not None and float(manifest["activation_threshold"]) != float(expect_threshold):
        raise ManifestMismatch(
            f"{folder} was recorded with activation threshold {manifest['activation_threshold']}, not "
            f"{expect_threshold}; re-run the prompts stage with --activation-threshold {expect_threshold}"
        )
    return {
        "folder": folder,
        "manifest": manifest,
        "matrix": sp.load_npz(folder / artifacts.PROMPT_MATRIX_FILE).tocsr(),
        # format ≥ 2; None for a run written before the per-token matrix existed
        "token_matrix": (
            sp.load_npz(folder / artifacts.PROMPT_TOKEN_MATRIX_FILE).tocsr()
            if (folder / artifacts.PROMPT_TOKEN_MATRIX_FILE).exists()
            else None
        ),
        "neurons": pd.read_csv(folder / artifacts.PROMPT_NEURONS_FILE),
    }


main = stage.cli(
    PromptsConfig,
    run_prompts,
    "python -m neuron_lib.prompts",
    "Generate continuations of a prompt CSV and record the active MLP neurons of every generated token.",
)


if __name__ == "__main__":
    run_cli(main)
