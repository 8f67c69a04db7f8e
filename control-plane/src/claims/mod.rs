//! PersistentVolumeClaims in standalone mode: storage that outlives the pods
//! that mount it, with Kubernetes' claim semantics where they apply.
//!
//! A claim is one of:
//! - **local** (the `local` provider; no storage class, or `local`): a directory of
//!   the host the first pod using it is placed on (`WaitForFirstConsumer`, as
//!   Kubernetes' local volumes are bound); later pods using it are placed on that
//!   host only, as a local PersistentVolume's node affinity makes them. The
//!   directory lives in the host's directory and goes with the host (the claim is
//!   then Lost) or with the claim.
//! - **ebs** (the `ec2` provider): an existing volume named by the
//!   `orca.research/ebs-volume-id` annotation (static, never deleted by ORCA), or
//!   one ORCA creates from a storage class of `provider.ec2.storage_classes` when
//!   the first pod using it launches, in that pod's availability zone (dynamic,
//!   deleted with the claim when the class's reclaim policy is Delete). A pod's
//!   instance is launched in its volume's zone; the volume is attached once the
//!   instance is launched and detached (waiting for `available`) before the
//!   instance is terminated.
//!
//! Departures from Kubernetes: only `ReadWriteOnce` and `ReadWriteOncePod`
//! access modes (a claim is mounted by one node); `volumeMode: Block` is refused;
//! deleting a claim a live pod uses is refused rather than deferred by a
//! finalizer; claims are not resized.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodSpec};
use orca_proto::controlplane::v1::{self as pb, ClaimPhase};
use orca_proto::types::v1 as types;
use tracing::info;

use crate::pods::{key, phase, valid_name};
use crate::shared::LaunchContext;
use crate::shared::{ClusterError, Shared, now};

mod ebs;

/// Annotation of a claim naming the existing EBS volume it is bound to.
pub const EBS_VOLUME_ANNOTATION: &str = "orca.research/ebs-volume-id";
/// The storage class of local claims on the `local` provider.
pub const LOCAL_CLASS: &str = "local";
/// `Claim.kind` of a host directory.
pub const KIND_LOCAL: &str = "local";
/// `Claim.kind` of an EBS volume.
pub const KIND_EBS: &str = "ebs";

/// The claims a pod's volumes name: `(volume name, claim name, read-only)`.
pub fn claims_of(spec: &PodSpec) -> Vec<(&str, &str)> {
    spec.volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            v.persistent_volume_claim
                .as_ref()
                .map(|c| (v.name.as_str(), c.claim_name.as_str()))
        })
        .collect()
}

