"""Run the paper notebooks with papermill and index their figures.

    python -m neuron_lib.notebooks --model zoo-gpt2-a                 # every notebook on our model
    python -m neuron_lib.notebooks --model zoo-gpt2-a --only prediction_neurons -p kurt_threshold=8
    python -m neuron_lib.notebooks --paper-table                      # the paper's universal.csv (small-a)
    python -m neuron_lib.notebooks --paper-table ../shared/data/paper/stanford-gpt2-medium-a/universal.csv
    python -m neuron_lib.notebooks --index-only                       # rebuild $FIGURES_DIR/index.html

Each notebook in ``paper_notebooks/`` runs top to bottom on a fresh kernel (papermill injects the
parameters after the cell tagged ``parameters``) with the repository root as working directory.
Output goes to ``$FIGURES_DIR/<notebook>/`` (``--out`` overrides ``$FIGURES_DIR``): the executed
notebook, PNG + SVG figures, the data drawn (CSV) and ``figures.json`` (captions + data source).
``$FIGURES_DIR/index.html`` links every figure with its caption and the manifest of its data.
Runs on the paper's table go to ``$FIGURES_DIR/paper/<model>/<notebook>/``.

The functions below are also what the notebooks call to validate and load their inputs, so a
notebook and the CLI refuse the same missing or mismatched inputs with the same message.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import html
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neuron_lib import artifacts, criteria
from neuron_lib.common import ManifestMismatch, NeuronLibError, read_json, run_cli

NOTEBOOKS: dict[str, str] = {
    "properties_of_universal_neurons": "Properties of universal neurons (paper Fig 2-4, 11, 14)",
    "prediction_neurons": "Prediction and suppression neurons (paper §5.1, Fig 6)",
    "dataset_summary": "Dataset summary: pre-activation histograms and top-activating examples",
    "coactivation_graph": "Neuron co-activation graph of a prompt run: thresholds, perturbations, heatmaps, tokens",
    "entropy_neurons": "Entropy neurons: fixed activations vs final norm scale, entropy, loss (paper §5.2, Fig 7, 25, 1f)",
    "bos_signal_neurons": "BOS-signal neurons: heuristic h_n and path ablation (paper §5.3, Fig 8)",
    "unigram_neurons": "Unigram neurons: families of neurons explained by one token (paper §4.3, Fig 15, 16, 4a)",
    "alphabet_neurons": "Alphabet neurons: single-letter unigram features (paper Fig 17, 1a)",
    "previous_token_neurons": "Previous-token neurons: features of the token before (paper Fig 18, 1b)",
    "position_neurons": "Position neurons: mutual information of firing and position (paper Fig 19, 1c)",
    "syntax_neurons": "Syntax neurons: spaCy POS, dependency and morphology features (paper Fig 20, 4b)",
    "topic_neurons": "Topic neurons: dataset-subset features and mean-activation tokens (paper Fig 4c)",
    "family_count": "Neuron families and correlation densities, with the paper's printed statistics (Fig 11, 2a)",
    "mysteries": "Mysteries: activation frequency vs cos(w_in, w_out), max weight similarity (paper §6, Fig 9, 10)",
}
NEEDS_NEURON_DF = ("properties_of_universal_neurons", "prediction_neurons", "family_count", "mysteries")
# notebooks that read a finished `explain` run (neuron_lib.explain_figures.find_explanations): skipped in a full run
# without one, an error naming the command when asked for by name
NEEDS_EXPLANATIONS = (
    "unigram_neurons",
    "alphabet_neurons",
    "previous_token_neurons",
    "position_neurons",
    "syntax_neurons",
    "topic_neurons",
    "family_count",
)
NEEDS_SUMMARY = ("dataset_summary",)
NEEDS_COACTIVATION = ("coactivation_graph",)  # a prompts run and its coactivation graph (perturb optional)
# notebooks that read intervention results: {notebook: run folder name} (neuron_lib.intervention_figures.find_run)
NEEDS_INTERVENTION = {"entropy_neurons": "entropy.post", "bos_signal_neurons": "attention_deactivation"}
PAPER_TABLE_NOTEBOOKS = ("properties_of_universal_neurons", "prediction_neurons")
# neurons per layer of the paper's models, for shares from universal-only tables
KNOWN_D_MLP = {
    "stanford-gpt2-small": 3072,
    "stanford-gpt2-medium": 4096,
    "pythia-160m": 3072,
    "pythia-70m": 2048,
    "gpt2": 3072,
}


def neuron_df_command(model: str) -> str:
    return f"`make all` (or `python -m neuron_lib.neuron_df --model {model}`)"


def summary_command(model: str) -> str:
    return f"`make all` (or `python -m neuron_lib.summary --model {model} --token-dataset PATH`)"


# ---------------------------------------------------------------- locations
def notebook_dir() -> Path:
    return artifacts.repo_root() / "paper_notebooks"


def figures_out(figures_dir: str | Path | None, notebook: str) -> Path:
    """The notebook's figure folder: the given one, else ``artifacts.figures_dir(notebook)``."""
    return Path(figures_dir) if figures_dir else artifacts.figures_dir(notebook)


def subject_note(model: str) -> str | None:
    """What every result on ``model`` has to say about it (``models.PRETRAINED_NOTES``: SmolLM2-135M is
    dequantised 4-bit weights of an instruction-tuned model, not GPT-2); None for the zoo and the paper's models."""
    from neuron_lib.models import PRETRAINED_NOTES

    return PRETRAINED_NOTES.get(str(model)) or PRETRAINED_NOTES.get(Path(str(model)).name)


