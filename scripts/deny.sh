#!/usr/bin/env bash
# Dependency policy with cargo-deny (config: deny.toml): licenses, bans (duplicate versions
# warn), sources (crates.io only), and security advisories when the RustSec database is on disk.
#
# cargo-deny is installed on first use with `cargo install --locked` into .tools/ (gitignored)
# and reused while its version matches CARGO_DENY_VERSION. On a clean machine that build takes
# a few minutes (measured in BENCHMARKS.md); later runs take seconds.
#
# Advisories: the RustSec advisory database is a git repository on GitHub, which these
# machines and CI cannot reach, and no package registry we can reach carries it. So
# `advisories` runs (with fetching disabled) only when a copy is already present where
# `cargo deny fetch` leaves it ($CARGO_HOME/advisory-dbs, deny.toml's db-path); otherwise this
# script says so, loudly, and skips that one check.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
CARGO_DENY_VERSION="0.20.2"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin/cargo-deny"

mkdir -p "$TOOLS"
# One installer at a time (parallel runs share .tools).
exec 9>"$TOOLS/.install.lock"
flock 9
if [ ! -x "$BIN" ] || ! "$BIN" --version 2>/dev/null | grep -qF "$CARGO_DENY_VERSION"; then
  echo "deny: installing cargo-deny $CARGO_DENY_VERSION into .tools/ (first run only)" >&2
  start=$(date +%s)
  # Own target dir: do not share (and invalidate) the project's build cache.
  CARGO_TARGET_DIR="$TOOLS/build" cargo install --locked --quiet --root "$TOOLS" \
    --version "$CARGO_DENY_VERSION" cargo-deny
  rm -rf "$TOOLS/build"
  echo "deny: cargo-deny installed in $(( $(date +%s) - start ))s" >&2
fi
flock -u 9

export PATH="$TOOLS/bin:$PATH"
cargo deny --version >&2
cargo deny check licenses bans sources

CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
DB="$CARGO_HOME/advisory-dbs"
if [ -d "$DB" ] && [ -n "$(find "$DB" -mindepth 2 -maxdepth 2 -name advisories -type d 2>/dev/null)" ]; then
  cargo deny check --disable-fetch advisories
else
  echo "deny: NOTICE: advisories NOT checked: no RustSec advisory database under $DB, and it" \
    "cannot be fetched here (its only source is GitHub). Where it can, 'cargo deny fetch' puts" \
    "it there and this script then checks advisories too." >&2
fi
