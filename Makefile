# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pip takes these from the local wheel store on the kit's CPU machines; on a GPU machine pick the
# wheel for your CUDA, e.g. TORCH_SPEC="torch torchvision --index-url <pytorch cu12x index>".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
RUN ?= runs/demo
# the trained runs the notebooks read: source-only, DAFormer, CLUDA, HRDA + CLUDA, PiPa and SePiCo at the demo setting, seed 0
NOTEBOOK_RUNS ?= runs/notebooks
PYTEST_ARGS ?=
# idle OpenMP threads must not spin: it slows small or shared CPUs down many times over
export OMP_WAIT_POLICY ?= PASSIVE

# torch's CUDA wheels unpack to about 7 GiB: say so up front when the disk is short, so that a
# "No space left on device" from pip further down is not a mystery
define DISK_CHECK
import shutil, tempfile
for where in (".", tempfile.gettempdir()):
    free = shutil.disk_usage(where).free / 2**30
    if free < 8:
        print(f"warning: {free:.1f} GiB free in {where}; installing torch needs about 7 GiB")
endef
export DISK_CHECK

.PHONY: install demo test test-fast test-browser-repeat notebooks notebook-runs lab bench clean-runs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/python -c "$$DISK_CHECK"
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/cluda-kit train miniscapes_cluda --out $(RUN) --overwrite

# each run trains once: a finished run (its summary.json) is kept; an interrupted one resumes
notebook-runs: install
	@for m in source_only daformer cluda hrda_cluda pipa sepico; do \
	  run=$(NOTEBOOK_RUNS)/$$m; \
	  if [ -f $$run/summary.json ]; then echo "$$run: done"; \
	  elif [ -f $$run/checkpoints/last.pt ]; then $(BIN)/cluda-kit train --resume $$run || exit 1; \
	  else $(BIN)/cluda-kit train miniscapes_$$m --out $$run --overwrite || exit 1; fi; \
	done

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests notebooks --nbval-lax -p no:cacheprovider

test-fast: install
	$(BIN)/python -m pytest -q -x tests -m "not slow and not browser"

# the browser tests N times in a row (`make test-browser-repeat N=5`, default 5), stopping at the
# first failing run: intermittent failures show up here, not in one run
test-browser-repeat: install
	@n=$(or $(N),5); for i in $$(seq 1 $$n); do \
	  echo "== tests/test_browser.py: run $$i of $$n"; \
	  $(BIN)/python -m pytest -q $(PYTEST_ARGS) tests/test_browser.py -p no:cacheprovider \
	    || { echo "== tests/test_browser.py: run $$i of $$n failed"; exit 1; }; \
	done; echo "== tests/test_browser.py: $$n of $$n runs passed"

bench: install
	$(BIN)/python -m bench

notebooks: install
	$(BIN)/python notebooks/build.py

# JupyterLab on notebooks/ in the demo profile (what the stored outputs show; CLUDA_PROFILE=tiny
# make lab for seconds-long stand-ins). Trains the runs the notebooks read first, once, if any is
# missing: make notebook-runs, up to about 50 minutes on 2 CPU cores (notebooks/README.md). LAB_ARGS go to jupyter lab.
lab: install
	@missing=; for m in $$($(BIN)/python -c "from cluda_kit.notebook import NOTEBOOK_RUNS; print(*NOTEBOOK_RUNS)"); do \
	  [ -f $(NOTEBOOK_RUNS)/$$m/summary.json ] || missing="$$missing $$m"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "lab: training the runs the notebooks read into $(NOTEBOOK_RUNS) (missing:$$missing), once;" \
	       "up to about 50 minutes on 2 CPU cores (notebooks/README.md)"; \
	  start=$$(date +%s); $(MAKE) --no-print-directory notebook-runs NOTEBOOK_RUNS=$(NOTEBOOK_RUNS) || exit 1; \
	  t=$$(( $$(date +%s) - start )); echo "lab: the runs took $$((t / 60)) min $$((t % 60)) s"; \
	fi; \
	CLUDA_PROFILE=$${CLUDA_PROFILE:-demo} CLUDA_NOTEBOOK_RUNS=$(NOTEBOOK_RUNS) $(BIN)/jupyter lab notebooks/ $(LAB_ARGS)

clean-runs:
	rm -rf runs
