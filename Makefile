# Two commands on a fresh machine with Python 3.11 and make: `make run`, `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-browser lint mutation bench bench-ingest bench-tokens bench-pipeline bench-recording bench-persistence bench-storage bench-attendance bench-console bench-join bench-footprint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/bridge dev

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q -n 2 --dist loadfile --ignore=tests/browser
	@echo "make test: browser tests (tests/browser/, Chromium) skipped; run them with: make test-browser"

# The console in a real browser: the distribution's Chromium (/usr/bin/chromium; apt-get install chromium),
# driven by Playwright's Python package. No browser is downloaded.
test-browser: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,browser]'
	$(BIN)/pytest -q tests/browser

lint: $(STAMP)
	$(BIN)/ruff check .

# On demand, never in `make test` or CI: mutants of the security- and delivery-critical functions,
# each checked by the tests [tool.mutmut] maps to it (README, "Mutation testing"). Resumable: a second
# run only checks what changed. `$(BIN)/mutmut show NAME` prints one mutant's diff.
MUTATION_TARGETS ?= 'bridge.signing.*' 'bridge.intake.x__check_*' 'bridge.intake.x_receive__*' \
	'bridge.intake.x_accept__*' 'bridge.sources.moodle.x_normalise_id__*' 'bridge.sources.moodle.x_event_id__*' \
	'bridge.sources.moodle.x_parse__*' 'bridge.store.x_accept_call__*' 'bridge.webhooks.*' \
	'bridge.recorder.x_reclaim_orphans__*' 'bridge.recorder.x__refresh__*' 'bridge.recorder.x__supervise__*'
mutation: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,mutation]'
	$(BIN)/mutmut run --max-children 2 $(MUTATION_TARGETS)
	$(BIN)/mutmut results

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

bench-storage: $(STAMP)
	$(BIN)/python bench/storage.py

bench-join: $(STAMP)
	$(BIN)/python bench/join_storm.py

bench-footprint: $(STAMP)
	$(BIN)/python bench/redis_footprint.py

clean:
	rm -rf $(VENV) var .pytest_cache
