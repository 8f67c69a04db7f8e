//! Standalone-mode Kubernetes objects beyond pods and claims: Namespaces,
//! ResourceQuotas, LimitRanges, ConfigMaps and Secrets, applied from the
//! manifests users already write (`orca apply -f`), stored in the `objects`
//! table as their JSON (a Secret's sealed: [`sealing`]), enforced when a pod is
//! created ([`admission`]), and read when a pod is handed to its agent
//! ([`source`]: env and volumes). A changed ConfigMap or Secret reaches the
//! volumes of the running pods that mount it ([`refresh`]).
//!
//! In Kubernetes mode these come from Kubernetes itself (its admission has run
//! before a pod reaches ORCA's node), so applying them here is refused, as are
//! kinds that stay with Kubernetes in either mode (Ingress, NetworkPolicy,
//! CustomResourceDefinition and custom resources).
//!
//! The namespace `default` always exists. Deleting a namespace deletes its pods
//! (each stopped within its grace period) and its objects.

pub mod admission;
pub mod keys;
pub mod limits;
pub mod quota;
pub mod refresh;
pub mod sealing;
pub mod source;

use k8s_openapi::api::core::v1::{ConfigMap, LimitRange, Namespace, ResourceQuota, Secret};
use orca_proto::controlplane::v1 as pb;
use serde_json::Value;

use crate::pods::{DEFAULT_NAMESPACE, valid_name};
use crate::shared::{ClusterError, Shared, now};
use std::sync::Arc;

pub use orca_model::kind::{KUBERNETES_ONLY, Kind};

/// Checks a manifest of this kind; the error names what is wrong.
fn validate(kind: Kind, manifest: &Value) -> Result<(), String> {
    match kind {
        Kind::Namespace => serde_json::from_value::<Namespace>(manifest.clone())
            .map(drop)
            .map_err(|e| format!("not a v1 Namespace: {e}")),
        Kind::ResourceQuota => {
            let q: ResourceQuota = serde_json::from_value(manifest.clone())
                .map_err(|e| format!("not a v1 ResourceQuota: {e}"))?;
            quota::validate(&q)
        }
        Kind::LimitRange => {
            let l: LimitRange = serde_json::from_value(manifest.clone())
                .map_err(|e| format!("not a v1 LimitRange: {e}"))?;
            limits::validate(&l)
        }
        Kind::ConfigMap => serde_json::from_value::<ConfigMap>(manifest.clone())
            .map(drop)
            .map_err(|e| format!("not a v1 ConfigMap: {e}")),
        Kind::Secret => serde_json::from_value::<Secret>(manifest.clone())
            .map(drop)
            .map_err(|e| format!("not a v1 Secret (data values are base64): {e}")),
        Kind::Deployment => crate::workloads::validation::validate(manifest),
        Kind::ReplicaSet => {
            Err("ReplicaSets are made by Deployments here; apply a Deployment".into())
        }
        Kind::Service => crate::services::validate(manifest),
        Kind::Role => parse::<k8s_openapi::api::rbac::v1::Role>(manifest, "Role"),
        Kind::ClusterRole => {
            parse::<k8s_openapi::api::rbac::v1::ClusterRole>(manifest, "ClusterRole")
        }
        Kind::RoleBinding => {
            parse::<k8s_openapi::api::rbac::v1::RoleBinding>(manifest, "RoleBinding")
        }
        Kind::ClusterRoleBinding => {
            parse::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>(manifest, "ClusterRoleBinding")
        }
        Kind::HorizontalPodAutoscaler => crate::autoscaling::validation::validate(manifest),
    }
}

/// Checks that a manifest is an `rbac.authorization.k8s.io/v1` object of
/// its kind.
fn parse<T: serde::de::DeserializeOwned>(manifest: &Value, kind: &str) -> Result<(), String> {
    serde_json::from_value::<T>(manifest.clone())
        .map(drop)
        .map_err(|e| format!("not an rbac.authorization.k8s.io/v1 {kind}: {e}"))
}

/// Why a manifest's kind is not kept here.
fn unsupported(kind: &str) -> String {
    if KUBERNETES_ONLY.contains(&kind) || kind.is_empty() {
        format!(
            "{kind} stays with Kubernetes: ORCA's standalone mode does not emulate it; run ORCA as a Kubernetes node to use it"
        )
    } else {
        let served: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        format!(
            "standalone mode does not serve kind {kind:?}; it keeps Pod, PersistentVolumeClaim, {}",
            served.join(", ")
        )
    }
}

