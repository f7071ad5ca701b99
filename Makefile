# Weir's two commands: `make run` and `make test`. See README.md.

DATA_DIR ?= ./weir-data
CARGO ?= cargo

.PHONY: deps build run test lint

deps:
	@./deploy/install-deps.sh

build: deps
	$(CARGO) build --release --bins

## Installs what is missing, builds, and starts a one-node cluster on $(DATA_DIR) (Ctrl-C stops it).
run: build
	$(CARGO) run --release --bin weir-node -- --data-dir $(DATA_DIR)

## The whole test suite (what CI runs).
test: deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
