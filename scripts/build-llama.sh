#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (CPU, Release) once into a cache folder outside the repository:
#   $TALLYSTICK_CACHE_DIR (default ~/.cache/tallystick)/llama.cpp/<version>/bin/llama-server
# which is where `tallystick-node serve --engine llamacpp` looks for it (node/engines/_llamacpp.py,
# whose LLAMA_CPP_PYTHON_VERSION must equal VERSION here).
# The C++ source is the one vendored in llama-cpp-python's PyPI sdist (vendor/llama.cpp), fetched with pip,
# so a machine that reaches only PyPI can build it. Nothing is downloaded at build time: no curl, no
# prebuilt web UI. Prints the binary's path last. Skips everything when the binary is already there.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${TALLYSTICK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tallystick}"
DIR="$CACHE/llama.cpp/$VERSION"
BIN="$DIR/bin/llama-server"
JOBS="${LLAMA_BUILD_JOBS:-$(nproc)}"

if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
  echo "$BIN"
  exit 0
fi

step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
mkdir -p "$DIR"
WORK="$DIR/src"
start=$(date +%s)
if [ ! -f "$WORK/vendor/llama.cpp/CMakeLists.txt" ]; then
  step "llama-cpp-python==$VERSION sdist (pip download, for its vendored llama.cpp)"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  PY="$(command -v python3)"
  "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$tmp" >&2
  rm -rf "$WORK"
  mkdir -p "$WORK"
  tar xzf "$tmp"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK" --strip-components=1
fi

step "llama-server: cmake configure (Release, CPU, no curl/openssl/web UI download)"
cd "$WORK/vendor/llama.cpp"
nice -n 15 cmake -S . -B build -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
  -DGGML_CUDA=OFF -DBUILD_SHARED_LIBS=OFF >&2
step "llama-server: build ($JOBS jobs, nice 15)"
nice -n 15 cmake --build build --config Release --target llama-server -j "$JOBS" >&2
mkdir -p "$DIR/bin"
cp build/bin/llama-server "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
"$BIN" --version >&2 2>&1 || true
echo "built in $(( $(date +%s) - start )) s" >&2
echo "$BIN"
