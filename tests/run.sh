#!/usr/bin/env bash
# The test command of README: installs what is missing, builds every binary (end-to-end
# tests start the real orca-agent and control plane from target/), runs every test tier.
# No test is skipped for a missing prerequisite: it fails with the install hint instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

deploy/local/setup.sh
# One build of every target: the binaries with the same features as the tests, so
# nextest compiles nothing again (a --bins build without dev-dependencies' features
# would be rebuilt for the tests, aws-sdk-ec2 included: five minutes).
cargo build --workspace --all-targets
cargo nextest run --workspace --no-fail-fast "$@"