def with_subject_note(source: Mapping[str, Any], model: str) -> dict:
    """A figure source (``figures.json``, shown in figures/index.html) with the model's subject note in ``note``."""
    notes = [n for n in (subject_note(model), source.get("note")) if n]
    return {**source, "note": " ".join(notes) if notes else None}


def d_mlp_for(model: str) -> int | None:
    for prefix, d in KNOWN_D_MLP.items():
        if str(model).startswith(prefix):
            return d
    return None


# ---------------------------------------------------------------- input validation
@dataclasses.dataclass
class InputTable:
    """A validated per-neuron table: where it is and what its manifest says."""

    model: str
    path: Path
    manifest: dict | None
    manifest_path: Path | None

    @property
    def note(self) -> str | None:
        if self.manifest is None:
            return f"{self.path} has no manifest: its provenance (model, dataset, tokens) is unknown."
        return None

    def source(self) -> dict:
        return {
            "kind": "neuron dataframe",
            "model": self.model,
            "path": str(self.path),
            "manifest_path": str(self.manifest_path) if self.manifest_path else None,
            "manifest": self.manifest,
            "note": self.note,
        }

    def describe(self) -> str:
        lines = [f"model {self.model}: per-neuron table {self.path}"]
        if self.manifest:
            keep = {
                k: self.manifest[k] for k in ("stage", "model", "dataset", "n_tokens", "models") if k in self.manifest
            }
            lines.append(f"manifest {self.manifest_path}: {json.dumps(keep, default=str)}")
        else:
            lines.append(self.note)
        return "\n".join(lines)


def find_table_manifest(path: str | Path) -> Path | None:
    """``{stem}.manifest.json`` beside the table, else ``manifest.json`` in its folder, else None."""
    path = Path(path)
    for candidate in (artifacts.table_manifest(path), artifacts.manifest_path(path.parent)):
        if candidate.exists():
            return candidate
    return None


def _same_dataset(found: Any, expected: Any) -> bool:
    if found is None or expected is None:
        return True
    found, expected = str(found).rstrip("/"), str(expected).rstrip("/")
    return found == expected or Path(found).name == Path(expected).name


def _check_manifest(manifest: Mapping, model: str, dataset: str | None, where: str, command: str) -> dict:
    """Refuse a manifest that names another model/dataset; a folder manifest may hold one entry per model."""
    manifest = dict(manifest)
    models = manifest.get("models")
    if isinstance(models, Mapping) and not isinstance(manifest.get("model"), str):
        if model not in models:
            raise ManifestMismatch(f"{where} covers models {sorted(models)}, not {model!r}. Produce it with {command}.")
        entry = models[model]
        manifest = {**manifest, **(entry if isinstance(entry, Mapping) else {"entry": entry})}
    elif isinstance(models, (list, tuple)) and not isinstance(manifest.get("model"), str) and model not in models:
        raise ManifestMismatch(f"{where} covers models {list(models)}, not {model!r}. Produce it with {command}.")
    found = manifest.get("model")
    if isinstance(found, str) and found != model:
        raise ManifestMismatch(f"{where} was made for model {found!r}, not {model!r}. Produce it with {command}.")
    if dataset is not None and not _same_dataset(manifest.get("dataset"), dataset):
        raise ManifestMismatch(
            f"{where} was made on dataset {manifest.get('dataset')!r}, not {dataset!r}. Produce it with {command}."
        )
    return manifest


def validate_neuron_df(model: str, path: str | Path | None = None, dataset: str | None = None) -> InputTable:
    """Check that the per-neuron table exists and that its manifest (if any) names ``model`` (and ``dataset``)."""
    command = neuron_df_command(model)
    path = Path(path) if path else artifacts.neuron_df_file(model)
    if not path.exists():
        raise NeuronLibError(f"no per-neuron dataframe for model {model!r} at {path}. Produce it with {command}.")
    manifest_path = find_table_manifest(path)
    manifest = None
    if manifest_path is not None:
        manifest = _check_manifest(
            read_json(manifest_path), model, dataset, f"{path} (manifest {manifest_path})", command
        )
    return InputTable(model, path, manifest, manifest_path)


def load_neuron_table(table: InputTable | str | Path, model: str | None = None):
    """Load a per-neuron table with ``neuron_lib.neuron_df.load_neuron_df`` (computed excess_corr,
    is_universal, is_sparse, ``attrs["only_universal"]``); ``attrs["model"]`` is set for the figures."""
    path = table.path if isinstance(table, InputTable) else Path(table)
    model = model or (table.model if isinstance(table, InputTable) else path.stem)
    from neuron_lib.neuron_df import load_neuron_df

    df = load_neuron_df(str(path))
    df.attrs["model"] = model
    return df


