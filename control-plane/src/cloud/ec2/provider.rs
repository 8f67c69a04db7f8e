//! [`Ec2Provider`]: the `ec2` provider behind [`InstanceProvider`]. Each pod
//! gets an instance of its own. [`InstanceProvider::plan`] runs selection over
//! the catalogue (loaded at start, refreshed when older than the configured
//! period; a failed refresh keeps the old one) and spreads each chosen type over
//! the configured subnets. Every type must run the AMI's architecture (from
//! DescribeImages), so an x86_64 AMI never lands on an arm64 type, and a pod
//! that asks for another architecture (nodeSelector `kubernetes.io/arch`)
//! fails with a reason. A pod that names an instance profile, security groups
//! or a subnet (`orca.research/iam-instance-profile`, `…/security-groups`,
//! `…/subnet`), or whose ServiceAccount's role maps to a profile
//! (`instance_profiles_by_role`), has them checked ([`resources`]) before its
//! plan is made, and fails `InvalidLaunchResource` naming the value when one
//! does not exist or does not fit the others; its subnet replaces the
//! configured list, its groups the configured ones. [`InstanceProvider::launch`]
//! is one RunInstances; [`InstanceProvider::terminate`] waits for EC2 to confirm.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Mutex, OnceCell};
use tracing::{info, warn};

use super::launch::{self, LaunchError, LaunchSpec, PodRef, Reservation};
use super::resources::{self, Named, ResourceError, Wanted};
use super::volumes::{self, VolumeError};
use super::{Ec2Error, catalogue, instances};
use crate::cloud::{
    BoxFuture, Instance, InstanceProvider, LaunchFailure, LaunchRequest, NewVolume, Plan,
    PlannedOffering, ProviderError, ReservationInfo, TaggedInstance, VolumeInfo,
};
use crate::config::ec2::Ec2Provider as Settings;
use orca_model::selection::annotations::{
    IAM_INSTANCE_PROFILE, InstanceProfile, ReservationPreference, SECURITY_GROUPS, SUBNET,
};
use orca_model::selection::{self, Arch, Catalogue, LaunchAnnotations, Needs};

/// EC2 instances, one per pod.
pub struct Ec2Provider {
    settings: Settings,
    client: OnceCell<aws_sdk_ec2::Client>,
    iam: OnceCell<aws_sdk_iam::Client>,
    /// Profiles, groups and subnets found, for a while.
    found: resources::Cache,
    /// The AMI's architecture, learnt at prepare.
    ami_arch: OnceCell<Arch>,
    catalogue: Mutex<Option<(Arc<Catalogue>, Instant)>>,
}

/// The instance profile a pod's instance gets.
#[derive(Debug)]
struct ChosenProfile<'a> {
    profile: &'a InstanceProfile,
    /// The annotation or config entry that named it.
    from: String,
    /// The role it must hold, when it was mapped from one.
    role: Option<&'a str>,
}

fn api(e: Ec2Error) -> ProviderError {
    ProviderError::Api(e.to_string())
}

