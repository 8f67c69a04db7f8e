#!/usr/bin/env bash
# Base host: containerd and runc from Debian 12, configured for ORCA's agent.
# Runs as root on the bake instance (Packer) and in CI inside a debootstrapped
# Debian 12 chroot (tests/tests/ami_provision.rs): what CI runs is what ships.
set -euo pipefail

STAGING="${ORCA_AMI_STAGING:-/tmp/orca-ami}"
export DEBIAN_FRONTEND=noninteractive

apt-get update
# util-linux (blkid), e2fsprogs and xfsprogs: the agent formats and mounts EBS volumes of claims.
apt-get install -y --no-install-recommends containerd runc ca-certificates iproute2 util-linux e2fsprogs xfsprogs

install -D -m 0644 "$STAGING/files/containerd-config.toml" /etc/containerd/config.toml
systemctl enable containerd.service
