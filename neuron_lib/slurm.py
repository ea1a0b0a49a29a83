"""Run the pipeline on a Slurm cluster: one sbatch array job per heavy stage, chained with afterok.

    python -m neuron_lib.slurm submit --dry-run          # print the sbatch commands (a shell script)
    python -m neuron_lib.slurm submit --preset gpu       # submit zoo -> correlations/weights/summary -> neuron_df, prompts -> coactivation -> perturb, then figures
    python -m neuron_lib.slurm wait                      # poll until the last submission ends; report failures
    python -m neuron_lib.slurm status [JOBID ...]        # one look: states, exit codes, failed tasks and their logs

The stages, their order, dependencies, array items and which a plain ``submit`` includes come from the
pipeline's stage table (``neuron_lib.pipeline.STAGES``); each heavy stage names its script ``slurm/<script>.sbatch``,
which runs the same ``python -m neuron_lib.<name>`` command as a local run, so both write the same files. A script
confirms which stage it runs in one ``#NL-STAGE name=<stage>`` line; adding a stage is a row in the table plus
its script.

Resources come from the environment, per stage first: ``NL_<STAGE>_<KEY>`` then ``NL_<KEY>``
(``NL_PARTITION``, ``NL_ACCOUNT``, ``NL_QOS``, ``NL_GPUS`` (1), ``NL_GPU_TYPE``, ``NL_CPUS`` (8),
``NL_MEM`` (32G), ``NL_TIME`` (12:00:00), ``NL_SBATCH_ARGS``); an empty value leaves the option out.
Job states come from ``scontrol show job`` (``sacct`` needs slurmdbd, which many small clusters lack).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from neuron_lib import artifacts, criteria
from neuron_lib.common import (
    NeuronLibError,
    add_config_arguments,
    atomic_write_json,
    config_field,
    config_from_args,
    run_cli,
)

REPO_ROOT = artifacts.repo_root()
ROOT_VARS = tuple(artifacts.ROOTS)
RESOURCE_DEFAULTS = {
    "PARTITION": "",
    "ACCOUNT": "",
    "QOS": "",
    "GPUS": "1",
    "GPU_TYPE": "",
    "CPUS": "8",
    "MEM": "32G",
    "TIME": "12:00:00",
    "SBATCH_ARGS": "",
    "ARRAY_LIMIT": "",
    "SIGNAL_SECONDS": "90",
}
SBATCH_RESOURCES = ("PARTITION", "ACCOUNT", "QOS", "GPUS", "GPU_TYPE", "CPUS", "MEM", "TIME", "SBATCH_ARGS")
LAST_SUBMIT = "last_submit.json"

TERMINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
    "REVOKED",
    "SPECIAL_EXIT",
}
# a pending job that can never start (when the cluster does not honour --kill-on-invalid-dep)
STUCK_REASONS = {"DependencyNeverSatisfied"}


# ---------------------------------------------------------------- stages (from the pipeline's table)
@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    script: Path
    items: tuple[str, ...]  # env vars whose comma lists the array runs over (product)
    after: tuple[str, ...]
    default: bool


def repo_root() -> Path:
    root = Path(os.environ.get("NL_REPO") or REPO_ROOT).resolve()
    if not (root / "slurm" / "common.sh").exists():
        raise NeuronLibError(
            f"{root} has no slurm/common.sh; set NL_REPO to the neuron_lib checkout (the folder with slurm/ and .venv/)"
        )
    return root


def script_stage_name(script: Path) -> str | None:
    """The stage a script says it runs: its ``#NL-STAGE name=...`` line (checked against the table)."""
    match = re.search(r"^#NL-STAGE\s+name=(\S+)", script.read_text(), re.M)
    return match.group(1) if match else None


