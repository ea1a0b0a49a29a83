"""Where every artifact lives: one function per artifact kind, the only place a file or folder name is spelled.

Producers write to these paths and every consumer (neuron_df, notebooks, slurm, the browser) reads through
them; docs/DESIGN.md's artifact table lists kind → path → producer → consumers → checked manifest fields.

Roots (environment variable → default, relative to the working directory) can be moved one by one, so
tests and clusters redirect everything with environment variables:

    CORPUS_DIR → corpus/          DATASET_DIR → token_datasets/      MODELS_DIR → models/
    RESULTS_DIR → correlation_results/   SUMMARY_DIR → summary_data/   DATAFRAMES_DIR → dataframes/
    CACHED_ACTIVATIONS_DIR → cached_activations/   FIGURES_DIR → figures/   GRAPHS_DIR → graphs/
    INTERVENTION_DIR → intervention_results/
    SHARED_DIR → ../shared

Model arguments are model names as users give them (zoo name, alias, folder, hub id); the path component is
``models.model_output_name(name)``. Dataset arguments are token-dataset folders or their names; the path
component is the folder's name (:func:`dataset_name`).
"""

from __future__ import annotations

import os
from pathlib import Path

MANIFEST_NAME = "manifest.json"

ROOTS: dict[str, str] = {
    "CORPUS_DIR": "corpus",
    "DATASET_DIR": "token_datasets",
    "MODELS_DIR": "models",
    "RESULTS_DIR": "correlation_results",
    "SUMMARY_DIR": "summary_data",
    "DATAFRAMES_DIR": "dataframes",
    "CACHED_ACTIVATIONS_DIR": "cached_activations",
    "FIGURES_DIR": "figures",
    "GRAPHS_DIR": "graphs",
    "INTERVENTION_DIR": "intervention_results",
}

# ---------------------------------------------------------------- file names inside artifact folders
#: activation summary parts: ``{part}.safetensors`` in each subset folder (summary.py's file contract)
SUMMARY_PARTS = ("histogram", "moments", "top_examples", "vocab")
#: weight summary files (weights.py's file contract)
WEIGHT_STATS_FILE = "neuron_stats.csv"
WEIGHT_VOCAB_FILE = "vocab_composition.safetensors"
WEIGHT_NEURON_FILE = "neuron_composition.safetensors"
WEIGHT_HEAD_FILE = "head_composition.safetensors"
WEIGHT_VOCAB_NULL_FILE = "vocab_kurt_null.csv"  # per-layer null of vocab_kurt (random w_out directions vs W_U)
#: correlation pair folder files (correlations_fast.py's file contract)
CORRELATION_SUMMARY_FILE = "correlation_summary.safetensors"
CORRELATION_SUMMARY_T_FILE = "correlation_summary_T.safetensors"
CORRELATION_STATS_FILE = "neuron_stats.safetensors"
CORRELATION_FULL_GLOB = "correlation.rows*.safetensors"
CORRELATION_TABLE_STEM = "neuron_correlations"
#: all-pairs universality run folder files (universality.py's file contract)
UNIVERSALITY_CONTROLS_STEM = "criteria_controls"  # .csv + .parquet: candidate x layer x control shares
UNIVERSALITY_PAIRS_STEM = "pair_summary"  # .csv: ordered model pair x layer: median max-corr, alignment
UNIVERSAL_ALIGNED_FILE = "universal_aligned.csv"  # interpretable_neurons: the chosen criterion's set
#: activation cache files (activations.py's file contract)
CACHE_NEURONS_FILE = "neurons.safetensors"
CACHE_METRICS_FILE = "metrics.safetensors"
#: prompt runs (prompts.py, coactivation.py, perturb.py: one folder per model and prompt set)
PROMPT_TOKENS_STEM = "tokens"  # per generated token: .csv + .parquet
PROMPT_SAMPLES_STEM = "samples"  # per generated sample: .csv + .parquet
PROMPT_ACTIVE_FILE = "active_neurons.json"  # sample_id -> sorted active neuron ids
PROMPT_NEURONS_FILE = "neurons.csv"  # matrix column -> neuron id, layer, dimension
PROMPT_FREQUENCY_FILE = "neuron_frequency.csv"  # neuron id -> count, frequency over samples
PROMPT_MATRIX_FILE = "activation_matrix.npz"  # scipy.sparse CSR samples x neurons (binary)
PROMPT_TOKEN_MATRIX_FILE = "token_activation_matrix.npz"  # scipy.sparse CSR generated tokens x neurons (binary)
#: neuron traces of one text (trace.py, written into --out)
TRACE_JSON_FILE = "trace.json"
TRACE_IDS_FILE = "active_neurons.txt"
GRAPH_NODES_FILE = "nodes.csv"
GRAPH_EDGES_FILE = "edges.parquet"  # every co-activation edge (src, dst, count, weight)
GRAPH_THRESHOLDS_FILE = "threshold_analysis.csv"
GRAPH_EDGELIST_FILE = "graph.t{threshold}.edgelist"
GRAPH_GRAPHML_FILE = "graph.t{threshold}.graphml"
GRAPH_HISTOGRAM_STEM = "histogram_{what}"  # .png + .csv (what: node_weight, edge_weight, degree)
SUBSETS_DIR = "subsets"
SUBSETS_INDEX_FILE = "subsets.csv"
PERTURB_GENERATIONS_DIR = "generations"
PERTURB_LOSS_FILE = "loss_kl.csv"
PERTURB_COMPARISON_FILE = "comparison.csv"
#: figures
FIGURES_JSON = "figures.json"
FIGURES_INDEX = "index.html"


