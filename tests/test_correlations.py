"""Tests of neuron_lib.correlations_fast: every statistic against an independent float64 numpy reference.

Pure-tensor tests run on synthetic activations; the integration tests build their own tiny GPT-2 models
(2 layers x 64 neurons, 3 seeds, one shared byte-level BPE tokenizer) and a tiny token dataset.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from neuron_lib import artifacts
from neuron_lib import correlations_fast as cf
from neuron_lib.common import ManifestMismatch, NeuronLibError, load_tensors, read_json
from neuron_lib.corpus import load_token_dataset, tokenizer_fingerprint

REPO = Path(__file__).resolve().parents[1]


# ============================================================================ numpy references
def np_pearson(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Two-pass float64 Pearson; zero-variance rows/cols -> 0."""
    A = np.asarray(A, np.float64)
    B = np.asarray(B, np.float64)
    Ac = A - A.mean(1, keepdims=True)
    Bc = B - B.mean(1, keepdims=True)
    na, nb = np.sqrt((Ac**2).sum(1)), np.sqrt((Bc**2).sum(1))
    with np.errstate(divide="ignore", invalid="ignore"):
        C = (Ac @ Bc.T) / (na[:, None] * nb[None, :])
    C[~np.isfinite(C)] = 0
    return np.clip(C, -1, 1)


def np_cosine(A, B):
    A, B = np.asarray(A, np.float64), np.asarray(B, np.float64)
    na, nb = np.sqrt((A**2).sum(1)), np.sqrt((B**2).sum(1))
    with np.errstate(divide="ignore", invalid="ignore"):
        C = (A @ B.T) / (na[:, None] * nb[None, :])
    C[~np.isfinite(C)] = 0
    return C


def np_jaccard(A, B, thr):
    a, b = np.asarray(A) > thr, np.asarray(B) > thr
    inter = a.astype(np.float64) @ b.T.astype(np.float64)
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        J = np.where(union > 0, inter / union, 0.0)
    return J


