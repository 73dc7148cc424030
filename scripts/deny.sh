#!/usr/bin/env bash
# Dependency policy with cargo-deny (config: deny.toml): licenses, bans (duplicate versions
# warn), sources (crates.io only), and security advisories (RustSec, offline; see below).
#
# cargo-deny is installed on first use with `cargo install --locked` into .tools/ (gitignored)
# and reused while its version matches CARGO_DENY_VERSION. On a clean machine that build takes
# a few minutes (measured in BENCHMARKS.md); later runs take seconds.
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
# reach, and no registry we can reach carries it). The database, first found of:
#   1. RUSTSEC_ADVISORY_DB: a checkout or snapshot of github.com/rustsec/advisory-db;
#   2. ../shared/rustsec-advisory-db beside the repository (a data-only snapshot whose SNAPSHOT
#      file names its commit and date);
#   3. $CARGO_HOME/advisory-dbs, where `cargo deny fetch` leaves it where GitHub is reachable.
# A snapshot is made into the git repository cargo-deny reads, committed at the snapshot's own
# date, so "how old is the database" is judged by when it was taken, not by when it was copied.
# No database at all fails the check: an unchecked dependency tree must not look like a clean one.
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
DB_DIR="advisory-db-3157b0e258782691" # cargo-deny's directory for the default RustSec URL
SNAP=""
if [ -n "${RUSTSEC_ADVISORY_DB:-}" ]; then
  SNAP="$RUSTSEC_ADVISORY_DB"
  [ -d "$SNAP/crates" ] || { echo "deny: RUSTSEC_ADVISORY_DB=$SNAP has no crates/ folder" >&2; exit 1; }
elif [ -d "$ROOT/../shared/rustsec-advisory-db/crates" ]; then
  SNAP="$(cd "$ROOT/../shared/rustsec-advisory-db" && pwd)"
fi
if [ -n "$SNAP" ]; then
  # The snapshot's date: its SNAPSHOT file's `date:` line, else its git commit date.
  snap_date="$(sed -n 's/^date:[[:space:]]*//p' "$SNAP/SNAPSHOT" 2>/dev/null | head -1)"
  [ -n "$snap_date" ] || snap_date="$(git -C "$SNAP" log -1 --format=%cI 2>/dev/null || true)"
  if [ -z "$snap_date" ]; then
    echo "deny: $SNAP: no date (neither a SNAPSHOT file with a date: line nor a git commit)" >&2
    exit 1
  fi
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/dbs/$DB_DIR"
  (cd "$SNAP" && tar -cf - crates rust) | tar -xf - -C "$tmp/dbs/$DB_DIR"
  (
    cd "$tmp/dbs/$DB_DIR"
    git init -q
    git add -A
    GIT_AUTHOR_DATE="$snap_date" GIT_COMMITTER_DATE="$snap_date" \
      git -c user.email=deny@localhost -c user.name=deny -c commit.gpgsign=false \
      commit -qm "RustSec snapshot"
  )
  # A snapshot is refreshed by hand: accept one up to a year old (cargo-deny's default is 90
  # days, made for a database fetched on every run).
  sed "s|^db-path = .*|db-path = \"$tmp/dbs\"\nmaximum-db-staleness = \"P365D\"|" deny.toml >"$tmp/deny.toml"
  echo "deny: advisories from $SNAP (snapshot of $snap_date)" >&2
  cargo deny --offline --config "$tmp/deny.toml" check advisories
elif [ -d "$CARGO_HOME/advisory-dbs/$DB_DIR/.git" ]; then
  echo "deny: advisories from $CARGO_HOME/advisory-dbs" >&2
  cargo deny --offline check advisories
else
  echo "deny: no RustSec advisory database: set RUSTSEC_ADVISORY_DB to a copy of" \
    "github.com/rustsec/advisory-db, or put ../shared/rustsec-advisory-db beside the repository." >&2
  exit 1
fi