def root(kind: str) -> Path:
    """Folder for one kind of generated output, e.g. ``root("DATASET_DIR")``."""
    if kind not in ROOTS:
        raise KeyError(f"unknown output root {kind!r}; known: {sorted(ROOTS)}")
    return Path(os.environ.get(kind, ROOTS[kind]))


def model_name(model: str) -> str:
    """The single path component a model's outputs are filed under."""
    from neuron_lib.models import model_output_name

    return model_output_name(str(model))


def dataset_name(dataset: str | Path) -> str:
    """The path component of a token dataset: its folder's name (a bare name stays as it is)."""
    path = Path(str(dataset)).expanduser()
    return path.resolve().name if path.exists() else path.name


def manifest_path(folder: str | Path) -> Path:
    return Path(folder) / MANIFEST_NAME


# ---------------------------------------------------------------- corpus and token datasets (corpus.py)
def corpus_downloads() -> Path:
    return root("CORPUS_DIR") / "downloads"


def corpus_documents() -> Path:
    return root("CORPUS_DIR") / "documents"


def tokenizer_dir() -> Path:
    """The embedded default's tokenizer (``tokenizer.json`` + HF config; ``AutoTokenizer`` loads it)."""
    return root("CORPUS_DIR") / "tokenizer"


def token_dataset(family: str, name: str) -> Path:
    """A token dataset (HF ``save_to_disk`` folder + manifest): ``$DATASET_DIR/{family}/{name}``."""
    return root("DATASET_DIR") / family / name


def embedded_dataset(split: str, ctx_len: int) -> Path:
    """The embedded default's token dataset of one split (``train`` / ``analysis``)."""
    return token_dataset("zoo", f"embedded.{split}.{ctx_len}")


def find_token_dataset(name: str) -> Path | None:
    """A token dataset by folder name under any family of ``$DATASET_DIR`` (None when there is none)."""
    found = sorted(root("DATASET_DIR").glob(f"*/{Path(name).name}"))
    return found[0] if found else None


# ---------------------------------------------------------------- models (zoo.py, models.py)
def zoo_root() -> Path:
    return root("MODELS_DIR") / "zoo"


def zoo_model(name: str) -> Path:
    """A zoo model in the hub's format (+ manifest, loss curve)."""
    return zoo_root() / name


ZOO_WEIGHTS_FILE = "model.safetensors"  # the hub's file name (save_pretrained)
ZOO_LOSS_CURVE_FILE = "loss_curve.csv"


def zoo_checkpoint(name: str) -> Path:
    """A zoo model's resumable training checkpoint (removed when training finishes)."""
    return zoo_model(name) / "checkpoint"


def zoo_snapshot(name: str, step: int) -> Path:
    """A hub-format copy of a zoo model at an earlier training step (``snapshot_steps``; training-length controls)."""
    return zoo_model(name) / "snapshots" / f"{name}-step{int(step)}"


def zoo_untrained(prefix: str, k: int) -> Path:
    """The k-th freshly initialised model of a zoo's configuration (``untrained_controls``; a negative control)."""
    return zoo_root() / "_untrained" / f"{prefix}-untrained-{int(k)}"


