#!/usr/bin/env bash
# make demo: the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
node dist/examples/loopback-demo.js
