#!/usr/bin/env bash
# Builds the reference peer `llama-server` (llama.cpp's own C++ OpenAI-compatible server)
# from the llama.cpp sources vendored in the llama-cpp-python sdist on PyPI, so that the
# peer runs exactly the llama.cpp version the project links against.
#
#   benchmarks/peers/build-llama-server.sh [VERSION]     # default: the installed llama-cpp-python
#
# Prints the path of the built binary last. Takes about 8 minutes on 2 cores the first time;
# later calls reuse the build under ${PEERS_CACHE:-$HOME/.cache/peers}.
set -euo pipefail
version=${1:-$(python3 -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null || true)}
[ -n "$version" ] || { echo "no llama-cpp-python installed: pass a VERSION" >&2; exit 2; }
cache=${PEERS_CACHE:-$HOME/.cache/peers}/llama-server-$version
bin=$cache/src/vendor/llama.cpp/build/bin/llama-server
if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  python3 -m pip download --no-deps --no-binary :all: -d "$cache" "llama-cpp-python==$version" >&2
  rm -rf "$cache/src" && mkdir -p "$cache/src"
  tar xzf "$cache"/llama_cpp_python-"$version".tar.gz -C "$cache/src" --strip-components=1
  cd "$cache/src/vendor/llama.cpp"
  cmake -B build -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=Release >&2
  cmake --build build --target llama-server -j"$(nproc)" >&2
fi
echo "$bin"
