//! What every component of the control plane shares, and nothing else: the
//! configuration, the store, the instance provider, the CA, the connections to
//! agents, the event stream, the audit log, the telemetry of the heartbeats,
//! the launch counters, one-shot marks, the scheduler's wake-up and the
//! resolver of pods' references. No domain decisions live here; the
//! components ([`crate::cluster`] lists them) own those.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use orca_proto::agent::v1::agent_service_client::AgentServiceClient;
use orca_proto::controlplane::v1 as pb;
use tokio::sync::Notify;
use tonic::transport::Channel;

use crate::cloud::{InstanceProvider, ProviderError};
use crate::config::Config;
use crate::pki::Pki;
use orca_store::{Store, StoreError};

/// Errors of cluster operations; the API maps them to gRPC codes in one place.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The provider failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// No such object.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// `node` or `pod`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The name is taken.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// `node` or `pod`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The join token is unknown, used, expired or for another node.
    #[error("join refused: {0}")]
    JoinRefused(String),
    /// The caller did not prove who it is.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The object is in a state that does not allow the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A quota has no room for it.
    #[error("{0}")]
    ResourceExhausted(String),
    /// What a pod refers to (a ConfigMap, Secret, token) could not be resolved.
    #[error(transparent)]
    Unresolved(#[from] ResolveError),
    /// A node's agent could not be reached or failed.
    #[error("node {node}: {status}")]
    Agent {
        /// Node name.
        node: String,
        /// The agent's (or transport's) status.
        status: tonic::Status,
    },
}

/// The infrastructure every component holds; cheap to clone.
#[derive(Clone)]
pub struct Shared {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    store: Store,
    provider: Box<dyn InstanceProvider>,
    pki: Pki,
    agent_tls: Arc<rustls::ClientConfig>,
    agent_url: String,
    agents: Mutex<HashMap<String, Channel>>,
    done: Mutex<HashSet<String>>,
    wake_scheduler: Notify,
    audit: crate::auth::audit::AuditLog,
    resolver: std::sync::OnceLock<Arc<dyn PodResolver>>,
    events: tokio::sync::broadcast::Sender<pb::Event>,
    telemetry: crate::telemetry::TelemetryStore,
    launches: crate::metrics::launches::LaunchCounters,
}

/// What a pod's agent gets besides the pod: content the agent cannot read
/// itself (Kubernetes mode: ConfigMaps, Secrets, the service account token,
/// registry credentials).
#[derive(Debug, Default)]
pub struct Resolved {
    /// Credentials from the pod's imagePullSecrets.
    pub registry_credentials: Vec<orca_proto::types::v1::RegistryCredential>,
    /// ConfigMaps, Secrets and the token the pod refers to.
    pub volume_data: Option<orca_proto::types::v1::VolumeData>,
    /// The spec with every `env[].valueFrom` and `envFrom` turned into values,
    /// when it had any.
    pub spec_json: Option<String>,
}

/// What a pod's launch needs from outside ORCA (Kubernetes mode): the role of
/// its ServiceAccount, and its PersistentVolumeClaims as claims.
#[derive(Debug, Default)]
pub struct LaunchContext {
    /// The ServiceAccount's `eks.amazonaws.com/role-arn`.
    pub service_account_role_arn: Option<String>,
    /// The pod's claims, bound to their EBS volumes.
    pub claims: Vec<pb::Claim>,
}

/// Why a resolver or an object source could not answer. The message names
/// what is missing or failed; the kind says whether waiting can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// What the pod refers to does not exist or cannot be used as it is (a
    /// missing ConfigMap, Secret or key; a malformed reference; a token in a
    /// mode that issues none).
    #[error("{0}")]
    Unresolvable(String),
    /// The source could not be asked (the API server or the store failed): a
    /// later try may succeed.
    #[error("{0}")]
    Unavailable(String),
}

impl ResolveError {
    /// The same error, its message prefixed with `what` (`configmap ns/name`).
    pub fn context(self, what: impl std::fmt::Display) -> Self {
        match self {
            Self::Unresolvable(m) => Self::Unresolvable(format!("{what}: {m}")),
            Self::Unavailable(m) => Self::Unavailable(format!("{what}: {m}")),
        }
    }
}

