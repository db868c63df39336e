# docbus: `make demo` runs a small province end to end, `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: install demo test unit lint bench clean

$(BIN)/docbus: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(BIN)/docbus

install: $(BIN)/docbus

demo: install
	$(BIN)/docbus demo

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q -ra

unit: install
	$(BIN)/pytest -q -m "not broker and not postgres"

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .ruff_cache
