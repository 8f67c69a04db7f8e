//! A changed ConfigMap or Secret reaches the volumes of the running pods that
//! mount it: each such pod's references are resolved again and its agent
//! writes the volumes anew (`UpdateVolumes`: the kubelet's atomic `..data`
//! swap, so a container sees the old files or the new ones). As in Kubernetes,
//! environment variables keep the values the container started with, and
//! subPath mounts keep their content.

use k8s_openapi::api::core::v1::PodSpec;
use orca_proto::agent::v1 as agent;
use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1::PodPhase;
use tracing::{info, warn};

use super::Kind;

use super::Objects;
use crate::pods::{names, phase, uid};

/// Whether `spec` mounts ConfigMap or Secret `name` in a volume.
pub fn mounts(spec: &PodSpec, kind: Kind, name: &str) -> bool {
    spec.volumes.iter().flatten().any(|v| match kind {
        Kind::ConfigMap => {
            v.config_map.as_ref().is_some_and(|c| c.name == name)
                || v.projected
                    .iter()
                    .flat_map(|p| p.sources.iter().flatten())
                    .any(|s| s.config_map.as_ref().is_some_and(|c| c.name == name))
        }
        Kind::Secret => {
            v.secret
                .as_ref()
                .is_some_and(|s| s.secret_name.as_deref() == Some(name))
                || v.projected
                    .iter()
                    .flat_map(|p| p.sources.iter().flatten())
                    .any(|s| s.secret.as_ref().is_some_and(|c| c.name == name))
        }
        _ => false,
    })
}

impl Objects {
    /// Starts rewriting the volumes of the running pods of `ns` that mount
    /// `kind` `name`.
    pub(crate) fn refresh_volumes(&self, kind: Kind, ns: &str, name: &str) {
        let (this, ns, name) = (self.clone(), ns.to_owned(), name.to_owned());
        tokio::spawn(async move { this.refresh(kind, &ns, &name).await });
    }

    async fn refresh(&self, kind: Kind, ns: &str, name: &str) {
        let _one_at_a_time = self.refresh_lock().lock().await;
        let pods = match self.shared.store().pods.scan(&format!("{ns}/")) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "pods not read; volumes not refreshed");
                return;
            }
        };
        for record in pods {
            let bound = !record.node_name.is_empty()
                && !matches!(phase(&record), PodPhase::Succeeded | PodPhase::Failed);
            let spec: Option<PodSpec> = record
                .pod
                .as_ref()
                .and_then(|p| serde_json::from_str(&p.spec_json).ok());
            if !bound || !spec.is_some_and(|s| mounts(&s, kind, name)) {
                continue;
            }
            let (pod_ns, pod_name) = names(&record);
            let what = format!("{} {name}", kind.name().to_ascii_lowercase());
            match self.rewrite_volumes(&record).await {
                Ok(()) => {
                    info!(pod = %crate::pods::key(&pod_ns, &pod_name), changed = %what, "volumes rewritten");
                    self.shared.event(
                        "Pod",
                        &pod_ns,
                        &pod_name,
                        false,
                        "VolumesUpdated",
                        format!("{what} changed: its volumes were written again"),
                    );
                }
                Err(e) => {
                    warn!(pod = %crate::pods::key(&pod_ns, &pod_name), error = %e, "volumes not rewritten");
                    self.shared.event(
                        "Pod",
                        &pod_ns,
                        &pod_name,
                        true,
                        "VolumesNotUpdated",
                        format!("{what} changed, but its volumes were not written again: {e}"),
                    );
                }
            }
        }
    }

    async fn rewrite_volumes(&self, record: &pb::PodRecord) -> Result<(), String> {
        let node = self
            .shared
            .store()
            .nodes
            .get(&record.node_name)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("node {} is gone", record.node_name))?;
        let resolved = self
            .shared
            .resolve(record, &node)
            .await
            .map_err(|e| e.to_string())?;
        let req = agent::UpdateVolumesRequest {
            uid: uid(record),
            volume_data: resolved.volume_data,
        };
        self.shared
            .agent(&node)
            .map_err(|e| e.to_string())?
            .update_volumes(req)
            .await
            .map_err(|s| s.message().to_owned())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounted_objects_are_found_directly_and_in_projections() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "c", "image": "i"}],
            "volumes": [
                {"name": "a", "configMap": {"name": "settings"}},
                {"name": "b", "projected": {"sources": [{"secret": {"name": "db"}}]}}
            ]
        }))
        .unwrap();
        assert!(mounts(&spec, Kind::ConfigMap, "settings"));
        assert!(mounts(&spec, Kind::Secret, "db"));
        assert!(!mounts(&spec, Kind::Secret, "settings"));
        assert!(!mounts(&spec, Kind::ConfigMap, "db"));
    }
}
