//! EBS claims at launch: the volumes a pod's instance needs decide where it may
//! be launched (their availability zone), a storage class's volume is created
//! in the zone of the pod's first offering, and once the instance is launched
//! its volumes are attached to it. Detaching before termination is the
//! provider's ([`crate::cloud::InstanceProvider::terminate`]).

use k8s_openapi::api::core::v1::PodSpec;
use orca_proto::controlplane::v1::{self as pb, ClaimPhase};
use tracing::{info, warn};

use super::{KIND_EBS, claims_of};
use crate::cloud::{NewVolume, Plan, ProviderError};
use crate::pods::key;
use crate::provisioning::Provisioner;
use crate::shared::ClusterError;
use orca_model::selection::LaunchAnnotations;

/// Bytes in a GiB (EBS sizes are whole GiB).
const GIB: u64 = 1 << 30;

/// What a pod's launch does about its claims.
enum Step {
    /// Launch within this plan.
    Launch(Plan),
    /// Not now (a volume still attached to one of the cluster's instances, a
    /// claim not created yet): the reason for the pod's status.
    Wait(&'static str, String),
    /// Never: the pod fails with this reason.
    Fail(&'static str, String),
}

impl Provisioner {
    /// The plan a pod with EBS claims may launch within: the offerings in its
    /// volumes' zone (volumes of storage classes created first, in the zone of
    /// the first offering). `None` when it cannot launch now; the pod's status
    /// says why, or it has failed.
    pub(crate) async fn plan_for_claims(
        &self,
        (ns, name, pod_uid): (&str, &str, &str),
        spec: &PodSpec,
        annotations: &LaunchAnnotations,
        plan: Plan,
    ) -> Result<Option<Plan>, ClusterError> {
        if claims_of(spec).is_empty() {
            return Ok(Some(plan));
        }
        match self.claims_step(ns, spec, annotations, plan).await? {
            Step::Launch(plan) => Ok(Some(plan)),
            Step::Wait(reason, message) => {
                if self
                    .shared
                    .first_time(&format!("claim-wait:{pod_uid}:{message}"))
                {
                    self.shared
                        .event("Pod", ns, name, true, reason, message.clone());
                }
                self.launch_note(ns, name, pod_uid, reason, message);
                Ok(None)
            }
            Step::Fail(reason, message) => {
                self.fail_launch(ns, name, reason, message);
                Ok(None)
            }
        }
    }

    async fn claims_step(
        &self,
        ns: &str,
        spec: &PodSpec,
        annotations: &LaunchAnnotations,
        plan: Plan,
    ) -> Result<Step, ClusterError> {
        let mut claims: Vec<pb::Claim> = Vec::new();
        for (_, claim) in claims_of(spec) {
            let k = key(ns, claim);
            match self.shared.store().claims.get(&k)? {
                Some(c) if c.kind == KIND_EBS => claims.push(c),
                Some(c) => {
                    return Ok(Step::Fail(
                        "InvalidVolume",
                        format!("persistentvolumeclaim {k} is a {} claim, not EBS", c.kind),
                    ));
                }
                None => {
                    return Ok(Step::Wait(
                        "WaitingForClaim",
                        format!("persistentvolumeclaim {k} not found"),
                    ));
                }
            }
        }
        let nodes = self.shared.store().nodes.scan("")?;
        let mut zone: Option<(String, String)> = None; // (zone, the volume that set it)
        for c in claims.iter().filter(|c| !c.volume_id.is_empty()) {
            let v = match self.shared.provider().volume(&c.volume_id).await {
                Ok(v) => v,
                Err(ProviderError::Unplaceable { code, reason }) => {
                    return Ok(Step::Fail(code, reason));
                }
                Err(e) => return Ok(Step::Wait("Selecting", e.to_string())),
            };
            if let Some(instance) = &v.attached_to {
                let ours = nodes.iter().find(|n| &n.instance_id == instance);
                return Ok(match ours {
                    Some(n) => Step::Wait(
                        "VolumeInUse",
                        format!(
                            "EBS volume {} is attached to instance {instance} (node {}); waiting for it to be detached",
                            v.volume_id, n.name
                        ),
                    ),
                    None => Step::Fail(
                        "VolumeInUse",
                        format!(
                            "EBS volume {} is attached to instance {instance}, which is not one of this cluster's",
                            v.volume_id
                        ),
                    ),
                });
            }
            match &zone {
                Some((z, other)) if *z != v.zone => {
                    return Ok(Step::Fail(
                        "VolumeZoneMismatch",
                        format!(
                            "EBS volume {} is in {}, volume {other} in {z}: one instance cannot attach both",
                            v.volume_id, v.zone
                        ),
                    ));
                }
                Some(_) => {}
                None => zone = Some((v.zone.clone(), v.volume_id.clone())),
            }
        }
        if let (Some((zone, volume)), Some(subnet)) = (&zone, &annotations.subnet) {
            let subnet_zone = match self.shared.provider().subnet_zone(Some(subnet)).await {
                Ok(z) => z,
                Err(e) => return Ok(Step::Wait("Selecting", e.to_string())),
            };
            if subnet_zone != *zone {
                return Ok(Step::Fail(
                    "VolumeZoneMismatch",
                    format!(
                        "subnet {subnet} (orca.research/subnet) is in {subnet_zone}, but EBS volume {volume} is in {zone}: an instance attaches only volumes of its own zone"
                    ),
                ));
            }
        }
        let zone = match zone {
            Some((z, _)) => z,
            None => {
                let first = plan
                    .offerings
                    .first()
                    .and_then(|o| o.offering.subnet.clone());
                match self.shared.provider().subnet_zone(first.as_deref()).await {
                    Ok(z) => z,
                    Err(e) => return Ok(Step::Wait("Selecting", e.to_string())),
                }
            }
        };
        for c in claims.iter().filter(|c| c.volume_id.is_empty()) {
            if let Err(e) = self.create_claim_volume(c, &zone).await {
                return Ok(Step::Wait("CreatingVolume", e.to_string()));
            }
        }
        // Kubernetes claims ORCA provisioned get their PersistentVolume (made
        // again until it exists: a failure here is retried on the next pass).
        if let Some(r) = self.shared.resolver() {
            for c in &claims {
                let k = key(&c.namespace, &c.name);
                let Some(now) = self.shared.store().claims.get(&k)? else {
                    continue;
                };
                if now.from_kubernetes
                    && now.provisioned
                    && !now.volume_id.is_empty()
                    && let Err(why) = r.volume_provisioned(&now).await
                {
                    return Ok(Step::Wait("CreatingVolume", why.to_string()));
                }
            }
        }
        let plan = match self.shared.provider().in_zone(plan, &zone).await {
            Ok(plan) => plan,
            Err(e) => return Ok(Step::Wait("Selecting", e.to_string())),
        };
        if plan.offerings.is_empty() {
            return Ok(Step::Fail(
                "VolumeZoneMismatch",
                format!(
                    "no offering the pod may get is in {zone}, its volumes' zone: add a subnet of {zone} to provider.ec2.subnets"
                ),
            ));
        }
        Ok(Step::Launch(plan))
    }

    /// Creates the volume of a claim of a storage class in `zone` and binds the
    /// claim to it.
    async fn create_claim_volume(&self, c: &pb::Claim, zone: &str) -> Result<(), ClusterError> {
        let class = self
            .shared
            .config()
            .ec2()
            .and_then(|s| s.storage_classes.iter().find(|s| s.name == c.storage_class))
            .ok_or_else(|| {
                ClusterError::Invalid(format!(
                    "storage class {:?} is no longer configured",
                    c.storage_class
                ))
            })?;
        let k = key(&c.namespace, &c.name);
        let req = NewVolume {
            zone: zone.to_owned(),
            size_gib: i32::try_from(c.size_bytes.div_ceil(GIB).max(1)).unwrap_or(i32::MAX),
            volume_type: class.volume_type.clone(),
            claim: k.clone(),
            claim_uid: c.uid.clone(),
        };
        let v = self.shared.provider().create_volume(req).await?;
        self.shared.store().claims.update(&k, |stored| {
            if stored.uid == c.uid && stored.volume_id.is_empty() {
                stored.volume_id = v.volume_id.clone();
                stored.zone = v.zone.clone();
                stored.phase = ClaimPhase::Bound as i32;
                stored.message = format!("volume {} created in {}", v.volume_id, v.zone);
            }
        })?;
        self.shared.store().flush().await?;
        info!(claim = %k, volume = %v.volume_id, zone = %v.zone, "volume created");
        self.shared.event(
            "PersistentVolumeClaim",
            &c.namespace,
            &c.name,
            false,
            "ProvisioningSucceeded",
            format!(
                "created EBS volume {} ({}) in {}",
                v.volume_id, class.volume_type, v.zone
            ),
        );
        Ok(())
    }

    /// Attaches the pod's EBS volumes to its instance (those not attached to it
    /// already); a volume that cannot be attached fails the pod. Called once the
    /// instance is launched, and again when the pod is handed to its agent (a
    /// control plane restarted in between attaches then).
    pub(crate) async fn attach_claims(&self, ns: &str, name: &str, instance_id: &str) {
        let Ok(record) = self.pods.pod(ns, name) else {
            return;
        };
        let Some(spec) = record
            .pod
            .as_ref()
            .and_then(|p| serde_json::from_str::<PodSpec>(&p.spec_json).ok())
        else {
            return;
        };
        for (index, (_, claim)) in claims_of(&spec).into_iter().enumerate() {
            let k = key(ns, claim);
            let Ok(Some(c)) = self.shared.store().claims.get(&k) else {
                continue;
            };
            if c.kind != KIND_EBS || c.volume_id.is_empty() {
                continue;
            }
            if let Ok(v) = self.shared.provider().volume(&c.volume_id).await
                && v.attached_to.as_deref() == Some(instance_id)
            {
                continue;
            }
            match self
                .shared
                .provider()
                .attach_volume(&c.volume_id, instance_id, index)
                .await
            {
                Ok(()) => {
                    info!(pod = %key(ns, name), volume = %c.volume_id, instance = %instance_id, "volume attached");
                    self.shared.event(
                        "Pod",
                        ns,
                        name,
                        false,
                        "VolumeAttached",
                        format!(
                            "EBS volume {} (claim {k}) attached to {instance_id}",
                            c.volume_id
                        ),
                    );
                }
                Err(e) => {
                    warn!(pod = %key(ns, name), volume = %c.volume_id, error = %e, "volume not attached");
                    let msg = format!("EBS volume {} (claim {k}): {e}", c.volume_id);
                    let _ = self.pods.fail_pod(ns, name, "FailedAttachVolume", msg);
                    self.shared.flush_in_background();
                    return;
                }
            }
        }
    }
}
