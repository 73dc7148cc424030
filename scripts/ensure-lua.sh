#!/usr/bin/env bash
# Prints the path of a Lua 5.1 interpreter ($LUA if set), installing Debian's lua5.1 when none
# is on PATH. Argo CD runs health checks with gopher-lua, a Lua 5.1 dialect: the tests run ours
# with the reference 5.1 interpreter.
set -euo pipefail
if [ -n "${LUA:-}" ] && [ -x "${LUA}" ]; then
  echo "${LUA}"
  exit 0
fi
for c in lua5.1 lua; do
  if command -v "$c" >/dev/null 2>&1 && "$c" -v 2>&1 | grep -q "Lua 5.1"; then
    command -v "$c"
    exit 0
  fi
done
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# One installer at a time (parallel test binaries may call this together).
exec 9>/tmp/accessgrant-ensure-lua.lock
flock 9
if ! command -v lua5.1 >/dev/null 2>&1; then
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq lua5.1 >&2
fi
command -v lua5.1
