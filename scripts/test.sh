#!/usr/bin/env bash
# The whole test suite: formatting, lints, dependency policy (cargo-deny),
# unit/property/contract/end-to-end tests.
# Everything the tests need is installed by the tests' own scripts (see sim/ for kubectl).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
scripts/deny.sh
cargo test --workspace
