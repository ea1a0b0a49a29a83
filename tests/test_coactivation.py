"""Co-activation graph: sparse counts vs brute force, components vs networkx, subsets, the stage."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from helpers import build_tiny_model
from neuron_lib import coactivation as C


def random_binary(seed, n_samples=30, n_cols=24, n_layers=3, p=0.3):
    rng = np.random.default_rng(seed)
    X = (rng.random((n_samples, n_cols)) < p).astype(np.int8)
    layers = np.sort(rng.integers(0, n_layers, n_cols))
    return X, layers


@pytest.mark.parametrize("seed", range(5))
def test_counts_match_brute_force(seed):
    X, layers = random_binary(seed)
    src, dst, count = C.coactivation_edges(sp.csr_matrix(X), layers)
    got = {(int(s), int(d)): int(c) for s, d, c in zip(src, dst, count)}
    want = {}
    for i in range(X.shape[1]):
        for j in range(X.shape[1]):
            if layers[j] == layers[i] + 1:
                c = int(sum(X[s, i] and X[s, j] for s in range(X.shape[0])))
                if c:
                    want[(i, j)] = c
    assert got == want
    assert (count > 0).all()


def test_normalisations():
    c, ni, nj, n = np.array([2, 4, 10]), np.array([4, 5, 10]), np.array([3, 8, 10]), 10
    assert np.allclose(C.normalise(c, ni, nj, n, "max"), c / 10)
    assert np.allclose(C.normalise(c, ni, nj, n, "jaccard"), c / (ni + nj - c))
    npmi = C.normalise(c, ni, nj, n, "npmi")
    assert np.isclose(npmi[0], np.log(2 * 10 / 12) / -np.log(0.2)) and npmi[2] == 1.0
    assert (npmi <= 1 + 1e-12).all() and (npmi >= -1 - 1e-12).all()


@pytest.mark.parametrize("seed", range(4))
def test_threshold_analysis_matches_networkx(seed):
    X, layers = random_binary(seed, n_samples=12, n_cols=30, n_layers=4, p=0.2)
    src, dst, count = C.coactivation_edges(sp.csr_matrix(X), layers)
    w = C.normalise(count, X.sum(0)[src], X.sum(0)[dst], X.shape[0], "max")
    thresholds = [0.0, 0.3, 0.6, 0.9]
    rows = C.threshold_analysis(X.shape[1], src, dst, w, thresholds)
    for t, row in zip(thresholds, rows):
        g = nx.Graph()
        g.add_edges_from((int(s), int(d)) for s, d, x in zip(src, dst, w) if x >= t)
        sizes = [len(c) for c in nx.connected_components(g)]
        assert row["nodes"] == g.number_of_nodes() and row["edges"] == g.number_of_edges()
        assert row["components"] == len(sizes)
        if sizes:
            assert row["min_component_size"] == min(sizes) and row["max_component_size"] == max(sizes)
            assert np.isclose(row["mean_component_size"], np.mean(sizes))
        # degrees too
        deg = C.degrees(X.shape[1], src[w >= t], dst[w >= t])
        assert all(deg[n] == d for n, d in g.degree())


@pytest.mark.parametrize("seed", range(4))
def test_pagerank_and_eigenvector_centrality_match_networkx(seed):
    rng = np.random.default_rng(seed)
    n = 30
    pairs = np.array([(i, j) for i in range(n) for j in range(i + 1, n) if rng.random() < 0.2])
    src, dst = pairs[:, 0], pairs[:, 1]
    weight = rng.uniform(0.1, 1.0, len(src))
    g = nx.Graph()
    g.add_nodes_from(range(n))  # isolated nodes too (dangling mass in PageRank, 0 in eigenvector centrality)
    g.add_weighted_edges_from(zip(src.tolist(), dst.tolist(), weight.tolist()))
    pr = nx.pagerank(g, alpha=0.85, weight="weight", tol=1e-12, max_iter=1000)
    np.testing.assert_allclose(C.pagerank(n, src, dst, weight), [pr[i] for i in range(n)], atol=1e-9)
    big = max(nx.connected_components(g), key=len)
    sub = g.subgraph(big)
    ev = nx.eigenvector_centrality_numpy(sub, weight="weight")
    keep = np.isin(src, list(big)) & np.isin(dst, list(big))
    got = C.eigenvector_centrality(n, src[keep], dst[keep], weight[keep])
    np.testing.assert_allclose(got[sorted(big)], [abs(ev[i]) for i in sorted(big)], atol=1e-8)
    # a subset by either centrality is the top of that score
    ids, n_nodes = C.top_subset(n, src, dst, weight, 0.0, 0.2, "pagerank")
    scores = C.pagerank(n, src, dst, weight)
    assert set(ids) == set(np.argsort(-scores, kind="stable")[: len(ids)]) and n_nodes == len(np.unique(pairs))


def test_top_subset_and_random_controls():
    # a star in layer 0 -> layer 1 plus a small pair: node 0 has degree 3
    src, dst, w = np.array([0, 0, 0, 1]), np.array([4, 5, 6, 7]), np.array([0.2, 0.2, 0.2, 1.0])
    top, n = C.top_subset(8, src, dst, w, 0.0, 0.1, "degree")
    assert n == 6 and top.tolist() == [0]  # nodes 2, 3 are isolated; k = max(1, floor(0.6)) = 1
    top, _ = C.top_subset(8, src, dst, w, 0.0, 0.1, "weighted_degree")
    assert top.tolist() == [1]  # 1 and 7 tie at 1.0 > 0.6 (node 0): the lower index wins
    top, n = C.top_subset(8, src, dst, w, 0.5, 1.0, "degree")
    assert n == 2 and top.tolist() == [1, 7]
    assert C.top_subset(8, src, dst, w, 2.0, 0.5, "degree")[0].size == 0
    ids = np.array([3, 10, 11, 40])  # d_mlp 16: layers 0, 0, 0, 2
    rng = np.random.default_rng(0)
    ctrl = C.random_control(ids, 16, rng)
    assert len(ctrl) == 4 and not set(ctrl) & set(ids)
    assert np.array_equal(np.bincount(ctrl // 16, minlength=3), np.bincount(ids // 16, minlength=3))
    again = C.random_control(ids, 16, np.random.default_rng(0))
    assert np.array_equal(ctrl, again)


@pytest.fixture(scope="module")
def prompt_run(tmp_path_factory):
    import os

    from neuron_lib.prompts import PromptsConfig, run_prompts

    root = tmp_path_factory.mktemp("coact")
    model = str(build_tiny_model(root / "tiny-coact"))
    csv = root / "mini.csv"
    csv.write_text("prompts,number_of_new_tokens,num_samples\nthe quick,5,6\nhello world,4,6\nthe lazy dog,3,4\n")
    old = os.environ.get("GRAPHS_DIR")
    os.environ["GRAPHS_DIR"] = str(root / "graphs")
    try:
        run_prompts(PromptsConfig(model=model, prompts_csv=str(csv), device="cpu"))
        yield model, root
    finally:
        if old is None:
            os.environ.pop("GRAPHS_DIR", None)
        else:
            os.environ["GRAPHS_DIR"] = old


def test_coactivation_stage(prompt_run, monkeypatch):
    from neuron_lib import artifacts
    from neuron_lib.common import ManifestMismatch
    from neuron_lib.prompts import load_prompt_run

    model, root = prompt_run
    monkeypatch.setenv("GRAPHS_DIR", str(root / "graphs"))
    cfg = C.CoactivationConfig(model=model, run="mini", subset_ratios=(0.05, 0.2), n_random=2)
    res = C.run_coactivation(cfg)
    assert res.status == "done"
    folder = artifacts.coactivation_graph(model, "mini")
    run = load_prompt_run(model, "mini")
    X = run["matrix"].toarray()
    ids, layers = run["neurons"]["id"].to_numpy(), run["neurons"]["layer"].to_numpy()
    edges = pd.read_parquet(folder / "edges.parquet")
    # spot-check counts against the dense matrix
    col = {n: c for c, n in enumerate(ids)}
    for e in edges.sample(min(50, len(edges)), random_state=0).itertuples():
        assert e.count == int((X[:, col[e.src]] & X[:, col[e.dst]]).sum())
        assert layers[col[e.dst]] == layers[col[e.src]] + 1
    assert np.isclose(edges["weight"].max(), 1.0)
    nodes = pd.read_csv(folder / "nodes.csv")
    assert (nodes["weight"].to_numpy() == X.sum(0)).all()
    analysis = pd.read_csv(folder / "threshold_analysis.csv")
    assert analysis["threshold"].round(1).tolist() == [round(0.1 * i, 1) for i in range(10)]
    assert analysis["edges"].iloc[0] == len(edges) and analysis["edges"].is_monotonic_decreasing
    for what in ("node_weight", "edge_weight", "degree"):
        assert (folder / f"histogram_{what}.png").stat().st_size > 0
        assert pd.read_csv(folder / f"histogram_{what}.csv")["count"].sum() > 0
    g = nx.read_graphml(folder / "graph.t0.5.graphml")
    kept = edges[edges["weight"] >= 0.5]
    assert g.number_of_edges() == len(kept)
    lines = (folder / "graph.t0.5.edgelist").read_text().splitlines()
    assert len(lines) == len(kept) and len(lines[0].split()) == 3

    index = pd.read_csv(folder / "subsets" / "subsets.csv")
    assert set(index["kind"]) == {"centrality", "random"}
    loaded = C.load_subsets(model, "mini", activation_threshold=0.0)
    d_mlp = run["manifest"]["model_info"]["d_mlp"]
    for row in index[index["kind"] == "centrality"].itertuples():
        chosen = loaded["subsets"][row.file[:-4]]
        assert len(chosen) == max(1, int(np.floor(row.ratio * row.graph_nodes + 1e-9)))
        for i in range(2):
            ctrl = loaded["subsets"][f"random{i}.{row.file[:-4]}"]
            assert np.array_equal(np.bincount(ctrl // d_mlp, minlength=4), np.bincount(chosen // d_mlp, minlength=4))

    assert C.run_coactivation(cfg).status == "skipped"
    with pytest.raises(ManifestMismatch, match="threshold"):
        C.run_coactivation(C.CoactivationConfig(model=model, run="mini", activation_threshold=0.1))
    with pytest.raises(ManifestMismatch, match="threshold"):
        C.load_subsets(model, "mini", activation_threshold=0.2)
    with pytest.raises(ManifestMismatch):
        C.run_coactivation(C.CoactivationConfig(model=model, run="mini", normalisation="jaccard"))
    assert C.run_coactivation(C.CoactivationConfig(model=model, run="mini", normalisation="npmi", overwrite=True))