# ---------------------------------------------------------------- activation summaries
@dataclasses.dataclass
class SummaryInputs:
    model: str
    root: Path  # $SUMMARY_DIR/{model}/activations
    folders: dict[str, Path]  # subset -> folder
    manifests: dict[str, dict | None]

    def dataset_path(self) -> Path | None:
        """The token dataset the summaries were made on: manifest ``dataset_path``, else ``dataset`` as a
        path, else a folder of that name under ``$DATASET_DIR/<family>/``."""
        for m in self.manifests.values():
            if not m:
                continue
            for key in ("dataset_path", "token_dataset", "dataset"):
                if m.get(key) and Path(m[key]).exists():
                    return Path(m[key])
            name = m.get("dataset")
            if name:
                return artifacts.find_token_dataset(name) or Path(m.get("dataset_path") or name)
        return None

    def source(self) -> dict:
        return {
            "kind": "activation summaries",
            "model": self.model,
            "path": str(self.root),
            "subsets": sorted(self.folders),
            "manifest": next((m for m in self.manifests.values() if m), None),
            "note": None if any(self.manifests.values()) else "the summaries have no manifest",
        }

    def describe(self) -> str:
        ds = self.dataset_path()
        return f"model {self.model}: activation summaries in {self.root} for subsets {sorted(self.folders)}" + (
            f"\ntoken dataset {ds}" if ds else ""
        )


def validate_summary(
    model: str,
    summary_dir: str | Path | None = None,
    subsets: Sequence[str] | None = None,
    dataset: str | None = None,
    need_dataset: bool = True,
) -> SummaryInputs:
    """Check the activation summaries of ``model`` (histogram.safetensors per subset) and their manifests."""
    command = summary_command(model)
    root = artifacts.activation_summary_root(model, summary_dir)
    if not root.is_dir():
        raise NeuronLibError(f"no activation summaries for model {model!r} at {root}. Produce them with {command}.")
    # a subset is finished when its manifest is there (written last) and names every part it holds
    available = {
        d.name: d
        for d in sorted(root.iterdir())
        if artifacts.manifest_path(d).exists()
        and all(artifacts.summary_part(d, p).exists() for p in artifacts.SUMMARY_PARTS)
    }
    if not available:
        raise NeuronLibError(
            f"{root} holds no finished summary (no subset folder with a manifest). Produce it with {command}."
        )
    if subsets:
        missing = [s for s in subsets if s not in available]
        if missing:
            raise NeuronLibError(f"no summary for subsets {missing} in {root}; available: {sorted(available)}.")
        available = {s: available[s] for s in subsets}
    manifests = {
        subset: _check_manifest(
            read_json(artifacts.manifest_path(folder)), model, dataset, f"summary {folder}", command
        )
        for subset, folder in available.items()
    }
    inputs = SummaryInputs(model, root, available, manifests)
    if need_dataset:
        ds = inputs.dataset_path()
        if ds is None:
            raise NeuronLibError(
                f"the summaries in {root} name no token dataset (manifest field 'dataset'), so the "
                f"top-activating examples cannot be shown. Re-run {command}."
            )
        if not ds.exists():
            raise NeuronLibError(
                f"the token dataset {ds} named by the summaries of {model!r} is missing. Rebuild it "
                "with `make all` (or `python -m neuron_lib.corpus build`)."
            )
    return inputs


def _pick_key(keys: Iterable[str], names: Sequence[str], where: Path) -> str:
    keys = list(keys)
    for name in names:
        if name in keys:
            return name
    raise NeuronLibError(f"{where} has none of the tensors {list(names)} (found {keys}); re-run the summary stage")


def load_activation_summary(folder: str | Path) -> dict:
    """``counts`` [L,N,E+1] and ``edges`` [E] (pre-activation histogram), ``top_values``/``top_indices`` [L,N,k]."""
    from neuron_lib.common import load_tensors

    folder = Path(folder)
    hist = load_tensors(artifacts.summary_part(folder, "histogram"))
    out = {"counts": hist["pre_bin_counts"].numpy(), "edges": hist["pre_bin_edges"].numpy(), "folder": folder}
    top_path = artifacts.summary_part(folder, "top_examples")
    if top_path.exists():  # token-level top-k (summary.py: top_values / top_index; unfilled slots -inf / -1)
        top = load_tensors(top_path)
        out["top_values"] = top[_pick_key(top, ("top_values", "values"), top_path)].float().numpy()
        out["top_indices"] = (
            top[_pick_key(top, ("top_index", "top_indices", "indices", "index"), top_path)].long().numpy()
        )
    mpath = artifacts.manifest_path(folder)
    out["manifest"] = read_json(mpath) if mpath.exists() else None
    return out


def parse_neurons(neurons) -> list[tuple[int, int]]:
    """``["3.17", "L0.5", (1, 2), [1, 2]]`` → ``[(3, 17), (0, 5), (1, 2), (1, 2)]``."""
    out = []
    for item in neurons or []:
        if isinstance(item, str):
            layer, neuron = item.upper().lstrip("L").replace("N", "").split(".")
            out.append((int(layer), int(neuron)))
        else:
            layer, neuron = item
            out.append((int(layer), int(neuron)))
    return out


