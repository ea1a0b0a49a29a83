"""Zero-ablate the co-activation graph's neuron subsets: generations, held-out loss and KL
(``python -m neuron_lib.perturb``).

Inputs: a finished ``prompts`` run and its ``coactivation`` graph (``coactivation.load_subsets``; a graph of
another model or activation threshold is refused), and optionally a token dataset (``--token-dataset``).

Ablation: ``generation.zero_ablation_hooks`` sets the subset's neurons of ``blocks.{l}.mlp.hook_post`` to 0 at
every position; the hooks are attached with TransformerLens' ``model.hooks(...)`` context for one call and are
removed afterwards, also when the call raises.

1. Generations: for the ``none`` baseline and every subset, the prompt run's prompts are generated again with the
   run's own settings (seed, temperature, top-k, BOS) — so ``none`` reproduces the run's samples and every subset
   sees the same random stream — written as ``generations/{subset}.csv`` with columns ``prompt, sample_index,
   generated_text, perturbation_subset``.
2. Loss and KL (with ``--token-dataset``): on the first ``ceil(--max-tokens / ctx)`` rows, per row the mean
   next-token cross entropy (nats) of the ablated model and the mean over positions of
   ``KL(p_unperturbed ‖ p_ablated)`` of the next-token distributions (all positions but the last).
   ``loss_kl.csv``: per subset (``none`` included) the mean over rows and a percentile bootstrap 95% interval
   (``--n-bootstrap`` resamples of rows, ``--seed``). ``comparison.csv``: per centrality subset, its loss and KL,
   the mean of its random controls', and the paired per-row difference (subset − mean of its controls) with a
   bootstrap interval: a centrality subset matters more than chance where that interval lies above 0.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from typing import Any

import numpy as np
import torch

from neuron_lib import artifacts, stage
from neuron_lib.common import (
    REQUIRED,
    NeuronLibError,
    atomic_write_text,
    config_field,
    config_fingerprint,
    config_identity,
    make_manifest,
    pick_device,
    run_cli,
    write_manifest,
)
from neuron_lib.stats import bootstrap_ci

STAGE = "perturb"
FORMAT = 1
BASELINE = "none"


@dataclasses.dataclass
class PerturbConfig:
    """Generations, loss and KL with each co-activation subset zero-ablated."""

    model: str = config_field(REQUIRED, "model name of the prompt run and graph")
    run: str = config_field(REQUIRED, "the prompt run's name (neuron_lib.prompts --run)")
    token_dataset: str | None = config_field(None, "token dataset for held-out loss and KL; none = skip them")
    max_tokens: int | None = config_field(
        4096, "tokens of the token dataset (from its start) for loss and KL; none = all"
    )
    batch_size: int = config_field(8, "dataset rows per forward pass")
    activation_threshold: float = config_field(0.0, "the graph must have been built at this activation threshold")
    subsets: str | None = config_field(None, "comma-separated subset names (file stems) to run; none = all")
    skip_generation: bool = config_field(False, "only loss and KL, no generations")
    n_bootstrap: int = config_field(1000, "bootstrap resamples of the rows for the confidence intervals")
    seed: int = config_field(0, "seed of the bootstrap")
    device: str = config_field("auto", "auto | cpu | cuda[:i]")
    overwrite: bool = config_field(False, "replace results of another configuration (or corrupt ones)")

    def validate(self) -> PerturbConfig:
        if (
            (self.max_tokens is not None and int(self.max_tokens) < 1)
            or int(self.batch_size) < 1
            or int(self.n_bootstrap) < 1
        ):
            raise NeuronLibError("--max-tokens, --batch-size and --n-bootstrap must be ≥ 1")
        if self.skip_generation and not self.token_dataset:
            raise NeuronLibError("--skip-generation without --token-dataset leaves nothing to do")
        return self

    def identity(self) -> dict[str, Any]:
        identity = config_identity(self, exclude=("batch_size", "device", "overwrite"))
        return {**identity, "format": FORMAT}


# =============================================================== numerics
def logits_with_hooks(model, tokens: torch.Tensor, hooks) -> torch.Tensor:
    """Logits of ``tokens`` with ``hooks`` attached for this one forward pass (removed even on error)."""
    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
        return model(tokens).float()


def row_loss_kl(base_logits: torch.Tensor, logits: torch.Tensor, tokens: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per row: mean next-token cross entropy of ``logits`` and mean KL(base ‖ logits) over positions 0..P-2."""
    logp = torch.log_softmax(logits[:, :-1], -1)
    loss = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    base = torch.log_softmax(base_logits[:, :-1], -1)
    kl = (base.exp() * (base - logp)).sum(-1)
    return loss.mean(1).cpu().numpy().astype(np.float64), kl.mean(1).cpu().numpy().astype(np.float64)


