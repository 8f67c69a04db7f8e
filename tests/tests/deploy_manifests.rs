//! The Kubernetes manifests and IAM policy of `deploy/kubernetes/`: every
//! document parses into its k8s-openapi type without a field the type does not
//! know (a typo would be dropped silently by the API server's clients), the
//! kustomization lists every file, the objects refer to each other correctly,
//! the ConfigMap's `orca.yaml` passes the control plane's own config parser,
//! and the IAM policy is well-formed and scoped to the cluster's tag. No
//! cluster is needed; what the rules and the policy must grant is checked
//! against the recorded requests by `check-recordings` (tests/run.sh).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use orca_control_plane::config::{Config, Overrides, Provider};
use serde::Deserialize as _;
use serde::de::DeserializeOwned;

const NAMESPACE: &str = "orca-system";
/// The cluster name the manifests carry until the operator substitutes it.
const CLUSTER: &str = "CLUSTER";

fn deploy_dir() -> PathBuf {
    orca_tests::env::repo_root().join("deploy/kubernetes")
}

/// Every object of `deploy/kubernetes/`, typed.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
    claims: Vec<PersistentVolumeClaim>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
}

/// `json` as `T`, which must hold every field of it: serialised again it is the same JSON.
fn typed<T: DeserializeOwned + serde::Serialize>(json: serde_json::Value, at: &str) -> T {
    let object: T = serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{at}: {e}"));
    let again = serde_json::to_value(&object).unwrap();
    if let Some(path) = difference(&json, &again, String::new()) {
        panic!("{at}: {path} is not a field of its type (a typo?) or has a value of another type");
    }
    object
}

/// The first path (`.spec.template...`) where `written` and `read` differ.
fn difference(written: &serde_json::Value, read: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value::{Array, Object};
    match (written, read) {
        (Object(w), Object(r)) => w.iter().find_map(|(k, v)| match r.get(k) {
            Some(rv) => difference(v, rv, format!("{at}.{k}")),
            None => Some(format!("{at}.{k}")),
        }),
        (Array(w), Array(r)) if w.len() == r.len() => w
            .iter()
            .zip(r)
            .enumerate()
            .find_map(|(i, (wv, rv))| difference(wv, rv, format!("{at}[{i}]"))),
        _ => (written != read).then_some(at),
    }
}

impl Manifests {
    /// Reads every `*.yaml` but the kustomization, every document of each, and the
    /// kustomization's resource list.
    fn load() -> (Self, BTreeSet<String>, Vec<String>) {
        let mut all = Self::default();
        let mut files = BTreeSet::new();
        for entry in std::fs::read_dir(deploy_dir()).expect("deploy/kubernetes") {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".yaml") || name == "kustomization.yaml" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
                let value = serde_yaml::Value::deserialize(doc)
                    .unwrap_or_else(|e| panic!("{name} document {i}: {e}"));
                all.add(value, &format!("{name} document {i}"));
            }
            files.insert(name);
        }
        let kustomization: serde_yaml::Value = serde_yaml::from_str(
            &std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).unwrap(),
        )
        .unwrap();
        assert_eq!(kustomization["kind"], "Kustomization");
        assert_eq!(kustomization["namespace"], NAMESPACE);
        let resources = serde_yaml::from_value(kustomization["resources"].clone()).unwrap();
        (all, files, resources)
    }

    fn add(&mut self, value: serde_yaml::Value, at: &str) {
        let json = serde_json::to_value(&value).unwrap();
        let kind = json["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "Namespace" => self.namespaces.push(typed(json, at)),
            "ServiceAccount" => self.service_accounts.push(typed(json, at)),
            "ClusterRole" => self.cluster_roles.push(typed(json, at)),
            "ClusterRoleBinding" => self.bindings.push(typed(json, at)),
            "ConfigMap" => self.config_maps.push(typed(json, at)),
            "Secret" => self.secrets.push(typed(json, at)),
            "PersistentVolumeClaim" => self.claims.push(typed(json, at)),
            "Deployment" => self.deployments.push(typed(json, at)),
            "Service" => self.services.push(typed(json, at)),
            other => panic!("{at}: kind {other:?} is not one this test knows: add it here"),
        }
    }

    fn deployment(&self) -> &Deployment {
        let [d] = self.deployments.as_slice() else {
            panic!("one Deployment")
        };
        d
    }

    fn container(&self) -> &Container {
        let spec = &self.deployment().spec;
        let containers = &spec.template.spec.as_ref().unwrap().containers;
        let [c] = containers.as_slice() else {
            panic!("one container")
        };
        c
    }

    /// The container's port of `name`.
    fn port(&self, name: &str) -> i32 {
        self.container()
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("container port {name}"))
            .container_port
    }

    /// Where volume `volume` is mounted in the container.
    fn mount(&self, volume: &str) -> String {
        self.container()
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == volume)
            .unwrap_or_else(|| panic!("a mount of volume {volume}"))
            .mount_path
            .clone()
    }

    /// `orca.yaml` of the one ConfigMap, with its map's name.
    fn config_text(&self) -> (String, String) {
        let [cm] = self.config_maps.as_slice() else {
            panic!("one ConfigMap")
        };
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get("orca.yaml"))
            .expect("orca.yaml");
        (cm.metadata.name.clone().unwrap(), text.clone())
    }

    /// The config as the Deployment's process loads it: the file it names, with
    /// `ORCA_KUBELET_ADDRESS` (the pod's IP; here an example) as the override.
    fn config(&self) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orca.yaml");
        std::fs::write(&path, self.config_text().1).unwrap();
        let overrides = Overrides {
            kubelet_address: Some("10.0.12.34".to_owned()),
            ..Overrides::default()
        };
        Config::load_with(&path, &overrides)
            .unwrap_or_else(|e| panic!("configmap.yaml's orca.yaml: {e}"))
    }
}

