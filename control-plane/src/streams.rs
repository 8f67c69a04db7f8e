//! Logs, exec, attach and port-forward of a pod's containers, relayed from the
//! agent of the pod's node over mutual TLS, and a node's usage statistics.
//! These are the agent plumbing in one place: the AdminService exposes some to
//! `orca`, and the kubelet API of the Kubernetes mode sits on them too.
//!
//! The control plane does not buffer: each relayed stream is an HTTP/2 stream
//! to the agent, so flow control carries a slow client's back-pressure to the
//! agent's reader. A client that goes away drops the agent stream, which ends
//! the agent's session (an exec'd process is killed, a forwarded connection
//! closed). Streams have no deadline; dialling the agent has the connect
//! timeout. `Stats` is a unary call with the agent call timeout.

use futures::{Stream, StreamExt as _};
use orca_proto::agent::v1 as agent;
use orca_proto::agent::v1::agent_service_client::AgentServiceClient;
use orca_proto::controlplane::v1 as pb;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::pods::uid;
use crate::shared::{ClusterError, Shared};

/// Where a pod's containers run.
struct Placement {
    node: String,
    uid: String,
    agent: AgentServiceClient<Channel>,
}

/// Logs, exec, attach, port-forward and stats relayed to a pod's agent.
#[derive(Clone)]
pub struct Streams {
    shared: Shared,
    registry: crate::registry::Registry,
    pods: crate::pods::Pods,
}

impl Streams {
    /// The component over `shared` and the components below it.
    pub fn new(
        shared: Shared,
        registry: crate::registry::Registry,
        pods: crate::pods::Pods,
    ) -> Self {
        Self {
            shared,
            registry,
            pods,
        }
    }
}

impl Streams {
    /// The agent that runs pod `namespace/name`, if it can be reached.
    fn placement(&self, namespace: &str, name: &str) -> Result<Placement, ClusterError> {
        let record = self.pods.pod(namespace, name)?;
        if record.node_name.is_empty() {
            return Err(ClusterError::FailedPrecondition(format!(
                "pod {name} is not on a node yet"
            )));
        }
        let node = self.registry.node(&record.node_name)?;
        Ok(Placement {
            agent: self.reachable_agent(&node)?,
            node: node.name,
            uid: uid(&record),
        })
    }

    /// A client for `node`'s agent, unless the node's state says it cannot be
    /// reached.
    fn reachable_agent(
        &self,
        node: &pb::Node,
    ) -> Result<AgentServiceClient<Channel>, ClusterError> {
        let state = pb::NodeState::try_from(node.state).unwrap_or_default();
        if matches!(
            state,
            pb::NodeState::NotReady
                | pb::NodeState::Lost
                | pb::NodeState::Failed
                | pb::NodeState::Terminating
        ) {
            return Err(ClusterError::Agent {
                node: node.name.clone(),
                status: tonic::Status::unavailable(format!(
                    "the node is {}: its agent cannot be reached",
                    state.as_str_name().trim_start_matches("NODE_STATE_")
                )),
            });
        }
        self.shared.agent(node)
    }

    /// A container's log from the pod's node; `options.uid` is filled in.
    pub async fn logs(
        &self,
        namespace: &str,
        name: &str,
        mut options: agent::LogsRequest,
    ) -> Result<Streaming<agent::LogChunk>, ClusterError> {
        let mut at = self.placement(namespace, name)?;
        options.uid = at.uid;
        at.agent
            .logs(options)
            .await
            .map(|r| r.into_inner())
            .map_err(agent_error(at.node))
    }

    /// An exec session in a container of the pod: `start` (its uid is filled
    /// in), then `input` (stdin, resizes, stdin close) relayed to the agent.
    pub async fn exec(
        &self,
        namespace: &str,
        name: &str,
        mut start: agent::ExecStart,
        input: impl Stream<Item = agent::ExecInput> + Send + 'static,
    ) -> Result<Streaming<agent::ExecOutput>, ClusterError> {
        let mut at = self.placement(namespace, name)?;
        start.uid = at.uid;
        let first = agent::ExecInput {
            input: Some(agent::exec_input::Input::Start(start)),
        };
        at.agent
            .exec(futures::stream::iter([first]).chain(input))
            .await
            .map(|r| r.into_inner())
            .map_err(agent_error(at.node))
    }

    /// An attach session to a container's main process, as [`Streams::exec`].
    pub async fn attach(
        &self,
        namespace: &str,
        name: &str,
        mut start: agent::AttachStart,
        input: impl Stream<Item = agent::AttachInput> + Send + 'static,
    ) -> Result<Streaming<agent::ExecOutput>, ClusterError> {
        let mut at = self.placement(namespace, name)?;
        start.uid = at.uid;
        let first = agent::AttachInput {
            input: Some(agent::attach_input::Input::Start(start)),
        };
        at.agent
            .attach(futures::stream::iter([first]).chain(input))
            .await
            .map(|r| r.into_inner())
            .map_err(agent_error(at.node))
    }

    /// A TCP connection to `port` of the pod (on its host's network), relayed
    /// through the pod's agent: `input` carries the client's data and its
    /// `close_write`; the output ends once both sides have closed. The agent
    /// answers NOT_FOUND, FAILED_PRECONDITION (no container runs) or
    /// UNAVAILABLE (`pod web: port 8080: connection refused`) as
    /// [`ClusterError::Agent`].
    pub async fn port_forward(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
        input: impl Stream<Item = agent::PortForwardInput> + Send + 'static,
    ) -> Result<Streaming<agent::PortForwardOutput>, ClusterError> {
        let mut at = self.placement(namespace, name)?;
        let first = agent::PortForwardInput {
            input: Some(agent::port_forward_input::Input::Start(
                agent::PortForwardStart {
                    uid: at.uid,
                    port: u32::from(port),
                },
            )),
        };
        at.agent
            .port_forward(futures::stream::iter([first]).chain(input))
            .await
            .map(|r| r.into_inner())
            .map_err(agent_error(at.node))
    }

    /// CPU and memory usage of node `node` and of its running containers, from
    /// its agent (within the agent call timeout).
    pub async fn pod_stats(&self, node: &str) -> Result<agent::StatsResponse, ClusterError> {
        let node = self.registry.node(node)?;
        let mut agent = self.reachable_agent(&node)?;
        let req = self
            .shared
            .timed(agent::StatsRequest {}, std::time::Duration::ZERO);
        agent
            .stats(req)
            .await
            .map(|r| r.into_inner())
            .map_err(agent_error(node.name))
    }
}

fn agent_error(node: String) -> impl FnOnce(tonic::Status) -> ClusterError {
    move |status| ClusterError::Agent { node, status }
}
