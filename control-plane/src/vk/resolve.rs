//! The Kubernetes side of resolving what a pod refers to
//! ([`crate::references`]): ConfigMaps, Secrets and service account tokens
//! read from the API server; the pod's launch context (its ServiceAccount's
//! role, its claims) and the claims' volumes.

use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use orca_proto::controlplane::v1 as pb;

use super::kube::KubeApi;
use crate::cluster::{PodResolver, Resolved};
use crate::references::ObjectSource;
use crate::shared::ResolveError;

pub use crate::references::kubernetes_uid;

/// Resolves pods' references against the API server.
pub struct KubeResolver {
    kube: Arc<dyn KubeApi>,
    node_name: String,
    storage_classes: Vec<crate::config::StorageClass>,
}

impl KubeResolver {
    /// A resolver for pods of Node `node_name`.
    pub fn new(kube: Arc<dyn KubeApi>, node_name: String) -> Self {
        Self {
            kube,
            node_name,
            storage_classes: Vec::new(),
        }
    }

    /// The storage classes whose unbound claims ORCA provisions.
    pub fn with_storage_classes(mut self, classes: Vec<crate::config::StorageClass>) -> Self {
        self.storage_classes = classes;
        self
    }

    pub(super) fn kube(&self) -> &dyn KubeApi {
        self.kube.as_ref()
    }

    pub(super) fn storage_classes(&self) -> &[crate::config::StorageClass] {
        &self.storage_classes
    }
}

/// The API server's answer as a resolver's error: a later try may succeed.
fn unavailable(e: super::kube::KubeError) -> ResolveError {
    ResolveError::Unavailable(e.to_string())
}

impl ObjectSource for KubeResolver {
    fn config_map<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ConfigMap>, ResolveError>> {
        Box::pin(async move {
            self.kube
                .get_config_map(ns, name)
                .await
                .map_err(unavailable)
        })
    }

    fn secret<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Secret>, ResolveError>> {
        Box::pin(async move { self.kube.get_secret(ns, name).await.map_err(unavailable) })
    }

    fn token<'a>(
        &'a self,
        ns: &'a str,
        sa: &'a str,
        pod: (&'a str, &'a str),
        audiences: Vec<String>,
        expiration_seconds: i64,
    ) -> BoxFuture<'a, Result<String, ResolveError>> {
        Box::pin(async move {
            self.kube
                .create_token(ns, sa, pod, audiences, expiration_seconds)
                .await
                .map_err(unavailable)
        })
    }

    fn node_name_of(&self, _node: &pb::Node) -> String {
        // Every pod is on the one Virtual Kubelet node.
        self.node_name.clone()
    }
}

impl PodResolver for KubeResolver {
    fn launch_context<'a>(
        &'a self,
        record: &'a pb::PodRecord,
    ) -> BoxFuture<'a, Result<crate::cluster::LaunchContext, ResolveError>> {
        // What a launch waits for (an unbound claim, a ServiceAccount not yet
        // read) may come: the pod waits, bounded by the pending timeout.
        Box::pin(async move {
            self.launch_context_of(record)
                .await
                .map_err(ResolveError::Unavailable)
        })
    }

    fn volume_provisioned<'a>(
        &'a self,
        claim: &'a pb::Claim,
    ) -> BoxFuture<'a, Result<(), ResolveError>> {
        Box::pin(async move {
            self.make_volume(claim)
                .await
                .map_err(ResolveError::Unavailable)
        })
    }

    fn claim_gone<'a>(&'a self, claim: &'a pb::Claim) -> BoxFuture<'a, Result<bool, ResolveError>> {
        Box::pin(async move {
            self.is_claim_gone(claim)
                .await
                .map_err(ResolveError::Unavailable)
        })
    }

    fn volume_reclaimed<'a>(
        &'a self,
        claim: &'a pb::Claim,
    ) -> BoxFuture<'a, Result<(), ResolveError>> {
        Box::pin(async move {
            self.remove_volume(claim)
                .await
                .map_err(ResolveError::Unavailable)
        })
    }

    fn resolve<'a>(
        &'a self,
        record: &'a pb::PodRecord,
        node: &'a pb::Node,
    ) -> BoxFuture<'a, Result<Resolved, ResolveError>> {
        Box::pin(crate::references::resolve(self, record, node))
    }
}
