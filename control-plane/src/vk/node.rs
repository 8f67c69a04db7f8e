//! The Node object ORCA registers, its status, and its Lease.
//!
//! The Node stands for everything ORCA may run pods on: its capacity is the
//! configured one, or the sum over the hosts ORCA has and may launch. It
//! carries the taint `virtual-kubelet.io/provider=orca:NoSchedule`, so only
//! pods that tolerate it come here. Status is patched when it changes (and
//! with every Lease renewal's tick otherwise unchanged it is not written); the
//! Lease in `kube-node-lease` is renewed every `lease_renew`. On shutdown the
//! Node is marked NotReady.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1::Resources;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::kube::{KubeApi, KubeError, LEASE_NAMESPACE};
use crate::cluster::Cluster;
use crate::config::Provider;
use crate::config::kubernetes::Kubernetes;

/// The taint that keeps ordinary pods off the virtual node.
pub const TAINT_KEY: &str = "virtual-kubelet.io/provider";
/// The taint's value.
pub const TAINT_VALUE: &str = "orca";

/// The kubelet version ORCA reports (the Kubernetes API it implements, and
/// ORCA's own version).
pub fn kubelet_version() -> String {
    format!("v1.32.0-orca-{}", env!("CARGO_PKG_VERSION"))
}

/// Label key prefix of the instance families the Node may launch
/// (`family.orca.research/g5: "true"`).
pub const FAMILY_LABEL: &str = "family.orca.research/";
/// Label key prefix of the GPU models the Node may launch
/// (`gpu.orca.research/A100: "true"`).
pub const GPU_LABEL: &str = "gpu.orca.research/";

/// The labels naming what a provider may launch; names that are not valid
/// label names are made so (other characters become `-`).
pub fn offered_labels(offered: &crate::cloud::Offered) -> BTreeMap<String, String> {
    let clean = |s: &str| -> String {
        let name: String = s
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .take(63)
            .collect();
        name.trim_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_owned()
    };
    let families = offered.families.iter().map(|f| (FAMILY_LABEL, f));
    let models = offered.gpu_models.iter().map(|m| (GPU_LABEL, m));
    families
        .chain(models)
        .map(|(prefix, name)| (format!("{prefix}{}", clean(name)), "true".to_owned()))
        .filter(|(k, _)| !k.ends_with('/'))
        .collect()
}

/// The Node half of the Virtual Kubelet.
pub struct NodeSync {
    cluster: Cluster,
    kube: Arc<dyn KubeApi>,
    config: Kubernetes,
}

