//! The control plane's shared state: the store, the configuration, the instance
//! provider and the connections to agents. The operations live in the modules
//! named for them ([`crate::registry`], [`crate::pods`], [`crate::scheduler`]),
//! each as an `impl Cluster` block.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use orca_proto::agent::v1::agent_service_client::AgentServiceClient;
use orca_proto::controlplane::v1 as pb;
use tokio::sync::Notify;
use tonic::transport::Channel;

use crate::cloud::{InstanceProvider, ProviderError};
use crate::config::Config;
use crate::store::{Store, StoreError};

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
    /// The object is in a state that does not allow the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A node's agent could not be reached or failed.
    #[error("node {node}: {status}")]
    Agent {
        /// Node name.
        node: String,
        /// The agent's (or transport's) status.
        status: tonic::Status,
    },
}

/// Shared state of the control plane; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    store: Store,
    provider: Box<dyn InstanceProvider>,
    agents: Mutex<HashMap<String, Channel>>,
    wake_scheduler: Notify,
}

impl Cluster {
    /// Assembles the cluster.
    pub fn new(config: Config, store: Store, provider: Box<dyn InstanceProvider>) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                store,
                provider,
                agents: Mutex::new(HashMap::new()),
                wake_scheduler: Notify::new(),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
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

    /// A client for the agent of `node`, connecting lazily.
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
                let endpoint = tonic::transport::Endpoint::from_shared(format!(
                    "http://{}",
                    node.agent_address
                ))
                .map_err(|e| {
                    ClusterError::Invalid(format!("agent address {}: {e}", node.agent_address))
                })?
                .connect_timeout(std::time::Duration::from_secs(5));
                let channel = endpoint.connect_lazy();
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
    }
}

/// The current time on the wire.
pub fn now() -> prost_types::Timestamp {
    let t = jiff::Timestamp::now();
    prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

/// Seconds between a wire timestamp and now.
pub fn age(t: Option<&prost_types::Timestamp>) -> std::time::Duration {
    let Some(t) = t else {
        return std::time::Duration::ZERO;
    };
    let now = jiff::Timestamp::now();
    let secs = now.as_second() - t.seconds;
    let nanos = now.subsec_nanosecond() - t.nanos;
    std::time::Duration::try_from(jiff::SignedDuration::new(secs, nanos)).unwrap_or_default()
}
