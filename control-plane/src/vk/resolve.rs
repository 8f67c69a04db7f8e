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

impl ObjectSource for KubeResolver {
    fn config_map<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ConfigMap>, String>> {
        Box::pin(async move {
            self.kube
                .get_config_map(ns, name)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn secret<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Secret>, String>> {
        Box::pin(async move {
            self.kube
                .get_secret(ns, name)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn token<'a>(
        &'a self,
        ns: &'a str,
        sa: &'a str,
        pod: (&'a str, &'a str),
        audiences: Vec<String>,
        expiration_seconds: i64,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            self.kube
                .create_token(ns, sa, pod, audiences, expiration_seconds)
                .await
                .map_err(|e| e.to_string())
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
    ) -> BoxFuture<'a, Result<crate::cluster::LaunchContext, String>> {
        Box::pin(self.launch_context_of(record))
    }

    fn volume_provisioned<'a>(&'a self, claim: &'a pb::Claim) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.make_volume(claim))
    }

    fn claim_gone<'a>(&'a self, claim: &'a pb::Claim) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(self.is_claim_gone(claim))
    }

    fn volume_reclaimed<'a>(&'a self, claim: &'a pb::Claim) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.remove_volume(claim))
    }

    fn resolve<'a>(
        &'a self,
        record: &'a pb::PodRecord,
        node: &'a pb::Node,
    ) -> BoxFuture<'a, Result<Resolved, String>> {
        Box::pin(crate::references::resolve(self, record, node))
    }
}
