# Mica: the two entry points are `make run` and `make test` (see README.md).
SHELL := /bin/bash
export CARGO_BUILD_JOBS ?= 2
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: setup run test lint build

## setup: install and prepare everything; safe to run again (a no-op when done)
setup:
	@tests/setup/packages.sh
	@tests/setup/rust.sh
	@tests/setup/services.sh
	@tests/setup/venv.sh
	@tests/setup/web.sh
	@kernels/build.sh >/dev/null
	@guest-tools/images/build.sh >/dev/null
	@tests/nested/build.sh >/dev/null
	@echo "setup: done"

## build: compile every crate (release for the binaries the demo runs)
build:
	cargo build --workspace --all-targets

## run: the main job: `mica up` (the all-in-one cloud) and a first server
run: setup
	cargo build --release -p mica -p mica-agent -p mica-vmm
	controller/up/quickstart.sh

## lint: formatting and clippy, as CI checks them
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

## test: setup, lint, then the whole test suite
test: setup lint
	cargo nextest run --workspace --no-fail-fast
