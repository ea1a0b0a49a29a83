"""A small data root for the browser's tests, made by the real stages on two tiny GPT-2s (seconds on a CPU).

Two seed models ``bt-a`` / ``bt-b`` (2 layers × 64 neurons) trained on nothing (random weights, widened as in
helpers.build_tiny_model) whose tokenizer knows ``<script>`` as a token, a token dataset of 48 rows × 16 tokens
in two subsets; the weights, summary, correlations (a against b, rotation baseline) and neuron_df stages run on
them; an explanation table, a co-activation graph and an intervention table are written by hand for ``bt-a``
(their stages are other engineers' work). ``bt-b`` has no explanation, graph or intervention: its documents
must simply leave those services out.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import build_tiny_model, save_dataset
from neuron_lib import artifacts

MODELS = ("bt-a", "bt-b")
SCRIPT_TEXT = "<script>alert(1)</script>"
TEXT = (
    "the quick brown fox jumps over the lazy dog. hello world, this is a tiny test corpus. "
    f"{SCRIPT_TEXT} the dog sleeps. "
)
N_ROWS, CTX = 48, 16


def set_roots(root: Path) -> dict[str, str]:
    env = {k: str(root / k.lower()) for k in artifacts.ROOTS}
    os.environ.update(env)
    return env


def build(root: Path) -> dict:
    """Write the data root under ``root`` (environment roots must already point there: :func:`set_roots`)."""
    from transformers import AutoTokenizer

    from neuron_lib import correlations_fast, neuron_df, summary, weights
    from neuron_lib.corpus import tokenizer_fingerprint

    dirs = []
    for i, m in enumerate(MODELS):
        dirs.append(build_tiny_model(artifacts.zoo_model(m), seed=i, vocab_text=TEXT))
    tok = AutoTokenizer.from_pretrained(dirs[0])
    ids = tok(TEXT * 60)["input_ids"]
    rows = np.zeros((N_ROWS, CTX), dtype=np.int64)
    for r in range(N_ROWS):
        start = (r * 7) % (len(ids) - CTX)
        rows[r, 1:] = ids[start : start + CTX - 1]
    rows[:, 0] = tok.bos_token_id
    ds_path = save_dataset(
        artifacts.token_dataset("zoo", "bt.analysis.16"),
        rows,
        ["web" if r % 2 else "code" for r in range(N_ROWS)],
        tokenizer_fingerprint(tok),
    )
    for m in MODELS:
        weights.run_weights(weights.WeightsConfig(model=m, vocab_top_k=20, progress=False, heads=False))
        summary.run_summary(
            summary.SummaryConfig(
                model=m, token_dataset=str(ds_path), batch_size=16, top_k=10, vocab_top_k=10, n_random=8, device="cpu"
            )
        )
    correlations_fast.run_correlations(
        correlations_fast.CorrelationConfig(
            reference_model=MODELS[0],
            other_models=[MODELS[1]],
            token_dataset=str(ds_path),
            baseline=["rotation"],
            n_rotations=2,
            batch_size=16,
            device="cpu",
            checkpoint_every=0,
        )
    )
    for m in MODELS:
        neuron_df.run_neuron_df(neuron_df.NeuronDfConfig(model=m, dataset=ds_path.name))
    # explain's and an intervention run's tables of bt-a, in those stages' file contracts (explain.py,
    # intervention.py): best_features / scores keyed by layer + neuron_index, a summary.csv with group rows
    expl_dir = artifacts.explanations(MODELS[0], ds_path)
    expl_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "neuron": ["0.0", "0.1", "1.3"],
            "layer": [0, 0, 1],
            "neuron_index": [0, 1, 3],
            "best_feature": [SCRIPT_TEXT, "is_dog", "is_fox"],
            "best_vr": [0.42, 0.31, 0.7],
            "unused_column": [1, 2, 3],
        }
    ).to_csv(expl_dir / f"{artifacts.EXPLAIN_BEST_STEM}.csv", index=False)
    pd.DataFrame({"neuron": ["0.0"], "layer": [0], "neuron_index": [0], "score_best": [0.61]}).to_csv(
        expl_dir / f"{artifacts.EXPLAIN_SCORES_STEM}.csv", index=False
    )
    interv_dir = artifacts.intervention_results(MODELS[0], ds_path, "mean.post")
    interv_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "label": ["nominal", "L0.N0", "group:selected"],
            "role": ["nominal", "selected", "selected"],
            "layer": [None, 0, None],
            "neuron": [None, 0, None],
            "intervention": [None, "mean", None],
            "delta_loss": [None, 0.012, 0.012],
        }
    ).to_csv(interv_dir / artifacts.INTERVENTION_SUMMARY_FILE, index=False)
    # a co-activation graph of bt-a (the coactivation stage's file contract: nodes.csv, edges.parquet)
    g = artifacts.coactivation_graph(MODELS[0], "prompts")
    g.mkdir(parents=True, exist_ok=True)
    d_mlp = 64
    ids_ = np.arange(2 * d_mlp)
    pd.DataFrame(
        {
            "id": ids_,
            "layer": ids_ // d_mlp,
            "dimension": ids_ % d_mlp,
            "weight": 1,
            "degree": 1,
            "weighted_degree": 0.5,
        }
    ).to_csv(g / artifacts.GRAPH_NODES_FILE, index=False)
    pd.DataFrame({"src": [0, 0, 1], "dst": [64, 65, 64], "count": [5, 3, 2], "weight": [1.0, 0.6, 0.4]}).to_parquet(
        g / artifacts.GRAPH_EDGES_FILE
    )
    from neuron_lib.common import make_manifest, write_manifest

    write_manifest(g, make_manifest("coactivation", {}, model=MODELS[0], activation_threshold=0.0))
    return {"dataset": ds_path, "models": list(MODELS), "tokenizer": tok}


_SHARED: dict = {}


def shared_root(tmp_path_factory) -> dict:
    """One data root + index per test process (both browser test modules use it); environment roots point there."""
    if "info" not in _SHARED:
        from neuron_lib.browser import index as I

        root = tmp_path_factory.mktemp("browser_root")
        _SHARED["env"] = set_roots(root)
        info = build(root)
        info.update(root=root, result=I.run_browser(I.BrowserConfig()))
        _SHARED["info"] = info
    os.environ.update(_SHARED["env"])
    return _SHARED["info"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """The shared browser data (``shared_root``) with the output roots restored afterwards."""
    old = {k: os.environ.get(k) for k in artifacts.ROOTS}
    try:
        yield shared_root(tmp_path_factory)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
