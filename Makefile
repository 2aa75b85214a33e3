# lineaged — everything a developer or CI runs goes through these targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/dev.txt
TOOLS_LOCK := requirements/tools.txt
UV := $(BIN)/uv
# The lock is one resolution for every platform and Python >= 3.11; "make lock" keeps the
# pins it already has, "make lock-upgrade" moves every package to its newest allowed release.
LOCK_ARGS := pyproject.toml --all-extras --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command "make lock" --quiet
PROTO_SRC := proto/lineage/v1/lineage.proto
PROTO_OUT := clients/lineage_core/_proto

.PHONY: all run test lint typecheck pytest proto proto-check bench clean lock lock-upgrade \
	test-latest smoke-wheel ui ui-check

all: test

# (Re)create the virtualenv when it is missing or the lock is newer than the install. Every
# version installed comes from the committed, hash-checked lock: nothing depends on what the
# package index serves that day.
$(STAMP): pyproject.toml $(LOCK) $(TOOLS_LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(TOOLS_LOCK)
	$(UV) pip install --quiet --python $(BIN)/python --require-hashes -r $(LOCK)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)

lock: $(STAMP)
	$(UV) pip compile $(LOCK_ARGS) -o $(LOCK)

lock-upgrade: $(STAMP)
	$(UV) pip compile $(LOCK_ARGS) --upgrade -o $(LOCK)

run: $(STAMP)
	@mkdir -p data models
	$(BIN)/lineaged --state-dir ./.lineaged --watch ./data:data --watch ./models:model

test: $(STAMP) proto-check ui-check lint typecheck pytest smoke-wheel

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

# The web view's bundle (lineage ui): ui/src/*.js and the npm packages pinned by
# ui/package-lock.json, built by the locked esbuild into the Python package, committed.
UI_STATIC := clients/lineage_client/ui/static
UI_DEPS := ui/node_modules/.installed

$(UI_DEPS): ui/package.json ui/package-lock.json
	cd ui && npm ci --ignore-scripts --no-audit --no-fund
	@touch $@

ui: $(UI_DEPS)
	cd ui && node build.mjs ../$(UI_STATIC)

# Rebuild into a scratch folder and fail when the committed bundle differs.
ui-check: $(UI_DEPS)
	@scratch=$$(mktemp -d) && \
	(cd ui && node build.mjs $$scratch) && \
	cmp $$scratch/app.js $(UI_STATIC)/app.js && \
	cmp $$scratch/THIRD-PARTY-LICENSES.txt $(UI_STATIC)/THIRD-PARTY-LICENSES.txt && \
	rm -rf $$scratch && echo "ui bundle is up to date"

# Byte-compiled first, as pip compiles an installed package: where PYTHONDONTWRITEBYTECODE is
# set, every timed lineaged process would otherwise compile its sources again.
bench: $(STAMP)
	$(BIN)/python -m compileall -q lineaged clients bench
	$(BIN)/python -m bench

# The installed product, not the checkout: build the wheel, install it (not editable) into a
# fresh venv beside the locked dependencies, and run a daemon and a lineage run from there.
smoke-wheel: $(STAMP)
	bash tests/smoke_wheel.sh $(BIN)/python $(UV) $(LOCK)

# The same suite against the newest releases pyproject.toml allows, in a venv of its own, to
# catch an upstream release before a user does. Not part of CI: CI must not depend on the
# index. The stubs are not compared here (a newer generator writes its own version into them).
LATEST := .venv-latest
test-latest: $(STAMP)
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --require-hashes --no-deps -r $(TOOLS_LOCK)
	$(LATEST)/bin/uv pip install --quiet --python $(LATEST)/bin/python --upgrade --refresh \
		-e '.[daemon,dev,mlflow,openlineage]'
	$(LATEST)/bin/uv pip list --python $(LATEST)/bin/python > $(LATEST)/versions.txt
	@grep -iE '^(grpcio|protobuf|watchdog|blake3|sqlite-utils|pandas|pyarrow|polars|h5py|mlflow|openlineage-python) ' \
		$(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache .mypy_cache .ruff_cache
