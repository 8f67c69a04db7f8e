//! The `kubernetes` section: ORCA as a Virtual Kubelet node of a cluster, and
//! the kubelet API it serves to that cluster's API server.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// Default name of the Node object.
pub const DEFAULT_NODE_NAME: &str = "orca";
/// Default listen address of the kubelet API.
pub const DEFAULT_KUBELET_LISTEN: &str = "0.0.0.0:10250";

/// The section as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesFile {
    /// A kubeconfig file; without it the client is inferred (in-cluster service
    /// account, or `$KUBECONFIG`/`~/.kube/config`).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The Node's name (a DNS subdomain).
    #[serde(default = "d_node_name")]
    pub node_name: String,
    /// Extra labels of the Node.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The Node's capacity; without it, what the provider may launch.
    #[serde(default)]
    pub capacity: Option<CapacityFile>,
    /// How often the node's Lease is renewed (ms).
    #[serde(default = "d_lease_renew")]
    pub lease_renew_ms: u64,
    /// The Lease's duration (s): how long the node counts as alive unrenewed.
    #[serde(default = "d_lease_duration")]
    pub lease_duration_s: u32,
    /// How often bound pods are listed again in full, besides the watch (ms).
    #[serde(default = "d_resync")]
    pub resync_ms: u64,
    /// How often pod and node statuses are compared with what Kubernetes shows
    /// and patched where they differ (ms).
    #[serde(default = "d_status_sync")]
    pub status_sync_ms: u64,
    /// The kubelet API.
    pub kubelet: KubeletFile,
}

/// Node capacity, as Kubernetes quantities.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityFile {
    /// CPU (e.g. `256`).
    pub cpu: String,
    /// Memory (e.g. `2Ti`).
    pub memory: String,
    /// Pods.
    pub pods: u32,
    /// `nvidia.com/gpu`.
    #[serde(default)]
    pub gpus: u32,
}

/// The kubelet API (HTTPS) the API server calls for logs, exec, attach,
/// port-forward and stats.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeletFile {
    /// Listen address.
    #[serde(default = "d_kubelet_listen")]
    pub listen: String,
    /// The address the API server reaches the kubelet API at (the Node's
    /// InternalIP); defaults to the listen address when that is not `0.0.0.0`.
    #[serde(default)]
    pub address: Option<String>,
    /// Serving certificate (PEM); with `serving_key`. Without both, the control
    /// plane issues one from its own CA for `address`.
    #[serde(default)]
    pub serving_cert: Option<PathBuf>,
    /// Serving key (PEM).
    #[serde(default)]
    pub serving_key: Option<PathBuf>,
    /// CA of the client certificates accepted (the API server's
    /// `--kubelet-client-certificate` is signed by it). Required: the kubelet
    /// API runs commands in containers.
    pub client_ca: PathBuf,
    /// `always-allow` (every authenticated client) or `webhook` (a
    /// SubjectAccessReview per request, as the kubelet's webhook mode).
    #[serde(default = "d_authorization")]
    pub authorization: String,
    /// How long a new exec/attach/port-forward connection may take to open its
    /// streams (ms).
    #[serde(default = "d_stream_creation")]
    pub stream_creation_timeout_ms: u64,
}

fn d_node_name() -> String {
    DEFAULT_NODE_NAME.into()
}
fn d_lease_renew() -> u64 {
    10_000
}
fn d_lease_duration() -> u32 {
    40
}
fn d_resync() -> u64 {
    60_000
}
fn d_status_sync() -> u64 {
    1_000
}
fn d_kubelet_listen() -> String {
    DEFAULT_KUBELET_LISTEN.into()
}
fn d_authorization() -> String {
    "always-allow".into()
}
fn d_stream_creation() -> u64 {
    30_000
}

/// The validated section.
#[derive(Debug, Clone)]
pub struct Kubernetes {
    /// Kubeconfig, or inferred.
    pub kubeconfig: Option<PathBuf>,
    /// Node name.
    pub node_name: String,
    /// Extra Node labels.
    pub labels: BTreeMap<String, String>,
    /// Fixed capacity, if configured.
    pub capacity: Option<orca_proto::types::v1::Resources>,
    /// Lease renewal period.
    pub lease_renew: Duration,
    /// Lease duration (s).
    pub lease_duration_s: u32,
    /// Full relist period.
    pub resync: Duration,
    /// Status comparison period.
    pub status_sync: Duration,
    /// The kubelet API.
    pub kubelet: Kubelet,
}

