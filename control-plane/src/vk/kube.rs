//! The Kubernetes API, as narrow as the Virtual Kubelet needs it: the trait
//! [`KubeApi`] and its implementation over kube-rs ([`KubeClient`]).
//!
//! Every call here is one the ClusterRole in `deploy/` must grant; the tests
//! check that against the requests the API emulator recorded.

use std::path::Path;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt as _};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{SubjectAccessReview, SubjectAccessReviewStatus};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret, ServiceAccount,
};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, WatchEvent,
    WatchParams,
};
use serde_json::Value;

/// The namespace of node Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// A failed Kubernetes call.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The client could not be configured.
    #[error("kubernetes client configuration: {0}")]
    Config(String),
    /// The API server answered with an error status.
    #[error("kubernetes API: {code} {reason}: {message}")]
    Api {
        /// HTTP status.
        code: u16,
        /// Kubernetes reason (NotFound, Conflict, Expired...).
        reason: String,
        /// Message.
        message: String,
    },
    /// The call did not complete.
    #[error("kubernetes API call failed: {0}")]
    Transport(String),
}

impl KubeError {
    /// Whether the API server said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, KubeError::Api { code: 404, .. })
    }
    /// Whether the API server said the object changed or exists already.
    pub fn is_conflict(&self) -> bool {
        matches!(self, KubeError::Api { code: 409, .. })
    }
    /// Whether a watch's resource version is too old (relist).
    pub fn is_gone(&self) -> bool {
        matches!(self, KubeError::Api { code: 410, .. })
    }
}

impl From<kube::Error> for KubeError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) => KubeError::Api {
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
            },
            other => KubeError::Transport(other.to_string()),
        }
    }
}

/// A change to a watched pod.
#[derive(Debug)]
pub enum PodChange {
    /// Added or modified.
    Applied(Box<Pod>),
    /// Removed from the API server.
    Deleted(Box<Pod>),
    /// A bookmark: the resource version to resume from.
    Bookmark(String),
}

/// Result type of this module.
pub type KubeResult<T> = Result<T, KubeError>;