def cluster_stages(root: Path | None = None) -> dict[str, Stage]:
    """The pipeline's stages that have an sbatch script, in the table's order (``pipeline.STAGES``).

    Dependencies on stages without a script (the corpus, built where ``submit`` runs) are dropped.
    """
    from neuron_lib.pipeline import STAGES

    root = root or repo_root()
    with_script = {s.name for s in STAGES if s.sbatch}
    out: dict[str, Stage] = {}
    for s in STAGES:
        if not s.sbatch:
            continue
        script = root / "slurm" / s.sbatch
        if not script.exists():
            raise NeuronLibError(f"stage {s.name}: its sbatch script {script} is missing")
        declared = script_stage_name(script)
        if declared != s.name:
            raise NeuronLibError(
                f"{script} declares stage {declared!r}, but the pipeline's table runs stage {s.name!r} "
                "with it; fix its #NL-STAGE line"
            )
        out[s.name] = Stage(s.name, script, s.items, tuple(a for a in s.after if a in with_script), s.default)
    return out


# ---------------------------------------------------------------- what to submit
@dataclasses.dataclass
class SubmitConfig:
    models: str = config_field("", "comma list of model names or zoo letters; empty = the whole zoo of the preset")
    preset: str = config_field("default", "zoo preset (neuron_lib.zoo PRESETS)")
    name_prefix: str = config_field("", "zoo name prefix; empty = the zoo's default")
    train_dataset: str = config_field("", "zoo training data; empty = the embedded default")
    analysis_dataset: str = config_field("", "zoo held-out data; empty = the embedded default")
    token_datasets: str = config_field(
        "", "datasets the statistics run on (comma list); empty = the zoo's analysis set"
    )
    reference_models: str = config_field("", "correlation references and figure models; empty = the first model")
    stages: str = config_field("", "stages to submit (comma list); empty = every default stage")
    skip: str = config_field("", "stages to leave out (their outputs exist already)")
    neurons: str = config_field("", "layer.neuron list for the activations stage")
    batch_size: int = config_field(0, "summary batch size; 0 = the module's default")
    after: str = config_field("", "job ids the first jobs wait for (afterok)")
    log_dir: str = config_field("", "where logs go; empty = $NL_LOG_DIR or slurm/logs")
    job_prefix: str = config_field("", "job names are PREFIX-STAGE; empty = $NL_JOB_PREFIX or nl")
    dry_run: bool = config_field(False, "print the sbatch commands (a bash script) without submitting")


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _abs(path: str) -> str:
    return str(Path(path).expanduser().absolute()) if path else ""


def _zoo_config(cfg: SubmitConfig):
    from neuron_lib import zoo

    overrides = {k: getattr(cfg, k) for k in ("name_prefix", "train_dataset", "analysis_dataset") if getattr(cfg, k)}
    return zoo.make_config(cfg.preset, **overrides)


def select_stages(cfg: SubmitConfig, stages: dict[str, Stage]) -> list[str]:
    wanted = _split(cfg.stages) or [n for n, s in stages.items() if s.default]
    unknown = [s for s in wanted + _split(cfg.skip) if s not in stages]
    if unknown:
        raise NeuronLibError(f"unknown stages {unknown}; stages: {', '.join(stages)}")
    return [n for n in stages if n in wanted and n not in _split(cfg.skip)]


