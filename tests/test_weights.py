"""neuron_lib.weights against independent float64 references on a tiny GPT-2 built here.

The references redo the paper's weight processing by hand from the HF state dict (numpy, float64)
and compute every statistic directly, without the module's chunked code.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import D_HEAD, D_MLP, D_MODEL, N_HEADS, N_LAYERS, make_tiny_model
from neuron_lib.common import ManifestMismatch, NeuronLibError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from neuron_lib import stats as St  # noqa: E402
from neuron_lib import weights as W  # noqa: E402
from neuron_lib.common import load_tensors  # noqa: E402
from neuron_lib.models import load_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_weights") / "tiny-gpt2")


@pytest.fixture(scope="module")
def processed_model(tiny_dir):
    return load_model(str(tiny_dir), process_weights=True)


@pytest.fixture(scope="module")
def raw_model(tiny_dir):
    return load_model(str(tiny_dir), process_weights=False)


@pytest.fixture(scope="module")
def ref(tiny_dir) -> dict[str, np.ndarray]:
    """The paper's processing done by hand (numpy float64) from the HF state dict."""
    from safetensors.numpy import load_file

    sd = {k: v.astype(np.float64) for k, v in load_file(str(tiny_dir / "model.safetensors")).items()}
    cen_d = lambda a, axis: a - a.mean(axis, keepdims=True)  # noqa: E731
    out = {
        "W_in": [],
        "b_in": [],
        "W_out": [],
        "W_Q": [],
        "W_K": [],
        "W_V": [],
        "W_O": [],
        "raw_W_in": [],
        "raw_b_in": [],
        "raw_W_out": [],
    }
    for l in range(N_LAYERS):
        g2, b2 = sd[f"transformer.h.{l}.ln_2.weight"], sd[f"transformer.h.{l}.ln_2.bias"]
        w_fc, b_fc = sd[f"transformer.h.{l}.mlp.c_fc.weight"], sd[f"transformer.h.{l}.mlp.c_fc.bias"]
        out["raw_W_in"].append(w_fc)
        out["raw_b_in"].append(b_fc)
        out["W_in"].append(cen_d(g2[:, None] * w_fc, 0))
        out["b_in"].append(b_fc + b2 @ w_fc)
        w_proj = sd[f"transformer.h.{l}.mlp.c_proj.weight"]
        out["raw_W_out"].append(w_proj)
        out["W_out"].append(cen_d(w_proj, 1))
        g1 = sd[f"transformer.h.{l}.ln_1.weight"]
        qkv = sd[f"transformer.h.{l}.attn.c_attn.weight"]  # [D, 3D], columns = (q | k | v), heads contiguous
        for i, name in enumerate(("W_Q", "W_K", "W_V")):
            m = cen_d(g1[:, None] * qkv[:, i * D_MODEL : (i + 1) * D_MODEL], 0)
            out[name].append(m.reshape(D_MODEL, N_HEADS, D_HEAD).transpose(1, 0, 2))
        o = cen_d(sd[f"transformer.h.{l}.attn.c_proj.weight"], 1)  # [D(heads·d_head), D]
        out["W_O"].append(o.reshape(N_HEADS, D_HEAD, D_MODEL))
    ref = {k: np.stack(v) for k, v in out.items()}
    wte = sd["transformer.wte.weight"]
    ref["raw_W_E"] = wte
    ref["W_E"] = cen_d(wte, 1)
    gf = sd["transformer.ln_f.weight"]
    ref["W_U"] = cen_d(cen_d(gf[:, None] * wte.T, 0), 1)  # LN-fold (gain, centre along d_model), then centre vocab
    return ref


def unit(a, axis=-1):
    return a / np.linalg.norm(a, axis=axis, keepdims=True)


def np_moments(v):
    mean = v.mean(-1, keepdims=True)
    var = ((v - mean) ** 2).mean(-1)
    z = (v - mean) / np.sqrt(var)[..., None]
    return mean[..., 0], var, (z**3).mean(-1), (z**4).mean(-1)


def np_hist(v, edges):
    idx = np.searchsorted(edges, v, side="left")
    return np.stack([np.bincount(row, minlength=len(edges) + 1) for row in idx.reshape(-1, idx.shape[-1])])


