# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pip takes these from the local wheel store on the kit's CPU machines; on a GPU machine pick the
# wheel for your CUDA, e.g. TORCH_SPEC="torch torchvision --index-url <pytorch cu12x index>".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
RUN ?= runs/demo
# the trained runs the notebooks read: source-only, DAFormer, CLUDA and HRDA + CLUDA at the demo setting, seed 0
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

.PHONY: install demo test test-fast notebooks notebook-runs bench clean-runs

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
	@for m in source_only daformer cluda hrda_cluda; do \
	  run=$(NOTEBOOK_RUNS)/$$m; \
	  if [ -f $$run/summary.json ]; then echo "$$run: done"; \
	  elif [ -f $$run/checkpoints/last.pt ]; then $(BIN)/cluda-kit train --resume $$run || exit 1; \
	  else $(BIN)/cluda-kit train miniscapes_$$m --out $$run --overwrite || exit 1; fi; \
	done

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests notebooks --nbval-lax -p no:cacheprovider

test-fast: install
	$(BIN)/python -m pytest -q -x tests -m "not slow and not browser"

bench: install
	$(BIN)/python -m bench

notebooks: install
	$(BIN)/python notebooks/build.py

clean-runs:
	rm -rf runs
