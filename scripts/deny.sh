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

# Advisories, offline (the RustSec database lives on GitHub, which these machines and CI cannot
# reach, and no registry we can reach carries it): from a copy in $CARGO_HOME/advisory-dbs
# ('cargo deny fetch' puts it there where GitHub is reachable), or from a checkout named by
# RUSTSEC_ADVISORY_DB (made into the git repository cargo-deny reads, dated with its own commit
# date). Without either, say so loudly and skip that one check.
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
DB_DIR="advisory-db-3157b0e258782691" # cargo-deny's directory for the default RustSec URL
SNAP="${RUSTSEC_ADVISORY_DB:-}"
if [ -d "$CARGO_HOME/advisory-dbs/$DB_DIR/.git" ]; then
  cargo deny --offline check advisories
elif [ -n "$SNAP" ] && [ -d "$SNAP/crates" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/dbs/$DB_DIR"
  (cd "$SNAP" && tar -cf - crates rust) | tar -xf - -C "$tmp/dbs/$DB_DIR"
  snap_date="$(git -C "$SNAP" log -1 --format=%cI 2>/dev/null || date -u +%FT%TZ)"
  (
    cd "$tmp/dbs/$DB_DIR"
    git init -q
    git add -A
    GIT_AUTHOR_DATE="$snap_date" GIT_COMMITTER_DATE="$snap_date" \
      git -c user.email=deny@localhost -c user.name=deny commit -qm "RustSec snapshot"
  )
  sed "s|^db-path = .*|db-path = \"$tmp/dbs\"\nmaximum-db-staleness = \"P3650D\"|" deny.toml >"$tmp/deny.toml"
  echo "deny: advisories from $SNAP (snapshot of $snap_date)" >&2
  cargo deny --offline --config "$tmp/deny.toml" check advisories
else
  echo "deny: NOTICE: advisories NOT checked: no RustSec advisory database (none under" \
    "$CARGO_HOME/advisory-dbs, RUSTSEC_ADVISORY_DB unset) and it cannot be fetched here." >&2
fi
