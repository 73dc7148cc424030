#!/usr/bin/env bash
# Refreshes third_party/rustsec-advisory-db (what scripts/deny.sh checks advisories against
# where GitHub is unreachable) from a checkout of https://github.com/rustsec/advisory-db.
# Usage: scripts/update-advisory-db.sh PATH_TO_ADVISORY_DB_GIT_CHECKOUT
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SRC="${1:?usage: $0 PATH_TO_ADVISORY_DB_GIT_CHECKOUT}"
DEST="$ROOT/third_party/rustsec-advisory-db"
commit="$(git -C "$SRC" log -1 --format=%H)"
date="$(git -C "$SRC" log -1 --format=%cI)"
rm -rf "$DEST"
mkdir -p "$DEST"
git -C "$SRC" archive HEAD crates rust LICENSE.txt README.md | tar -x -C "$DEST"
printf 'source: https://github.com/rustsec/advisory-db\ncommit: %s\ndate: %s\nlicense: CC0-1.0 (LICENSE.txt)\ncontents: crates/, rust/ (the advisories cargo-deny reads)\n' \
  "$commit" "$date" >"$DEST/SNAPSHOT"
echo "advisory database snapshot: $commit ($date)"
