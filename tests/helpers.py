"""Code the test modules share (no fixtures: those stay in conftest.py).

Imported as ``helpers``: pyproject.toml puts tests/ on ``sys.path`` for pytest (``pythonpath = ["tests"]``).
Test modules import from here, never from each other.

- :func:`paper_dir` / :func:`paper_csv`: the one rule for finding the paper's published tables.
- :func:`synthetic_documents`: language-like documents from a tiny grammar (the micro zoo's corpus).
- :func:`synthetic_neuron_df`: a hand-made per-neuron table in our schema.
- :func:`build_tiny_model` and friends: a tiny GPT-2 + token dataset with a float64 activation reference
  (activation summaries and the activation cache).
- :func:`make_tiny_model`: a tiny GPT-2 with randomised LayerNorms and biases (weight statistics).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

PAPER_MODEL = "stanford-gpt2-small-a"


# ---------------------------------------------------------------- the paper's published tables
def paper_dir(model: str = PAPER_MODEL) -> Path:
    """``shared/data/paper/<model>`` through ``neuron_lib.artifacts.paper_data_dir`` ($SHARED_DIR, else
    ``shared/`` beside the repository). CI always has shared/, so a missing copy fails the test, never skips it."""
    from neuron_lib.artifacts import paper_data_dir
    from neuron_lib.common import NeuronLibError

    try:
        return paper_data_dir(model)
    except NeuronLibError as exc:
        reason = str(exc)
    pytest.fail(
        f"tests need the paper's published tables: {reason}", pytrace=False
    )  # outside except: no chained traceback


def paper_csv(table: str = "universal", model: str = PAPER_MODEL) -> Path:
    """One published table, e.g. ``paper_csv("universal")`` → ``.../universal.csv``; missing → a test failure."""
    path = paper_dir(model) / f"{table}.csv"
    if not path.is_file():
        pytest.fail(
            f"the paper's table {path.name} is missing from {path.parent} (a copy of the project's shared/ "
            "folder must sit beside the repository, or SHARED_DIR must point at one)",
            pytrace=False,
        )
    return path


# ---------------------------------------------------------------- a tiny grammar corpus
_SUBJECTS = ["the cat", "a dog", "the old king", "my friend", "the river", "a small bird", "the teacher", "our city"]
_VERBS = ["sees", "likes", "follows", "finds", "remembers", "builds", "carries", "watches"]
_OBJECTS = ["the house", "a red apple", "the long road", "the sea", "a quiet garden", "the night", "an old book"]
_TAILS = ["", " in the morning", " after the rain", " with great care", " near the bridge", " again"]


def synthetic_documents(n_docs: int, seed: int) -> list[str]:
    """Language-like documents from a tiny grammar: deterministic, offline, with real regularities."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(3, 8)):
            s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_TAILS)}."
            sentences.append(s[0].upper() + s[1:])
        docs.append(" ".join(sentences) + ("\n" if rng.random() < 0.5 else ""))
    return docs


# ---------------------------------------------------------------- a hand-made per-neuron table
def synthetic_neuron_df(n_layers: int = 4, d_mlp: int = 48, seed: int = 0) -> pd.DataFrame:
    """A per-neuron table in our schema (paper columns + extras) with a realistic universal minority."""
    rng = np.random.default_rng(seed)
    n = n_layers * d_mlp
    layer = np.repeat(np.arange(n_layers), d_mlp)
    neuron = np.tile(np.arange(d_mlp), n_layers)
    uni = rng.random(n) < 0.15
    mean_baseline = rng.uniform(0.1, 0.3, n)
    mean_corr = np.where(uni, mean_baseline + rng.uniform(0.51, 0.65, n), mean_baseline + rng.uniform(0.0, 0.45, n))
    w_in, w_out = rng.uniform(0.3, 0.8, n) + 0.2 * uni, rng.uniform(0.3, 0.7, n) + 0.2 * uni
    df = pd.DataFrame(
        {
            "layer": layer,
            "neuron": neuron,
            "max_corr": mean_corr + 0.03,
            "mean_corr": mean_corr,
            "min_corr": mean_corr - 0.03,
            "max_baseline": mean_baseline + 0.01,
            "min_baseline": mean_baseline - 0.01,
            "mean_baseline": mean_baseline,
            "w_in_norm": w_in,
            "input_bias": rng.normal(-0.2, 0.2, n) - 0.6 * uni,
            "w_out_norm": w_out,
            "in_out_sim": rng.uniform(-0.5, 0.5, n),
            "l2_penalty": w_in**2 + w_out**2,
            "mean": rng.normal(-0.5, 0.3, n) - 0.8 * uni,
            "var": rng.uniform(0.2, 1.0, n),
            "skew": rng.normal(0, 0.2, n) + 1.0 * uni,
            "kurt": 3 + np.abs(rng.normal(0, 0.5, n)) + 4 * uni,
            "vocab_mean": rng.normal(0, 1e-3, n),
            "vocab_var": rng.uniform(5e-4, 2e-3, n),
            "vocab_skew": rng.normal(0, 0.5, n) * (1 + layer),
            "vocab_kurt": 3 + rng.exponential(1.0, n) * (1 + 3 * layer),
            "sparsity": rng.uniform(0.05, 0.5, n) * np.where(uni, 0.3, 1.0),
        }
    )
    df["excess_corr"] = df["mean_corr"] - df["mean_baseline"]
    df["is_universal"] = df["excess_corr"] > 0.5
    df["is_universal_z"] = df["is_universal"] & (rng.random(n) < 0.8)
    df["is_sparse"] = df["sparsity"] < 0.02
    df["rotation_z"] = rng.normal(5, 1, n)
    for c in ("mean", "var", "skew", "kurt"):
        df[f"{c}_exact"] = df[c] + rng.normal(0, 1e-3, n)
    df["act_freq_exact"] = df["sparsity"]
    df.attrs["model"] = "synthetic"
    return df


