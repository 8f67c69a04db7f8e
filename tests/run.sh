#!/usr/bin/env bash
# The test command of README: installs what is missing, builds every binary (end-to-end
# tests start the real orca-agent and control plane from target/), runs every test tier.
# No test is skipped for a missing prerequisite: it fails with the install hint instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

deploy/local/setup.sh
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast "$@"