# ---------------------------------------------------------------- correlations (correlations_fast.py)
def correlation_run(reference: str, other: str, dataset: str | Path, simtype: str, baseline: str) -> Path:
    """One (reference, other, baseline) pair folder: row/column summaries, neuron stats, manifest."""
    return (
        root("RESULTS_DIR")
        / f"{model_name(reference)}+{model_name(other)}"
        / dataset_name(dataset)
        / f"{simtype}.{baseline}"
    )


def correlation_checkpoint(reference: str, dataset: str | Path, key: str) -> Path:
    return root("RESULTS_DIR") / "_checkpoints" / model_name(reference) / dataset_name(dataset) / key


def universality_run(models_key: str, dataset: str | Path) -> Path:
    """An all-pairs universality run over one model set (``models_key``: the set's name, e.g. ``zoo-gpt2``):
    the candidate criteria's per-layer control table, the pair summary, manifest."""
    return root("RESULTS_DIR") / "universality" / str(models_key) / dataset_name(dataset)


def universality_checkpoint(models_key: str, dataset: str | Path) -> Path:
    return root("RESULTS_DIR") / "_checkpoints" / "universality" / str(models_key) / dataset_name(dataset)


def correlation_tables_root(model: str) -> Path:
    return root("DATAFRAMES_DIR") / "correlations" / model_name(model)


def correlation_table_dir(model: str, dataset: str | Path) -> Path:
    """The universal-neuron table of a reference model: ``neuron_correlations.{csv,parquet}`` + manifest."""
    return correlation_tables_root(model) / dataset_name(dataset)


def correlation_table_file(folder: Path, fmt: str) -> Path:
    return Path(folder) / f"{CORRELATION_TABLE_STEM}.{fmt}"


def find_correlation_table(model: str, dataset: str = "") -> Path | None:
    """The folder holding the correlation table of ``model`` (on ``dataset``, or the only one), or None."""
    from neuron_lib.common import NeuronLibError

    def has_table(p: Path) -> bool:
        return any(correlation_table_file(p, f).exists() for f in ("csv", "parquet"))

    if dataset:
        folder = correlation_table_dir(model, dataset)
        return folder if has_table(folder) else None
    base = correlation_tables_root(model)
    found = sorted(p for p in base.iterdir() if p.is_dir() and has_table(p)) if base.exists() else []
    if len(found) > 1:
        raise NeuronLibError(
            f"{model!r} has correlation tables for several datasets "
            f"({', '.join(p.name for p in found)}); choose one with --dataset"
        )
    return found[0] if found else None


# ---------------------------------------------------------------- statistics (weights.py, summary.py)
def weights_summary(model: str, raw: bool = False) -> Path:
    """Weight statistics: neuron_stats.csv, vocab/neuron/head composition safetensors, manifest."""
    return root("SUMMARY_DIR") / model_name(model) / ("weights_raw" if raw else "weights")


def activation_summary_root(model: str, base: str | Path | None = None) -> Path:
    """A model's activation summaries (``base`` replaces ``$SUMMARY_DIR``)."""
    return Path(base or root("SUMMARY_DIR")) / model_name(model) / "activations"


def activation_summary(model: str, subset: str) -> Path:
    """One dataset subset's summary folder: ``{part}.safetensors`` for each of :data:`SUMMARY_PARTS` + manifest."""
    return activation_summary_root(model) / subset


def summary_part_file(part: str) -> str:
    """The file name of one summary part (``histogram``, ``moments``, ...)."""
    return f"{part}.safetensors"


def summary_part(folder: str | Path, part: str) -> Path:
    return Path(folder) / summary_part_file(part)


def list_summary_subsets(model: str) -> list[str]:
    """Subsets with a finished (manifest-bearing) activation summary."""
    base = activation_summary_root(model)
    return sorted(p.name for p in base.iterdir() if manifest_path(p).exists()) if base.exists() else []


def activation_cache(model: str, dataset: str | Path) -> Path:
    """Cached activations of chosen neurons or layers, plus per-token metrics."""
    return root("CACHED_ACTIVATIONS_DIR") / model_name(model) / dataset_name(dataset)


def cache_layer_file(layer: int) -> str:
    return f"layer{int(layer)}.safetensors"


