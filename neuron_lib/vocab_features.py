"""Vocabulary feature table of a tokenizer (spec §7.2) and unigram features of a token dataset (spec §7.3).

``python -m neuron_lib.vocab_features --model M`` writes ``$DATAFRAMES_DIR/vocab_dfs/{tokenizer}.csv`` (+ parquet,
+ ``{tokenizer}.manifest.json``; ``artifacts.vocab_df_file``): one row per token id with

* ``token_id``, ``token_string`` (the decoded token; empty strings kept as they are);
* the boolean families of §7.2 under the spec's column names: type (``all_white_space`` ... ``all_symbolic``),
  symbol (``contains_{period..double_dollar}``), numeric (``contains_digit`` ... ``is_lt_31``), pronoun
  (``is_{male,...,nonreflexive}_pronoun``), starts (``starts_w_vowel`` ... ``starts_w_no_space_and_lower``),
  suffix (``end_w_{s}``), prefix (``start_w_{p}`` for the morphemes and the letters a–z), word groups
  (``is_month`` ... ``is_contrastive_conjuction`` (sic, the spec's name));
* ``embed_norm``, ``unembed_norm``, ``small_norm`` (embed_norm < 0.52, the paper's threshold; recorded) when a
  model is given.

Unlike the original, all-False columns are kept (a consumer can rely on every spec column existing); the
manifest lists them in ``empty_columns``. The manifest records the tokenizer fingerprint
(``corpus.tokenizer_fingerprint``): :func:`load_vocab_df` refuses a table made for another tokenizer.

Unigram features (:func:`unigram_features`): a normalised (lower-cased, stripped) string is a feature
``{normalised}_unigram`` iff it occurs more than ``count_threshold`` times in the dataset and has more than
``min_variants`` raw token variants. The paper used 3000 occurrences in 10M tokens; :func:`unigram_count_threshold`
scales that rate (3e-4) to the dataset's size, and the threshold used is returned to be recorded.
"""

from __future__ import annotations

import dataclasses
import re
import string
import time
from typing import Any

import numpy as np
import pandas as pd

from neuron_lib import artifacts, stage
from neuron_lib.common import (
    REQUIRED,
    NeuronLibError,
    atomic_write_json,
    config_field,
    config_fingerprint,
    make_manifest,
    read_json,
    save_dataframe_atomic,
)

STAGE = "vocab_features"
SMALL_NORM_THRESHOLD = 0.52  # spec §7.2: small_norm = embed_norm < 0.52
PAPER_UNIGRAM_COUNT = 3000  # spec §7.3: > 3000 occurrences ...
PAPER_UNIGRAM_TOKENS = 10_000_000  # ... in 10M tokens
PAPER_UNIGRAM_VARIANTS = 3  # > 3 raw variants

# ---------------------------------------------------------------- the families of §7.2
SYMBOLS: dict[str, str] = {
    "period": ".",
    "comma": ",",
    "exclamation": "!",
    "question": "?",
    "semicolon": ";",
    "colon": ":",
    "dash": "-",
    "slash": "/",
    "backslash": "\\",
    "underscore": "_",
    "carrot": "^",
    "apostrophe": "'",
    "quotation": '"',
    "close_paren": ")",
    "open_paren": "(",
    "close_bracket": "]",
    "open_bracket": "[",
    "close_brace": "}",
    "open_brace": "{",
}
CLOSING_PUNC = set(")]}>\"'")
OPENING_PUNC = set("([{<\"'")
MATH_SYMBOLS = set("+-*/=<>^%±×÷∑∫√∞≤≥≠≈")
CURRENCY = set("$€£¥₹¢₽₩")

NUMBER_WORDS = set(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million "
    "billion trillion".split()
)

