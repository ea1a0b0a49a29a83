"""Benchmark of the co-activation graph (``neuron_lib.coactivation``): graph build + threshold sweep.

Cases (each in its own subprocess so that peak RSS is per case):

- ``compare``: our path against the original pipeline's approach on the same random binary matrix (2 layers ×
  512 neurons × 200 samples, 10 % density): the original builds a networkx graph with one dot product of two
  neurons' binary columns per base edge (every pair of neurons in adjacent layers), normalises by the maximum
  count and, per threshold, takes the connected components of the edge subgraph; ours is the sparse products
  ``X_lᵀ X_{l+1}`` (``coactivation_edges``), ``normalise`` and ``threshold_analysis``
  (``scipy.sparse.csgraph``). The two give the same edges, weights and threshold table (checked);
- ``gpt2-small``: our path alone at GPT-2-small scale (12 layers × 3,072 = 36,864 neurons) on a random sparse
  binary matrix (500 samples, 5 % density): time and peak RSS.

Thresholds: the stage's defaults (0.0, 0.1, …, 0.9), max normalisation (the original's).

Run: ``python benchmarks/bench_coactivation.py`` → ``benchmarks/results/coactivation.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(10))


def random_matrix(n_samples: int, n_layers: int, d_mlp: int, density: float, seed: int = 0):
    """A random binary CSR matrix samples × (n_layers · d_mlp) and each column's layer."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    n_cols = n_layers * d_mlp
    X = sp.random(n_samples, n_cols, density=density, format="csr", random_state=rng, dtype=np.float64)
    X.data[:] = 1
    return X.astype(np.int8), np.arange(n_cols) // d_mlp


def ours(X, layers):
    """The stage's numerics: sparse products, max normalisation, the threshold sweep."""
    import numpy as np

    from neuron_lib import coactivation as C

    t0 = time.perf_counter()
    node_weight = np.asarray(X.sum(0)).ravel()
    src, dst, count = C.coactivation_edges(X, layers)
    weight = C.normalise(count, node_weight[src], node_weight[dst], X.shape[0], "max")
    t1 = time.perf_counter()
    rows = C.threshold_analysis(X.shape[1], src, dst, weight, THRESHOLDS)
    t2 = time.perf_counter()
    return {"build_s": t1 - t0, "sweep_s": t2 - t1, "total_s": t2 - t0, "n_edges": len(src)}, (src, dst, weight, rows)


def original(X, layers):
    """The original pipeline's approach: networkx, one dot product per base edge, components per threshold."""
    import networkx as nx
    import numpy as np

    t0 = time.perf_counter()
    dense = np.asarray(X.todense(), dtype=np.int64)
    G = nx.Graph()
    for i in range(dense.shape[1]):
        G.add_node(i, weight=int(dense[:, i].sum()))
    for layer in np.unique(layers)[:-1]:
        a, b = np.flatnonzero(layers == layer), np.flatnonzero(layers == layer + 1)
        for i in a:
            for j in b:
                c = int(np.dot(dense[:, i], dense[:, j]))
                if c > 0:
                    G.add_edge(int(i), int(j), weight=c)
    top = max(w for _, _, w in G.edges(data="weight"))
    for _, _, d in G.edges(data=True):
        d["weight"] = d["weight"] / top
    t1 = time.perf_counter()
    rows = []
    for t in THRESHOLDS:
        H = G.edge_subgraph([(u, v) for u, v, w in G.edges(data="weight") if w >= t])
        sizes = [len(c) for c in nx.connected_components(H)]
        rows.append(
            {
                "threshold": float(t),
                "nodes": H.number_of_nodes(),
                "edges": H.number_of_edges(),
                "components": len(sizes),
                "min_component_size": min(sizes) if sizes else 0,
                "max_component_size": max(sizes) if sizes else 0,
                "mean_component_size": float(np.mean(sizes)) if sizes else 0.0,
            }
        )
    t2 = time.perf_counter()
    return {"build_s": t1 - t0, "sweep_s": t2 - t1, "total_s": t2 - t0, "n_edges": G.number_of_edges()}, (G, rows)


