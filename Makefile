# Two entry points (README): `make demo` and `make test`. Both set up .venv from pyproject.toml first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test validate bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python runner.py demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

validate: $(STAMP)
	$(BIN)/python runner.py validate

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/hot_path.py
	$(BIN)/python bench/publish_async.py
	$(BIN)/python bench/http_call.py
	$(BIN)/python bench/dlq_replay.py
	$(BIN)/python bench/erp_switch.py
	$(BIN)/python bench/tariff_quote.py
	$(BIN)/python bench/meter_pull.py
	$(BIN)/python bench/meter_rules.py
	$(BIN)/python bench/mail_parse.py
	$(BIN)/python bench/real_servers.py

clean:
	rm -rf $(VENV) .hub
