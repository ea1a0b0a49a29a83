"""Ablations (neuron_lib.intervention), the entropy experiment and the attention path ablation against
hand-computed float64 forwards of a micro GPT-2 (plain HF ``GPT2LMHeadModel`` with forward hooks).

Reference metrics: loss = ``F.cross_entropy`` on float64 logits, entropy = −Σ p log p, rank = position of the true
token in a full descending sort, KL = Σ p_clean (log p_clean − log p_ablated).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers import BOS, build_tiny_model, make_rows, save_dataset  # noqa: E402
from neuron_lib import artifacts, stats  # noqa: E402
from neuron_lib import attention_deactivation as AD  # noqa: E402
from neuron_lib import entropy_intervention as E  # noqa: E402
from neuron_lib import intervention as I  # noqa: E402
from neuron_lib.common import NeuronLibError, load_tensors, read_json  # noqa: E402
from neuron_lib.corpus import tokenizer_fingerprint  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from neuron_lib.models import load_model

    root = tmp_path_factory.mktemp("intervention")
    model_dir = build_tiny_model(root / "tinygpt")
    fp = tokenizer_fingerprint(AutoTokenizer.from_pretrained(model_dir))
    rows = make_rows(10, seed=3)[:6]
    ds = save_dataset(root / "data" / "interv.16", rows, ["x"] * len(rows), fp)
    hf = GPT2LMHeadModel.from_pretrained(model_dir).double().eval()
    bridge = load_model(str(model_dir), dtype=torch.float64)
    return dict(root=root, model_dir=model_dir, rows=rows, ds=ds, hf=hf, bridge=bridge)


@pytest.fixture(autouse=True)
def out_root(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERVENTION_DIR", str(tmp_path / "interv"))
    return tmp_path / "interv"


# ---------------------------------------------------------------- float64 references
def hf_logits(env, layer=None, dim=None, where="post", fn=None):
    """float64 logits of the plain HF model with ``fn`` applied to neuron ``dim`` of layer ``layer``."""
    hf = env["hf"]
    handles = []
    if fn is not None:
        mlp = hf.transformer.h[layer].mlp
        module = mlp.act if where == "post" else mlp.c_fc

        def hook(m, i, o):
            o = o.clone()
            o[..., dim] = fn(o[..., dim])
            return o

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            return hf(torch.tensor(env["rows"])).logits
    finally:
        for h in handles:
            h.remove()


def ref_metrics(logits, rows, base=None):
    tokens = torch.tensor(rows)
    B, P, V = logits.shape
    loss = torch.zeros(B, P, dtype=torch.float64)
    loss[:, :-1] = F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1), reduction="none").view(
        B, P - 1
    )
    p = torch.softmax(logits, -1)
    entropy = -(p * torch.log(p)).sum(-1)
    order = torch.argsort(logits, -1, descending=True)
    rank = torch.zeros(B, P, dtype=torch.int64)
    rank[:, :-1] = (order[:, :-1] == tokens[:, 1:, None]).float().argmax(-1)
    out = {"loss": loss, "entropy": entropy, "rank": rank}
    if base is not None:
        lp, lb = torch.log_softmax(logits, -1), torch.log_softmax(base, -1)
        out["kl"] = (lb.exp() * (lb - lp)).sum(-1)
    return out


ABLATIONS = [
    ("zero", None, lambda x: torch.zeros_like(x)),
    ("threshold", 0.1, lambda x: torch.clamp(x, max=0.1)),
    ("relu", None, lambda x: torch.relu(x)),
    ("fixed", 2.5, lambda x: torch.full_like(x, 2.5)),
    ("multiply", -1.5, lambda x: x * -1.5),
    ("mean", 0.37, lambda x: torch.full_like(x, 0.37)),
]


@pytest.mark.parametrize("where", ["post", "pre"])
@pytest.mark.parametrize("kind,value,fn", ABLATIONS, ids=[a[0] for a in ABLATIONS])
def test_each_ablation_matches_hand_forward(env, kind, value, fn, where):
    layer, dim = 0, 5
    ref = hf_logits(env, layer, dim, where, fn)
    base = hf_logits(env)
    assert (ref - base).abs().max() > 1e-6  # the ablation really moves the logits
    a = I.Ablation("x", I.neuron_hooks(env["bridge"], [(layer, dim)], where, kind, [value]), {})
    tokens = torch.tensor(env["rows"])
    logits, seen = I._forward(env["bridge"], tokens, a.hooks, [f"blocks.{layer}.mlp.hook_{where}"])
    assert torch.allclose(logits.double(), ref, atol=1e-4)
    # the hook really set what it claims
    assert torch.allclose(
        seen[f"blocks.{layer}.mlp.hook_{where}"][..., dim].double(), fn(_clean_act(env, layer, dim, where)), atol=1e-6
    )


def _clean_act(env, layer, dim, where):
    hf = env["hf"]
    got = {}
    mlp = hf.transformer.h[layer].mlp
    module = mlp.act if where == "post" else mlp.c_fc
    h = module.register_forward_hook(lambda m, i, o: got.__setitem__("x", o[..., dim].clone()))
    with torch.no_grad():
        hf(torch.tensor(env["rows"]))
    h.remove()
    return got["x"]


def test_metrics_against_float64_references():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 50, dtype=torch.float64) * 3
    other = logits + torch.randn_like(logits)
    rows = torch.randint(0, 50, (3, 7)).numpy()
    ref = ref_metrics(logits, rows, base=other)
    got = stats.token_metrics(logits, torch.tensor(rows))
    for k in ("loss", "entropy"):
        assert torch.allclose(got[k], ref[k], atol=1e-10)
    assert torch.equal(got["rank"].long(), ref["rank"])
    assert torch.allclose(stats.token_kl(other, logits), ref["kl"], atol=1e-10)
    assert torch.allclose(
        stats.reciprocal_rank(torch.tensor([0, 1, 3])), torch.tensor([1, 0.5, 0.25], dtype=torch.float64)
    )


def test_pearson_spearman_bootstrap():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    y[:10] = y[10]  # ties
    assert stats.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)

    # Spearman by hand: average ranks (ties share the mean of their positions)
    def avg_rank(v):
        r = np.empty(len(v))
        for i, val in enumerate(v):
            r[i] = (v < val).sum() + ((v == val).sum() + 1) / 2
        return r

    assert stats.spearman(x, y) == pytest.approx(np.corrcoef(avg_rank(x), avg_rank(y))[0, 1], abs=1e-12)
    idx = stats.bootstrap_index(200, 300, seed=1)
    lo, hi = stats.bootstrap_ci_index(x, idx)
    means = x[idx].mean(1)
    assert lo == pytest.approx(np.quantile(means, 0.025)) and hi == pytest.approx(np.quantile(means, 0.975))
    assert lo < x.mean() < hi


def cfg(env, **kw):
    base = dict(
        model=str(env["model_dir"]),
        token_dataset=str(env["ds"]),
        batch_size=2,
        device="cpu",
        dtype="float64",
        neurons="1.3,0.7",
        intervention="zero",
        max_tokens=None,
        n_bootstrap=50,
        checkpoint_every=1,
    )
    base.update(kw)
    return I.InterventionConfig(**base)


def test_stage_outputs_match_reference(env):
    res = I.run_intervention(cfg(env, controls_per_neuron=1, seed=4))
    folder = res.outputs["folder"]
    manifest = read_json(artifacts.manifest_path(folder))
    assert manifest["controls_seed"] == 4 and len(manifest["controls"]) == 2
    for (l, n), (cl, cn) in zip(manifest["selected"], manifest["controls"]):
        assert cl == l and (cl, cn) != (l, n)  # same layer, another neuron
    m = load_tensors(f"{folder}/{artifacts.INTERVENTION_METRICS_FILE}")
    nominal = load_tensors(f"{folder}/{artifacts.INTERVENTION_NOMINAL_FILE}")
    base = hf_logits(env)
    ref0 = ref_metrics(base, env["rows"])
    assert torch.allclose(nominal["loss"].double(), ref0["loss"], atol=1e-5)
    ref = ref_metrics(hf_logits(env, 1, 3, "post", torch.zeros_like), env["rows"], base=base)
    for k in ("loss", "entropy", "kl"):
        assert torch.allclose(m[f"L1.N3.{k}"].double(), ref[k], atol=1e-5), k
    assert torch.equal(m["L1.N3.rank"].long(), ref["rank"])
    # valid tokens: not the last position, not BOS
    valid = nominal["valid"]
    rows = torch.tensor(env["rows"])
    assert not valid[:, -1].any() and not valid[rows == BOS].any() and valid.sum() > 0
    table = pd.read_csv(f"{folder}/{artifacts.INTERVENTION_SUMMARY_FILE}")
    r = table[table["label"] == "L1.N3"].iloc[0]
    want = float((ref["loss"] - ref0["loss"])[valid].mean())
    assert r["delta_loss"] == pytest.approx(want, abs=1e-5)
    assert r["delta_loss_ci_low"] <= r["delta_loss_ci_high"]
    assert {"group:selected", "group:control", "group:selected-control"} <= set(table["label"])
    # re-running the same configuration is skipped
    assert I.run_intervention(cfg(env, controls_per_neuron=1, seed=4)).skipped


def test_mean_ablation_uses_summary_mean(env, monkeypatch):
    means = torch.full((2, 64), 0.25, dtype=torch.float64)
    monkeypatch.setattr(I, "summary_means", lambda model, location: means)
    res = I.run_intervention(cfg(env, intervention="mean", neurons="0.5", controls_per_neuron=0))
    m = load_tensors(f"{res.outputs['folder']}/{artifacts.INTERVENTION_METRICS_FILE}")
    ref = ref_metrics(hf_logits(env, 0, 5, "post", lambda x: torch.full_like(x, 0.25)), env["rows"])
    assert torch.allclose(m["L0.N5.loss"].double(), ref["loss"], atol=1e-5)


def test_summary_means_pool_subsets(monkeypatch):
    # two subsets with different shifts: the pooled mean is the mean of all values
    from neuron_lib import neuron_df

    rng = np.random.default_rng(0)
    xs = [torch.tensor(rng.normal(size=(2, 3, n))) for n in (5, 9)]
    parts = {}
    for i, (x, shift) in enumerate(zip(xs, (0.3, -1.0))):
        d = x - shift
        parts[f"s{i}"] = {
            "post_count": torch.tensor(x.shape[-1]),
            "post_sum": d.sum(-1),
            "post_sum_sq": (d**2).sum(-1),
            "post_sum_cube": (d**3).sum(-1),
            "post_sum_quad": (d**4).sum(-1),
            "post_shift": torch.full((2, 3), shift, dtype=torch.float64),
        }
    monkeypatch.setattr(neuron_df, "load_activation_summaries", lambda model, files=None: parts)
    got = I.summary_means("m", "post")
    assert torch.allclose(got, torch.cat(xs, -1).mean(-1), atol=1e-12)
    with pytest.raises(NeuronLibError, match="summary"):
        I.summary_means("m", "pre")


def test_kill_and_resume_identical(env, monkeypatch, tmp_path):
    whole = I.run_intervention(cfg(env, controls_per_neuron=1))
    ref = load_tensors(f"{whole.outputs['folder']}/{artifacts.INTERVENTION_METRICS_FILE}")
    ref_table = pd.read_csv(f"{whole.outputs['folder']}/{artifacts.INTERVENTION_SUMMARY_FILE}")
    monkeypatch.setenv("INTERVENTION_DIR", str(tmp_path / "other"))
    calls = {"n": 0}
    real = I._metrics  # once per pass: the clean one, then 4 ablations per batch

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] > 12:  # dies inside the third batch
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(I, "_metrics", dying)
    with pytest.raises(KeyboardInterrupt):
        I.run_intervention(cfg(env, controls_per_neuron=1))
    folder = artifacts.intervention_results(str(env["model_dir"]), "interv.16", "zero.post")
    assert (folder / artifacts.INTERVENTION_PARTIAL_FILE).exists()
    assert not artifacts.manifest_path(folder).exists()
    monkeypatch.setattr(I, "_metrics", real)
    seen = {"start": None}
    real_tokens = __import__("neuron_lib.streaming", fromlist=["tokens_tensor"]).tokens_tensor

    def spy(ds, start, end):
        seen["start"] = start if seen["start"] is None else seen["start"]
        return real_tokens(ds, start, end)

    monkeypatch.setattr("neuron_lib.streaming.tokens_tensor", spy)
    res = I.run_intervention(cfg(env, controls_per_neuron=1))
    assert seen["start"] == 4  # resumed after the two checkpointed batches
    got = load_tensors(f"{res.outputs['folder']}/{artifacts.INTERVENTION_METRICS_FILE}")
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    pd.testing.assert_frame_equal(
        pd.read_csv(f"{res.outputs['folder']}/{artifacts.INTERVENTION_SUMMARY_FILE}"), ref_table
    )
    assert not (folder / artifacts.INTERVENTION_PARTIAL_FILE).exists()


def test_top_k_selection_and_controls(tmp_path):
    df = pd.DataFrame(
        {
            "layer": [0, 0, 1, 1],
            "neuron": [0, 1, 0, 1],
            "excess_corr": [0.1, np.nan, 0.9, 0.5],
            "alignment_mean": [0.8, 0.7, 0.0, 0.1],
        }
    )
    assert I.top_neurons(df, "excess_corr", 2) == [(1, 0), (1, 1)]
    assert I.top_neurons(df, "alignment_mean", 1) == [(0, 0)]
    with pytest.raises(NeuronLibError, match="no column"):
        I.top_neurons(df, "nope", 1)
    ctl = I.same_layer_controls([(1, 0), (1, 1), (0, 3)], 8, 2, seed=0)
    assert ctl == I.same_layer_controls([(1, 0), (1, 1), (0, 3)], 8, 2, seed=0)
    assert [l for l, _ in ctl] == [1, 1, 1, 1, 0, 0] and len(set(ctl)) == 6
    assert not set(ctl) & {(1, 0), (1, 1), (0, 3)}


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(intervention="bogus"), "unknown intervention"),
        (dict(intervention="fixed"), "needs a parameter"),
        (dict(intervention="threshold"), "needs a parameter"),
        (dict(intervention="multiply"), "needs a parameter"),
        (dict(location="resid"), "location"),
        (dict(neurons="1.x"), "cannot read neuron"),
    ],
)
def test_bad_config_errors(env, kw, match):
    with pytest.raises(NeuronLibError, match=match):
        cfg(env, **kw).validate()


def test_bad_neuron_and_hook_error_before_work(env, monkeypatch):
    monkeypatch.setattr(I, "run_ablations", lambda *a, **k: pytest.fail("heavy work started"))
    with pytest.raises(NeuronLibError, match="do not exist"):
        I.run_intervention(cfg(env, neurons="2.0"))
    with pytest.raises(NeuronLibError, match="do not exist"):
        I.run_intervention(cfg(env, neurons="0.64"))

    class Fake:
        hook_dict = {}

        class cfg:  # noqa: N801
            model_name = "fake"

    with pytest.raises(NeuronLibError, match="no hook"):
        I.hook_name(Fake(), 0, "post")


# ---------------------------------------------------------------- entropy experiment
def test_null_space_share_planted():
    torch.manual_seed(0)
    D, V = 8, 40
    U, _ = torch.linalg.qr(torch.randn(D, D, dtype=torch.float64))
    S = torch.tensor([10, 9, 8, 7, 6, 5, 4, 0.01], dtype=torch.float64)
    W_U = U @ torch.diag(S) @ torch.linalg.qr(torch.randn(V, D, dtype=torch.float64))[0].T
    W_out = torch.randn(2, 5, D, dtype=torch.float64)
    W_out[1, 2] = 3.0 * U[:, -1]  # planted: entirely in the null direction, large norm
    sh = E.null_space_shares(W_out, W_U, null_fraction=0.125)
    assert sh["null_share"][1, 2] == pytest.approx(1.0, abs=1e-9)
    assert sh["null_norm"][1, 2] == pytest.approx(3.0, abs=1e-9)
    table = E.candidate_table(sh, last_layers=1)
    assert set(table["layer"]) == {1}
    assert E.pick_candidates(table, 1, 0.5) == [(1, 2)]
    # reference share for a random vector: ‖component on the last singular vector‖ / ‖w‖
    w = W_out[0, 1]
    assert sh["null_share"][0, 1] == pytest.approx(float(abs(w @ U[:, -1]) / w.norm()), abs=1e-9)


def test_baseline_rule_seeded():
    from helpers import synthetic_neuron_df

    df = synthetic_neuron_df(n_layers=4, d_mlp=48)
    a = E.sample_baseline_neurons(df, 10, seed=3, exclude=[(3, 0)])
    assert a == E.sample_baseline_neurons(df, 10, seed=3, exclude=[(3, 0)])
    assert a != E.sample_baseline_neurons(df, 10, seed=4, exclude=[(3, 0)])
    sel = df.set_index(["layer", "neuron"]).loc[a]
    assert (sel.index.get_level_values(0) >= 2).all() and (3, 0) not in a
    assert (sel["l2_penalty"] <= df["l2_penalty"].quantile(0.9)).all()
    assert (sel["vocab_var"] >= df["vocab_var"].quantile(0.1)).all()


def test_entropy_stage_records_scale(env, tmp_path):
    from neuron_lib.models import load_model
    from neuron_lib.weights import extract_weights, neuron_stats

    w = extract_weights(load_model(str(env["model_dir"]), process_weights=True))
    df = neuron_stats(w)
    df["vocab_var"] = (w.W_out.reshape(-1, w.W_out.shape[-1]) @ w.W_U).var(1).numpy()
    path = tmp_path / "ndf.csv"
    df.to_csv(path, index=False)
    ecfg = E.EntropyInterventionConfig(
        model=str(env["model_dir"]),
        token_dataset=str(env["ds"]),
        values="0,3",
        n_candidates=1,
        n_baselines=2,
        neuron_df=str(path),
        max_tokens=None,
        batch_size=3,
        device="cpu",
        dtype="float64",
        n_bootstrap=20,
    )
    res = E.run_entropy_intervention(ecfg)
    folder = res.outputs["folder"]
    cand = res.details["candidates"][0]
    m = load_tensors(f"{folder}/{artifacts.INTERVENTION_METRICS_FILE}")
    label = E.value_label(*cand, 3.0)
    # reference: the final LayerNorm's divisor in the HF model with the neuron fixed to 3
    hf = env["hf"]
    got = {}
    h1 = hf.transformer.h[cand[0]].mlp.act.register_forward_hook(
        lambda mod, i, o: o.index_fill(-1, torch.tensor([cand[1]]), 3.0)
    )
    h2 = hf.transformer.ln_f.register_forward_hook(lambda mod, i, o: got.__setitem__("x", i[0]))
    with torch.no_grad():
        logits = hf(torch.tensor(env["rows"])).logits
    h1.remove()
    h2.remove()
    x = got["x"]
    scale = ((x - x.mean(-1, keepdim=True)).pow(2).mean(-1) + hf.config.layer_norm_epsilon).sqrt()
    assert torch.allclose(m[f"{label}.scale"].double(), scale, atol=1e-5)
    ref = ref_metrics(logits, env["rows"])
    assert torch.allclose(m[f"{label}.entropy"].double(), ref["entropy"], atol=1e-5)
    table = pd.read_csv(f"{folder}/{artifacts.INTERVENTION_SUMMARY_FILE}")
    assert set(table["role"]) == {"nominal", "candidate", "baseline"}
    assert {"scale", "recip_rank", "entropy", "loss"} <= set(table.columns)


# ---------------------------------------------------------------- attention path ablation
def manual_path_ablation(env, pair, after_pos, freeze_kv=True):
    """z and BOS attention of head (A, h) by hand in float64 (HF weights): the query from the patched residual,
    keys and values from the clean one."""
    hf = env["hf"]
    A, h, Q, n = pair.attn_layer, pair.head, pair.neuron_layer, pair.neuron
    tokens = torch.tensor(env["rows"])
    got = {}
    hs = [
        hf.transformer.h[Q].mlp.act.register_forward_hook(lambda m, i, o: got.__setitem__("act", o[..., n].clone())),
        hf.transformer.h[A].register_forward_pre_hook(lambda m, i: got.__setitem__("resid", i[0].clone())),
    ]
    with torch.no_grad():
        hf(tokens)
    for x in hs:
        x.remove()
    blk = hf.transformer.h[A]
    w_out = hf.transformer.h[Q].mlp.c_proj.weight[n]  # [D]
    resid = got["resid"]
    patched = resid.clone()
    patched[:, after_pos:] -= got["act"][:, after_pos:, None] * w_out
    D = resid.shape[-1]
    H = hf.config.n_head
    dh = D // H

    def qkv(x):
        y = blk.attn.c_attn(blk.ln_1(x))
        q, k, v = y.split(D, -1)
        return [t.view(*t.shape[:2], H, dh)[:, :, h] for t in (q, k, v)]

    _, k, v = qkv(resid)
    _, k1, v1 = qkv(patched)

    def head(q, k=k, v=v):
        s = q @ k.transpose(-1, -2) / dh**0.5
        P = s.shape[-1]
        s = s.masked_fill(~torch.tril(torch.ones(P, P, dtype=torch.bool)), float("-inf"))
        p = torch.softmax(s, -1)
        return p @ v, p

    z0, p0 = head(qkv(resid)[0])
    z1, p1 = head(qkv(patched)[0]) if freeze_kv else head(qkv(patched)[0], k1, v1)
    n0, n1 = z0.norm(dim=-1)[:, after_pos:], z1.norm(dim=-1)[:, after_pos:]
    return {
        "activation": got["act"][:, after_pos:].reshape(-1),
        "norm_diff": (n1 - n0).reshape(-1),
        "bos_diff": (p1[:, after_pos:, 0] - p0[:, after_pos:, 0]).reshape(-1),
    }


def test_path_ablation_matches_manual_and_freezes_kv(env):
    """The stage's Δ‖z‖ and ΔP(BOS) equal a manual computation with the query from the patched residual and k, v
    from the clean one, and differ from the same computation with k, v recomputed (so k and v stay untouched)."""
    pair = AD.Pair(1, 1, 0, 9)
    after = 6
    model = env["bridge"]
    got = AD.path_ablation_batch(model, torch.tensor(env["rows"]), pair, model.W_out.detach()[0, 9], after)
    ref = manual_path_ablation(env, pair, after)
    for k in ("activation", "norm_diff", "bos_diff"):
        assert torch.allclose(got[k], ref[k], atol=1e-8), k
    assert ref["norm_diff"].abs().max() > 1e-6  # the ablation does something
    moved = manual_path_ablation(env, pair, after, freeze_kv=False)
    assert not torch.allclose(got["norm_diff"], moved["norm_diff"], atol=1e-6)


def test_heuristic_scores_by_hand():
    torch.manual_seed(1)
    L, H, D, dh, N = 3, 2, 6, 3, 4
    W_Q, W_out, k = torch.randn(L, H, D, dh), torch.randn(L, N, D), torch.randn(L, H, dh)
    s, r = AD.heuristic_scores(W_Q, W_out, k, seed=0)
    assert torch.isnan(s[0]).all() and torch.isnan(s[1, :, 1:]).all() and not torch.isnan(s[2, :, :2]).any()
    a, h, q, n = 2, 1, 0, 3
    w = W_out[q, n].double() / W_out[q, n].double().norm()
    want = float(w @ W_Q[a, h].double() @ k[a, h].double() / dh**0.5)
    assert float(s[a, h, q, n]) == pytest.approx(want, abs=1e-10)
    s2, r2 = AD.heuristic_scores(W_Q, 5 * W_out, k, seed=0)  # unit-normalised: scale-free
    assert torch.allclose(torch.nan_to_num(s2), torch.nan_to_num(s)) and torch.equal(
        torch.nan_to_num(r), torch.nan_to_num(r2)
    )
    table = AD.pair_table(s, r)
    assert len(table) == H * N * 3 and table["abs_score"].is_monotonic_decreasing


def test_attention_stage_and_errors(env, monkeypatch):
    base = dict(
        model=str(env["model_dir"]),
        token_dataset=str(env["ds"]),
        device="cpu",
        dtype="float64",
        batch_size=4,
        after_pos=6,
        max_tokens=None,
        top_k=2,
    )
    res = AD.run_attention_deactivation(AD.AttentionDeactivationConfig(**base))
    pairs = pd.read_csv(res.outputs[artifacts.ATTENTION_PAIRS_FILE])
    assert len(pairs) == 2 and {"pearson_norm_diff", "spearman_norm_diff", "pearson_bos_diff"} <= set(pairs.columns)
    rec = load_tensors(res.outputs[artifacts.ATTENTION_PATH_FILE])
    label = pairs["pair"].iloc[0]
    assert rec[f"{label}.activation"].numel() == 6 * (16 - 6)  # every batch, not only the last
    heur = pd.read_csv(res.outputs[artifacts.ATTENTION_TOP_PAIRS_FILE])
    assert (
        pairs["pair"].iloc[0]
        == AD.Pair(*heur.iloc[0][["attn_layer", "head", "neuron_layer", "neuron"]].astype(int)).label
    )
    monkeypatch.setattr(AD, "path_ablation_batch", lambda *a, **k: pytest.fail("heavy work started"))
    for pairs_arg, match in (
        ("1.2:0.3", "head 2 is out of range"),
        ("1.0:1.3", "must come before"),
        ("1.0:0.64", "out of range"),
        ("5.0:0.1", "does not exist"),
        ("1.0-0.1", "cannot read pair"),
    ):
        with pytest.raises(NeuronLibError, match=match):
            AD.run_attention_deactivation(
                AD.AttentionDeactivationConfig(**{**base, "pairs": pairs_arg, "overwrite": True})
            )


def test_notebooks_on_tiny_results(env, tmp_path):
    """entropy_neurons and bos_signal_neurons execute on the tiny model's results and save their figures."""
    import json

    from neuron_lib import notebooks as nb
    from neuron_lib.models import load_model
    from neuron_lib.weights import extract_weights, neuron_stats

    w = extract_weights(load_model(str(env["model_dir"]), process_weights=True))
    df = neuron_stats(w)
    df["vocab_var"] = (w.W_out.reshape(-1, w.W_out.shape[-1]) @ w.W_U).var(1).numpy()
    df.to_csv(tmp_path / "ndf.csv", index=False)
    common = dict(model=str(env["model_dir"]), token_dataset=str(env["ds"]), device="cpu", max_tokens=None)
    E.run_entropy_intervention(
        E.EntropyInterventionConfig(
            **common, values="0,3", n_candidates=1, n_baselines=2, neuron_df=str(tmp_path / "ndf.csv"), n_bootstrap=20
        )
    )
    AD.run_attention_deactivation(AD.AttentionDeactivationConfig(**common, top_k=1, after_pos=6))
    done, failed = nb.run_notebooks(str(env["model_dir"]), out=tmp_path / "figs", only=list(nb.NEEDS_INTERVENTION))
    assert not failed, failed
    for name, want in (
        ("entropy_neurons", {"entropy_neuron_weights", "entropy_neuron_intervention"}),
        ("bos_signal_neurons", {"bos_heuristic_hist", "path_ablation_pairs"}),
    ):
        saved = {f["name"] for f in json.loads((tmp_path / "figs" / name / "figures.json").read_text())["figures"]}
        assert want <= saved, (name, saved)


