# Two entry points: `make demo` and `make test`. Both create .venv when it is missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install demo test lint typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch and torchvision as one pinned pair that lies on this disk: the torch 2.13.0 CPU wheel
	# has no torchvision build that loads beside it (0.28.0's ops link libtorch_cuda), and timm
	# needs torchvision.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,build]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/stemma pipeline --check
	$(BIN)/dvc repro
	$(BIN)/stemma validate
	$(BIN)/stemma ls
	$(BIN)/dvc metrics show
	$(BIN)/stemma lineage show digits-base --format tree

test: $(STAMP)
	$(BIN)/ruff check .
	$(MAKE) typecheck
	$(BIN)/python -m pytest -q -n 2 tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	rm -rf build/typecheck && mkdir -p build/typecheck/stemma
	for p in registry lineage schemas; do ln -s ../../../$$p build/typecheck/stemma/$$p; done
	cd build/typecheck && ../../$(BIN)/mypy --strict --config-file ../../pyproject.toml -p stemma.registry -p stemma.lineage -p stemma.schemas

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build .stemma .pytest_cache .mypy_cache .ruff_cache
