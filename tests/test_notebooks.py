"""Execute every paper notebook with papermill on inputs that exist in CI.

Inputs, built in a temp dir in our schema: a token dataset + tokenizer (``neuron_lib.corpus``, from the
conftest grammar), a tiny random GPT-2 filed as a zoo model, its activation summaries
(``neuron_lib.summary``), a synthetic per-neuron table with a manifest; and the paper's published
``universal.csv`` from the ``shared/`` folder beside the repository.

Notebooks are run with papermill here rather than ``pytest --nbval-lax paper_notebooks/``: their
default parameters point at the main job's outputs (``zoo-gpt2-a``), which CI does not build.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch

from helpers import paper_csv, synthetic_documents, synthetic_neuron_df
from neuron_lib import notebooks as nb
from neuron_lib.common import ManifestMismatch, NeuronLibError

MODEL = "synth-a"
N_LAYERS, D_MLP, CTX, TOP_K = 2, 64, 24, 8
ROOTS = ("MODELS_DIR", "DATASET_DIR", "SUMMARY_DIR", "DATAFRAMES_DIR", "FIGURES_DIR", "GRAPHS_DIR")
RUN = "nbprompts"  # the prompt run the co-activation notebook reads


def _tiny_zoo_model(folder: Path, tokenizer) -> Path:
    """A random 2-layer GPT-2 in the zoo's folder format, so ``MODEL`` resolves like ``zoo-gpt2-a``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=CTX,
        n_embd=32,
        n_layer=N_LAYERS,
        n_head=2,
        n_inner=D_MLP,
        activation_function="gelu_new",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():  # a wider spread of pre-activations than the default init gives
        for block in model.transformer.h:
            block.mlp.c_fc.weight.mul_(6.0)
            block.mlp.c_fc.bias.normal_(-0.5, 0.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Real inputs in our schema: token dataset (neuron_lib.corpus), a tiny zoo model, its activation
    summaries (neuron_lib.summary) and a synthetic per-neuron table with a manifest."""
    from neuron_lib import corpus, summary

    root = tmp_path_factory.mktemp("notebook_inputs")
    patch = pytest.MonkeyPatch()
    for kind in ROOTS:
        patch.setenv(kind, str(root / kind.lower()))
    try:
        docs = {"grammar": synthetic_documents(12, seed=1), "grammar2": synthetic_documents(8, seed=2)}
        tok_dir = root / "tokenizer"
        tokenizer = corpus.train_tokenizer([d for ds in docs.values() for d in ds], vocab_size=300, out_dir=tok_dir)
        ds_path = corpus.save_token_dataset(
            corpus.tokenize_documents(docs, tokenizer, CTX),
            root / "dataset_dir" / "zoo" / f"synth.{CTX}",
            {"split": "analysis", "split_seed": 0, "tokenizer_dir": str(tok_dir)},
        )
        _tiny_zoo_model(root / "models_dir" / "zoo" / MODEL, tokenizer)
        summary.run_summary(
            summary.SummaryConfig(
                model=MODEL,
                token_dataset=str(ds_path),
                top_k=TOP_K,
                vocab_top_k=5,
                n_random=0,
                n_per_quantile=0,
                device="cpu",
            )
        )
        table = root / "dataframes_dir" / "neuron_dfs" / f"{MODEL}.csv"
        table.parent.mkdir(parents=True)
        synthetic_neuron_df(N_LAYERS, D_MLP).to_csv(table, index=False)
        (table.parent / f"{MODEL}.manifest.json").write_text(
            json.dumps({"stage": "neuron_df", "model": MODEL, "dataset": ds_path.name})
        )
        _coactivation_outputs(root, ds_path)
        yield {"root": root, "table": table, "summary_dir": root / "summary_dir", "dataset": ds_path}
    finally:
        patch.undo()


def _coactivation_outputs(root: Path, ds_path: Path) -> None:
    """The prompts, coactivation and perturb stages on the tiny zoo model (small settings)."""
    from neuron_lib.coactivation import CoactivationConfig, run_coactivation
    from neuron_lib.perturb import PerturbConfig, run_perturb
    from neuron_lib.prompts import PromptsConfig, run_prompts

    csv = root / f"{RUN}.csv"
    csv.write_text(
        'prompts,number_of_new_tokens,num_samples\n"The cat sees ",6,3\n"A dog likes",6,3\n"the river",5,2\n'
    )
    run_prompts(PromptsConfig(model=MODEL, prompts_csv=str(csv), seed=1, device="cpu"))
    run_coactivation(CoactivationConfig(model=MODEL, run=RUN, subset_ratios=(0.1,), n_random=2))
    run_perturb(
        PerturbConfig(
            model=MODEL, run=RUN, token_dataset=str(ds_path), max_tokens=4 * CTX, n_bootstrap=200, device="cpu"
        )
    )


def _errors(path: Path) -> list[str]:
    book = nbformat.read(path, as_version=4)
    return [
        f"{o.ename}: {o.evalue}"
        for c in book.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]


def _text(path: Path) -> str:
    book = nbformat.read(path, as_version=4)
    return "\n".join(
        o.get("text", "") + json.dumps(o.get("data", {}))
        for c in book.cells
        if c.cell_type == "code"
        for o in c.outputs
    )


def test_every_notebook_has_a_parameters_cell():
    for name in nb.NOTEBOOKS:
        params = nb.notebook_parameters(name)
        assert {"model", "figures_dir"} <= set(params), name
        book = nbformat.read(nb.notebook_dir() / f"{name}.ipynb", as_version=4)
        assert all(not c.get("outputs") for c in book.cells if c.cell_type == "code"), f"{name} is saved with outputs"
        # nbformat 4.5: every cell has a unique id (papermill / nbformat warn on every run otherwise)
        ids = [c.get("id") for c in json.loads((nb.notebook_dir() / f"{name}.ipynb").read_text())["cells"]]
        assert all(ids) and len(set(ids)) == len(ids), f"{name}: cells without a unique id"
        nbformat.validate(book)


def test_notebooks_on_synthetic_inputs(inputs, tmp_path):
    out = tmp_path / "figures"
    done, failed = nb.run_notebooks(
        MODEL,
        inputs["table"],
        inputs["summary_dir"],
        out=out,
        dataset=inputs["dataset"].name,
        extra={"context_activations": "topk", "run": RUN},
    )
    assert not failed, failed
    # the intervention notebooks are skipped without intervention results (tests/test_intervention.py runs them), the
    # explanation notebooks without an explain run (test_explanation_notebooks runs them)
    assert len(done) == len(nb.NOTEBOOKS) - len(nb.NEEDS_INTERVENTION) - len(nb.NEEDS_EXPLANATIONS)
    for path in done:
        assert not _errors(path), (path, _errors(path))
    expected = {
        "properties_of_universal_neurons": [
            "universal_share_by_layer",
            "correlation_vs_baseline",
            "neuron_correlation_densities",
            "max_vs_min_correlation",
            "universal_neurons_prop",
            "appendix_neuron_metrics_by_layer",
        ],
        "prediction_neurons": [
            "prediction_neuron_percentiles",
            "prediction_suppression_counts",
            "prediction_neuron_skew_density",
            "prediction_neuron_histograms_main",  # Fig 5 / 23: the tiny model's W_U against its vocabulary table
            "prediction_neurons_appendix",
        ],
        "dataset_summary": ["activation_histograms", "top_examples_text"],
        "mysteries": ["sparsity_vs_in_out_sim", "max_weight_sim"],
        "coactivation_graph": [
            "graph_histograms",
            "perturbation_comparison",
            *[f"heatmap_sample{s}_{m}" for s in (0, 3) for m in ("default", "cinematic", "cinematic_no_text")],
            "token_clusters",
            "frequent_neurons",
            "token_specific_neurons",
            "position_specific_neurons",
            "prompt_similarity",
        ],
    }
    index = (out / "index.html").read_text()
    for name, figs in expected.items():
        record = {f["name"]: f for f in json.loads((out / name / "figures.json").read_text())["figures"]}
        for fig in figs:
            assert (out / name / f"{fig}.png").read_bytes().startswith(b"\x89PNG"), (name, fig)
            assert "<svg" in (out / name / f"{fig}.svg").read_text()[:2000], (name, fig)
            data = pd.read_csv(out / name / f"{fig}.csv")
            assert len(data) > 0 and not data.isna().all().any(), (name, fig)  # the data the figure drew
            assert record[fig]["files"]["png"] == f"{fig}.png" and record[fig]["caption"]
            # the index links the figure and shows its caption
            assert f"{name}/{fig}.png" in index and html.escape(record[fig]["caption"]) in index
        record = json.loads((out / name / "figures.json").read_text())
        assert all(f["caption"] for f in record["figures"])
        assert record["source"]["model"] == MODEL and record["source"]["manifest"]["model"] == MODEL
    page = (out / "dataset_summary" / "top_examples.html").read_text()
    assert "background-color" in page and "<h3>L" in page
    assert "manifest of the data" in index
    _check_coactivation_figures(out / "coactivation_graph")


def _check_coactivation_figures(folder: Path) -> None:
    """The co-activation notebook's data: the stages' tables, and heatmaps marking exactly the active neurons."""
    from neuron_lib import artifacts
    from neuron_lib import coactivation_analysis as CA

    prun = CA.load_run(MODEL, RUN)
    graph = CA.load_graph_outputs(MODEL, RUN)
    pd.testing.assert_frame_equal(pd.read_csv(folder / "threshold_analysis.csv"), graph.thresholds)
    for sid in (0, 3):
        for mode in CA.HEATMAP_MODES:
            data = pd.read_csv(folder / f"heatmap_sample{sid}_{mode}.csv")
            assert len(data) == prun.n_layers * prun.d_mlp
            assert data.loc[data.active == 1, "id"].tolist() == prun.sample_ids(sid).tolist()
    active = json.loads((artifacts.prompt_activations(MODEL, RUN) / artifacts.PROMPT_ACTIVE_FILE).read_text())
    assert prun.sample_ids(3).tolist() == active["3"]
    perturbation = pd.read_csv(folder / "perturbation_comparison.csv")
    assert set(perturbation.kind) == {"centrality", "random"} and perturbation.kl_mean.notna().all()
    sim = pd.read_csv(folder / "prompt_similarity.csv")
    assert sim.prompt.astype(str).tolist() == ["0", "1", "2", "all"]
    clusters = pd.read_csv(folder / "token_clusters.csv", keep_default_na=False)
    assert len(clusters) == len(prun.tokens) == 6 * 3 + 6 * 3 + 5 * 2


def test_coactivation_notebook_skipped_or_refused_without_its_inputs(inputs, tmp_path):
    empty = tmp_path / "no_graphs"
    with pytest.raises(NeuronLibError, match=r"no prompt run 'nbprompts'.*neuron_lib.coactivation"):
        nb.run_notebooks(MODEL, out=tmp_path, only=["coactivation_graph"], extra={"run": RUN, "graphs_dir": str(empty)})
    lines: list[str] = []
    with pytest.raises(NeuronLibError, match="neuron_lib.neuron_df"):  # the full run goes on past the skip
        nb.run_notebooks(
            MODEL, tmp_path / "none.csv", out=tmp_path, extra={"run": RUN, "graphs_dir": str(empty)}, log=lines.append
        )
    assert lines and lines[0].startswith("[coactivation_graph] skipped: no prompt run")


def test_properties_notebook_on_paper_table(tmp_path):
    done, failed = nb.run_paper_table(paper_csv("universal"), out=tmp_path, only=["properties_of_universal_neurons"])
    assert not failed, failed
    path = done[0]
    assert not _errors(path)
    folder = path.parent
    assert folder == tmp_path / "paper" / "stanford-gpt2-small-a" / "properties_of_universal_neurons"
    text = _text(path)
    assert "holds only universal neurons" in text and "1,533 universal" in text
    for fig in (
        "universal_share_by_layer",
        "correlation_vs_baseline",
        "universal_neurons_prop_raw",
        "appendix_neuron_metrics_by_layer",
    ):
        assert (folder / f"{fig}.png").read_bytes().startswith(b"\x89PNG") and "<svg" in (
            folder / f"{fig}.svg"
        ).read_text()
        assert len(pd.read_csv(folder / f"{fig}.csv")) > 0
    assert not (folder / "universal_neurons_prop.png").exists()  # percentiles need the whole population
    share = np.loadtxt(folder / "universal_share_by_layer.csv", delimiter=",", skiprows=1, usecols=(0, 1))
    assert share[:, 1].astype(int).tolist() == [222, 244, 101, 110, 71, 72, 56, 112, 101, 142, 125, 177]
    index = (tmp_path / "index.html").read_text()
    assert "paper/stanford-gpt2-small-a/properties_of_universal_neurons/universal_share_by_layer.png" in index


def test_missing_or_mismatched_inputs_name_the_command(inputs, tmp_path):
    with pytest.raises(NeuronLibError, match=r"python -m neuron_lib.neuron_df --model ghost"):
        nb.validate_neuron_df("ghost", tmp_path / "ghost.csv")
    with pytest.raises(ManifestMismatch, match="made for model 'synth-a'"):
        nb.validate_neuron_df("synth-b", inputs["table"])
    with pytest.raises(ManifestMismatch, match="dataset"):
        nb.validate_neuron_df(MODEL, inputs["table"], dataset="other.24")
    with pytest.raises(NeuronLibError, match=r"python -m neuron_lib.summary --model ghost"):
        nb.validate_summary("ghost", inputs["summary_dir"])
    with pytest.raises(ManifestMismatch):
        nb.validate_summary(MODEL, inputs["summary_dir"], dataset="other.24")
    # no manifest is fine (the paper's tables have none), and is said
    bare = tmp_path / "bare.csv"
    bare.write_text(inputs["table"].read_text())
    assert "no manifest" in nb.validate_neuron_df(MODEL, bare).note
    # the notebook itself stops in its validation cell with the same message
    with pytest.raises(nb.NotebookFailed, match=r"made for model 'synth-a'.*neuron_lib.neuron_df --model synth-b"):
        nb.execute_notebook(
            "prediction_neurons", tmp_path / "out", {"model": "synth-b", "neuron_df_path": str(inputs["table"])}
        )


def test_cli(inputs, tmp_path, capsys):
    nb.main(["--index-only", "--out", str(tmp_path)])
    assert "No figures yet" in (tmp_path / "index.html").read_text()  # an empty root says how to make figures
    with pytest.raises(NeuronLibError, match="neuron_lib.neuron_df --model ghost"):
        nb.main(["--model", "ghost", "--neuron-df", str(tmp_path / "none.csv"), "--out", str(tmp_path)])
    with pytest.raises(NeuronLibError, match="takes the parameters"):
        nb.main(
            [
                "--model",
                MODEL,
                "--neuron-df",
                str(inputs["table"]),
                "--only",
                "prediction_neurons",
                "-p",
                "no_such_parameter=1",
                "--out",
                str(tmp_path),
            ]
        )
    assert nb.parse_neurons(["L1.2", "0.5", (3, 4)]) == [(1, 2), (0, 5), (3, 4)]


def test_examples_and_context_activations_match_the_summary(inputs):
    """Top examples read from the summary; re-running the model gives the same activation at the top token."""
    from neuron_lib.corpus import load_token_dataset

    summary = nb.validate_summary(MODEL, inputs["summary_dir"])
    summaries = {s: nb.load_activation_summary(f) for s, f in summary.folders.items()}
    assert sorted(summaries) == ["grammar", "grammar2"]
    dataset, manifest = load_token_dataset(summary.dataset_path())
    neurons = nb.pick_neurons(summaries, n=3)[0]
    examples = nb.load_examples(summaries, dataset, nb.resolve_tokenizer(MODEL, None, manifest), neurons, n_examples=4)
    assert len(examples) == 12 and examples.groupby(["layer", "neuron"])["value"].is_monotonic_decreasing.all()
    assert set(examples["subset"]) <= {"grammar", "grammar2"}
    recomputed = nb.recompute_context_activations(MODEL, dataset, examples)
    at_target = [vals[t] for vals, t in zip(recomputed["context_values"], recomputed["target"])]
    np.testing.assert_allclose(at_target, examples["value"], rtol=1e-4, atol=1e-5)
    assert all(len(v) == len(t) for v, t in zip(recomputed["context_values"], recomputed["token_ids"]))


def test_unfinished_summary_subset_is_not_listed(inputs, tmp_path):
    """A subset folder is finished when its manifest (written last) is there with every part, not when one file is."""
    import shutil

    base = tmp_path / "summaries"
    shutil.copytree(inputs["summary_dir"], base)
    root = base / MODEL / "activations"
    (root / "grammar2" / "manifest.json").unlink()  # as if the run had been killed before the manifest
    half = root / "half"
    half.mkdir()
    shutil.copy(root / "grammar" / "histogram.safetensors", half)  # one part, no manifest
    found = nb.validate_summary(MODEL, base)
    assert sorted(found.folders) == ["grammar"]


# figures each explanation notebook draws on the tiny model; the tiny tokenizer has no unigram feature (no word with
# more than 3 variants), so the unigram and alphabet notebooks record their figures as not drawn, with the reason
EXPLANATION_FIGURES = {
    "unigram_neurons": [],
    "alphabet_neurons": [],
    "previous_token_neurons": ["prev_token_neurons", "main_b_prev_token"],
    "position_neurons": ["position_neurons", "main_c_position"],
    "syntax_neurons": ["syntax_neurons", "syntax_neuron_main"],
    "topic_neurons": ["place_neurons"],
    "family_count": ["neuron_correlation_densities", "neuron_correlation_densities_main", "family_counts"],
}
NOT_DRAWN = {
    "unigram_neurons": ["unigram_duplicate_neurons", "main_on_unigram", "unigram_nonduplicate_appendix"],
    "alphabet_neurons": ["alphabet_neurons", "main_a_alphabet"],
}


def test_explanation_notebooks(inputs, tmp_path, monkeypatch):
    """The explanation notebooks: an error naming the command without an explain run; executed on a real (small)
    explain run of the tiny model, with token, spaCy, position and subset features."""
    import shutil

    from neuron_lib import artifacts, explain

    monkeypatch.setenv("DATAFRAMES_DIR", str(tmp_path / "dataframes"))  # explanations of this test only
    table_dir = tmp_path / "dataframes" / "neuron_dfs"
    shutil.copytree(inputs["table"].parent, table_dir)
    with pytest.raises(NeuronLibError, match=r"python -m neuron_lib.explain --model synth-a"):
        nb.run_notebooks(MODEL, out=tmp_path, only=["syntax_neurons"])
    explain.run_explain(
        explain.ExplainConfig(
            model=MODEL,
            token_dataset=str(inputs["dataset"]),
            max_tokens=48 * CTX,
            min_class_count=3,
            spacy_processes=1,
            records=False,
            device="cpu",
        )
    )
    assert sorted(nb.NEEDS_EXPLANATIONS) == sorted(EXPLANATION_FIGURES)
    out = tmp_path / "figures"
    done, failed = nb.run_notebooks(
        MODEL,
        table_dir / f"{MODEL}.csv",
        inputs["summary_dir"],
        out=out,
        only=list(EXPLANATION_FIGURES),
        extra={"universal_criterion": "paper", "vr_threshold": 0.05},
    )
    assert not failed, failed
    assert len(done) == len(EXPLANATION_FIGURES)
    for path in done:
        assert not _errors(path), (path, _errors(path))
    for name, figs in EXPLANATION_FIGURES.items():
        record = {f["name"]: f for f in json.loads((out / name / "figures.json").read_text())["figures"]}
        for fig in figs:
            assert (out / name / f"{fig}.png").read_bytes().startswith(b"\x89PNG"), (name, fig)
            assert len(pd.read_csv(out / name / f"{fig}.csv")) > 0, (name, fig)
            assert record[fig]["caption"]
        for fig in NOT_DRAWN.get(name, []):
            assert record[fig]["note"] and "png" not in record[fig]["files"], (name, fig)
    assert "0 of 26 letters have a unigram feature" in _text(out / "alphabet_neurons" / "alphabet_neurons.ipynb")
    # the numbers the notebooks print are the explain run's
    best = explain.load_explanations(MODEL, inputs["dataset"].name)["best"]
    text = _text(out / "previous_token_neurons" / "previous_token_neurons.ipynb")
    from neuron_lib.explain_figures import with_families

    n_prev = int((with_families(best, 0.05)["family"] == "previous token").sum())
    assert f"spaCy feature, VR > 0.05): {n_prev} of {len(best)}" in text
    text = _text(out / "position_neurons" / "position_neurons.ipynb")
    assert f"MI over all {N_LAYERS * D_MLP} neurons" in text
    assert artifacts.explanations(MODEL, inputs["dataset"]).is_dir()


def _fake_executed(name, out_dir) -> Path:
    """What a stand-in for execute_notebook leaves: the executed notebook's file."""
    out = Path(out_dir).resolve() / f"{name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("{}")
    return out


def test_unchanged_notebooks_are_not_run_again(tmp_path, monkeypatch):
    """The figures stage skips a notebook whose source, parameters, code and input manifests are unchanged; a
    changed manifest or parameter, or force, runs it again; a manifest's timing fields alone do not."""
    for kind in nb._INPUT_ROOTS:
        monkeypatch.setenv(kind, str(tmp_path / kind.lower()))
    frames = tmp_path / "dataframes_dir" / "neuron_dfs"
    frames.mkdir(parents=True)
    manifest = frames / "m.manifest.json"
    manifest.write_text(json.dumps({"stage": "neuron_df", "n_rows": 4, "created_unix": 1.0}))
    calls = []

    def fake_execute(name, out_dir, params, **kw):
        calls.append(dict(params))
        return _fake_executed(name, out_dir)

    monkeypatch.setattr(nb, "execute_notebook", fake_execute)
    root = tmp_path / "figures"

    def run(params, reuse=True):
        jobs = [("dataset_summary", "dataset_summary", root / "dataset_summary", params)]
        done, failed = nb._execute_all(jobs, root, "python3", 60, lambda *_: None, reuse=reuse)
        assert not failed and len(done) == 1

    run({"model": MODEL})
    run({"model": MODEL})
    assert len(calls) == 1  # unchanged: skipped
    manifest.write_text(json.dumps({"stage": "neuron_df", "n_rows": 4, "created_unix": 2.0}))
    run({"model": MODEL})
    assert len(calls) == 1  # a new timestamp only
    manifest.write_text(json.dumps({"stage": "neuron_df", "n_rows": 5, "created_unix": 3.0}))
    run({"model": MODEL})
    assert len(calls) == 2  # an input changed
    run({"model": MODEL, "dataset": "other"})
    assert len(calls) == 3  # a parameter changed
    run({"model": MODEL, "dataset": "other"}, reuse=False)
    assert len(calls) == 4  # forced
    # outputs of a pretrained model other than the notebook's own (make all builds SmolLM2 after the zoo's
    # figures), its vocabulary table included, do not make the figures stale; the notebook's own model's outputs do
    (tmp_path / "models_dir" / "pretrained" / "smollm2-tiny").mkdir(parents=True)
    for rel in (
        "summary_dir/smollm2-tiny/weights/manifest.json",
        "dataframes_dir/neuron_dfs/smollm2-tiny.manifest.json",
        "dataframes_dir/vocab_dfs/smollm2.manifest.json",  # named by its tokenizer family
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(json.dumps({"stage": "x", "n": 1}))
    run({"model": MODEL, "dataset": "other"})
    assert len(calls) == 4
    run({"model": "smollm2-tiny"})
    run({"model": "smollm2-tiny"})
    assert len(calls) == 5
    (tmp_path / "summary_dir/smollm2-tiny/weights/manifest.json").write_text(json.dumps({"stage": "x", "n": 2}))
    run({"model": "smollm2-tiny"})
    assert len(calls) == 6


def test_notebooks_run_side_by_side_with_capped_threads(tmp_path, monkeypatch):
    """_execute_all with parallel=2: two notebooks at once (seen overlapping), each kernel's environment capped at
    cores / 2 threads, results and failures reported in the jobs' order, the environment restored after."""
    import os
    import threading
    import time as _time

    for kind in nb._INPUT_ROOTS:
        monkeypatch.setenv(kind, str(tmp_path / kind.lower()))
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    lock, state = threading.Lock(), {"now": 0, "max": 0, "omp": []}

    def fake_execute(name, out_dir, params, **kw):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            state["omp"].append(os.environ.get("OMP_NUM_THREADS"))
        _time.sleep(0.3)
        with lock:
            state["now"] -= 1
        if name == "family_count":
            raise nb.NotebookFailed("family_count broke")
        return _fake_executed(name, out_dir)

    monkeypatch.setattr(nb, "execute_notebook", fake_execute)
    root = tmp_path / "figures"
    names = ["dataset_summary", "family_count", "mysteries", "prediction_neurons"]
    jobs = [(n, n, root / n, {"model": MODEL}) for n in names]
    done, failed = nb._execute_all(jobs, root, "python3", 60, lambda *_: None, reuse=False, parallel=2)
    assert state["max"] == 2
    assert state["omp"] == [str(max(1, (os.cpu_count() or 1) // 2))] * 4
    assert [p.stem for p in done] == ["dataset_summary", "mysteries", "prediction_neurons"]
    assert failed == ["family_count broke"]
    assert os.environ["OMP_NUM_THREADS"] == "7" and nb._env_depth == 0
    monkeypatch.setenv("NL_NOTEBOOK_JOBS", "0")
    with pytest.raises(nb.NeuronLibError, match="NL_NOTEBOOK_JOBS"):
        nb.notebook_jobs()