def loss_kl(model, dataset, n_rows: int, batch_size: int, subsets: dict[str, np.ndarray], d_mlp: int):
    """``{subset: (per-row loss, per-row KL)}`` for the ``none`` baseline and every subset."""
    from neuron_lib.generation import zero_ablation_hooks
    from neuron_lib.streaming import tokens_tensor

    device = model.cfg.device
    hooks = {name: zero_ablation_hooks(ids, d_mlp) for name, ids in subsets.items()}
    out: dict[str, tuple[list, list]] = {name: ([], []) for name in [BASELINE, *subsets]}
    for start in range(0, n_rows, batch_size):
        tokens = tokens_tensor(dataset, start, min(n_rows, start + batch_size)).to(device)
        base = logits_with_hooks(model, tokens, [])
        for name in out:
            logits = base if name == BASELINE else logits_with_hooks(model, tokens, hooks[name])
            loss, kl = row_loss_kl(base, logits, tokens)
            out[name][0].append(loss)
            out[name][1].append(kl)
    return {name: (np.concatenate(l), np.concatenate(k)) for name, (l, k) in out.items()}


# =============================================================== the stage
def run_perturb(cfg: PerturbConfig) -> stage.StageResult:
    import pandas as pd

    from neuron_lib import generation
    from neuron_lib.coactivation import load_subsets
    from neuron_lib.models import load_model, load_tokenizer
    from neuron_lib.prompts import load_prompt_run

    cfg.validate()
    graph = load_subsets(cfg.model, cfg.run, activation_threshold=cfg.activation_threshold)
    prompt_run = load_prompt_run(cfg.model, cfg.run, expect_threshold=cfg.activation_threshold)
    index = graph["index"].assign(name=[f[: -len(".npy")] for f in graph["index"]["file"]])
    if cfg.subsets:
        wanted = [s.strip() for s in cfg.subsets.split(",") if s.strip()]
        unknown = sorted(set(wanted) - set(index["name"]))
        if unknown:
            raise NeuronLibError(f"unknown subsets {unknown}; {graph['folder']} has {sorted(index['name'])}")
        index = index[index["name"].isin(wanted)]
    subsets = {n: graph["subsets"][n] for n in index["name"]}
    inputs = stage.open_inputs(cfg.model, cfg.token_dataset, cfg.max_tokens) if cfg.token_dataset else None
    identity = {
        **cfg.identity(),
        "token_dataset": inputs.dataset_identity if inputs else None,  # content, not the folder's path
        "graph_fingerprint": graph["manifest"]["config_fingerprint"],
        "prompt_run_fingerprint": prompt_run["manifest"]["config_fingerprint"],
    }
    fingerprint = config_fingerprint(identity)
    folder = artifacts.perturbation_results(cfg.model, cfg.run)
    names = [BASELINE, *subsets]
    files = [] if cfg.skip_generation else [f"{artifacts.PERTURB_GENERATIONS_DIR}/{n}.csv" for n in names]
    if cfg.token_dataset:
        files += [artifacts.PERTURB_LOSS_FILE, artifacts.PERTURB_COMPARISON_FILE]
    outputs = {"perturb": str(folder)}
    state = stage.folder_state(folder, STAGE, fingerprint, files)
    if not stage.must_run(folder, state, cfg.overwrite, STAGE):
        stage.log(STAGE, f"{folder} already done (skipped: same configuration)")
        return stage.StageResult(STAGE, "skipped", outputs)

    run_cfg = prompt_run["manifest"]["config"]
    prompts = [generation.Prompt(p["text"], p["n_new"], p["n_samples"]) for p in run_cfg["prompts"]]
    stage.log(
        STAGE,
        f"{len(subsets)} subsets + baseline; generations of {len(prompts)} prompts "
        f"{'skipped' if cfg.skip_generation else 'on'}; loss/KL on "
        f"{inputs.n_rows * inputs.ctx if inputs else 0} tokens -> {folder}",
    )
    device = pick_device(cfg.device)
    model = load_model(cfg.model, device=device)
    tokenizer = load_tokenizer(cfg.model)
    d_mlp = model.cfg.d_mlp
    t0 = time.perf_counter()
    if folder.exists():
        shutil.rmtree(folder)
    (folder / artifacts.PERTURB_GENERATIONS_DIR).mkdir(parents=True)

    if not cfg.skip_generation:
        for name in names:
            hooks = [] if name == BASELINE else generation.zero_ablation_hooks(subsets[name], d_mlp)
            rows = []
            for i, p in enumerate(prompts):
                ids = generation.encode_prompt(tokenizer, p.text, run_cfg["prepend_bos"])
                gen = generation.generate(
                    model,
                    ids,
                    p.n_new,
                    p.n_samples,
                    temperature=run_cfg["temperature"],
                    top_k=run_cfg["top_k"],
                    generator=generation.prompt_generator(run_cfg["seed"], i),
                    fwd_hooks=hooks,
                )
                for s in range(p.n_samples):
                    text = tokenizer.decode(gen.tokens[s].tolist(), skip_special_tokens=True)
                    rows.append(
                        {"prompt": p.text, "sample_index": s, "generated_text": text, "perturbation_subset": name}
                    )
            atomic_write_text(
                folder / artifacts.PERTURB_GENERATIONS_DIR / f"{name}.csv", pd.DataFrame(rows).to_csv(index=False)
            )

    n_rows = 0
    if inputs is not None:
        n_rows = inputs.n_rows
        per_row = loss_kl(model, inputs.dataset, n_rows, cfg.batch_size, subsets, d_mlp)
        rng = np.random.default_rng(cfg.seed)
        meta = index.set_index("name")
        table = []
        for name, (loss, kl) in per_row.items():
            info = meta.loc[name] if name != BASELINE else None
            table.append(
                {
                    "subset": name,
                    "kind": BASELINE if info is None else info["kind"],
                    "method": "" if info is None else info["method"],
                    "threshold": np.nan if info is None else info["threshold"],
                    "ratio": np.nan if info is None else info["ratio"],
                    "control": -1 if info is None else int(info["control"]),
                    "size": 0 if info is None else int(info["size"]),
                    "loss_mean": loss.mean(),
                    **dict(zip(("loss_ci_low", "loss_ci_high"), bootstrap_ci(loss, cfg.n_bootstrap, rng))),
                    "loss_delta": loss.mean() - per_row[BASELINE][0].mean(),
                    "kl_mean": kl.mean(),
                    **dict(zip(("kl_ci_low", "kl_ci_high"), bootstrap_ci(kl, cfg.n_bootstrap, rng))),
                    "n_rows": len(loss),
                }
            )
        atomic_write_text(folder / artifacts.PERTURB_LOSS_FILE, pd.DataFrame(table).to_csv(index=False))
        comparison = []
        for name, info in meta[meta["kind"] == "centrality"].iterrows():
            controls = [f"random{int(c)}.{name}" for c in meta["control"].unique() if c >= 0]
            controls = [c for c in controls if c in per_row]
            if not controls:
                continue
            loss, kl = per_row[name]
            c_loss = np.mean([per_row[c][0] for c in controls], 0)
            c_kl = np.mean([per_row[c][1] for c in controls], 0)
            comparison.append(
                {
                    "subset": name,
                    "method": info["method"],
                    "threshold": info["threshold"],
                    "ratio": info["ratio"],
                    "size": int(info["size"]),
                    "n_controls": len(controls),
                    "loss_mean": loss.mean(),
                    "random_loss_mean": c_loss.mean(),
                    "loss_diff": (loss - c_loss).mean(),
                    **dict(
                        zip(
                            ("loss_diff_ci_low", "loss_diff_ci_high"), bootstrap_ci(loss - c_loss, cfg.n_bootstrap, rng)
                        )
                    ),
                    "kl_mean": kl.mean(),
                    "random_kl_mean": c_kl.mean(),
                    "kl_diff": (kl - c_kl).mean(),
                    **dict(zip(("kl_diff_ci_low", "kl_diff_ci_high"), bootstrap_ci(kl - c_kl, cfg.n_bootstrap, rng))),
                }
            )
        atomic_write_text(folder / artifacts.PERTURB_COMPARISON_FILE, pd.DataFrame(comparison).to_csv(index=False))
    seconds = time.perf_counter() - t0
    manifest = make_manifest(
        STAGE,
        identity,
        config_fingerprint=fingerprint,
        model=graph["manifest"]["model"],
        activation_threshold=float(graph["manifest"]["activation_threshold"]),
        graph=str(graph["folder"]),
        dataset=inputs.dataset_name if inputs else None,
        dataset_path=inputs.dataset_path if inputs else None,
        tokenizer_fingerprint=inputs.tokenizer_fingerprint if inputs else None,
        n_rows=n_rows,
        n_tokens=n_rows * (inputs.ctx if inputs else 0),
        subsets=names,
        files=files,
        device=str(device),
        seconds=seconds,
    )
    write_manifest(folder, manifest)
    stage.log(STAGE, f"{len(names)} conditions in {seconds:.1f} s -> {folder}")
    return stage.StageResult(STAGE, "done", outputs, manifest["n_tokens"], seconds, {"subsets": names})


main = stage.cli(
    PerturbConfig,
    run_perturb,
    "python -m neuron_lib.perturb",
    "Generations, held-out loss and KL with each co-activation subset zero-ablated (vs random controls).",
)


if __name__ == "__main__":
    run_cli(main)