def job_environment(cfg: SubmitConfig, selected: list[str]) -> dict[str, str]:
    """The NL_* variables every job of one submission reads (exported to the jobs with --export=ALL)."""
    from neuron_lib.zoo import untrained_control_paths

    zoo_cfg = _zoo_config(cfg)
    zoo_names = zoo_cfg.model_names()
    models = []
    for m in _split(cfg.models) or zoo_names:
        if len(m) == 1 and m.isalpha():  # a zoo letter
            matches = [n for n in zoo_names if n.endswith(f"-{m}")]
            if not matches:
                raise NeuronLibError(
                    f"zoo letter {m!r} is beyond this zoo ({', '.join(zoo_names)}); add seeds or pick another letter"
                )
            m = matches[0]
        elif "zoo" in selected and m not in zoo_names:
            raise NeuronLibError(
                f"{m!r} is not a model of this zoo (preset {cfg.preset}: {', '.join(zoo_names)}); "
                "pass zoo letters or names, or --skip zoo for models that exist already"
            )
        models.append(m)
    if len(set(models)) != len(models):
        raise NeuronLibError(f"models repeat: {models}")
    _, analysis = zoo_cfg.resolved_datasets()
    all_zoo = all(m in zoo_names for m in models)
    datasets = [_abs(d) for d in _split(cfg.token_datasets)] or [_abs(str(analysis))]
    refs = _split(cfg.reference_models) or models[:1]
    if "activations" in selected and not cfg.neurons:
        raise NeuronLibError("the activations stage needs --neurons (layer.neuron list, e.g. 0.1,1.2)")
    env = {
        "NL_REPO": str(repo_root()),
        "NL_MODELS": ",".join(models),
        "NL_REFERENCE_MODELS": ",".join(refs),
        "NL_DATASETS": ",".join(datasets),
        "NL_TOKEN_DATASET": datasets[0],
        "NL_PRESET": cfg.preset,
        "NL_NAME_PREFIX": cfg.name_prefix,
        "NL_TRAIN_DATASET": _abs(cfg.train_dataset),
        "NL_ANALYSIS_DATASET": _abs(cfg.analysis_dataset),
        "NL_NEURONS": cfg.neurons,
        "NL_BATCH_SIZE": str(cfg.batch_size) if cfg.batch_size else "",
        # the figures' universality criterion, as the local pipeline draws them (criteria.FIGURE_CRITERION)
        "NL_UNIVERSAL_CRITERION": os.environ.get("NL_UNIVERSAL_CRITERION") or criteria.FIGURE_CRITERION,
        # the universality stage's control worlds, for a set of this zoo's models (pipeline.stage_commands)
        "NL_UNTRAINED_MODELS": ",".join(_abs(str(p)) for p in untrained_control_paths(zoo_cfg)) if all_zoo else "",
        "NL_SNAPSHOT_STEPS": ",".join(map(str, zoo_cfg.snapshot_steps)) if all_zoo else "",
    }
    # the jobs cd to NL_REPO: pin output roots given relative to where `submit` ran
    for var in ROOT_VARS:
        if os.environ.get(var):
            env[var] = _abs(os.environ[var])
    return env


