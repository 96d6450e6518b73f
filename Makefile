# Every target installs what it needs, so a fresh clone works with `make demo` / `make test`, in this order:
#   1. `system`: Debian/Ubuntu packages with apt, as root or through sudo: what the demo needs (python3-venv,
#      libfuse 3, attr); `system-test` adds what the tests need (libfuse 2, rsync, flac, nginx-light, faketime,
#      ...); the lists and why each is needed: tools/install_system.sh;
#   2. $(VENV): a virtual environment made with $(PYTHON), holding mixvfs (editable) and its dev tools. It is
#      the user's who made it: run make as the user who works in the checkout (apt asks sudo for itself).
SHELL := /bin/bash
# Any Python >= 3.11 (pyproject.toml's requires-python), e.g. `make demo PYTHON=python3.12` where python3 is
# older (Ubuntu 22.04's is 3.10).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fuse2 test-portable test-passthrough lint typecheck unit bench bench-wan system system-test \
	venv-access clean

demo: $(STAMP) system
	$(PY) -m tools.demo

# The real-mount tests again on libfuse 2, the API macFUSE gives mfusepy on macOS (the main run uses libfuse 3).
# tests/conftest.py fails the lane if the daemon does not really run on libfuse 2. The stop signals once each
# way (SIGTERM): SIGINT and SIGHUP take the same path through libfuse's handlers, and the main run has them all.
FUSE2_TESTS := tests/mount tests/faults/test_signals.py tests/faults/test_concurrency.py \
	tests/faults/test_deadlines.py tests/faults/test_xattrs_offline.py -k "not SIGINT and not SIGHUP"

# The portable lane: what a Mac's Python lacks taken away inside every mixvfs process (this run, the mount daemon,
# every command), so each fallback of mixvfs/host.py runs for real: tests/portable_lane/sitecustomize.py deletes
# os.*xattr, os.posix_fadvise and fcntl's leases and hides /proc and /sys from our code; passthrough is off. The
# unit tier whole (less the tests of a Linux facility itself, marked linux_facilities), then the libfuse 2 mount
# tests that go through the fallbacks: status/report/unmount without xattrs, check-export's hashing and mount
# check, Finder's names, a dead mount cleared, a stop signal, the request bound. The daemon starts as on a Mac: a
# new interpreter, not the command forked.
PORTABLE := PYTHONPATH=tests/portable_lane MIXVFS_PASSTHROUGH=off MIXVFS_DAEMON_START=spawn
PORTABLE_MOUNT_TESTS := tests/mount/test_flow.py tests/mount/test_cli.py tests/mount/test_check_export.py \
	tests/mount/test_finder.py tests/flow/test_check_export_input.py tests/faults/test_crash.py \
	tests/faults/test_deadlines.py::test_reads_behind_a_stalled_server_and_a_full_queue_are_answered_within_the_request_timeout \
	tests/faults/test_signals.py::test_a_restart_after_a_crash_clears_the_dead_mount_and_serves_then_logout_unmounts \
	tests/faults/test_signals.py::test_foreground_mount_stopped_by_a_signal_exits_0_and_keeps_the_cache \
	-k "not SIGINT and not SIGHUP"

# The whole check: lint, types, then every lane. Each pytest run spreads its tests over $(WORKERS) processes
# (pytest-xdist): most tests wait on a server, a mount or a child process, not on a core.
WORKERS ?= 4
XDIST := -n $(WORKERS) --dist loadgroup

test: lint typecheck system-test
	$(VENV)/bin/pytest -q $(XDIST)
	FUSE_LIBRARY_NAME=fuse $(VENV)/bin/pytest -q $(XDIST) $(FUSE2_TESTS)
	@$(MAKE) --no-print-directory test-portable
	@$(MAKE) --no-print-directory test-passthrough

# The inner loop: the in-process tests only (tests/unit less what mounts, marked fuse), in seconds; no mount, no
# daemon, and no package from `system` beyond the venv's. Two processes: many of these tests wait on a server.
unit: $(STAMP)
	$(VENV)/bin/pytest -q -n 2 -m "not fuse" tests/unit

# ruff, then the import contracts of pyproject.toml's [tool.importlinter]: ARCHITECTURE.md's layers and library
# table, checked by machine.
lint: $(STAMP)
	$(VENV)/bin/ruff check mixvfs tools tests
	$(VENV)/bin/lint-imports

# mypy strict over mixvfs, tools and tests (pyproject.toml), then mixvfs as macOS sees it.
typecheck: $(STAMP)
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --platform darwin mixvfs

test-fuse2: $(STAMP) system-test
	FUSE_LIBRARY_NAME=fuse $(VENV)/bin/pytest -q $(XDIST) $(FUSE2_TESTS)

