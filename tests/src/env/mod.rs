//! The real services end-to-end tests run against, each started inside a directory the
//! test owns (a [`tempfile::TempDir`]) and torn down when dropped.
//!
//! ```no_run
//! use orca_tests::env::{Containerd, Registry, busybox_image};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let containerd = Containerd::start(dir.path()).unwrap();
//! let registry = Registry::start(dir.path()).unwrap();
//! let image = busybox_image(dir.path()).unwrap();
//! let reference = registry.push_oci_archive(&image, "orca/busybox:test").unwrap();
//! containerd.ctr("my-test", &["images", "pull", "--plain-http", &reference]).unwrap();
//! // Drop order: services first, then the directory (declare `dir` first).
//! ```
//!
//! Every service takes its own subdirectory (`containerd/`, `registry/`, `moto/`), so one
//! directory can hold one of each. Daemons must be started from the test's own code
//! path: they are owned by the returned value and die with it, or with the test
//! process (see [`Daemon`]).

mod block;
mod containerd;
mod daemon;
mod ec2_hosts;
mod ec2_proxy;
mod ec2_volumes;
mod error;
mod http;
mod image;
mod imds;
mod kapi;
mod moto;
mod registry;
mod tools;

pub use block::EbsDisk;
pub use containerd::Containerd;
pub(crate) use containerd::unmount_under;
pub use daemon::{Daemon, STOP_GRACE};
pub use ec2_hosts::{InstanceInfo, InstancePlayer, Played, PlayerSettings, cluster_instances};
pub use ec2_proxy::{
    Call, Ec2Proxy, Fault, HARNESS_ACCESS_KEY, ReservationView, ec2_client, iam_client,
};
pub use error::{EnvError, Result};
pub use http::{HttpResponse, http_request};
pub use image::{BUSYBOX_REF, busybox_image, containerd_and_registry, containerd_and_registry_on};
pub use imds::ImdsServer;
pub use kapi::{
    KubeApi, KubeApiOptions, RecordedRequest, TOKEN as KUBE_API_TOKEN, emulator_python,
    kubectl_binary,
};
pub use moto::Moto;
pub use registry::{Registry, Secured};
pub use tools::{
    find_processes, free_port, grpcurl, install_hint, kill_pid_files, process_cmdline,
    process_running, repo_root, require, try_require, workspace_bin,
};

/// How many times a service is started on a fresh port when the one [`free_port`]
/// returned was taken in between.
const PORT_ATTEMPTS: usize = 3;

/// Runs `start` again (with a fresh port, which `start` picks) when the daemon failed
/// because its port was taken.
fn with_port_retry<T>(mut start: impl FnMut() -> Result<T>) -> Result<T> {
    let mut attempt = 1;
    loop {
        match start() {
            Err(EnvError::Start { ref log, .. })
                if attempt < PORT_ATTEMPTS
                    && log.to_ascii_lowercase().contains("address already in use") =>
            {
                attempt += 1;
            }
            other => return other,
        }
    }
}
