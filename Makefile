# Two commands do all the set-up: `make test` and `make demo`.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
SKIP_SYSTEM_DEPS ?=

export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE := disabled
export TOKENIZERS_PARALLELISM := false

.PHONY: test lint system-deps demo install clean

$(PY):
	SKIP_SYSTEM_DEPS=$(SKIP_SYSTEM_DEPS) PYTHON=$(PYTHON) .ci/system-deps venv
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project's metadata changed (or the torch pin did).
$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install '$(TORCH)'
	$(PY) -m pip install -e '.[test,spark,s3]'
	touch $(STAMP)

install: $(STAMP)

# The lint gate: pyflakes rules (unused imports/variables, undefined names); config in pyproject.toml.
lint: $(STAMP)
	$(PY) -m ruff check .

# Chromium (leaderboard HTML test) and Java (Spark tests): apt-get as root, else a clear message and stop.
system-deps:
	@SKIP_SYSTEM_DEPS=$(SKIP_SYSTEM_DEPS) .ci/system-deps test

# System packages first (fails fast, before pip), then the venv, the lint gate, the suite.
test: system-deps $(STAMP) lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The end-to-end demo on loopback data: download -> curate -> shards -> pre-train -> benchmark -> leaderboard.
DEMO_DIR ?= demo_out
demo: $(STAMP)
	$(PY) -m ccmb demo --workdir $(DEMO_DIR)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info $(DEMO_DIR)
