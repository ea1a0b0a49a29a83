"""Activation analyses and heatmaps (neuron_lib.coactivation_analysis) on synthetic data with planted answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from neuron_lib import coactivation_analysis as CA
from neuron_lib.common import NeuronLibError

N_LAYERS, D_MLP = 3, 20


def neurons_frame(n_cols: int, d_mlp: int = D_MLP, ids=None) -> pd.DataFrame:
    ids = np.arange(n_cols) if ids is None else np.asarray(ids)
    return pd.DataFrame({"column": np.arange(len(ids)), "id": ids, "layer": ids // d_mlp, "dimension": ids % d_mlp})


def noisy(rng, rows, cols, density=0.15):
    return (rng.random((rows, cols)) < density).astype(np.int8)


def test_token_specific_neuron_is_found_with_precision_and_recall_one():
    rng = np.random.default_rng(0)
    n_tok, n_cols = 300, N_LAYERS * D_MLP
    tokens = rng.choice(["a", "b", "c", "d", " fox"], size=n_tok)
    X = noisy(rng, n_tok, n_cols)
    planted = 27
    X[:, planted] = tokens == " fox"  # fires exactly on " fox"
    res = CA.token_specific_neurons(sp.csr_matrix(X), neurons_frame(n_cols), tokens)
    best = res.data.iloc[0]
    assert (best.id, best.label, best.precision, best.recall, best.f1) == (planted, " fox", 1.0, 1.0, 1.0)
    assert (res.data.f1.iloc[1:] < 1).all()  # nothing else is perfectly specific
    row = res.data.set_index("id").loc[3]  # a noise neuron: precision/recall as counted by hand
    fires = X[:, 3] == 1
    is_tok = tokens == row.label
    assert row.precision == pytest.approx((fires & is_tok).sum() / fires.sum())
    assert row.recall == pytest.approx((fires & is_tok).sum() / is_tok.sum())
    assert res.fig is not None


def test_position_specific_neuron():
    rng = np.random.default_rng(1)
    positions = np.tile(np.arange(10), 30)
    X = noisy(rng, len(positions), N_LAYERS * D_MLP)
    X[:, 45] = positions == 0
    X[:, 46] = positions == 3
    res = CA.position_specific_neurons(sp.csr_matrix(X), neurons_frame(X.shape[1]), positions)
    top = res.data.head(2).set_index("id")
    assert set(top.index) == {45, 46}
    assert top.loc[45, "label"] == 0 and top.loc[46, "label"] == 3
    assert (top[["precision", "recall"]] == 1.0).all().all()


def test_frequent_neurons_counts():
    rng = np.random.default_rng(2)
    X = noisy(rng, 50, 12, 0.2)
    X[:, 7] = 1
    X[:40, 2] = 1
    X[40:, 2] = 0
    res = CA.frequent_neurons(sp.csr_matrix(X), neurons_frame(12, d_mlp=4), top=5)
    assert res.data.id.tolist()[:2] == [7, 2]
    assert res.data["count"].tolist() == sorted(X.sum(0), reverse=True)[:5]
    assert res.data.frequency.iloc[0] == 1.0 and res.data.frequency.iloc[1] == 0.8
    assert res.data.layer.iloc[0] == 1 and res.data.dimension.iloc[0] == 3


def test_prompt_similarity_within_exceeds_across_when_planted():
    rng = np.random.default_rng(3)
    n_prompts, per, n_cols = 4, 5, 200
    prompt_idx = np.repeat(np.arange(n_prompts), per)
    X = noisy(rng, len(prompt_idx), n_cols, 0.05)
    for p in range(n_prompts):  # each prompt has its own block of neurons
        X[prompt_idx == p, p * 40 : p * 40 + 30] = 1
    res = CA.prompt_similarity(sp.csr_matrix(X), prompt_idx)
    per_prompt = res.data[res.data.prompt != "all"]
    assert (per_prompt.within > per_prompt.across + 0.3).all()
    J = CA.jaccard_matrix(sp.csr_matrix(X))
    a, b = X[0].astype(bool), X[1].astype(bool)
    assert J[0, 1] == pytest.approx((a & b).sum() / (a | b).sum())
    same = prompt_idx[:, None] == prompt_idx[None, :]
    off = ~np.eye(len(prompt_idx), dtype=bool)
    overall = res.data.set_index("prompt").loc["all"]
    assert overall.within == pytest.approx(J[same & off].mean())
    assert overall.across == pytest.approx(J[~same].mean())
    # without planting, within ≈ across
    flat = CA.prompt_similarity(sp.csr_matrix(noisy(rng, 20, n_cols, 0.1)), prompt_idx).data.iloc[-1]
    assert abs(flat.within - flat.across) < 0.05


def test_token_clusters_separate_planted_groups_and_pca_matches_svd():
    rng = np.random.default_rng(4)
    n_cols = 60
    labels = np.array(["x"] * 40 + ["y"] * 40)
    X = noisy(rng, 80, n_cols, 0.05)
    X[:40, :20] = 1  # two groups with disjoint patterns
    X[40:, 30:50] = 1
    res = CA.token_clusters(sp.csr_matrix(X), labels, n_clusters=2, seed=0)
    d = res.data
    assert d.groupby("label").cluster.nunique().tolist() == [1, 1]
    assert d.cluster[:40].iloc[0] != d.cluster[40:].iloc[0]
    again = CA.token_clusters(sp.csr_matrix(X), labels, n_clusters=2, seed=0).data
    pd.testing.assert_frame_equal(d, again)  # seeded
    # the Gram-matrix PCA equals the SVD of the centred matrix (up to sign)
    scores, share = CA.pca_scores(sp.csr_matrix(X), 3)
    Xc = X - X.mean(0)
    U, S, _ = np.linalg.svd(Xc, full_matrices=False)
    np.testing.assert_allclose(np.abs(scores), np.abs(U[:, :3] * S[:3]), atol=1e-8)
    np.testing.assert_allclose(share, S[:3] ** 2 / (S**2).sum(), atol=1e-10)


def test_fold_shape():
    assert CA.fold_shape(3072) == (55, 56)
    assert CA.fold_shape(64) == (8, 8)
    assert CA.fold_shape(20) == (4, 5)
    for d in (1, 7, 100, 4096):
        r, c = CA.fold_shape(d)
        assert r * c >= d and (r - 1) * c < d and abs(r - c) <= 1


@pytest.mark.parametrize("mode", CA.HEATMAP_MODES)
def test_heatmap_data_marks_exactly_the_active_neurons(mode):
    active = [0, 5, 19, 20, 41, 59]
    res = CA.activity_heatmap(active, N_LAYERS, D_MLP, mode=mode, figure_rows=2, prompt="p", text="the text")
    d = res.data
    assert len(d) == N_LAYERS * D_MLP
    assert d.loc[d.active == 1, "id"].tolist() == active
    rows, cols = CA.fold_shape(D_MLP)
    assert ((d.row * cols + d.col) == d.dimension).all()
    grid = CA.activity_grid(active, N_LAYERS, D_MLP)
    assert grid.shape == (N_LAYERS, rows, cols)
    for r in d.itertuples():
        assert grid[r.layer, r.row, r.col] == r.active
    axes = [ax for ax in res.fig.axes if ax.get_images()]
    assert len(axes) == N_LAYERS
    texts = res.fig._suptitle.get_text() if res.fig._suptitle else ""
    if mode == "default":
        assert "prompt: p" in texts and "6 of 60" in texts
        assert [ax.get_title() for ax in axes] == ["layer 0: 3 active", "layer 1: 1 active", "layer 2: 2 active"]
    elif mode == "cinematic":
        assert texts == "the text" and res.fig.patch.get_alpha() == 0
    else:
        assert texts == "" and res.fig.patch.get_alpha() == 0
    with pytest.raises(NeuronLibError, match="mode"):
        CA.activity_heatmap(active, N_LAYERS, D_MLP, mode="fancy")