/// How kubelet API requests are authorised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization {
    /// Every client with a certificate from the client CA.
    AlwaysAllow,
    /// A SubjectAccessReview per request.
    Webhook,
}

/// The validated kubelet API settings.
#[derive(Debug, Clone)]
pub struct Kubelet {
    /// Listen address.
    pub listen: SocketAddr,
    /// Advertised address.
    pub address: IpAddr,
    /// Serving certificate and key files, if configured.
    pub serving: Option<(PathBuf, PathBuf)>,
    /// Client CA file.
    pub client_ca: PathBuf,
    /// Authorisation mode.
    pub authorization: Authorization,
    /// Stream creation timeout.
    pub stream_creation_timeout: Duration,
}

impl KubernetesFile {
    /// Validates the section, naming the first bad field.
    pub fn validate(self) -> Result<Kubernetes, ConfigError> {
        let invalid = |field, problem: String| ConfigError::Invalid { field, problem };
        let positive = |field, v: u64| {
            if v == 0 {
                Err(invalid(field, "must be positive".into()))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        if !super::super::pods::valid_name(&self.node_name) {
            return Err(invalid(
                "kubernetes.node_name",
                format!("{:?} is not a DNS subdomain", self.node_name),
            ));
        }
        let capacity = match self.capacity {
            None => None,
            Some(c) => {
                let q = super::positive_quantity;
                Some(orca_proto::types::v1::Resources {
                    cpu_millis: q("kubernetes.capacity.cpu", &c.cpu, true)?,
                    memory_bytes: q("kubernetes.capacity.memory", &c.memory, false)?,
                    gpus: c.gpus as i32,
                    pods: c.pods.max(1) as i32,
                })
            }
        };
        let lease_renew = positive("kubernetes.lease_renew_ms", self.lease_renew_ms)?;
        if u64::from(self.lease_duration_s) * 1000 <= self.lease_renew_ms {
            return Err(invalid(
                "kubernetes.lease_duration_s",
                "must be longer than lease_renew_ms".into(),
            ));
        }
        let k = self.kubelet;
        let listen: SocketAddr = k.listen.parse().map_err(|e| {
            invalid(
                "kubernetes.kubelet.listen",
                format!("{:?} is not host:port: {e}", k.listen),
            )
        })?;
        let address = match &k.address {
            Some(a) => a.parse().map_err(|e| {
                invalid(
                    "kubernetes.kubelet.address",
                    format!("{a:?} is not an IP address: {e}"),
                )
            })?,
            None if !listen.ip().is_unspecified() => listen.ip(),
            None => {
                return Err(invalid(
                    "kubernetes.kubelet.address",
                    "required when kubernetes.kubelet.listen is a wildcard address: the API server dials it".into(),
                ));
            }
        };
        let serving = match (k.serving_cert, k.serving_key) {
            (Some(c), Some(key)) => Some((c, key)),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "kubernetes.kubelet.serving_cert",
                    "set serving_cert and serving_key together, or neither".into(),
                ));
            }
        };
        let authorization = match k.authorization.as_str() {
            "always-allow" => Authorization::AlwaysAllow,
            "webhook" => Authorization::Webhook,
            other => {
                return Err(invalid(
                    "kubernetes.kubelet.authorization",
                    format!("{other:?}: expected always-allow or webhook"),
                ));
            }
        };
        Ok(Kubernetes {
            kubeconfig: self.kubeconfig,
            node_name: self.node_name,
            labels: self.labels,
            capacity,
            lease_renew,
            lease_duration_s: self.lease_duration_s,
            resync: positive("kubernetes.resync_ms", self.resync_ms)?,
            status_sync: positive("kubernetes.status_sync_ms", self.status_sync_ms)?,
            kubelet: Kubelet {
                listen,
                address,
                serving,
                client_ca: k.client_ca,
                authorization,
                stream_creation_timeout: positive(
                    "kubernetes.kubelet.stream_creation_timeout_ms",
                    k.stream_creation_timeout_ms,
                )?,
            },
        })
    }
}
