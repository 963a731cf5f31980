#!/usr/bin/env bash
# Clang's thread-safety analysis as errors over the code that holds locks (router, worker, engine, the gemma
# command's load generator), in a build of its own (build-tsa/, clang, no CUDA, no tests). First proves that the
# analysis is on and catches a violation: a guarded field read without its lock must fail to compile.
set -euo pipefail
cd "$(dirname "$0")/.."
cxx=${GEMMA_TSA_CXX:-clang++}
cc=${GEMMA_TSA_CC:-clang}
flags=(-Wthread-safety -Werror=thread-safety)

probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
cat >"$probe/probe.cc" <<'EOF'
#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

class Counter {
 public:
  int Get() {
#ifdef TAKE_LOCK
    absl::MutexLock lock(&mu_);
#endif
    return n_;
  }

 private:
  absl::Mutex mu_;
  int n_ ABSL_GUARDED_BY(mu_) = 0;
};

int main() { return Counter().Get(); }
EOF
if ! "$cxx" -std=c++20 -fsyntax-only "${flags[@]}" -DTAKE_LOCK "$probe/probe.cc"; then
  echo "check-thread-safety: the probe does not compile even with its lock held" >&2
  exit 1
fi
if "$cxx" -std=c++20 -fsyntax-only "${flags[@]}" "$probe/probe.cc" 2>"$probe/err"; then
  echo "check-thread-safety: a guarded field read without its lock compiled; the analysis is off" >&2
  exit 1
fi
if ! grep -q -- "-Werror,-Wthread-safety" "$probe/err"; then
  echo "check-thread-safety: the probe failed for another reason:" >&2
  cat "$probe/err" >&2
  exit 1
fi
echo "check-thread-safety: the analysis catches an unguarded read"

# Unoptimized: the analysis runs in the compiler's front end, and -O0 builds these targets in about two thirds of
# the time -O3 takes (nothing here is run).
cmake -S . -B build-tsa -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-O0 -DCMAKE_C_FLAGS_DEBUG=-O0 \
  -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_C_COMPILER="$cc" -DGEMMA_WITH_CUDA=OFF -DGEMMA_BUILD_TESTS=OFF \
  -DCMAKE_CXX_FLAGS="${flags[*]}" >/dev/null
# Every library and binary that holds a lock; the gemma command's load generator as one object (the command
# itself would build the whole model code again for nothing).
cmake --build build-tsa -j "$(nproc)" --target gemma_engine gemma_router_lib gemma_worker_lib gemma-router \
  gemma-worker tools/CMakeFiles/gemma.dir/cmd_bench_server.cc.o
echo "check-thread-safety: OK"
