//! Standalone mode's source of the objects pods refer to: ConfigMaps and
//! Secrets from ORCA's store (Secrets opened with the secrets key). Service
//! account tokens need a Kubernetes API server: a pod that asks for one is
//! told so.

use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use orca_proto::controlplane::v1 as pb;

use super::Kind;
use super::sealing::Sealer;
use crate::references::ObjectSource;
use crate::shared::{PodResolver, ResolveError, Resolved};
use orca_store::Store;

/// ConfigMaps and Secrets from the store.
pub struct StoreObjects {
    store: Store,
    sealer: Arc<Sealer>,
    dns: Option<std::net::Ipv4Addr>,
}

impl StoreObjects {
    /// A source over `store`, opening Secrets with `sealer`; pods are given
    /// the Services of their namespace and, when there is one, the cluster
    /// DNS at `dns` ([`crate::services::environment`]).
    pub fn new(store: Store, sealer: Arc<Sealer>, dns: Option<std::net::Ipv4Addr>) -> Self {
        Self { store, sealer, dns }
    }

    /// `resolved` with the Services' variables and the cluster DNS added to
    /// the pod's spec.
    fn with_services(
        &self,
        record: &pb::PodRecord,
        mut resolved: Resolved,
    ) -> Result<Resolved, ResolveError> {
        let (ns, _) = crate::pods::names(record);
        let services: Vec<serde_json::Value> = self
            .store
            .objects
            .scan(&super::prefix(Kind::Service, &ns))
            .map_err(|e| ResolveError::Unavailable(e.to_string()))?
            .iter()
            .filter_map(|o| serde_json::from_str(&o.manifest_json).ok())
            .collect();
        let json = match &resolved.spec_json {
            Some(j) => j.clone(),
            None => record
                .pod
                .as_ref()
                .map(|p| p.spec_json.clone())
                .unwrap_or_default(),
        };
        let mut spec: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| ResolveError::Unresolvable(e.to_string()))?;
        if crate::services::environment::inject(&mut spec, &ns, &services, self.dns) {
            resolved.spec_json = Some(spec.to_string());
        }
        Ok(resolved)
    }

    fn read<T: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
    ) -> Result<Option<T>, ResolveError> {
        let key = super::key(kind, ns, name);
        let Some(o) = self
            .store
            .objects
            .get(&key)
            .map_err(|e| ResolveError::Unavailable(e.to_string()))?
        else {
            return Ok(None);
        };
        let json = if kind == Kind::Secret {
            self.sealer
                .open(&key, &o.manifest_json)
                .map_err(|e| ResolveError::Unavailable(format!("{key}: {e}")))?
        } else {
            o.manifest_json
        };
        serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| ResolveError::Unresolvable(format!("{key}: {e}")))
    }
}

impl ObjectSource for StoreObjects {
    fn config_map<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ConfigMap>, ResolveError>> {
        Box::pin(async move { self.read(Kind::ConfigMap, ns, name) })
    }

    fn secret<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Secret>, ResolveError>> {
        Box::pin(async move { self.read(Kind::Secret, ns, name) })
    }

    fn token<'a>(
        &'a self,
        ns: &'a str,
        sa: &'a str,
        _pod: (&'a str, &'a str),
        _audiences: Vec<String>,
        _expiration_seconds: i64,
    ) -> BoxFuture<'a, Result<String, ResolveError>> {
        Box::pin(async move {
            Err(ResolveError::Unresolvable(format!(
                "service account {ns}/{sa}: tokens are issued by a Kubernetes API server; standalone mode has none"
            )))
        })
    }

    fn node_name_of(&self, node: &pb::Node) -> String {
        node.name.clone()
    }
}

impl PodResolver for StoreObjects {
    fn resolve<'a>(
        &'a self,
        record: &'a pb::PodRecord,
        node: &'a pb::Node,
    ) -> BoxFuture<'a, Result<Resolved, ResolveError>> {
        Box::pin(async move {
            let resolved = crate::references::resolve(self, record, node).await?;
            self.with_services(record, resolved)
        })
    }
}