# ---------------------------------------------------------------- weight processing
def test_processed_weights_are_the_papers_processing(processed_model, ref):
    w = W.extract_weights(processed_model)
    for name in ("W_in", "b_in", "W_out", "W_E", "W_U", "W_Q", "W_K", "W_V", "W_O"):
        np.testing.assert_allclose(getattr(w, name).numpy(), ref[name], atol=2e-6, err_msg=name)
    # the bridge did everything itself; centring residuals are at float32 rounding level
    assert w.processing["applied_by_neuron_lib"] == []
    assert w.processing["ln_weights_are_identity"]
    assert max(w.processing["centring_residual_before"].values()) < 1e-6
    assert np.abs(w.W_out.numpy().mean(-1)).max() < 1e-7
    assert np.abs(w.W_U.numpy().mean(-1)).max() < 1e-7  # zero mean across the vocabulary


def test_raw_weights_are_the_state_dict(raw_model, ref):
    w = W.extract_weights(raw_model)
    assert w.processing["requested"] == "raw"
    np.testing.assert_allclose(w.W_in.numpy(), ref["raw_W_in"], atol=1e-7)
    np.testing.assert_allclose(w.b_in.numpy(), ref["raw_b_in"], atol=1e-7)
    np.testing.assert_allclose(w.W_out.numpy(), ref["raw_W_out"], atol=1e-7)
    np.testing.assert_allclose(w.W_E.numpy(), ref["raw_W_E"], atol=1e-7)


def test_fallback_processing_when_bridge_did_none(raw_model, ref):
    """extract_weights(processed=True) on an unprocessed bridge folds and centres itself."""
    w = W.extract_weights(raw_model, processed=True)
    applied = " ".join(w.processing["applied_by_neuron_lib"])
    assert "fold ln2" in applied and "centre W_U across vocab" in applied and "centre W_out" in applied
    for name in ("W_in", "b_in", "W_out", "W_E", "W_U", "W_Q", "W_K", "W_V"):
        np.testing.assert_allclose(getattr(w, name).numpy(), ref[name], atol=2e-6, err_msg=name)


def test_processing_keeps_mlp_activations(processed_model, raw_model):
    tokens = torch.randint(0, processed_model.cfg.d_vocab, (2, 12), generator=torch.Generator().manual_seed(1))
    names = [f"blocks.{l}.mlp.{h}" for l in range(N_LAYERS) for h in ("hook_pre", "hook_post")]
    with torch.no_grad():
        _, c_proc = processed_model.run_with_cache(tokens, names_filter=names)
        _, c_raw = raw_model.run_with_cache(tokens, names_filter=names)
    for n in names:
        torch.testing.assert_close(c_proc[n], c_raw[n], atol=1e-5, rtol=1e-5)


def test_name_and_folder_give_the_same_weights(tiny_dir, monkeypatch, tmp_path):
    models_dir = tmp_path / "models"
    shutil.copytree(tiny_dir, models_dir / "zoo" / "tiny-zoo-a")
    monkeypatch.setenv("MODELS_DIR", str(models_dir))
    by_name = W.extract_weights(load_model("tiny-zoo-a", process_weights=True))
    by_path = W.extract_weights(load_model(str(tiny_dir), process_weights=True))
    for f in ("W_in", "b_in", "W_out", "W_E", "W_U", "W_Q", "W_K", "W_V", "W_O"):
        assert torch.equal(getattr(by_name, f), getattr(by_path, f)), f


# ---------------------------------------------------------------- numeric helpers
def test_histogram_binning_with_values_on_edges():
    edges = St.cosine_edges()
    e = edges.numpy()
    values = torch.tensor(
        [[-1.5, -1.0, e[1], (e[1] + e[2]) / 2, 0.999999, 1.0, 1.2, e[50], np.nextafter(e[50], 2)]], dtype=torch.float64
    )
    hist = St.histogram_counts(values, edges)[0].numpy()
    assert hist.shape == (101,) and hist.sum() == values.shape[1]
    # bin 0: v ≤ edges[0] (−1.5, −1.0); bin i: edges[i−1] < v ≤ edges[i]; bin 100: v > edges[99]
    expected = np.zeros(101, int)
    for b in (0, 0, 1, 2, 99, 99, 100, 50, 51):
        expected[b] += 1
    np.testing.assert_array_equal(hist, expected)
    np.testing.assert_array_equal(hist, np_hist(values.numpy(), e)[0])
    # excluded entries are dropped
    excl = torch.zeros_like(values, dtype=torch.bool)
    excl[0, 0] = True
    assert St.histogram_counts(values, edges, exclude=excl)[0, 0].item() == 1


