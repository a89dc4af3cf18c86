# pushsvc: `make test` installs everything into .venv and runs the suite; `make dev` runs a local stack
# (`make dev HTTP_PORT=8081` when 8080 is taken).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install test lint unit dev bench lock clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

install: $(INSTALLED)

lint: install
	$(VENV)/bin/ruff check pushsvc tests benchmarks

test: lint
	$(PY) -m pytest -q -ra

unit: install
	$(PY) -m pytest -q tests/unit

# The HTTP API's port (also /metrics); the stack's other ports are picked free each run.
HTTP_PORT ?= 8080

dev: install
	$(VENV)/bin/pushsvc dev --dir .dev --http-port $(HTTP_PORT)

bench: install
	$(PY) benchmarks/run.py

# Pin the runtime dependencies the image installs (constraints.txt) to what this venv holds.
lock: install
	$(PY) .ci/lock_runtime.py

clean:
	rm -rf $(VENV) .dev .pytest_cache .ruff_cache
