"""Model access: name resolution, offline failures, hook contract, weight processing, streaming."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from neuron_lib.common import NeuronLibError
from neuron_lib.models import HUB_ALIASES, load_model, load_tokenizer, resolve_model
from neuron_lib.streaming import TokenFilter, iter_mlp_activations, select_rows


def test_unknown_name_lists_known_names():
    with pytest.raises(NeuronLibError) as err:
        resolve_model("no-such-model-xyz")
    assert "stanford-gpt2-small-a" in str(err.value) and "local folder" in str(err.value)


def test_paper_aliases_map_to_hub_ids():
    assert resolve_model("stanford-gpt2-small-c").location == "stanford-crfm/caprica-gpt2-small-x81"
    assert resolve_model("stanford-gpt2-medium-e").location == "stanford-crfm/eowyn-gpt2-medium-x777"
    assert resolve_model("pythia-160m-seed2").location == "EleutherAI/pythia-160m-seed2"
    assert len([k for k in HUB_ALIASES if k.startswith("stanford-gpt2")]) == 10


def test_hub_name_offline_fails_fast_with_local_path_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(NeuronLibError) as err:
        load_model("stanford-gpt2-small-a")
    assert time.time() - t0 < 10
    assert "local" in str(err.value) and "stanford-crfm/alias-gpt2-small-x21" in str(err.value)


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NeuronLibError, match="not a model folder"):
        load_model(str(tmp_path))


def test_corrupt_model_folder(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(NeuronLibError, match="could not load model"):
        load_model(str(tmp_path))


def test_zoo_name_and_folder_load_the_same_weights(micro_env):
    by_name = load_model(micro_env.model_names[0])
    by_path = load_model(str(micro_env.model_dirs[0]))
    assert by_name.cfg.n_layers == 2 and by_name.cfg.d_mlp == 64
    assert resolve_model(str(micro_env.model_dirs[0])).name == micro_env.model_names[0]  # folder name, not full path
    for (k1, v1), (k2, v2) in zip(by_name.state_dict().items(), by_path.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def _hf_mlp_activations(model_dir, tokens):
    """Independent reference: plain HF GPT-2 forward with hooks on the MLP's c_fc (pre) and act (post), float64."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(model_dir).double().eval()
    pre, post = [], []
    hooks = []
    for block in hf.transformer.h:
        hooks.append(block.mlp.c_fc.register_forward_hook(lambda m, i, o: pre.append(o)))
        hooks.append(block.mlp.act.register_forward_hook(lambda m, i, o: post.append(o)))
    with torch.no_grad():
        hf(tokens)
    for h in hooks:
        h.remove()
    return torch.stack(pre), torch.stack(post)  # [L, B, P, N]


def test_weight_processing_keeps_activations(micro_env):
    tokens = torch.randint(0, 300, (3, 16))
    raw = load_model(micro_env.model_names[0])
    processed = load_model(micro_env.model_names[0], process_weights=True)
    for name in ("blocks.0.mlp.hook_pre", "blocks.1.mlp.hook_post"):
        _, c1 = raw.run_with_cache(tokens, names_filter=[name])
        _, c2 = processed.run_with_cache(tokens, names_filter=[name])
        torch.testing.assert_close(c1[name], c2[name], atol=1e-4, rtol=1e-4)


def test_streaming_matches_hf_reference_and_filters_tokens(micro_env):
    from neuron_lib.corpus import load_token_dataset

    ds, _ = load_token_dataset(micro_env.analysis_dataset)
    model = load_model(micro_env.model_names[1])
    tokenizer = load_tokenizer(micro_env.model_names[1])
    drop = TokenFilter().drop_ids(tokenizer)
    assert tokenizer.bos_token_id in drop
    newline = tokenizer.encode("\n", add_special_tokens=False)
    if len(newline) == 1:
        assert newline[0] in drop
    batches = list(iter_mlp_activations(model, ds, batch_size=3, drop_ids=drop, want_pre=True, end_row=5))
    tokens = ds[0:5]["tokens"]
    ref_pre, ref_post = _hf_mlp_activations(micro_env.model_dirs[1], tokens)
    keep = ~torch.isin(tokens, torch.tensor(drop))
    assert not keep[:, 0].any(), "BOS at position 0 must be dropped"
    got_post = torch.cat([b.post for b in batches], dim=2)  # [L, N, T]
    got_pre = torch.cat([b.pre for b in batches], dim=2)
    want_post = ref_post[:, keep].transpose(1, 2)
    want_pre = ref_pre[:, keep].transpose(1, 2)
    assert got_post.shape == want_post.shape == (2, 64, int(keep.sum()))
    np.testing.assert_allclose(got_post.double().numpy(), want_post.numpy(), atol=1e-4)
    np.testing.assert_allclose(got_pre.double().numpy(), want_pre.numpy(), atol=1e-4)
    flat = torch.cat([b.flat_index for b in batches])
    assert torch.equal(flat, (torch.arange(5)[:, None] * tokens.shape[1] + torch.arange(tokens.shape[1]))[keep])
    assert torch.equal(torch.cat([b.token_ids for b in batches]), tokens[keep])


def test_select_rows():
    assert select_rows(10, 20).tolist() == list(range(10))
    assert select_rows(100, 5, "first").tolist() == [0, 1, 2, 3, 4]
    spread = select_rows(100, 5)
    assert spread.tolist() == [0, 25, 50, 74, 99] and len(np.unique(select_rows(7, 6))) == 6
    with pytest.raises(NeuronLibError, match="--rows takes"):
        select_rows(10, 5, "last")
