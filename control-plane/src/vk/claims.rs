//! What a pod's launch needs from the API server (Kubernetes mode): its
//! ServiceAccount's IAM role (`eks.amazonaws.com/role-arn`, IRSA's annotation,
//! mapped to an instance profile by `provider.ec2.instance_profiles_by_role`)
//! and its PersistentVolumeClaims, each bound to an EBS volume: the volume of
//! its PersistentVolume (the EBS CSI driver's `volumeHandle`, or the in-tree
//! `awsElasticBlockStore.volumeID`), or the claim's
//! `orca.research/ebs-volume-id` annotation. They become ORCA claims (kind
//! `ebs`, never deleted by ORCA), so the launch path is the standalone one.
//!
//! A claim that is not bound and names a storage class of
//! `provider.ec2.storage_classes` is ORCA's to provision: its volume is created
//! when its first pod launches (as in standalone mode), then a PersistentVolume
//! (`orca-<claim uid>`, the EBS CSI driver's source, `claimRef` to the claim)
//! is created for it, which Kubernetes' PV controller binds to the claim. Once
//! the claim is deleted, the volume is deleted (reclaim policy Delete) and the
//! PersistentVolume with it. Any other unbound claim waits (another
//! provisioner's). Local volumes are standalone mode's only.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec, PodSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use orca_proto::controlplane::v1::{self as pb, ClaimPhase};

use super::resolve::KubeResolver;
use crate::claims::{EBS_VOLUME_ANNOTATION, KIND_EBS, claims_of, is_volume_id};
use crate::cluster::{LaunchContext, now};

/// The ServiceAccount annotation naming its IAM role (IRSA).
pub const ROLE_ARN_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
/// The EBS CSI driver's name.
pub const EBS_CSI_DRIVER: &str = "ebs.csi.aws.com";

/// The EBS volume (and filesystem, if the volume says) of a PersistentVolume.
fn ebs_of(pv: &PersistentVolume) -> Option<(String, String)> {
    let spec = pv.spec.as_ref()?;
    if let Some(csi) = spec.csi.as_ref().filter(|c| c.driver == EBS_CSI_DRIVER) {
        return Some((
            csi.volume_handle.clone(),
            csi.fs_type.clone().unwrap_or_default(),
        ));
    }
    spec.aws_elastic_block_store.as_ref().map(|e| {
        // In-tree ids may be `aws://<zone>/<vol-id>`.
        let id = e
            .volume_id
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        (id, e.fs_type.clone().unwrap_or_default())
    })
}

/// Annotation Kubernetes' provisioners put on the volumes they make.
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// ORCA's name as a provisioner.
const PROVISIONER: &str = "orca.research/ebs";

/// The PersistentVolume ORCA makes for a claim it provisioned.
pub fn volume_name(claim: &pb::Claim) -> String {
    format!("orca-{}", claim.uid)
}