# ---------------------------------------------------------------- neuron dataframes (neuron_df.py)
def neuron_df(model: str) -> Path:
    """Stem of the per-neuron table: ``.csv`` and ``.parquet`` beside ``.manifest.json``."""
    return root("DATAFRAMES_DIR") / "neuron_dfs" / model_name(model)


def table_manifest(table: str | Path) -> Path:
    """The manifest of a table file: ``{stem}.manifest.json`` beside it (how neuron dataframes carry theirs)."""
    table = Path(table)
    stem = table.stem if table.suffix in (".csv", ".parquet") else table.name
    return table.with_name(f"{stem}.manifest.json")


def neuron_df_manifest(model: str) -> Path:
    return table_manifest(neuron_df(model))


def neuron_df_file(model: str) -> Path:
    """The table a reader opens: the parquet when present, else the CSV (which may not exist yet)."""
    stem = neuron_df(model)
    parquet = stem.with_name(f"{stem.name}.parquet")
    return parquet if parquet.exists() else stem.with_name(f"{stem.name}.csv")


def interpretable_neurons(model: str) -> Path:
    """Folder of the paper-schema tables of interesting neurons (``universal.csv`` + manifest)."""
    return root("DATAFRAMES_DIR") / "interpretable_neurons" / model_name(model)


def universal_table(model: str) -> Path:
    return interpretable_neurons(model) / "universal.csv"


def universal_aligned_table(model: str) -> Path:
    """The chosen (scale-free) criterion's universal set, in the paper's schema (``is_universal_aligned``)."""
    return interpretable_neurons(model) / UNIVERSAL_ALIGNED_FILE


# ---------------------------------------------------------------- prompt runs (prompts, coactivation, perturb)
def prompt_run(model: str, run: str) -> Path:
    """One model's run over one prompt set: ``$GRAPHS_DIR/{model}/{run}/`` (run = the prompt CSV's stem)."""
    return root("GRAPHS_DIR") / model_name(model) / str(run)


def prompt_activations(model: str, run: str) -> Path:
    """Generated samples and their active neurons (``prompts``): tokens, samples, matrix, neurons, frequency."""
    return prompt_run(model, run) / "activations"


def coactivation_graph(model: str, run: str) -> Path:
    """The co-activation graph (``coactivation``): nodes, edges, threshold analysis, histograms, exports,
    and the perturbation subsets in ``subsets/``."""
    return prompt_run(model, run) / "coactivation"


def subset_file_name(method: str, threshold: float, ratio: float, control: int | None = None) -> str:
    """``{method}.t{threshold}.r{ratio}.npy``, a random control ``random{i}.{method}.t...npy`` (int64 neuron ids)."""
    stem = f"{method}.t{float(threshold):g}.r{float(ratio):g}"
    return f"{stem}.npy" if control is None else f"random{int(control)}.{stem}.npy"


def default_prompts_csv() -> Path:
    """The repository's prompt set (10 prompts x 5 samples x 20 tokens) that ``make all`` generates from."""
    return repo_root() / "paper_notebooks" / "data" / "prompts.csv"


def perturbation_results(model: str, run: str) -> Path:
    """Generations with each subset ablated (``generations/{subset}.csv``), loss and KL tables (``perturb``)."""
    return prompt_run(model, run) / "perturb"


# ---------------------------------------------------------------- figures (notebooks.py, figures.py)
def figures_root() -> Path:
    return root("FIGURES_DIR")


def figures_dir(notebook: str, base: str | Path | None = None) -> Path:
    """A notebook's executed copy and figure files."""
    return Path(base or figures_root()) / notebook


def paper_figures_dir(model: str, notebook: str, base: str | Path | None = None) -> Path:
    """Figures drawn from the paper's published table of ``model``."""
    return Path(base or figures_root()) / "paper" / model / notebook


def model_figures_root(model: str, base: str | Path | None = None) -> Path:
    """The figures root of a model other than the zoo's reference (the pretrained subject): its notebooks' folders
    below it (``{root}/{notebook}/``), so they never replace the reference's; the main index links them."""
    return Path(base or figures_root()) / "models" / model


def figures_index(base: str | Path | None = None) -> Path:
    return Path(base or figures_root()) / FIGURES_INDEX


# ---------------------------------------------------------------- the paper's published tables (shared/)
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """``$SHARED_DIR``, else ``shared/`` beside the repository (where CI puts it)."""
    return Path(os.environ.get("SHARED_DIR") or repo_root().parent / "shared")