def run_case(case: str) -> dict:
    import numpy as np

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if case == "compare":
        shape = dict(n_samples=200, n_layers=2, d_mlp=512, density=0.10)
        X, layers = random_matrix(**shape)
        mine, (src, dst, weight, rows) = ours(X, layers)
        theirs, (G, their_rows) = original(X, layers)
        same_edges = G.number_of_edges() == len(src) and all(
            abs(G[int(s)][int(d)]["weight"] - w) < 1e-12 for s, d, w in zip(src, dst, weight)
        )
        same_rows = all(
            a[k] == b[k] if k != "mean_component_size" else abs(a[k] - b[k]) < 1e-9
            for a, b in zip(rows, their_rows)
            for k in a
        )
        return {
            "case": case,
            **shape,
            "nnz": int(X.nnz),
            "ours": mine,
            "original": theirs,
            "speedup_total": theirs["total_s"] / mine["total_s"],
            "speedup_build": theirs["build_s"] / mine["build_s"],
            "identical_edges_and_weights": bool(same_edges),
            "identical_threshold_table": bool(same_rows),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_imports_mib": base_rss / 1024,
        }
    shape = dict(n_samples=500, n_layers=12, d_mlp=3072, density=0.05)
    X, layers = random_matrix(**shape)
    X.sum()  # materialised before timing
    mine, (src, _, weight, rows) = ours(X, layers)
    return {
        "case": case,
        **shape,
        "n_neurons": shape["n_layers"] * shape["d_mlp"],
        "nnz": int(X.nnz),
        "ours": mine,
        "edges_at_0.5": int((weight >= 0.5).sum()),
        "threshold_table": rows,
        "edge_arrays_mib": (src.nbytes * 3 + weight.nbytes) / 2**20,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_imports_mib": base_rss / 1024,
        "_np": np.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", help="run one case in this process and print its JSON (used internally)")
    args = parser.parse_args()
    if args.case:
        import numpy  # noqa: F401  (imports before the RSS baseline)
        import scipy.sparse  # noqa: F401

        import neuron_lib.coactivation  # noqa: F401

        print(json.dumps(run_case(args.case)))
        return
    results = []
    for case in ("compare", "gpt2-small"):
        t0 = time.time()
        out = subprocess.run(
            [sys.executable, __file__, "--case", case],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
        )
        if out.returncode != 0:
            raise SystemExit(f"case {case} failed:\n{out.stderr}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        res["wall_s"] = time.time() - t0
        results.append(res)
        print(json.dumps(res, indent=1), flush=True)
    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "numpy": results[1].pop("_np"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "coactivation.json").write_text(json.dumps({"env": env, "results": results}, indent=2) + "\n")
    cmp, big = results
    lines = [
        "# Co-activation graph: build + threshold sweep",
        "",
        f"`python benchmarks/bench_coactivation.py` on {env['cpus']} CPUs (shared with other jobs), Python "
        f"{env['python']}, numpy {env['numpy']}; thresholds {', '.join(f'{t:g}' for t in THRESHOLDS)}, max "
        "normalisation. Random binary matrices (seed 0).",
        "",
        "## Against the original approach",
        "",
        f"{cmp['n_layers']} layers × {cmp['d_mlp']} neurons × {cmp['n_samples']} samples, density "
        f"{cmp['density']:.0%} ({cmp['nnz']:,} ones), {cmp['ours']['n_edges']:,} edges. Original: networkx graph, "
        "one dot product per base edge (every pair of neurons in adjacent layers), components per threshold.",
        "",
        "| | build (s) | threshold sweep (s) | total (s) |",
        "|---|---:|---:|---:|",
        f"| original (networkx, per-edge dot products) | {cmp['original']['build_s']:.2f} | "
        f"{cmp['original']['sweep_s']:.2f} | {cmp['original']['total_s']:.2f} |",
        f"| ours (sparse `X_lᵀ X_(l+1)`, csgraph) | {cmp['ours']['build_s']:.3f} | {cmp['ours']['sweep_s']:.3f} | "
        f"{cmp['ours']['total_s']:.3f} |",
        f"| **ratio (original ÷ ours)** | {cmp['speedup_build']:.0f}× | | **{cmp['speedup_total']:.0f}×** |",
        "",
        f"Same edges and weights: {cmp['identical_edges_and_weights']}; same threshold table: "
        f"{cmp['identical_threshold_table']}.",
        "",
        "## GPT-2-small scale (ours only)",
        "",
        f"{big['n_layers']} layers × {big['d_mlp']} = {big['n_neurons']:,} neurons × {big['n_samples']} samples, "
        f"density {big['density']:.0%} ({big['nnz']:,} ones). A random matrix is the hard case: "
        f"{big['ours']['n_edges']:,} edges (most adjacent-layer pairs co-occur at least once).",
        "",
        "| build (s) | threshold sweep (s) | total (s) | peak RSS (MiB) | RSS after imports (MiB) | edge arrays (MiB) |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {big['ours']['build_s']:.1f} | {big['ours']['sweep_s']:.1f} | {big['ours']['total_s']:.1f} | "
        f"{big['peak_rss_mib']:,.0f} | {big['rss_after_imports_mib']:,.0f} | {big['edge_arrays_mib']:,.0f} |",
        "",
        "| threshold | nodes | edges | components | max component |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {r['threshold']:g} | {r['nodes']:,} | {r['edges']:,} | {r['components']:,} | "
            f"{r['max_component_size']:,} |"
            for r in big["threshold_table"]
        ],
        "",
        "The original approach was not run at this scale: 11 × 3,072² ≈ 104 M dot products and a networkx graph of "
        f"{big['ours']['n_edges']:,} edges.",
        "",
    ]
    (RESULTS / "coactivation.md").write_text("\n".join(lines))
    print(RESULTS / "coactivation.md")


if __name__ == "__main__":
    main()
