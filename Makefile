# Entry points for people and CI. `make demo` and `make test` work on a
# fresh Debian 12 machine as root: both install missing Debian packages first.
SHELL := /bin/bash
CARGO ?= cargo
# Tests start processes (sshd, Pushgateway, rsync) and mostly wait on them.
TEST_THREADS ?= 4

.PHONY: all deps build bins test unit lint fmt demo bench

all: build

deps:
	scripts/deps

# Every binary and every test target, without running anything.
build:
	$(CARGO) build --workspace --bins --all-targets

# The tests run built binaries by name (backup_tests::harness::bin).
bins:
	$(CARGO) build --workspace --bins

# --no-fail-fast: one run lists every failing test binary, not just the first.
unit: bins
	$(CARGO) test --workspace --no-fail-fast -- --test-threads=$(TEST_THREADS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

test: deps
	$(MAKE) unit
	$(MAKE) lint

demo: deps bins
	scripts/demo

# Speed comparisons against the standard tools (each script prints ratios).
# BIN: the release binaries, wherever CARGO_TARGET_DIR puts them.
bench: deps
	$(CARGO) build --workspace --bins --release
	@set -e; shopt -s nullglob; scripts=(bench/*.sh); \
	export BIN="$$($(CARGO) metadata --format-version 1 --no-deps | \
		sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release"; \
	if [ $${#scripts[@]} -eq 0 ]; then echo "no bench/*.sh yet"; fi; \
	for s in "$${scripts[@]}"; do echo "== $$s"; bash "$$s"; done
