"""``python -m neuron_lib.trace`` on a tiny GPT-2, checked against ``run_with_cache``."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import build_tiny_model

TEXT = "The quick brown fox"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from neuron_lib.models import load_model, load_tokenizer

    folder = build_tiny_model(tmp_path_factory.mktemp("trace_model") / "tiny-trace")
    return str(folder), load_model(str(folder)), load_tokenizer(str(folder))


def cached_active(model, ids, threshold):
    names = [f"blocks.{l}.mlp.hook_post" for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([ids]), names_filter=names)
    post = torch.stack([cache[n][0] for n in names], 1)  # [pos, L, d_mlp]
    d_mlp = model.cfg.d_mlp
    return [
        sorted(int(l) * d_mlp + int(d) for l, d in torch.nonzero(post[p] > threshold).tolist()) for p in range(len(ids))
    ]


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_trace_matches_run_with_cache(tiny, threshold):
    from neuron_lib import generation, trace

    _, model, tok = tiny
    ids = generation.encode_prompt(tok, TEXT)
    want = cached_active(model, ids, threshold)
    last = trace.trace_text(model, tok, TEXT, threshold)
    assert [r["position"] for r in last["positions"]] == [len(ids) - 1]
    assert last["positions"][0]["active"] == want[-1]
    every = trace.trace_text(model, tok, TEXT, threshold, all_positions=True)
    assert [r["active"] for r in every["positions"]] == want
    assert every["token_ids"] == ids and ids[0] == tok.bos_token_id
    for r in every["positions"]:
        assert sum(r["n_active_per_layer"]) == r["n_active"] == len(r["active"])
    assert any(r["active"] for r in every["positions"])  # the tiny model fires somewhere
    no_bos = trace.trace_text(model, tok, TEXT, threshold, prepend_bos=False)
    assert no_bos["token_ids"] == ids[1:]


def test_trace_cli_prints_and_writes(tiny, tmp_path, capsys):
    from neuron_lib import artifacts, generation, trace
    from neuron_lib.common import read_manifest

    folder, model, tok = tiny
    out = tmp_path / "traced"
    trace.main(["--model", folder, "--text", TEXT, "--all-positions", "--out", str(out), "--device", "cpu"])
    printed = [line for line in capsys.readouterr().out.splitlines() if "\t" in line]
    want = cached_active(model, generation.encode_prompt(tok, TEXT), 0.0)
    assert [line.split("\t")[2] for line in printed] == [" ".join(map(str, w)) for w in want]
    record = json.loads((out / artifacts.TRACE_JSON_FILE).read_text())
    assert [r["active"] for r in record["positions"]] == want
    lines = (out / artifacts.TRACE_IDS_FILE).read_text().splitlines()
    assert lines == [" ".join(map(str, w)) for w in want]
    manifest = read_manifest(out)
    assert manifest["stage"] == "trace" and manifest["activation_threshold"] == 0.0

    trace.main(["--model", folder, "--text", TEXT, "--device", "cpu"])  # last position only, nothing written
    printed = [line for line in capsys.readouterr().out.splitlines() if "\t" in line]
    assert len(printed) == 1 and printed[0].split("\t")[2] == " ".join(map(str, want[-1]))


def test_trace_empty_text_is_an_error(tiny):
    from neuron_lib import trace
    from neuron_lib.common import NeuronLibError

    with pytest.raises(NeuronLibError, match="empty"):
        trace.run_trace(trace.TraceConfig(model=tiny[0], text="", device="cpu"))
