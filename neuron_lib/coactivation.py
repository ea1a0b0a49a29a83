"""The neuron co-activation graph of a prompt run, its threshold analysis and the perturbation subsets
(``python -m neuron_lib.coactivation``).

Input: a finished ``prompts`` run (``artifacts.prompt_activations(model, run)``): the binary matrix ``X``
(samples × neurons, 1 where the neuron is active in the sample). The run must be of the same model and
activation threshold (``--activation-threshold``, checked against its manifest; otherwise refused).

Graph (computed exactly, sparse, never a loop over candidate edges and never the complete base graph):

- node ``i`` (a neuron active in some sample): weight ``n_i`` = number of samples in which it is active
  (column sums of ``X``);
- edge ``(i, j)`` for ``i`` in layer ``l`` and ``j`` in layer ``l + 1`` (adjacent layers only), with count
  ``c_ij`` = number of samples in which both are active: the entries of ``X_lᵀ X_{l+1}`` (a scipy.sparse
  product of the layer-``l`` and layer-``l+1`` column blocks); pairs that never co-occur are not edges.
- normalised edge weight ``w_ij`` (``--normalisation``), with ``N`` samples:
  ``max``: ``c_ij / max(c)`` (the original); ``jaccard``: ``c_ij / (n_i + n_j − c_ij)``;
  ``npmi``: ``log(c_ij N / (n_i n_j)) / −log(c_ij / N)`` (normalised PMI in [−1, 1]; 1 where ``c_ij = N``).

Threshold analysis: for each normalised threshold ``t`` (default 0.0, 0.1, …, 0.9) the graph keeps the edges with
``w ≥ t`` and the nodes that touch one (isolated nodes are dropped); reported: nodes, edges, connected components
(``scipy.sparse.csgraph.connected_components``, undirected), min / max / mean component size.

Outputs (``$GRAPHS_DIR/{model}/{run}/coactivation/``): ``nodes.csv`` (``id, layer, dimension, weight, degree,
weighted_degree`` in the unthresholded graph), ``edges.parquet`` (``src, dst, count, weight``),
``threshold_analysis.csv``, ``histogram_{node_weight,edge_weight,degree}.{png,csv}`` (``bin_left, bin_right,
count``), for each ``--export-thresholds`` value ``graph.t{t}.edgelist`` (lines ``src dst weight``, neuron ids)
and ``graph.t{t}.graphml`` (written here, streaming: node attributes layer, dimension, weight; edge weight, count),
and the perturbation subsets.

Perturbation subsets (``subsets/``, int64 neuron-id arrays saved with ``numpy.save(allow_pickle=False)``, listed
in ``subsets/subsets.csv``): for each threshold ``t`` in ``--subset-thresholds``, ratio ``r`` in
``--subset-ratios`` and method in ``--subset-methods`` (``degree``: number of kept edges; ``weighted_degree``: sum
of their normalised weights; ``pagerank``, ``eigenvector``: weighted PageRank (damping 0.85) and eigenvector
centrality, sparse, as networkx defines them), the top ``k = max(1, floor(r · nodes_t))`` neurons of the graph thresholded at ``t``
(ties → lower id), file ``{method}.t{t}.r{r}.npy``; and ``--n-random`` seeded random controls
``random{i}.{method}.t{t}.r{r}.npy`` of the same size with the same number of neurons in every layer, drawn from
all of that layer's neurons (``d_mlp`` of them) except the subset's own.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import zlib
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from neuron_lib import artifacts, stage
from neuron_lib.common import (
    REQUIRED,
    NeuronLibError,
    atomic_write_text,
    config_field,
    config_fingerprint,
    config_identity,
    make_manifest,
    run_cli,
    save_array_atomic,
    write_manifest,
)

STAGE = "coactivation"
FORMAT = 1
NORMALISATIONS = ("max", "jaccard", "npmi")
METHODS = ("degree", "weighted_degree")
#: every centrality a subset can be chosen by (``make all`` uses METHODS; PageRank and eigenvector centrality on
#: request, both on the weighted graph)
CENTRALITIES = (*METHODS, "pagerank", "eigenvector")


@dataclasses.dataclass
class CoactivationConfig:
    """Co-activation graph of a prompt run (adjacent layers), threshold analysis and perturbation subsets."""

    model: str = config_field(REQUIRED, "model name of the prompt run (as given to neuron_lib.prompts)")
    run: str = config_field(REQUIRED, "the prompt run's name (neuron_lib.prompts --run, default the CSV's stem)")
    activation_threshold: float = config_field(0.0, "the prompt run must have used this activation threshold")
    normalisation: str = config_field("max", "edge weight normalisation: max (÷ max count) | jaccard | npmi")
    thresholds: tuple[float, ...] = config_field(
        (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), "normalised edge-weight thresholds of the analysis"
    )
    export_thresholds: tuple[float, ...] = config_field(
        (0.5,), "thresholds whose graph is exported (edgelist, GraphML)"
    )
    subset_thresholds: tuple[float, ...] = config_field((0.0,), "graph thresholds the subsets are chosen at")
    subset_ratios: tuple[float, ...] = config_field((0.05,), "subset sizes as fractions of the graph's nodes")
    subset_methods: tuple[str, ...] = config_field(
        METHODS, f"centralities, from {', '.join(CENTRALITIES)} (PageRank and eigenvector: weighted)"
    )
    n_random: int = config_field(2, "random control subsets per centrality subset (same size and per-layer counts)")
    seed: int = config_field(0, "seed of the random control subsets")
    histogram_bins: int = config_field(50, "bins of the node-weight, edge-weight and degree histograms")
    overwrite: bool = config_field(False, "replace a graph of another configuration (or a corrupt one)")

    def validate(self) -> CoactivationConfig:
        if self.normalisation not in NORMALISATIONS:
            raise NeuronLibError(f"--normalisation must be one of {NORMALISATIONS}, got {self.normalisation!r}")
        bad = [m for m in self.subset_methods if m not in CENTRALITIES]
        if bad:
            raise NeuronLibError(f"--subset-methods must be among {CENTRALITIES}, got {bad}")
        if any(not 0 < float(r) <= 1 for r in self.subset_ratios):
            raise NeuronLibError(f"--subset-ratios must be in (0, 1], got {list(self.subset_ratios)}")
        if int(self.n_random) < 0 or int(self.histogram_bins) < 1:
            raise NeuronLibError("--n-random must be ≥ 0 and --histogram-bins ≥ 1")
        for name in ("thresholds", "export_thresholds", "subset_thresholds", "subset_ratios"):
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        self.subset_methods = tuple(self.subset_methods)
        return self

    def identity(self) -> dict[str, Any]:
        return {**config_identity(self, exclude=("overwrite",)), "format": FORMAT}


# =============================================================== the numerics (pure functions, tested alone)
def coactivation_edges(matrix, layers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adjacent-layer co-activation counts of a binary samples × neurons matrix whose column ``c`` is in layer
    ``layers[c]``: ``(src, dst, count)`` column indices (src in layer l, dst in l + 1) and counts > 0, from the
    sparse products ``X_lᵀ X_{l+1}``."""
    import scipy.sparse as sp

    X = sp.csc_matrix(matrix, dtype=np.int64)
    layers = np.asarray(layers)
    srcs, dsts, counts = [], [], []
    for layer in np.unique(layers):
        a = np.flatnonzero(layers == layer)
        b = np.flatnonzero(layers == layer + 1)
        if not len(a) or not len(b):
            continue
        prod = (X[:, a].T @ X[:, b]).tocoo()
        keep = prod.data > 0
        srcs.append(a[prod.row[keep]])
        dsts.append(b[prod.col[keep]])
        counts.append(prod.data[keep].astype(np.int64))
    if not srcs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    src, dst, count = np.concatenate(srcs), np.concatenate(dsts), np.concatenate(counts)
    order = np.lexsort((dst, src))
    return src[order].astype(np.int64), dst[order].astype(np.int64), count[order]