def synthetic(n1=48, n2=64, T=2400, offset=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(6, T, generator=g)
    a = torch.randn(n1, 6, generator=g) @ lat + 0.7 * torch.randn(n1, T, generator=g) + offset
    b = torch.randn(n2, 6, generator=g) @ lat + 0.7 * torch.randn(n2, T, generator=g) + offset
    return a.float(), b.float()


def stream(sc, a, b, sizes=(97, 250, 1, 403, 333)):
    i, k = 0, 0
    while i < a.shape[1]:
        s = sizes[k % len(sizes)]
        sc.update(a[:, i : i + s], b[:, i : i + s])
        i, k = i + s, k + 1
    return sc


def make_cfg(**kw):
    base = dict(reference_model="ref", other_models=["b"], token_dataset="unused", progress=False)
    base.update(kw)
    return cf.CorrelationConfig(**base).validate()


# ============================================================================ streaming core
def test_streaming_pearson_matches_float64_two_pass_with_large_offset():
    a, b = synthetic(offset=1000.0)
    sc = stream(cf.StreamingCorrelation(a.shape[0], b.shape[0]), a, b)
    ref = np_pearson(a.numpy(), b.numpy())
    got = sc.finalize().numpy()
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() <= 1e-4
    # the check has teeth: single-pass raw fp32 moments fail badly on the same data
    T = a.shape[1]
    S1, S2 = a.sum(1), b.sum(1)
    cov = a @ b.T - S1[:, None] * S2[None, :] / T
    var1, var2 = (a * a).sum(1) - S1**2 / T, (b * b).sum(1) - S2**2 / T
    raw = (cov / torch.sqrt(var1[:, None].abs() * var2[None, :].abs())).numpy()
    assert not np.nanmax(np.abs(raw - ref)) <= 1e-2
    # without an offset, fp64 GEMM mode agrees as well
    a0, b0 = synthetic(seed=3)
    sc64 = stream(cf.StreamingCorrelation(48, 64, matmul_dtype=torch.float64), a0, b0)
    assert np.abs(sc64.finalize().numpy() - np_pearson(a0.numpy(), b0.numpy())).max() <= 1e-6


def test_row_block_and_column_chunked_gemm_equal_full(monkeypatch):
    a, b = synthetic(seed=5)
    full = stream(cf.StreamingCorrelation(48, 64), a, b).finalize()
    part = stream(cf.StreamingCorrelation(48, 64, rows=(10, 30)), a, b).finalize()
    assert torch.allclose(part, full[10:30], atol=1e-6)
    monkeypatch.setattr(cf, "_GEMM_BUF_ELEMS", 20 * 5)  # the GEMM result in column chunks (big models)
    monkeypatch.setattr(cf, "_MIN_COL_CHUNK", 5)
    chunked = cf.StreamingCorrelation(48, 64, rows=(10, 30))
    assert chunked.col_chunk < 64
    assert torch.allclose(stream(chunked, a, b).finalize(), full[10:30], atol=1e-6)


def test_cosine_and_jaccard_match_numpy():
    a, b = synthetic(seed=1)
    sc = stream(cf.StreamingCorrelation(48, 64, similarity="cosine"), a, b)
    assert np.abs(sc.finalize().numpy() - np_cosine(a.numpy(), b.numpy())).max() <= 1e-5
    for thr in (0.0, 0.8):
        sj = stream(cf.StreamingCorrelation(48, 64, similarity="jaccard", jaccard_threshold=thr), a, b)
        assert np.abs(sj.finalize().numpy() - np_jaccard(a.numpy(), b.numpy(), thr)).max() <= 1e-6
    # the threshold is really used (the original ignored it)
    j0 = stream(cf.StreamingCorrelation(48, 64, similarity="jaccard", jaccard_threshold=0.0), a, b).finalize()
    j8 = stream(cf.StreamingCorrelation(48, 64, similarity="jaccard", jaccard_threshold=0.8), a, b).finalize()
    assert (j0 - j8).abs().max() > 0.05


def test_constant_neurons_give_zero_and_flags_never_nan():
    a, b = synthetic(n1=12, n2=16, T=600, offset=3.0, seed=2)
    a[2] = 5.25  # constant reference neuron
    b[7] = -1.5  # constant other neuron
    b[8:12] = 0.0  # a whole (4-neuron) layer dead: its rotated neurons are dead too
    sc = stream(cf.StreamingCorrelation(12, 16, other_layer_size=4), a, b)
    C = sc.finalize()
    assert torch.isfinite(C).all()
    assert (C[2] == 0).all() and (C[:, 7] == 0).all()
    assert sc.dead_ref.nonzero().flatten().tolist() == [2]
    assert sc.dead_other.nonzero().flatten().tolist() == [7, 8, 9, 10, 11]
    R = torch.stack([cf.random_rotation(4, s) for s in range(4)])
    Cr, dead_rot = sc.finalize_rotated(R)
    assert torch.isfinite(Cr).all() and (Cr[2] == 0).all() and (Cr[:, 8:12] == 0).all()
    assert dead_rot[8:12].all() and not dead_rot[:8].any()
    for sim in ("cosine", "jaccard"):
        s = stream(
            cf.StreamingCorrelation(12, 16, similarity=sim, jaccard_threshold=100.0 if sim == "jaccard" else 0), a, b
        )
        out = s.finalize()
        assert torch.isfinite(out).all()
    # all-never-active for jaccard at threshold 100: every neuron flagged, everything 0
    assert s.dead_ref.all() and (out == 0).all()
    summary = cf.summarize_correlation_matrix(C)
    assert all(torch.isfinite(v.float()).all() for v in summary.values())


# ============================================================================ rotations
def test_rotation_is_orthogonal_seeded_and_haar_like():
    R = cf.random_rotation(64, seed=7)
    eye = torch.eye(64, dtype=torch.float64)
    assert (R @ R.T - eye).abs().max() < 1e-5 and (R.T @ R - eye).abs().max() < 1e-5
    assert torch.equal(R, cf.random_rotation(64, seed=7))
    assert not torch.allclose(R, cf.random_rotation(64, seed=8))
    # sign fix: the QR's R factor of the underlying Gaussian has a positive diagonal -> no bias towards +-I
    R32 = cf.random_rotation(64, seed=7, dtype=torch.float32)
    assert (R32 @ R32.T - torch.eye(64)).abs().max() < 1e-5


@pytest.mark.parametrize("method,d", [("covariance", 8), ("activations", 8), ("covariance", 300)])
def test_rotation_baseline_equals_float64_correlation_with_rotated_activations(method, d):
    # d = 300 takes the symmetric-block path of the within-layer covariance (layers >= 256 wide)
    L, n1, T = (3, 20, 900) if d < 256 else (2, 12, 900)
    a, b = synthetic(n1=n1, n2=L * d, T=T, offset=50.0, seed=4)
    cfg = make_cfg(baseline="rotation", n_rotations=3, rotation_method=method, seed=11)
    eng = cf._Engine(cfg, n1, [("b", L, d)], torch.device("cpu"))
    eng.start_block((0, n1))
    for s in range(0, T, 200):
        eng.update(a[:, s : s + 200], [b[:, s : s + 200]], batch_key=s)
    eng.finish_block(None)
    A, B = a.double().numpy(), b.double().numpy()
    for k in range(3):
        Rs = [cf.random_rotation(d, cf.rotation_seed(11, "b", k, l)).numpy() for l in range(L)]
        Br = np.concatenate([Rs[l] @ B[l * d : (l + 1) * d] for l in range(L)])
        ref = np_pearson(A, Br)
        got_max = eng.null_max[0][:, k].numpy()
        assert np.abs(got_max - ref.max(1)).max() <= 1e-4
        if k == 0:
            summ = eng.row_acc[0, "rotation"].finalize()
            assert np.abs(summ["min_corr"].numpy() - ref.min(1)).max() <= 1e-4
            assert np.abs(summ["diag_corr"].numpy() - np.diag(ref)[:n1]).max() <= 1e-4


# ============================================================================ gaussian / permutation baselines
def _run_engine(cfg, a, b, step=150):
    eng = cf._Engine(cfg, a.shape[0], [("b", 1, b.shape[0])], torch.device("cpu"))
    eng.start_block((0, a.shape[0]))
    for s in range(0, a.shape[1], step):
        eng.update(a[:, s : s + step], [b[:, s : s + step]], batch_key=s)
    eng.finish_block(None)
    return eng


def test_gaussian_and_permutation_baselines_reproducible_and_correct():
    a, b = synthetic(n1=10, n2=12, T=600, seed=6)
    cfg = make_cfg(baseline="gaussian,permutation", seed=3)
    e1, e2 = _run_engine(cfg, a, b), _run_engine(cfg, a, b)
    for kind in ("gaussian", "permutation"):
        s1, s2 = e1.row_acc[0, kind].finalize(), e2.row_acc[0, kind].finalize()
        assert all(torch.equal(s1[k], s2[k]) for k in s1)
    other = _run_engine(make_cfg(baseline="gaussian,permutation", seed=4), a, b)
    assert not torch.equal(
        other.row_acc[0, "gaussian"].finalize()["max_corr"], e1.row_acc[0, "gaussian"].finalize()["max_corr"]
    )
    # independent reconstruction of what the baselines should be
    noise, perm_b = [], []
    for s in range(0, 600, 150):
        g = torch.Generator().manual_seed(cf.derive_seed(3, "gaussian", "b", s))
        noise.append(torch.nn.functional.gelu(torch.randn((12, 150), generator=g), approximate="tanh"))
        g = torch.Generator().manual_seed(cf.derive_seed(3, "permutation", "b", s))
        perm_b.append(b[:, s : s + 150][:, torch.randperm(150, generator=g)])
    for kind, B in (("gaussian", torch.cat(noise, 1)), ("permutation", torch.cat(perm_b, 1))):
        ref = np_pearson(a.numpy(), B.numpy())
        got = e1.row_acc[0, kind].finalize()
        assert np.abs(got["max_corr"].numpy() - ref.max(1)).max() <= 1e-4
        assert np.abs(got["corr_mean"].numpy() - ref.mean(1)).max() <= 1e-4
    # a permutation destroys the token alignment: the baseline is far below the real correlation
    real = e1.row_acc[0, "none"].finalize()["max_corr"]
    assert (real - e1.row_acc[0, "permutation"].finalize()["max_corr"]).mean() > 0.2


# ============================================================================ summaries
def np_summary(C: np.ndarray, k=50):
    edges = np.linspace(-1, 1, 100).astype(np.float32)
    bins = np.searchsorted(edges, C, side="left")
    counts = np.stack([np.bincount(r, minlength=101) for r in bins])
    x = C.astype(np.float64)
    mean = x.mean(1)
    var = x.var(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (x - mean[:, None]) / np.sqrt(var)[:, None]
    order = np.argsort(-x, axis=1, kind="stable")
    return dict(
        counts=counts,
        mean=mean,
        var=var,
        skew=(z**3).mean(1),
        kurt=(z**4).mean(1),
        top=np.take_along_axis(x, order[:, :k], 1),
        bot=np.sort(x, 1)[:, :k],
    )


def test_summary_matches_numpy_including_edges_and_pieces():
    g = torch.Generator().manual_seed(0)
    C = (torch.rand(30, 140, generator=g) * 2 - 1) ** 3
    edges = torch.from_numpy(np.linspace(-1, 1, 100).astype(np.float32))
    C[0, :100] = edges  # values exactly on edges (left rule: edge value goes to the bin that ends with it)
    C[1, :3] = torch.tensor([-1.0, 1.0, 0.0])
    C[2] = 0.25  # constant row: var 0 -> skew/kurt 0, not NaN
    C = C.float()
    s = cf.summarize_correlation_matrix(C)
    ref = np_summary(C.numpy())
    x = C.numpy().astype(np.float64)
    assert s["bin_counts"].dtype == torch.int32 and s["bin_counts"].shape == (30, 101)
    assert np.array_equal(s["bin_counts"].numpy(), ref["counts"])
    assert (s["bin_counts"][0, 1:100] >= 1).all()  # each edge value landed in its own bin
    assert np.allclose(s["max_corr"].numpy(), x.max(1)) and np.allclose(s["min_corr"].numpy(), x.min(1))
    ok = np.arange(30) != 2  # row 2 is constant: its arg-extremes are ties, returned in unspecified order
    assert np.array_equal(s["max_corr_ix"].numpy()[ok], x.argmax(1)[ok])
    assert np.array_equal(s["min_corr_ix"].numpy()[ok], x.argmin(1)[ok])
    assert np.allclose(s["max_tail_corr"].numpy(), ref["top"]) and np.allclose(s["min_tail_corr"].numpy(), ref["bot"])
    rows = np.arange(30)[:, None]
    assert np.allclose(x[rows, s["max_tail_corr_ix"].numpy()], s["max_tail_corr"].numpy())
    assert np.allclose(x[rows, s["min_tail_corr_ix"].numpy()], s["min_tail_corr"].numpy())
    assert np.allclose(s["corr_mean"].numpy(), ref["mean"], atol=1e-6)
    assert np.allclose(s["corr_var"].numpy(), ref["var"], atol=1e-7)
    assert np.allclose(s["corr_skew"].numpy()[ok], ref["skew"][ok], atol=1e-4)
    assert np.allclose(s["corr_kurt"].numpy()[ok], ref["kurt"][ok], atol=1e-4)
    assert s["corr_skew"][2] == 0 and s["corr_kurt"][2] == 0
    assert np.allclose(s["diag_corr"].numpy(), np.diag(x)) and np.allclose(s["obo_corr"].numpy(), np.diag(x, 1)[:30])
    assert all(v.dtype in (torch.float32, torch.int32) for v in s.values())
    # the same summary fed in pieces (row blocks x column blocks), as the blocked engine does for summary_T
    acc = cf.SummaryAccumulator(30, 140)
    for r0, r1 in ((0, 13), (13, 30)):
        for c0, c1 in ((0, 20), (20, 77), (77, 140)):
            acc.add(C[r0:r1, c0:c1], r0, c0)
    p = acc.finalize()
    for key in s:
        if key.endswith("_ix"):  # ties (the constant row 2) may come in any order
            assert torch.equal(p[key][ok], s[key][ok]), key
        elif key == "bin_counts":
            assert torch.equal(p[key], s[key]), key
        else:
            assert torch.allclose(p[key], s[key], atol=1e-5), key


# ============================================================================ table
def test_table_columns_excess_and_universal_logic():
    # 2 layers x 2 neurons, 2 other models (d_mlp 2), 3 rotations
    per_model = {  # values exact in binary, so "exactly 0.5" really is 0.5
        "b": dict(
            max_corr=[0.875, 0.75, 0.875, 0.0],
            max_corr_ix=[3, 0, 1, 2],
            baseline=[0.25, 0.25, 0.125, 0.0],
            null_max=[[0.2, 0.25, 0.3], [0.25, 0.25, 0.25], [0.1, 0.125, 0.15], [0, 0, 0]],
        ),
        "c": dict(
            max_corr=[0.75, 0.75, 0.875, 0.0],
            max_corr_ix=[1, 1, 2, 0],
            baseline=[0.25, 0.25, 0.125, 0.0],
            null_max=[[0.2, 0.3, 0.25], [0.2, 0.25, 0.3], [0.125, 0.125, 0.125], [0, 0, 0]],
        ),
    }
    df = cf.build_universal_table(
        per_model, 2, 2, dead=[False, False, False, True], universal_threshold=0.5, min_models=2, z_threshold=3.0
    )
    for col in [
        "layer",
        "neuron",
        "max_corr_b",
        "max_corr_layer_b",
        "max_corr_neuron_b",
        "baseline_b",
        "max_corr_c",
        "max_corr",
        "mean_corr",
        "min_corr",
        "max_baseline",
        "min_baseline",
        "mean_baseline",
        "excess_corr",
        "rotation_z",
        "rotation_p",
        "n_models_agree",
        "is_universal",
        "is_universal_z",
        "dead",
    ]:
        assert col in df.columns, col
    assert df["layer"].tolist() == [0, 0, 1, 1] and df["neuron"].tolist() == [0, 1, 0, 1]
    assert df["max_corr_layer_b"].tolist() == [1, 0, 0, 1] and df["max_corr_neuron_b"].tolist() == [1, 0, 1, 0]
    assert np.allclose(df["mean_corr"], [0.8125, 0.75, 0.875, 0.0]) and np.allclose(
        df["min_corr"], [0.75, 0.75, 0.875, 0]
    )
    assert np.allclose(df["excess_corr"], [0.5625, 0.5, 0.75, 0.0])
    # neuron 1: excess exactly 0.5 -> not universal (strict >); neuron 0: excess 0.5625 but only model b has
    # max_corr - baseline > 0.5 (c has exactly 0.5) -> 1 model < min_models=2
    assert df["n_models_agree"].tolist() == [1, 0, 2, 0]
    assert df["is_universal"].tolist() == [False, False, True, False]
    df1 = cf.build_universal_table(per_model, 2, 2, dead=[False, False, False, True], min_models=1)
    assert df1["is_universal"].tolist() == [True, False, True, False]
    # z-scores: per model (max_corr - mean(null)) / std(null, ddof=1), averaged; p from the mean-over-models null
    null_b, null_c = np.array(per_model["b"]["null_max"]), np.array(per_model["c"]["null_max"])
    zb = (np.array(per_model["b"]["max_corr"]) - null_b.mean(1)) / np.where(
        null_b.std(1, ddof=1) > 0, null_b.std(1, ddof=1), 1
    )
    zc = (np.array(per_model["c"]["max_corr"]) - null_c.mean(1)) / np.where(
        null_c.std(1, ddof=1) > 0, null_c.std(1, ddof=1), 1
    )
    assert np.isclose(df["rotation_z"][0], (zb[0] + zc[0]) / 2)
    assert df["rotation_z"][1] > 1e6 and df["rotation_z"][2] > 1e6  # zero-spread null in one model: huge z, not NaN
    assert df["rotation_z"][3] == 0 and bool(df["dead"][3]) and not df["is_universal_z"][3]
    assert np.allclose(df["rotation_p"], [0.25, 0.25, 0.25, 1.0])
    assert df1["is_universal_z"].tolist() == [True, True, True, False]
    strict = cf.build_universal_table(per_model, 2, 2, z_threshold=100.0)
    assert strict["is_universal_z"].tolist() == [False, True, True, False]
    assert strict["n_models_agree_z"].tolist() == [0, 1, 1, 0]
    # one rotation: no spread -> z undefined (NaN) and the z criterion is never met
    one = {m: {**v, "null_max": [[r[0]] for r in v["null_max"]]} for m, v in per_model.items()}
    d1 = cf.build_universal_table(one, 2, 2)
    assert d1["rotation_z"].isna().all() and not d1["is_universal_z"].any()


# ============================================================================ config / CLI
def test_config_parsing_and_validation():
    cfg = cf.config_from_args(
        cf.CorrelationConfig,
        cf._cli_parser().parse_args(
            [
                "--reference-model",
                "a",
                "--other-models",
                "b,c",
                "--token-dataset",
                "x",
                "--baseline",
                "rotation,none,gaussian",
                "--max-tokens",
                "1000",
                "--max-memory",
                "512MiB",
                "--no-progress",
            ]
        ),
    )
    cfg.validate()
    assert cfg.other_models == ["b", "c"] and cfg.baseline == ["gaussian", "rotation"] and cfg.max_tokens == 1000
    assert cfg.min_models == 1 and cfg.progress is False and cf.parse_memory(cfg.max_memory) == 512 * 2**20
    assert cf.parse_memory("4GB") == 4 * 10**9 and cf.parse_memory("auto") is None
    with pytest.raises(NeuronLibError):
        cf.parse_memory("lots")
    with pytest.raises(NeuronLibError):
        make_cfg(similarity="jaccard", rotation_method="covariance")
    with pytest.raises(NeuronLibError):
        make_cfg(other_models=["ref"])
    assert make_cfg(similarity="jaccard", jaccard_threshold=0.25).simtype == "jaccard-0.25"
    assert make_cfg(similarity="jaccard").resolved_rotation_method == "activations"


# ============================================================================ integration with tiny models
def _train_tokenizer(vocab_size: int, texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )


def _save_model(path: Path, tokenizer, seed: int, vocab_size: int | None = None) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    v = vocab_size or len(tokenizer)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=v,
            n_positions=32,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_inner=64,
            activation_function="gelu_new",
            bos_token_id=0,
            eos_token_id=0,
        )
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _save_dataset(path: Path, tokenizer, n_rows: int, ctx: int = 32, seed: int = 0) -> Path:
    import datasets
    import pyarrow as pa

    g = np.random.default_rng(seed)
    rows = g.integers(1, len(tokenizer), size=(n_rows, ctx))
    rows[:, 0] = tokenizer.bos_token_id
    nl = tokenizer.encode("\n", add_special_tokens=False)
    rows[g.random(rows.shape) < 0.05] = nl[0]
    rows[:, 0] = tokenizer.bos_token_id
    table = pa.table(
        {
            "tokens": pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1).astype(np.int32)), ctx),
            "subset": pa.array(["synthetic"] * n_rows),
        }
    )
    datasets.Dataset(table).save_to_disk(str(path))
    manifest = {
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "ctx_len": ctx,
        "n_rows": n_rows,
        "n_tokens": n_rows * ctx,
        "subset_tokens": {"synthetic": n_rows * ctx},
        "split": "analysis",
        "split_seed": 0,
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from neuron_lib.models import load_model

    root = tmp_path_factory.mktemp("corr_zoo")
    texts = [
        "the cat sees the dog in the morning.\n",
        "a small bird follows the river again.\n",
        "neurons in language models are universal, sometimes.\n",
    ] * 30
    tok = _train_tokenizer(300, texts)
    names = [str(_save_model(root / f"tiny-{s}", tok, seed=i)) for i, s in enumerate("abc")]
    alt_tok = _train_tokenizer(280, texts[:1] * 10)
    alt = str(_save_model(root / "alt-tok", alt_tok, seed=5))
    wide = str(_save_model(root / "wide-vocab", tok, seed=6, vocab_size=len(tok) + 20))
    data = _save_dataset(root / "tiny.analysis.32", tok, n_rows=16)
    models = {n: load_model(n) for n in names}
    return dict(root=root, names=names, alt=alt, wide=wide, data=str(data), models=models, tok=tok)


PAIR_FILES = (
    artifacts.CORRELATION_SUMMARY_FILE,
    artifacts.CORRELATION_SUMMARY_T_FILE,
    artifacts.CORRELATION_STATS_FILE,
)


@contextlib.contextmanager
def output_roots(out: Path):
    """RESULTS_DIR and DATAFRAMES_DIR under ``out`` for the duration (the module's fixtures outlive monkeypatch)."""
    saved = {k: os.environ.get(k) for k in ("RESULTS_DIR", "DATAFRAMES_DIR")}
    os.environ.update(RESULTS_DIR=str(out / "results"), DATAFRAMES_DIR=str(out / "frames"))
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _cfg(zoo, **kw):
    base = dict(
        reference_model=zoo["names"][0],
        other_models=zoo["names"][1:],
        token_dataset=zoo["data"],
        baseline="rotation",
        n_rotations=3,
        batch_size=8,
        seed=1,
        progress=False,
        max_memory="1GB",
    )
    base.update(kw)
    return cf.CorrelationConfig(**base)


def _run(zoo, out: Path, **kw):
    with output_roots(out):
        return cf.run_correlations(_cfg(zoo, **kw), models=zoo["models"])


def _pairs(result) -> dict[str, dict[str, str]]:
    """{other: {baseline: folder}} from a StageResult's outputs."""
    pairs: dict[str, dict[str, str]] = {}
    for key, folder in result.outputs.items():
        if "/" in key:
            other, kind = key.split("/")
            pairs.setdefault(other, {})[kind] = folder
    return pairs


def _all_outputs(result) -> dict[str, torch.Tensor]:
    out = {}
    for other, kinds in _pairs(result).items():
        for kind, folder in kinds.items():
            for f in PAIR_FILES:
                for k, v in load_tensors(Path(folder) / f).items():
                    out[f"{Path(other).name}/{kind}/{f}/{k}"] = v
    return out


def _activations(zoo, name, dataset_path):
    from neuron_lib.streaming import TokenFilter, iter_mlp_activations

    ds, _ = load_token_dataset(dataset_path)
    drop = TokenFilter().drop_ids(zoo["tok"])
    parts = [
        b.post.reshape(-1, b.post.shape[-1]) for b in iter_mlp_activations(zoo["models"][name], ds, 8, drop_ids=drop)
    ]
    return torch.cat(parts, 1).double().numpy()


@pytest.fixture(scope="module")
def reference_run(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref_run")
    cfg = _cfg(zoo, baseline="rotation,gaussian,permutation")
    return out, cfg, _run(zoo, out, baseline="rotation,gaussian,permutation")


def test_run_matches_float64_and_writes_layout(zoo, reference_run, capsys):
    out, cfg, result = reference_run
    ref_name, others = Path(zoo["names"][0]).name, [Path(n).name for n in zoo["names"][1:]]
    assert set(_pairs(result)) == set(others) and result.status == "done" and result.n_tokens > 0
    A = _activations(zoo, zoo["names"][0], zoo["data"])
    for other_path, other in zip(zoo["names"][1:], others):
        folder = out / "results" / f"{ref_name}+{other}" / "tiny.analysis.32" / "pearson.none"
        assert Path(_pairs(result)[other]["none"]) == folder
        man = read_json(folder / "manifest.json")
        assert man["n_tokens"] == A.shape[1] and man["baseline"] == "none"
        B = _activations(zoo, other_path, zoo["data"])
        C = np_pearson(A, B)
        s = load_tensors(folder / artifacts.CORRELATION_SUMMARY_FILE)
        sT = load_tensors(folder / artifacts.CORRELATION_SUMMARY_T_FILE)
        assert np.abs(s["max_corr"].numpy() - C.max(1)).max() <= 1e-4
        assert np.abs(sT["max_corr"].numpy() - C.max(0)).max() <= 1e-4
        assert np.abs(s["corr_mean"].numpy() - C.mean(1)).max() <= 1e-4
        assert s["max_corr"].dtype == torch.float32 and s["bin_counts"].sum(1).eq(C.shape[1]).all()
        # rotation folder: rotation 0 summary + K null maxima, all against float64 rotated activations
        rot = out / "results" / f"{ref_name}+{other}" / "tiny.analysis.32" / "pearson.rotation"
        st = load_tensors(rot / artifacts.CORRELATION_STATS_FILE)
        assert st["rotation_null_max"].shape == (128, 3)
        for k in range(3):
            Bk = np.concatenate(
                [
                    cf.random_rotation(64, cf.rotation_seed(1, other, k, l)).numpy() @ B[l * 64 : (l + 1) * 64]
                    for l in range(2)
                ]
            )
            assert np.abs(st["rotation_null_max"][:, k].numpy() - np_pearson(A, Bk).max(1)).max() <= 1e-4
        assert (rot / "manifest.json").exists() and (rot.parent / "pearson.gaussian" / "manifest.json").exists()
    import pandas as pd

    df = pd.read_parquet(artifacts.correlation_table_file(Path(result.outputs["table_dir"]), "parquet"))
    assert len(df) == 128 and {f"max_corr_{o}" for o in others} <= set(df.columns)
    assert np.allclose(df["excess_corr"], df["mean_corr"] - df["mean_baseline"])
    table_manifest = read_json(Path(result.outputs["table_dir"]) / "manifest.json")
    assert table_manifest["n_universal"] == int(df["is_universal"].sum()) == result.details["n_universal"]
    assert table_manifest["stage"] == "correlations.table" and table_manifest["model"] == ref_name
    assert pd.read_csv(result.outputs["table"])["excess_corr"].to_numpy() == pytest.approx(df["excess_corr"].to_numpy())


def test_finished_run_is_not_recomputed_and_other_config_refused(zoo, reference_run, capsys):
    out, cfg, result = reference_run
    stamp = {p: p.stat().st_mtime_ns for p in (out / "results").rglob("*") if p.is_file()}
    again = _run(zoo, out, baseline="rotation,gaussian,permutation")
    assert again.skipped is True
    assert stamp == {p: p.stat().st_mtime_ns for p in (out / "results").rglob("*") if p.is_file()}
    with pytest.raises(ManifestMismatch, match="--overwrite"):
        _run(zoo, out, baseline="rotation,gaussian,permutation", seed=2)
    # a table-only change rebuilds just the table (pairs untouched), refused without --overwrite
    with pytest.raises(ManifestMismatch):
        _run(zoo, out, baseline="rotation,gaussian,permutation", universal_threshold=0.3)
    redo = _run(zoo, out, baseline="rotation,gaussian,permutation", universal_threshold=0.3, overwrite=True)
    assert redo.details.get("table_only") and stamp == {
        p: p.stat().st_mtime_ns for p in (out / "results").rglob("*") if p.is_file()
    }


def test_finished_run_survives_a_moved_checkout(zoo, reference_run, tmp_path):
    """The folders' identities hold the dataset's content, not its absolute path: a moved tree is reused."""
    import shutil

    out = reference_run[0]
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    data = shutil.copytree(zoo["data"], tmp_path / "data" / Path(zoo["data"]).name)
    with output_roots(moved):
        again = cf.run_correlations(
            # the table was last rebuilt at threshold 0.3 (test_finished_run_is_not_recomputed_...)
            _cfg(zoo, baseline="rotation,gaussian,permutation", token_dataset=str(data), universal_threshold=0.3),
            models=zoo["models"],
        )
    assert again.skipped


@pytest.fixture(scope="module")
def blocked_run(zoo, reference_run, tmp_path_factory):
    """The reference run again with a max-memory budget that fits only 64 of the 128 reference rows."""
    plan = reference_run[2].details["plan"]
    budget = cf._bytes_for_rows(64, plan["fixed_bytes"], plan["per_row_bytes"], 128)
    out = tmp_path_factory.mktemp("blocked")
    return _run(zoo, out, baseline="rotation,gaussian,permutation", max_memory=str(budget))


def test_blocking_with_tiny_max_memory_matches_unblocked(reference_run, blocked_run):
    result = reference_run[2]
    assert blocked_run.details["plan"]["n_blocks"] == 2 and blocked_run.details["plan"]["block_rows"] == 64
    assert result.details["plan"]["n_blocks"] == 1
    a, b = _all_outputs(result), _all_outputs(blocked_run)
    assert a.keys() == b.keys()
    for k in a:
        if a[k].dtype.is_floating_point:
            assert torch.allclose(a[k], b[k], atol=2e-6), k
        else:
            assert torch.equal(a[k], b[k]), k


def test_interrupted_run_resumes_identically(zoo, blocked_run, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = cf._Engine.update

    def flaky(self, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # 2 batches per block: stop in the 2nd block after its 1st batch
            raise KeyboardInterrupt
        return original(self, *args, **kw)

    kw = dict(baseline="rotation,gaussian,permutation", checkpoint_every=1, block_rows=64)
    monkeypatch.setattr(cf._Engine, "update", flaky)
    with pytest.raises(KeyboardInterrupt):
        _run(zoo, tmp_path, **kw)
    monkeypatch.setattr(cf._Engine, "update", original)
    assert not list((tmp_path / "results").glob("*/*/pearson.none/manifest.json"))
    resumed = _run(zoo, tmp_path, **kw)
    assert resumed.details["resumed_from"] == {"block": 1, "row": 8, "batches_done": 3}
    a, b = _all_outputs(blocked_run), _all_outputs(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "results" / "_checkpoints").rglob("*.safetensors"))  # cleaned up after success


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import neuron_lib.streaming as s
    _orig = s.mlp_activations
    def slow(*a, **k):  # slow each forward down so the parent can kill mid-run
        time.sleep(0.4)
        return _orig(*a, **k)
    s.mlp_activations = slow
    from neuron_lib.correlations_fast import main
    main(sys.argv[1:])
""")


def test_sigkilled_run_resumes_identically(zoo, reference_run, tmp_path):
    """A real SIGKILL after the first checkpoint; the in-process resume must equal the uninterrupted run bit for bit."""
    out = tmp_path / "killed"
    args = [
        "--reference-model",
        zoo["names"][0],
        "--other-models",
        ",".join(zoo["names"][1:]),
        "--token-dataset",
        zoo["data"],
        "--baseline",
        "rotation,gaussian,permutation",
        "--n-rotations",
        "3",
        "--batch-size",
        "8",
        "--seed",
        "1",
        "--checkpoint-every",
        "1",
        "--max-memory",
        "1GB",
        "--no-progress",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RESULTS_DIR": str(out / "results"),
        "DATAFRAMES_DIR": str(out / "frames"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, *args],
        env=env,
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    killed = False
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            for path in (out / "results" / "_checkpoints").rglob("state.json"):
                try:
                    state = json.loads(path.read_text())
                except ValueError:
                    continue
                if state.get("batches_done", 0) >= 1:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = True
                    break
            if killed:
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and not killed:
            proc.kill()
        proc.wait(timeout=30)
    log = proc.stdout.read().decode(errors="replace")
    assert killed and proc.returncode == -signal.SIGKILL, log[-3000:]
    assert not list((out / "results").glob("*/*/pearson.none/manifest.json")), "the run finished before the kill"
    with output_roots(out):
        resumed = cf.run_correlations(
            cf.config_from_args(cf.CorrelationConfig, cf._cli_parser().parse_args(args)), models=zoo["models"]
        )
    assert resumed.details["resumed_from"] is not None and resumed.details["resumed_from"]["row"] >= 8
    a, b = _all_outputs(reference_run[2]), _all_outputs(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mismatched_tokenizer_and_vocab_refused(zoo, tmp_path):
    with pytest.raises(NeuronLibError, match="tokenizer"):
        _run(zoo, tmp_path, other_models=[zoo["names"][1], zoo["alt"]])
    with pytest.raises(NeuronLibError, match="d_vocab"):
        _run(zoo, tmp_path, other_models=[zoo["wide"]])
