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
# The tests record the control plane's Kubernetes requests and EC2 calls
# (tests/src/recordings.rs); after a full run they must match the ClusterRole and
# the IAM policy of deploy/kubernetes/ exactly. An absolute path: tests run in tests/.
export ORCA_RECORDINGS_DIR="${ORCA_RECORDINGS_DIR:-$PWD/target/orca-recordings}"
rm -rf "$ORCA_RECORDINGS_DIR/kube-requests" "$ORCA_RECORDINGS_DIR/ec2-calls"
cargo nextest run --workspace --no-fail-fast "$@"
if [ "$#" -eq 0 ]; then
  target/debug/check-recordings
else
  echo "run.sh: a partial run ($*) cannot show every request: the exact check of" \
    "deploy/kubernetes/ against the recordings (target/debug/check-recordings) is skipped"
fi