def normalise(count: np.ndarray, n_src: np.ndarray, n_dst: np.ndarray, n_samples: int, method: str) -> np.ndarray:
    """Normalised edge weights (formulas in the module docstring)."""
    c = np.asarray(count, dtype=np.float64)
    if not len(c):
        return c
    if method == "max":
        return c / c.max()
    if method == "jaccard":
        return c / (np.asarray(n_src, np.float64) + np.asarray(n_dst, np.float64) - c)
    if method == "npmi":
        n = float(n_samples)
        pmi = np.log(c * n / (np.asarray(n_src, np.float64) * np.asarray(n_dst, np.float64)))
        denom = -np.log(c / n)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(denom > 0, pmi / np.where(denom > 0, denom, 1.0), 1.0)
    raise NeuronLibError(f"unknown normalisation {method!r}; choose from {NORMALISATIONS}")


def degrees(n_nodes: int, src, dst, weight=None) -> np.ndarray:
    """Degree (or weighted degree) of every node of an undirected edge list."""
    w = None if weight is None else np.asarray(weight, np.float64)
    return np.bincount(src, weights=w, minlength=n_nodes) + np.bincount(dst, weights=w, minlength=n_nodes)


def components(n_nodes: int, src, dst) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the graph on the nodes that touch an edge: ``(nodes, component sizes)``."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    nodes = np.unique(np.concatenate([src, dst])) if len(src) else np.zeros(0, np.int64)
    if not len(nodes):
        return nodes, np.zeros(0, np.int64)
    adj = sp.coo_matrix((np.ones(len(src)), (src, dst)), shape=(n_nodes, n_nodes)).tocsr()
    _, labels = connected_components(adj, directed=False)
    _, sizes = np.unique(labels[nodes], return_counts=True)
    return nodes, sizes