def pick_neurons(
    summaries: Mapping[str, dict],
    neuron_df=None,
    n: int = 4,
    threshold: float | criteria.Universality = criteria.UNIVERSAL_THRESHOLD,
):
    """Neurons to show: the most universal (highest excess_corr among universal neurons) if a table is
    given, else those with the largest top activation in the summaries. Returns (neurons, reason)."""
    score = criteria.as_universality(threshold).score
    if neuron_df is not None and score in neuron_df and neuron_df[score].notna().any():
        ranked = neuron_df.dropna(subset=[score]).sort_values(score, ascending=False)
        uni = ranked[criteria.universal_mask(ranked, threshold).to_numpy()]
        chosen = (uni if len(uni) else ranked).head(n)
        reason = (
            f"the universal neurons ({criteria.as_universality(threshold)}) with the highest {score}"
            if len(uni)
            else f"no universal neurons; the neurons with the highest {score}"
        )
        return [(int(r.layer), int(r.neuron)) for r in chosen.itertuples()], reason
    best = None
    for s in summaries.values():
        if "top_values" in s:
            v = s["top_values"].max(axis=-1)
            best = v if best is None else np.maximum(best, v)
    if best is None:
        counts = next(iter(summaries.values()))["counts"]
        return [(0, i) for i in range(min(n, counts.shape[1]))], "the first neurons of layer 0 (no top examples stored)"
    flat = np.argsort(-best.reshape(-1), kind="stable")[:n]
    return [
        tuple(int(x) for x in np.unravel_index(i, best.shape)) for i in flat
    ], "the neurons with the largest activations"


def resolve_tokenizer(model: str, tokenizer: str | None = None, dataset_manifest: Mapping | None = None):
    """The tokenizer to decode examples: ``tokenizer`` (a folder or hub id), else the model's, else the
    ``tokenizer_dir`` the token dataset's manifest names."""
    from transformers import AutoTokenizer

    if tokenizer:
        return AutoTokenizer.from_pretrained(str(tokenizer))
    errors = []
    try:
        from neuron_lib.models import load_tokenizer

        return load_tokenizer(model)
    except Exception as exc:  # an unresolvable model name: fall back to the dataset's tokenizer
        errors.append(str(exc))
    tok_dir = (dataset_manifest or {}).get("tokenizer_dir")
    if tok_dir and Path(tok_dir).exists():
        return AutoTokenizer.from_pretrained(str(tok_dir))
    raise NeuronLibError(f"no tokenizer for {model!r} ({'; '.join(errors)}); pass the notebook parameter `tokenizer`.")


def load_examples(
    summaries: Mapping[str, dict],
    dataset,
    tokenizer,
    neurons: Sequence[tuple[int, int]],
    n_examples: int = 8,
    before: int = 20,
    after: int = 5,
):
    """Top-activating examples of each neuron over all subsets (best ``n_examples`` overall), with token strings."""
    import pandas as pd

    from neuron_lib import figures as F

    tokens = dataset.with_format(None)["tokens"] if hasattr(dataset, "with_format") else dataset["tokens"]
    tokens = np.asarray(tokens)
    subsets_col = None
    if hasattr(dataset, "column_names") and "subset" in dataset.column_names:
        subsets_col = list(dataset.with_format(None)["subset"])
    parts = []
    for layer, neuron in neurons:
        per_neuron = []
        for s in summaries.values():
            if "top_values" not in s:
                continue
            ex = F.top_example_windows(
                s["top_values"][layer, neuron],
                s["top_indices"][layer, neuron],
                tokens,
                before=before,
                after=after,
                layer=layer,
                neuron=neuron,
                subsets=subsets_col,
            )
            per_neuron.append(ex)
        if not per_neuron:
            continue
        ex = pd.concat(per_neuron, ignore_index=True)
        ex = ex.sort_values("value", ascending=False).drop_duplicates(["row", "pos"]).head(n_examples)
        ex["rank"] = range(len(ex))
        parts.append(ex)
    if not parts:
        return pd.DataFrame(
            columns=[
                "layer",
                "neuron",
                "rank",
                "value",
                "row",
                "pos",
                "subset",
                "token_ids",
                "target",
                "context_values",
                "tokens",
            ]
        )
    out = pd.concat(parts, ignore_index=True)
    out["tokens"] = [F.decode_tokens(tokenizer, ids) for ids in out["token_ids"]]
    out["context_source"] = "top-k list"
    return out


def recompute_context_activations(
    model_name: str, dataset, examples, before: int = 20, after: int = 5, device: str = "cpu", batch_size: int = 8
):
    """Fill every window token's post-activation by running the model on the examples' rows."""
    import torch

    from neuron_lib.models import load_model
    from neuron_lib.streaming import mlp_activations, tokens_tensor

    model = load_model(model_name, device=device)
    rows = sorted(set(int(r) for r in examples["row"]))
    acts = {}
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        tokens = torch.stack([tokens_tensor(dataset, r, r + 1)[0] for r in chunk])
        _, post = mlp_activations(model, tokens, want_pre=False, want_post=True)  # [L, B, P, N]
        for j, r in enumerate(chunk):
            acts[r] = post[:, j].float().cpu().numpy()
    examples = examples.copy()
    values = []
    for ex in examples.itertuples():
        start = int(ex.pos) - int(ex.target)
        values.append(list(acts[int(ex.row)][int(ex.layer), start : start + len(ex.token_ids), int(ex.neuron)]))
    examples["context_values"] = values
    examples["context_source"] = "model"
    return examples


# ---------------------------------------------------------------- prompt runs and co-activation graphs
def coactivation_command(model: str, run: str) -> str:
    return (
        f"`make all` (or `python -m neuron_lib.prompts --model {model} --prompts-csv <{run}.csv>`, then "
        f"`python -m neuron_lib.coactivation --model {model} --run {run}` and optionally `python -m "
        f"neuron_lib.perturb --model {model} --run {run} --token-dataset PATH`)"
    )