def test_entropy_curves_draw_each_neuron_with_its_own_legend_label():
    """The summary as read back from CSV (layer / neuron float: the nominal row has none): one line per candidate,
    labelled L{layer}.N{neuron}, the baselines unlabelled grey, the nominal dashed; the data is what was drawn."""
    from neuron_lib import intervention_figures as IF

    rows = [
        dict(
            role="nominal", layer=np.nan, neuron=np.nan, value=np.nan, scale=1.0, recip_rank=0.5, entropy=3.0, loss=3.1
        )
    ]
    for role, l, n, slope in (("candidate", 1, 5, -0.1), ("baseline", 0, 7, 0.0)):
        for v in (0.0, 1.0, 2.0):
            rows.append(
                dict(
                    role=role,
                    layer=float(l),
                    neuron=float(n),
                    value=v,
                    scale=1.0,
                    recip_rank=0.5,
                    entropy=3.0 + slope * v,
                    loss=3.1,
                )
            )
    res = IF.entropy_curves(pd.DataFrame(rows))
    labels = [t.get_text() for t in res.fig.axes[0].get_legend().get_texts()]
    assert labels == ["L1.N5 (candidate)", "nominal"]
    ent = res.data[res.data["role"] == "candidate"].sort_values("value")["entropy"].tolist()
    assert ent == pytest.approx([3.0, 2.9, 2.8]) and len(res.data) == 6
