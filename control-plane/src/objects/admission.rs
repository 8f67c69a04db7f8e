//! Standalone-mode admission of a new pod, in Kubernetes' order: its
//! namespace must exist, the namespace's LimitRanges fill in defaults and
//! bound each container, and its ResourceQuotas must hold the pod beside the
//! unfinished pods already there. One admission at a time, so two pods cannot
//! both take a quota's last room. A refused pod is not created: the caller
//! gets the reason (`exceeded quota: NAME, ...`), as `kubectl` does.

use k8s_openapi::api::core::v1::{LimitRange, PodSpec, ResourceQuota};
use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1 as types;

use super::Objects;
use super::{Kind, limits, prefix, quota};
use crate::pod_security;
use crate::pods::DEFAULT_NAMESPACE;
use crate::shared::ClusterError;

fn decoded<T: serde::de::DeserializeOwned>(objects: Vec<pb::StoredObject>) -> Vec<(String, T)> {
    objects
        .into_iter()
        .filter_map(|o| Some((o.name, serde_json::from_str(&o.manifest_json).ok()?)))
        .collect()
}

/// The prefix of a namespace's Pod Security labels (`…/enforce`, `…/warn`,
/// `…/audit`; the `-version` labels are read as `latest`, the one version
/// ORCA evaluates).
pub const POD_SECURITY_LABEL: &str = "pod-security.kubernetes.io/";

/// What a pod's namespace's Pod Security `warn` and `audit` levels found.
#[derive(Debug, Default)]
struct PodSecurityNotes {
    warn: Option<String>,
    audit: Option<String>,
}

impl Objects {
    /// Admits and creates a pod created through AdminService (standalone
    /// mode; Kubernetes mode's pods were admitted by Kubernetes).
    pub async fn create_admitted_pod(
        &self,
        mut pod: types::Pod,
    ) -> Result<pb::PodRecord, ClusterError> {
        // The uid is the cluster's, never the client's (as the API server
        // overwrites metadata.uid on create): a chosen uid could name another
        // pod's containers or a path on the host.
        pod.r#ref.get_or_insert_default().uid = uuid::Uuid::new_v4().to_string();
        if self.shared.config().kubernetes.is_some() {
            return self.pods.create_pod(pod).await;
        }
        let _serial = self.admission_lock().lock().await;
        let r = pod.r#ref.get_or_insert_default();
        if r.namespace.is_empty() {
            r.namespace = DEFAULT_NAMESPACE.into();
        }
        let (ns, name) = (r.namespace.clone(), r.name.clone());
        if !self.namespace_exists(&ns)? {
            return Err(ClusterError::NotFound {
                kind: "namespace",
                name: ns,
            });
        }
        // What Pod Security's warn and audit levels say, once the pod exists.
        let mut notes = PodSecurityNotes::default();
        // A spec that does not parse is the pod creation's to fail.
        if let Ok(mut spec) = serde_json::from_str::<PodSpec>(&pod.spec_json) {
            notes = self.admit_pod_security(&ns, &name, &spec)?;
            let ranges: Vec<(String, LimitRange)> = decoded(
                self.shared
                    .store()
                    .objects
                    .scan(&prefix(Kind::LimitRange, &ns))?,
            );
            if !ranges.is_empty() {
                limits::admit(&ranges, &mut spec).map_err(|why| {
                    ClusterError::PermissionDenied(format!("pod {ns}/{name} is forbidden: {why}"))
                })?;
                pod.spec_json = serde_json::to_string(&spec)
                    .map_err(|e| ClusterError::Invalid(e.to_string()))?;
            }
            let quotas: Vec<(String, ResourceQuota)> = decoded(
                self.shared
                    .store()
                    .objects
                    .scan(&prefix(Kind::ResourceQuota, &ns))?,
            );
            if !quotas.is_empty() {
                let pods = self.shared.store().pods.scan(&format!("{ns}/"))?;
                for (quota_name, q) in &quotas {
                    if let Some(why) = quota::refusal(quota_name, q, &pods, &spec) {
                        return Err(ClusterError::ResourceExhausted(format!(
                            "pod {ns}/{name} is forbidden: {why}"
                        )));
                    }
                }
            }
        }
        let record = self.pods.create_pod(pod).await?;
        if let Some(warning) = notes.warn {
            self.shared
                .event("Pod", &ns, &name, true, "PodSecurity", warning);
        }
        if let Some(audit) = notes.audit {
            self.shared.audit().pod_security(&ns, &name, &audit);
        }
        Ok(record)
    }

    /// Pod Security admission, as the API server's: the namespace's
    /// `pod-security.kubernetes.io/{enforce,warn,audit}` labels, or the
    /// configured defaults, evaluated at version latest. A violation of
    /// `enforce` refuses the pod, naming the level and each failed check; of
    /// `warn`, a Warning event; of `audit`, a line in the audit log (both
    /// returned, for once the pod is created). A label with an unknown level is
    /// evaluated as `restricted` (fail closed).
    fn admit_pod_security(
        &self,
        ns: &str,
        name: &str,
        spec: &PodSpec,
    ) -> Result<PodSecurityNotes, ClusterError> {
        let labels = self.namespace_labels(ns)?;
        let defaults = self.shared.config().pod_security;
        let level = |mode: &str, default: pod_security::Level| match labels
            .get(&format!("{POD_SECURITY_LABEL}{mode}"))
        {
            None => default,
            Some(v) => v.parse().unwrap_or(pod_security::Level::Restricted),
        };
        let enforce = level("enforce", defaults.enforce);
        let violations = pod_security::check(enforce, spec);
        if !violations.is_empty() {
            return Err(ClusterError::PermissionDenied(format!(
                "pods {name:?} is forbidden: {}",
                pod_security::message(enforce, &violations)
            )));
        }
        let noted = |mode: &str, default| {
            let level = level(mode, default);
            let violations = pod_security::check(level, spec);
            (!violations.is_empty()).then(|| pod_security::message(level, &violations))
        };
        Ok(PodSecurityNotes {
            // The API server's warning: "would violate PodSecurity ...".
            warn: noted("warn", defaults.warn).map(|m| {
                format!(
                    "would violate {}",
                    m.strip_prefix("violates ").unwrap_or(&m)
                )
            }),
            audit: noted("audit", defaults.audit),
        })
    }

    /// The labels of namespace `ns` (none for `default`, which is not stored).
    fn namespace_labels(
        &self,
        ns: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, ClusterError> {
        let Some(o) = self
            .shared
            .store()
            .objects
            .get(&super::key(Kind::Namespace, "", ns))?
        else {
            return Ok(Default::default());
        };
        let manifest: serde_json::Value = serde_json::from_str(&o.manifest_json)
            .map_err(|e| ClusterError::Invalid(format!("stored namespace {ns}: {e}")))?;
        Ok(manifest["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect())
    }
}