# ---------------------------------------------------------------- statistics vs references
@pytest.fixture(scope="module")
def weights_run(processed_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("summary")
    mp = pytest.MonkeyPatch()
    mp.setenv("SUMMARY_DIR", str(root))
    try:
        cfg = W.WeightsConfig(model="tiny-gpt2", vocab_top_k=10, neuron_top_k=7, chunk_size=23, progress=False)
        out = W.run_weights(cfg, model=processed_model)
    finally:
        mp.undo()
    assert out.status == "done"
    return Path(out.outputs["folder"])


def test_outputs_and_manifest(weights_run):
    assert weights_run.name == "weights" and weights_run.parent.name == "tiny-gpt2"
    manifest = json.loads((weights_run / "manifest.json").read_text())
    assert manifest["stage"] == "weights" and manifest["model"] == "tiny-gpt2"
    assert manifest["weight_processing"]["processed"] is True
    assert manifest["weight_processing"]["options"]["fold_ln"] is True
    assert manifest["self_pair"] == "excluded"
    for f in manifest["files"]:
        assert (weights_run / f).exists()


def test_neuron_stats(weights_run, ref):
    df = pd.read_csv(weights_run / "neuron_stats.csv")
    assert list(df.columns[:7]) == W.NEURON_STATS_COLUMNS
    assert len(df) == N_LAYERS * D_MLP
    np.testing.assert_array_equal(df.layer, np.repeat(np.arange(N_LAYERS), D_MLP))
    np.testing.assert_array_equal(df.neuron, np.tile(np.arange(D_MLP), N_LAYERS))
    w_in = ref["W_in"].transpose(0, 2, 1).reshape(-1, D_MODEL)
    w_out = ref["W_out"].reshape(-1, D_MODEL)
    np.testing.assert_allclose(df.w_in_norm, np.linalg.norm(w_in, axis=1), rtol=1e-5)
    np.testing.assert_allclose(df.w_out_norm, np.linalg.norm(w_out, axis=1), rtol=1e-5)
    np.testing.assert_allclose(df.input_bias, ref["b_in"].reshape(-1), atol=1e-6)
    np.testing.assert_allclose(df.in_out_sim, (unit(w_in) * unit(w_out)).sum(1), atol=1e-5)
    np.testing.assert_allclose(df.l2_penalty, (w_in**2).sum(1) + (w_out**2).sum(1), rtol=1e-5)
    # vocab moments columns = U_out moments
    cos = unit(w_out) @ unit(ref["W_U"].T).T
    mean, var, skew, kurt = np_moments(cos)
    np.testing.assert_allclose(df.vocab_mean, mean, atol=1e-6)
    np.testing.assert_allclose(df.vocab_var, var, rtol=1e-4)
    np.testing.assert_allclose(df.vocab_skew, skew, atol=1e-4)
    np.testing.assert_allclose(df.vocab_kurt, kurt, rtol=1e-4)


@pytest.mark.parametrize("kind", W.VOCAB_TYPES)
def test_vocab_composition(weights_run, ref, kind):
    t = load_tensors(weights_run / "vocab_composition.safetensors")
    vecs = {"in": ref["W_in"].transpose(0, 2, 1).reshape(-1, D_MODEL), "out": ref["W_out"].reshape(-1, D_MODEL)}
    toks = {"E": ref["W_E"], "U": ref["W_U"].T}
    tok_side, neuron_side = kind.split("_")
    cos = unit(vecs[neuron_side]) @ unit(toks[tok_side]).T  # [L·N, V]
    k = 10
    order = np.argsort(-cos, axis=1, kind="stable")
    top_val = t[f"{kind}.top_value"].reshape(-1, k).numpy()
    np.testing.assert_allclose(top_val, np.take_along_axis(cos, order[:, :k], 1), atol=1e-5)
    np.testing.assert_array_equal(t[f"{kind}.top_index"].reshape(-1, k).numpy(), order[:, :k])
    order_b = np.argsort(cos, axis=1, kind="stable")
    np.testing.assert_allclose(
        t[f"{kind}.bottom_value"].reshape(-1, k).numpy(), np.take_along_axis(cos, order_b[:, :k], 1), atol=1e-5
    )
    np.testing.assert_array_equal(t[f"{kind}.bottom_index"].reshape(-1, k).numpy(), order_b[:, :k])
    hist = t[f"{kind}.hist"].reshape(-1, 101).numpy()
    want_hist = np_hist(cos, np.linspace(-1, 1, 100))
    # float32-vs-float64 processing may move a value that lies within 1e-6 of an edge; allow that only
    assert np.abs(hist - want_hist).sum() <= 2 * np.sum(
        np.min(np.abs(cos[..., None] - np.linspace(-1, 1, 100)), -1) < 1e-5
    )
    np.testing.assert_array_equal(hist.sum(1), cos.shape[1])
    for key, want in zip(("mean", "var", "skew", "kurt"), np_moments(cos)):
        np.testing.assert_allclose(t[f"{kind}.{key}"].reshape(-1).numpy(), want, rtol=1e-4, atol=1e-6, err_msg=key)


def test_vocab_kurt_null_against_float64_reference(weights_run, ref):
    """The null's quantiles from the same seeded draws, recomputed in numpy float64 from the hand-processed weights."""
    null = pd.read_csv(weights_run / "vocab_kurt_null.csv")
    manifest = json.loads((weights_run / "manifest.json").read_text())
    n, seed = manifest["vocab_null"]["n_samples"], manifest["vocab_null"]["seed"]
    assert n == W.WeightsConfig().vocab_null_samples and null["layer"].tolist() == list(range(N_LAYERS))
    gen = torch.Generator().manual_seed(seed)
    tokens = unit(ref["W_U"].T)  # [V, D]
    for layer in range(N_LAYERS):
        g = torch.randn(n, D_MLP, generator=gen, dtype=torch.float64).numpy()
        iso = torch.randn(n, D_MODEL, generator=gen, dtype=torch.float64).numpy()
        Wl = ref["W_out"][layer]
        w = g @ (Wl - Wl.mean(0, keepdims=True)) / np.sqrt(D_MLP)
        kurt = np_moments(unit(w) @ tokens.T)[3]
        row = null.iloc[layer]
        np.testing.assert_allclose(row["null_q99"], np.quantile(kurt, 0.99), rtol=1e-6)
        np.testing.assert_allclose(row["null_q50"], np.quantile(kurt, 0.5), rtol=1e-6)
        np.testing.assert_allclose(row["null_max"], kurt.max(), rtol=1e-6)
        np.testing.assert_allclose(
            row["isotropic_q99"], np.quantile(np_moments(unit(iso) @ tokens.T)[3], 0.99), rtol=1e-6
        )


def test_calibrated_prediction_flags_find_planted_token_writers():
    """Planted: 8 neurons write along one token's unembedding (4 +, 4 −) among 120 random neurons of the layer's
    own distribution. The calibrated rule finds all 8 with the right sign; random neurons pass at about 1 %."""
    from neuron_lib import criteria as C

    rng = np.random.default_rng(11)
    D, V, N = 64, 500, 128
    W_U = torch.tensor(rng.normal(size=(D, V)))
    W_U = W_U - W_U.mean(1, keepdim=True)
    W_out = torch.tensor(rng.normal(size=(1, N, D)))
    planted = np.arange(8)
    for i in planted:
        W_out[0, i] = (1.0 if i < 4 else -1.0) * W_U[:, 10 * i] + 0.05 * W_out[0, i]
    z = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
    weights = W.ModelWeights(
        W_in=z(1, D, N), b_in=z(1, N), W_out=W_out, W_E=z(V, D), W_U=W_U,
        W_Q=z(1, 1, D, D), W_K=z(1, 1, D, D), W_V=z(1, 1, D, D), W_O=z(1, 1, D, D),
    )  # fmt: skip
    null = W.vocab_kurtosis_null(weights, n_samples=400, seed=3)
    U_out = W.vocab_composition(weights, k=1, types_=("U_out",))["U_out"]
    kinds = C.vocab_kind(U_out["kurt"][0].numpy(), U_out["skew"][0].numpy(), null["null_q99"].iloc[0])
    assert (kinds[:4] == "prediction").all() and (kinds[4:8] == "suppression").all()
    false_positive = (kinds[8:] != "other").mean()
    assert false_positive <= 0.04, false_positive
    assert null["null_q99"].iloc[0] < 10  # this layer's null is far below the paper's fixed threshold


def test_vocab_null_samples_validation():
    with pytest.raises(NeuronLibError, match="vocab-null-samples"):
        W.WeightsConfig(model="m", vocab_null_samples=1).validate()
    assert W.artifacts.WEIGHT_VOCAB_NULL_FILE not in W._expected_files(W.WeightsConfig(model="m", vocab=False))


def test_vocab_top_k_capped_at_vocab():
    rng = np.random.default_rng(3)
    q, k = torch.tensor(rng.normal(size=(4, 8))), torch.tensor(rng.normal(size=(5, 8)))
    s = W.cosine_summary(q, k, k=100)
    assert s["top_index"].shape == (4, 5) and s["bottom_value"].shape == (4, 5)
    assert (s["top_value"][:, :-1] >= s["top_value"][:, 1:]).all()


@pytest.mark.parametrize("kind", W.NEURON_TYPES)
def test_neuron_composition_self_excluded(weights_run, ref, kind):
    t = load_tensors(weights_run / "neuron_composition.safetensors")
    vecs = {"in": ref["W_in"].transpose(0, 2, 1).reshape(-1, D_MODEL), "out": ref["W_out"].reshape(-1, D_MODEL)}
    mine, theirs = kind.split("_")
    cos = unit(vecs[mine]) @ unit(vecs[theirs]).T  # [L·N, L·N]
    n = cos.shape[0]
    others = cos[~np.eye(n, dtype=bool)].reshape(n, n - 1)  # self pair removed
    cols = np.array([[j for j in range(n) if j != i] for i in range(n)])
    k = 7
    order = np.argsort(-others, axis=1, kind="stable")[:, :k]
    top_ix = t[f"{kind}.top_index"].reshape(-1, k).numpy()
    np.testing.assert_array_equal(top_ix, np.take_along_axis(cols, order, 1))
    assert not (top_ix == np.arange(n)[:, None]).any()
    assert not (t[f"{kind}.bottom_index"].reshape(-1, k).numpy() == np.arange(n)[:, None]).any()
    np.testing.assert_allclose(
        t[f"{kind}.top_value"].reshape(-1, k).numpy(), np.take_along_axis(others, order, 1), atol=1e-5
    )
    order_b = np.argsort(others, axis=1, kind="stable")[:, :k]
    np.testing.assert_allclose(
        t[f"{kind}.bottom_value"].reshape(-1, k).numpy(), np.take_along_axis(others, order_b, 1), atol=1e-5
    )
    np.testing.assert_array_equal(t[f"{kind}.hist"].reshape(-1, 101).sum(1).numpy(), n - 1)
    for key, want in zip(("mean", "var", "skew", "kurt"), np_moments(others)):
        np.testing.assert_allclose(t[f"{kind}.{key}"].reshape(-1).numpy(), want, rtol=1e-4, atol=1e-6, err_msg=key)


def test_head_composition(weights_run, ref):
    t = load_tensors(weights_run / "head_composition.safetensors")
    w_in = ref["W_in"].transpose(0, 2, 1).reshape(N_LAYERS, D_MLP, D_MODEL)
    w_out = ref["W_out"]
    want = {k: np.zeros((N_LAYERS, D_MLP, N_LAYERS, N_HEADS)) for k in W.HEAD_TYPES}
    for la in range(N_LAYERS):
        for h in range(N_HEADS):
            qk = ref["W_Q"][la, h] @ ref["W_K"][la, h].T  # [D (query side), D (key side)]: score = x_q qk x_kᵀ
            ov = ref["W_V"][la, h] @ ref["W_O"][la, h]  # [D (read), D (written)]
            for l in range(N_LAYERS):
                xo, xi = unit(w_out[l]), unit(w_in[l])
                want["neuron_out_to_head_q"][l, :, la, h] = np.linalg.norm(xo @ qk, axis=1) / np.linalg.norm(qk)
                want["neuron_out_to_head_k"][l, :, la, h] = np.linalg.norm(xo @ qk.T, axis=1) / np.linalg.norm(qk)
                want["neuron_out_to_head_v"][l, :, la, h] = np.linalg.norm(xo @ ov, axis=1) / np.linalg.norm(ov)
                want["head_out_to_neuron_in"][l, :, la, h] = np.linalg.norm(xi @ ov.T, axis=1) / np.linalg.norm(ov)
    for k in W.HEAD_TYPES:
        assert t[k].shape == (N_LAYERS, D_MLP, N_LAYERS, N_HEADS)
        np.testing.assert_allclose(t[k].numpy(), want[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert not np.allclose(want["neuron_out_to_head_q"], want["neuron_out_to_head_k"])


def test_query_side_means_query_position():
    """A vector added at the query position changes scores by x W_Q W_Kᵀ x_kᵀ: its q-score is ‖x W_Q W_Kᵀ‖."""
    rng = np.random.default_rng(5)
    D, dh = 6, 2
    Wq, Wk = rng.normal(size=(D, dh)), rng.normal(size=(D, dh))
    Wk[:, :] = 0
    Wk[0, 0] = 1.0  # keys read only residual direction 0 ...
    x = np.zeros(D)
    x[3] = 1.0
    Wq[3] = 0.0  # ... and queries ignore direction 3, so x at the query position does nothing
    w = W.ModelWeights(
        W_in=torch.zeros(1, D, 1, dtype=torch.float64),
        b_in=torch.zeros(1, 1, dtype=torch.float64),
        W_out=torch.tensor(x)[None, None],
        W_E=torch.eye(D, dtype=torch.float64),
        W_U=torch.eye(D, dtype=torch.float64),
        W_Q=torch.tensor(Wq)[None, None],
        W_K=torch.tensor(Wk)[None, None],
        W_V=torch.tensor(Wq)[None, None],
        W_O=torch.tensor(Wk.T)[None, None],
    )
    comp = W.head_composition(w)
    assert comp["neuron_out_to_head_q"].item() == pytest.approx(0.0, abs=1e-7)
    x0 = np.zeros(D)
    x0[0] = 1.0
    w.W_out = torch.tensor(x0)[None, None]
    assert W.head_composition(w)["neuron_out_to_head_k"].item() > 0.1  # direction 0 is read by the keys


# ---------------------------------------------------------------- runner, CLI
def test_up_to_date_run_is_reused_and_cli(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SUMMARY_DIR", str(tmp_path))
    argv = ["--model", str(tiny_dir), "--no-neurons", "--no-heads", "--vocab-top-k", "1000", "--no-progress"]
    W.main(argv)
    out = tmp_path / "tiny-gpt2" / "weights"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == ["neuron_stats.csv", "vocab_composition.safetensors", "vocab_kurt_null.csv"]
    assert manifest["config"]["vocab_top_k"] == 1000 and manifest["vocab_top_k"] == manifest["d_vocab"]
    t = load_tensors(out / "vocab_composition.safetensors")
    assert t["U_out.top_index"].shape[-1] == manifest["d_vocab"]  # capped at d_vocab
    mtime = (out / "manifest.json").stat().st_mtime_ns
    W.main(argv)
    assert "up to date" in capsys.readouterr().out
    assert (out / "manifest.json").stat().st_mtime_ns == mtime
    # another configuration in the same folder is refused (the one folder rule), replaced with --overwrite
    other = [a if a != "1000" else "5" for a in argv]
    with pytest.raises(ManifestMismatch, match="--overwrite"):
        W.main(other)
    W.main(other + ["--overwrite"])
    assert json.loads((out / "manifest.json").read_text())["config"]["vocab_top_k"] == 5
    W.main(["--model", str(tiny_dir), "--raw-weights", "--no-vocab", "--no-neurons", "--no-heads", "--no-progress"])
    raw = json.loads((tmp_path / "tiny-gpt2" / "weights_raw" / "manifest.json").read_text())
    assert raw["weight_processing"]["processed"] is False


def test_cli_requires_model():
    with pytest.raises(NeuronLibError, match="--model"):
        W.main([])