test-portable: $(STAMP) system-test
	$(PORTABLE) $(VENV)/bin/pytest -q $(XDIST) -p no:cacheprovider -m "not linux_facilities" tests/unit
	$(PORTABLE) FUSE_LIBRARY_NAME=fuse $(VENV)/bin/pytest -q $(XDIST) -p no:cacheprovider \
		-m "not linux_facilities" $(PORTABLE_MOUNT_TESTS)

# The FUSE passthrough lane (tests/passthrough, which the plain run leaves out): libfuse >= 3.17 built from
# Debian 13's fuse3 source into build/libfuse-3.17 (tools/build_libfuse.sh: seconds once built), loaded through
# mfusepy's FUSE_LIBRARY_PATH; needs root. Under CI=true a failed build fails the lane; elsewhere it is skipped
# with the cause (tests/passthrough/conftest.py likewise for a run without root).
test-passthrough: $(STAMP) system-test
	@lib=$$(bash tools/build_libfuse.sh) || { \
	  if [ "$$CI" = true ]; then echo "passthrough lane: building libfuse >= 3.17 failed" >&2; exit 1; fi; \
	  echo "passthrough lane SKIPPED: building libfuse >= 3.17 failed (see above)" >&2; exit 0; }; \
	echo "FUSE_LIBRARY_PATH=$$lib $(VENV)/bin/pytest -q tests/passthrough"; \
	FUSE_LIBRARY_PATH=$$lib $(VENV)/bin/pytest -q tests/passthrough

bench: $(STAMP)
	@PYTHON=$(PYTHON) bash tools/install_system.sh bench
	PYTHONWARNINGS='ignore:Editable installation' $(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m tools.bench $(BENCH_ARGS)

# The export over an emulated internet link (root): network namespaces, tbf and a delay line (tools/wan/), nginx
# as the origin, mixvfs beside aria2c, curl and rclone at 20, 80 and 150 ms, with and without random loss.
# BENCH_ARGS=--quick for a few minutes' check. It removes its namespaces at the end, on Ctrl-C and on SIGTERM.
bench-wan: $(STAMP)
	@PYTHON=$(PYTHON) bash tools/install_system.sh bench
	$(PY) -m tools.wan.bench $(BENCH_ARGS)

# System packages: python3-venv for the venv, libfuse 3 for the mount, attr for the demo's getfattr (`system`);
# libfuse 2, rsync, flac, nginx, exfat, faketime, iproute2 and gcc for the tests (`system-test`); rclone, curl,
# aria2c and bindfs for the benchmarks (`make bench`).
system:
	@PYTHON=$(PYTHON) bash tools/install_system.sh demo

system-test:
	@PYTHON=$(PYTHON) bash tools/install_system.sh test

# A .venv made by another user (root, by `sudo make`) cannot be written by this one, and pip, compileall and the
# stamp would fail half-way with "Permission denied": say whose it is and what to do, before anything runs.
venv-access:
	@if [ -e $(VENV) ] && { [ ! -w $(VENV) ] || { [ -e $(VENV)/bin ] && [ ! -w $(VENV)/bin ]; }; }; then \
	  echo "$(VENV) belongs to $$(stat -c %U $(VENV) 2>/dev/null || stat -f %Su $(VENV)), not to $$(id -un), who runs make:" \
	    "run make as that user, or remove it (sudo rm -rf $(VENV) mixvfs.egg-info) and run make again as yourself" >&2; \
	  exit 2; fi

# After `system` (order-only: it changes no file make could compare), since the venv needs python3-venv.
# A venv without pip (left by a `python3 -m venv` that failed for want of python3-venv) is made again.
$(STAMP): pyproject.toml | system venv-access
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "mixvfs needs Python 3.11 or newer; $(PYTHON) is: $$(command -v $(PYTHON) >/dev/null && $(PYTHON) --version 2>&1 || echo not found)" >&2; \
	  echo "Install one (or use pyenv/uv) and name it: make demo PYTHON=python3.11" >&2; exit 1; }
	$(PY) -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	@# The one message filtered: setuptools' "Editable installation" box (pip shows the build backend's warnings).
	@# Our checkout holds tools/ and tests/ beside mixvfs/, so setuptools cannot put one plain folder on sys.path
	@# and installs a finder for mixvfs alone, then warns that a folder named like the package in the working
	@# directory could be imported instead: here that folder is the package itself. Other warnings still show.
	PYTHONWARNINGS='ignore:Editable installation' $(PY) -m pip install -q -e '.[dev]'
	@# Bytecode now, as pip writes it for an installed package: under PYTHONDONTWRITEBYTECODE an editable
	@# install would compile our sources again at every start of every command (~30 ms each).
	$(PY) -m compileall -q mixvfs >/dev/null
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache .import_linter_cache