impl Ec2Provider {
    /// A provider with these settings; nothing is called before [`InstanceProvider::prepare`].
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            client: OnceCell::new(),
            iam: OnceCell::new(),
            found: resources::Cache::default(),
            ami_arch: OnceCell::new(),
            catalogue: Mutex::new(None),
        }
    }

    async fn client(&self) -> &aws_sdk_ec2::Client {
        self.client
            .get_or_init(|| super::client(&self.settings.client))
            .await
    }

    async fn iam(&self) -> &aws_sdk_iam::Client {
        self.iam
            .get_or_init(|| super::iam_client(&self.settings.client))
            .await
    }

    /// The instance profile a pod's instance gets, where it came from, and the
    /// role it must hold: the annotation's, else the one its ServiceAccount's
    /// role maps to by `instance_profiles_by_role`; a role without a mapping is
    /// an error (the pod asked for an identity ORCA cannot give it).
    fn instance_profile<'a>(
        &'a self,
        a: &'a LaunchAnnotations,
    ) -> Result<Option<ChosenProfile<'a>>, String> {
        if let Some(p) = &a.iam_instance_profile {
            return Ok(Some(ChosenProfile {
                profile: p,
                from: IAM_INSTANCE_PROFILE.to_owned(),
                role: None,
            }));
        }
        let Some(role) = a.service_account_role_arn.as_deref() else {
            return Ok(None);
        };
        match self.settings.instance_profiles_by_role.get(role) {
            Some(p) => Ok(Some(ChosenProfile {
                profile: p,
                from: format!("provider.ec2.instance_profiles_by_role[{role}]"),
                role: Some(role),
            })),
            None => Err(format!(
                "the pod's ServiceAccount role {role} (eks.amazonaws.com/role-arn) maps to no \
                 instance profile (provider.ec2.instance_profiles_by_role)"
            )),
        }
    }

    /// The security groups a pod's instance gets, and where they came from.
    fn security_groups<'a>(&'a self, a: &'a LaunchAnnotations) -> (&'a [String], &'static str) {
        if a.security_groups.is_empty() {
            (
                &self.settings.security_groups,
                "provider.ec2.security_groups",
            )
        } else {
            (&a.security_groups, SECURITY_GROUPS)
        }
    }

    /// The subnets a pod's instance may go to, best first, and where they came from.
    fn subnets<'a>(&'a self, a: &'a LaunchAnnotations) -> (&'a [String], &'static str) {
        match &a.subnet {
            Some(s) => (std::slice::from_ref(s), SUBNET),
            None => (&self.settings.subnets, "provider.ec2.subnets"),
        }
    }

    /// Checks the profile, groups and subnets a pod names (its network only
    /// when it names groups or a subnet; then against the configured rest).
    async fn check_resources(&self, a: &LaunchAnnotations) -> Result<(), ProviderError> {
        let unplaceable = |reason| ProviderError::Unplaceable {
            code: "InvalidLaunchResource",
            reason,
        };
        let profile = self.instance_profile(a).map_err(unplaceable)?;
        let names_network = !a.security_groups.is_empty() || a.subnet.is_some();
        if profile.is_none() && !names_network {
            return Ok(());
        }
        let (groups, groups_from) = self.security_groups(a);
        let (subnets, subnets_from) = self.subnets(a);
        let wanted = Wanted {
            profile: profile.as_ref().map(|c| {
                (
                    Named {
                        value: c.profile,
                        from: c.from.as_str(),
                    },
                    c.role,
                )
            }),
            groups: names_network.then_some(Named {
                value: groups,
                from: groups_from,
            }),
            subnets: names_network.then_some(Named {
                value: subnets,
                from: subnets_from,
            }),
        };
        resources::check(self.client().await, self.iam().await, &self.found, &wanted)
            .await
            .map_err(|e| match e {
                ResourceError::Invalid(reason) => unplaceable(reason),
                ResourceError::Unanswered(reason) => ProviderError::Api(reason),
            })
    }

    async fn ami_arch(&self) -> Result<Arch, ProviderError> {
        let client = self.client().await;
        self.ami_arch
            .get_or_try_init(|| async {
                let out = client
                    .describe_images()
                    .image_ids(&self.settings.ami)
                    .send()
                    .await
                    .map_err(Ec2Error::of("DescribeImages"))
                    .map_err(api)?;
                let image = out.images().first().ok_or_else(|| ProviderError::Prepare {
                    reason: format!(
                        "AMI {} (provider.ec2.ami) does not exist in this region",
                        self.settings.ami
                    ),
                })?;
                let arch = image.architecture().map(|a| a.as_str()).unwrap_or_default();
                Arch::parse(arch).ok_or_else(|| ProviderError::Prepare {
                    reason: format!(
                        "AMI {} has architecture {arch:?}, which ORCA does not run",
                        self.settings.ami
                    ),
                })
            })
            .await
            .copied()
    }

    /// The catalogue, loaded or refreshed when due (shared, not copied, per pod).
    async fn catalogue(&self) -> Result<Arc<Catalogue>, ProviderError> {
        let mut cached = self.catalogue.lock().await;
        let fresh = cached
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < self.settings.catalogue_refresh);
        if !fresh {
            match catalogue::load(self.client().await, &self.settings.on_demand_prices).await {
                Ok(c) => {
                    info!(types = c.len(), "instance-type catalogue loaded");
                    *cached = Some((Arc::new(c), Instant::now()));
                }
                Err(e) if cached.is_some() => {
                    warn!(error = %e, "catalogue refresh failed; keeping the previous one");
                }
                Err(e) => return Err(api(e)),
            }
        }
        Ok(cached
            .as_ref()
            .map(|(c, _)| Arc::clone(c))
            .unwrap_or_default())
    }

    fn spec(&self, req: &LaunchRequest) -> Result<LaunchSpec, ProviderError> {
        let pod = req.pod.as_ref().ok_or_else(|| ProviderError::Launch {
            node: req.node_name.clone(),
            reason: "the ec2 provider launches instances for pods only".into(),
            code: None,
            failure: LaunchFailure::Fatal,
        })?;
        let a = &pod.annotations;
        let iam_instance_profile = self
            .instance_profile(a)
            .map_err(|reason| ProviderError::Launch {
                node: req.node_name.clone(),
                reason,
                code: None,
                failure: LaunchFailure::Fatal,
            })?
            .map(|c| c.profile.clone());
        let reservation = match (&a.capacity_reservation_id, a.reservation_preference) {
            (Some(id), _) => Some(Reservation::Target(id.clone())),
            (None, Some(ReservationPreference::Open)) => Some(Reservation::Open),
            (None, Some(ReservationPreference::None)) => Some(Reservation::None),
            (None, None) => None,
        };
        let boot = orca_proto::boot::BootData {
            control_plane: req.control_plane_url.clone(),
            ca_pem: req.ca_pem.clone(),
            node_name: req.node_name.clone(),
            join_token: req.join_token.clone(),
        };
        Ok(LaunchSpec {
            cluster: self.settings.cluster.clone(),
            node_name: req.node_name.clone(),
            pod: PodRef {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                uid: pod.uid.clone(),
            },
            attempt: pod.attempt,
            instance_type: pod.offering.instance_type.clone(),
            ami: a.ami.clone().unwrap_or_else(|| self.settings.ami.clone()),
            subnet_id: pod.offering.subnet.clone(),
            security_groups: self.security_groups(a).0.to_vec(),
            iam_instance_profile,
            capacity_type: pod.offering.capacity,
            max_spot_price: a.max_spot_price,
            reservation,
            user_data: boot.to_user_data(),
        })
    }
}