@contextlib.contextmanager
def graphs_root(graphs_dir: str | Path | None):
    """``$GRAPHS_DIR`` set to ``graphs_dir`` for the block (unchanged when None)."""
    if not graphs_dir:
        yield
        return
    saved = os.environ.get("GRAPHS_DIR")
    os.environ["GRAPHS_DIR"] = str(graphs_dir)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("GRAPHS_DIR", None)
        else:
            os.environ["GRAPHS_DIR"] = saved


def validate_coactivation(model: str, run: str, activation_threshold: float | None = None):
    """The prompt run and its co-activation graph (``coactivation_analysis.load_run`` / ``load_graph_outputs``),
    or a NeuronLibError naming the commands that produce them."""
    from neuron_lib import coactivation_analysis as CA

    if not artifacts.manifest_path(artifacts.prompt_activations(model, run)).exists():
        raise NeuronLibError(
            f"no prompt run {run!r} of model {model!r} at {artifacts.prompt_activations(model, run)}. Produce it "
            f"with {coactivation_command(model, run)}."
        )
    if not artifacts.manifest_path(artifacts.coactivation_graph(model, run)).exists():
        raise NeuronLibError(
            f"no co-activation graph of model {model!r}, run {run!r} at {artifacts.coactivation_graph(model, run)}. "
            f"Produce it with {coactivation_command(model, run)}."
        )
    return CA.load_run(model, run, activation_threshold), CA.load_graph_outputs(model, run, activation_threshold)


# ---------------------------------------------------------------- execution
class NotebookFailed(NeuronLibError):
    """A notebook raised; the message carries its error and the executed notebook's path."""


_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
_env_lock = threading.Lock()
_env_depth = 0


@contextlib.contextmanager
def _kernel_env(threads: int | None = None):
    """The kernel inherits this process's environment; make sure it can import neuron_lib from this checkout.
    ``threads``: cap each kernel's torch / numba threads (notebooks run side by side share the cores). Set once
    by the outermost entry; nested entries (``execute_notebook`` inside ``_execute_all``'s threads) change
    nothing, so concurrent runs never race on os.environ."""
    global _env_depth
    with _env_lock:
        _env_depth += 1
        outer = _env_depth == 1
        if outer:
            saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "TQDM_DISABLE", *_THREAD_VARS)}
            os.environ["PYTHONPATH"] = str(artifacts.repo_root()) + (
                os.pathsep + saved["PYTHONPATH"] if saved["PYTHONPATH"] else ""
            )
            os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in the executed notebooks
            if threads:
                for k in _THREAD_VARS:
                    os.environ[k] = str(threads)
    try:
        yield
    finally:
        with _env_lock:
            _env_depth -= 1
            if outer:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