def threshold_analysis(n_nodes: int, src, dst, weight, thresholds) -> list[dict[str, Any]]:
    """Nodes, edges, components and component sizes of the graph keeping edges with ``weight ≥ t``."""
    rows = []
    for t in thresholds:
        keep = weight >= t
        nodes, sizes = components(n_nodes, src[keep], dst[keep])
        rows.append(
            {
                "threshold": float(t),
                "nodes": len(nodes),
                "edges": int(keep.sum()),
                "components": len(sizes),
                "min_component_size": int(sizes.min()) if len(sizes) else 0,
                "max_component_size": int(sizes.max()) if len(sizes) else 0,
                "mean_component_size": float(sizes.mean()) if len(sizes) else 0.0,
            }
        )
    return rows


def _adjacency(n_nodes: int, src, dst, weight):
    """Symmetric sparse weighted adjacency (CSR) of an undirected edge list."""
    import scipy.sparse as sp

    w = np.asarray(weight, np.float64)
    return sp.coo_matrix(
        (np.concatenate([w, w]), (np.concatenate([src, dst]), np.concatenate([dst, src]))), shape=(n_nodes, n_nodes)
    ).tocsr()


def pagerank(n_nodes: int, src, dst, weight, damping: float = 0.85, tol: float = 1e-12, max_iter: int = 1000):
    """Weighted PageRank of an undirected graph by power iteration on the sparse adjacency (networkx's definition:
    dangling nodes spread their mass uniformly); float64 [n_nodes], summing to 1."""
    adj = _adjacency(n_nodes, src, dst, weight)
    out = np.asarray(adj.sum(1)).ravel()
    inv = np.divide(1.0, out, out=np.zeros_like(out), where=out > 0)
    x = np.full(n_nodes, 1.0 / n_nodes)
    for _ in range(max_iter):
        spread = adj.T @ (x * inv)
        nxt = damping * (spread + x[out == 0].sum() / n_nodes) + (1 - damping) / n_nodes
        if np.abs(nxt - x).sum() < n_nodes * tol:
            return nxt
        x = nxt
    raise NeuronLibError(f"PageRank did not converge in {max_iter} iterations")


def eigenvector_centrality(n_nodes: int, src, dst, weight) -> np.ndarray:
    """Weighted eigenvector centrality: the leading eigenvector of the symmetric adjacency (scipy's ``eigsh``),
    non-negative, unit Euclidean norm (networkx's normalisation); isolated nodes get 0."""
    from scipy.sparse.linalg import eigsh

    adj = _adjacency(n_nodes, src, dst, weight)
    if adj.nnz == 0:
        return np.zeros(n_nodes)
    if n_nodes < 3:  # eigsh needs k < n
        vals, vecs = np.linalg.eigh(adj.toarray())
    else:
        vals, vecs = eigsh(adj, k=1, which="LA")
    v = np.abs(vecs[:, np.argmax(vals)])
    return v / np.linalg.norm(v)


