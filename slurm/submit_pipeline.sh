#!/usr/bin/env bash
# Submit the pipeline to Slurm from the repository root: a thin wrapper around
#   python -m neuron_lib.slurm submit "$@"
# using the project's virtualenv ($NL_VENV, default .venv). Examples:
#   slurm/submit_pipeline.sh --dry-run
#   NL_PARTITION=gpu NL_ACCOUNT=mylab slurm/submit_pipeline.sh --preset gpu
# Then: .venv/bin/python -m neuron_lib.slurm wait   (or status)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${NL_VENV:-.venv}
python=${NL_PYTHON:-$venv/bin/python}
[ -x "$python" ] || { echo "no python at $python: run \`make env\` first or set NL_VENV / NL_PYTHON" >&2; exit 2; }
exec "$python" -m neuron_lib.slurm submit "$@"
