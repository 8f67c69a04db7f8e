//! ORCA's end-to-end tests and the environment they run in.
//!
//! # Background
//!
//! ORCA's integration and end-to-end tests run against the real parts, never doubles:
//! containerd + runc, a container registry, and `moto_server` playing the EC2 API
//! (see `DESIGN.md`, "Test environment", and `../shared/TESTENV.md` for the commands
//! this crate automates). Unit tests live in the crates they test and start nothing.
//!
//! # Design
//!
//! - Every service starts **inside a caller-provided directory** (a [`tempfile`] dir), on
//!   a private unix socket or a free loopback port, with its own config file: never the
//!   system containerd socket, never Debian's default registry config.
//! - A missing tool is a **loud failure** naming the package to install
//!   ([`env::require`]); no test is ever skipped for lack of a prerequisite.
//! - Readiness is polled with [`eventually`], never waited for with a bare sleep.
//! - Teardown is `Drop`: tasks and containers are killed and deleted, daemons get
//!   SIGTERM then SIGKILL (by PID and process group), leftover mounts under the
//!   directory are lazily unmounted. `Drop` also runs when a test panics. For the case
//!   where the test process itself is killed (a nextest timeout sends SIGTERM), every
//!   daemon is started through `setpriv --pdeathsig KILL` from one long-lived spawner
//!   thread ([`env::Daemon`]), so the kernel kills it when the test process exits.
//! - Daemons' stdout and stderr go to `*.log` files in the directory; start errors carry
//!   the tail of that log ([`env::EnvError::Start`]).
//!
//! # Layout
//!
//! - [`mod@env`]: tools ([`env::require`], [`env::grpcurl`], [`env::workspace_bin`]), the
//!   daemon supervisor ([`env::Daemon`]) and the services: [`env::Containerd`],
//!   [`env::Registry`], [`env::Moto`], plus the offline busybox image
//!   ([`env::busybox_image`], built by `tests/env/mkoci.py`).
//! - [`eventually`]: polling with a deadline, async and blocking.
//! - [`cluster`]: a whole standalone ORCA (containerd, registry, control plane, CLI) per test.
//! - [`ec2_cluster`]: the same on the `ec2` provider: moto behind the EC2 proxy,
//!   and an instance player booting an agent for every instance launched.
//! - [`kube_cluster`]: ORCA in Kubernetes mode: the Kubernetes API emulator
//!   (kmock, extended in `tests/kapi/`), the cluster as its Virtual Kubelet
//!   node, real kubectl.
//! - [`session`]: exec sessions through AdminService, message by message.
//! - [`recordings`]: the control plane's Kubernetes requests and EC2 calls, recorded
//!   over a test run and compared exactly with the deployment's RBAC and IAM policy.
//!
//! # Limitations
//!
//! - containerd and runc keep shim sockets and runc state under `/run/containerd` even
//!   with a private root: give every test its own containerd namespace.
//! - `docker-registry` runs plain HTTP without auth; the TLS + htpasswd variant of
//!   `TESTENV.md` §3b is not automated yet.
//! - The environment needs root (containerd, runc, mounts), as CI and the dev machines run.

pub mod agent;
pub mod ami;
pub mod bench;
pub mod cluster;
pub mod ec2_cluster;
pub mod env;
pub mod eventually;
pub mod kube_cluster;
pub mod pki;
pub mod recordings;
pub mod session;
