"""Benchmark of ``neuron_lib.summary``: throughput (tokens/s), statistics vs forward time, peak memory (RSS).

Cases (each in its own subprocess so that peak RSS is per case); ``fused`` = the numba kernels of
``neuron_lib.fused`` (the default on CPUs), ``torch`` = the same statistics in torch ops (``NEURON_LIB_FUSED=0``,
the path GPUs take), run side by side on the same tokens:
- ``tiny``: a 2-layer GPT-2 (d_mlp 64, vocab 300) on 4,096 tokens;
- ``gpt2-small-shape``: a RANDOM GPT-2-small-shaped model (12 layers, d_model 768, d_mlp 3072, vocab 50257)
  on a few thousand Zipf-distributed tokens, default budget (--max-memory 4GiB);
- ``gpt2-small-shape-512MiB``: the same with --max-memory 512MiB, so that the per-token mean sums of all
  seen tokens no longer fit and the count threshold of the mean-by-token ranking rises;
- ``smollm2-135m``: the real SmolLM2-135M (30 layers x 1536 gated neurons, vocab 49,152; built by
  ``make smollm``; skipped with a note when it is not built) on its own token dataset.

Each case also times the bare forward pass on the same rows: ``model(tokens)`` to the logits, no hooks, no cache
(``bare forward``), and reports statistics / bare forward. Also reports the accumulator plan of a full
100M-token run on GPT-2 small against the original's dense [L, N, V] fp32 sum + fp16 max (≈ 11.1 GB).

Run: ``python benchmarks/bench_summary.py`` → ``benchmarks/results/summary.{json,md}``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SMOLLM_TOKENS = 8192  # the SmolLM2 case's tokens: 8 batches of 4 x 256 (pipeline.SMOLLM_TOKENS by default)


def build(case: str, root: Path) -> tuple[Path, Path]:
    import datasets
    import numpy as np
    import torch
    from tokenizers import Tokenizer, models
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from neuron_lib.corpus import save_token_dataset, tokenizer_fingerprint

    if case == "tiny":
        V, shape, n_rows, ctx = 300, dict(n_embd=32, n_layer=2, n_head=2, n_inner=64), 256, 16
    else:
        V, shape, n_rows, ctx = 50257, dict(n_embd=768, n_layer=12, n_head=12, n_inner=3072), 16, 256
    vocab = {"<|endoftext|>": 0, **{f"t{i}": i for i in range(1, V)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=V,
            n_positions=max(ctx, 32),
            activation_function="gelu_new",
            bos_token_id=0,
            eos_token_id=0,
            **shape,
        )
    )
    mdir = root / f"bench-{case}"
    model.save_pretrained(mdir)
    fast.save_pretrained(mdir)
    rng = np.random.default_rng(0)
    ranks = np.arange(1, V)
    p = 1.0 / ranks**1.1
    rows = rng.choice(ranks, size=(n_rows, ctx), p=p / p.sum())
    rows[:, 0] = 0
    feats = datasets.Features(
        {"tokens": datasets.Sequence(datasets.Value("int64"), length=ctx), "subset": datasets.Value("string")}
    )
    ds = datasets.Dataset.from_dict({"tokens": rows.tolist(), "subset": ["bench"] * n_rows}, features=feats)
    dpath = save_token_dataset(
        ds, root / f"data-{case}", {"tokenizer_fingerprint": tokenizer_fingerprint(fast), "split": "bench"}
    )
    return mdir, dpath


def run_case(case: str) -> dict:
    """Runs inside the subprocess."""
    import torch

    torch.set_num_threads(2)
    from neuron_lib import summary as S
    from neuron_lib.common import load_tensors

    case, _, path = case.partition(":")  # "<case>:fused" or "<case>:torch"
    os.environ["NEURON_LIB_FUSED"] = "0" if path == "torch" else "1"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["SUMMARY_DIR"] = str(root / "summary")
        budget = "512MiB" if case.endswith("512MiB") else "4GiB"
        if case == "smollm2-135m":
            from neuron_lib import artifacts

            mdir, dpath = "smollm2-135m", artifacts.pretrained_dataset("smollm2-135m", "analysis", 256)
            kind, max_tokens = "smollm", SMOLLM_TOKENS
        else:
            kind = "tiny" if case == "tiny" else "small"
            (mdir, dpath), max_tokens = build(kind, root), None
        cfg = S.SummaryConfig(
            model=str(mdir),
            token_dataset=str(dpath),
            batch_size=32 if kind == "tiny" else 4,
            device="cpu",
            max_memory=budget,
            max_tokens=max_tokens,
        )
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        stats_seconds: list[float] = []
        update = S.SubsetStats.update

        def timed_update(self, *args, **kwargs):
            t0 = time.perf_counter()
            update(self, *args, **kwargs)
            stats_seconds.append(time.perf_counter() - t0)

        S.SubsetStats.update = timed_update
        cpu0 = time.process_time()
        out = S.run_summary(cfg)
        cpu_seconds = time.process_time() - cpu0
        rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        folder = Path(next(iter(out.outputs.values())))  # one subset folder ("bench"; smollm: the first)
        man = json.loads((folder / "manifest.json").read_text())
        voc = load_tensors(folder / "vocab.safetensors")
        info = man["model_info"]
        L, N, V = info["n_layers"], info["d_mlp"], info["d_vocab"]
        fixed = S.accumulator_bytes(L, N, cfg)
        n_mean = int(len(voc["vocab_mean_token_ids"]))
        bare = bare_forward_seconds(cfg)
        return {
            "case": case,
            "path": path or "fused",
            "n_layers": L,
            "d_mlp": N,
            "d_vocab": V,
            "n_tokens": out.n_tokens,
            "seconds": round(out.seconds, 2),
            "tokens_per_s": round(out.n_tokens / out.seconds, 1),
            "process_cpu_seconds": round(cpu_seconds, 1),
            "n_batches": len(stats_seconds),
            "statistics_seconds": round(sum(stats_seconds), 2),
            "statistics_seconds_first_batch": round(stats_seconds[0], 2),
            "forward_and_io_seconds": round(out.seconds - sum(stats_seconds), 2),
            "bare_forward_seconds": round(bare, 2),
            "statistics_over_bare_forward": round(sum(stats_seconds) / bare, 3),
            "statistics_over_bare_forward_after_first_batch": round(
                sum(stats_seconds[1:]) / bare * len(stats_seconds) / max(1, len(stats_seconds) - 1), 3
            ),
            "peak_rss_bytes": rss_peak,
            "rss_after_setup_bytes": rss_before,
            "max_memory": budget,
            "accumulator_bytes": fixed,
            "vocab_mean_tokens": n_mean,
            "vocab_mean_min_count": man["vocab_mean_min_count"],
            "vocab_bytes": n_mean * L * N * 8 + fixed["vocab_max"],
            "original_dense_vocab_bytes": L * N * V * (4 + 2),
            "distinct_tokens": int((voc["vocab_counts"] > 0).sum()),
        }


def bare_forward_seconds(cfg) -> float:
    """The model's forward pass to the logits over the rows the summary read (no hooks, no cache)."""
    import torch

    from neuron_lib.corpus import load_token_dataset
    from neuron_lib.models import load_model
    from neuron_lib.streaming import n_rows_for_tokens, tokens_tensor

    model = load_model(cfg.model, device="cpu")
    ds, _ = load_token_dataset(cfg.token_dataset)
    rows = n_rows_for_tokens(ds, cfg.max_tokens)
    total = 0.0
    with torch.no_grad():
        for a in range(0, rows, cfg.batch_size):
            tokens = tokens_tensor(ds, a, min(rows, a + cfg.batch_size))
            t0 = time.perf_counter()
            model(tokens, return_type="logits")
            total += time.perf_counter() - t0
    return total


