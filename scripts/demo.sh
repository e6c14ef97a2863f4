#!/usr/bin/env bash
# make demo: the main job. Rebuilds the half-close leak with real namespaces, iptables and
# conntrack, runs it against every sidecar, prints the table and writes lab-report.html.
# (make demo has already built dist/.)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/sidecar-tree.sh
node "$SIDECAR_TREE/dist/src/cli/main.js" lab --scenario all --proxy all --report "$PWD/lab-report.html"
