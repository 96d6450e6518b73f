# Every target installs what it needs, so a fresh clone works with `make demo` / `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fuse2 lint typecheck unit bench system clean

demo: $(STAMP) system
	$(PY) tools/demo.py

# The real-mount tests again on libfuse 2, the API macFUSE gives mfusepy on macOS (the main run uses libfuse 3).
# tests/conftest.py fails the lane if the daemon does not really run on libfuse 2.
FUSE2_TESTS := tests/mount tests/faults/test_signals.py tests/faults/test_responsive.py \
	tests/faults/test_concurrency.py tests/faults/test_deadlines.py

test: $(STAMP) system
	$(VENV)/bin/ruff check mixvfs vfs cache tools tests
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q
	FUSE_LIBRARY_NAME=fuse $(VENV)/bin/pytest -q $(FUSE2_TESTS)

test-fuse2: $(STAMP) system
	FUSE_LIBRARY_NAME=fuse $(VENV)/bin/pytest -q $(FUSE2_TESTS)

bench: $(STAMP)
	MIXVFS_BENCH_DEPS=1 bash tools/install_system.sh
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) tools/bench.py $(BENCH_ARGS)

# System packages: libfuse (2 and 3) for the mount, rsync/attr for tests, nginx/rclone for the benchmark.
system:
	@bash tools/install_system.sh

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