/// A reference the pod's own spec gets wrong: nothing to wait for.
impl From<String> for ResolveError {
    fn from(message: String) -> Self {
        Self::Unresolvable(message)
    }
}

/// Resolves what a pod refers to, just before it is handed to its agent.
pub trait PodResolver: Send + Sync {
    /// What launching an instance for `record` needs; an error says what is
    /// missing (the pod waits, bounded by the pending timeout).
    fn launch_context<'a>(
        &'a self,
        record: &'a pb::PodRecord,
    ) -> futures::future::BoxFuture<'a, Result<LaunchContext, ResolveError>> {
        let _ = record;
        Box::pin(async { Ok(LaunchContext::default()) })
    }
    /// ORCA created the volume of a claim that mirrors one of the resolver's
    /// (Kubernetes: a PersistentVolume bound to the claim is made for it).
    fn volume_provisioned<'a>(
        &'a self,
        claim: &'a pb::Claim,
    ) -> futures::future::BoxFuture<'a, Result<(), ResolveError>> {
        let _ = claim;
        Box::pin(async { Ok(()) })
    }
    /// Whether the claim a mirrored claim stands for is gone (deleted, or
    /// replaced by another of the same name); its storage is then reclaimed.
    fn claim_gone<'a>(
        &'a self,
        claim: &'a pb::Claim,
    ) -> futures::future::BoxFuture<'a, Result<bool, ResolveError>> {
        let _ = claim;
        Box::pin(async { Ok(false) })
    }
    /// The storage of a mirrored claim was reclaimed (Kubernetes: its
    /// PersistentVolume goes).
    fn volume_reclaimed<'a>(
        &'a self,
        claim: &'a pb::Claim,
    ) -> futures::future::BoxFuture<'a, Result<(), ResolveError>> {
        let _ = claim;
        Box::pin(async { Ok(()) })
    }
    /// The content `record` refers to; an error names what is missing, and
    /// fails the pod with reason CreateContainerConfigError.
    fn resolve<'a>(
        &'a self,
        record: &'a pb::PodRecord,
        node: &'a pb::Node,
    ) -> futures::future::BoxFuture<'a, Result<Resolved, ResolveError>>;
}

/// GPU samples of history kept per GPU.
const GPU_HISTORY: usize = 120;

impl Shared {
    /// Assembles the shared infrastructure; `agent_tls` is the client
    /// configuration for calls to agents (the cluster CA, the control plane's
    /// certificate).
    pub fn new(
        config: Config,
        store: Store,
        provider: Box<dyn InstanceProvider>,
        pki: Pki,
        agent_tls: Arc<rustls::ClientConfig>,
        agent_url: String,
    ) -> Self {
        let audit = crate::auth::audit::AuditLog::new(&config.data_dir);
        Self {
            inner: Arc::new(Inner {
                config,
                store,
                provider,
                pki,
                agent_tls,
                agent_url,
                agents: Mutex::new(HashMap::new()),
                done: Mutex::new(HashSet::new()),
                audit,
                resolver: Default::default(),
                events: tokio::sync::broadcast::channel(1024).0,
                wake_scheduler: Notify::new(),
                telemetry: crate::telemetry::TelemetryStore::new(GPU_HISTORY),
                launches: Default::default(),
            }),
        }
    }

    /// Drops the connection to the agent at `address` (its node is gone).
    pub fn forget_agent(&self, address: &str) {
        let mut agents = self.inner.agents.lock().unwrap_or_else(|p| p.into_inner());
        agents.remove(address);
    }

    /// The audit log of authorization decisions.
    pub fn audit(&self) -> &crate::auth::audit::AuditLog {
        &self.inner.audit
    }

    /// Installs the resolver of pods' references (once; the Kubernetes mode).
    pub fn set_resolver(&self, resolver: Arc<dyn PodResolver>) {
        let _ = self.inner.resolver.set(resolver);
    }

    /// What the pod refers to, from the resolver if there is one.
    pub async fn resolve(
        &self,
        record: &pb::PodRecord,
        node: &pb::Node,
    ) -> Result<Resolved, ResolveError> {
        match self.inner.resolver.get() {
            Some(r) => r.resolve(record, node).await,
            None => Ok(Resolved::default()),
        }
    }

