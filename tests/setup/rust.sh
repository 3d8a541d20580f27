#!/usr/bin/env bash
# Checks the Rust toolchain (Mica needs Rust >= 1.88: edition 2024, lapin 4) and installs
# cargo-nextest, the test runner, when it is missing. Idempotent.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "rust: installing the stable toolchain with rustup (https://rustup.rs)"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
fi
version=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n1.88.0\n' "$version" | sort -V | head -1)" != "1.88.0" ]; then
    echo "rust: rustc $version is too old; Mica needs 1.88 or newer (rustup update stable)" >&2
    exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "rust: installing cargo-nextest"
    cargo install --locked cargo-nextest
fi
echo "rust: rustc $version, $(cargo nextest --version 2>/dev/null | head -1)"
