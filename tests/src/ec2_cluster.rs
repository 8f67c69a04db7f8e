//! A whole ORCA on the `ec2` provider: `moto_server` as EC2, the [`Ec2Proxy`]
//! in front of it (the control plane's endpoint, so tests can fail calls and
//! read the call log), a control plane launching instances there, and an
//! [`InstancePlayer`] that boots an agent for every tagged instance moto runs,
//! from its user data over IMDSv2. Nothing is sent to moto's fake instance IPs
//! or to 169.254.169.254.

use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;

use crate::cluster::{DEADLINE, TestCluster};
use crate::env::{
    Ec2Proxy, InstanceInfo, InstancePlayer, Moto, PlayerSettings, cluster_instances, ec2_client,
};
use crate::eventually::eventually_blocking;

/// The AMI (moto knows it, x86_64).
pub const AMI: &str = "ami-12c6146b";

/// The instance types tests launch, with the on-demand prices the config gives them.
pub const PRICES: &str = "{t3.micro: 0.0104, t3.small: 0.0208, t3.medium: 0.0416, t3.large: 0.0832, \
     g5.xlarge: 1.006, g5.2xlarge: 1.212, g5.12xlarge: 5.672, p4d.24xlarge: 32.77, g5g.xlarge: 0.42}";

/// A standalone ORCA launching EC2 instances in moto, played by real agents.
pub struct Ec2Cluster {
    /// The player (declared first: hosts power off before the cluster goes).
    pub player: InstancePlayer,
    /// The cluster (control plane, containerd, registry).
    pub cluster: TestCluster,
    /// The proxy the control plane calls.
    pub proxy: Ec2Proxy,
    /// moto.
    pub moto: Moto,
    /// The `orca.research/cluster` tag value.
    pub name: String,
    /// Two of moto's default subnets (us-east-1a, us-east-1b), which `$SUBNETS`
    /// in the test's YAML stands for.
    pub subnets: Vec<String>,
    /// A runtime for the proxy and for SDK calls from blocking tests.
    pub rt: tokio::runtime::Runtime,
    _dir: TempDir,
}

impl Ec2Cluster {
    /// Starts everything; `ec2_yaml` adds fields to the `ec2` provider section
    /// (each line indented four spaces, e.g. `"    boot_timeout_ms: 5000\n"`);
    /// `$SUBNETS` in it becomes the list of [`Ec2Cluster::subnets`].
    pub fn start(ec2_yaml: &str) -> Self {
        Self::start_with(ec2_yaml, "")
    }

    /// As [`Ec2Cluster::start`], with top-level control-plane config too.
    pub fn start_with(ec2_yaml: &str, extra_yaml: &str) -> Self {
        Self::start_with_agents(ec2_yaml, extra_yaml, &[])
    }