    /// The resolver, when there is one (Kubernetes mode).
    pub(crate) fn resolver(&self) -> Option<&Arc<dyn PodResolver>> {
        self.inner.resolver.get()
    }

    /// Every event recorded from now on (a lagging receiver loses the oldest).
    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<pb::Event> {
        self.inner.events.subscribe()
    }

    /// The URL agents dial (given to launched hosts and in join tokens).
    pub fn agent_url(&self) -> String {
        self.inner.agent_url.clone()
    }

    /// The certificate authority.
    pub fn pki(&self) -> &Pki {
        &self.inner.pki
    }

    /// True the first time this process does `what` (e.g. `dispatch:<uid>`,
    /// `fence:<node>`): one-shot actions that a restarted control plane redoes.
    pub fn first_time(&self, what: &str) -> bool {
        let mut set = self.inner.done.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(what.to_owned())
    }

    /// Allows `what` to be done again (it failed, or its episode ended).
    pub fn again(&self, what: &str) {
        let mut set = self.inner.done.lock().unwrap_or_else(|p| p.into_inner());
        set.remove(what);
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// GPU telemetry from the heartbeats.
    pub fn telemetry(&self) -> &crate::telemetry::TelemetryStore {
        &self.inner.telemetry
    }

    /// Counts of the instance launches the cluster asked for (the metrics).
    pub fn launch_counters(&self) -> &crate::metrics::launches::LaunchCounters {
        &self.inner.launches
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The instance provider.
    pub fn provider(&self) -> &dyn InstanceProvider {
        self.inner.provider.as_ref()
    }

    /// Wakes the scheduler (a pod or node changed).
    pub fn wake_scheduler(&self) {
        self.inner.wake_scheduler.notify_one();
    }

    /// Resolves when the scheduler is woken.
    pub async fn scheduler_woken(&self) {
        self.inner.wake_scheduler.notified().await
    }

    /// A client for the agent of `node`, connecting lazily over mutual TLS: the
    /// agent's certificate must name the node.
    pub fn agent(&self, node: &pb::Node) -> Result<AgentServiceClient<Channel>, ClusterError> {
        if node.agent_address.is_empty() {
            return Err(ClusterError::FailedPrecondition(format!(
                "node {} has not joined yet",
                node.name
            )));
        }
        let mut agents = self.inner.agents.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match agents.get(&node.agent_address) {
            Some(c) => c.clone(),
            None => {
                let channel = orca_proto::tls::channel(
                    &node.agent_address,
                    Some(&node.name),
                    self.inner.agent_tls.clone(),
                    std::time::Duration::from_secs(5),
                )
                .map_err(|e| {
                    ClusterError::Invalid(format!("agent address {}: {e}", node.agent_address))
                })?;
                agents.insert(node.agent_address.clone(), channel.clone());
                channel
            }
        };
        Ok(AgentServiceClient::new(channel))
    }

    /// A request to an agent with a deadline: the agent call timeout plus `extra`
    /// (a stop may take its whole grace period).
    pub fn timed<T>(&self, message: T, extra: std::time::Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.set_timeout(self.inner.config.agent_call_timeout + extra);
        req
    }

    /// Flushes the store without waiting for it (for writes an agent would
    /// repeat after a crash anyway: observed pod statuses).
    pub fn flush_in_background(&self) {
        let store = self.inner.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.flush().await {
                tracing::warn!(error = %e, "store flush failed");
            }
        });
    }

    /// Records an event about a node.
    pub fn node_event(&self, node: &str, warning: bool, reason: &str, message: String) {
        self.event("Node", "", node, warning, reason, message);
    }

    /// Records an event.
    pub fn event(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        warning: bool,
        reason: &str,
        message: String,
    ) {
        let event = pb::Event {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            r#type: if warning { "Warning" } else { "Normal" }.into(),
            reason: reason.into(),
            message,
            time: Some(now()),
        };
        if let Err(e) = self.inner.store.add_event(&event) {
            tracing::warn!(error = %e, reason, "event not recorded");
        }
        let _ = self.inner.events.send(event);
    }
}

pub use orca_model::time::{age, now};