def resource(stage: str, key: str, env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    specific = f"NL_{stage.upper()}_{key}"
    if specific in env:
        return env[specific]
    return env.get(f"NL_{key}", RESOURCE_DEFAULTS[key])


def resource_options(stage: str, env: dict[str, str] | None = None) -> list[str]:
    """sbatch options for one stage's resources (empty values are left out)."""
    r = {k: resource(stage, k, env).strip() for k in SBATCH_RESOURCES}
    opts = []
    for key, flag in (
        ("PARTITION", "--partition"),
        ("ACCOUNT", "--account"),
        ("QOS", "--qos"),
        ("CPUS", "--cpus-per-task"),
        ("MEM", "--mem"),
        ("TIME", "--time"),
    ):
        if r[key]:
            opts.append(f"{flag}={r[key]}")
    if r["GPUS"] and r["GPUS"] != "0":
        opts.append(f"--gres=gpu:{r['GPU_TYPE'] + ':' if r['GPU_TYPE'] else ''}{r['GPUS']}")
    opts += shlex.split(r["SBATCH_ARGS"])
    return opts


def array_size(stage: Stage, env: dict[str, str]) -> int:
    n = 1
    for var in stage.items:
        n *= len(_split(env.get(var, "")))
    return n


def log_dir(cfg_dir: str = "") -> Path:
    return Path(cfg_dir or os.environ.get("NL_LOG_DIR") or repo_root() / "slurm" / "logs").absolute()


def sbatch_argv(
    stage: Stage, n_tasks: int, dependencies: list[str], logs: Path, job_prefix: str, env: dict[str, str] | None = None
) -> list[str]:
    env = os.environ if env is None else env
    limit = resource(stage.name, "ARRAY_LIMIT", env)  # at most this many tasks at once
    argv = [
        "sbatch",
        "--parsable",
        f"--job-name={job_prefix}-{stage.name}",
        f"--array=0-{n_tasks - 1}" + (f"%{limit}" if limit else ""),
        f"--output={logs}/%x-%A_%a.out",
        "--open-mode=append",
        "--requeue",
        f"--signal=B:USR1@{resource(stage.name, 'SIGNAL_SECONDS', env)}",
        "--kill-on-invalid-dep=yes",
        "--export=ALL",
        f"--chdir={repo_root()}",
    ]
    argv += resource_options(stage.name, env)
    if dependencies:
        argv.append("--dependency=afterok:" + ":".join(dependencies))
    argv.append(str(stage.script))
    return argv


@dataclasses.dataclass
class PlannedJob:
    stage: Stage
    n_tasks: int
    after: list[str]  # stage names among the submitted ones


def plan(cfg: SubmitConfig) -> tuple[list[PlannedJob], dict[str, str]]:
    stages = cluster_stages()
    selected = select_stages(cfg, stages)
    env = job_environment(cfg, selected)
    jobs = []
    for name in selected:
        stage = stages[name]
        n = array_size(stage, env)
        if n == 0:
            raise NeuronLibError(f"stage {name}: nothing to run ({' x '.join(stage.items)} is empty)")
        jobs.append(PlannedJob(stage, n, [a for a in stage.after if a in selected]))
    return jobs, env


def _render(argv: list[str]) -> str:
    return " ".join(f'"{a}"' if "$" in a else shlex.quote(a) for a in argv)


def submit(cfg: SubmitConfig, out=sys.stdout) -> dict[str, str]:
    """Submit (or with dry_run print) one array job per stage; returns stage -> job id."""
    jobs, job_env = plan(cfg)
    logs = log_dir(cfg.log_dir)
    prefix = cfg.job_prefix or os.environ.get("NL_JOB_PREFIX", "nl")
    external = _split(cfg.after)
    sub_env = {**os.environ, **job_env}
    if cfg.dry_run:
        print(
            "#!/usr/bin/env bash\n# neuron_lib pipeline on Slurm (dry run: these are the commands `submit` runs)",
            file=out,
        )
        print(f"mkdir -p {shlex.quote(str(logs))}", file=out)
        for k, v in job_env.items():
            print(f"export {k}={shlex.quote(v)}", file=out)
        for job in jobs:
            deps = [f"${{{d.upper()}_JOB}}" for d in job.after] or external
            argv = sbatch_argv(job.stage, job.n_tasks, deps, logs, prefix, sub_env)
            print(f"{job.stage.name.upper()}_JOB=$({_render(argv)})  # {job.n_tasks} task(s)", file=out)
        return {}
    logs.mkdir(parents=True, exist_ok=True)
    ids: dict[str, str] = {}
    for job in jobs:
        deps = [ids[d] for d in job.after] or external
        argv = sbatch_argv(job.stage, job.n_tasks, deps, logs, prefix, sub_env)
        try:
            result = subprocess.run(argv, env=sub_env, capture_output=True, text=True)
        except FileNotFoundError:
            raise NeuronLibError("sbatch is not on PATH: run this on a Slurm login node") from None
        if result.returncode != 0:
            msg = f"sbatch for stage {job.stage.name} failed: {result.stderr.strip() or result.stdout.strip()}"
            if ids:
                msg += f"; already submitted: {ids} (cancel them with: scancel {' '.join(ids.values())})"
            raise NeuronLibError(msg)
        ids[job.stage.name] = result.stdout.strip().split(";")[0]
        edge = f" after {','.join(deps)}" if deps else ""
        print(
            f"{prefix}-{job.stage.name}: job {ids[job.stage.name]} ({job.n_tasks} task(s)){edge}", file=out, flush=True
        )
    atomic_write_json(
        logs / LAST_SUBMIT, {"jobs": ids, "log_dir": str(logs), "submitted_unix": time.time(), "env": job_env}
    )
    print(
        f"jobs: {' '.join(f'{k}={v}' for k, v in ids.items())}\nlogs: {logs}\n"
        f"follow with: python -m neuron_lib.slurm wait {' '.join(ids.values())}",
        file=out,
        flush=True,
    )
    return ids


# ---------------------------------------------------------------- job states via scontrol
_FIELD = re.compile(r"(\S+?)=(.*?)(?=\s+\S+?=|\s*$)")


def parse_scontrol(text: str) -> list[dict[str, str]]:
    """Records of ``scontrol -o show job`` (one line per job or array task)."""
    return [dict(_FIELD.findall(line.strip())) for line in text.splitlines() if line.strip().startswith("JobId=")]


def show_job(job_id: str) -> list[dict[str, str]] | None:
    """The records of one job (all tasks of an array); None when slurmctld no longer knows it."""
    try:
        result = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True)
    except FileNotFoundError:
        raise NeuronLibError("scontrol is not on PATH: run this on a Slurm login node") from None
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return None
        raise NeuronLibError(f"scontrol show job {job_id} failed: {result.stderr.strip()}")
    return parse_scontrol(result.stdout)


