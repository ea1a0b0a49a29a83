"""Activation caching (neuron_lib.activations) against an independent float64 reference.

The reference is plain HF ``GPT2LMHeadModel`` in float64 with forward hooks on ``transformer.h[l].mlp.act``;
loss/entropy come from ``torch.nn.functional`` on its float64 logits and the rank from a full descending sort.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers import BOS, CTX, build_tiny_model, make_rows, reference_activations, save_dataset  # noqa: E402
from neuron_lib import activations as A  # noqa: E402
from neuron_lib import artifacts  # noqa: E402
from neuron_lib.common import ManifestMismatch, NeuronLibError, load_tensors, read_json  # noqa: E402
from neuron_lib.corpus import tokenizer_fingerprint  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("activations")
    model_dir = build_tiny_model(root / "tinygpt")
    fp = tokenizer_fingerprint(AutoTokenizer.from_pretrained(model_dir))
    rows = make_rows(10, seed=5)[:7]
    rows[2, -1] = BOS  # 'last' must skip a trailing EOS/BOS
    rows[3, -3:] = BOS
    rows[5, :] = BOS  # nothing kept: an invalid row when aggregating
    ds = save_dataset(root / "data" / "acts.16", rows, ["x"] * len(rows), fp)
    pre, post = reference_activations(model_dir, rows)  # [L, rows, ctx, N]
    hf = GPT2LMHeadModel.from_pretrained(model_dir).double().eval()
    with torch.no_grad():
        logits = hf(torch.tensor(rows)).logits  # float64
    return dict(root=root, model_dir=model_dir, fp=fp, rows=rows, ds=ds, pre=pre, post=post, logits=logits)


@pytest.fixture(autouse=True)
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("CACHED_ACTIVATIONS_DIR", str(tmp_path / "cached"))
    return tmp_path / "cached"


def cfg(env, **kw):
    base = dict(model=str(env["model_dir"]), token_dataset=str(env["ds"]), batch_size=3, device="cpu", dtype="float64")
    base.update(kw)
    return A.ActivationsConfig(**base)


def load(env, neuron, **kw):
    return A.load_cached_activations(str(env["model_dir"]), "acts.16", neuron, **kw).numpy()


def assert_quantised_close(got, ref, folder, file, col):
    t = load_tensors(folder / file)
    scale = float(t["scale"][col])
    mn, mx = float(np.nanmin(ref)), float(np.nanmax(ref))
    assert scale == pytest.approx((mx - mn) / 255, rel=1e-6)
    assert int(t["zero_point"][col]) == round(-mn / ((mx - mn) / 255))
    assert t["values"].dtype == torch.uint8
    err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    assert np.nanmax(err) <= scale / 2 * (1 + 1e-5) + 1e-6


def test_neuron_subset_8bit_pre_and_metrics(env, tmp_path):
    csv = tmp_path / "neurons.csv"
    csv.write_text("layer,neuron,extra\n1,7,a\n0,5,b\n")
    out = A.run_activations(cfg(env, neurons="1.23,0.5", neuron_csv=str(csv)))
    assert out.status == "done" and out.details["neurons"] == [(0, 5), (1, 7), (1, 23)]
    folder = artifacts.activation_cache(str(env["model_dir"]), "acts.16")
    assert out.outputs["folder"] == str(folder) and out.n_tokens == 7 * 16
    man = read_json(folder / "manifest.json")
    assert man["tokenizer_fingerprint"] == env["fp"] and man["rows_cached"] == len(env["rows"]) * CTX
    for col, (l, n) in enumerate(out.details["neurons"]):
        ref = env["pre"][l, :, :, n].reshape(-1)  # flat index row*ctx + pos, nothing dropped
        got = load(env, f"{l}.{n}", location="pre", aggregation="none")
        assert got.shape == ref.shape
        assert_quantised_close(got, ref, folder, "neurons.safetensors", col)
    assert np.allclose(load(env, (1, 23)), load(env, "1.23"))
    with pytest.raises(NeuronLibError, match="not in the cache"):
        load(env, "1.24")
    with pytest.raises(ManifestMismatch):
        load(env, "1.23", location="post")

    # per-token metrics against float64 torch with a full sort for the rank
    m = A.load_cached_metrics(str(env["model_dir"]), "acts.16")
    logits = env["logits"]
    toks = torch.tensor(env["rows"])
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), toks[:, 1:].reshape(-1), reduction="none"
    ).view(len(toks), -1)
    p = torch.softmax(logits, -1)
    ent = -(p * torch.log(p)).sum(-1)
    order = torch.argsort(logits[:, :-1], dim=-1, descending=True)
    rank = (order == toks[:, 1:].unsqueeze(-1)).to(torch.int64).argmax(-1)
    assert m["loss"].dtype == torch.float32 and m["rank"].dtype == torch.int32
    np.testing.assert_allclose(m["loss"][:, :-1].numpy(), ce.numpy(), rtol=1e-5, atol=1e-6)
    assert (m["loss"][:, -1] == 0).all() and (m["rank"][:, -1] == 0).all()
    np.testing.assert_allclose(m["entropy"].numpy(), ent.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(m["rank"][:, :-1].numpy(), rank.numpy())
    assert (rank > 0).any()


def test_layers_fp16_post_and_rerun(env):
    out = A.run_activations(cfg(env, layers="0", location="post", precision=16, skip_metrics=True))
    folder = artifacts.activation_cache(str(env["model_dir"]), "acts.16")
    assert out.details["files"] == ["layer0.safetensors"] and out.details["metrics_file"] is None
    t = load_tensors(folder / "layer0.safetensors")
    assert t["values"].dtype == torch.float16 and t["values"].shape == (len(env["rows"]) * CTX, 64)
    ref = env["post"][0].reshape(-1, 64)
    np.testing.assert_array_equal(t["values"].numpy(), ref.astype(np.float16))
    np.testing.assert_array_equal(load(env, "0.63"), ref[:, 63].astype(np.float16).astype(np.float32))
    with pytest.raises(NeuronLibError, match="no per-token metrics"):
        A.load_cached_metrics(str(env["model_dir"]), "acts.16")
    # same config → skipped; another config → refused; --overwrite recomputes
    assert (
        A.run_activations(cfg(env, layers="0", location="post", precision=16, skip_metrics=True, batch_size=5)).status
        == "skipped"
    )
    with pytest.raises(ManifestMismatch, match="another configuration"):
        A.run_activations(cfg(env, layers="0", location="post", precision=8, skip_metrics=True))
    out = A.run_activations(cfg(env, layers="0,1", precision=8, skip_metrics=True, overwrite=True))
    assert out.details["files"] == ["layer0.safetensors", "layer1.safetensors"]
    for l in (0, 1):
        for n in (0, 17, 63):
            ref = env["pre"][l, :, :, n].reshape(-1)
            assert_quantised_close(load(env, (l, n)), ref, folder, f"layer{l}.safetensors", n)


@pytest.mark.parametrize("how", ["mean", "max", "last"])
def test_aggregation(env, how):
    A.run_activations(cfg(env, neurons="0.3,1.40", aggregation=how, precision=16, skip_metrics=True))
    rows = env["rows"]
    keep = rows != BOS
    for l, n in ((0, 3), (1, 40)):
        x = env["pre"][l, :, :, n].astype(np.float64)  # [rows, ctx]
        expect = []
        for r in range(len(rows)):
            v = x[r][keep[r]]
            if len(v) == 0:
                expect.append(np.nan)
            elif how == "mean":
                expect.append(v.mean())
            elif how == "max":
                expect.append(v.max())
            else:
                expect.append(x[r, np.nonzero(keep[r])[0][-1]])
        got = load(env, (l, n), aggregation=how)
        assert got.shape == (len(rows),)
        np.testing.assert_allclose(
            got, np.array(expect, dtype=np.float16).astype(np.float32), rtol=1e-3, atol=1e-3, equal_nan=True
        )
        assert np.isnan(got[5]) and not np.isnan(got[:5]).any()
    if how == "last":  # row 2 ends with EOS: its 'last' is position 14, not 15
        assert load(env, (0, 3), aggregation="last")[2] == np.float16(env["pre"][0, 2, 14, 3])
    # 8-bit aggregated cache: quantised over the valid rows, invalid rows NaN
    A.run_activations(cfg(env, neurons="0.3", aggregation=how, precision=8, skip_metrics=True, overwrite=True))
    got = load(env, (0, 3))
    assert np.isnan(got[5]) and not np.isnan(got[:5]).any()


def test_quantisation_unit():
    x = torch.tensor([[0.0, 2.5, -1.0, 0.0], [1.0, 2.5, -3.0, 0.0], [-2.0, 2.5, 7.0, 0.0], [0.3, 2.5, 0.1, 0.0]])
    q, scale, zp = A.quantize_per_neuron(x)
    back = A.dequantize(q, scale, zp)
    assert torch.all((back - x).abs() <= scale / 2 * (1 + 1e-6) + 1e-7)
    assert torch.equal(back[:, 1], x[:, 1]) and torch.equal(back[:, 3], x[:, 3])  # constant neurons exact
    assert scale[0] == pytest.approx(3.0 / 255) and int(zp[0]) == round(2.0 / (3.0 / 255))


def test_errors(env, tmp_path):
    with pytest.raises(NeuronLibError, match="nothing to cache"):
        cfg(env).validate()
    with pytest.raises(NeuronLibError, match="either"):
        cfg(env, layers="0", neurons="0.1").validate()
    with pytest.raises(NeuronLibError, match="aggregation"):
        cfg(env, neurons="0.1", aggregation="median").validate()
    with pytest.raises(NeuronLibError, match="do not exist"):
        A.run_activations(cfg(env, neurons="2.1"))
    with pytest.raises(NeuronLibError, match="layer.neuron"):
        A.run_activations(cfg(env, neurons="12"))
    with pytest.raises(NeuronLibError, match="fewer than"):
        A.run_activations(cfg(env, neurons="0.1", max_tokens=10_000))
    bad = save_dataset(tmp_path / "bad.16", env["rows"], ["x"] * len(env["rows"]), "0" * 16)
    with pytest.raises(ManifestMismatch, match="tokenizer"):
        A.run_activations(cfg(env, neurons="0.1", token_dataset=str(bad)))
    with pytest.raises(NeuronLibError, match="max-memory"):
        A.run_activations(cfg(env, layers="0,1", max_memory="1KB"))
    with pytest.raises(NeuronLibError, match="no cached activations"):
        A.load_cached_activations(str(env["model_dir"]), "nothing.16", "0.1")
    A.main(
        [
            "--model",
            str(env["model_dir"]),
            "--token-dataset",
            str(env["ds"]),
            "--neurons",
            "1.2",
            "--max-tokens",
            "32",
            "--device",
            "cpu",
            "--skip-metrics",
        ]
    )
    assert load(env, "1.2").shape == (32,)
