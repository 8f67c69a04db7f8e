//! Standalone-mode admission of a new pod, in Kubernetes' order: its
//! namespace must exist, the namespace's LimitRanges fill in defaults and
//! bound each container, and its ResourceQuotas must hold the pod beside the
//! unfinished pods already there. One admission at a time, so two pods cannot
//! both take a quota's last room. A refused pod is not created: the caller
//! gets the reason (`exceeded quota: NAME, ...`), as `kubectl` does.

use k8s_openapi::api::core::v1::{LimitRange, PodSpec, ResourceQuota};
use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1 as types;

use super::{Kind, limits, prefix, quota};
use crate::cluster::{Cluster, ClusterError};
use crate::pods::DEFAULT_NAMESPACE;

fn decoded<T: serde::de::DeserializeOwned>(objects: Vec<pb::StoredObject>) -> Vec<(String, T)> {
    objects
        .into_iter()
        .filter_map(|o| Some((o.name, serde_json::from_str(&o.manifest_json).ok()?)))
        .collect()
}

impl Cluster {
    /// Admits and creates a pod created through AdminService (standalone
    /// mode; Kubernetes mode's pods were admitted by Kubernetes).
    pub async fn create_admitted_pod(
        &self,
        mut pod: types::Pod,
    ) -> Result<pb::PodRecord, ClusterError> {
        if self.config().kubernetes.is_some() {
            return self.create_pod(pod).await;
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
        // A spec that does not parse is the pod creation's to fail.
        if let Ok(mut spec) = serde_json::from_str::<PodSpec>(&pod.spec_json) {
            let ranges: Vec<(String, LimitRange)> =
                decoded(self.store().objects.scan(&prefix(Kind::LimitRange, &ns))?);
            if !ranges.is_empty() {
                limits::admit(&ranges, &mut spec).map_err(|why| {
                    ClusterError::PermissionDenied(format!("pod {ns}/{name} is forbidden: {why}"))
                })?;
                pod.spec_json = serde_json::to_string(&spec)
                    .map_err(|e| ClusterError::Invalid(e.to_string()))?;
            }
            let quotas: Vec<(String, ResourceQuota)> = decoded(
                self.store()
                    .objects
                    .scan(&prefix(Kind::ResourceQuota, &ns))?,
            );
            if !quotas.is_empty() {
                let pods = self.store().pods.scan(&format!("{ns}/"))?;
                for (quota_name, q) in &quotas {
                    if let Some(why) = quota::refusal(quota_name, q, &pods, &spec) {
                        return Err(ClusterError::ResourceExhausted(format!(
                            "pod {ns}/{name} is forbidden: {why}"
                        )));
                    }
                }
            }
        }
        self.create_pod(pod).await
    }
}
