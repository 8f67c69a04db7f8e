#!/usr/bin/env bash
# ORCA's agent: the binaries, their systemd unit (enabled), the operator's
# override file and the state directory. At boot the agent reads its boot data
# from IMDSv2 user data and joins the control plane.
set -euo pipefail

STAGING="${ORCA_AMI_STAGING:-/tmp/orca-ami}"

for bin in orca-agent orca-logger orca-pause; do
    install -D -m 0755 -o root -g root "$STAGING/$bin" "/usr/local/bin/$bin"
done
install -D -m 0644 "$STAGING/files/orca-agent.service" /etc/systemd/system/orca-agent.service
if [ ! -e /etc/default/orca-agent ]; then
    install -D -m 0644 "$STAGING/files/orca-agent.default" /etc/default/orca-agent
fi
install -d -m 0700 /var/lib/orca-agent
systemctl enable orca-agent.service

# The binaries run on this system (libc, loader): fail the bake, not the boot.
/usr/local/bin/orca-agent --version
