#!/usr/bin/env bash
# Builds llama.cpp ONCE (CPU, Release, shared libraries) and gives a provider both of its servers:
#   $TALLYSTICK_CACHE_DIR (default ~/.cache/tallystick)/llama.cpp/<version>/
#     bin/llama-server              llama.cpp's C++ server (parallel slots, continuous batching), with
#     bin/libllama.so, libggml*.so  its shared libraries beside it (RPATH $ORIGIN)
#     venv/                         llama-cpp-python <version> with its [server] extra, compiled against
#                                   nothing: its CMake build is off (LLAMA_BUILD=OFF), it loads the
#                                   libllama.so above through LLAMA_CPP_LIB_PATH, so
#                                   `LLAMA_CPP_LIB_PATH=<dir>/bin <dir>/venv/bin/python -m llama_cpp.server`
#                                   is the Python server on the same build (node/engines/_llamacpp.py:
#                                   llama_cpp_python_server()).
# `tallystick-node serve --engine llamacpp` runs bin/llama-server (node/engines/_llamacpp.py, whose
# LLAMA_CPP_PYTHON_VERSION must equal VERSION here).
# The C++ source is the one vendored in llama-cpp-python's PyPI sdist (vendor/llama.cpp), fetched with
# pip, so a machine that reaches only PyPI can build it. Nothing else is downloaded at build time: no
# curl, no prebuilt web UI. Prints the binary's path last. Skips what is already there.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${TALLYSTICK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tallystick}"
DIR="$CACHE/llama.cpp/$VERSION"
BIN="$DIR/bin/llama-server"
VENV="$DIR/venv"
JOBS="${LLAMA_BUILD_JOBS:-$(nproc)}"
PY="$(command -v python3)"

server_ok() { [ -x "$BIN" ] && [ -f "$DIR/bin/libllama.so" ] && "$BIN" --version >/dev/null 2>&1; }
python_ok() {
  [ -x "$VENV/bin/python" ] &&
    LLAMA_CPP_LIB_PATH="$DIR/bin" "$VENV/bin/python" -c 'import llama_cpp, llama_cpp.server.app' >/dev/null 2>&1
}

if server_ok && python_ok; then
  echo "$BIN"
  exit 0
fi

step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
mkdir -p "$DIR"
WORK="$DIR/src"
start=$(date +%s)
if [ ! -f "$WORK/vendor/llama.cpp/CMakeLists.txt" ] || [ ! -f "$WORK/pyproject.toml" ]; then
  step "llama-cpp-python==$VERSION sdist (pip download, for its vendored llama.cpp)"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$tmp" >&2
  rm -rf "$WORK"
  mkdir -p "$WORK"
  tar xzf "$tmp"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK" --strip-components=1
fi

if ! server_ok; then
  # One build for both servers: shared libraries (what llama-cpp-python loads), RPATH $ORIGIN so the
  # binary and the libraries work from $DIR/bin wherever the cache lives.
  step "llama.cpp: cmake configure (Release, CPU, shared, no curl/openssl/web UI download)"
  cd "$WORK/vendor/llama.cpp"
  nice -n 15 cmake -S . -B build-shared -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
    -DGGML_CUDA=OFF -DBUILD_SHARED_LIBS=ON \
    -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$ORIGIN' >&2
  step "llama.cpp: build llama-server, libllama, libmtmd ($JOBS jobs, nice 15)"
  nice -n 15 cmake --build build-shared --config Release --target llama-server llama mtmd -j "$JOBS" >&2
  rm -rf "$DIR/bin.tmp"
  mkdir -p "$DIR/bin.tmp"
  cp -a build-shared/bin/llama-server build-shared/bin/*.so* "$DIR/bin.tmp/"
  rm -rf "$DIR/bin"
  mv "$DIR/bin.tmp" "$DIR/bin"
  "$BIN" --version >&2 2>&1 || true
  rm -rf build build-shared # the object files (~100 MB); the binaries are in $DIR/bin
  echo "llama.cpp built in $(($(date +%s) - start)) s" >&2
fi

if ! python_ok; then
  # The Python package without its own compile: LLAMA_BUILD=OFF / LLAVA_BUILD=OFF make its CMake step
  # build and install nothing; the libraries are the ones above (LLAMA_CPP_LIB_PATH at run time).
  step "llama-cpp-python==$VERSION[server] into $VENV (no compile: LLAMA_BUILD=OFF, libllama from $DIR/bin)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" nice -n 15 "$VENV/bin/python" -m pip install --quiet \
    "$WORK[server]" >&2
  python_ok || {
    echo "llama-cpp-python installed but 'import llama_cpp.server.app' fails with LLAMA_CPP_LIB_PATH=$DIR/bin" >&2
    exit 1
  }
fi
echo "built in $(($(date +%s) - start)) s" >&2
echo "$BIN"
