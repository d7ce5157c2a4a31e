#!/usr/bin/env bash
# `make audit`: slither-analyzer, in its own virtual environment (.tools/slither-venv), over the
# build-info Hardhat 3 writes (no native solc needed). scripts/audit.py fails on any finding not
# triaged there; docs/security.md ("Static analysis") explains each verdict.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.tools/slither-venv
VERSION=0.11.6
if ! "$VENV/bin/python" -m pip show slither-analyzer 2>/dev/null | grep -qx "Version: $VERSION"; then
  echo "installing slither-analyzer $VERSION into $VENV"
  mkdir -p .tools
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet "slither-analyzer==$VERSION"
fi
npx hardhat build --quiet  # the same build `make abi` and tests/test_abi_fresh.py read
exec "$VENV/bin/python" scripts/audit.py