def centrality(method: str, n_nodes: int, src, dst, weight) -> np.ndarray:
    """One of :data:`CENTRALITIES` for every node of the (thresholded) graph."""
    if method == "degree":
        return degrees(n_nodes, src, dst)
    if method == "weighted_degree":
        return degrees(n_nodes, src, dst, weight)
    if method == "pagerank":
        return pagerank(n_nodes, src, dst, weight)
    if method == "eigenvector":
        return eigenvector_centrality(n_nodes, src, dst, weight)
    raise NeuronLibError(f"unknown centrality {method!r}; known: {', '.join(CENTRALITIES)}")


def top_subset(n_nodes: int, src, dst, weight, threshold: float, ratio: float, method: str) -> tuple[np.ndarray, int]:
    """Node indices of the top ``max(1, floor(ratio · nodes_t))`` by a centrality at ``threshold``, and
    ``nodes_t`` (the thresholded graph's node count; an empty graph gives an empty subset)."""
    keep = weight >= threshold
    s, d, w = src[keep], dst[keep], weight[keep]
    deg = degrees(n_nodes, s, d)
    nodes = np.flatnonzero(deg > 0)
    if not len(nodes):
        return np.zeros(0, np.int64), 0
    score = centrality(method, n_nodes, s, d, w)
    k = max(1, int(np.floor(ratio * len(nodes) + 1e-9)))
    order = np.lexsort((nodes, -score[nodes]))  # score descending, then lower index
    return nodes[order[:k]], len(nodes)


