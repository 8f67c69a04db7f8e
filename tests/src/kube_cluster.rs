//! A whole ORCA in Kubernetes mode: the Kubernetes API emulator
//! ([`env::KubeApi`], kmock extended), a standalone cluster (real containerd,
//! registry, simulated hosts) whose control plane registers as a Virtual
//! Kubelet node there, and the kubelet API the emulator proxies `kubectl logs`,
//! `exec`, `attach` and `port-forward` to, authenticated by a client
//! certificate from the test's own CA.

use std::path::PathBuf;
use std::process::Output;

use serde::Deserialize as _;
use serde_json::Value;
use tempfile::TempDir;

use crate::cluster::{DEADLINE, TestCluster};
use crate::env::{self, KubeApi, KubeApiOptions};
use crate::eventually::eventually_blocking;
use crate::pki::{Issued, TestPki};

/// The Node name ORCA registers in the tests.
pub const NODE: &str = "orca-vk";

/// ORCA as a node of an emulated Kubernetes API.
pub struct KubeCluster {
    /// The standalone cluster underneath (its control plane runs the `vk` mode).
    pub cluster: TestCluster,
    /// The API server emulator.
    pub kapi: KubeApi,
    /// The CA of the kubelet API's clients, and the emulator's client certificate.
    pub pki: TestPki,
    /// The emulator's kubelet client certificate (`CN=kube-apiserver-kubelet-client`).
    pub kubelet_client: Issued,
    /// Port of the kubelet API (on 127.0.0.1).
    pub kubelet_port: u16,
    dir: TempDir,
}

impl KubeCluster {
    /// Starts the emulator, then ORCA with one simulated host `n1`, and waits
    /// until the Node is registered.
    pub fn start() -> Self {
        Self::start_with("", &[])
    }

    /// As [`KubeCluster::start`], with extra lines for the `kubernetes.kubelet:`
    /// section (indented four spaces) and SubjectAccessReview rules for the
    /// emulator (`USER:VERB:RESOURCE:SUBRESOURCE`).
    pub fn start_with(kubelet_yaml: &str, sar_allow: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::new(&dir.path().join("pki"));
        let kubelet_client = pki.issue(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            &[],
        );
        let kapi = KubeApi::start(
            dir.path(),
            KubeApiOptions {
                kubelet_client: Some((
                    kubelet_client.cert_file.clone(),
                    kubelet_client.key_file.clone(),
                )),
                kubelet_ca: None,
                sar_allow: sar_allow.iter().map(|s| s.to_string()).collect(),
            },
        )
        .expect("Kubernetes API emulator (pip install kmock)");
        let kubelet_port = env::free_port();
        let yaml = format!(
            "kubernetes:\n  kubeconfig: {}\n  node_name: {NODE}\n  lease_renew_ms: 300\n  lease_duration_s: 5\n  \
             resync_ms: 5000\n  status_sync_ms: 200\n  kubelet:\n    listen: 127.0.0.1:{kubelet_port}\n    \
             client_ca: {}\n    stream_creation_timeout_ms: 10000\n{kubelet_yaml}",
            kapi.kubeconfig.display(),
            pki.ca_file().display(),
        );
        let cluster = TestCluster::start_configured(
            &[
                "--backoff-base-ms=200",
                "--backoff-max-ms=1000",
                "--retry-ms=100",
            ],
            &yaml,
        );
        cluster.orca_ok(&["node", "add", "n1"]);
        cluster.wait_node_ready("n1");
        let this = Self {
            cluster,
            kapi,
            pki,
            kubelet_client,
            kubelet_port,
            dir,
        };
        eventually_blocking("the Node registered", DEADLINE, || {
            this.kubectl_json(&["get", "node", NODE])
        });
        this
    }