#[test]
fn every_manifest_parses_into_its_type_and_the_kustomization_lists_them_all() {
    let (m, files, resources) = Manifests::load();
    let listed: BTreeSet<String> = resources.iter().cloned().collect();
    assert_eq!(listed.len(), resources.len(), "listed twice: {resources:?}");
    assert_eq!(
        listed, files,
        "kustomization.yaml's resources vs the *.yaml files"
    );
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.namespaces[0].metadata.name.as_deref(), Some(NAMESPACE));
    let namespaced = m
        .service_accounts
        .iter()
        .map(|o| &o.metadata)
        .chain(m.config_maps.iter().map(|o| &o.metadata))
        .chain(m.secrets.iter().map(|o| &o.metadata))
        .chain(m.claims.iter().map(|o| &o.metadata))
        .chain(m.deployments.iter().map(|o| &o.metadata))
        .chain(m.services.iter().map(|o| &o.metadata));
    for meta in namespaced {
        assert_eq!(
            meta.namespace.as_deref(),
            Some(NAMESPACE),
            "{:?}",
            meta.name
        );
    }
    // The example Secret carries no key: blank variables are skipped by the SDK.
    let [secret] = m.secrets.as_slice() else {
        panic!("one Secret")
    };
    let data = secret.string_data.as_ref().expect("stringData");
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    );
    assert!(data.values().all(String::is_empty), "never commit keys");
    assert!(secret.data.is_none());
    let [claim] = m.claims.as_slice() else {
        panic!("one PersistentVolumeClaim")
    };
    let spec = claim.spec.as_ref().unwrap();
    assert_eq!(
        spec.access_modes.as_deref(),
        Some(&["ReadWriteOnce".to_owned()][..])
    );
}

#[test]
fn the_binding_gives_the_cluster_role_to_the_deployments_service_account() {
    let (m, _, _) = Manifests::load();
    let [role] = m.cluster_roles.as_slice() else {
        panic!("one ClusterRole")
    };
    let [account] = m.service_accounts.as_slice() else {
        panic!("one ServiceAccount")
    };
    let [binding] = m.bindings.as_slice() else {
        panic!("one ClusterRoleBinding")
    };
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        binding.role_ref.api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    let [subject] = subjects else {
        panic!("one subject")
    };
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(&subject.name), account.metadata.name.as_ref());
    assert_eq!(subject.namespace.as_deref(), Some(NAMESPACE));
    let pod = m.deployment().spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name, account.metadata.name);
    // Least rights: no wildcard anywhere (check-recordings compares them exactly).
    for rule in role.rules.iter().flatten() {
        let all = rule
            .api_groups
            .iter()
            .chain(&rule.resources)
            .flatten()
            .chain(&rule.verbs);
        assert!(all.into_iter().all(|s| !s.contains('*')), "{rule:?}");
    }
}