/// What the Virtual Kubelet asks of the Kubernetes API.
pub trait KubeApi: Send + Sync {
    /// The Node, if it exists.
    fn get_node(&self, name: &str) -> BoxFuture<'_, KubeResult<Option<Node>>>;
    /// Creates the Node.
    fn create_node(&self, node: Node) -> BoxFuture<'_, KubeResult<Node>>;
    /// Merge-patches the Node (labels, taints).
    fn patch_node(&self, name: &str, patch: Value) -> BoxFuture<'_, KubeResult<Node>>;
    /// Merge-patches the Node's status.
    fn patch_node_status(&self, name: &str, patch: Value) -> BoxFuture<'_, KubeResult<Node>>;
    /// The node's Lease in `kube-node-lease`, if it exists.
    fn get_lease(&self, name: &str) -> BoxFuture<'_, KubeResult<Option<Lease>>>;
    /// Creates the Lease.
    fn create_lease(&self, lease: Lease) -> BoxFuture<'_, KubeResult<Lease>>;
    /// Replaces the Lease (its resourceVersion guards against a stale write).
    fn replace_lease(&self, lease: Lease) -> BoxFuture<'_, KubeResult<Lease>>;
    /// Pods bound to `node`, with the list's resource version.
    fn list_pods(&self, node: &str) -> BoxFuture<'_, KubeResult<(Vec<Pod>, String)>>;
    /// Changes to pods bound to `node` after `version`.
    fn watch_pods(
        &self,
        node: &str,
        version: &str,
    ) -> BoxFuture<'_, KubeResult<BoxStream<'static, KubeResult<PodChange>>>>;
    /// Merge-patches a pod (metadata).
    fn patch_pod(&self, ns: &str, name: &str, patch: Value) -> BoxFuture<'_, KubeResult<()>>;
    /// Merge-patches a pod's status.
    fn patch_pod_status(&self, ns: &str, name: &str, patch: Value)
    -> BoxFuture<'_, KubeResult<()>>;
    /// Removes a pod object at once (grace 0) if it is still incarnation `uid`:
    /// what the kubelet does once the containers of a deleted pod stopped.
    fn delete_pod(&self, ns: &str, name: &str, uid: &str) -> BoxFuture<'_, KubeResult<()>>;
    /// Records an Event.
    fn create_event(&self, ns: &str, event: Event) -> BoxFuture<'_, KubeResult<()>>;
    /// A ConfigMap, if it exists.
    fn get_config_map(&self, ns: &str, name: &str) -> BoxFuture<'_, KubeResult<Option<ConfigMap>>>;
    /// A Secret, if it exists.
    fn get_secret(&self, ns: &str, name: &str) -> BoxFuture<'_, KubeResult<Option<Secret>>>;
    /// A ServiceAccount, if it exists.
    fn get_service_account(
        &self,
        ns: &str,
        name: &str,
    ) -> BoxFuture<'_, KubeResult<Option<ServiceAccount>>>;
    /// A PersistentVolumeClaim, if it exists.
    fn get_claim(
        &self,
        ns: &str,
        name: &str,
    ) -> BoxFuture<'_, KubeResult<Option<PersistentVolumeClaim>>>;
    /// A PersistentVolume, if it exists.
    fn get_volume(&self, name: &str) -> BoxFuture<'_, KubeResult<Option<PersistentVolume>>>;
    /// Creates a PersistentVolume (one that exists already is not an error).
    fn create_volume(&self, pv: PersistentVolume) -> BoxFuture<'_, KubeResult<()>>;
    /// Deletes a PersistentVolume (one already gone is not an error).
    fn delete_volume(&self, name: &str) -> BoxFuture<'_, KubeResult<()>>;
    /// A token of ServiceAccount `sa` bound to pod `pod` (name, uid), through the
    /// TokenRequest API.
    fn create_token(
        &self,
        ns: &str,
        sa: &str,
        pod: (&str, &str),
        audiences: Vec<String>,
        expiration_s: i64,
    ) -> BoxFuture<'_, KubeResult<String>>;
    /// Asks the API server whether a request is allowed.
    fn review(
        &self,
        review: SubjectAccessReview,
    ) -> BoxFuture<'_, KubeResult<SubjectAccessReviewStatus>>;
}

/// [`KubeApi`] over a kube-rs client.
#[derive(Clone)]
pub struct KubeClient {
    client: kube::Client,
}

impl KubeClient {
    /// A client from `kubeconfig`, or inferred (in-cluster, then `$KUBECONFIG`
    /// and `~/.kube/config`).
    pub async fn new(kubeconfig: Option<&Path>) -> KubeResult<Self> {
        // kube-rs builds its TLS with the process default provider: ORCA's (*ring*).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = match kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(file, &Default::default())
                    .await
                    .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| KubeError::Config(e.to_string()))?,
        };
        let client =
            kube::Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))?;
        Ok(Self { client })
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }
    fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }
    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), LEASE_NAMESPACE)
    }
}

fn on_node(node: &str) -> String {
    format!("spec.nodeName={node}")
}

