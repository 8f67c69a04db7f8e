#!/usr/bin/env bash
# GPU variant (ORCA_AMI_GPU=true): NVIDIA's open kernel driver from NVIDIA's
# CUDA repository for Debian 12, the NVIDIA container toolkit, and a boot unit
# that writes the CDI spec (/etc/cdi/nvidia.yaml) the agent applies to
# containers. Not run in CI: no NVIDIA repository is reachable there and no GPU.
set -euo pipefail

if [ "${ORCA_AMI_GPU:-false}" != "true" ]; then
    echo "gpu: skipped (ORCA_AMI_GPU=${ORCA_AMI_GPU:-false})"
    exit 0
fi

STAGING="${ORCA_AMI_STAGING:-/tmp/orca-ami}"
CUDA_REPO="https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64"
TOOLKIT_REPO="https://nvidia.github.io/libnvidia-container"
export DEBIAN_FRONTEND=noninteractive

apt-get install -y --no-install-recommends curl gnupg "linux-headers-$(uname -r)" dkms

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
curl -fsSL -o "$tmp/cuda-keyring.deb" "$CUDA_REPO/cuda-keyring_1.1-1_all.deb"
dpkg -i "$tmp/cuda-keyring.deb"

curl -fsSL "$TOOLKIT_REPO/gpgkey" |
    gpg --dearmor --yes -o /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
curl -fsSL "$TOOLKIT_REPO/stable/deb/nvidia-container-toolkit.list" |
    sed 's#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#g' \
        >/etc/apt/sources.list.d/nvidia-container-toolkit.list

apt-get update
# Open kernel modules: what H100/H200 and newer need, and NVIDIA's default since 560.
apt-get install -y --no-install-recommends nvidia-open nvidia-container-toolkit

install -D -m 0644 "$STAGING/files/nvidia-cdi-generate.service" \
    /etc/systemd/system/nvidia-cdi-generate.service
systemctl enable nvidia-cdi-generate.service
