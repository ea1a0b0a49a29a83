"""Why the default zoo is what it is: universality statistics against training length and configuration.

Each row is one set of seed models (same configuration, different seeds) read at one point of training:
model ``a`` is correlated against the others on the held-out analysis split, with K seeded orthogonal
rotations as the baseline, using the same engine as ``make all`` (neuron_lib.correlations_fast).

Rows come from the hub-format snapshots that ``python -m neuron_lib.zoo train --snapshot-steps 300,600``
leaves in ``models/zoo/{name}/snapshots/{name}-step{N}`` and from the finished models, so the training-length
study costs no extra training. Another configuration is a second zoo trained with ``--name-prefix``.

    python benchmarks/zoo_exploration.py [--prefixes zoo-gpt2] [--max-tokens 200000] [--n-rotations 3]

Writes benchmarks/results/zoo_exploration.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neuron_lib import artifacts  # noqa: E402
from neuron_lib.common import atomic_write_json, atomic_write_text, read_json  # noqa: E402
from neuron_lib.correlations_fast import CorrelationConfig, run_correlations  # noqa: E402


def model_sets(prefix: str) -> list[tuple[str, list[Path]]]:
    """(label, model folders a..e) for every snapshot step present in all seeds, then the final models."""
    zoo = artifacts.zoo_root()
    finals = sorted(p for p in zoo.glob(f"{prefix}-?") if (p / "manifest.json").exists())
    if len(finals) < 2:
        return []
    steps = set.intersection(
        *[{s.name.rsplit("-step", 1)[1] for s in (f / "snapshots").glob("*-step*")} for f in finals]
    )
    sets = [
        (f"{prefix} @ step {s}", [f / "snapshots" / f"{f.name}-step{s}" for f in finals])
        for s in sorted(steps, key=int)
    ]
    final_steps = read_json(finals[0] / "manifest.json")["steps"]
    return sets + [(f"{prefix} @ step {final_steps} (final)", finals)]


def loss_and_tokens(folder: Path) -> tuple[float, int]:
    if (folder / "snapshot.json").exists():
        info = read_json(folder / "snapshot.json")
        return info["held_out_loss"], info["tokens_seen"]
    info = read_json(folder / "manifest.json")
    return info["held_out_loss"], info["tokens_seen"]


def row_statistics(label: str, folders: list[Path], table: pd.DataFrame, seconds: float) -> dict:
    losses, tokens = zip(*(loss_and_tokens(f) for f in folders))
    cfg = json.loads((folders[0] / "config.json").read_text())
    excess = table["excess_corr"].to_numpy()
    row = {
        "models": label,
        "config": f"L{cfg['n_layer']} d{cfg['n_embd']} mlp{cfg['n_inner']} V{cfg['vocab_size']} ctx{cfg['n_positions']}",
        "tokens_per_model": int(tokens[0]),
        "held_out_loss": float(np.mean(losses)),
        "median_max_corr": float(table["mean_corr"].median()),
        "median_rotation_baseline": float(table["mean_baseline"].median()),
        "excess_q50": float(np.quantile(excess, 0.5)),
        "excess_q99": float(np.quantile(excess, 0.99)),
        "excess_max": float(excess.max()),
        "share_excess_gt_0.5": float((excess > 0.5).mean()),
        "share_excess_gt_0.3": float((excess > 0.3).mean()),
        "share_universal_z": float(table["is_universal_z"].mean()),
        "correlation_seconds": seconds,
    }
    for layer, part in table.groupby("layer"):
        row[f"median_baseline_L{layer}"] = float(part["mean_baseline"].median())
        row[f"excess_q99_L{layer}"] = float(np.quantile(part["excess_corr"], 0.99))
    return row


def to_markdown(rows: list[dict], meta: dict) -> str:
    cols = [
        "models",
        "config",
        "tokens_per_model",
        "held_out_loss",
        "median_max_corr",
        "median_rotation_baseline",
        "excess_q50",
        "excess_q99",
        "excess_max",
        "share_excess_gt_0.5",
        "share_excess_gt_0.3",
        "share_universal_z",
    ]
    lines = [
        "# Zoo exploration",
        "",
        f"Correlations of model a vs the other seeds over {meta['max_tokens']:,} held-out tokens "
        f"(BOS and newline dropped), {meta['n_rotations']} seeded orthogonal rotations per model, "
        f"z-criterion: mean rotation z > {meta['z_threshold']}. Unigram entropy of the analysis split: "
        f"{meta['unigram_entropy']:.3f} nats.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        cells = [
            f"{r[c]:.3f}"
            if isinstance(r[c], float) and not c.startswith("share")
            else (
                f"{100 * r[c]:.1f} %"
                if c.startswith("share")
                else (f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]))
            )
            for c in cols
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefixes", default="zoo-gpt2", help="comma-separated zoo name prefixes")
    parser.add_argument("--max-tokens", type=int, default=200_000)
    parser.add_argument("--n-rotations", type=int, default=3)
    parser.add_argument("--z-threshold", type=float, default=3.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "zoo_exploration"))
    args = parser.parse_args()

    from neuron_lib.zoo import make_config

    _, analysis = make_config().resolved_datasets()
    unigram = read_json(analysis / "manifest.json").get("unigram_entropy_nats", float("nan"))
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for prefix in args.prefixes.split(","):
            for label, folders in model_sets(prefix):
                print(f"\n=== {label}", flush=True)
                t0 = time.time()
                cfg = CorrelationConfig(
                    reference_model=str(folders[0]),
                    other_models=[str(f) for f in folders[1:]],
                    token_dataset=str(analysis),
                    baseline=["rotation"],
                    n_rotations=args.n_rotations,
                    max_tokens=args.max_tokens,
                    z_threshold=args.z_threshold,
                    progress=False,
                )
                os.environ.update(RESULTS_DIR=f"{work}/results", DATAFRAMES_DIR=f"{work}/frames")
                result = run_correlations(cfg)
                rows.append(row_statistics(label, folders, pd.read_csv(result.outputs["table"]), time.time() - t0))
                print(json.dumps(rows[-1], indent=1))
    meta = {
        "max_tokens": args.max_tokens,
        "n_rotations": args.n_rotations,
        "z_threshold": args.z_threshold,
        "unigram_entropy": unigram,
        "analysis_dataset": str(analysis),
    }
    atomic_write_json(Path(args.out).with_suffix(".json"), {"meta": meta, "rows": rows})
    atomic_write_text(Path(args.out).with_suffix(".md"), to_markdown(rows, meta))
    print(to_markdown(rows, meta))


if __name__ == "__main__":
    main()