impl InstanceProvider for Ec2Provider {
    fn name(&self) -> &'static str {
        "ec2"
    }

    fn prepare(&self) -> BoxFuture<'_, Result<Option<std::net::IpAddr>, ProviderError>> {
        Box::pin(async move {
            let arch = self.ami_arch().await?;
            self.catalogue().await?;
            info!(ami = %self.settings.ami, %arch, cluster = %self.settings.cluster, "ec2 provider ready");
            Ok(None)
        })
    }

    fn dedicated(&self) -> bool {
        true
    }

    fn offered(&self) -> BoxFuture<'_, crate::cloud::Offered> {
        Box::pin(async move {
            let mut offered = crate::cloud::Offered::default();
            let Ok(catalogue) = self.catalogue().await else {
                return offered;
            };
            for t in catalogue.iter() {
                if self.settings.policy.keeps_out(&t.name).is_some() {
                    continue;
                }
                if let Some((family, _)) = t.name.split_once('.') {
                    offered.families.insert(family.to_owned());
                }
                if t.gpus > 0 && !t.gpu_model.is_empty() {
                    offered.gpu_models.insert(t.gpu_model.clone());
                }
            }
            offered
        })
    }

    fn plan<'a>(
        &'a self,
        needs: &'a Needs,
        annotations: &'a LaunchAnnotations,
    ) -> BoxFuture<'a, Result<Plan, ProviderError>> {
        Box::pin(async move {
            let ami_arch = self.ami_arch().await?;
            if !needs.architectures.is_empty() && !needs.architectures.contains(&ami_arch) {
                return Err(ProviderError::Unplaceable {
                    code: "NoInstanceType",
                    reason: format!(
                        "the pod runs on {:?} but the AMI is {ami_arch}",
                        needs.architectures
                    ),
                });
            }
            let needs = Needs {
                architectures: vec![ami_arch],
                ..needs.clone()
            };
            let catalogue = self.catalogue().await?;
            let decision =
                selection::select(annotations, &needs, &catalogue, &self.settings.policy).map_err(
                    |e| ProviderError::Unplaceable {
                        code: match e {
                            selection::SelectionError::Annotation(_) => "InvalidAnnotation",
                            _ => "NoInstanceType",
                        },
                        reason: e.to_string(),
                    },
                )?;
            self.check_resources(annotations).await?;
            let subnets: Vec<Option<String>> = match self.subnets(annotations).0 {
                [] => vec![None],
                list => list.iter().cloned().map(Some).collect(),
            };
            let mut offerings = Vec::new();
            for c in &decision.candidates {
                let size =
                    catalogue
                        .get(&c.instance_type)
                        .map(|t| orca_proto::types::v1::Resources {
                            cpu_millis: i64::from(t.vcpus) * 1000,
                            memory_bytes: (t.memory_mib as i64) << 20,
                            gpus: t.gpus as i32,
                            pods: 0,
                        });
                for subnet in &subnets {
                    offerings.push(PlannedOffering {
                        offering: crate::cloud::Offering {
                            instance_type: c.instance_type.clone(),
                            subnet: subnet.clone(),
                            capacity: annotations.capacity_type,
                        },
                        usd_per_hour: c.usd_per_hour,
                        size: size.unwrap_or_default(),
                    });
                }
            }
            Ok(Plan {
                offerings,
                reason: format!("{:?}: {}", decision.mode, decision.reason).to_lowercase(),
            })
        })
    }

    fn launch(&self, req: LaunchRequest) -> BoxFuture<'_, Result<Instance, ProviderError>> {
        Box::pin(async move {
            let spec = self.spec(&req)?;
            let launched = launch::run_instance(self.client().await, &spec)
                .await
                .map_err(|e| {
                    let failure = match &e {
                        LaunchError::Capacity { .. } => LaunchFailure::Capacity,
                        LaunchError::Limit { .. } => LaunchFailure::Limit,
                        LaunchError::Throttled(_) => LaunchFailure::Throttled,
                        LaunchError::Transient(_) => LaunchFailure::Transient,
                        LaunchError::Failed { .. } => LaunchFailure::Fatal,
                    };
                    ProviderError::Launch {
                        node: req.node_name.clone(),
                        reason: e.to_string(),
                        code: e.code().map(str::to_owned),
                        failure,
                    }
                })?;
            Ok(Instance {
                instance_id: launched.instance_id,
                zone: launched.zone,
                image_id: launched.image_id,
                capacity_reservation_id: launched.capacity_reservation_id,
            })
        })
    }

    fn volume<'a>(
        &'a self,
        volume_id: &'a str,
    ) -> BoxFuture<'a, Result<VolumeInfo, ProviderError>> {
        Box::pin(async move {
            volumes::describe(self.client().await, volume_id)
                .await
                .map_err(volume_error)
        })
    }

    fn subnet_zone<'a>(
        &'a self,
        subnet: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async move {
            volumes::subnet_zone(self.client().await, subnet)
                .await
                .map_err(api)
        })
    }

    fn in_zone<'a>(
        &'a self,
        plan: Plan,
        zone: &'a str,
    ) -> BoxFuture<'a, Result<Plan, ProviderError>> {
        Box::pin(async move {
            let client = self.client().await;
            let mut zones = std::collections::BTreeMap::new();
            let mut offerings = Vec::new();
            for mut o in plan.offerings {
                let subnet = match &o.offering.subnet {
                    Some(s) => s.clone(),
                    None => match volumes::default_subnet(client, zone).await.map_err(api)? {
                        Some(s) => {
                            o.offering.subnet = Some(s.clone());
                            s
                        }
                        None => continue,
                    },
                };
                if !zones.contains_key(&subnet) {
                    let z = volumes::subnet_zone(client, Some(&subnet))
                        .await
                        .map_err(api)?;
                    zones.insert(subnet.clone(), z);
                }
                if zones[&subnet] == zone {
                    offerings.push(o);
                }
            }
            Ok(Plan {
                offerings,
                reason: format!("{}; in {zone}, the volume's zone", plan.reason),
            })
        })
    }

    fn create_volume(&self, req: NewVolume) -> BoxFuture<'_, Result<VolumeInfo, ProviderError>> {
        Box::pin(async move {
            volumes::create(
                self.client().await,
                &self.settings.cluster,
                &req,
                self.settings.volume_detach_timeout,
            )
            .await
            .map_err(volume_error)
        })
    }

    fn attach_volume<'a>(
        &'a self,
        volume_id: &'a str,
        instance_id: &'a str,
        index: usize,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            volumes::attach(
                self.client().await,
                volume_id,
                instance_id,
                index,
                self.settings.boot_timeout,
            )
            .await
            .map_err(volume_error)
        })
    }

    fn detach_volumes<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let ids = volumes::detach_all(
                self.client().await,
                instance_id,
                self.settings.volume_detach_timeout,
            )
            .await
            .map_err(volume_error)?;
            if !ids.is_empty() {
                info!(instance = %instance_id, volumes = ?ids, "volumes detached");
            }
            Ok(())
        })
    }

    fn delete_volume<'a>(&'a self, volume_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            volumes::delete(self.client().await, volume_id)
                .await
                .map_err(volume_error)?;
            info!(volume = %volume_id, "volume deleted");
            Ok(())
        })
    }

    /// Detaches the instance's data volumes first (waiting for `available`, as
    /// the EBS CSI driver does before a node goes), then terminates it; a detach
    /// that fails or times out does not hold the termination back (EC2 detaches
    /// them when the instance terminates).
    fn terminate(&self, instance_id: &str) -> BoxFuture<'_, Result<(), ProviderError>> {
        let instance_id = instance_id.to_owned();
        Box::pin(async move {
            if let Err(e) = self.detach_volumes(&instance_id).await {
                warn!(instance = %instance_id, error = %e, "volumes not detached before termination");
            }
            instances::terminate(
                self.client().await,
                &instance_id,
                self.settings.terminate_confirm,
            )
            .await
            .map_err(|e| ProviderError::Terminate {
                instance_id: instance_id.clone(),
                reason: e.message,
            })
        })
    }

    fn stop(&self, instance_id: &str) -> BoxFuture<'_, Result<(), ProviderError>> {
        let instance_id = instance_id.to_owned();
        Box::pin(async move {
            instances::stop(self.client().await, &instance_id)
                .await
                .map_err(api)
        })
    }

    fn reservations<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<ReservationInfo>, ProviderError>> {
        Box::pin(async move {
            super::reservations::describe(self.client().await, ids)
                .await
                .map_err(api)
        })
    }

    fn start(&self, instance_id: &str) -> BoxFuture<'_, Result<(), ProviderError>> {
        let instance_id = instance_id.to_owned();
        Box::pin(async move {
            instances::start(self.client().await, &instance_id)
                .await
                .map_err(api)
        })
    }

    fn instances(&self) -> BoxFuture<'_, Result<Vec<TaggedInstance>, ProviderError>> {
        Box::pin(async move {
            instances::tagged(self.client().await, &self.settings.cluster)
                .await
                .map_err(api)
        })
    }
}

