# The ESN companion book. Two commands on a fresh machine:  make book  ·  make test
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/organism.yml
# NB, CONFIG and PARAMS are user text: keep them unexpanded (a `$(shell ...)` in them stays text) and hand them
# to Python through the environment, quoted ("$$NB"), never pasted into a recipe where the shell would parse them.
override NB := $(value NB)
override CONFIG := $(value CONFIG)
override PARAMS := $(value PARAMS)
export NB CONFIG PARAMS
space := $(subst ,, )
CONFIG_DEP := $(subst $(space),\ ,$(CONFIG))
RUN := runs/organism
HELPERS := $(shell find src/helpers -name '*.py')
ORGANISM := models/organism/model.safetensors models/organism/training_card.json
CORPUS := data/corpus/A/manifest.json data/corpus/B/manifest.json
MATHJAX := _vendor/mathjax/tex-svg.js
STAGES ?= 00_organism 01_logging 02_selectors 03_deactivation 04_steering 05_transfer 06_grounding 07_sae
STAGE_NB = $(PYTHON) -m helpers.book.pipeline run '$(1)' --no-upstream --config "$$CONFIG" --book-copy 'book/executed/$(1).ipynb'
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export HF_HUB_OFFLINE := 1
export PYTHONHASHSEED := 0
# Byte-code caching on: pip installs with --no-compile (byte-compiling every file of torch & co. takes a minute),
# so each module is compiled once, on its first import, and cached. An environment that sets
# PYTHONDONTWRITEBYTECODE would instead recompile ~1,400 modules (4-5 s) in every kernel and command.
unexport PYTHONDONTWRITEBYTECODE

.SECONDARY:
.PHONY: help install book test run corpus organism bench clean lint browser

help:
	@echo "make book    build the whole book (venv, corpus, every stage through papermill, HTML)"
	@echo "make test    run the test suite (installs what is missing)"
	@echo "make run NB=<stage> CONFIG=<file> [PARAMS='-p name value ...']   re-execute one stage"
	@echo "make organism   retrain the model organism;  make corpus  regenerate the corpora"
	@echo "make bench   benchmarks -> bench/results.json;  make lint  ruff + mypy;  make clean"

install: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q --no-compile -e '.[dev]'
	$(PYTHON) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (esn)" >/dev/null
	@touch $@

corpus: $(CORPUS)
data/corpus/%/manifest.json: src/helpers/data/corpus.py src/helpers/data/espeak.py | $(STAMP)
	$(PYTHON) -m helpers.book.pipeline corpus $* --out data/corpus

organism: $(STAMP) $(CORPUS)
	$(PYTHON) -m helpers.book.pipeline organism --corpus data/corpus --out models/organism

$(MATHJAX):
	@mkdir -p _vendor/mathjax /tmp/mathjax-pack
	cd /tmp/mathjax-pack && npm pack --silent mathjax@3 >/dev/null && tar xzf mathjax-3*.tgz
	cp -r /tmp/mathjax-pack/package/es5/. _vendor/mathjax/
	@rm -rf /tmp/mathjax-pack

# --- stages: each re-runs only when its notebook, the helpers, the config or its inputs changed
$(RUN)/%/metrics.json: notebooks/%.md $(HELPERS) $(CONFIG_DEP) $(ORGANISM) $(CORPUS) | $(STAMP)
	$(call STAGE_NB,$*)
$(RUN)/02_selectors/metrics.json: $(RUN)/01_logging/metrics.json
$(RUN)/03_deactivation/metrics.json $(RUN)/04_steering/metrics.json: $(RUN)/02_selectors/metrics.json
$(RUN)/05_transfer/metrics.json $(RUN)/06_grounding/metrics.json: $(RUN)/02_selectors/metrics.json
$(RUN)/07_sae/metrics.json: $(RUN)/01_logging/metrics.json $(RUN)/02_selectors/metrics.json

# the book's copy: parameter cells hidden (each chapter shows its parameter table), no progress bars, no paths
# of the build machine (helpers.book.book_export.clean_for_book)
book/executed/%.ipynb: $(RUN)/%/metrics.json
	$(PYTHON) -m helpers.book.pipeline book-copy $(RUN)/$*/$*.ipynb $@

# results against the paper, generated from the run's metrics.json files (helpers.book.claims)
book/results.md: $(foreach s,$(STAGES),$(RUN)/$(s)/metrics.json) src/helpers/book/claims.py | $(STAMP)
	$(PYTHON) -m helpers.book.claims --run $(RUN) --out $@

# the benchmarks page's tables and figure, from bench/results.json and this build's stage times (helpers.book.benchpage)
book/generated/benchmarks.md: bench/results.json src/helpers/book/benchpage.py $(foreach s,$(STAGES),$(RUN)/$(s)/metrics.json) | $(STAMP)
	$(PYTHON) -m helpers.book.benchpage --results bench/results.json --runs $(RUN) --out book/generated

# `make book` runs what does not depend on each other two at a time (the two corpora and MathJax; 00 beside
# 01 -> 02; then 03-07, which need only 01/02, as soon as 02 is done), one torch thread per stage: on 2 cores
# that beats one stage at a time on two threads (the organism's matmuls are too small to use both cores well).
# JOBS=1 runs everything in sequence, on all threads.
JOBS ?= 2
book: $(STAMP)
	$(if $(filter 1,$(JOBS)),,OMP_NUM_THREADS=1) $(MAKE) --no-print-directory -j$(JOBS) $(MATHJAX) \
		$(foreach s,$(STAGES),book/executed/$(s).ipynb)
	$(MAKE) --no-print-directory book/results.md book/generated/benchmarks.md
	$(BIN)/jupyter-book build . --builder html -W -n --keep-going
	@echo "book: _build/html/index.html"

run: $(STAMP) $(CORPUS)
	@test -n "$$NB" || { echo "usage: make run NB=<stage> CONFIG=<file> [PARAMS='-p name value']"; exit 2; }
	$(PYTHON) -m helpers.book.pipeline run "$$NB" --config "$$CONFIG" --params="$$PARAMS"

browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) $(MATHJAX) browser
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

bench: $(STAMP) $(CORPUS)
	$(PYTHON) bench/benchmarks.py --out bench/results.json

clean:
	rm -rf _build runs book/executed .pytest_cache
