# Shared by every slurm/*.sbatch script (sourced, never run on its own).
#
# sbatch copies a job script into slurmd's spool folder before running it, so the scripts cannot
# find this file next to themselves: they source it from $NL_REPO (default: the directory sbatch
# was called from, $SLURM_SUBMIT_DIR). What it does:
#   * cd to the repository root, activate the virtualenv ($NL_VENV, default $NL_REPO/.venv;
#     "none" to skip), run $NL_PYTHON (default python);
#   * NL_OFFLINE=1 (the default, like the original scripts): HF_HUB_OFFLINE, HF_DATASETS_OFFLINE,
#     TRANSFORMERS_OFFLINE, so a compute node never tries the network;
#   * threads = the CPUs Slurm gave the task (OMP_NUM_THREADS etc., unless already set);
#   * nl_item LIST: the array task's item of a comma-separated list, by $SLURM_ARRAY_TASK_ID;
#   * nl_run CMD...: run the stage's python command as a child; on USR1 (sent by
#     --signal=B:USR1@90 before the time limit) stop it and requeue the job, on TERM (scancel,
#     preemption) stop it and exit; the stages' checkpoints let the requeued job continue.
# Set NL_DRY_RUN=1 to print the command instead of running it (tests compare it to the local pipeline).

set -uo pipefail

[ -n "${NL_VENV:-}" ] && _nl_venv_given=1 || _nl_venv_given=""
NL_REPO=${NL_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$NL_REPO" || { echo "nl: error: cannot cd to NL_REPO=$NL_REPO" >&2; exit 2; }
NL_VENV=${NL_VENV:-$NL_REPO/.venv}
NL_PYTHON=${NL_PYTHON:-python}
NL_KILL_WAIT=${NL_KILL_WAIT:-60}  # seconds the python child gets to stop after SIGTERM

_nl_log() { echo "nl[$(date +%H:%M:%S)]: $*"; }
nl_die() { echo "nl: error: $*" >&2; exit 2; }

if [ "${NL_DRY_RUN:-0}" != 1 ] && [ "$NL_VENV" != none ]; then
  if [ -f "$NL_VENV/bin/activate" ]; then
    # shellcheck disable=SC1091
    . "$NL_VENV/bin/activate"
  elif [ -n "$_nl_venv_given" ]; then
    nl_die "no virtualenv at NL_VENV=$NL_VENV (run \`make env\` in $NL_REPO, or point NL_VENV at one)"
  else
    _nl_log "no virtualenv at $NL_VENV; using $(command -v "$NL_PYTHON" || echo "$NL_PYTHON") from PATH"
  fi
fi

if [ "${NL_OFFLINE:-1}" = 1 ]; then
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
fi
_nl_threads=${SLURM_CPUS_PER_TASK:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$_nl_threads} MKL_NUM_THREADS=${MKL_NUM_THREADS:-$_nl_threads}
export PYTHONUNBUFFERED=1

NL_TASK=${NL_ARRAY_INDEX:-${SLURM_ARRAY_TASK_ID:-0}}
if [ "${NL_DRY_RUN:-0}" != 1 ]; then
  _nl_log "job ${SLURM_JOB_ID:-local} (array ${SLURM_ARRAY_JOB_ID:-none} task $NL_TASK) on $(hostname), restart ${SLURM_RESTART_COUNT:-0}"
fi

# nl_split LIST -> the items of a comma-separated list, one per line (empty items dropped)
nl_split() { tr ',' '\n' <<<"${1:-}" | sed '/^[[:space:]]*$/d'; }

# nl_count LIST -> number of items
nl_count() { nl_split "$1" | wc -l | tr -d ' '; }

# nl_item LIST [INDEX] -> item number INDEX (default: this array task's) of LIST, or exit with a message
nl_item() {
  local list=$1 index=${2:-$NL_TASK} n
  n=$(nl_count "$list")
  if ! [[ "$index" =~ ^[0-9]+$ ]] || [ "$index" -ge "$n" ]; then
    nl_die "array index $index is out of range: the list has $n items ($list)"
  fi
  nl_split "$list" | sed -n "$((index + 1))p"
}

# nl_list VAR: the comma list in $VAR, or the lines of the file named by ${VAR}_FILE
nl_list() {
  local var=$1 file_var="${1}_FILE"
  if [ -n "${!file_var:-}" ]; then
    [ -r "${!file_var}" ] || nl_die "$file_var=${!file_var} is not a readable file"
    sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "${!file_var}" | paste -sd, -
  elif [ -n "${!var:-}" ]; then
    echo "${!var}"
  else
    nl_die "$var is empty: set it to a comma list (or $file_var to a file with one item a line)"
  fi
}

_nl_child=""
_nl_stop_child() {
  [ -n "$_nl_child" ] || return 0
  kill -0 "$_nl_child" 2>/dev/null || return 0
  kill -TERM "$_nl_child" 2>/dev/null
  local ticks=0
  while kill -0 "$_nl_child" 2>/dev/null && [ "$ticks" -lt $((NL_KILL_WAIT * 5)) ]; do
    sleep 0.2
    ticks=$((ticks + 1))
  done
  kill -KILL "$_nl_child" 2>/dev/null || true
  wait "$_nl_child" 2>/dev/null || true
}
_nl_on_usr1() {
  _nl_log "caught USR1 (time limit near): stopping the python child, then requeueing job ${SLURM_JOB_ID:-?}"
  _nl_stop_child
  if [ -n "${SLURM_JOB_ID:-}" ] && scontrol requeue "$SLURM_JOB_ID"; then
    _nl_log "requeued job $SLURM_JOB_ID; it continues from its checkpoint when it starts again"
    exit 0
  fi
  _nl_log "could not requeue job ${SLURM_JOB_ID:-?}"
  exit 75
}
_nl_on_term() {
  _nl_log "caught TERM (cancelled or preempted): stopping the python child"
  _nl_stop_child
  exit 143
}

# nl_run CMD...: run CMD as a child of this shell so the traps above can stop it
nl_run() {
  if [ "${NL_DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "$@" | sed 's/ $//'
    echo
    return 0
  fi
  _nl_log "run: $*"
  trap _nl_on_usr1 USR1
  trap _nl_on_term TERM
  "$@" &
  _nl_child=$!
  local rc=0
  wait "$_nl_child" || rc=$?
  # a trapped signal interrupts `wait`; the handlers exit, so reaching here means the child ended
  trap - USR1 TERM
  if [ "$rc" = 0 ]; then
    _nl_log "done"
  else
    _nl_log "FAILED: exit $rc from: $*"
  fi
  return "$rc"
}