fn volume_error(e: VolumeError) -> ProviderError {
    match e {
        VolumeError::NotFound(_) => ProviderError::Unplaceable {
            code: "VolumeNotFound",
            reason: e.to_string(),
        },
        VolumeError::NotNow(reason) => ProviderError::NotNow(reason),
        VolumeError::Ec2(e) => api(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "arn:aws:iam::123456789012:role/orca-pods/train";

    fn provider(yaml: &str) -> Ec2Provider {
        let file: crate::config::ec2::Ec2File = serde_yaml::from_str(yaml).unwrap();
        Ec2Provider::new(file.validate().unwrap())
    }

    #[test]
    fn a_service_account_role_maps_to_its_profile_and_the_annotation_wins() {
        let p = provider(&format!(
            "ami: ami-1\ninstance_profiles_by_role: {{'{ROLE}': train-profile}}\n"
        ));
        let mapped = LaunchAnnotations {
            service_account_role_arn: Some(ROLE.into()),
            ..LaunchAnnotations::default()
        };
        let ChosenProfile {
            profile,
            from,
            role,
        } = p.instance_profile(&mapped).unwrap().unwrap();
        assert_eq!(*profile, InstanceProfile::Name("train-profile".into()));
        assert!(from.contains("instance_profiles_by_role") && from.contains(ROLE));
        assert_eq!(role, Some(ROLE), "the profile must hold the role");

        let both = LaunchAnnotations {
            iam_instance_profile: Some(InstanceProfile::Name("explicit".into())),
            ..mapped.clone()
        };
        let ChosenProfile {
            profile,
            from,
            role,
        } = p.instance_profile(&both).unwrap().unwrap();
        assert_eq!(profile.name(), "explicit");
        assert_eq!(from, IAM_INSTANCE_PROFILE);
        assert_eq!(role, None);

        assert!(
            p.instance_profile(&LaunchAnnotations::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn an_unmapped_role_fails_before_launch_naming_it() {
        let p = provider("ami: ami-1\n");
        let a = LaunchAnnotations {
            service_account_role_arn: Some(ROLE.into()),
            ..LaunchAnnotations::default()
        };
        let e = p.instance_profile(&a).unwrap_err();
        assert!(
            e.contains(ROLE) && e.contains("instance_profiles_by_role"),
            "{e}"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        match rt.block_on(p.check_resources(&a)) {
            Err(ProviderError::Unplaceable { code, reason }) => {
                assert_eq!(code, "InvalidLaunchResource");
                assert!(reason.contains(ROLE), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_pods_subnet_and_groups_replace_the_configured_ones() {
        let p = provider("ami: ami-1\nsubnets: [subnet-0a, subnet-0b]\nsecurity_groups: [sg-0c]\n");
        let none = LaunchAnnotations::default();
        assert_eq!(
            p.subnets(&none),
            (
                &["subnet-0a".to_owned(), "subnet-0b".to_owned()][..],
                "provider.ec2.subnets"
            )
        );
        assert_eq!(
            p.security_groups(&none),
            (&["sg-0c".to_owned()][..], "provider.ec2.security_groups")
        );
        let pod = LaunchAnnotations {
            subnet: Some("subnet-0f".into()),
            security_groups: vec!["sg-01".into(), "sg-02".into()],
            ..LaunchAnnotations::default()
        };
        assert_eq!(p.subnets(&pod), (&["subnet-0f".to_owned()][..], SUBNET));
        assert_eq!(p.security_groups(&pod).0, ["sg-01", "sg-02"]);
        assert_eq!(p.security_groups(&pod).1, SECURITY_GROUPS);
    }
}
