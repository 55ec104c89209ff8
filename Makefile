# Two commands do all the set-up: `make test` and `make demo`.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
# the open-clip extra of pyproject.toml (+ ftfy's wcwidth), torchvision paired with $(TORCH); installed with
# --no-deps into a folder beside the venv: the PyPI torchvision is a CUDA build whose presence in the venv would
# switch transformers' image processors to a backend that cannot import beside the CPU torch. The open_clip tests
# put OPEN_CLIP_DIR on PYTHONPATH of their subprocesses.
TORCHVISION ?= torchvision==0.28.0
OPEN_CLIP_PKGS ?= 'open_clip_torch>=2.24' 'timm>=1.0.17' 'ftfy>=6' wcwidth '$(TORCHVISION)'
OPEN_CLIP_DIR := $(VENV)/extras/open-clip
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
	$(PY) -m pip install --no-deps --upgrade --target $(OPEN_CLIP_DIR) $(OPEN_CLIP_PKGS)
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