    /// Runs kubectl against the emulator.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kapi.kubectl(args).expect("kubectl runs")
    }

    /// Runs kubectl and returns its stdout; panics with stderr when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl ... -o json`, parsed; `Err` with stderr when it fails.
    pub fn kubectl_json(&self, args: &[&str]) -> Result<Value, String> {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.kubectl(&all);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    /// Creates the objects of a YAML manifest (`kubectl create -f`).
    pub fn create(&self, yaml: &str) {
        let path = self.manifest(yaml);
        self.kubectl_ok(&["create", "-f", &path.display().to_string()]);
    }

    fn manifest(&self, yaml: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = self.dir.path().join(format!(
            "manifest-{}.yaml",
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, yaml).expect("write manifest");
        path
    }

    /// A pod manifest bound to ORCA's Node (as the scheduler would bind it),
    /// tolerating its taint; `containers` is the YAML list under `containers:`
    /// indented four spaces; `{image}` in it is replaced by the test image.
    pub fn pod_yaml(&self, name: &str, extra_spec: &str, containers: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  nodeName: {NODE}\n  \
             tolerations:\n  - key: virtual-kubelet.io/provider\n    operator: Exists\n{extra_spec}  containers:\n{}",
            containers.replace("{image}", &self.cluster.image)
        )
    }

    /// The pod object as the API server holds it, if it exists.
    pub fn pod(&self, name: &str) -> Option<Value> {
        self.kubectl_json(&["get", "pod", name]).ok()
    }

    /// Waits until pod `name` satisfies `ok`; returns it.
    pub fn wait_pod(&self, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        eventually_blocking(&format!("pod {name}: {what}"), DEADLINE, || {
            match self.pod(name) {
                Some(p) if ok(&p) => Ok(p),
                Some(p) => Err(format!("not yet: {}", p["status"])),
                None => Err("no such pod".to_owned()),
            }
        })
    }

    /// Checks every request the control plane made (the emulator's log: those
    /// with the control plane's token) against the ClusterRole in
    /// `deploy/kubernetes/rbac.yaml`; returns how many were checked.
    pub fn assert_rbac_covers_requests(&self) -> usize {
        let path = env::repo_root().join("deploy/kubernetes/rbac.yaml");
        let text = std::fs::read_to_string(&path).expect("deploy/kubernetes/rbac.yaml");
        let role = serde_yaml::Deserializer::from_str(&text)
            .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
            .find(|d| d["kind"] == "ClusterRole")
            .expect("a ClusterRole");
        let list = |v: &serde_yaml::Value| -> Vec<String> {
            v.as_sequence()
                .map(|s| {
                    s.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> = role["rules"]
            .as_sequence()
            .expect("rules")
            .iter()
            .map(|r| {
                (
                    list(&r["apiGroups"]),
                    list(&r["resources"]),
                    list(&r["verbs"]),
                )
            })
            .collect();
        let ours: Vec<_> = self
            .kapi
            .requests()
            .into_iter()
            .filter(|r| r.token.as_deref() == Some(env::KUBE_API_TOKEN) && r.is_resource())
            .collect();
        assert!(!ours.is_empty(), "the control plane made no request");
        for r in &ours {
            let group = r.api_group.clone().unwrap_or_default();
            let resource = r.rbac_resource().unwrap_or_default();
            let allowed = rules.iter().any(|(groups, resources, verbs)| {
                groups.contains(&group) && resources.contains(&resource) && verbs.contains(&r.verb)
            });
            assert!(
                allowed,
                "{} {} (verb {}, group {group:?}, resource {resource}) is not granted by {}",
                r.method,
                r.path,
                r.verb,
                path.display()
            );
        }
        ours.len()
    }

    /// Waits until pod `name` is Running with every container ready.
    pub fn wait_running(&self, name: &str) -> Value {
        self.wait_pod(name, "Running and ready", |p| {
            p["status"]["phase"] == "Running"
                && p["status"]["containerStatuses"]
                    .as_array()
                    .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["ready"] == true))
        })
    }
}