# pronoun -> properties (spec §7.2 pronoun family, 19 properties)
_P = {
    "i": "first singular subject personal nonreflexive",
    "me": "first singular object personal nonreflexive",
    "my": "first singular possessive personal nonreflexive",
    "mine": "first singular possessive personal nonreflexive",
    "myself": "first singular reflexive intensive personal",
    "we": "first plural subject personal nonreflexive",
    "us": "first plural object personal nonreflexive",
    "our": "first plural possessive personal nonreflexive",
    "ours": "first plural possessive personal nonreflexive",
    "ourselves": "first plural reflexive intensive personal",
    "you": "second singular plural subject object personal nonreflexive",
    "your": "second singular plural possessive personal nonreflexive",
    "yours": "second singular plural possessive personal nonreflexive",
    "yourself": "second singular reflexive intensive personal",
    "yourselves": "second plural reflexive intensive personal",
    "he": "third male singular subject personal nonreflexive",
    "him": "third male singular object personal nonreflexive",
    "his": "third male singular possessive personal nonreflexive",
    "himself": "third male singular reflexive intensive personal",
    "she": "third female singular subject personal nonreflexive",
    "her": "third female singular object possessive personal nonreflexive",
    "hers": "third female singular possessive personal nonreflexive",
    "herself": "third female singular reflexive intensive personal",
    "it": "third neutral singular subject object personal nonreflexive",
    "its": "third neutral singular possessive personal nonreflexive",
    "itself": "third neutral singular reflexive intensive personal",
    "they": "third neutral plural subject personal nonreflexive",
    "them": "third neutral plural object personal nonreflexive",
    "their": "third neutral plural possessive personal nonreflexive",
    "theirs": "third neutral plural possessive personal nonreflexive",
    "themselves": "third neutral plural reflexive intensive personal",
    "this": "demonstrative singular",
    "that": "demonstrative relative singular",
    "these": "demonstrative plural",
    "those": "demonstrative plural",
    "who": "interrogative relative subject",
    "whom": "interrogative relative object",
    "whose": "interrogative relative possessive",
    "which": "interrogative relative",
    "what": "interrogative",
    "someone": "indefinite singular",
    "somebody": "indefinite singular",
    "something": "indefinite singular",
    "anyone": "indefinite singular",
    "anybody": "indefinite singular",
    "anything": "indefinite singular",
    "everyone": "indefinite singular",
    "everybody": "indefinite singular",
    "everything": "indefinite singular",
    "nobody": "indefinite singular",
    "nothing": "indefinite singular",
    "none": "indefinite",
    "each": "indefinite singular",
    "few": "indefinite plural",
    "many": "indefinite plural",
    "several": "indefinite plural",
    "all": "indefinite plural",
    "some": "indefinite",
    "any": "indefinite",
}
PRONOUN_PROPERTIES = (
    "male",
    "female",
    "neutral",
    "first_person",
    "second_person",
    "third_person",
    "plural",
    "singular",
    "subject",
    "object",
    "possessive",
    "reflexive",
    "personal",
    "indefinite",
    "demonstrative",
    "interrogative",
    "relative",
    "intensive",
    "nonreflexive",
)
_PERSON = {"first": "first_person", "second": "second_person", "third": "third_person"}
PRONOUNS: dict[str, set[str]] = {w: {_PERSON.get(p, p) for p in props.split()} for w, props in _P.items()}

SUFFIXES = (
    "ness ment tion sion ance ence er or ist ism hood ship age able ible al ial ish ive less ful ous ic ly ward wise "
    "ize ise en ify let ling ie ette dom logy graphy phobia y cy ty ant ent ary ery ing ed s est"
).split()
PREFIXES_MORPHEMES = (
    "un re in im il ir dis en em non pre mis sub inter fore de trans super semi anti mid under over auto bi co "
    "counter extra hyper micro mono multi out post pro tele tri uni ultra macro mega meta micro neo omni pan para "
    "poly proto pseudo retro anti geo bio intra hemi"
).split()  # 56 listed (micro and anti twice, spec §7.2): 54 unique
PREFIXES = tuple(dict.fromkeys(PREFIXES_MORPHEMES + list(string.ascii_lowercase)))

