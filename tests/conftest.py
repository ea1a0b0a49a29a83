"""Shared fixtures. The micro zoo (tiny corpus, tokenizer, two 2-layer models) is built once per session.

Every output root is redirected to a session temp dir so tests never touch the user's data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from helpers import synthetic_documents
from neuron_lib import artifacts

# the browser tests' shared data fixture (``data_root``) lives with the data it builds
pytest_plugins = ["browser_data"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

_ROOTS = list(artifacts.ROOTS)  # every output root (a new root is redirected without editing this file)


@dataclass
class MicroZoo:
    root: Path
    model_names: list[str]  # resolvable names (zoo folders under $MODELS_DIR/zoo)
    model_dirs: list[Path]
    train_dataset: Path
    analysis_dataset: Path
    tokenizer_dir: Path
    config: object


@pytest.fixture(scope="session")
def micro_zoo(tmp_path_factory) -> MicroZoo:
    from neuron_lib import corpus, zoo

    root = tmp_path_factory.mktemp("micro_zoo")
    old = {k: os.environ.get(k) for k in _ROOTS}
    for k in _ROOTS:
        os.environ[k] = str(root / k.lower())
    try:
        docs = {"grammar": synthetic_documents(240, seed=1), "grammar2": synthetic_documents(120, seed=2)}
        split = corpus.split_documents(docs, analysis_fraction=0.25, seed=0)
        tok_dir = Path(os.environ["CORPUS_DIR"]) / "tokenizer"
        tokenizer = corpus.train_tokenizer(
            [d for ds in split["train"].values() for d in ds], vocab_size=320, out_dir=tok_dir
        )
        ctx = 32
        paths = {}
        for part in ("train", "analysis"):
            ds = corpus.tokenize_documents(split[part], tokenizer, ctx)
            paths[part] = corpus.save_token_dataset(
                ds,
                Path(os.environ["DATASET_DIR"]) / "zoo" / f"micro.{part}.{ctx}",
                {"split": part, "split_seed": 0, "tokenizer_dir": str(tok_dir)},
            )
        cfg = zoo.make_config(
            "micro",
            name_prefix="micro",
            seeds=(21, 49, 81),
            train_dataset=str(paths["train"]),
            analysis_dataset=str(paths["analysis"]),
        )
        zoo.train_zoo(cfg)
        names = cfg.model_names()
        yield MicroZoo(
            root,
            names,
            [Path(os.environ["MODELS_DIR"]) / "zoo" / n for n in names],
            paths["train"],
            paths["analysis"],
            tok_dir,
            cfg,
        )
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def micro_env(micro_zoo, monkeypatch):
    """Point every output root at the micro zoo's folders for one test."""
    for k in _ROOTS:
        monkeypatch.setenv(k, str(micro_zoo.root / k.lower()))
    return micro_zoo