def run_in_subprocess(script: str, case: str) -> dict:
    """``python SCRIPT --case CASE`` in its own process (so peak RSS is the case's), offline; the dict the case
    printed on its ``RESULT {json}`` line. A failed case stops the benchmark with its output's tail."""
    proc = subprocess.run(
        [sys.executable, script, "--case", case],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"case {case} failed")
    return json.loads(line[-1][7:])


def full_scale_plan() -> dict:
    """What a 100M-token GPT-2-small run would hold, with the default budget (no model needed)."""
    from neuron_lib import summary as S
    from neuron_lib.common import parse_memory

    L, N, V = 12, 3072, 50257
    cfg = S.SummaryConfig(model="gpt2", token_dataset="x")
    fixed = sum(S.accumulator_bytes(L, N, cfg).values())
    budget = parse_memory(cfg.max_memory)
    n_mean = (budget - fixed) // (L * N * 8)
    return {
        "model": "GPT-2 small (12 x 3072, vocab 50257)",
        "max_memory": cfg.max_memory,
        "fixed_accumulator_bytes": fixed,
        "vocab_mean_tokens_that_fit": int(min(n_mean, V)),
        "vocab_mean_sum_bytes": int(min(n_mean, V) * L * N * 8),
        "vocab_max_bytes": L * N * cfg.vocab_top_k * 12,
        "dense_exact_mean_all_tokens_bytes": L * N * V * 8,
        "original_dense_vocab_bytes": L * N * V * (4 + 2),
    }


