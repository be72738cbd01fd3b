# Two commands on a fresh clone with only python3 and make: `make demo` and `make test`.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
RUN := $(UV) run --frozen --all-extras

.PHONY: sync demo test lint typecheck pytest soak bench bench-simd clean

$(UV):
	python3 -m pip install --quiet --disable-pip-version-check --target .tools uv

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-extras
	@touch $@

sync: .venv/.synced

demo: sync  ## render a generated 200-image archive on embedded Redis/SQLite
	$(RUN) fleet demo --images $(or $(IMAGES),200)

test: lint typecheck pytest  ## the whole suite

lint: sync
	$(RUN) ruff check .
	$(RUN) ruff format --check .

typecheck: sync
	$(RUN) mypy

pytest: sync
	$(RUN) pytest $(PYTEST_ARGS)

soak: sync  ## long soak tests, excluded from `make test`
	LOG_LEVEL=WARNING $(RUN) pytest -m soak -s $(PYTEST_ARGS)

BENCH_ARGS ?= --quick
bench: sync  ## per-queue benchmarks, quick mode (full: `make bench BENCH_ARGS=`)
	$(RUN) fleet bench $(BENCH_ARGS)

# Pillow-SIMD is source-only (needs gcc and the libjpeg, zlib and libwebp headers) and
# installs as PIL, so it lives in its own venv, only for the benchmark: never a dependency.
SIMD_PY := .bench-simd/bin/python
$(SIMD_PY): | $(UV)
	$(UV) venv --quiet --python python3 .bench-simd
	$(UV) pip install --quiet --python $(SIMD_PY) pillow-simd==12.1.1.post0

bench-simd: sync $(SIMD_PY)  ## the benchmarks with Pillow-SIMD as the strongest Pillow
	$(RUN) fleet bench $(BENCH_ARGS) --pillow-simd $(SIMD_PY)

clean:
	rm -rf .venv .tools .bench-simd .pytest_cache .mypy_cache .ruff_cache
