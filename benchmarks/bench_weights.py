"""Benchmark of the weights stage's vocabulary composition on SmolLM2-135M: 46,080 neurons x 49,152 tokens.

The dense cosine matrix would be 46,080 x 49,152 x 8 B = 16.9 GiB in float64 (8.4 GiB in float32); the stage
computes it in blocks of neurons sized by ``--max-memory`` (``WeightsConfig.block_rows``: six float64
[rows, d_vocab] temporaries per block) and keeps only the per-neuron summaries (moments, histogram, top / bottom
k). Cases, each in its own subprocess (peak RSS per case), U_out only (the vocab_* columns of the neuron
dataframe), side by side:

- ``--max-memory 256MiB`` and ``--max-memory 2GiB``: time and peak RSS against the budget;
- the calibrated vocab-kurtosis null alone (``vocab_kurtosis_null``, 256 and 1,000 random directions per layer).

Needs the model built (``make smollm``). Run: ``python benchmarks/bench_weights.py`` →
``benchmarks/results/weights.{json,md}``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MODEL = "smollm2-135m"
CASES = ["vocab:256MiB", "vocab:2GiB", "null:256", "null:1000"]


def run_case(case: str) -> dict:
    import torch

    torch.set_num_threads(2)
    from neuron_lib import weights as W
    from neuron_lib.common import human_bytes, parse_memory

    kind, _, arg = case.partition(":")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SUMMARY_DIR"] = str(Path(tmp) / "summary")
        t0 = time.perf_counter()
        if kind == "vocab":
            cfg = W.WeightsConfig(
                model=MODEL,
                vocab_types="U_out",
                neurons=False,
                heads=False,
                vocab_null_samples=0,
                max_memory=arg,
                progress=False,
            ).validate()
            W.run_weights(cfg)
            model_info = None
        else:
            from neuron_lib.models import load_model

            weights = W.extract_weights(load_model(MODEL, process_weights=True))
            t0 = time.perf_counter()  # the null alone, not the model load
            null = W.vocab_kurtosis_null(weights, int(arg), 0, 256)
            model_info = {"null_q99_min": float(null["null_q99"].min()), "null_q99_max": float(null["null_q99"].max())}
            cfg = None
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {"case": case, "seconds": round(seconds, 1), "peak_rss_bytes": peak, "peak_rss": human_bytes(peak)}
    if cfg is not None:
        rows = cfg.block_rows(49152)
        out.update(
            budget=arg,
            budget_bytes=parse_memory(arg),
            block_rows=rows,
            block_bytes=6 * 8 * rows * 49152,
            dense_float64_bytes=46080 * 49152 * 8,
        )
    if model_info:
        out.update(model_info)
    return out


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--case":
        print("RESULT " + json.dumps(run_case(sys.argv[2])))
        return
    from neuron_lib import artifacts
    from neuron_lib.common import human_bytes

    if not artifacts.manifest_path(artifacts.pretrained_model(MODEL)).exists():
        raise SystemExit(f"{MODEL} is not built: run `make smollm` first")
    results = []
    from bench_summary import run_in_subprocess  # benchmarks/ is the script's folder, first on sys.path

    for case in CASES:
        results.append(run_in_subprocess(__file__, case))
        print(results[-1])
    import torch

    report = {
        "machine": {"cpu_threads": 2, "platform": platform.platform(), "torch": torch.__version__},
        "model": MODEL,
        "cases": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "weights.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# neuron_lib.weights benchmark: vocabulary composition of SmolLM2-135M",
        "",
        f"CPU, 2 threads, torch {torch.__version__}. 46,080 neurons x 49,152 tokens, U_out (cos(w_out, W_U[:, v])), "
        f"float64; the dense matrix would be {human_bytes(46080 * 49152 * 8)} (float64).",
        "",
        "| case | seconds | peak RSS | neurons per block | block temporaries |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        block = f"{r['block_rows']} | {human_bytes(r['block_bytes'])}" if "block_rows" in r else "– | –"
        lines.append(f"| {r['case']} | {r['seconds']} | {r['peak_rss']} | {block} |")
    lines += [
        "",
        "Peak RSS includes the model (fp32, ≈ 0.5 GiB) and the float64 copies of W_out and W_U the stage works from. "
        "The null cases time `vocab_kurtosis_null` alone (30 layers x N random directions against W_U).",
        f"Load average at the end: {os.getloadavg()[0]:.1f}.",
    ]
    (RESULTS / "weights.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