def execute_notebook(
    name: str,
    out_dir: str | Path,
    parameters: Mapping[str, Any],
    kernel_name: str = "python3",
    timeout: int | None = 600,
) -> Path:
    """Run ``paper_notebooks/<name>.ipynb`` with papermill into ``out_dir/<name>.ipynb`` (figures beside it)."""
    import logging

    import papermill as pm

    logging.getLogger("papermill").setLevel(logging.WARNING)
    src = notebook_dir() / f"{name}.ipynb"
    if not src.exists():
        raise NeuronLibError(f"no notebook {src}; known: {', '.join(NOTEBOOKS)}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.ipynb"
    params = {**parameters, "figures_dir": str(out_dir)}
    with _kernel_env():
        try:
            pm.execute_notebook(
                str(src),
                str(out),
                parameters=params,
                kernel_name=kernel_name,
                cwd=str(artifacts.repo_root()),
                progress_bar=False,
                log_output=False,
                request_save_on_cell_execute=False,
                execution_timeout=timeout,
                # the kernel's start-up warnings (e.g. about TCP transport) are noise here
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
            )
        except pm.PapermillExecutionError as exc:
            raise NotebookFailed(
                f"notebook {name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
                f"  the executed notebook with the full traceback: {out}"
            ) from None
    return out


def _abs(path) -> str | None:
    return str(Path(path).resolve()) if path else None


def run_notebooks(
    model: str,
    neuron_df: str | Path | None = None,
    summary_dir: str | Path | None = None,
    out: str | Path | None = None,
    only: Sequence[str] | None = None,
    dataset: str | None = None,
    extra: Mapping[str, Any] | None = None,
    kernel_name: str = "python3",
    timeout: int | None = 600,
    log=print,
    force: bool = False,
    parallel: int | None = None,
) -> tuple[list[Path], list[str]]:
    """Validate inputs, execute the notebooks (those whose inputs key changed, or all with ``force``; ``parallel``
    at a time, default ``notebook_jobs()``), write the index. Returns (executed or up-to-date notebooks,
    failures)."""
    names = list(only or NOTEBOOKS)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise NeuronLibError(f"unknown notebooks {unknown}; known: {', '.join(NOTEBOOKS)}")
    root = Path(out) if out else artifacts.figures_root()
    for name in [n for n in names if n in NEEDS_COACTIVATION]:
        # without its inputs the co-activation notebook is skipped in a full run, an error when asked for by name
        defaults = {**notebook_parameters(name), **(extra or {})}
        try:
            with graphs_root(defaults.get("graphs_dir")):
                validate_coactivation(model, defaults["run"], defaults.get("activation_threshold"))
        except NeuronLibError as exc:
            if only:
                raise
            log(f"[{name}] skipped: {exc}")
            names.remove(name)
    for name in [n for n in names if n in NEEDS_INTERVENTION]:
        # like the co-activation notebook: skipped in a full run without its results, an error when asked for
        from neuron_lib.intervention_figures import find_run

        try:
            find_run(model, NEEDS_INTERVENTION[name], dataset)
        except NeuronLibError as exc:
            if only:
                raise
            log(f"[{name}] skipped: {exc}")
            names.remove(name)
    for name in [n for n in names if n in NEEDS_EXPLANATIONS]:
        from neuron_lib.explain_figures import find_explanations

        try:
            find_explanations(model, dataset)
        except NeuronLibError as exc:
            if only:
                raise
            log(f"[{name}] skipped: {exc}")
            names.remove(name)
    table = validate_neuron_df(model, neuron_df, dataset) if any(n in NEEDS_NEURON_DF for n in names) else None
    if any(n in NEEDS_SUMMARY for n in names):
        validate_summary(model, summary_dir, dataset=dataset)
    if table is None:
        # dataset_summary picks neurons from the table when there is one
        try:
            table = validate_neuron_df(model, neuron_df, dataset)
        except NeuronLibError:
            table = None
    common = {
        "model": model,
        "neuron_df_path": _abs(table.path) if table else None,
        "summary_dir": _abs(summary_dir or artifacts.root("SUMMARY_DIR")),
        "dataset": dataset,
    }
    _check_extra(names, extra)
    jobs = [(name, name, artifacts.figures_dir(name, root), {**common, **(extra or {})}) for name in names]
    return _execute_all(jobs, root, kernel_name, timeout, log, reuse=not force, parallel=parallel)


INPUTS_STAMP = "inputs.json"  # beside an executed notebook: the key of what it read (see inputs_key)
#: manifest fields that change from run to run without changing a result (timings), left out of the key
_VOLATILE = ("created_unix", "seconds", "pass_seconds", "tokens_per_second")
_INPUT_ROOTS = ("DATASET_DIR", "MODELS_DIR", "RESULTS_DIR", "SUMMARY_DIR", "DATAFRAMES_DIR", "INTERVENTION_DIR",
                "GRAPHS_DIR")  # fmt: skip


def _stable(obj):
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if k not in _VOLATILE and not k.endswith("_seconds")}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def inputs_key(name: str, params: Mapping[str, Any]) -> str:
    """What a notebook run depends on, hashed: the notebook's source, its parameters, the neuron_lib sources and
    every stage manifest under the output roots (timings left out; the browser's own folder, built from the
    figures, and the outputs of pretrained models other than the notebook's own excluded: `make all` builds
    SmolLM2 after the zoo's figures, which must not make them stale). The same key means the same figures: the run
    is skipped."""
    import hashlib

    h = hashlib.sha256()
    h.update((notebook_dir() / f"{name}.ipynb").read_bytes())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    for src in sorted(Path(__file__).resolve().parent.rglob("*.py")):
        h.update(src.read_bytes())
    browser = artifacts.browser_index_dir().resolve()
    own = artifacts.model_name(str(params["model"])) if params.get("model") else None
    pretrained = artifacts.pretrained_root()
    others = {p.name for p in pretrained.iterdir() if p.is_dir() and p.name[0] != "."} if pretrained.is_dir() else set()
    others.discard(own)
    # a pretrained model's vocabulary table is named by its tokenizer family (vocab_dfs/smollm2.*), not its name
    from neuron_lib.vocab_features import tokenizer_name

    others |= {tokenizer_name(o) for o in others}
    others.discard(tokenizer_name(own) if own else None)

    def other_model(rel: Path) -> bool:
        return any(part == o or part.startswith(f"{o}.") for part in rel.parts for o in others)

    for kind in _INPUT_ROOTS:
        base = artifacts.root(kind)
        if not base.is_dir():
            continue
        for m in sorted([*base.rglob(artifacts.MANIFEST_NAME), *base.rglob(f"*.{artifacts.MANIFEST_NAME}")]):
            if browser in m.resolve().parents or other_model(m.relative_to(base)):
                continue
            try:
                content = _stable(read_json(m))
            except NeuronLibError:
                content = "unreadable"
            h.update(f"{m.relative_to(base)}\n".encode())
            h.update(json.dumps(content, sort_keys=True, default=str).encode())
    return h.hexdigest()