MONTHS = set(
    "january february march april may june july august september october november december "
    "jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
DAYS = set(
    "monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu thur thurs fri sat sun".split()
)
STATES = set(
    s.lower()
    for s in (
        "Alabama Alaska Arizona Arkansas California Colorado Connecticut Delaware Florida Georgia Hawaii Idaho "
        "Illinois Indiana Iowa Kansas Kentucky Louisiana Maine Maryland Massachusetts Michigan Minnesota "
        "Mississippi Missouri Montana Nebraska Nevada Ohio Oklahoma Oregon Pennsylvania Tennessee Texas Utah "
        "Vermont Virginia Washington Wisconsin Wyoming"
    ).split()
)
STATE_ABV = set(
    "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND OH OK OR "
    "PA RI SC SD TN TX UT VT VA WA WV WI WY DC".split()
)
WEBSITE_SUFFIXES = set("com org net edu gov io co uk de html htm php www http https".split())
LENGTH_WORDS = set(
    "inch inches foot feet ft yard yards mile miles meter meters metre metres km cm mm kilometer kilometers "
    "centimeter centimeters millimeter millimeters".split()
)
TIME_WORDS = set(
    "second seconds minute minutes hour hours day days week weeks month months year years decade decades century "
    "centuries am pm noon midnight morning evening night today tomorrow yesterday".split()
)
CONTRASTIVE = set("but however although though yet whereas nevertheless nonetheless while despite instead".split())


def _bool_features(s: str) -> dict[str, bool]:
    """Every §7.2 boolean of one decoded token string ``s`` (stripped and/or lower-cased where the spec says)."""
    st = s.strip()
    lo = st.lower()
    f: dict[str, bool] = {}
    # type
    f["all_white_space"] = len(s) > 0 and s.isspace()
    f["all_caps"] = len(st) > 1 and st.isalpha() and st.isupper()
    f["all_lower"] = len(st) > 0 and st.isalpha() and st.islower()
    f["all_alpha"] = len(st) > 0 and st.isalpha()
    f["all_numeric"] = len(st) > 0 and st.isnumeric()
    f["all_symbolic"] = len(st) > 0 and all(not c.isalnum() and not c.isspace() for c in st)
    # symbol
    for name, ch in SYMBOLS.items():
        f[f"contains_{name}"] = ch in st
    f["contains_closing_punc"] = any(c in CLOSING_PUNC for c in st)
    f["contains_opening_punc"] = any(c in OPENING_PUNC for c in st)
    f["contains_math_symbol"] = any(c in MATH_SYMBOLS for c in st)
    f["contains_currency"] = any(c in CURRENCY for c in st)
    f["contains_dollar"] = "$" in st
    f["contains_double_dollar"] = "$$" in st
    # numeric
    digits = st.isdigit() and st.isascii()
    f["contains_digit"] = any(c.isdigit() for c in st)
    f["all_digits"] = len(st) > 0 and digits
    f["is_number_word"] = lo in NUMBER_WORDS
    f["is_year"] = digits and 1490 < int(st) < 2200
    f["integral_value"] = digits
    for n, name in enumerate(("one", "two", "three", "four"), start=1):
        f[f"is_{name}_digit"] = digits and len(st) == n
    f["is_lt_31"] = digits and int(st) < 31
    # pronoun
    props = PRONOUNS.get(lo, set())
    for p in PRONOUN_PROPERTIES:
        f[f"is_{p}_pronoun"] = p in props
    # starts (raw string: the leading space matters)
    first = s[:1]
    has_space = first.isspace() if first else False
    first_char = st[:1]
    f["starts_w_vowel"] = first_char.lower() in set("aeiou") and first_char != ""
    f["starts_w_consonant"] = first_char.isalpha() and first_char.lower() not in set("aeiou")
    f["start_w_no_space"] = len(s) > 0 and not has_space
    f["start_w_no_space_and_letter"] = first.isalpha()
    f["start_w_no_space_and_digit"] = first.isdigit()
    f["starts_w_digit"] = first_char.isdigit()
    f["starts_w_space"] = has_space
    f["start_w_space_and_letter"] = has_space and s[1:2].isalpha()
    f["starts_w_cap"] = first_char.isupper()
    f["starts_w_no_space_and_cap"] = first.isupper()
    f["starts_w_no_space_and_lower"] = first.islower()
    # suffix / prefix (lower-cased stripped alphabetic part; the token must be longer than the affix)
    for suf in SUFFIXES:
        f[f"end_w_{suf}"] = lo.isalpha() and len(lo) > len(suf) and lo.endswith(suf)
    for pre in PREFIXES:
        if len(pre) == 1:
            f[f"start_w_{pre}"] = lo.startswith(pre)
        else:
            f[f"start_w_{pre}"] = lo.isalpha() and len(lo) > len(pre) and lo.startswith(pre)
    # word groups
    f["is_month"] = lo in MONTHS
    f["is_day_of_week"] = lo in DAYS
    f["is_state"] = lo in STATES
    f["is_state_abv"] = st in STATE_ABV
    f["is_website_suffix"] = lo.lstrip(".") in WEBSITE_SUFFIXES
    f["is_length"] = lo in LENGTH_WORDS
    f["is_time"] = lo in TIME_WORDS
    f["is_contrastive_conjuction"] = lo in CONTRASTIVE
    return f


FEATURE_COLUMNS: tuple[str, ...] = tuple(_bool_features(" x"))
FAMILIES: dict[str, tuple[str, ...]] = {
    "type": FEATURE_COLUMNS[:6],
    "symbol": tuple(c for c in FEATURE_COLUMNS if c.startswith("contains_") and c != "contains_digit"),
    "numeric": (
        "contains_digit",
        "all_digits",
        "is_number_word",
        "is_year",
        "integral_value",
        "is_one_digit",
        "is_two_digit",
        "is_three_digit",
        "is_four_digit",
        "is_lt_31",
    ),
    "pronoun": tuple(f"is_{p}_pronoun" for p in PRONOUN_PROPERTIES),
    "starts": tuple(c for c in FEATURE_COLUMNS if c.startswith(("starts_w_", "start_w_no_space", "start_w_space"))),
    "suffix": tuple(f"end_w_{s}" for s in SUFFIXES),
    "prefix": tuple(f"start_w_{p}" for p in PREFIXES),
    "word_group": (
        "is_month",
        "is_day_of_week",
        "is_state",
        "is_state_abv",
        "is_website_suffix",
        "is_length",
        "is_time",
        "is_contrastive_conjuction",
    ),
}
NORM_COLUMNS = ("embed_norm", "unembed_norm", "small_norm")


def feature_family(column: str) -> str:
    """The §7.2 family of a vocabulary column ('unigram' for ``*_unigram``; 'other' when unknown)."""
    if column.endswith("_unigram"):
        return "unigram"
    for fam, cols in FAMILIES.items():
        if column in cols:
            return fam
    return "other"


# ---------------------------------------------------------------- building the table
def decoded_vocab(tokenizer) -> list[str]:
    """The decoded string of every token id (``tokenizer.decode([id])``), in id order."""
    n = len(tokenizer)
    return [tokenizer.decode([i]) for i in range(n)]


def make_vocab_df(tokenizer, model=None, small_norm_threshold: float = SMALL_NORM_THRESHOLD) -> pd.DataFrame:
    """One row per token id: ``token_id``, ``token_string``, every §7.2 boolean, and the norms when ``model``."""
    strings = decoded_vocab(tokenizer)
    rows = [_bool_features(s) for s in strings]
    df = pd.DataFrame(rows, columns=list(FEATURE_COLUMNS)).astype(bool)
    df.insert(0, "token_string", strings)
    df.insert(0, "token_id", np.arange(len(strings), dtype=np.int64))
    if model is not None:
        import torch

        with torch.no_grad():
            w_e = model.W_E.detach().float()
            w_u = model.W_U.detach().float()
        n = len(strings)
        embed = torch.full((n,), float("nan"))
        unembed = torch.full((n,), float("nan"))
        k = min(n, w_e.shape[0])
        embed[:k] = w_e[:k].norm(dim=-1)
        k = min(n, w_u.shape[1])
        unembed[:k] = w_u[:, :k].norm(dim=0)
        df["embed_norm"] = embed.numpy()
        df["unembed_norm"] = unembed.numpy()
        df["small_norm"] = df["embed_norm"] < small_norm_threshold
    return df


def tokenizer_name(model: str, tokenizer=None) -> str:
    """The ``{tokenizer}`` path component of a model's vocabulary table: ``zoo`` for the seed zoo (one shared
    tokenizer), ``gpt2`` / ``pythia`` / ``llama`` / ``smollm2`` for those hub families, else the model's name."""
    lowered = str(model).lower()
    if lowered.startswith("zoo-") or "/zoo/" in lowered:
        return "zoo"
    for key, name in (
        ("stanford-gpt2", "gpt2"),
        ("gpt2", "gpt2"),
        ("pythia", "pythia"),
        ("smollm2", "smollm2"),
        ("llama", "llama"),
    ):
        if key in lowered:
            return name
    return artifacts.model_name(model)


def tokenizer_fingerprint(tokenizer) -> str:
    from neuron_lib.corpus import tokenizer_fingerprint as fp

    return fp(tokenizer)


def load_vocab_df(tokenizer, name: str) -> tuple[pd.DataFrame, dict]:
    """The vocabulary table ``name`` and its manifest, refusing one made for another tokenizer (fingerprint)."""
    path = artifacts.vocab_df_file(name)
    manifest_path = artifacts.table_manifest(path)
    if not path.exists() or not manifest_path.exists():
        raise NeuronLibError(
            f"no vocabulary feature table at {path}; run `python -m neuron_lib.vocab_features --model MODEL`"
        )
    manifest = read_json(manifest_path)
    check_vocab_fingerprint(manifest, tokenizer, path)
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, keep_default_na=False), manifest