impl KubeApi for KubeClient {
    fn get_node(&self, name: &str) -> BoxFuture<'_, KubeResult<Option<Node>>> {
        let name = name.to_owned();
        Box::pin(async move { Ok(self.nodes().get_opt(&name).await?) })
    }

    fn create_node(&self, node: Node) -> BoxFuture<'_, KubeResult<Node>> {
        Box::pin(async move { Ok(self.nodes().create(&PostParams::default(), &node).await?) })
    }

    fn patch_node(&self, name: &str, patch: Value) -> BoxFuture<'_, KubeResult<Node>> {
        let name = name.to_owned();
        Box::pin(async move {
            Ok(self
                .nodes()
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?)
        })
    }

    fn patch_node_status(&self, name: &str, patch: Value) -> BoxFuture<'_, KubeResult<Node>> {
        let name = name.to_owned();
        Box::pin(async move {
            Ok(self
                .nodes()
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?)
        })
    }

    fn get_lease(&self, name: &str) -> BoxFuture<'_, KubeResult<Option<Lease>>> {
        let name = name.to_owned();
        Box::pin(async move { Ok(self.leases().get_opt(&name).await?) })
    }

    fn create_lease(&self, lease: Lease) -> BoxFuture<'_, KubeResult<Lease>> {
        Box::pin(async move { Ok(self.leases().create(&PostParams::default(), &lease).await?) })
    }

    fn replace_lease(&self, lease: Lease) -> BoxFuture<'_, KubeResult<Lease>> {
        Box::pin(async move {
            let name = lease.metadata.name.clone().unwrap_or_default();
            Ok(self
                .leases()
                .replace(&name, &PostParams::default(), &lease)
                .await?)
        })
    }

    fn list_pods(&self, node: &str) -> BoxFuture<'_, KubeResult<(Vec<Pod>, String)>> {
        let node = node.to_owned();
        Box::pin(async move {
            let api: Api<Pod> = Api::all(self.client.clone());
            let list = api
                .list(&ListParams::default().fields(&on_node(&node)))
                .await?;
            let version = list.metadata.resource_version.clone().unwrap_or_default();
            // The field selector is the server's; the node is checked here too.
            let pods = list
                .items
                .into_iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&node))
                .collect();
            Ok((pods, version))
        })
    }

    fn watch_pods(
        &self,
        node: &str,
        version: &str,
    ) -> BoxFuture<'_, KubeResult<BoxStream<'static, KubeResult<PodChange>>>> {
        let (node, version) = (node.to_owned(), version.to_owned());
        Box::pin(async move {
            let api: Api<Pod> = Api::all(self.client.clone());
            let params = WatchParams::default().fields(&on_node(&node)).timeout(290);
            let stream = api.watch(&params, &version).await?;
            let mine = move |p: &Pod| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
            };
            Ok(stream
                .filter_map(move |event| {
                    let change = match event {
                        Err(e) => Some(Err(e.into())),
                        Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
                            mine(&p).then(|| Ok(PodChange::Applied(Box::new(p))))
                        }
                        Ok(WatchEvent::Deleted(p)) => {
                            mine(&p).then(|| Ok(PodChange::Deleted(Box::new(p))))
                        }
                        Ok(WatchEvent::Bookmark(b)) => {
                            Some(Ok(PodChange::Bookmark(b.metadata.resource_version)))
                        }
                        Ok(WatchEvent::Error(s)) => Some(Err(KubeError::Api {
                            code: s.code,
                            reason: s.reason,
                            message: s.message,
                        })),
                    };
                    futures::future::ready(change)
                })
                .boxed())
        })
    }

    fn patch_pod(&self, ns: &str, name: &str, patch: Value) -> BoxFuture<'_, KubeResult<()>> {
        let (ns, name) = (ns.to_owned(), name.to_owned());
        Box::pin(async move {
            self.pods(&ns)
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(())
        })
    }

    fn patch_pod_status(
        &self,
        ns: &str,
        name: &str,
        patch: Value,
    ) -> BoxFuture<'_, KubeResult<()>> {
        let (ns, name) = (ns.to_owned(), name.to_owned());
        Box::pin(async move {
            self.pods(&ns)
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(())
        })
    }

    fn delete_pod(&self, ns: &str, name: &str, uid: &str) -> BoxFuture<'_, KubeResult<()>> {
        let (ns, name, uid) = (ns.to_owned(), name.to_owned(), uid.to_owned());
        Box::pin(async move {
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            self.pods(&ns).delete(&name, &params).await?;
            Ok(())
        })
    }

    fn create_event(&self, ns: &str, event: Event) -> BoxFuture<'_, KubeResult<()>> {
        let ns = ns.to_owned();
        Box::pin(async move {
            let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
            api.create(&PostParams::default(), &event).await?;
            Ok(())
        })
    }

    fn get_config_map(&self, ns: &str, name: &str) -> BoxFuture<'_, KubeResult<Option<ConfigMap>>> {
        let (ns, name) = (ns.to_owned(), name.to_owned());
        Box::pin(async move {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
            Ok(api.get_opt(&name).await?)
        })
    }

    fn get_secret(&self, ns: &str, name: &str) -> BoxFuture<'_, KubeResult<Option<Secret>>> {
        let (ns, name) = (ns.to_owned(), name.to_owned());
        Box::pin(async move {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
            Ok(api.get_opt(&name).await?)
        })
    }

    fn get_service_account(
        &self,
        ns: &str,
        name: &str,
    ) -> BoxFuture<'_, KubeResult<Option<ServiceAccount>>> {
        let (ns, name) = (ns.to_owned(), name.to_owned());
        Box::pin(async move {
            let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
            Ok(api.get_opt(&name).await?)
        })
    }

    fn get_claim(
        &self,
        ns: &str,
        name: &str,
    ) -> BoxFuture<'_, KubeResult<Option<PersistentVolumeClaim>>> {
        let (ns, name) = (ns.to_owned(), name.to_owned());
        Box::pin(async move {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
            Ok(api.get_opt(&name).await?)
        })
    }

    fn get_volume(&self, name: &str) -> BoxFuture<'_, KubeResult<Option<PersistentVolume>>> {
        let name = name.to_owned();
        Box::pin(async move {
            let api: Api<PersistentVolume> = Api::all(self.client.clone());
            Ok(api.get_opt(&name).await?)
        })
    }

    fn create_volume(&self, pv: PersistentVolume) -> BoxFuture<'_, KubeResult<()>> {
        Box::pin(async move {
            let api: Api<PersistentVolume> = Api::all(self.client.clone());
            match api.create(&PostParams::default(), &pv).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    let e = KubeError::from(e);
                    if e.is_conflict() { Ok(()) } else { Err(e) }
                }
            }
        })
    }

    fn delete_volume(&self, name: &str) -> BoxFuture<'_, KubeResult<()>> {
        let name = name.to_owned();
        Box::pin(async move {
            let api: Api<PersistentVolume> = Api::all(self.client.clone());
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    let e = KubeError::from(e);
                    if e.is_not_found() { Ok(()) } else { Err(e) }
                }
            }
        })
    }

    fn create_token(
        &self,
        ns: &str,
        sa: &str,
        pod: (&str, &str),
        audiences: Vec<String>,
        expiration_s: i64,
    ) -> BoxFuture<'_, KubeResult<String>> {
        let (ns, sa) = (ns.to_owned(), sa.to_owned());
        let (pod_name, pod_uid) = (pod.0.to_owned(), pod.1.to_owned());
        Box::pin(async move {
            let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
            let request = TokenRequest {
                spec: Some(TokenRequestSpec {
                    audiences: Some(audiences),
                    expiration_seconds: Some(expiration_s),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(pod_name),
                        uid: Some(pod_uid),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let answer = api
                .create_token_request(&sa, &PostParams::default(), &request)
                .await?;
            answer
                .status
                .and_then(|s| s.token)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| KubeError::Transport("TokenRequest answered without a token".into()))
        })
    }

    fn review(
        &self,
        review: SubjectAccessReview,
    ) -> BoxFuture<'_, KubeResult<SubjectAccessReviewStatus>> {
        Box::pin(async move {
            let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
            let answer = api.create(&PostParams::default(), &review).await?;
            answer.status.ok_or_else(|| {
                KubeError::Transport("SubjectAccessReview answered without a status".into())
            })
        })
    }
}
