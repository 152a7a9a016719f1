# marketpipe: two commands on a fresh machine.
#   make run   bootstrap, then run the whole pipeline (marketpipe run)
#   make test  bootstrap, then lint, type-check and run the test suite
# Bootstrap = a virtualenv with the locked dependencies (uv, installed into .tools/
# when the machine has none) and the Kafka broker jars (resolved with Maven).

PYTHON ?= python3
UV_VERSION := 0.13.8
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
ARGS ?=

.PHONY: bootstrap run demo test lint typecheck pytest bench lock proto clean kafka-jars

bootstrap: $(VENV)/.synced kafka-jars

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: requirements.lock pyproject.toml marketpipe/_avro_writer.c | $(UV)
	test -x $(BIN)/python || $(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(UV) pip sync --quiet --python $(BIN)/python requirements.lock
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

kafka-jars: $(VENV)/.synced
	$(BIN)/marketpipe kafka fetch

run: bootstrap
	$(BIN)/marketpipe run $(ARGS)

demo: bootstrap
	$(BIN)/marketpipe run --source sim $(ARGS)

lint: $(VENV)/.synced
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.synced
	$(BIN)/mypy

pytest: bootstrap
	$(BIN)/python -m pytest $(ARGS)

test: lint typecheck pytest

bench: bootstrap
	$(BIN)/python -m bench $(ARGS)

# Regenerate the MEXC protobuf message classes after editing the .proto (generated files are committed).
proto: $(VENV)/.synced
	$(BIN)/python -m grpc_tools.protoc -I marketpipe/exchanges/mexc_pb --python_out=marketpipe/exchanges/mexc_pb \
		--pyi_out=marketpipe/exchanges/mexc_pb marketpipe/exchanges/mexc_pb/mexc_push.proto

# Re-resolve the lock file after changing dependencies in pyproject.toml.
lock: | $(UV)
	$(UV) pip compile pyproject.toml --extra dev --extra client --generate-hashes --python-version 3.11 -o requirements.lock

clean:
	-$(BIN)/marketpipe kafka stop
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