/// Whether an EBS volume id looks right (`vol-` and 8 or 17 hex digits).
pub fn is_volume_id(id: &str) -> bool {
    id.strip_prefix("vol-").is_some_and(|hex| {
        matches!(hex.len(), 8 | 17) && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> ClusterError {
    ClusterError::Invalid(format!("PersistentVolumeClaim {field}: {reason}"))
}

/// The claim a manifest describes, checked against what this provider can give.
fn admit(
    manifest_json: &str,
    provider: &str,
    classes: &[crate::config::StorageClass],
) -> Result<pb::Claim, ClusterError> {
    let pvc: PersistentVolumeClaim =
        serde_json::from_str(manifest_json).map_err(|e| invalid("manifest", e))?;
    let meta = &pvc.metadata;
    let name = meta.name.clone().unwrap_or_default();
    if !valid_name(&name) {
        return Err(invalid(
            "metadata.name",
            format!("{name:?} is not a DNS-1123 subdomain"),
        ));
    }
    let namespace = meta
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let spec = pvc.spec.clone().unwrap_or_default();
    for mode in spec.access_modes.iter().flatten() {
        if !matches!(mode.as_str(), "ReadWriteOnce" | "ReadWriteOncePod") {
            return Err(invalid(
                "spec.accessModes",
                format!(
                    "{mode} is not supported: a claim is one EBS volume or one host's directory, mounted by one node (ReadWriteOnce, ReadWriteOncePod)"
                ),
            ));
        }
    }
    if spec.volume_mode.as_deref() == Some("Block") {
        return Err(invalid(
            "spec.volumeMode",
            "Block is not supported (Filesystem only)",
        ));
    }
    let size_bytes = match spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
    {
        Some(q) => orca_model::quantity::parse(&q.0, false).ok_or_else(|| {
            invalid(
                "spec.resources.requests.storage",
                format!("{:?} is not a quantity", q.0),
            )
        })?,
        None => 0,
    };
    let class = spec.storage_class_name.clone().unwrap_or_default();
    let static_volume = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(EBS_VOLUME_ANNOTATION))
        .cloned();
    let mut claim = pb::Claim {
        namespace,
        name,
        uid: uuid::Uuid::new_v4().to_string(),
        manifest_json: manifest_json.to_owned(),
        phase: ClaimPhase::Pending as i32,
        created_at: Some(now()),
        size_bytes,
        storage_class: class.clone(),
        ..Default::default()
    };
    match (provider, static_volume) {
        ("local", Some(_)) => {
            return Err(invalid(
                &format!("annotation {EBS_VOLUME_ANNOTATION}"),
                "the local provider has no EBS volumes",
            ));
        }
        ("local", None) => {
            if !class.is_empty() && class != LOCAL_CLASS {
                return Err(invalid(
                    "spec.storageClassName",
                    format!("{class:?}: the local provider offers only {LOCAL_CLASS:?}"),
                ));
            }
            claim.kind = KIND_LOCAL.into();
            claim.provisioned = true;
            claim.reclaim_policy = "Delete".into();
            claim.message = "bound to the host of the first pod that uses it".into();
        }
        (_, Some(id)) => {
            if !is_volume_id(&id) {
                return Err(invalid(
                    &format!("annotation {EBS_VOLUME_ANNOTATION}"),
                    format!("{id:?} is not an EBS volume id"),
                ));
            }
            claim.kind = KIND_EBS.into();
            claim.volume_id = id;
            claim.reclaim_policy = "Retain".into();
            claim.phase = ClaimPhase::Bound as i32;
        }
        ("ec2", None) => {
            let Some(c) = classes.iter().find(|c| c.name == class) else {
                let names: Vec<&str> = classes.iter().map(|c| c.name.as_str()).collect();
                return Err(invalid(
                    "spec.storageClassName",
                    format!(
                        "{class:?} is not a storage class of provider.ec2.storage_classes ({}); or name an existing volume with the annotation {EBS_VOLUME_ANNOTATION}",
                        names.join(", ")
                    ),
                ));
            };
            if size_bytes == 0 {
                return Err(invalid(
                    "spec.resources.requests.storage",
                    "is required to create a volume",
                ));
            }
            claim.kind = KIND_EBS.into();
            claim.provisioned = true;
            claim.reclaim_policy = c.reclaim_policy.clone();
            claim.message = "the volume is created when the first pod using it launches".into();
        }
        (other, None) => {
            return Err(invalid(
                "spec",
                format!("the {other} provider has no persistent volumes"),
            ));
        }
    }
    Ok(claim)
}

/// PersistentVolumeClaims: admission, local binding, storage, mirrors.
#[derive(Clone)]
pub struct Claims {
    shared: Shared,
}

impl Claims {
    /// The component over `shared` and the components below it.
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }

    /// What launching an instance for `record` needs, from the resolver if
    /// there is one; its claims are stored (mirrored) for the launch to use.
    pub async fn launch_context(&self, record: &pb::PodRecord) -> Result<LaunchContext, String> {
        let Some(r) = self.shared.resolver() else {
            return Ok(LaunchContext::default());
        };
        let context = r.launch_context(record).await.map_err(|e| e.to_string())?;
        for c in &context.claims {
            let k = crate::pods::key(&c.namespace, &c.name);
            let stored = self
                .shared
                .store()
                .claims
                .get(&k)
                .map_err(|e| e.to_string())?;
            let next = match &stored {
                // A claim ORCA provisions: what ORCA made for it stands.
                Some(s) if s.uid == c.uid && c.volume_id.is_empty() => continue,
                // The same volume: keep what ORCA learnt of it (its zone) and
                // when the mirror was made.
                Some(s) if s.volume_id == c.volume_id => pb::Claim {
                    zone: s.zone.clone(),
                    created_at: s.created_at,
                    ..c.clone()
                },
                _ => c.clone(),
            };
            if stored.as_ref() != Some(&next) {
                self.shared
                    .store()
                    .claims
                    .put(&k, &next)
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(context)
    }
}

impl Claims {
    /// Creates a claim from a PersistentVolumeClaim manifest (JSON).
    pub async fn create_claim(&self, manifest_json: &str) -> Result<pb::Claim, ClusterError> {
        let classes = self
            .shared
            .config()
            .ec2()
            .map(|s| s.storage_classes.clone())
            .unwrap_or_default();
        let claim = admit(manifest_json, self.shared.provider().name(), &classes)?;
        if self.shared.config().kubernetes.is_none()
            && !crate::objects::keys::namespace_exists(self.shared.store(), &claim.namespace)?
        {
            return Err(ClusterError::NotFound {
                kind: "namespace",
                name: claim.namespace,
            });
        }
        let k = key(&claim.namespace, &claim.name);
        if !self.shared.store().claims.create(&k, &claim)? {
            return Err(ClusterError::AlreadyExists {
                kind: "persistentvolumeclaim",
                name: k,
            });
        }
        self.shared.store().flush().await?;
        info!(claim = %k, kind = %claim.kind, "claim created");
        Ok(claim)
    }

    /// Claims of `namespace` (all when empty); a local claim whose host is
    /// gone shows as Lost.
    pub fn claims(&self, namespace: &str) -> Result<Vec<pb::Claim>, ClusterError> {
        self.claims_among(namespace, &self.shared.store().nodes.scan("")?)
    }

    /// [`Claims::claims`], with the nodes already read.
    pub(crate) fn claims_among(
        &self,
        namespace: &str,
        nodes: &[pb::Node],
    ) -> Result<Vec<pb::Claim>, ClusterError> {
        let mut claims = self.shared.store().claims.scan("")?;
        claims.retain(|c| namespace.is_empty() || c.namespace == namespace);
        for c in &mut claims {
            if c.kind == KIND_LOCAL
                && !c.node_name.is_empty()
                && !nodes.iter().any(|n| n.name == c.node_name)
            {
                c.phase = ClaimPhase::Lost as i32;
                c.message = format!("its host {} was removed", c.node_name);
            }
        }
        Ok(claims)
    }

    /// Deletes a claim no live pod uses, with the storage ORCA made for it when
    /// its reclaim policy is Delete.
    pub async fn delete_claim(&self, ns: &str, name: &str) -> Result<pb::Claim, ClusterError> {
        let ns = if ns.is_empty() { "default" } else { ns };
        let k = key(ns, name);
        let claim = self
            .claims(ns)?
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| ClusterError::NotFound {
                kind: "persistentvolumeclaim",
                name: k.clone(),
            })?;
        let users: Vec<String> = self
            .shared
            .store()
            .pods
            .scan("")?
            .iter()
            .filter(|p| {
                !matches!(
                    phase(p),
                    types::PodPhase::Succeeded | types::PodPhase::Failed
                )
            })
            .filter(|p| {
                let (pns, _) = crate::pods::names(p);
                pns == ns
                    && p.pod
                        .as_ref()
                        .and_then(|m| serde_json::from_str::<PodSpec>(&m.spec_json).ok())
                        .is_some_and(|s| claims_of(&s).iter().any(|(_, c)| *c == name))
            })
            .map(|p| crate::pods::names(p).1)
            .collect();
        if !users.is_empty() {
            return Err(ClusterError::FailedPrecondition(format!(
                "persistentvolumeclaim {k} is used by pod {}; delete the pods first",
                users.join(", ")
            )));
        }
        if claim.provisioned && claim.reclaim_policy == "Delete" {
            self.remove_storage(&claim).await?;
        }
        self.shared.store().claims.remove(&k)?;
        self.shared.store().flush().await?;
        info!(claim = %k, "claim deleted");
        Ok(claim)
    }

    /// Removes the storage ORCA made for a claim.
    async fn remove_storage(&self, claim: &pb::Claim) -> Result<(), ClusterError> {
        if claim.kind == KIND_LOCAL && !claim.local_path.is_empty() {
            match std::fs::remove_dir_all(&claim.local_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ClusterError::FailedPrecondition(format!(
                        "cannot remove {}: {e}",
                        claim.local_path
                    )));
                }
            }
        }
        if claim.kind == KIND_EBS && !claim.volume_id.is_empty() {
            match self.shared.provider().delete_volume(&claim.volume_id).await {
                Ok(()) => {}
                Err(crate::cloud::ProviderError::NotNow(why)) => {
                    return Err(ClusterError::FailedPrecondition(why));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Claims mirroring a resolver's (Kubernetes) claims that are gone: the
    /// volume ORCA created is deleted (reclaim policy Delete; a volume still
    /// attached waits for the next pass), its PersistentVolume with it, and
    /// the mirror forgotten.
    pub(crate) async fn reclaim_mirrored(&self) {
        let Some(r) = self.shared.resolver() else {
            return;
        };
        let Ok(claims) = self.shared.store().claims.scan("") else {
            return;
        };
        for c in claims.into_iter().filter(|c| c.from_kubernetes) {
            match r.claim_gone(&c).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(claim = %key(&c.namespace, &c.name), error = %e, "claim not checked");
                    continue;
                }
            }
            let k = key(&c.namespace, &c.name);
            if c.provisioned && !c.volume_id.is_empty() && c.reclaim_policy == "Delete" {
                if let Err(e) = self.shared.provider().delete_volume(&c.volume_id).await {
                    tracing::info!(claim = %k, volume = %c.volume_id, error = %e, "volume not deleted yet");
                    continue;
                }
                if let Err(e) = r.volume_reclaimed(&c).await {
                    tracing::warn!(claim = %k, error = %e, "persistent volume not deleted");
                    continue;
                }
            }
            let _ = self.shared.store().claims.remove(&k);
            info!(claim = %k, volume = %c.volume_id, policy = %c.reclaim_policy, "claim gone: storage reclaimed");
        }
    }

    /// Binds the pod's unbound local claims to `node` (its first consumer), so
    /// that later pods using them are placed there.
    pub(crate) fn bind_local_claims(
        &self,
        ns: &str,
        spec: &PodSpec,
        node: &str,
    ) -> Result<(), ClusterError> {
        for (_, claim) in claims_of(spec) {
            let k = key(ns, claim);
            let Some(dir) = self.shared.provider().local_volumes_dir(node) else {
                continue;
            };
            self.shared.store().claims.update(&k, |c| {
                if c.kind == KIND_LOCAL && c.node_name.is_empty() {
                    c.node_name = node.to_owned();
                    c.local_path = dir
                        .join(format!("{}_{}_{}", c.namespace, c.name, c.uid))
                        .to_string_lossy()
                        .into_owned();
                    c.phase = ClaimPhase::Bound as i32;
                    c.message = format!("bound to host {node}");
                }
            })?;
        }
        Ok(())
    }

    /// Where each of the pod's claim volumes is, for its agent.
    pub(crate) fn claim_volumes(
        &self,
        ns: &str,
        spec: &PodSpec,
    ) -> Result<BTreeMap<String, types::ClaimVolume>, String> {
        let mut out = BTreeMap::new();
        for (volume, claim) in claims_of(spec) {
            let k = key(ns, claim);
            let c = self
                .shared
                .store()
                .claims
                .get(&k)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("persistentvolumeclaim {k} not found"))?;
            let source = match c.kind.as_str() {
                KIND_LOCAL if !c.local_path.is_empty() => {
                    types::claim_volume::Source::LocalPath(c.local_path)
                }
                KIND_EBS if !c.volume_id.is_empty() => {
                    let fs_type = if c.fs_type.is_empty() {
                        self.fs_type_of(&c.storage_class)
                    } else {
                        c.fs_type
                    };
                    types::claim_volume::Source::Ebs(types::EbsVolume {
                        volume_id: c.volume_id,
                        fs_type,
                    })
                }
                _ => return Err(format!("persistentvolumeclaim {k} is not bound yet")),
            };
            out.insert(
                volume.to_owned(),
                types::ClaimVolume {
                    claim: k,
                    source: Some(source),
                },
            );
        }
        Ok(out)
    }

    /// The filesystem of volumes of `class` (ext4 for static volumes).
    pub(crate) fn fs_type_of(&self, class: &str) -> String {
        self.shared
            .config()
            .ec2()
            .and_then(|s| s.storage_classes.iter().find(|c| c.name == class))
            .map(|c| c.fs_type.clone())
            .unwrap_or_else(|| "ext4".into())
    }
}

/// Why `node` cannot take a pod of namespace `ns` for its claims, or None.
pub fn misfit(claims: &[pb::Claim], ns: &str, spec: &PodSpec, node: &str) -> Option<String> {
    for (_, name) in claims_of(spec) {
        let Some(c) = claims.iter().find(|c| c.namespace == ns && c.name == name) else {
            return Some(format!("persistentvolumeclaim {ns}/{name} not found"));
        };
        if c.phase == ClaimPhase::Lost as i32 {
            return Some(format!(
                "persistentvolumeclaim {ns}/{name} is Lost ({})",
                c.message
            ));
        }
        if c.kind == KIND_LOCAL && !c.node_name.is_empty() && c.node_name != node {
            return Some(format!(
                "persistentvolumeclaim {ns}/{name} is on host {}",
                c.node_name
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StorageClass;

    fn classes() -> Vec<StorageClass> {
        vec![StorageClass {
            name: "orca-ebs".into(),
            volume_type: "gp3".into(),
            fs_type: "ext4".into(),
            reclaim_policy: "Delete".into(),
        }]
    }

    fn pvc(extra: serde_json::Value) -> String {
        let mut v = serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": { "name": "data" },
            "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } },
        });
        json_patch(&mut v, extra);
        v.to_string()
    }

    fn json_patch(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    json_patch(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn local_claims_wait_for_their_first_pod_and_ebs_claims_need_a_volume_or_a_class() {
        let local = admit(&pvc(serde_json::json!({})), "local", &[]).unwrap();
        assert_eq!(
            (local.kind.as_str(), local.phase, local.namespace.as_str()),
            (KIND_LOCAL, ClaimPhase::Pending as i32, "default")
        );
        assert_eq!(local.size_bytes, 1 << 30);
        let err = admit(
            &pvc(serde_json::json!({ "spec": { "storageClassName": "gp2" } })),
            "local",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("storageClassName") && err.contains("gp2"),
            "{err}"
        );

        let dynamic = admit(
            &pvc(serde_json::json!({ "spec": { "storageClassName": "orca-ebs" } })),
            "ec2",
            &classes(),
        )
        .unwrap();
        assert!(dynamic.provisioned && dynamic.volume_id.is_empty());
        assert_eq!(dynamic.reclaim_policy, "Delete");
        let err = admit(&pvc(serde_json::json!({})), "ec2", &classes())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("orca-ebs") && err.contains(EBS_VOLUME_ANNOTATION),
            "{err}"
        );

        let fixed = admit(
            &pvc(serde_json::json!({ "metadata": { "annotations": { EBS_VOLUME_ANNOTATION: "vol-0123456789abcdef0" } } })),
            "ec2",
            &classes(),
        )
        .unwrap();
        assert_eq!(
            (
                fixed.phase,
                fixed.provisioned,
                fixed.reclaim_policy.as_str()
            ),
            (ClaimPhase::Bound as i32, false, "Retain")
        );
        let err = admit(
            &pvc(serde_json::json!({ "metadata": { "annotations": { EBS_VOLUME_ANNOTATION: "disk-1" } } })),
            "ec2",
            &classes(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("disk-1"), "{err}");
    }

    #[test]
    fn shared_access_modes_and_block_mode_are_refused_naming_the_field() {
        let err = admit(
            &pvc(serde_json::json!({ "spec": { "accessModes": ["ReadWriteMany"] } })),
            "local",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("spec.accessModes") && err.contains("ReadWriteMany"),
            "{err}"
        );
        let err = admit(
            &pvc(serde_json::json!({ "spec": { "volumeMode": "Block" } })),
            "local",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("spec.volumeMode"), "{err}");
    }

    #[test]
    fn a_bound_local_claim_pins_its_pods_to_its_host() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [{ "name": "a", "image": "x" }],
            "volumes": [{ "name": "d", "persistentVolumeClaim": { "claimName": "data" } }],
        }))
        .unwrap();
        let mut claim = admit(&pvc(serde_json::json!({})), "local", &[]).unwrap();
        assert_eq!(misfit(&[claim.clone()], "default", &spec, "n1"), None);
        claim.node_name = "n2".into();
        let why = misfit(&[claim.clone()], "default", &spec, "n1").unwrap();
        assert!(why.contains("on host n2"), "{why}");
        assert_eq!(misfit(&[claim], "default", &spec, "n2"), None);
        let why = misfit(&[], "default", &spec, "n1").unwrap();
        assert!(why.contains("default/data not found"), "{why}");
    }
}
