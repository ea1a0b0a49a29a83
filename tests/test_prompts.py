"""Prompt sets, our generation loop and the prompts stage (tiny GPT-2 from helpers.build_tiny_model)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from neuron_lib.models import load_model, load_tokenizer

    folder = build_tiny_model(tmp_path_factory.mktemp("prompts_model") / "tiny-gen")
    return str(folder), load_model(str(folder)), load_tokenizer(str(folder))


def write_csv(path, text):
    path.write_text(text)
    return path


# ---------------------------------------------------------------- prompt CSVs
def test_read_prompts_ok(tmp_path):
    from neuron_lib.generation import read_prompts

    p = write_csv(tmp_path / "p.csv", 'prompts,number_of_new_tokens,num_samples\n"I think love is ",20,5\nhello,3,1\n')
    prompts = read_prompts(p)
    assert [(q.text, q.n_new, q.n_samples) for q in prompts] == [("I think love is ", 20, 5), ("hello", 3, 1)]


@pytest.mark.parametrize(
    "body, needle",
    [
        ("prompts,number_of_new_tokens\na,3\n", "num_samples"),
        ("prompts,number_of_new_tokens,num_samples\na,3,1\nb,x,1\n", "row 2"),
        ("prompts,number_of_new_tokens,num_samples\na,3,1\nb,2,1\nc,2,-1\n", "row 3"),
        ("prompts,number_of_new_tokens,num_samples\na,2.5,1\n", "row 1"),
        ("prompts,number_of_new_tokens,num_samples\na,,1\n", "row 1"),
    ],
)
def test_bad_prompt_csv_names_the_row(tmp_path, body, needle):
    from neuron_lib.common import NeuronLibError
    from neuron_lib.generation import read_prompts

    with pytest.raises(NeuronLibError, match=needle):
        read_prompts(write_csv(tmp_path / "bad.csv", body))


# ---------------------------------------------------------------- generation
def test_greedy_is_reproducible_and_is_argmax(tiny):
    from neuron_lib import generation as G

    _, model, tok = tiny
    ids = G.encode_prompt(tok, "the quick ")
    assert ids[0] == tok.bos_token_id
    a = G.generate(model, ids, 6, 3, temperature=0)
    b = G.generate(model, ids, 6, 3, temperature=0)
    assert torch.equal(a.tokens, b.tokens)
    assert (a.tokens == a.tokens[0]).all()  # greedy: every sample the same
    seq = torch.tensor([ids])  # argmax step by step, by hand
    with torch.no_grad():
        for t in range(6):
            nxt = model(seq)[0, -1].argmax()
            assert int(nxt) == int(a.tokens[0, t])
            seq = torch.cat([seq, nxt.view(1, 1)], 1)


def test_sampling_reproducible_with_seed_different_otherwise(tiny):
    from neuron_lib import generation as G

    _, model, tok = tiny
    ids = G.encode_prompt(tok, "hello world")
    kw = dict(temperature=1.0, top_k=0)
    a = G.generate(model, ids, 8, 4, generator=G.prompt_generator(7, 0), **kw)
    b = G.generate(model, ids, 8, 4, generator=G.prompt_generator(7, 0), **kw)
    c = G.generate(model, ids, 8, 4, generator=G.prompt_generator(8, 0), **kw)
    d = G.generate(model, ids, 8, 4, generator=G.prompt_generator(7, 1), **kw)
    e = G.generate(model, ids, 8, 4, generator=None, **kw)  # global RNG
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.tokens, c.tokens) and not torch.equal(a.tokens, d.tokens)
    assert not torch.equal(a.tokens, e.tokens)


def test_top_k_one_is_greedy(tiny):
    from neuron_lib import generation as G

    _, model, tok = tiny
    ids = G.encode_prompt(tok, "the lazy")
    g = G.generate(model, ids, 5, 2, temperature=0)
    k1 = G.generate(model, ids, 5, 2, temperature=1.5, top_k=1, generator=G.prompt_generator(0, 0))
    assert torch.equal(g.tokens, k1.tokens)


def test_recorded_activity_matches_a_cache(tiny):
    from neuron_lib import generation as G

    _, model, tok = tiny
    ids = G.encode_prompt(tok, "the quick brown")
    g = G.generate(model, ids, 4, 2, temperature=1.0, generator=G.prompt_generator(1, 0), record_threshold=0.0)
    for s in range(2):
        seq = torch.tensor([ids + g.tokens[s].tolist()])
        names = [f"blocks.{l}.mlp.hook_post" for l in range(model.cfg.n_layers)]
        with torch.no_grad():
            _, cache = model.run_with_cache(seq, names_filter=names)
        for t in range(4):
            pos = len(ids) - 1 + t
            want = torch.stack([cache[n][0, pos] > 0 for n in names])
            assert torch.equal(g.active[t, s], want)


def test_hooks_removed_after_an_error(tiny):
    from neuron_lib import generation as G

    _, model, tok = tiny
    ids = G.encode_prompt(tok, "hello")

    def boom(act, hook=None):
        raise RuntimeError("hook failure")

    assert G.attached_hook_count(model) == 0
    with pytest.raises(RuntimeError, match="hook failure"):
        G.generate(model, ids, 3, 1, temperature=0, record_threshold=0.0, fwd_hooks=[("blocks.1.mlp.hook_post", boom)])
    assert G.attached_hook_count(model) == 0


def test_context_overflow_is_an_error(tiny):
    from neuron_lib import generation as G
    from neuron_lib.common import NeuronLibError

    _, model, tok = tiny
    with pytest.raises(NeuronLibError, match="context"):
        G.generate(model, G.encode_prompt(tok, "hello"), model.cfg.n_ctx, 1, temperature=0)


# ---------------------------------------------------------------- the stage
def test_prompts_stage_outputs(tiny, tmp_path, monkeypatch):
    import scipy.sparse as sp

    from neuron_lib import artifacts
    from neuron_lib.common import ManifestMismatch
    from neuron_lib.prompts import PromptsConfig, load_prompt_run, run_prompts

    monkeypatch.setenv("GRAPHS_DIR", str(tmp_path / "graphs"))
    folder_model, model, tok = tiny
    csv = write_csv(tmp_path / "set.csv", 'prompts,number_of_new_tokens,num_samples\n"the quick ",4,3\nhello,2,2\n')
    cfg = PromptsConfig(model=folder_model, prompts_csv=str(csv), seed=3, device="cpu")
    res = run_prompts(cfg)
    assert res.status == "done" and res.n_tokens == 4 * 3 + 2 * 2
    folder = artifacts.prompt_activations(folder_model, "set")
    tokens = pd.read_parquet(folder / "tokens.parquet")
    L = model.cfg.n_layers
    assert list(tokens.columns) == [
        "sample_id",
        "prompt_idx",
        "prompt_sample_idx",
        "token_position",
        "input_text",
        "input_token",
        "input_id",
        "output",
        "output_id",
        "number_of_active_neurons",
        *[f"layer_{l}_num_active_neurons" for l in range(L)],
    ]
    assert len(tokens) == 16 and tokens.sample_id.nunique() == 5
    later = tokens[tokens.token_position > 0]  # the input's last token is the previous row's output
    assert (later.input_id.to_numpy() == tokens.output_id.to_numpy()[later.index - 1]).all()
    assert (tokens[[f"layer_{l}_num_active_neurons" for l in range(L)]].sum(1) == tokens.number_of_active_neurons).all()
    pd.testing.assert_frame_equal(pd.read_csv(folder / "tokens.csv", keep_default_na=False), tokens, check_dtype=False)

    active = json.loads((folder / "active_neurons.json").read_text())
    matrix = sp.load_npz(folder / "activation_matrix.npz")
    neurons = pd.read_csv(folder / "neurons.csv")
    assert matrix.shape == (5, len(neurons))
    for sid, ids in active.items():
        assert neurons.id.to_numpy()[matrix[int(sid)].indices].tolist() == ids
    token_matrix = sp.load_npz(folder / "token_activation_matrix.npz").tocsr()
    assert token_matrix.shape == (16, len(neurons))
    assert (np.asarray(token_matrix.sum(1)).ravel() == tokens.number_of_active_neurons.to_numpy()).all()
    for sid in range(5):  # a sample's row is the union of its tokens' rows
        rows = token_matrix[tokens.index[tokens.sample_id == sid].to_numpy()]
        union = np.flatnonzero(np.asarray(rows.sum(0)).ravel() > 0)
        assert union.tolist() == sorted(matrix[sid].indices.tolist())
    assert (neurons.id == neurons.layer * model.cfg.d_mlp + neurons.dimension).all()
    freq = pd.read_csv(folder / "neuron_frequency.csv").set_index("id")
    assert (freq.loc[neurons.id, "count"].to_numpy() == np.asarray(matrix.sum(0)).ravel()).all()
    assert np.allclose(freq["frequency"], freq["count"] / 5)

    # per-sample activity = union of the per-token activity (recompute sample 0 by hand)
    from neuron_lib import generation as G

    g = G.generate(
        model,
        G.encode_prompt(tok, "the quick "),
        4,
        3,
        temperature=1.0,
        generator=G.prompt_generator(3, 0),
        record_threshold=0.0,
    )
    assert torch.nonzero(g.active[:, 0].any(0).reshape(-1)).ravel().tolist() == active["0"]

    assert run_prompts(cfg).status == "skipped"
    with pytest.raises(ManifestMismatch):
        run_prompts(PromptsConfig(model=folder_model, prompts_csv=str(csv), seed=4, device="cpu"))
    run = load_prompt_run(folder_model, "set", expect_threshold=0.0)
    assert run["matrix"].shape == (5, len(neurons))
    with pytest.raises(ManifestMismatch, match="threshold"):
        load_prompt_run(folder_model, "set", expect_threshold=0.5)


def test_prompts_cli_bad_csv(tiny, tmp_path, monkeypatch, capsys):
    from neuron_lib import prompts
    from neuron_lib.common import run_cli

    monkeypatch.setenv("GRAPHS_DIR", str(tmp_path / "graphs"))
    csv = write_csv(tmp_path / "bad.csv", "prompts,number_of_new_tokens,num_samples\na,1,1\nb,1,zero\n")
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: prompts.main(["--model", tiny[0], "--prompts-csv", str(csv)]))
    assert exc.value.code == 2 and "row 2" in capsys.readouterr().err
