"""Benchmark of zoo training speed: variants of the training step side by side, interleaved.

Every variant trains the default preset's model shape (2 layers, d_model 128, d_mlp 512, 32 rows of 128 tokens
per step) on the embedded corpus's train split for the same ``--steps`` steps, through ``zoo.train_step``
(the step the zoo runs), with the default preset's optimiser and a schedule shortened to ``--steps`` (warm-up
50, cosine to the end). Variants (``--variants``; default all):

- ``fp32``: today's zoo step (fp32, torch's default AdamW = the for-loop kernel on CPU), torch's threads;
- ``fp32-seed2``: the same with another seed (init and data order) — the seed-to-seed noise of the held-out
  loss; ``fp32-seed3`` a third seed;
- ``foreach`` / ``fused``: ``ZooConfig.adamw_impl`` (same algorithm, other kernels);
- ``bf16-autocast`` (+ ``-fused``): ``ZooConfig.precision``;
- ``fp32-1thread`` / ``fp32-2threads``: ``torch.set_num_threads`` around its chunks (1 is what each job gets
  with ``--jobs 2`` on 2 cores);
- ``compile``: ``torch.compile`` of the model (inductor); its first chunk holds the compilation, reported
  separately and excluded from its tokens/s.

The 2 cores of the machine this was written for are shared, so the variants run round-robin in chunks of
``--chunk`` steps (A, B, C, ..., A, B, C, ...): load changes hit every variant alike. Each variant's first
chunk is warm-up and not timed. Per round, every variant's chunk time is compared with the fp32 chunk of
the same round; the table gives the median of those ratios and their spread (noise). The held-out loss is
``zoo.held_out_loss`` (fp32, no autocast) on ``--eval-rows`` rows of the analysis split after the last step,
i.e. at equal tokens.

Run: ``OMP_NUM_THREADS=2 python benchmarks/bench_zoo_speed.py`` (DATASET_DIR as for the zoo; the corpus must
be built) → ``benchmarks/results/zoo_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

VARIANTS: dict[str, dict] = {
    "fp32": {},
    "fp32-seed2": {"seed": 49},
    "fp32-seed3": {"seed": 81},
    "foreach": {"adamw_impl": "foreach"},
    "fused": {"adamw_impl": "fused"},
    "bf16-autocast": {"precision": "bf16-autocast"},
    "bf16-autocast-fused": {"precision": "bf16-autocast", "adamw_impl": "fused"},
    "fp32-1thread": {"threads": 1},
    "fp32-2threads": {"threads": 2},
    "compile": {"compile": True},
}


@dataclasses.dataclass
class Run:
    name: str
    cfg: object
    seed: int
    threads: int
    model: object
    step_fn: object
    optimizer: object
    step: int = 0
    chunk_seconds: list = dataclasses.field(default_factory=list)
    chunk_cpu: list = dataclasses.field(default_factory=list)
    error: str = ""


def make_run(name: str, spec: dict, steps: int, vocab: int, ctx: int, default_threads: int):
    import torch

    from neuron_lib import zoo

    fields = {k: v for k, v in spec.items() if k in ("precision", "adamw_impl")}
    cfg = zoo.make_config("default", max_steps=steps, **fields)
    seed = spec.get("seed", zoo.STANFORD_SEEDS[0])
    model = zoo.build_model(cfg, vocab, ctx, seed)
    model.train()
    optimizer = zoo._optimizer(model, cfg)
    step_model = torch.compile(model) if spec.get("compile") else model
    return Run(name, cfg, seed, spec.get("threads", default_threads), model, step_model, optimizer)


def run_chunk(run: Run, train_tokens, k: int) -> None:
    import torch

    from neuron_lib import zoo

    torch.set_num_threads(run.threads)
    n_rows = len(train_tokens)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(k):
        batch = train_tokens[zoo.batch_rows(run.seed, run.step, run.cfg.batch_size, n_rows)]
        loss = zoo.train_step(run.step_fn, run.optimizer, batch, run.cfg, run.step)
        loss.item()
        run.step += 1
    run.chunk_seconds.append(time.perf_counter() - t0)
    run.chunk_cpu.append(time.process_time() - c0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--chunk", type=int, default=10)
    parser.add_argument("--eval-rows", type=int, default=256)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default=str(RESULTS / "zoo_speed"))
    args = parser.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    if "fp32" not in names:
        names.insert(0, "fp32")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or args.steps % args.chunk or args.steps // args.chunk < 2:
        raise SystemExit(f"unknown variants {unknown} or --steps not a multiple (>= 2x) of --chunk")

    import torch
    from transformers import AutoTokenizer

    from neuron_lib import artifacts, zoo
    from neuron_lib.corpus import load_token_dataset

    train_path, analysis_path = zoo.make_config("default").resolved_datasets()
    train_ds, train_manifest = load_token_dataset(train_path)
    analysis_ds, _ = load_token_dataset(analysis_path)
    train_tokens = train_ds[:]["tokens"]
    eval_tokens = analysis_ds[: args.eval_rows]["tokens"]
    tokenizer = AutoTokenizer.from_pretrained(train_manifest.get("tokenizer_dir") or artifacts.tokenizer_dir())
    ctx = train_tokens.shape[1]
    default_threads = torch.get_num_threads()
    runs = [make_run(n, VARIANTS[n], args.steps, len(tokenizer), ctx, default_threads) for n in names]
    tokens_per_step = runs[0].cfg.batch_size * (ctx - 1)
    print(f"{len(runs)} variants x {args.steps} steps, chunks of {args.chunk}, {default_threads} threads", flush=True)

    t_start = time.time()
    for r in range(args.steps // args.chunk):
        for run in runs:
            if run.error:
                continue
            try:
                run_chunk(run, train_tokens, args.chunk)
            except Exception as exc:  # a variant that does not work here (e.g. compile) is reported, not fatal
                run.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        line = " ".join(
            f"{run.name}={run.chunk_seconds[-1]:.1f}s/{run.chunk_cpu[-1]:.1f}cpu" for run in runs if not run.error
        )
        print(f"round {r + 1}: {line}", flush=True)

    base = runs[0]
    rows = []
    for run in runs:
        row = {"variant": run.name, "seed": run.seed, "threads": run.threads, **VARIANTS[run.name]}
        if run.error:
            rows.append({**row, "error": run.error})
            continue
        timed = run.chunk_seconds[1:]
        ratios = [b / v for b, v in zip(base.chunk_seconds[1:], timed)]
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        loss = zoo.held_out_loss(run.model, eval_tokens, run.cfg.batch_size, torch.device("cpu"))
        rows.append(
            {
                **row,
                "tokens_per_s": len(timed) * args.chunk * tokens_per_step / sum(timed),
                "cpu_s_per_step": sum(run.chunk_cpu[1:]) / (len(timed) * args.chunk),
                "ratio_median": statistics.median(ratios),
                "ratio_q25": q[0],
                "ratio_q75": q[2],
                "first_chunk_s": run.chunk_seconds[0],
                "held_out_loss": loss,
            }
        )
    base_loss = next(r["held_out_loss"] for r in rows if r["variant"] == "fp32")
    seed_losses = [r["held_out_loss"] for r in rows if r["variant"].startswith("fp32") and "seed" in r["variant"]]
    seed_losses.append(base_loss)
    for row in rows:
        if "held_out_loss" in row:
            row["delta_loss_vs_fp32"] = row["held_out_loss"] - base_loss
    result = {
        "steps": args.steps,
        "chunk": args.chunk,
        "tokens_per_step": tokens_per_step,
        "tokens_each": args.steps * tokens_per_step,
        "eval_rows": args.eval_rows,
        "default_threads": default_threads,
        "wall_seconds": time.time() - t_start,
        "seed_loss_sd": statistics.stdev(seed_losses) if len(seed_losses) > 1 else None,
        "seed_loss_range": max(seed_losses) - min(seed_losses),
        "load_average_end": os.getloadavg(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [
        f"{args.steps} steps x {tokens_per_step} tokens per variant, interleaved in chunks of {args.chunk}; "
        f"{default_threads} threads by default; wall {result['wall_seconds']:.0f} s; load average at the end "
        f"{result['load_average_end'][0]:.1f}",
        "",
        "| variant | tokens/s | ratio vs fp32 (median, IQR over rounds) | CPU s/step | first chunk s "
        "| held-out loss | Δ vs fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['variant']} | failed: {row['error']} | | | | | |")
            continue
        lines.append(
            f"| {row['variant']} | {row['tokens_per_s']:,.0f} | {row['ratio_median']:.2f} "
            f"({row['ratio_q25']:.2f}–{row['ratio_q75']:.2f}) | {row['cpu_s_per_step']:.2f} "
            f"| {row['first_chunk_s']:.1f} | {row['held_out_loss']:.4f} | {row['delta_loss_vs_fp32']:+.4f} |"
        )
    lines.append("")
    lines.append(
        f"Seed-to-seed noise of the fp32 held-out loss ({len(seed_losses)} seeds): SD "
        f"{result['seed_loss_sd']:.4f}, range {result['seed_loss_range']:.4f}."
    )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
