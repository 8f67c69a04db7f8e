//! Kubernetes mode on the `ec2` provider, ORCA's production shape, with the
//! Kubernetes API emulator, moto and the instance player: a pod bound to ORCA's
//! Node whose ServiceAccount carries `eks.amazonaws.com/role-arn` gets an
//! instance launched with the instance profile that role maps to
//! (`instance_profiles_by_role`), and its PersistentVolumeClaim, bound to an
//! EBS CSI PersistentVolume, has that volume attached to the instance (in the
//! volume's zone), formatted and mounted; a pod whose claim is not bound waits,
//! saying so. A claim of one of ORCA's storage classes gets its volume created
//! and a PersistentVolume bound to it, both deleted once the claim is.

use orca_tests::cluster::DEADLINE;
use orca_tests::ec2_cluster::Ec2Cluster;
use orca_tests::env::{KubeApi, KubeApiOptions, free_port, iam_client};
use orca_tests::eventually::eventually_blocking;
use orca_tests::pki::TestPki;

const ROLE: &str = "arn:aws:iam::123456789012:role/orca-pods/train";
const PROFILE: &str = "train-profile";

/// The emulator, then an ORCA on the `ec2` provider in Kubernetes mode.
fn start(dir: &std::path::Path) -> (KubeApi, Ec2Cluster) {
    let pki = TestPki::new(&dir.join("pki"));
    let kapi = KubeApi::start(
        dir,
        KubeApiOptions {
            kubelet_client: None,
            kubelet_ca: None,
            sar_allow: Vec::new(),
        },
    )
    .expect("Kubernetes API emulator (pip install kmock)");
    let kube_yaml = format!(
        "kubernetes:\n  kubeconfig: {}\n  node_name: orca-vk\n  lease_renew_ms: 300\n  lease_duration_s: 5\n  \
         resync_ms: 5000\n  status_sync_ms: 200\n  kubelet:\n    listen: 127.0.0.1:{}\n    client_ca: {}\n",
        kapi.kubeconfig.display(),
        free_port(),
        pki.ca_file().display(),
    );
    let e = Ec2Cluster::start_with(
        &format!(
            "    subnets: $SUBNETS\n    instance_profiles_by_role: {{'{ROLE}': {PROFILE}}}\n    \
             storage_classes: [{{name: orca-ebs}}]\n"
        ),
        &kube_yaml,
    );
    (kapi, e)
}

fn kubectl_create(kapi: &KubeApi, dir: &std::path::Path, name: &str, yaml: &str) {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    let out = kapi
        .kubectl(&["create", "-f", path.to_str().unwrap()])
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl create {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pod_yaml(image: &str, name: &str, claim: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  nodeName: orca-vk\n  \
         terminationGracePeriodSeconds: 1\n  serviceAccountName: trainer\n  tolerations:\n  - key: virtual-kubelet.io/provider\n    operator: Exists\n  \
         containers:\n  - name: main\n    image: {image}\n    command: [sh, -c, 'echo written > /data/out; cat /data/out; exec sleep 600']\n    \
         volumeMounts:\n    - {{name: data, mountPath: /data}}\n  volumes:\n  - name: data\n    persistentVolumeClaim: {{claimName: {claim}}}\n"
    )
}

#[test]
fn a_pods_service_account_role_and_ebs_claim_reach_its_instance() {
    let dir = tempfile::tempdir().unwrap();
    let (kapi, e) = start(dir.path());
    e.rt.block_on(async {
        let iam = iam_client(&e.moto.endpoint).await;
        let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
        iam.create_role()
            .role_name("train")
            .path("/orca-pods/")
            .assume_role_policy_document(trust)
            .send()
            .await
            .expect("CreateRole");
        iam.create_instance_profile()
            .instance_profile_name(PROFILE)
            .path("/orca-pods/")
            .send()
            .await
            .expect("CreateInstanceProfile");
        iam.add_role_to_instance_profile()
            .instance_profile_name(PROFILE)
            .role_name("train")
            .send()
            .await
            .expect("AddRoleToInstanceProfile");
    });
    let zone = e.zone_of_subnet(&e.subnets[1]);
    let volume = e.make_volume(&zone);
    kubectl_create(
        &kapi,
        dir.path(),
        "objects",
        &format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: trainer\n  namespace: default\n  annotations:\n    \
             eks.amazonaws.com/role-arn: {ROLE}\n---\n\
             apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: pv-data\nspec:\n  capacity: {{storage: 1Gi}}\n  \
             accessModes: [ReadWriteOnce]\n  csi: {{driver: ebs.csi.aws.com, volumeHandle: {volume}, fsType: ext4}}\n---\n\
             apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\n  namespace: default\nspec:\n  \
             accessModes: [ReadWriteOnce]\n  storageClassName: ''\n  volumeName: pv-data\n  resources:\n    requests: {{storage: 1Gi}}\n---\n\
             apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: unbound\n  namespace: default\nspec:\n  \
             accessModes: [ReadWriteOnce]\n  resources:\n    requests: {{storage: 1Gi}}\n"
        ),
    );

    kubectl_create(
        &kapi,
        dir.path(),
        "train",
        &pod_yaml(&e.cluster.image, "train", "data"),
    );
    let running = eventually_blocking("train to be Running in Kubernetes", DEADLINE, || {
        let pod = kapi.kubectl_json(&["get", "pod", "train"]);
        if pod["status"]["phase"] == "Running" {
            Ok(pod)
        } else {
            Err(pod["status"].clone())
        }
    });
    let orca_pod = e.cluster.pod("train");
    let uid = orca_pod["uid"].as_str().expect("uid");
    let call = e.run_calls(uid).pop().expect("RunInstances");
    assert_eq!(call["IamInstanceProfile.Name"], PROFILE, "{call:?}");
    assert_eq!(
        call["SubnetId"], e.subnets[1],
        "the volume's zone: {call:?}"
    );
    let attach = e.proxy.calls_of("AttachVolume");
    assert!(
        attach.iter().any(|c| c.params["VolumeId"] == volume),
        "{attach:?}"
    );
    let log = eventually_blocking("train's output", DEADLINE, || {
        let log = e.cluster.orca_ok(&["logs", "train"]);
        if log.contains("written") {
            Ok(log)
        } else {
            Err(log)
        }
    });
    assert_eq!(log, "written\n", "{running}");
    let claim = serde_json::from_str::<serde_json::Value>(
        &e.cluster.orca_ok(&["get", "pvc", "data", "-o", "json"]),
    )
    .unwrap();
    assert_eq!(claim["volumeId"], volume.as_str(), "{claim}");

    // A claim that is not bound: the pod waits and says why.
    kubectl_create(
        &kapi,
        dir.path(),
        "waiting",
        &pod_yaml(&e.cluster.image, "waiting", "unbound"),
    );
    eventually_blocking("waiting's reason", DEADLINE, || {
        let p = e.cluster.pod("waiting");
        let message = p["message"].as_str().unwrap_or_default().to_owned();
        if message.contains("default/unbound is not bound to a volume yet") {
            Ok(())
        } else {
            Err(p)
        }
    });
}