fn quantity_cpu(millis: i64) -> String {
    if millis % 1000 == 0 {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

fn resources_json(r: &Resources) -> Value {
    json!({
        "cpu": quantity_cpu(r.cpu_millis),
        "memory": r.memory_bytes.to_string(),
        "pods": r.pods.to_string(),
        "nvidia.com/gpu": r.gpus.to_string(),
    })
}

impl NodeSync {
    /// The Node sync for `config`.
    pub fn new(cluster: Cluster, kube: Arc<dyn KubeApi>, config: Kubernetes) -> Arc<Self> {
        Arc::new(Self {
            cluster,
            kube,
            config,
        })
    }

    /// What the Node offers: configured, or the sum over ORCA's Ready hosts
    /// and what autoscaling or the EC2 caps may still add.
    fn capacity(&self) -> Resources {
        if let Some(c) = &self.config.capacity {
            return *c;
        }
        let mut total = Resources::default();
        let nodes = self
            .cluster
            .shared()
            .store()
            .nodes
            .scan("")
            .unwrap_or_default();
        for n in nodes
            .iter()
            .filter(|n| n.state == pb::NodeState::Ready as i32)
        {
            let a = n.allocatable.unwrap_or_default();
            total.cpu_millis += a.cpu_millis;
            total.memory_bytes += a.memory_bytes;
            total.gpus += a.gpus;
            total.pods += a.pods;
        }
        let config = self.cluster.shared().config();
        if let Some(auto) = &config.autoscale {
            let n = i64::from(auto.max_nodes);
            total.cpu_millis += n * auto.size.cpu_millis;
            total.memory_bytes += n * auto.size.memory_bytes;
            total.gpus += auto.max_nodes as i32 * auto.size.gpus;
            total.pods += auto.max_nodes as i32 * auto.size.pods;
        }
        if let Provider::Ec2(ec2) = &config.provider {
            // One pod per instance; the largest types offer hundreds of vCPUs.
            let instances = if ec2.max_instances > 0 {
                ec2.max_instances
            } else {
                1000
            };
            total.pods = total.pods.max(instances as i32);
            total.cpu_millis = total.cpu_millis.max(i64::from(instances) * 192_000);
            total.memory_bytes = total.memory_bytes.max(i64::from(instances) * (2 << 40));
            total.gpus = total.gpus.max(if ec2.max_gpus > 0 {
                ec2.max_gpus as i32
            } else {
                8 * instances as i32
            });
        }
        total
    }

    async fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.base_labels();
        labels.extend(offered_labels(
            &self.cluster.shared().provider().offered().await,
        ));
        labels.extend(self.config.labels.clone());
        labels
    }

    fn base_labels(&self) -> BTreeMap<String, String> {
        let provider = match self.cluster.shared().config().provider {
            Provider::Ec2(_) => "aws",
            Provider::Local(_) => "local",
        };
        BTreeMap::from([
            ("type".to_owned(), "virtual-kubelet".to_owned()),
            ("kubernetes.io/role".to_owned(), "agent".to_owned()),
            (
                "kubernetes.io/hostname".to_owned(),
                self.config.node_name.clone(),
            ),
            ("kubernetes.io/os".to_owned(), "linux".to_owned()),
            (
                "kubernetes.io/arch".to_owned(),
                std::env::consts::ARCH
                    .replace("x86_64", "amd64")
                    .replace("aarch64", "arm64"),
            ),
            ("orca.research/provider".to_owned(), provider.to_owned()),
            (
                "node.kubernetes.io/exclude-from-external-load-balancers".to_owned(),
                "true".to_owned(),
            ),
        ])
    }

    /// The Node's status as Kubernetes shows it; `ready` false on shutdown.
    pub fn status(&self, ready: bool) -> Value {
        let capacity = resources_json(&self.capacity());
        let condition = |t: &str, ok: bool, reason: &str, message: &str| json!({"type": t, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message});
        json!({
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                if ready {
                    condition("Ready", true, "KubeletReady", "ORCA is ready to launch pods")
                } else {
                    condition("Ready", false, "KubeletNotReady", "the ORCA control plane stopped")
                },
                condition("MemoryPressure", false, "KubeletHasSufficientMemory", "each pod gets its own host"),
                condition("DiskPressure", false, "KubeletHasNoDiskPressure", "each pod gets its own host"),
                condition("PIDPressure", false, "KubeletHasSufficientPID", "each pod gets its own host"),
                condition("NetworkUnavailable", false, "RouteCreated", "pods use their hosts' network"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.config.kubelet.address.to_string()},
                {"type": "Hostname", "address": self.config.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.config.kubelet.listen.port()}},
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "",
                "kernelVersion": "", "osImage": "ORCA virtual node",
                "containerRuntimeVersion": "containerd://orca",
                "kubeletVersion": kubelet_version(), "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            },
        })
    }

    /// Creates the Node, or brings an existing one's labels and taints up to
    /// date; then writes its status.
    pub async fn register(&self) -> Result<(), KubeError> {
        let name = &self.config.node_name;
        let taints = json!([{"key": TAINT_KEY, "value": TAINT_VALUE, "effect": "NoSchedule"}]);
        match self.kube.get_node(name).await? {
            None => {
                let node: Node = serde_json::from_value(json!({
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": name, "labels": self.labels().await},
                    "spec": {"taints": taints},
                }))
                .map_err(|e| KubeError::Transport(e.to_string()))?;
                self.kube.create_node(node).await?;
                info!(node = %name, "registered the Node");
            }
            Some(_) => {
                self.kube
                    .patch_node(
                        name,
                        json!({"metadata": {"labels": self.labels().await}, "spec": {"taints": taints}}),
                    )
                    .await?;
                info!(node = %name, "Node exists; labels and taints updated");
            }
        }
        self.kube
            .patch_node_status(name, json!({"status": self.status(true)}))
            .await?;
        Ok(())
    }

    /// Renews the Lease and patches the status when it changed, every
    /// `lease_renew` until `stop`; then marks the Node NotReady.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut last_status = Value::Null;
        let mut tick = tokio::time::interval(self.config.lease_renew);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            if let Err(e) = self.renew_lease().await {
                warn!(error = %e, "renewing the node Lease failed");
            }
            let status = self.status(true);
            if status != last_status {
                match self
                    .kube
                    .patch_node_status(&self.config.node_name, json!({"status": status}))
                    .await
                {
                    Ok(_) => last_status = status,
                    Err(e) if e.is_not_found() => {
                        // Deleted by someone: register again.
                        if let Err(e) = self.register().await {
                            warn!(error = %e, "registering the Node again failed");
                        }
                    }
                    Err(e) => warn!(error = %e, "patching the Node status failed"),
                }
            }
        }
        match self
            .kube
            .patch_node_status(
                &self.config.node_name,
                json!({"status": self.status(false)}),
            )
            .await
        {
            Ok(_) => info!("Node marked NotReady"),
            Err(e) => warn!(error = %e, "marking the Node NotReady failed"),
        }
    }

    async fn renew_lease(&self) -> Result<(), KubeError> {
        let name = &self.config.node_name;
        let now = MicroTime(jiff::Timestamp::now());
        let spec = LeaseSpec {
            holder_identity: Some(name.clone()),
            lease_duration_seconds: Some(self.config.lease_duration_s as i32),
            renew_time: Some(now),
            ..Default::default()
        };
        match self.kube.get_lease(name).await? {
            Some(mut lease) => {
                lease.spec = Some(spec);
                self.kube.replace_lease(lease).await?;
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(LEASE_NAMESPACE.into()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                self.kube.create_lease(lease).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offered_families_and_gpu_models_become_label_names() {
        let offered = crate::cloud::Offered {
            families: ["g5".to_owned(), "p4d".to_owned()].into(),
            gpu_models: ["A100".to_owned(), "RTX 6000 Ada".to_owned()].into(),
        };
        let labels = offered_labels(&offered);
        let keys: Vec<&str> = labels.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "family.orca.research/g5",
                "family.orca.research/p4d",
                "gpu.orca.research/A100",
                "gpu.orca.research/RTX-6000-Ada",
            ]
        );
        assert!(labels.values().all(|v| v == "true"));
    }
}