def paper_data_dir(model: str | None = None) -> Path:
    """``shared/data/paper[/model]``: the per-neuron tables published with the paper. Missing → a clear error."""
    from neuron_lib.common import NeuronLibError

    folder = shared_dir() / "data" / "paper"
    if model:
        folder = folder / model
    if not folder.is_dir():
        raise NeuronLibError(
            f"the paper's published tables are missing at {folder}: put a copy of the project's "
            "shared/ folder beside the repository, or set SHARED_DIR to it"
        )
    return folder


def paper_table(model: str = "stanford-gpt2-small-a", table: str = "universal") -> Path:
    return paper_data_dir(model) / f"{table}.csv"


# ---------------------------------------------------------------- interventions (intervention.py, entropy_intervention.py,
# attention_deactivation.py)
INTERVENTION_METRICS_FILE = "metrics.safetensors"  # per intervention and token: loss, entropy, rank, kl (+ scale)
INTERVENTION_NOMINAL_FILE = "nominal.safetensors"  # the clean run's per-token metrics and the valid-token mask
INTERVENTION_PARTIAL_FILE = "partial.safetensors"  # resumable progress of an unfinished run (removed at the end)
INTERVENTION_SUMMARY_FILE = "summary.csv"  # per intervention: means and bootstrap intervals
INTERVENTION_NEURONS_FILE = "neurons.csv"  # the selection: neurons, roles, the selection column, controls' seed
ENTROPY_CANDIDATES_FILE = "candidates.csv"  # every last-layer neuron: ‖w_out‖, null-space share, score
ATTENTION_SCORES_FILE = "scores.safetensors"  # heuristic h_n [A, H, Q, N] and its random-direction baseline
ATTENTION_TOP_PAIRS_FILE = "heuristic_pairs.csv"  # every (head, earlier neuron) pair sorted by |h_n|
ATTENTION_PATH_FILE = "path_ablation.safetensors"  # per pair and query token: activation, Δ‖z‖, ΔP(BOS)
ATTENTION_PAIRS_FILE = "path_ablation.csv"  # per pair: Pearson / Spearman with the neuron's activation


def intervention_root(model: str, dataset: str | Path) -> Path:
    return root("INTERVENTION_DIR") / model_name(model) / dataset_name(dataset)


def intervention_results(model: str, dataset: str | Path, run: str) -> Path:
    """One ablation run: ``{model}/{dataset}/{run}/`` (run = e.g. ``mean.post`` or ``entropy.post.fixed``)."""
    return intervention_root(model, dataset) / run


def attention_deactivation(model: str, dataset: str | Path, run: str = "attention_deactivation") -> Path:
    return intervention_root(model, dataset) / run


# ---------------------------------------------------------------- explanations (vocab_features.py, explain.py)
def vocab_df_file(tokenizer: str) -> Path:
    """A tokenizer's vocabulary feature table (spec §7.2): ``$DATAFRAMES_DIR/vocab_dfs/{tokenizer}.parquet`` (the
    one readers open) beside ``{tokenizer}.csv`` and ``{tokenizer}.manifest.json`` (``table_manifest``)."""
    return root("DATAFRAMES_DIR") / "vocab_dfs" / f"{tokenizer}.parquet"


def dataset_df_dir(dataset: str | Path) -> Path:
    """Per-token sequence features of a token dataset (spaCy labels, spec §7.4), cached across runs."""
    return root("DATAFRAMES_DIR") / "dataset_dfs" / dataset_name(dataset)


SEQUENCE_FEATURES_FILE = "sequence_features.parquet"  # one row per (row, position) of the parsed rows


def explanations(model: str, dataset: str | Path) -> Path:
    """Variance-reduction explanations of a model's neurons (``explain``): tables, best features, scores, records."""
    return root("DATAFRAMES_DIR") / "explanations" / model_name(model) / dataset_name(dataset)


EXPLAIN_VR_FILE = "variance_reduction.parquet"  # neurons x features (token + sequence features)
EXPLAIN_PREV_VR_FILE = "prev_token_variance_reduction.parquet"  # same columns, feature of the previous token
EXPLAIN_FEATURES_FILE = "features.csv"  # one row per feature: name, kind, family, positives, skipped
EXPLAIN_BEST_STEM = "best_features"  # .csv + .parquet: argmax, value, runner-up per neuron
EXPLAIN_SCORES_STEM = "scores"  # .csv + .parquet: simulated-activation correlation scores on the held-out rows
EXPLAIN_RECORDS_DIR = "records"  # records/{layer}/{neuron}.json in OpenAI NeuronRecord shape