def random_control(ids: np.ndarray, d_mlp: int, rng: np.random.Generator) -> np.ndarray:
    """As many random neurons per layer as ``ids`` has, from that layer's other neurons (sorted ids)."""
    ids = np.asarray(ids, np.int64)
    out = []
    for layer, count in zip(*np.unique(ids // d_mlp, return_counts=True)):
        pool = np.setdiff1d(np.arange(layer * d_mlp, (layer + 1) * d_mlp), ids)
        if len(pool) < count:
            raise NeuronLibError(f"layer {layer} has too few other neurons for a random control of {count}")
        out.append(rng.choice(pool, size=count, replace=False))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def write_graphml(path: Path, nodes, edges) -> Path:
    """A GraphML file (undirected) from a nodes frame (id, layer, dimension, weight) and an edges frame
    (src, dst, weight, count), written line by line."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<graphml xmlns="http://graphml.graphdrawing.org/xmlns">',
        '  <key id="layer" for="node" attr.name="layer" attr.type="int"/>',
        '  <key id="dimension" for="node" attr.name="dimension" attr.type="int"/>',
        '  <key id="nweight" for="node" attr.name="weight" attr.type="int"/>',
        '  <key id="weight" for="edge" attr.name="weight" attr.type="double"/>',
        '  <key id="count" for="edge" attr.name="count" attr.type="int"/>',
        '  <graph id="coactivation" edgedefault="undirected">',
    ]
    for n in nodes.itertuples(index=False):
        lines.append(
            f'    <node id="{escape(str(n.id))}"><data key="layer">{n.layer}</data>'
            f'<data key="dimension">{n.dimension}</data><data key="nweight">{n.weight}</data></node>'
        )
    for e in edges.itertuples(index=False):
        lines.append(
            f'    <edge source="{e.src}" target="{e.dst}"><data key="weight">{float(e.weight)!r}</data>'
            f'<data key="count">{e.count}</data></edge>'
        )
    lines += ["  </graph>", "</graphml>", ""]
    return atomic_write_text(path, "\n".join(lines))


def _histogram(folder: Path, what: str, values: np.ndarray, bins: int) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    counts, edges = np.histogram(values, bins=bins) if len(values) else (np.zeros(0, int), np.zeros(1))
    stem = folder / artifacts.GRAPH_HISTOGRAM_STEM.format(what=what)
    csv = pd.DataFrame({"bin_left": edges[:-1], "bin_right": edges[1:], "count": counts}).to_csv(index=False)
    atomic_write_text(stem.with_suffix(".csv"), csv)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(values, bins=bins)
    ax.set_xlabel(what.replace("_", " "))
    ax.set_ylabel("count")
    ax.set_yscale("log")
    fig.tight_layout()
    tmp = stem.with_name(f".{stem.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(stem.with_suffix(".png"))
    return [stem.with_suffix(".csv").name, stem.with_suffix(".png").name]


def _export_names(t: float) -> tuple[str, str]:
    return artifacts.GRAPH_EDGELIST_FILE.format(threshold=f"{t:g}"), artifacts.GRAPH_GRAPHML_FILE.format(
        threshold=f"{t:g}"
    )


def output_files(cfg: CoactivationConfig) -> list[str]:
    A = artifacts
    files = [A.GRAPH_NODES_FILE, A.GRAPH_EDGES_FILE, A.GRAPH_THRESHOLDS_FILE, f"{A.SUBSETS_DIR}/{A.SUBSETS_INDEX_FILE}"]
    for what in ("node_weight", "edge_weight", "degree"):
        files += [A.GRAPH_HISTOGRAM_STEM.format(what=what) + s for s in (".csv", ".png")]
    for t in cfg.export_thresholds:
        files += list(_export_names(t))
    return files


# =============================================================== the stage
def run_coactivation(cfg: CoactivationConfig) -> stage.StageResult:
    import pandas as pd

    from neuron_lib.prompts import load_prompt_run

    cfg.validate()
    run = load_prompt_run(cfg.model, cfg.run, expect_threshold=cfg.activation_threshold)
    identity = {**cfg.identity(), "prompt_run_fingerprint": run["manifest"]["config_fingerprint"]}
    fingerprint = config_fingerprint(identity)
    folder = artifacts.coactivation_graph(cfg.model, cfg.run)
    outputs = {"graph": str(folder), "subsets": str(folder / artifacts.SUBSETS_DIR)}
    state = stage.folder_state(folder, STAGE, fingerprint, output_files(cfg))
    if not stage.must_run(folder, state, cfg.overwrite, STAGE):
        stage.log(STAGE, f"{folder} already done (skipped: same configuration)")
        return stage.StageResult(STAGE, "skipped", outputs)

    t0 = time.perf_counter()
    X, neurons = run["matrix"], run["neurons"]
    d_mlp = int(run["manifest"]["model_info"]["d_mlp"])
    n_samples, n_cols = X.shape
    ids, layers = neurons["id"].to_numpy(np.int64), neurons["layer"].to_numpy(np.int64)
    stage.log(STAGE, f"{n_samples} samples x {n_cols} active neurons ({X.nnz} ones); building adjacent-layer edges")
    node_weight = np.asarray(X.sum(0)).ravel().astype(np.int64)
    src, dst, count = coactivation_edges(X, layers)
    weight = normalise(count, node_weight[src], node_weight[dst], n_samples, cfg.normalisation)
    nodes = neurons[["id", "layer", "dimension"]].assign(
        weight=node_weight,
        degree=degrees(n_cols, src, dst).astype(np.int64),
        weighted_degree=degrees(n_cols, src, dst, weight),
    )
    edges = pd.DataFrame({"src": ids[src], "dst": ids[dst], "count": count, "weight": weight})
    analysis = pd.DataFrame(threshold_analysis(n_cols, src, dst, weight, cfg.thresholds))

    if folder.exists():
        shutil.rmtree(folder)
    (folder / artifacts.SUBSETS_DIR).mkdir(parents=True)
    atomic_write_text(folder / artifacts.GRAPH_NODES_FILE, nodes.to_csv(index=False))
    edges_path = folder / artifacts.GRAPH_EDGES_FILE
    tmp = edges_path.with_name(f".{edges_path.name}.tmp")
    edges.to_parquet(tmp, index=False)
    tmp.replace(edges_path)
    atomic_write_text(folder / artifacts.GRAPH_THRESHOLDS_FILE, analysis.to_csv(index=False))
    _histogram(folder, "node_weight", node_weight, cfg.histogram_bins)
    _histogram(folder, "edge_weight", weight, cfg.histogram_bins)
    _histogram(folder, "degree", nodes["degree"].to_numpy(), cfg.histogram_bins)
    for t in cfg.export_thresholds:
        kept = edges[edges["weight"] >= t]
        edgelist, graphml = _export_names(t)
        text = "".join(f"{s} {d} {w!r}\n" for s, d, w in zip(kept["src"], kept["dst"], kept["weight"].astype(float)))
        atomic_write_text(folder / edgelist, text)
        touched = np.union1d(kept["src"], kept["dst"])
        write_graphml(folder / graphml, nodes[nodes["id"].isin(touched)], kept)

    subset_rows = []
    for t in cfg.subset_thresholds:
        for r in cfg.subset_ratios:
            for method in cfg.subset_methods:
                cols, n_t = top_subset(n_cols, src, dst, weight, t, r, method)
                if not len(cols):
                    stage.log(STAGE, f"no edges at threshold {t:g}: no {method} subset there")
                    continue
                chosen = np.sort(ids[cols])
                name = artifacts.subset_file_name(method, t, r)
                save_array_atomic(folder / artifacts.SUBSETS_DIR / name, chosen)
                base = {"method": method, "threshold": t, "ratio": r, "graph_nodes": n_t, "size": len(chosen)}
                subset_rows.append({"file": name, "kind": "centrality", "control": -1, **base})
                for i in range(cfg.n_random):
                    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, i, zlib.crc32(name.encode())]))
                    ctrl = random_control(chosen, d_mlp, rng)
                    cname = artifacts.subset_file_name(method, t, r, control=i)
                    save_array_atomic(folder / artifacts.SUBSETS_DIR / cname, ctrl)
                    subset_rows.append({"file": cname, "kind": "random", "control": i, **base})
    columns = ["file", "kind", "control", "method", "threshold", "ratio", "graph_nodes", "size"]
    atomic_write_text(
        folder / artifacts.SUBSETS_DIR / artifacts.SUBSETS_INDEX_FILE,
        pd.DataFrame(subset_rows, columns=columns).to_csv(index=False),
    )
    seconds = time.perf_counter() - t0
    manifest = make_manifest(
        STAGE,
        identity,
        config_fingerprint=fingerprint,
        model=run["manifest"]["model"],
        model_info=run["manifest"]["model_info"],
        activation_threshold=float(run["manifest"]["activation_threshold"]),
        prompt_run=str(run["folder"]),
        n_samples=n_samples,
        n_nodes=n_cols,
        n_edges=len(edges),
        files=output_files(cfg),
        subsets=[r["file"] for r in subset_rows],
        seconds=seconds,
    )
    write_manifest(folder, manifest)
    stage.log(STAGE, f"{n_cols} nodes, {len(edges)} edges, {len(subset_rows)} subsets in {seconds:.1f} s -> {folder}")
    return stage.StageResult(STAGE, "done", outputs, None, seconds, {"n_nodes": n_cols, "n_edges": len(edges)})


def open_graph(model: str, run: str, activation_threshold: float | None = None) -> tuple[Path, dict[str, Any]]:
    """A finished graph's folder and manifest, refusing a graph of another model or activation threshold."""
    from neuron_lib.common import ManifestMismatch, read_manifest
    from neuron_lib.models import model_output_name

    folder = artifacts.coactivation_graph(model, run)
    manifest = read_manifest(folder, f"python -m neuron_lib.coactivation --model {model} --run {run}")
    if manifest.get("stage") != STAGE or manifest.get("model") != model_output_name(model):
        raise ManifestMismatch(
            f"{folder} holds stage {manifest.get('stage')!r} of model {manifest.get('model')!r}, not a "
            f"{STAGE} graph of {model!r}"
        )
    if activation_threshold is not None and float(manifest["activation_threshold"]) != float(activation_threshold):
        raise ManifestMismatch(
            f"{folder} was built at activation threshold {manifest['activation_threshold']}, not {activation_threshold}"
        )
    return folder, manifest


def load_subsets(model: str, run: str, activation_threshold: float | None = None) -> dict[str, Any]:
    """A finished graph's subsets: ``{"manifest", "index" (DataFrame of subsets.csv), "subsets" {file stem: ids}}``,
    refusing a graph of another model or activation threshold."""
    import pandas as pd

    folder, manifest = open_graph(model, run, activation_threshold)
    index = pd.read_csv(folder / artifacts.SUBSETS_DIR / artifacts.SUBSETS_INDEX_FILE)
    subsets = {Path(f).stem: np.load(folder / artifacts.SUBSETS_DIR / f, allow_pickle=False) for f in index["file"]}
    return {"folder": folder, "manifest": manifest, "index": index, "subsets": subsets}


main = stage.cli(
    CoactivationConfig,
    run_coactivation,
    "python -m neuron_lib.coactivation",
    "Adjacent-layer co-activation graph of a prompt run, threshold analysis, exports and perturbation subsets.",
)


if __name__ == "__main__":
    run_cli(main)
