#!/usr/bin/env bash
# The standalone ORCA demo on this machine: no Kubernetes, no AWS.
#
#   deploy/local/demo.sh        installs what is missing, builds, starts a private containerd,
#                               the control plane, a local registry with a busybox image, two
#                               simulated hosts, runs a pod, shows its status and logs
#   deploy/local/demo.sh down   stops everything the demo started, deletes the hosts' network
#                               namespaces and the bridge, and removes its directory
#
# Everything lives under $ORCA_DEMO_DIR (default /tmp/orca-demo); containerd runs on a private
# socket there, never the system's. Each simulated host gets a network namespace
# ($BRIDGE-<node>) with an address in $CIDR on bridge $BRIDGE (ORCA_DEMO_BRIDGE, default
# orcademo0; ORCA_DEMO_CIDR, default 10.76.0.0/24); the bridge's address is the gateway, where
# hosts reach the control plane and the registry. Ports: control plane 127.0.0.1:7443 (and the
# gateway), registry <gateway>:5050 (127.0.0.1:5050 where namespaces are unavailable; override
# with ORCA_DEMO_PORT and ORCA_DEMO_REGISTRY_PORT). Builds release binaries (ORCA_DEMO_PROFILE=debug
# for a quicker build; CARGO_TARGET_DIR is honoured). Needs root (containerd, runc, netns).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEMO="${ORCA_DEMO_DIR:-/tmp/orca-demo}"
PORT="${ORCA_DEMO_PORT:-7443}"
REG_PORT="${ORCA_DEMO_REGISTRY_PORT:-5050}"
BRIDGE="${ORCA_DEMO_BRIDGE:-orcademo0}"
CIDR="${ORCA_DEMO_CIDR:-10.76.0.0/24}"
GATEWAY="$(python3 -c "import ipaddress,sys; print(ipaddress.ip_network(sys.argv[1])[1])" "$CIDR")"
PROFILE="${ORCA_DEMO_PROFILE:-release}"   # or debug, for a quicker build
BIN="${CARGO_TARGET_DIR:-$REPO/target}/$PROFILE"
# The CLI reads the credentials (server, cluster CA, admin token) the control plane writes.
export ORCACONFIG="$DEMO/orca/admin.yaml"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