def gib(x: float) -> str:
    return f"{x / 2**30:.2f} GiB"


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--case":
        print("RESULT " + json.dumps(run_case(sys.argv[2])))
        return
    from neuron_lib import artifacts

    results, notes = [], []
    cases = [
        "tiny:fused",
        "tiny:torch",
        "gpt2-small-shape:fused",
        "gpt2-small-shape:torch",
        "gpt2-small-shape-512MiB:fused",
        "smollm2-135m:fused",
        "smollm2-135m:torch",
    ]
    if not artifacts.manifest_path(artifacts.pretrained_dataset("smollm2-135m", "analysis", 256)).exists():
        cases = [c for c in cases if not c.startswith("smollm")]
        notes.append("smollm2-135m is not built here (`make smollm`): its cases were skipped.")
    for case in cases:
        t0 = time.time()
        res = run_in_subprocess(__file__, case)
        res["wall_s_including_setup"] = round(time.time() - t0, 1)
        results.append(res)
        print(f"{case}: {res['tokens_per_s']} tokens/s, peak RSS {gib(res['peak_rss_bytes'])}")
    import torch

    report = {
        "machine": {"cpu_threads": 2, "platform": platform.platform(), "torch": torch.__version__, "device": "cpu"},
        "cases": results,
        "full_scale_plan": full_scale_plan(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# neuron_lib.summary benchmark",
        "",
        f"CPU, 2 threads, torch {torch.__version__}. Random-init models (throughput/memory only).",
        "",
        "| case | statistics | layers x d_mlp | vocab | tokens | tokens/s | statistics s (first batch) | bare forward s | statistics / bare forward (after the first batch) | summary's forward+io s | peak RSS | vocab-stat memory | original dense vocab | mean-by-token tokens (min count) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['case']} | {r['path']} | {r['n_layers']} x {r['d_mlp']} | {r['d_vocab']} | {r['n_tokens']} | "
            f"{r['tokens_per_s']} | {r['statistics_seconds']} ({r['statistics_seconds_first_batch']}) | "
            f"{r['bare_forward_seconds']} | {r['statistics_over_bare_forward']} "
            f"({r['statistics_over_bare_forward_after_first_batch']}) | {r['forward_and_io_seconds']} | "
            f"{gib(r['peak_rss_bytes'])} | {gib(r['vocab_bytes'])} | {gib(r['original_dense_vocab_bytes'])} | "
            f"{r['vocab_mean_tokens']} (≥ {r['vocab_mean_min_count']}) |"
        )
    p = report["full_scale_plan"]
    lines += [
        "",
        f"Full-scale plan, {p['model']}, --max-memory {p['max_memory']}: fixed accumulators {gib(p['fixed_accumulator_bytes'])}, "
        f"exact mean-by-token for the {p['vocab_mean_tokens_that_fit']:,} most frequent tokens ({gib(p['vocab_mean_sum_bytes'])}), "
        f"exact max-by-token top-{100} for every token ({gib(p['vocab_max_bytes'])}); the original held "
        f"{gib(p['original_dense_vocab_bytes'])} (dense fp32 sum + fp16 max); exact means for all 50,257 tokens would need "
        f"{gib(p['dense_exact_mean_all_tokens_bytes'])} of float64 sums (use --max-memory 24GiB for that).",
    ]
    ratio = {(r["case"], r["path"]): r["statistics_seconds"] for r in results}
    speedups = [
        f"{c}: torch / fused statistics time {ratio[(c, 'torch')] / ratio[(c, 'fused')]:.2f}x"
        for c in dict.fromkeys(r["case"] for r in results)
        if (c, "torch") in ratio and (c, "fused") in ratio
    ]
    lines += [
        "",
        "Side by side in this run: " + "; ".join(speedups) + ".",
        *notes,
        "",
        "2 CPU threads. The first batch of a run also fills every top-k / sample list and (fused) loads the",
        "compiled kernels from numba's cache (compiles them on the very first run); the run's quantile pilot",
        "(a sort of the first batch) is outside the statistics time. Peak RSS includes the model (≈ 0.5 GiB fp32",
        "for GPT-2 small and SmolLM2), the bridge's activation cache and one batch of activations (4 x 256 tokens).",
        f"Load average at the end: {os.getloadavg()[0]:.1f}.",
    ]
    (RESULTS / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
