# Two commands on a fresh machine with Python 3.11 and make: `make run`, `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-ingest bench-tokens bench-pipeline bench-recording bench-persistence clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/bridge dev

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: bench-ingest bench-tokens

bench-ingest: $(STAMP)
	$(BIN)/python bench/ingest.py

bench-tokens: $(STAMP)
	$(BIN)/python bench/tokens.py

bench-pipeline: $(STAMP)
	$(BIN)/python bench/pipeline.py

bench-recording: $(STAMP)
	$(BIN)/python bench/recording.py

bench-persistence: $(STAMP)
	$(BIN)/python bench/persistence.py

clean:
	rm -rf $(VENV) var .pytest_cache