def check_vocab_fingerprint(manifest: dict, tokenizer, path) -> None:
    want = tokenizer_fingerprint(tokenizer)
    got = manifest.get("tokenizer_fingerprint")
    if got != want:
        raise NeuronLibError(
            f"the vocabulary feature table {path} was made for another tokenizer (fingerprint {got}, this "
            f"model's is {want}); rebuild it with `python -m neuron_lib.vocab_features --model MODEL --overwrite`"
        )


# ---------------------------------------------------------------- unigram features (§7.3)
def unigram_count_threshold(n_tokens: int) -> int:
    """The paper's 3000 occurrences per 10M tokens, scaled to ``n_tokens`` (at least 1)."""
    return max(1, int(round(PAPER_UNIGRAM_COUNT * n_tokens / PAPER_UNIGRAM_TOKENS)))


def normalised_vocab(strings: list[str]) -> tuple[list[str], np.ndarray]:
    """Group token ids by lower-cased stripped string: (normalised strings, token id → normalised id)."""
    norm = [s.strip().lower() for s in strings]
    uniques = sorted(set(norm))
    index = {s: i for i, s in enumerate(uniques)}
    return uniques, np.array([index[s] for s in norm], dtype=np.int64)


def unigram_features(
    strings: list[str],
    token_counts: np.ndarray,
    count_threshold: int,
    min_variants: int = PAPER_UNIGRAM_VARIANTS,
) -> pd.DataFrame:
    """Boolean [vocab, features] table of ``{normalised}_unigram`` columns (spec §7.3).

    A normalised string qualifies iff its summed count > ``count_threshold`` and it has > ``min_variants`` raw
    token variants; empty normalised strings (whitespace tokens) never qualify, nor do strings holding U+FFFD:
    byte-level BPE tokens that are parts of a multi-byte character all decode to "\ufffd", which would otherwise
    group unrelated byte tokens into one "word"."""
    uniques, norm_id = normalised_vocab(strings)
    counts = np.bincount(norm_id, weights=np.asarray(token_counts, dtype=np.float64), minlength=len(uniques))
    variants = np.bincount(norm_id, minlength=len(uniques))
    chosen = [
        i
        for i, s in enumerate(uniques)
        if s
        and re.fullmatch(r"\S+", s)
        and "\ufffd" not in s
        and counts[i] > count_threshold
        and variants[i] > min_variants
    ]
    data = {f"{uniques[i]}_unigram": norm_id == i for i in chosen}
    return pd.DataFrame(data, index=np.arange(len(strings)))