stop_pid() { # stop_pid FILE: SIGTERM, wait, SIGKILL
    local f=$1 pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

down() {
    [ -d "$DEMO" ] || { echo "nothing to clean: $DEMO does not exist"; return 0; }
    echo "stopping the simulated hosts, their containers, the control plane, containerd and the registry"
    for f in "$DEMO"/orca/hosts/*/agent.pid; do stop_pid "$f"; done
    for f in "$DEMO"/orca/hosts/*/pods/*/pause.pid; do [ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null; done
    stop_pid "$DEMO/control-plane.pid"
    if [ -S "$DEMO/containerd/containerd.sock" ]; then
        local ctr="ctr --address $DEMO/containerd/containerd.sock"
        for ns in $($ctr namespaces ls -q 2>/dev/null); do
            for t in $($ctr -n "$ns" tasks ls -q 2>/dev/null); do
                $ctr -n "$ns" tasks kill -s SIGKILL "$t" 2>/dev/null || true
                $ctr -n "$ns" tasks delete -f "$t" >/dev/null 2>&1 || true
            done
        done
    fi
    stop_pid "$DEMO/containerd.pid"
    stop_pid "$DEMO/registry.pid"
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$BRIDGE-" || true); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true   # the veths went with their namespaces
    grep " $DEMO/" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$DEMO"
    echo "clean: $DEMO removed"
}

if [ "${1:-up}" = "down" ]; then down; exit 0; fi
if [ -e "$DEMO" ]; then
    echo "$DEMO exists: a demo is running or was left behind. Run: deploy/local/demo.sh down" >&2
    exit 1
fi

say "Installing what is missing (Debian packages, moto/grpcurl venv)"
"$REPO/deploy/local/setup.sh"

say "Building ORCA ($PROFILE)"
# Only what the demo runs: the control plane without the EC2 provider and Kubernetes mode (no AWS SDK,
# no kube-rs: cargo features `ec2` and `kubernetes`), the agent and the CLI.
BUILD=(-p orca-control-plane -p orca-agent -p orca-cli --no-default-features)
if [ "$PROFILE" = release ]; then
    (cd "$REPO" && cargo build --release "${BUILD[@]}")
else
    (cd "$REPO" && cargo build "${BUILD[@]}")
fi

mkdir -p "$DEMO"/{containerd/root,containerd/state,registry/data}
say "Starting containerd on a private socket ($DEMO/containerd/containerd.sock)"
cat > "$DEMO/containerd/config.toml" <<EOF
version = 2
root = "$DEMO/containerd/root"
state = "$DEMO/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$DEMO/containerd/containerd.sock"
[ttrpc]
  address = "$DEMO/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
EOF
setsid containerd --config "$DEMO/containerd/config.toml" > "$DEMO/containerd.log" 2>&1 < /dev/null &
echo $! > "$DEMO/containerd.pid"
CTR="ctr --address $DEMO/containerd/containerd.sock"
for _ in $(seq 100); do $CTR version >/dev/null 2>&1 && break; sleep 0.1; done

say "Starting the control plane on https://127.0.0.1:$PORT (mutual TLS with its agents; a cluster CA is created)"
cat > "$DEMO/orca.yaml" <<EOF
listen: 127.0.0.1:$PORT
data_dir: $DEMO/orca
heartbeat_interval_ms: 1000
suspect_after_ms: 3000
not_ready_after_ms: 6000
lost_after_ms: 15000
provider:
  local:
    containerd_socket: $DEMO/containerd/containerd.sock
    containerd_namespace_prefix: demo
    insecure_registries: ["$GATEWAY:$REG_PORT"]
    network:
      bridge: $BRIDGE
      cidr: $CIDR
EOF
setsid "$BIN/orca-control-plane" --config "$DEMO/orca.yaml" > "$DEMO/control-plane.log" 2>&1 < /dev/null &
echo $! > "$DEMO/control-plane.pid"
ORCA="$BIN/orca"
for _ in $(seq 100); do [ -f "$ORCACONFIG" ] && "$ORCA" node list >/dev/null 2>&1 && break; sleep 0.1; done

if ip link show "$BRIDGE" >/dev/null 2>&1; then
    REG_HOST=$GATEWAY
    echo "hosts get network namespaces on bridge $BRIDGE ($CIDR); they reach this machine at $GATEWAY"
else
    REG_HOST=127.0.0.1
    echo "network namespaces unavailable: hosts run as plain processes on 127.0.0.1 (see $DEMO/control-plane.log)"
fi

say "Starting a registry on $REG_HOST:$REG_PORT with a busybox image built offline"
cat > "$DEMO/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $DEMO/registry/data
http:
  addr: $REG_HOST:$REG_PORT
health:
  storagedriver:
    enabled: false
EOF
setsid docker-registry serve "$DEMO/registry/config.yml" > "$DEMO/registry.log" 2>&1 < /dev/null &
echo $! > "$DEMO/registry.pid"
for _ in $(seq 100); do
    python3 -c "import urllib.request as u; u.urlopen('http://$REG_HOST:$REG_PORT/v2/', timeout=1)" 2>/dev/null && break
    sleep 0.1
done
python3 "$REPO/tests/env/mkoci.py" "$DEMO/busybox-oci.tar" orca/busybox:demo >/dev/null
IMAGE="$REG_HOST:$REG_PORT/orca/busybox:demo"
skopeo copy -q --insecure-policy --dest-tls-verify=false "oci-archive:$DEMO/busybox-oci.tar" "docker://$IMAGE"
echo "pushed $IMAGE"

say "Adding two simulated hosts (each an orca-agent in its own network namespace, with its own containerd namespace)"
run "$ORCA" node add host-1
run "$ORCA" node add host-2
run "$ORCA" get nodes
run ip netns list

say "Running a pod"
run "$ORCA" run hello --image "$IMAGE" -- sh -c 'echo "hello from ORCA, pod $(hostname)"; for i in 1 2 3; do echo "tick $i"; sleep 1; done'
run "$ORCA" wait hello --for Running
run "$ORCA" get pods
NODE=$("$ORCA" get pod hello -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["node"])')
echo "containerd itself, in $NODE's namespace:"
run $CTR -n "demo-$NODE" tasks ls
run "$ORCA" wait hello --for Done
run "$ORCA" get pods
say "Its logs"
run "$ORCA" logs hello
say "Its events"
run "$ORCA" events hello

cat <<EOF

The demo cluster keeps running. Try it yourself:
  export ORCACONFIG=$ORCACONFIG; alias orca=$ORCA     # or: orca login $ORCACONFIG (copies it to ~/.config/orca/config)
  orca run web --image $IMAGE --restart Always -- httpd -f -p 8080 -h /www
  curl http://<web's host address, see: orca get nodes>:8080/    # the pod is in its host's network
  orca node fault <web's node> --kill-agent    # watch: orca get nodes; orca get pods -o wide; orca events
  orca get pods;  orca logs hello;  orca describe pod web;  orca run bad --image $IMAGE-nope
Logs of every daemon are in $DEMO/*.log and $DEMO/orca/hosts/*/agent.log.
Clean up: deploy/local/demo.sh down
EOF