def _count_tasks(spec: str) -> int:
    spec = spec.split("%")[0]
    n = 0
    for part in filter(None, spec.split(",")):
        if "-" in part:
            lo, hi = part.split("-")[:2]
            step = int(hi.split(":")[1]) if ":" in hi else 1
            n += len(range(int(lo), int(hi.split(":")[0]) + 1, step))
        else:
            n += 1
    return n


def log_path(record: dict[str, str]) -> str:
    path = record.get("StdOut", "")
    if "%" in path:
        task = record.get("ArrayTaskId", "")
        path = (
            path.replace("%x", record.get("JobName", ""))
            .replace("%A", record.get("ArrayJobId", record.get("JobId", "")))
            .replace("%a", task)
            .replace("%j", record.get("JobId", ""))
        )
    return path


def is_finished(record: dict[str, str]) -> bool:
    return record.get("JobState") in TERMINAL_STATES or record.get("Reason") in STUCK_REASONS


@dataclasses.dataclass
class JobReport:
    job_id: str
    name: str
    records: list[dict[str, str]] | None  # None: purged from slurmctld

    @property
    def finished(self) -> bool:
        return self.records is None or all(is_finished(r) for r in self.records)

    @property
    def ok(self) -> bool:
        return self.records is not None and all(r.get("JobState") == "COMPLETED" for r in self.records)

    def state(self) -> str:
        if self.records is None:
            return "UNKNOWN"
        states = [r.get("JobState", "?") for r in self.records]
        for bad in (
            "FAILED",
            "TIMEOUT",
            "OUT_OF_MEMORY",
            "NODE_FAIL",
            "BOOT_FAIL",
            "DEADLINE",
            "CANCELLED",
            "PREEMPTED",
        ):
            if bad in states:
                return bad
        if any(r.get("Reason") in STUCK_REASONS for r in self.records):
            return "NEVER_RUNS"
        for s in ("RUNNING", "COMPLETING", "REQUEUED", "PENDING"):
            if s in states:
                return s
        return states[0] if len(set(states)) == 1 else "MIXED"

    def failed_tasks(self) -> list[dict[str, str]]:
        return [r for r in self.records or [] if is_finished(r) and r.get("JobState") != "COMPLETED"]

    def lines(self) -> list[str]:
        if self.records is None:
            return [f"{self.name:<16} {self.job_id:>8}  UNKNOWN  (no longer known to slurmctld; read its logs)"]
        total = sum(_count_tasks(r.get("ArrayTaskId", "0")) for r in self.records)
        done = sum(_count_tasks(r.get("ArrayTaskId", "0")) for r in self.records if r.get("JobState") == "COMPLETED")
        out = [f"{self.name:<16} {self.job_id:>8}  {self.state():<10} {done}/{total} task(s) completed"]
        for r in sorted(self.failed_tasks(), key=lambda r: r.get("ArrayTaskId", "")):
            reason = r.get("Reason", "None")
            if reason in STUCK_REASONS or (r.get("JobState") == "CANCELLED" and "Dependency" in reason):
                out.append(
                    f"    task {r.get('ArrayTaskId', '-')}: {r.get('JobState')} ({reason}): never ran because a job "
                    f"it depends on ({r.get('Dependency', '?')}) failed"
                )
            else:
                restarts = f", restarts {r['Restarts']}" if r.get("Restarts", "0") != "0" else ""
                out.append(
                    f"    task {r.get('ArrayTaskId', '-')} (job {r.get('JobId')}): {r.get('JobState')} exit "
                    f"{r.get('ExitCode', '?')} ({reason}{restarts})  log: {log_path(r)}"
                )
        return out


def load_last_submit(logs: Path | None = None) -> dict:
    path = (logs or log_dir()) / LAST_SUBMIT
    if not path.exists():
        raise NeuronLibError(f"no job ids given and no {path}: pass job ids, or submit first")
    return json.loads(path.read_text())