/// The PersistentVolume of a claim whose EBS volume ORCA created.
pub fn provisioned_volume(claim: &pb::Claim) -> PersistentVolume {
    let pvc: PersistentVolumeClaim = serde_json::from_str(&claim.manifest_json).unwrap_or_default();
    let modes = pvc
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.clone())
        .unwrap_or_else(|| vec!["ReadWriteOnce".into()]);
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(volume_name(claim)),
            annotations: Some(BTreeMap::from([(
                PROVISIONED_BY.into(),
                PROVISIONER.into(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(modes),
            capacity: Some(BTreeMap::from([(
                "storage".into(),
                Quantity(format!("{}Gi", claim.size_bytes.div_ceil(1 << 30).max(1))),
            )])),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(claim.namespace.clone()),
                name: Some(claim.name.clone()),
                uid: Some(claim.uid.clone()),
                ..Default::default()
            }),
            csi: Some(CSIPersistentVolumeSource {
                driver: EBS_CSI_DRIVER.into(),
                volume_handle: claim.volume_id.clone(),
                fs_type: Some(if claim.fs_type.is_empty() {
                    "ext4".into()
                } else {
                    claim.fs_type.clone()
                }),
                ..Default::default()
            }),
            persistent_volume_reclaim_policy: Some(claim.reclaim_policy.clone()),
            storage_class_name: Some(claim.storage_class.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ORCA claim a Kubernetes claim (and its volume, when bound) stands for;
/// an unbound claim of one of `classes` is ORCA's to provision.
pub fn claim_from(
    pvc: &PersistentVolumeClaim,
    pv: Option<&PersistentVolume>,
    classes: &[crate::config::StorageClass],
) -> Result<pb::Claim, String> {
    let ns = pvc.metadata.namespace.clone().unwrap_or_default();
    let name = pvc.metadata.name.clone().unwrap_or_default();
    let annotated = pvc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EBS_VOLUME_ANNOTATION))
        .cloned();
    let (volume_id, fs_type) = match (annotated, pv) {
        (Some(id), _) => (id, String::new()),
        (None, Some(pv)) => ebs_of(pv).ok_or_else(|| {
            format!(
                "persistentvolume {} of claim {ns}/{name} is not an EBS volume (ORCA's instances attach EBS volumes: the {EBS_CSI_DRIVER} driver's or awsElasticBlockStore)",
                pv.metadata.name.clone().unwrap_or_default()
            )
        })?,
        (None, None) => {
            let spec = pvc.spec.clone().unwrap_or_default();
            let class = spec.storage_class_name.clone().unwrap_or_default();
            let Some(c) = classes.iter().find(|c| c.name == class) else {
                return Err(format!(
                    "persistentvolumeclaim {ns}/{name} is not bound to a volume yet"
                ));
            };
            let size_bytes = spec
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .and_then(|q| orca_model::quantity::parse(&q.0, false))
                .ok_or_else(|| {
                    format!("persistentvolumeclaim {ns}/{name}: resources.requests.storage is required to create a volume")
                })?;
            return Ok(pb::Claim {
                namespace: ns,
                name,
                uid: pvc.metadata.uid.clone().unwrap_or_default(),
                manifest_json: serde_json::to_string(pvc).unwrap_or_default(),
                phase: ClaimPhase::Pending as i32,
                created_at: Some(now()),
                kind: KIND_EBS.into(),
                storage_class: class,
                provisioned: true,
                reclaim_policy: c.reclaim_policy.clone(),
                fs_type: c.fs_type.clone(),
                size_bytes,
                from_kubernetes: true,
                message: "the volume is created when the first pod using it launches".into(),
                ..Default::default()
            });
        }
    };
    if !is_volume_id(&volume_id) {
        return Err(format!(
            "persistentvolumeclaim {ns}/{name}: {volume_id:?} is not an EBS volume id"
        ));
    }
    if !matches!(fs_type.as_str(), "" | "ext4" | "xfs") {
        return Err(format!(
            "persistentvolumeclaim {ns}/{name}: filesystem {fs_type:?} is not ext4 or xfs"
        ));
    }
    let spec = pvc.spec.clone().unwrap_or_default();
    Ok(pb::Claim {
        namespace: ns,
        name,
        uid: pvc.metadata.uid.clone().unwrap_or_default(),
        manifest_json: serde_json::to_string(pvc).unwrap_or_default(),
        phase: ClaimPhase::Bound as i32,
        created_at: Some(now()),
        kind: KIND_EBS.into(),
        volume_id,
        storage_class: spec.storage_class_name.unwrap_or_default(),
        reclaim_policy: "Retain".into(),
        fs_type,
        from_kubernetes: true,
        message: "mirrors the Kubernetes PersistentVolumeClaim".into(),
        ..Default::default()
    })
}

impl KubeResolver {
    /// The pod's ServiceAccount role and claims, read from the API server.
    pub(super) async fn launch_context_of(
        &self,
        record: &pb::PodRecord,
    ) -> Result<LaunchContext, String> {
        let pod = record.pod.as_ref().ok_or("pod record without a pod")?;
        let ns = pod
            .r#ref
            .as_ref()
            .map(|r| r.namespace.clone())
            .unwrap_or_default();
        let spec: PodSpec = serde_json::from_str(&pod.spec_json).map_err(|e| e.to_string())?;
        let sa = spec
            .service_account_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let role = self
            .kube()
            .get_service_account(&ns, &sa)
            .await
            .map_err(|e| format!("serviceaccount {ns}/{sa}: {e}"))?
            .and_then(|a| a.metadata.annotations)
            .and_then(|a| a.get(ROLE_ARN_ANNOTATION).cloned());
        let mut claims = Vec::new();
        for (_, claim) in claims_of(&spec) {
            let pvc = self
                .kube()
                .get_claim(&ns, claim)
                .await
                .map_err(|e| format!("persistentvolumeclaim {ns}/{claim}: {e}"))?
                .ok_or_else(|| format!("persistentvolumeclaim {ns}/{claim} not found"))?;
            let pv_name = pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .filter(|n| !n.is_empty());
            let pv = match pv_name {
                Some(n) => self
                    .kube()
                    .get_volume(&n)
                    .await
                    .map_err(|e| format!("persistentvolume {n}: {e}"))?,
                None => None,
            };
            claims.push(claim_from(&pvc, pv.as_ref(), self.storage_classes())?);
        }
        Ok(LaunchContext {
            service_account_role_arn: role,
            claims,
        })
    }

    /// Makes the PersistentVolume of a claim whose volume ORCA created.
    pub(super) async fn make_volume(&self, claim: &pb::Claim) -> Result<(), String> {
        self.kube()
            .create_volume(provisioned_volume(claim))
            .await
            .map_err(|e| format!("persistentvolume {}: {e}", volume_name(claim)))
    }

    /// Whether the Kubernetes claim a mirrored claim stands for is gone.
    pub(super) async fn is_claim_gone(&self, claim: &pb::Claim) -> Result<bool, String> {
        let now = self
            .kube()
            .get_claim(&claim.namespace, &claim.name)
            .await
            .map_err(|e| {
                format!(
                    "persistentvolumeclaim {}/{}: {e}",
                    claim.namespace, claim.name
                )
            })?;
        Ok(now.is_none_or(|p| p.metadata.uid.as_deref() != Some(claim.uid.as_str())))
    }

    /// Deletes the PersistentVolume ORCA made for a claim.
    pub(super) async fn remove_volume(&self, claim: &pb::Claim) -> Result<(), String> {
        self.kube()
            .delete_volume(&volume_name(claim))
            .await
            .map_err(|e| format!("persistentvolume {}: {e}", volume_name(claim)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvc(annotations: serde_json::Value, volume_name: Option<&str>) -> PersistentVolumeClaim {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "data", "namespace": "lab", "uid": "u1", "annotations": annotations },
            "spec": { "volumeName": volume_name, "storageClassName": "gp3" },
        }))
        .unwrap()
    }

    fn pv(spec: serde_json::Value) -> PersistentVolume {
        serde_json::from_value(serde_json::json!({ "metadata": { "name": "pv-1" }, "spec": spec }))
            .unwrap()
    }

    #[test]
    fn csi_and_in_tree_volumes_and_the_annotation_name_the_ebs_volume() {
        let csi = pv(serde_json::json!({ "csi": {
            "driver": EBS_CSI_DRIVER, "volumeHandle": "vol-0123456789abcdef0", "fsType": "xfs" } }));
        let c = claim_from(&pvc(serde_json::json!({}), Some("pv-1")), Some(&csi), &[]).unwrap();
        assert_eq!(
            (c.volume_id.as_str(), c.fs_type.as_str(), c.kind.as_str()),
            ("vol-0123456789abcdef0", "xfs", KIND_EBS)
        );
        assert!(c.from_kubernetes && !c.provisioned, "never deleted by ORCA");
        let in_tree = pv(serde_json::json!({ "awsElasticBlockStore": {
            "volumeID": "aws://us-east-1a/vol-0123456789abcdef1" } }));
        let c = claim_from(
            &pvc(serde_json::json!({}), Some("pv-1")),
            Some(&in_tree),
            &[],
        )
        .unwrap();
        assert_eq!(c.volume_id, "vol-0123456789abcdef1");
        let annotated = pvc(
            serde_json::json!({ EBS_VOLUME_ANNOTATION: "vol-0123456789abcdef2" }),
            None,
        );
        assert_eq!(
            claim_from(&annotated, None, &[]).unwrap().volume_id,
            "vol-0123456789abcdef2"
        );
    }

    #[test]
    fn unbound_and_foreign_volumes_say_why() {
        let err = claim_from(&pvc(serde_json::json!({}), None), None, &[]).unwrap_err();
        assert!(err.contains("lab/data is not bound"), "{err}");
        let nfs = pv(serde_json::json!({ "nfs": { "server": "s", "path": "/x" } }));
        let err =
            claim_from(&pvc(serde_json::json!({}), Some("pv-1")), Some(&nfs), &[]).unwrap_err();
        assert!(
            err.contains("pv-1") && err.contains("not an EBS volume"),
            "{err}"
        );
    }
}
