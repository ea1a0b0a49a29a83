"""Benchmark: the all-pairs workload (every ordered pair of the five zoo seeds, both directions summarised) three
ways, side by side in one process on the same tokens.

    python benchmarks/bench_universality.py                  # the trained zoo (run `make all` first), 40,000 rows' worth
    python benchmarks/bench_universality.py --tokens 8000    # shorter

1. **all-pairs** — ``neuron_lib.universality``: one pass, every model forwarded once per batch, the 15 co-moment
   blocks (10 pairs + 5 covariances) accumulated, then every model's table with 3 rotations per pair;
2. **reference-vs-others ×5** — ``neuron_lib.correlations_fast`` once per reference model (each run forwards all
   five models and summarises its 4 pairs, rotation baseline with 3 rotations): what the all-pairs tables took
   before this stage;
3. **original structure** — per unordered pair (10 pairs) a run and a rotation-baseline run (the original's
   separate run per pair and per baseline), each forwarding both models, float64 CPU accumulation of Σx, Σx², Σxyᵀ per
   batch, then the correlation matrix and both directions' best matches (one rotation, the paper's; ours has 3).

Reported: seconds, tokens/s, the ratios, and agreement of the best-match correlations (max |Δ|) between 1 and 3.
Writes ``benchmarks/results/universality.json`` and ``universality.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from neuron_lib import artifacts  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def original_pair(
    model_a, model_b, dataset, n_rows: int, batch_size: int, drop_ids, rotate: int | None = None
) -> dict[str, np.ndarray]:
    """One pair the original way: both models forwarded, float64 raw sums on the CPU, corr at the end. ``rotate``:
    the baseline run (the original's separate run per pair): b's activations rotated per layer with this seed."""
    from neuron_lib.correlations_fast import random_rotation
    from neuron_lib.streaming import iter_mlp_activations

    L, d = model_b.cfg.n_layers, model_b.cfg.d_mlp
    R = None if rotate is None else torch.stack([random_rotation(d, rotate + l) for l in range(L)])

    sa = sb = saa = sbb = sab = None
    n = 0
    it_a = iter_mlp_activations(model_a, dataset, batch_size, drop_ids=drop_ids, end_row=n_rows)
    it_b = iter_mlp_activations(model_b, dataset, batch_size, drop_ids=drop_ids, end_row=n_rows)
    for ba, bb in zip(it_a, it_b):
        T = ba.post.shape[-1]
        xa = ba.post.reshape(-1, T).double()
        xb = bb.post.reshape(-1, T).double()
        if R is not None:
            xb = torch.bmm(R, xb.view(L, d, T)).reshape(-1, T)
        if sa is None:
            sa, sb = torch.zeros(xa.shape[0], dtype=torch.float64), torch.zeros(xb.shape[0], dtype=torch.float64)
            saa, sbb = torch.zeros_like(sa), torch.zeros_like(sb)
            sab = torch.zeros(xa.shape[0], xb.shape[0], dtype=torch.float64)
        sa += xa.sum(1)
        sb += xb.sum(1)
        saa += (xa * xa).sum(1)
        sbb += (xb * xb).sum(1)
        sab += xa @ xb.T
        n += T
    ma, mb = sa / n, sb / n
    cov = sab / n - ma[:, None] * mb[None, :]
    sda, sdb = (saa / n - ma**2).clamp_min(0).sqrt(), (sbb / n - mb**2).clamp_min(0).sqrt()
    corr = torch.nan_to_num(cov / (sda[:, None] * sdb[None, :]), nan=0.0, posinf=0.0, neginf=0.0)
    return {"ab": corr.max(1).values.numpy(), "ba": corr.max(0).values.numpy()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=40_000, help="analysis tokens (the dataset's first rows)")
    ap.add_argument("--batch-size", type=int, default=24)
    args = ap.parse_args(argv)

    from neuron_lib import correlations_fast as cf
    from neuron_lib import universality as U
    from neuron_lib.corpus import load_token_dataset
    from neuron_lib.models import load_model, load_tokenizer
    from neuron_lib.streaming import TokenFilter, n_rows_for_tokens
    from neuron_lib.zoo import make_config

    zcfg = make_config("default")
    names = zcfg.model_names()
    _, analysis = zcfg.resolved_datasets()
    missing = [n for n in names if not (artifacts.zoo_model(n) / "config.json").exists()]
    if missing or not analysis.exists():
        raise SystemExit(f"the trained zoo is needed ({missing or analysis} missing): run `make all` first")
    ds, _ = load_token_dataset(analysis)
    n_rows = n_rows_for_tokens(ds, args.tokens)
    drop = TokenFilter().drop_ids(load_tokenizer(names[0]))
    out = {"tokens_requested": args.tokens, "rows": n_rows, "batch_size": args.batch_size, "models": names}
    out["machine"] = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RESULTS_DIR"] = str(Path(tmp) / "results")
        os.environ["DATAFRAMES_DIR"] = str(Path(tmp) / "frames")
        common = dict(token_dataset=str(analysis), batch_size=args.batch_size, max_tokens=args.tokens, progress=False)

        t = time.perf_counter()
        res = U.run_universality(U.UniversalityConfig(models=names, **common))
        out["all_pairs_s"] = time.perf_counter() - t
        out["all_pairs_pass_s"] = res.details["pass_seconds"]  # model loading + the data pass
        n_tokens = int(res.n_tokens)
        ours = {}
        for m in names:
            df = __import__("pandas").read_parquet(
                artifacts.correlation_table_file(artifacts.correlation_table_dir(m, analysis), "parquet")
            )
            ours[m] = df

        t = time.perf_counter()
        for ref in names:
            cf.run_correlations(
                cf.CorrelationConfig(
                    reference_model=ref,
                    other_models=[o for o in names if o != ref],
                    baseline=["rotation"],
                    n_rotations=3,
                    overwrite=True,
                    **common,
                )
            )
        out["reference_vs_others_x5_s"] = time.perf_counter() - t

        models = {n: load_model(n) for n in names}
        t = time.perf_counter()
        worst = 0.0
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                r = original_pair(models[a], models[b], ds, n_rows, args.batch_size, drop)
                original_pair(models[a], models[b], ds, n_rows, args.batch_size, drop, rotate=i)  # its baseline run
                worst = max(worst, float(np.abs(r["ab"] - ours[a][f"max_corr_{b}"].to_numpy()).max()))
                worst = max(worst, float(np.abs(r["ba"] - ours[b][f"max_corr_{a}"].to_numpy()).max()))
        out["original_structure_s"] = time.perf_counter() - t
    out["n_tokens"] = n_tokens
    out["max_abs_diff_best_corr_vs_original"] = worst
    out["speedup_vs_original"] = out["original_structure_s"] / out["all_pairs_s"]
    out["speedup_vs_reference_x5"] = out["reference_vs_others_x5_s"] / out["all_pairs_s"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "universality.json").write_text(json.dumps(out, indent=2) + "\n")
    md = [
        "# All-pairs universality benchmark",
        "",
        f"Five zoo seeds ({', '.join(names)}), {n_tokens:,} filtered analysis tokens ({n_rows} rows), "
        f"batch {args.batch_size}, {out['machine']['threads']} torch threads; one process, the three side by side.",
        "",
        "| workload | seconds | tokens/s | all-pairs is faster by |",
        "|---|---:|---:|---:|",
        f"| all-pairs, one pass (universality: 15 blocks, 3 rotations per ordered pair, rotated / split-half controls) "
        f"| {out['all_pairs_s']:.1f} (pass {out['all_pairs_pass_s']:.1f}) | {n_tokens / out['all_pairs_s']:,.0f} | 1.0x |",
        f"| reference-vs-others x5 (correlations_fast, rotation x3) | {out['reference_vs_others_x5_s']:.1f} | "
        f"{n_tokens / out['reference_vs_others_x5_s']:,.0f} | {out['speedup_vs_reference_x5']:.2f}x |",
        f"| original structure (10 pairs x (real + baseline run), float64 CPU sums) | {out['original_structure_s']:.1f} | "
        f"{n_tokens / out['original_structure_s']:,.0f} | {out['speedup_vs_original']:.2f}x |",
        "",
        f"Best-match correlations agree with the original structure's float64 sums to {worst:.1e} (max |Δ|).",
        "",
    ]
    (RESULTS / "universality.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