def _named_ids(job_ids: list[str], logs: Path | None = None) -> list[tuple[str, str]]:
    if job_ids:
        return [(j, j) for j in job_ids]
    return [(f"{name}", jid) for name, jid in load_last_submit(logs)["jobs"].items()]


def collect(named: list[tuple[str, str]], previous: dict[str, JobReport] | None = None) -> dict[str, JobReport]:
    reports = {}
    for name, jid in named:
        records = show_job(jid)
        if records is None and previous and previous.get(jid) and previous[jid].records is not None:
            records = previous[jid].records  # purged after finishing: keep what we saw last
        if records and name == jid:
            name = records[0].get("JobName", jid)
        reports[jid] = JobReport(jid, name, records)
    return reports


def tail(path: str, n: int) -> list[str]:
    try:
        return Path(path).read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def print_report(reports: dict[str, JobReport], tail_lines: int = 0, out=sys.stdout) -> bool:
    for rep in reports.values():
        for line in rep.lines():
            print(line, file=out)
        if tail_lines:
            for r in rep.failed_tasks():
                if r.get("JobState") == "CANCELLED" and "Dependency" in r.get("Reason", ""):
                    continue
                for text in tail(log_path(r), tail_lines):
                    print(f"      | {text}", file=out)
    all_ok = all(r.ok for r in reports.values())
    print(
        "all jobs completed"
        if all_ok
        else "some jobs did not complete"
        if all(r.finished for r in reports.values())
        else "jobs still pending or running",
        file=out,
        flush=True,
    )
    return all_ok


def wait(
    job_ids: list[str],
    poll: float = 10.0,
    timeout: float | None = None,
    tail_lines: int = 5,
    logs: Path | None = None,
    out=sys.stdout,
) -> bool:
    """Poll until every job has ended; print state changes and a final report. True if all completed."""
    named = _named_ids(job_ids, logs)
    start, seen, reports = time.time(), {}, {}
    while True:
        reports = collect(named, reports)
        for jid, rep in reports.items():
            state = rep.state()
            if seen.get(jid) != state:
                print(f"{time.strftime('%H:%M:%S')} {rep.name} ({jid}): {state}", file=out, flush=True)
                seen[jid] = state
        if all(r.finished for r in reports.values()):
            break
        if timeout is not None and time.time() - start > timeout:
            print_report(reports, tail_lines, out)
            raise NeuronLibError(f"timed out after {timeout:.0f} s waiting for jobs {[j for _, j in named]}")
        time.sleep(poll)
    return print_report(reports, tail_lines, out)


def status(job_ids: list[str], tail_lines: int = 0, logs: Path | None = None, out=sys.stdout) -> bool:
    reports = collect(_named_ids(job_ids, logs))
    print_report(reports, tail_lines, out)
    return not any(r.failed_tasks() or r.records is None for r in reports.values())


# ---------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neuron_lib.slurm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_submit = sub.add_parser("submit", help="submit the pipeline as sbatch array jobs with afterok dependencies")
    add_config_arguments(p_submit, SubmitConfig)
    for name, helptext in (
        ("wait", "poll until the jobs end; report failed tasks with their logs"),
        ("status", "report the jobs' states once"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("job_ids", nargs="*", help="job ids; default: the last submission (slurm/logs/last_submit.json)")
        p.add_argument("--log-dir", default="", help="where the logs are; default: $NL_LOG_DIR or slurm/logs")
        p.add_argument("--tail", type=int, default=5 if name == "wait" else 0, help="log lines shown per failed task")
        if name == "wait":
            p.add_argument("--poll", type=float, default=10.0, help="seconds between polls")
            p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    args = parser.parse_args(argv)
    if args.command == "submit":
        submit(config_from_args(SubmitConfig, args))
        return
    logs = log_dir(args.log_dir) if args.log_dir else None
    if args.command == "wait":
        ok = wait(args.job_ids, poll=args.poll, timeout=args.timeout, tail_lines=args.tail, logs=logs)
    else:
        ok = status(args.job_ids, tail_lines=args.tail, logs=logs)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    run_cli(main)
