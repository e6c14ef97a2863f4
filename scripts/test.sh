#!/usr/bin/env bash
# Runs the built tests with Node's test runner: unit (loopback) first, then namespace tests (root).
set -euo pipefail
cd "$(dirname "$0")/.."
suite=${1:-all}
source scripts/sidecar-tree.sh
cd "$SIDECAR_TREE"
files=()
if [[ $suite == all || $suite == unit ]]; then
  mapfile -t -O "${#files[@]}" files < <(find dist/test/unit -name '*.test.js' | sort)
fi
if [[ $suite == all || $suite == netns ]]; then
  if [[ $(id -u) != 0 ]]; then
    echo "test: namespace tests need root; run as root (CI does)" >&2
    exit 2
  fi
  mapfile -t -O "${#files[@]}" files < <(find dist/test/netns -name '*.test.js' 2>/dev/null | sort)
fi
if ((${#files[@]} == 0)); then
  echo "test: no test files found under dist/test (run make build)" >&2
  exit 1
fi
node --test --test-reporter=spec --test-concurrency=1 "${files[@]}"