# ---------------------------------------------------------------- the neuron browser (neuron_lib/browser)
BROWSER_INDEX_FILE = "index.sqlite"  # one SQLite file: models, neurons (searchable columns), docs, token effects
BROWSER_DASHBOARD_FILE = "dashboard.html"  # the self-contained plotly dashboard


def browser_index_dir() -> Path:
    """The browser's index folder: ``index.sqlite`` + ``manifest.json`` (``python -m neuron_lib.browser build``)."""
    return root("DATAFRAMES_DIR") / "browser"


def browser_index() -> Path:
    return browser_index_dir() / BROWSER_INDEX_FILE


def browser_site(base: str | Path | None = None) -> Path:
    """The static export of the browser's pages (works from ``file://``), linked from ``figures/index.html``."""
    return Path(base or figures_root()) / "browser" / "site"


def browser_dashboard(base: str | Path | None = None) -> Path:
    """The analysis dashboard: one self-contained HTML file (plotly's JS embedded)."""
    return Path(base or figures_root()) / "browser" / BROWSER_DASHBOARD_FILE


def list_neuron_dfs() -> list[str]:
    """Model path components that have a neuron dataframe (``$DATAFRAMES_DIR/neuron_dfs/{model}.{parquet,csv}``)."""
    folder = root("DATAFRAMES_DIR") / "neuron_dfs"
    if not folder.is_dir():
        return []
    return sorted({p.stem for p in folder.iterdir() if p.suffix in (".parquet", ".csv")})


def list_prompt_runs(model: str) -> list[str]:
    """Prompt runs of a model that have a co-activation graph (``$GRAPHS_DIR/{model}/{run}/coactivation/``)."""
    base = root("GRAPHS_DIR") / model_name(model)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "coactivation" / GRAPH_NODES_FILE).exists())


def _prefer_parquet(paths: list[Path]) -> list[Path]:
    stems = {p.with_suffix("") for p in paths if p.suffix == ".parquet"}
    return [p for p in paths if not (p.suffix == ".csv" and p.with_suffix("") in stems)]


def explanation_tables(model: str) -> list[Path]:
    """Every explain run's best-feature and score tables of ``model`` (``explanations(model, *)``), for the browser."""
    base = root("DATAFRAMES_DIR") / "explanations" / model_name(model)
    if not base.is_dir():
        return []
    found = [p for stem in (EXPLAIN_BEST_STEM, EXPLAIN_SCORES_STEM) for p in sorted(base.glob(f"*/{stem}.*"))]
    return _prefer_parquet([p for p in found if p.suffix in (".csv", ".parquet")])


def intervention_tables(model: str) -> list[Path]:
    """Every intervention run's ``summary.csv`` of ``model`` (``intervention_results(model, *, *)``), for the browser."""
    base = root("INTERVENTION_DIR") / model_name(model)
    return sorted(base.glob(f"*/*/{INTERVENTION_SUMMARY_FILE}")) if base.is_dir() else []


# ---------------------------------------------------------------- pretrained models built at set-up (smollm.py)
def pretrained_root() -> Path:
    return root("MODELS_DIR") / "pretrained"


def pretrained_model(name: str) -> Path:
    """A pretrained model converted at set-up, in the hub's format + manifest: ``$MODELS_DIR/pretrained/{name}``."""
    return pretrained_root() / name


def pretrained_cache() -> Path:
    """Files read out of downloaded packages (the GGUF), reused between set-up runs."""
    return pretrained_root() / ".cache"


def pretrained_dataset(name: str, split: str, ctx_len: int) -> Path:
    """A pretrained model's own token dataset of an embedded-corpus split: ``$DATASET_DIR/{name}/{name}.{split}.{ctx}``."""
    return token_dataset(name, f"{name}.{split}.{ctx_len}")


def prediction_counts(model: str) -> Path:
    """Prediction / suppression neuron counts per layer (paper threshold and calibrated null), CSV."""
    return root("DATAFRAMES_DIR") / "prediction_neurons" / f"{model_name(model)}.csv"