    /// As [`Ec2Cluster::start_with`], every played agent getting `agent_args` too.
    pub fn start_with_agents(ec2_yaml: &str, extra_yaml: &str, agent_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let moto = Moto::start(dir.path()).expect("moto_server starts");
        let proxy = rt
            .block_on(Ec2Proxy::start(&moto.endpoint))
            .expect("EC2 proxy starts");
        let subnets = rt.block_on(async {
            let out = ec2_client(&moto.endpoint)
                .await
                .describe_subnets()
                .send()
                .await
                .expect("DescribeSubnets");
            let mut s: Vec<(String, String)> = out
                .subnets()
                .iter()
                .map(|s| {
                    (
                        s.availability_zone().unwrap_or_default().to_owned(),
                        s.subnet_id().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            s.sort();
            s.into_iter().take(2).map(|(_, id)| id).collect::<Vec<_>>()
        });
        let ec2_yaml = ec2_yaml.replace("$SUBNETS", &format!("[{}]", subnets.join(", ")));
        let name = format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut provider = format!(
            "  ec2:\n    cluster: {name}\n    region: us-east-1\n    endpoint: {}\n    \
             static_credentials: {{access_key_id: testing, secret_access_key: testing}}\n    \
             ami: {AMI}\n    on_demand_prices: {PRICES}\n    \
             allowed_instance_types: ['t3.*', 'g5.*', 'g5g.*', 'p4d.*']\n    \
             backoff_base_ms: 20\n    backoff_max_ms: 200\n    sweep_interval_ms: 500\n    \
             terminate_confirm_ms: 10000\n",
            proxy.endpoint
        );
        for line in ec2_yaml.lines() {
            let key = line.trim_start().split(':').next().unwrap_or_default();
            // A field given by the test replaces the default above.
            provider = provider
                .lines()
                .filter(|l| l.trim_start().split(':').next() != Some(key))
                .map(|l| format!("{l}\n"))
                .collect();
            provider.push_str(line);
            provider.push('\n');
        }
        let cluster = TestCluster::start_with_provider(extra_yaml, &provider);
        let player = InstancePlayer::start(PlayerSettings {
            ec2_endpoint: moto.endpoint.clone(),
            cluster: name.clone(),
            containerd_socket: cluster.containerd.socket.clone(),
            namespace_prefix: cluster.prefix.clone(),
            registry: cluster.registry.addr.clone(),
            dir: cluster.data_dir().join("instances"),
            agent_args: ["--retry-ms=100"]
                .iter()
                .chain(agent_args)
                .map(|a| a.to_string())
                .collect(),
            poll: Duration::from_millis(100),
        })
        .expect("instance player starts");
        Self {
            player,
            cluster,
            proxy,
            moto,
            name,
            subnets,
            rt,
            _dir: dir,
        }
    }

    /// An SDK client straight to moto (bypassing the proxy and its log).
    pub fn moto_client(&self) -> aws_sdk_ec2::Client {
        self.rt.block_on(ec2_client(&self.moto.endpoint))
    }

    /// The cluster's instances in moto (straight from moto, every page).
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let client = self.moto_client();
        self.rt
            .block_on(cluster_instances(&client, &self.name))
            .expect("DescribeInstances")
    }

    /// The live (pending or running) instances of the cluster.
    pub fn live_instances(&self) -> Vec<InstanceInfo> {
        self.instances()
            .into_iter()
            .filter(|i| matches!(i.state.as_str(), "pending" | "running"))
            .collect()
    }

    /// The store's record of pod `name` in `default` (AdminService GetPod).
    pub fn record(&self, name: &str) -> orca_proto::controlplane::v1::PodRecord {
        self.rt.block_on(async {
            let mut admin = self.cluster.admin().await;
            admin
                .get_pod(orca_proto::controlplane::v1::GetPodRequest {
                    namespace: "default".into(),
                    name: name.into(),
                })
                .await
                .expect("GetPod")
                .into_inner()
        })
    }

    /// Waits until the pod has the phase and returns it.
    pub fn wait_phase(&self, pod: &str, phase: &str) -> serde_json::Value {
        self.cluster.wait_phase(pod, phase)
    }

    /// The events of a pod or node: (reason, message), oldest first.
    pub fn events(&self, name: &str) -> Vec<(String, String)> {
        self.rt.block_on(async {
            let mut admin = self.cluster.admin().await;
            let req = orca_proto::controlplane::v1::ListEventsRequest {
                namespace: String::new(),
                name: name.into(),
            };
            admin
                .list_events(req)
                .await
                .expect("ListEvents")
                .into_inner()
                .events
                .into_iter()
                .map(|e| (e.reason, e.message))
                .collect()
        })
    }

    /// Waits until the pod has an event with this reason, and returns its message.
    pub fn wait_event(&self, pod: &str, reason: &str) -> String {
        eventually_blocking(&format!("event {reason} on {pod}"), DEADLINE, || {
            let events = self.events(pod);
            events
                .iter()
                .find(|(r, _)| r == reason)
                .map(|(_, m)| m.clone())
                .ok_or(events)
        })
    }

    /// Creates a pod from a manifest.
    pub fn apply(&self, manifest: &str) {
        let file = self
            .cluster
            .data_dir()
            .join(format!("pod-{}.yaml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&file, manifest).expect("write manifest");
        self.cluster
            .orca_ok(&["apply", "-f", file.to_str().expect("utf-8 path")]);
    }

    /// A pod manifest: one busybox container sleeping, with these annotations
    /// and requests (empty: none).
    pub fn pod(&self, name: &str, annotations: &[(&str, &str)], cpu: &str, memory: &str) -> String {
        let mut m = format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n");
        if !annotations.is_empty() {
            m.push_str("  annotations:\n");
            for (k, v) in annotations {
                m.push_str(&format!("    {k}: \"{v}\"\n"));
            }
        }
        m.push_str(&format!(
            "spec:\n  containers:\n  - name: main\n    image: {}\n    command: [sleep, '600']\n",
            self.cluster.image
        ));
        if !cpu.is_empty() || !memory.is_empty() {
            m.push_str("    resources:\n      requests:\n");
            if !cpu.is_empty() {
                m.push_str(&format!("        cpu: \"{cpu}\"\n"));
            }
            if !memory.is_empty() {
                m.push_str(&format!("        memory: {memory}\n"));
            }
        }
        m
    }

    /// The RunInstances calls the control plane made for a pod uid, oldest
    /// first (their ClientToken carries the uid): each call's parameters.
    pub fn run_calls(&self, uid: &str) -> Vec<std::collections::BTreeMap<String, String>> {
        let compact: String = uid.chars().filter(char::is_ascii_alphanumeric).collect();
        self.proxy
            .calls_of("RunInstances")
            .into_iter()
            .filter(|c| {
                c.params
                    .get("ClientToken")
                    .is_some_and(|t| t.contains(&compact[..16.min(compact.len())]))
            })
            .map(|c| c.params)
            .collect()
    }

    /// The availability zone of a subnet, as moto describes it.
    pub fn zone_of_subnet(&self, subnet: &str) -> String {
        let moto = self.moto_client();
        self.rt.block_on(async {
            moto.describe_subnets()
                .subnet_ids(subnet)
                .send()
                .await
                .expect("DescribeSubnets")
                .subnets()[0]
                .availability_zone()
                .expect("zone")
                .to_owned()
        })
    }

    /// A 1 GiB volume made in moto directly (not through the proxy): its id.
    pub fn make_volume(&self, zone: &str) -> String {
        let moto = self.moto_client();
        self.rt.block_on(async {
            moto.create_volume()
                .availability_zone(zone)
                .size(1)
                .send()
                .await
                .expect("CreateVolume")
                .volume_id()
                .expect("id")
                .to_owned()
        })
    }

    /// Where the player keeps its hosts.
    pub fn hosts_dir(&self) -> PathBuf {
        self.cluster.data_dir().join("instances")
    }
}

/// A pod record's uid.
pub fn uid_of(p: &orca_proto::controlplane::v1::PodRecord) -> String {
    p.pod
        .as_ref()
        .and_then(|p| p.r#ref.as_ref())
        .map(|r| r.uid.clone())
        .unwrap_or_default()
}