pub(crate) use keys::{key, namespace_exists};

/// `metadata.generation` of an applied manifest: 1 when new, one more each
/// time its `spec` changes (a Secret's, sealed, is not read).
fn generation(kind: Kind, old: Option<&pb::StoredObject>, new: &Value) -> Value {
    let Some(old) = old.filter(|_| kind != Kind::Secret) else {
        return Value::from(1);
    };
    let old: Value = serde_json::from_str(&old.manifest_json).unwrap_or(Value::Null);
    let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
    Value::from(if old["spec"] == new["spec"] { g } else { g + 1 })
}

pub(crate) fn prefix(kind: Kind, ns: &str) -> String {
    if ns.is_empty() && kind.namespaced() {
        format!("{}/", kind.name())
    } else {
        format!("{}/{ns}/", kind.name())
    }
}

fn not_found(kind: Kind, ns: &str, name: &str) -> ClusterError {
    ClusterError::NotFound {
        kind: kind.name(),
        name: if ns.is_empty() {
            name.to_owned()
        } else {
            format!("{ns}/{name}")
        },
    }
}

/// The namespace that always exists, as a stored object would show it.
fn default_namespace() -> pb::StoredObject {
    pb::StoredObject {
        kind: Kind::Namespace.name().into(),
        name: DEFAULT_NAMESPACE.into(),
        manifest_json: serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DEFAULT_NAMESPACE}
        })
        .to_string(),
        ..Default::default()
    }
}

/// Standalone mode's objects: admission, sealing of Secrets, refresh of mounted volumes.
#[derive(Clone)]
pub struct Objects {
    shared: Shared,
    pods: crate::pods::Pods,
    claims: crate::claims::Claims,
    admission: Arc<tokio::sync::Mutex<()>>,
    refreshing: Arc<tokio::sync::Mutex<()>>,
    sealer: Arc<std::sync::OnceLock<Arc<sealing::Sealer>>>,
    services: Arc<std::sync::OnceLock<Arc<crate::services::manager::Services>>>,
}

impl Objects {
    /// The component over `shared` and the components below it.
    pub fn new(shared: Shared, pods: crate::pods::Pods, claims: crate::claims::Claims) -> Self {
        Self {
            shared,
            pods,
            claims,
            admission: Default::default(),
            refreshing: Default::default(),
            sealer: Default::default(),
            services: Default::default(),
        }
    }

    /// Installs the key Secrets are sealed with (once), and, in standalone mode,
    /// the store as the source of what pods refer to.
    pub fn set_sealer(&self, sealer: Arc<sealing::Sealer>) {
        if self.shared.config().kubernetes.is_none() {
            self.shared
                .set_resolver(Arc::new(crate::objects::source::StoreObjects::new(
                    self.shared.store().clone(),
                    sealer.clone(),
                    self.services().and_then(|s| s.dns_server()),
                )));
        }
        let _ = self.sealer.set(sealer);
    }

    /// Installs the Services' network (standalone mode with simulated hosts
    /// in network namespaces); before [`Objects::set_sealer`], whose resolver
    /// gives pods the cluster DNS.
    pub fn set_services(&self, services: Arc<crate::services::manager::Services>) {
        let _ = self.services.set(services);
    }

    /// The Services' network, when there is one.
    pub fn services(&self) -> Option<&Arc<crate::services::manager::Services>> {
        self.services.get()
    }

    /// The key Secrets are sealed with, once installed.
    pub(crate) fn secrets_sealer(&self) -> Option<&sealing::Sealer> {
        self.sealer.get().map(Arc::as_ref)
    }

    /// Held while a pod is admitted or a standalone object written, so quota
    /// checks see one another's pods.
    pub(crate) fn admission_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.admission
    }

    /// Held while a changed ConfigMap's or Secret's volumes are rewritten: one
    /// refresh at a time, each resolving the content current when it runs, so
    /// the last one to reach an agent carries the newest content.
    pub(crate) fn refresh_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.refreshing
    }
}