# ---------------------------------------------------------------- the CLI stage
@dataclasses.dataclass
class VocabFeaturesConfig:
    """The vocabulary feature table of a model's tokenizer (spec §7.2)."""

    model: str = config_field(REQUIRED, "model whose tokenizer (and embedding norms) the table describes")
    name: str = config_field("", "the table's name (dataframes/vocab_dfs/{name}.csv); empty = tokenizer_name(model)")
    with_norms: bool = config_field(True, "add embed_norm, unembed_norm, small_norm (loads the model)")
    small_norm_threshold: float = config_field(SMALL_NORM_THRESHOLD, "small_norm = embed_norm < this")
    overwrite: bool = config_field(False, "replace a table made for another tokenizer or configuration")

    def validate(self) -> VocabFeaturesConfig:
        if not self.model:
            raise NeuronLibError("--model is required")
        return self

    def identity(self) -> dict[str, Any]:
        return {
            "model": artifacts.model_name(self.model),
            "with_norms": self.with_norms,
            "small_norm_threshold": self.small_norm_threshold,
        }


def ensure_vocab_df(cfg: VocabFeaturesConfig, tokenizer=None, model=None) -> tuple[pd.DataFrame, dict, str]:
    """Build (or reuse) the table; returns (table, manifest, status)."""
    from neuron_lib.models import load_model, load_tokenizer

    cfg.validate()
    name = cfg.name or tokenizer_name(cfg.model)
    tokenizer = tokenizer or load_tokenizer(cfg.model)
    fp = config_fingerprint(cfg.identity())
    path = artifacts.vocab_df_file(name)
    man_path = artifacts.table_manifest(path)
    tok_fp = tokenizer_fingerprint(tokenizer)
    if man_path.exists() and path.exists():
        manifest = read_json(man_path)
        same = manifest.get("config_fingerprint") == fp and manifest.get("tokenizer_fingerprint") == tok_fp
        if same:
            return pd.read_parquet(path), manifest, "skipped"
        if not cfg.overwrite:
            check_vocab_fingerprint(manifest, tokenizer, path)
            if manifest.get("config_fingerprint") != fp:
                raise NeuronLibError(f"{path} was made with another configuration; pass --overwrite to replace it")
    if cfg.with_norms and model is None:
        model = load_model(cfg.model)
    t0 = time.time()
    df = make_vocab_df(tokenizer, model if cfg.with_norms else None, cfg.small_norm_threshold)
    bool_cols = [c for c in FEATURE_COLUMNS]
    empty = [c for c in bool_cols if not df[c].any()]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_dataframe_atomic(df, path.with_suffix(""), formats=("csv", "parquet"))
    manifest = make_manifest(
        STAGE,
        cfg,
        config_fingerprint=fp,
        model=artifacts.model_name(cfg.model),
        tokenizer_name=name,
        tokenizer_fingerprint=tok_fp,
        n_tokens_in_vocab=len(df),
        families={k: list(v) for k, v in FAMILIES.items()},
        empty_columns=empty,
        small_norm_threshold=cfg.small_norm_threshold if cfg.with_norms else None,
        seconds=time.time() - t0,
    )
    atomic_write_json(man_path, manifest)
    return df, manifest, "done"


def run_vocab_features(cfg: VocabFeaturesConfig) -> stage.StageResult:
    t0 = time.time()
    df, manifest, status = ensure_vocab_df(cfg)
    path = artifacts.vocab_df_file(manifest["tokenizer_name"])
    stage.log(STAGE, f"{status}: {len(df):,} tokens x {len(FEATURE_COLUMNS)} features -> {path}")
    return stage.StageResult(STAGE, status, {"vocab_df": str(path)}, seconds=time.time() - t0)


main = stage.cli(
    VocabFeaturesConfig,
    run_vocab_features,
    "python -m neuron_lib.vocab_features",
    "vocabulary feature table of a tokenizer (spec §7.2)",
)

if __name__ == "__main__":
    from neuron_lib.common import run_cli

    run_cli(main)
