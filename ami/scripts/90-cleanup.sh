#!/usr/bin/env bash
# Leaves nothing of the bake behind: the staging directory, apt's caches, and
# the machine id (each instance gets its own at first boot).
set -euo pipefail

STAGING="${ORCA_AMI_STAGING:-/tmp/orca-ami}"

rm -rf "$STAGING"
apt-get clean
rm -rf /var/lib/apt/lists/*
truncate -s 0 /etc/machine-id
