# lineaged — everything a developer or CI runs goes through these targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_SRC := proto/lineage/v1/lineage.proto
PROTO_OUT := lineaged/_proto

.PHONY: all run test lint typecheck pytest proto proto-check bench clean

all: test

# (Re)create the virtualenv when it is missing or pyproject.toml is newer than the install.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	@mkdir -p data models
	$(BIN)/lineaged --state-dir ./.lineaged --watch ./data:data --watch ./models:model

test: $(STAMP) proto-check lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check lineaged clients tests bench
	$(BIN)/ruff format --check lineaged clients tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Stubs are committed; this is the one command that makes them.
proto: $(STAMP)
	$(BIN)/python -m lineaged._protogen $(PROTO_SRC) $(PROTO_OUT)

# Regenerate into a scratch folder and fail when the committed stubs differ.
proto-check: $(STAMP)
	@scratch=$$(mktemp -d) && \
	$(BIN)/python -m lineaged._protogen $(PROTO_SRC) $$scratch && \
	diff -r -x __pycache__ $$scratch $(PROTO_OUT) && rm -rf $$scratch && \
	echo "proto stubs are up to date"

# Byte-compiled first, as pip compiles an installed package: where PYTHONDONTWRITEBYTECODE is
# set, every timed lineaged process would otherwise compile its sources again.
bench: $(STAMP)
	$(BIN)/python -m compileall -q lineaged clients bench
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