impl Objects {
    fn standalone_only(&self) -> Result<(), ClusterError> {
        if self.shared.config().kubernetes.is_some() {
            return Err(ClusterError::FailedPrecondition(
                "Kubernetes mode: Namespaces, ResourceQuotas, LimitRanges, ConfigMaps and Secrets are Kubernetes' own; apply them with kubectl".into(),
            ));
        }
        Ok(())
    }

    /// Whether namespace `ns` exists (`default` always does).
    pub fn namespace_exists(&self, ns: &str) -> Result<bool, ClusterError> {
        namespace_exists(self.shared.store(), ns)
    }

    /// Creates or replaces the object `manifest_json` describes (in
    /// `default_ns` when it names no namespace); whether it was created.
    pub async fn apply_object(
        &self,
        manifest_json: &str,
        default_ns: &str,
    ) -> Result<(pb::StoredObject, bool), ClusterError> {
        self.standalone_only()?;
        let mut manifest: Value = serde_json::from_str(manifest_json)
            .map_err(|e| ClusterError::Invalid(format!("the manifest is not JSON: {e}")))?;
        let kind_word = manifest["kind"].as_str().unwrap_or_default().to_owned();
        let kind = Kind::parse(&kind_word)
            .filter(|k| k.name() == kind_word)
            .ok_or_else(|| ClusterError::Invalid(unsupported(&kind_word)))?;
        let name = manifest["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if !valid_name(&name) {
            return Err(ClusterError::Invalid(format!(
                "{kind_word} {name:?}: metadata.name must be a lowercase DNS subdomain (a-z, 0-9, '-', '.')"
            )));
        }
        let ns = if kind.namespaced() {
            let ns = manifest["metadata"]["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or(if default_ns.is_empty() {
                    DEFAULT_NAMESPACE
                } else {
                    default_ns
                })
                .to_owned();
            manifest["metadata"]["namespace"] = Value::String(ns.clone());
            ns
        } else {
            if kind == Kind::Namespace && name == DEFAULT_NAMESPACE {
                return Err(ClusterError::Invalid(
                    "namespace default always exists".into(),
                ));
            }
            String::new()
        };
        validate(kind, &manifest)
            .map_err(|e| ClusterError::Invalid(format!("{kind_word} {name}: {e}")))?;
        let k = key(kind, &ns, &name);
        let fresh = pb::StoredObject {
            kind: kind.name().into(),
            namespace: ns.clone(),
            name: name.clone(),
            uid: uuid::Uuid::new_v4().to_string(),
            manifest_json: String::new(),
            status_json: String::new(),
            created_at: Some(now()),
        };
        let stored = {
            // Under the lock a namespace deletion also holds: nothing lands in
            // a namespace being deleted.
            let _serial = self.admission_lock().lock().await;
            if kind.namespaced() && !self.namespace_exists(&ns)? {
                return Err(ClusterError::NotFound {
                    kind: "namespace",
                    name: ns,
                });
            }
            let old = self.shared.store().objects.get(&k)?;
            if let Some(old) = &old {
                self.refuse_immutable_change(kind, old, &manifest)?;
            }
            let created = old.is_none();
            let mut m = manifest;
            if kind == Kind::Service {
                self.assign_service_addresses(&mut m, old.as_ref())?;
            }
            m["metadata"]["generation"] = generation(kind, old.as_ref(), &m);
            let mut o = old.unwrap_or(fresh);
            m["metadata"]["uid"] = Value::String(o.uid.clone());
            o.manifest_json = m.to_string();
            let mut sealed = o.clone();
            if kind == Kind::Secret {
                sealed.manifest_json = self.sealer()?.seal(&k, &o.manifest_json).map_err(|e| {
                    ClusterError::FailedPrecondition(format!("secret {ns}/{name}: {e}"))
                })?;
            }
            self.shared.store().objects.put(&k, &sealed)?;
            (o, created)
        };
        let (stored, created) = stored;
        self.shared.store().flush().await?;
        self.shared.event(
            kind.name(),
            &ns,
            &name,
            false,
            if created { "Created" } else { "Updated" },
            format!("{} {name} applied", kind.name()),
        );
        if !created && matches!(kind, Kind::ConfigMap | Kind::Secret) {
            self.refresh_volumes(kind, &ns, &name);
        }
        Ok((self.with_status(kind, stored)?, created))
    }

    /// One object, with its status.
    pub fn get_object(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> Result<pb::StoredObject, ClusterError> {
        let kind = Kind::parse(kind).ok_or_else(|| ClusterError::Invalid(unsupported(kind)))?;
        let ns = if kind.namespaced() { ns } else { "" };
        if kind == Kind::Namespace && name == DEFAULT_NAMESPACE {
            return Ok(default_namespace());
        }
        let o = self
            .shared
            .store()
            .objects
            .get(&key(kind, ns, name))?
            .ok_or_else(|| not_found(kind, ns, name))?;
        self.with_status(kind, o)
    }

    /// The objects of a kind in `ns` (empty: every namespace), with their status.
    pub fn list_objects(
        &self,
        kind: &str,
        ns: &str,
    ) -> Result<Vec<pb::StoredObject>, ClusterError> {
        let kind = Kind::parse(kind).ok_or_else(|| ClusterError::Invalid(unsupported(kind)))?;
        let ns = if kind.namespaced() { ns } else { "" };
        let mut out = Vec::new();
        if kind == Kind::Namespace {
            out.push(default_namespace());
        }
        for o in self.shared.store().objects.scan(&prefix(kind, ns))? {
            out.push(self.with_status(kind, o)?);
        }
        Ok(out)
    }

    /// Deletes an object; a namespace takes its pods and objects with it (the
    /// number of pods deleted).
    pub async fn delete_object(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> Result<(pb::StoredObject, u32), ClusterError> {
        self.standalone_only()?;
        let kind = Kind::parse(kind).ok_or_else(|| ClusterError::Invalid(unsupported(kind)))?;
        let ns = if kind.namespaced() { ns } else { "" };
        if kind == Kind::Namespace && name == DEFAULT_NAMESPACE {
            return Err(ClusterError::PermissionDenied(
                "namespace default may not be deleted".into(),
            ));
        }
        let k = key(kind, ns, name);
        // Under the admission lock: no pod or object lands in a namespace
        // while it is being deleted.
        let _serial = self.admission_lock().lock().await;
        let o = self
            .shared
            .store()
            .objects
            .get(&k)?
            .ok_or_else(|| not_found(kind, ns, name))?;
        let mut pods_deleted = 0;
        if kind == Kind::Namespace {
            for pod in self.shared.store().pods.scan(&format!("{name}/"))? {
                let (pod_ns, pod_name) = crate::pods::names(&pod);
                match self.pods.delete_pod(&pod_ns, &pod_name, None).await {
                    Ok(_) => pods_deleted += 1,
                    Err(ClusterError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            let mut kept = Vec::new();
            for claim in self.shared.store().claims.scan(&format!("{name}/"))? {
                match self.claims.delete_claim(name, &claim.name).await {
                    Ok(_) | Err(ClusterError::NotFound { .. }) => {}
                    Err(e) => kept.push(format!("{}: {e}", claim.name)),
                }
            }
            if !kept.is_empty() {
                return Err(ClusterError::FailedPrecondition(format!(
                    "namespace {name}: its {pods_deleted} pod(s) were deleted, but not these claims (try again once their pods have stopped): {}",
                    kept.join("; ")
                )));
            }
            for inner in Kind::ALL.iter().filter(|k| k.namespaced()) {
                for obj in self.shared.store().objects.scan(&prefix(*inner, name))? {
                    self.shared
                        .store()
                        .objects
                        .remove(&key(*inner, &obj.namespace, &obj.name))?;
                }
            }
        }
        self.shared.store().objects.remove(&k)?;
        self.shared.store().flush().await?;
        self.shared.event(
            kind.name(),
            ns,
            name,
            false,
            "Deleted",
            if kind == Kind::Namespace {
                format!("namespace {name} deleted with its {pods_deleted} pod(s)")
            } else {
                format!("{} {name} deleted", kind.name())
            },
        );
        Ok((o, pods_deleted))
    }

    /// A Service's virtual IP and node ports (kept from `old`).
    fn assign_service_addresses(
        &self,
        m: &mut Value,
        old: Option<&pb::StoredObject>,
    ) -> Result<(), ClusterError> {
        let services = self.services().ok_or_else(|| {
            ClusterError::FailedPrecondition(
                "Services need the local provider's simulated hosts in network namespaces (this control plane has none)".into(),
            )
        })?;
        let name = m["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let old_m: Option<Value> = old.and_then(|o| serde_json::from_str(&o.manifest_json).ok());
        let taken: Vec<Value> = self
            .shared
            .store()
            .objects
            .scan(&format!("{}/", Kind::Service.name()))?
            .iter()
            .filter(|o| old.is_none_or(|old| old.uid != o.uid))
            .filter_map(|o| serde_json::from_str(&o.manifest_json).ok())
            .collect();
        crate::services::assign(m, old_m.as_ref(), services.range(), &taken)
            .map_err(|e| ClusterError::Invalid(format!("Service {name}: {e}")))
    }

    /// Kubernetes refuses to change an `immutable: true` ConfigMap's or
    /// Secret's data (or to make it mutable again).
    fn refuse_immutable_change(
        &self,
        kind: Kind,
        old: &pb::StoredObject,
        new: &Value,
    ) -> Result<(), ClusterError> {
        if !matches!(kind, Kind::ConfigMap | Kind::Secret) {
            return Ok(());
        }
        let old: Value = serde_json::from_str(&self.with_status(kind, old.clone())?.manifest_json)
            .unwrap_or(Value::Null);
        if old["immutable"] != Value::Bool(true) {
            return Ok(());
        }
        let changed = ["data", "binaryData", "stringData", "immutable"]
            .iter()
            .any(|f| old[*f] != new[*f]);
        if changed {
            return Err(ClusterError::Invalid(format!(
                "{} {}: field is immutable when `immutable` is set; delete and create it again",
                kind.name(),
                old["metadata"]["name"].as_str().unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// The key Secrets are sealed with.
    fn sealer(&self) -> Result<&sealing::Sealer, ClusterError> {
        self.secrets_sealer().ok_or_else(|| {
            ClusterError::FailedPrecondition("no secrets key: Secrets cannot be stored".into())
        })
    }

    /// An object as stored, opened (a Secret's manifest unsealed) and with its
    /// status.
    fn with_status(
        &self,
        kind: Kind,
        mut o: pb::StoredObject,
    ) -> Result<pb::StoredObject, ClusterError> {
        if kind == Kind::Secret {
            let k = key(kind, &o.namespace, &o.name);
            o.manifest_json = self
                .sealer()?
                .open(&k, &o.manifest_json)
                .map_err(|e| ClusterError::FailedPrecondition(format!("{k}: {e}")))?;
        }
        if kind == Kind::Service
            && let Some(services) = self.services()
        {
            o.status_json = services.status(&o.namespace, &o.name).to_string();
        }
        if kind == Kind::ResourceQuota {
            let q: ResourceQuota = serde_json::from_str(&o.manifest_json)
                .map_err(|e| ClusterError::Invalid(e.to_string()))?;
            let pods = self
                .shared
                .store()
                .pods
                .scan(&format!("{}/", o.namespace))?;
            o.status_json = quota::status(&q, &pods).to_string();
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_from_manifests_and_command_lines() {
        assert_eq!(Kind::parse("ResourceQuota"), Some(Kind::ResourceQuota));
        assert_eq!(Kind::parse("quota"), Some(Kind::ResourceQuota));
        assert_eq!(Kind::parse("ns"), Some(Kind::Namespace));
        assert_eq!(Kind::parse("limits"), Some(Kind::LimitRange));
        assert_eq!(Kind::parse("deploy"), Some(Kind::Deployment));
        assert_eq!(Kind::parse("svc"), Some(Kind::Service));
        assert_eq!(Kind::parse("Job"), None);
        assert!(unsupported("Ingress").contains("stays with Kubernetes"));
        assert!(unsupported("NetworkPolicy").contains("stays with Kubernetes"));
        assert!(unsupported("StatefulSet").contains("does not serve"));
    }

    #[test]
    fn keys_group_by_kind_and_namespace() {
        assert_eq!(
            key(Kind::ResourceQuota, "lab", "compute"),
            "ResourceQuota/lab/compute"
        );
        assert_eq!(prefix(Kind::ResourceQuota, ""), "ResourceQuota/");
        assert_eq!(prefix(Kind::ResourceQuota, "lab"), "ResourceQuota/lab/");
        assert_eq!(key(Kind::Namespace, "", "lab"), "Namespace//lab");
        assert_eq!(prefix(Kind::Namespace, ""), "Namespace//");
    }
}