# ---------------------------------------------------------------- tiny GPT-2 + dataset + float64 activations
# (activation summaries and the activation cache)
CTX = 16
VOCAB = 300
BOS = 0


def build_tiny_model(folder: Path, seed: int = 0, vocab_text: str | None = None) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    text = vocab_text or "the quick brown fox jumps over the lazy dog\nhello world, this is a tiny test corpus. "
    tok.train_from_iterator([text] * 40, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(fast),
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_inner=64,
        activation_function="gelu_new",
        bos_token_id=BOS,
        eos_token_id=BOS,
    )
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():  # larger weights → a wider spread of pre-activations over the histogram range
        for blk in model.transformer.h:
            blk.mlp.c_fc.weight.mul_(8.0)
            blk.mlp.c_fc.bias.normal_(0, 1.0)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def make_rows(n_rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.integers(1, VOCAB, size=(n_rows, CTX))
    rows[:, 0] = BOS
    rows[:, 9] = np.where(rng.random(n_rows) < 0.5, BOS, rows[:, 9])  # EOS (= BOS id) inside some rows
    rows[:, 5:8] = [7, 8, 7]  # frequent tokens
    rows[1] = rows[0]  # identical rows → tied activations inside the first batch (subset a)
    rows[7] = rows[3]  # ... and across batches (a: batches (0, 1), (3, 6), (7, 9))
    rows[4] = rows[2]  # subset b: (2, 4) in one batch, 8 in the next
    rows[8] = rows[2]
    return rows


def save_dataset(folder: Path, rows: np.ndarray, subsets: list[str], fingerprint: str) -> Path:
    import datasets

    from neuron_lib.corpus import save_token_dataset

    features = datasets.Features(
        {"tokens": datasets.Sequence(datasets.Value("int64"), length=rows.shape[1]), "subset": datasets.Value("string")}
    )
    ds = datasets.Dataset.from_dict({"tokens": rows.tolist(), "subset": subsets}, features=features)
    return save_token_dataset(
        ds, folder, {"tokenizer_fingerprint": fingerprint, "split": "test", "split_seed": 0, "sources": ["synthetic"]}
    )


def reference_activations(model_dir: Path, rows: np.ndarray):
    """float32-rounded pre/post activations [L, rows, ctx, N] from plain HF in float64."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(model_dir).double().eval()
    acts: dict[int, tuple] = {}
    hooks = [
        blk.mlp.act.register_forward_hook(lambda m, i, o, l=l: acts.__setitem__(l, (i[0], o)))
        for l, blk in enumerate(model.transformer.h)
    ]
    with torch.no_grad():
        model(torch.tensor(rows))
    for h in hooks:
        h.remove()
    pre = np.stack([acts[l][0].float().numpy() for l in range(len(acts))]).astype(np.float32)
    post = np.stack([acts[l][1].float().numpy() for l in range(len(acts))]).astype(np.float32)
    return pre, post


# ---------------------------------------------------------------- tiny GPT-2 for the weight statistics
N_LAYERS, D_MODEL, N_HEADS, D_MLP = 2, 32, 2, 64
D_HEAD = D_MODEL // N_HEADS


def make_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A 2-layer GPT-2 (vocab ≈ 280) with a tiny byte-level BPE tokenizer, in the hub's format.

    LayerNorm gains/biases and all biases are randomised so that folding them actually matters.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["the cat sat on the mat. a dog saw the old king near the river."] * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    cfg = GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_positions=32,
        n_embd=D_MODEL,
        n_layer=N_LAYERS,
        n_head=N_HEADS,
        n_inner=D_MLP,
        activation_function="gelu_new",
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