#[test]
fn the_deployment_runs_one_locked_down_writer_with_probes() {
    let (m, _, _) = Manifests::load();
    let d = m.deployment();
    let spec = &d.spec;
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(
        spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("Recreate")
    );
    let labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let selector = spec.selector.match_labels.clone().unwrap();
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let pod = spec.template.spec.as_ref().unwrap();
    assert!(pod.termination_grace_period_seconds.unwrap() >= 30);
    let c = m.container();
    assert_eq!(
        c.image.as_deref(),
        Some("ghcr.io/orca-research/orca-control-plane:0.1.0")
    );
    let config_path = format!("{}/orca.yaml", m.mount("config"));
    assert_eq!(
        c.args.as_deref(),
        Some(&["--config".to_owned(), config_path][..])
    );
    for (probe, name) in [
        (&c.startup_probe, "startup"),
        (&c.liveness_probe, "liveness"),
        (&c.readiness_probe, "readiness"),
    ] {
        let port = probe
            .as_ref()
            .and_then(|p| p.tcp_socket.as_ref())
            .unwrap_or_else(|| panic!("a tcpSocket {name} probe"))
            .port
            .clone();
        let IntOrString::String(port) = port else {
            panic!("{name}: probe a named port")
        };
        m.port(&port);
    }
    let resources = c.resources.as_ref().expect("resources");
    for key in ["cpu", "memory"] {
        assert!(resources.requests.as_ref().unwrap().contains_key(key));
        assert!(resources.limits.as_ref().unwrap().contains_key(key));
    }
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_owned()])
    );
    let pod_sc = pod.security_context.as_ref().unwrap();
    assert_eq!(pod_sc.run_as_non_root, Some(true));
    assert!(pod_sc.run_as_user.is_some_and(|u| u > 0));
    // The node's address is the pod's IP; AWS keys come from the Secret, if any.
    let env: BTreeMap<_, _> = c
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e))
        .collect();
    let address = env["ORCA_KUBELET_ADDRESS"].value_from.as_ref().unwrap();
    assert_eq!(
        address.field_ref.as_ref().unwrap().field_path,
        "status.podIP"
    );
    let [from] = c.env_from.as_deref().unwrap_or_default() else {
        panic!("one envFrom")
    };
    let secret = from.secret_ref.as_ref().expect("secretRef");
    assert_eq!(secret.optional, Some(true));
    assert_eq!(Some(&secret.name), m.secrets[0].metadata.name.as_ref());
    // Every volume is one of the manifests' objects.
    for v in pod.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            assert_eq!(cm.name, m.config_text().0);
        } else if let Some(pvc) = &v.persistent_volume_claim {
            assert_eq!(Some(&pvc.claim_name), m.claims[0].metadata.name.as_ref());
        } else {
            assert!(v.empty_dir.is_some(), "volume {}", v.name);
        }
        m.mount(&v.name);
    }
}

#[test]
fn the_config_map_passes_the_control_planes_parser_and_matches_the_deployment() {
    let (m, _, _) = Manifests::load();
    let config = m.config();
    assert_eq!(
        config.data_dir,
        Path::new(&m.mount("data")),
        "data_dir on the volume"
    );
    assert_eq!(config.listen.port(), m.port("grpc") as u16);
    let metrics = config.metrics_listen.expect("metrics on");
    assert_eq!(metrics.port(), m.port("metrics") as u16);
    assert!(metrics.ip().is_unspecified(), "scrapable from the cluster");
    assert!(
        config.listen.ip().is_unspecified(),
        "reachable from outside the pod"
    );
    let Provider::Ec2(ec2) = &config.provider else {
        panic!("the ec2 provider")
    };
    assert_eq!(
        ec2.cluster, CLUSTER,
        "the name iam-policy.json's conditions carry"
    );
    assert!(ec2.client.endpoint.is_none() && ec2.client.static_credentials.is_none());
    let kube = config.kubernetes.as_ref().expect("the kubernetes section");
    assert!(kube.kubeconfig.is_none(), "in-cluster credentials");
    assert_eq!(kube.kubelet.listen.port(), m.port("kubelet") as u16);
    assert_eq!(kube.kubelet.address.to_string(), "10.0.12.34");
}

#[test]
fn services_select_the_deployments_pods_and_name_its_ports() {
    let (m, _, _) = Manifests::load();
    let template = &m.deployment().spec.template;
    let labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
    let mut exposed = BTreeSet::new();
    for s in &m.services {
        let spec = s.spec.as_ref().unwrap();
        let selector = spec.selector.clone().expect("a selector");
        assert!(
            selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "{:?} selects the pods",
            s.metadata.name
        );
        for p in spec.ports.iter().flatten() {
            let Some(IntOrString::String(target)) = &p.target_port else {
                panic!("{:?}: target a named port", s.metadata.name)
            };
            assert_eq!(p.port, m.port(target), "{target}");
            exposed.insert((spec.type_.clone().unwrap_or_default(), target.clone()));
        }
    }
    // Agents on EC2 dial the gRPC port through a load balancer; the kubelet API and
    // the metrics stay inside.
    assert_eq!(
        exposed,
        BTreeSet::from([
            ("LoadBalancer".to_owned(), "grpc".to_owned()),
            ("ClusterIP".to_owned(), "kubelet".to_owned()),
            ("ClusterIP".to_owned(), "metrics".to_owned()),
        ])
    );
}

