"""Vocabulary feature table (spec §7.2) and unigram features (§7.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuron_lib import artifacts
from neuron_lib import vocab_features as vf
from neuron_lib.common import NeuronLibError, atomic_write_json, read_json


def test_families_have_the_spec_columns():
    assert len(vf.FAMILIES["type"]) == 6
    assert len(vf.FAMILIES["symbol"]) == 25
    assert len(vf.FAMILIES["pronoun"]) == 19
    assert len(vf.FAMILIES["suffix"]) == 49
    assert len(vf.FAMILIES["starts"]) == 11
    assert len(vf.FAMILIES["word_group"]) == 8
    assert len(vf.PREFIXES_MORPHEMES) == 56 and len(set(vf.PREFIXES_MORPHEMES)) == 54
    assert len(vf.FAMILIES["prefix"]) == 54 + 26 - len(set(vf.PREFIXES_MORPHEMES) & set("abcdefghijklmnopqrstuvwxyz"))
    every = [c for cols in vf.FAMILIES.values() for c in cols]
    assert len(every) == len(set(every)) == len(vf.FEATURE_COLUMNS)
    for name in (
        "contains_double_dollar",
        "is_year",
        "is_neutral_pronoun",
        "is_second_person_pronoun",
        "end_w_ing",
        "all_caps",
        "contains_open_paren",
        "starts_w_space",
        "start_w_un",
        "start_w_q",
        "is_contrastive_conjuction",
    ):
        assert name in vf.FEATURE_COLUMNS


@pytest.mark.parametrize(
    "token,true,false",
    [
        (
            " the",
            ["starts_w_space", "start_w_space_and_letter", "all_lower", "all_alpha", "start_w_t"],
            ["start_w_no_space", "all_caps"],
        ),
        (
            "1999",
            ["is_year", "all_digits", "is_four_digit", "integral_value", "start_w_no_space_and_digit"],
            ["is_lt_31", "is_two_digit"],
        ),
        ("17", ["is_lt_31", "is_two_digit"], ["is_year"]),
        (
            " He",
            ["is_male_pronoun", "is_third_person_pronoun", "is_subject_pronoun", "starts_w_cap"],
            ["is_female_pronoun", "starts_w_no_space_and_cap"],
        ),
        ("ness", ["start_w_no_space_and_letter", "starts_w_no_space_and_lower", "start_w_n"], ["end_w_ness"]),
        (" happiness", ["end_w_ness", "end_w_s"], ["end_w_ing"]),
        ("NASA", ["all_caps", "starts_w_no_space_and_cap"], ["all_lower"]),
        ("$$", ["contains_double_dollar", "contains_dollar", "contains_currency", "all_symbolic"], ["contains_digit"]),
        ("(", ["contains_open_paren", "contains_opening_punc"], ["contains_close_paren"]),
        ("   ", ["all_white_space", "starts_w_space"], ["all_symbolic"]),
        (" January", ["is_month"], ["is_day_of_week"]),
        (" however", ["is_contrastive_conjuction"], []),
    ],
)
def test_token_features(token, true, false):
    f = vf._bool_features(token)
    assert all(f[c] for c in true), {c: f[c] for c in true}
    assert not any(f[c] for c in false), {c: f[c] for c in false}


def test_unigram_rule_and_threshold():
    strings = [" on", "On", "on", " On", " the", "the", "The", " The", " rare", "rare", "Rare", " RARE", " x"]
    counts = np.array([400, 50, 30, 20, 900, 5, 5, 5, 1, 1, 1, 1, 5000])
    uni = vf.unigram_features(strings, counts, count_threshold=100)
    assert sorted(uni.columns) == ["on_unigram", "the_unigram"]  # rare: too few; x: one variant
    assert uni["on_unigram"].tolist()[:4] == [True] * 4 and not uni["on_unigram"].iloc[4]
    # partial-UTF-8 byte tokens all decode to U+FFFD: never one "word", however often and however many
    bytes_only = vf.unigram_features(["\ufffd", " \ufffd", "\ufffd", "\ufffd", " on"], np.full(5, 1000), 10)
    assert list(bytes_only.columns) == []
    assert vf.unigram_count_threshold(10_000_000) == 3000
    assert vf.unigram_count_threshold(1_000_000) == 300
    assert vf.unigram_count_threshold(10) == 1


def test_vocab_df_with_norms_and_fingerprint(micro_env):
    from neuron_lib.models import load_model, load_tokenizer

    name = micro_env.model_names[0]
    tok = load_tokenizer(name)
    model = load_model(name)
    df, manifest, status = vf.ensure_vocab_df(
        vf.VocabFeaturesConfig(model=name, name="micro-vocab-test"), tokenizer=tok, model=model
    )
    assert status == "done" and len(df) == len(tok)
    ref_e = model.W_E.detach().double().norm(dim=-1).numpy()
    ref_u = model.W_U.detach().double().norm(dim=0).numpy()
    np.testing.assert_allclose(df["embed_norm"].to_numpy(), ref_e[: len(df)], rtol=1e-5)
    np.testing.assert_allclose(df["unembed_norm"].to_numpy(), ref_u[: len(df)], rtol=1e-5)
    assert (df["small_norm"] == (df["embed_norm"] < 0.52)).all()
    assert set(vf.FEATURE_COLUMNS) <= set(df.columns)
    path = artifacts.vocab_df_file(manifest["tokenizer_name"])
    assert path.exists() and path.with_suffix(".csv").exists()
    # reused the second time
    assert (
        vf.ensure_vocab_df(vf.VocabFeaturesConfig(model=name, name="micro-vocab-test"), tokenizer=tok, model=model)[2]
        == "skipped"
    )
    # a table made for another tokenizer is refused
    man_path = artifacts.table_manifest(path)
    m = read_json(man_path)
    atomic_write_json(man_path, {**m, "tokenizer_fingerprint": "another"})
    with pytest.raises(NeuronLibError, match="another tokenizer"):
        vf.load_vocab_df(tok, manifest["tokenizer_name"])
    with pytest.raises(NeuronLibError, match="another tokenizer"):
        vf.ensure_vocab_df(vf.VocabFeaturesConfig(model=name, name="micro-vocab-test"), tokenizer=tok, model=model)
    atomic_write_json(man_path, m)
    assert torch.isfinite(torch.as_tensor(df["embed_norm"].to_numpy())).all()


def test_tokenizer_names():
    assert vf.tokenizer_name("zoo-gpt2-a") == "zoo"
    assert vf.tokenizer_name("stanford-gpt2-small-a") == "gpt2"
    assert vf.tokenizer_name("EleutherAI/pythia-160m") == "pythia"
    assert vf.tokenizer_name("HuggingFaceTB/SmolLM2-135M") == "smollm2"