def notebook_jobs() -> int:
    """Notebooks run side by side: ``$NL_NOTEBOOK_JOBS``, else 2 where there are ≥ 2 cores (a notebook's kernel
    is mostly one busy core: start-up, pandas, matplotlib), each kernel then capped at cores / jobs threads."""
    env = os.environ.get("NL_NOTEBOOK_JOBS")
    if env:
        if not env.isdigit() or int(env) < 1:
            raise NeuronLibError(f"NL_NOTEBOOK_JOBS={env!r} must be a positive integer")
        return int(env)
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def _execute_all(
    jobs, root: Path, kernel_name: str, timeout: int | None, log, reuse: bool = True, parallel: int | None = None
) -> tuple[list[Path], list[str]]:
    """Execute (label, notebook, out_dir, params) jobs, ``parallel`` at a time (default ``notebook_jobs()``), keep
    going past failures, then rebuild the index. With ``reuse``, a notebook whose inputs key (``inputs_key``)
    matches its last successful run is not run again. Results are reported in the jobs' order."""
    from concurrent.futures import ThreadPoolExecutor

    from neuron_lib.common import atomic_write_json

    def one(job) -> tuple[Path | None, str | None]:
        label, name, out_dir, params = job
        params = {k: v for k, v in params.items() if k in notebook_parameters(name)}
        t0 = time.time()
        key = inputs_key(name, params)
        stamp, out = Path(out_dir) / INPUTS_STAMP, Path(out_dir).resolve() / f"{name}.ipynb"
        if reuse and out.exists() and stamp.exists() and read_json(stamp).get("key") == key:
            log(f"[{label}] {out.parent} is up to date (same notebook, parameters, code and inputs: skipped)")
            return out, None
        try:
            path = execute_notebook(name, out_dir, params, kernel_name=kernel_name, timeout=timeout)
        except NotebookFailed as exc:
            log(f"[{label}] FAILED ({time.time() - t0:.0f}s)\n{exc}")
            return None, str(exc)
        atomic_write_json(stamp, {"notebook": name, "key": key, "parameters": params})
        log(f"[{label}] {path.parent} ({time.time() - t0:.0f}s)")
        return path, None

    parallel = max(1, min(parallel or notebook_jobs(), len(jobs) or 1))
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None
    with _kernel_env(threads):
        if parallel == 1:
            results = [one(job) for job in jobs]
        else:
            log(f"{len(jobs)} notebook(s), {parallel} at a time ({threads} thread(s) per kernel)")
            with ThreadPoolExecutor(max_workers=parallel) as pool:
                results = list(pool.map(one, jobs))
    done = [path for path, _ in results if path is not None]
    failed = [err for _, err in results if err is not None]
    index = write_index(root)
    main = artifacts.figures_root().resolve()
    if (
        main != root.resolve() and main in root.resolve().parents
    ):  # e.g. figures/models/{model}: link it from the main one
        write_index(main)
        log(f"index: {artifacts.figures_index(main)}")
    log(f"index: {index}")
    return done, failed


def _check_extra(names: Sequence[str], extra: Mapping[str, Any] | None) -> None:
    known = set().union(*(notebook_parameters(n) for n in names))
    ignored = sorted(set(extra or {}) - known)
    if ignored:
        raise NeuronLibError(f"no notebook among {list(names)} takes the parameters {ignored}; known: {sorted(known)}")


def run_paper_table(
    table: str | Path,
    out: str | Path | None = None,
    model: str | None = None,
    d_mlp: int | None = None,
    only: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
    kernel_name: str = "python3",
    timeout: int | None = 600,
    log=print,
) -> tuple[list[Path], list[str]]:
    """Run the properties (and prediction) notebooks on one of the paper's published universal.csv tables."""
    table = Path(table)
    if not table.exists():
        raise NeuronLibError(
            f"no paper table at {table}; the paper's CSVs live in shared/data/paper/<model>/ "
            "(pass --shared-dir or the table's path)"
        )
    model = model or table.parent.name
    d_mlp = d_mlp or d_mlp_for(model)
    root = Path(out) if out else artifacts.figures_root()
    names = list(only or PAPER_TABLE_NOTEBOOKS)
    _check_extra(names, extra)
    params = {"model": model, "neuron_df_path": _abs(table), "d_mlp": d_mlp, **(extra or {})}
    jobs = [(f"{name} on {table}", name, artifacts.paper_figures_dir(model, name, root), params) for name in names]
    return _execute_all(jobs, root, kernel_name, timeout, log)


