#!/usr/bin/env bash
# Prints the directory holding Debian's `prometheus` and `promtool` ($PROMETHEUS_DIR if set),
# installing Debian's prometheus package (without its recommended exporters) when they are not
# on PATH. The alert tests run the rules with promtool and the alert e2e test runs the real
# server: nothing here is hand-rolled.
set -euo pipefail
if [ -n "${PROMETHEUS_DIR:-}" ] && [ -x "${PROMETHEUS_DIR}/promtool" ] && [ -x "${PROMETHEUS_DIR}/prometheus" ]; then
  echo "${PROMETHEUS_DIR}"
  exit 0
fi
found() { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; }
if found; then
  dirname "$(command -v promtool)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# One installer at a time (parallel tests may call this together).
exec 9>/tmp/accessgrant-ensure-prometheus.lock
flock 9
if ! found; then
  $SUDO apt-get update -qq >&2
  # The package's service is not started here (no init system in CI containers; policy-rc.d
  # refuses it where one exists): the tests start their own server on a free port.
  POLICY=/usr/sbin/policy-rc.d
  if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    trap '$SUDO rm -f "$POLICY"' EXIT
  fi
  $SUDO apt-get install -y -qq --no-install-recommends prometheus >&2
fi
dirname "$(command -v promtool)"