#[test]
fn a_claim_of_an_orca_storage_class_gets_a_volume_and_a_persistent_volume_until_it_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (kapi, e) = start(dir.path());
    kubectl_create(
        &kapi,
        dir.path(),
        "claim",
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: scratch\n  namespace: default\nspec:\n  \
         accessModes: [ReadWriteOnce]\n  storageClassName: orca-ebs\n  resources:\n    requests: {storage: 2Gi}\n",
    );
    let claim_uid = kapi.kubectl_json(&["get", "pvc", "scratch"])["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_owned();
    kubectl_create(
        &kapi,
        dir.path(),
        "fresh",
        &pod_yaml(&e.cluster.image, "fresh", "scratch"),
    );
    eventually_blocking("fresh to be Running in Kubernetes", DEADLINE, || {
        let pod = kapi.kubectl_json(&["get", "pod", "fresh"]);
        if pod["status"]["phase"] == "Running" {
            Ok(())
        } else {
            Err(pod["status"].clone())
        }
    });
    let create = e.proxy.calls_of("CreateVolume");
    assert_eq!(create.len(), 1, "{create:?}");
    assert_eq!(create[0].params["Size"], "2");
    let mirror: serde_json::Value =
        serde_json::from_str(&e.cluster.orca_ok(&["get", "pvc", "scratch", "-o", "json"])).unwrap();
    let volume = mirror["volumeId"].as_str().expect("a volume").to_owned();
    let pv = kapi.kubectl_json(&["get", "pv", &format!("orca-{claim_uid}")]);
    assert_eq!(pv["spec"]["csi"]["driver"], "ebs.csi.aws.com", "{pv}");
    assert_eq!(pv["spec"]["csi"]["volumeHandle"], volume.as_str(), "{pv}");
    assert_eq!(pv["spec"]["claimRef"]["name"], "scratch", "{pv}");
    assert_eq!(pv["spec"]["claimRef"]["uid"], claim_uid.as_str(), "{pv}");
    assert_eq!(
        pv["spec"]["persistentVolumeReclaimPolicy"], "Delete",
        "{pv}"
    );
    eventually_blocking("fresh's output", DEADLINE, || {
        let log = e.cluster.orca_ok(&["logs", "fresh"]);
        if log.contains("written") {
            Ok(())
        } else {
            Err(log)
        }
    });

    for args in [
        ["delete", "pod", "fresh", "--wait=false"],
        ["delete", "pvc", "scratch", "--wait=false"],
    ] {
        let out = kapi.kubectl(&args).expect("kubectl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eventually_blocking(
        "the volume and its PersistentVolume to be deleted",
        DEADLINE,
        || {
            let deleted = e
                .proxy
                .calls_of("DeleteVolume")
                .iter()
                .any(|c| c.params["VolumeId"] == volume);
            let pv_gone = !kapi
                .kubectl(&["get", "pv", &format!("orca-{claim_uid}")])
                .expect("kubectl runs")
                .status
                .success();
            if deleted && pv_gone {
                Ok(())
            } else {
                Err((deleted, pv_gone))
            }
        },
    );
    assert!(
        !e.cluster.orca_ok(&["get", "pvc"]).contains("scratch"),
        "the mirror is forgotten"
    );
}