def notebook_parameters(name: str) -> dict[str, Any]:
    """The names and default values of a notebook's ``parameters`` cell."""
    import ast

    import nbformat

    nb = nbformat.read(notebook_dir() / f"{name}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            out = {}
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                    out[node.targets[0].id] = ast.literal_eval(node.value)
            return out
    raise NeuronLibError(f"{name}.ipynb has no cell tagged 'parameters'")


# ---------------------------------------------------------------- index.html
def write_index(figures_root: str | Path) -> Path:
    """``index.html`` under ``figures_root`` linking every figure listed in a ``figures.json`` below it."""
    from neuron_lib.common import atomic_write_text

    root = Path(figures_root)
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for path in root.rglob(artifacts.FIGURES_JSON):
        try:
            records.append((path.parent, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    order = list(NOTEBOOKS)
    records.sort(
        key=lambda r: (
            r[0].parent.as_posix(),
            order.index(r[1].get("notebook")) if r[1].get("notebook") in order else len(order),
            r[0].name,
        )
    )
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>neuron_lib figures</title><style>",
        "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
        "figure{margin:1em 0;border-top:1px solid #ddd;padding-top:.5em}img{max-width:100%}"
        "figcaption{font-size:.95em}.note{color:#a15c00}pre{background:#f6f6f6;padding:.5em;overflow:auto;"
        "font-size:.8em}",
        "</style></head><body><h1>Figures</h1>",
    ]
    browser_links = [  # the neuron browser's dashboard and static pages (python -m neuron_lib.browser build)
        f"<a href='{esc(path.relative_to(root).as_posix())}'>{label}</a>"
        for path, label in (
            (artifacts.browser_dashboard(root), "analysis dashboard"),
            (artifacts.browser_site(root) / "index.html", "neuron browser (static pages)"),
        )
        if path.exists()
    ]
    if browser_links:
        parts.append(f"<p class='browser'>{' · '.join(browser_links)}</p>")
    if not records:
        parts.append("<p>No figures yet: run <code>python -m neuron_lib.notebooks --model MODEL</code>.</p>")
    parts.append(
        "<ul>"
        + "".join(
            f"<li><a href='#{esc(folder.relative_to(root).as_posix())}'>"
            f"{esc(rec.get('title', folder.name))}</a> — {esc(folder.relative_to(root).as_posix())}</li>"
            for folder, rec in records
        )
        + "</ul>"
    )
    for folder, rec in records:
        rel = folder.relative_to(root).as_posix()
        link = lambda name, rel=rel: esc(f"{rel}/{name}")  # noqa: E731
        parts.append(f"<h2 id='{esc(rel)}'>{esc(rec.get('title', folder.name))}</h2>")
        executed = sorted(folder.glob("*.ipynb"))
        if executed:
            parts.append(
                "<p>Executed notebook: "
                + ", ".join(f"<a href='{link(p.name)}'>{esc(p.name)}</a>" for p in executed)
                + "</p>"
            )
        source = rec.get("source") or {}
        if source:
            parts.append(
                f"<p>Data: {esc(str(source.get('kind', '')))} <code>{esc(str(source.get('path', '')))}</code>"
                f" (model {esc(str(source.get('model', '')))})</p>"
            )
            if source.get("note"):
                parts.append(f"<p class='note'>{esc(source['note'])}</p>")
            if source.get("manifest"):
                parts.append(
                    "<details><summary>manifest of the data</summary><pre>"
                    f"{esc(json.dumps(source['manifest'], indent=2, default=str))}</pre></details>"
                )
        for fig in rec.get("figures", []):
            files = fig.get("files", {})
            parts.append("<figure>")
            if "png" in files:
                parts.append(
                    f"<a href='{link(files['png'])}'><img src='{link(files['png'])}' "
                    f"alt='{esc(fig['name'])}' loading='lazy'></a>"
                )
            parts.append(f"<figcaption><b>{esc(fig['name'])}</b>: {esc(fig.get('caption', ''))}")
            if fig.get("note"):
                parts.append(f"<br><span class='note'>{esc(fig['note'])}</span>")
            others = [f"<a href='{link(f)}'>{esc(kind)}</a>" for kind, f in files.items() if kind != "png"]
            if others:
                parts.append("<br>" + " · ".join(others))
            parts.append("</figcaption></figure>")
    parts.append("</body></html>")
    return atomic_write_text(artifacts.figures_index(root), "\n".join(parts))


# ---------------------------------------------------------------- CLI
def _parse_param(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    if not key or not _:
        raise NeuronLibError(f"-p expects KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m neuron_lib.notebooks",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--model", help="model whose outputs the notebooks read, e.g. zoo-gpt2-a")
    parser.add_argument("--neuron-df", help="per-neuron table (default $DATAFRAMES_DIR/neuron_dfs/{model}.csv)")
    parser.add_argument("--summary-dir", help="activation summaries root (default $SUMMARY_DIR)")
    parser.add_argument("--dataset", help="refuse inputs whose manifest names another dataset")
    parser.add_argument("--out", help="figures root (default $FIGURES_DIR)")
    parser.add_argument("--only", nargs="+", choices=list(NOTEBOOKS), help="run only these notebooks")
    parser.add_argument(
        "--paper-table",
        nargs="?",
        const="",
        default=None,
        help="run on one of the paper's universal.csv tables (default: small-a from --shared-dir)",
    )
    parser.add_argument("--shared-dir", help="the shared/ folder (default $SHARED_DIR or ../shared beside the repo)")
    parser.add_argument("--d-mlp", type=int, help="neurons per layer, for shares from universal-only tables")
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra notebook parameter (JSON value), e.g. -p kurt_threshold=8",
    )
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3 = this Python)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="notebooks run side by side, each kernel with cores/jobs threads (default $NL_NOTEBOOK_JOBS or 2 on "
        "≥ 2 cores; 1 = one after the other, each with every core)",
    )
    parser.add_argument("--index-only", action="store_true", help="only rebuild index.html")
    parser.add_argument(
        "--force", action="store_true", help="run every notebook, also those whose inputs did not change"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="same as --force (what `make all OVERWRITE=<stage>` passes)"
    )
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs must be at least 1")
    extra = dict(_parse_param(p) for p in args.param)
    if args.d_mlp:
        extra["d_mlp"] = args.d_mlp
    if args.index_only:
        print(write_index(Path(args.out) if args.out else artifacts.figures_root()))
        return
    if args.paper_table is not None:
        if args.shared_dir:
            os.environ["SHARED_DIR"] = str(Path(args.shared_dir).resolve())
        table = args.paper_table or artifacts.paper_table()
        _, failed = run_paper_table(
            table,
            out=args.out,
            model=args.model,
            d_mlp=args.d_mlp,
            only=args.only,
            extra=extra,
            kernel_name=args.kernel,
            timeout=args.timeout,
        )
    else:
        if not args.model:
            parser.error("--model is required (or --paper-table / --index-only)")
        _, failed = run_notebooks(
            args.model,
            args.neuron_df,
            args.summary_dir,
            out=args.out,
            only=args.only,
            dataset=args.dataset,
            extra=extra,
            kernel_name=args.kernel,
            timeout=args.timeout,
            force=args.force or args.overwrite,
            parallel=args.jobs,
        )
    if failed:
        raise NeuronLibError(f"{len(failed)} notebook(s) failed (see above)")


if __name__ == "__main__":
    run_cli(main)
