"""Benchmark of ``explain`` on the zoo's reference model: all neurons x all features over the first analysis tokens.

Measures tokens/s of the whole stage, of the spaCy parse and of the two model passes, and peak RSS; projects the
cost for GPT-2 small (12 x 3072 neurons) on 10M tokens. The class sums scale with tokens x neurons x features
(the token features through per-token-id sums: tokens x neurons, plus vocab x neurons x features once), the parse
with tokens only. Writes benchmarks/results/explain.{json,md}.

    python benchmarks/bench_explain.py [--max-tokens 32768]

Needs the zoo (``make zoo``) and its analysis dataset; output roots are redirected to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=32768)
    parser.add_argument("--model", default="zoo-gpt2-a")
    args = parser.parse_args()
    from neuron_lib import artifacts, explain

    dataset = artifacts.embedded_dataset("analysis", 128)
    if not dataset.exists():
        raise SystemExit(f"no analysis dataset at {dataset}: run `make zoo` first")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DATAFRAMES_DIR"] = str(Path(tmp) / "dataframes")
        t0 = time.time()
        res = explain.run_explain(
            explain.ExplainConfig(model=args.model, token_dataset=str(dataset), max_tokens=args.max_tokens)
        )
        seconds = time.time() - t0
        man = json.loads((Path(res.outputs["explanations"]) / "manifest.json").read_text())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n_tokens = man["n_rows"] * man["model_info"].get("n_ctx", 128) if "model_info" in man else args.max_tokens
    n_neurons = man["neurons"]
    spacy_tps = (man.get("spacy") or {}).get("tokens_per_second") or float("nan")
    passes = sum(man["pass_seconds"].values())
    model_tps = args.max_tokens / max(passes, 1e-9)
    # GPT-2 small on 10M tokens: parse scales with tokens; passes with tokens x neurons (per neuron-token cost)
    gpt2_neurons = 12 * 3072
    proj_parse = 10e6 / spacy_tps
    proj_passes = passes * (10e6 / args.max_tokens) * (gpt2_neurons / n_neurons)
    result = {
        "model": args.model,
        "tokens": args.max_tokens,
        "neurons": n_neurons,
        "features": man["n_features"],
        "seconds": seconds,
        "tokens_per_second": args.max_tokens / seconds,
        "spacy_tokens_per_second": spacy_tps,
        "pass_seconds": man["pass_seconds"],
        "model_pass_tokens_per_second": model_tps,
        "peak_rss_bytes": peak,
        "projected_gpt2_small_10M": {
            "parse_hours_one_process": proj_parse / 3600,
            "passes_hours_cpu_excluding_forward_cost_change": proj_passes / 3600,
            "note": "passes scale with tokens x neurons; the GPT-2 forward itself (12 layers, d=768) is extra and "
            "is GPU work; the parse parallelises over processes (--spacy-processes)",
        },
        "n_tokens_kept": n_tokens,
    }
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "explain.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "explain.md").write_text(
        "# explain benchmark\n\n"
        f"{args.model}, {n_neurons} neurons, {args.max_tokens:,} tokens: {seconds:.0f} s "
        f"({args.max_tokens / seconds:,.0f} tokens/s), spaCy {spacy_tps:,.0f} tokens/s, model passes "
        f"{model_tps:,.0f} tokens/s, peak RSS {peak / 2**30:.2f} GiB.\n\n"
        f"Projected GPT-2 small, 10M tokens: parse {proj_parse / 3600:.1f} h in one process, class-sum passes "
        f"{proj_passes / 3600:.1f} h on this CPU (+ the forward passes).\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