#[test]
fn the_iam_policy_is_well_formed_and_scoped_to_the_clusters_tag() {
    let text = std::fs::read_to_string(deploy_dir().join("iam-policy.json")).unwrap();
    let policy = orca_tests::recordings::parse_policy(&text).unwrap_or_else(|e| panic!("{e}"));
    let tag = "orca.research/cluster";
    assert_eq!(tag, orca_control_plane::cloud::ec2::launch::TAG_CLUSTER);
    for s in &policy.statement {
        assert_eq!(s.effect, "Allow");
        let actions = s.action.to_vec();
        let resources = s.resource.to_vec();
        let condition = |op: &str, key: &str| {
            s.condition
                .get(op)
                .and_then(|keys| keys.get(key))
                .map(|v| v.to_vec())
        };
        // Instance profiles: read to check a pod's, and their roles passed to EC2
        // only, each scoped to ARNs (the operator narrows account and path).
        if actions == ["iam:PassRole"] {
            assert_eq!(
                condition("StringEquals", "iam:PassedToService"),
                Some(vec!["ec2.amazonaws.com".to_owned()]),
                "{:?}: roles go to EC2 only",
                s.sid
            );
            assert!(
                resources
                    .iter()
                    .all(|r| r.starts_with("arn:aws:iam::") && r.contains(":role/")),
                "{:?}: {resources:?}",
                s.sid
            );
            continue;
        }
        if actions == ["iam:GetInstanceProfile"] {
            assert!(
                resources
                    .iter()
                    .all(|r| r.starts_with("arn:aws:iam::") && r.contains(":instance-profile/")),
                "{:?}: {resources:?}",
                s.sid
            );
            continue;
        }
        let describe = actions.iter().all(|a| a.starts_with("ec2:Describe"));
        if describe {
            // Describe* has no resource-level permissions.
            assert_eq!(resources, ["*"], "{:?}", s.sid);
            continue;
        }
        assert!(
            !resources.contains(&"*".to_owned()),
            "{:?}: scope mutations",
            s.sid
        );
        let created = resources
            .iter()
            .any(|r| r.ends_with(":instance/*") || r.ends_with(":volume/*"));
        match actions.as_slice() {
            [a] if (a == "ec2:RunInstances" || a == "ec2:CreateVolume") && created => assert_eq!(
                condition("StringEquals", &format!("aws:RequestTag/{tag}")),
                Some(vec![CLUSTER.to_owned()]),
                "{:?}",
                s.sid
            ),
            [a] if a == "ec2:RunInstances" => {}
            // A claim's volume may be the user's (untagged); its instance must
            // be the cluster's (the statement with the instance resource).
            [a, d]
                if a == "ec2:AttachVolume"
                    && d == "ec2:DetachVolume"
                    && resources == ["arn:aws:ec2:*:*:volume/*"] => {}
            [a] if a == "ec2:CreateTags" => {
                assert_eq!(
                    condition("StringEquals", "ec2:CreateAction"),
                    Some(vec!["RunInstances".to_owned(), "CreateVolume".to_owned()])
                );
                assert_eq!(
                    condition("StringEquals", &format!("aws:RequestTag/{tag}")),
                    Some(vec![CLUSTER.to_owned()])
                );
            }
            _ => {
                for a in &actions {
                    assert!(a.starts_with("ec2:"), "{a}");
                }
                assert_eq!(
                    condition("StringEquals", &format!("ec2:ResourceTag/{tag}")),
                    Some(vec![CLUSTER.to_owned()]),
                    "{:?}: acts only on the cluster's instances",
                    s.sid
                );
            }
        }
    }
    // Beyond EC2, only what a pod's instance profile needs.
    let actions = orca_tests::recordings::allowed_actions(&policy);
    let other: Vec<&String> = actions.iter().filter(|a| !a.starts_with("ec2:")).collect();
    assert_eq!(
        other,
        ["iam:GetInstanceProfile", "iam:PassRole"],
        "{actions:?}"
    );
}
