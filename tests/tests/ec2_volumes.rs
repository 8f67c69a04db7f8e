//! EBS-backed claims on the `ec2` provider, against moto through the real SDK,
//! with the instance player showing each attached volume to its host as a loop
//! device named as a Nitro instance names it, so the agent's real
//! find-format-mount path runs: a claim of a storage class gets a volume
//! created (tagged) in the zone of its pod's instance; a pod writes to it, is
//! deleted (the volume is detached, and `available`, before its instance is
//! terminated), and a new pod on a new instance reads the data back; deleting
//! the claim deletes the volume. An existing volume named by annotation pins its
//! pod's instance to the volume's zone; a pod whose subnet is in another zone,
//! or whose volume is attached to a foreign instance, fails saying so.

use orca_tests::cluster::DEADLINE;
use orca_tests::ec2_cluster::Ec2Cluster;
use orca_tests::eventually::eventually_blocking;

const CLASSES: &str = "    subnets: $SUBNETS\n    storage_classes: [{name: orca-ebs, volume_type: gp3}]\n    volume_detach_timeout_ms: 20000\n";

fn claim(name: &str, extra_meta: &str, class: &str) -> String {
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {name}\n{extra_meta}spec:\n  accessModes: [ReadWriteOnce]\n{class}  resources:\n    requests: {{storage: 1Gi}}\n"
    )
}

fn pod(e: &Ec2Cluster, name: &str, claim: &str, script: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n{annotations}spec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}\n    command: [sh, -c, '{script}']\n    volumeMounts:\n    - {{name: data, mountPath: /data}}\n  volumes:\n  - name: data\n    persistentVolumeClaim: {{claimName: {claim}}}\n",
        e.cluster.image
    )
}

fn claim_json(e: &Ec2Cluster, name: &str) -> serde_json::Value {
    serde_json::from_str(&e.cluster.orca_ok(&["get", "pvc", name, "-o", "json"])).expect("JSON")
}

/// The subnet a pod's instance was launched into, from its RunInstances call.
fn subnet_of(e: &Ec2Cluster, pod: &serde_json::Value) -> String {
    let uid = pod["uid"].as_str().expect("uid");
    e.run_calls(uid)
        .last()
        .and_then(|c| c.get("SubnetId").cloned())
        .expect("a RunInstances call with a subnet")
}

/// The index of the first call of `action` whose parameter `key` is `value`.
fn call_index(e: &Ec2Cluster, action: &str, key: &str, value: &str) -> Option<usize> {
    e.proxy
        .calls()
        .iter()
        .position(|c| c.action == action && c.params.get(key).map(String::as_str) == Some(value))
}

#[test]
fn a_claims_volume_outlives_its_pod_and_instance() {
    let e = Ec2Cluster::start(CLASSES);
    e.apply(&claim("results", "", "  storageClassName: orca-ebs\n"));
    let pending = claim_json(&e, "results");
    assert_eq!(pending["phase"], "Pending", "{pending}");

    e.apply(&pod(
        &e,
        "writer",
        "results",
        "echo from-the-first-instance > /data/result",
        "",
    ));
    let writer = e.wait_phase("writer", "Succeeded");
    let bound = claim_json(&e, "results");
    assert_eq!(bound["phase"], "Bound", "{bound}");
    let volume = bound["volumeId"].as_str().expect("a volume").to_owned();
    let zone = bound["zone"].as_str().expect("a zone").to_owned();
    assert_eq!(
        e.zone_of_subnet(&subnet_of(&e, &writer)),
        zone,
        "instance in the volume's zone"
    );
    let create = &e.proxy.calls_of("CreateVolume")[0];
    assert_eq!(create.params["AvailabilityZone"], zone);
    assert_eq!(create.params["Size"], "1");
    assert_eq!(create.params["VolumeType"], "gp3");
    assert!(
        create.params.values().any(|v| v == "default/results"),
        "tagged with its claim: {create:?}"
    );
    let first = e
        .instances()
        .into_iter()
        .find(|i| i.tags["orca.research/pod-uid"] == writer["uid"].as_str().unwrap())
        .expect("the writer's instance");

    e.cluster.orca_ok(&["delete", "pod", "writer"]);
    // The proxy logs a call once its answer is sent: wait for the log, not
    // for moto's state.
    let terminated =
        eventually_blocking("the writer's instance to be terminated", DEADLINE, || {
            call_index(&e, "TerminateInstances", "InstanceId.1", &first.instance_id)
                .ok_or_else(|| e.instances())
        });
    let detached = call_index(&e, "DetachVolume", "VolumeId", &volume).expect("DetachVolume");
    assert!(
        detached < terminated,
        "detached before the instance was terminated"
    );
    let waited = e.proxy.calls()[detached..terminated]
        .iter()
        .filter(|c| c.action == "DescribeVolumes")
        .count();
    assert!(waited >= 1, "waited for the volume to be available");

    e.apply(&pod(
        &e,
        "reader",
        "results",
        "cat /data/result; exec sleep 600",
        "",
    ));
    let reader = e.wait_phase("reader", "Running");
    let log = eventually_blocking("the reader's output", DEADLINE, || {
        let log = e.cluster.orca_ok(&["logs", "reader"]);
        if log.is_empty() { Err(log) } else { Ok(log) }
    });
    assert_eq!(log, "from-the-first-instance\n", "{reader}");
    let second = e
        .instances()
        .into_iter()
        .find(|i| i.tags["orca.research/pod-uid"] == reader["uid"].as_str().unwrap())
        .expect("the reader's instance");
    assert_ne!(second.instance_id, first.instance_id, "a new instance");

    let refused = e.cluster.orca(&["delete", "pvc", "results"]);
    assert!(!refused.status.success(), "in use by the reader");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("used by pod reader"), "{stderr}");
    e.cluster.orca_ok(&["delete", "pod", "reader"]);
    eventually_blocking("the claim to be deleted with its volume", DEADLINE, || {
        let out = e.cluster.orca(&["delete", "pvc", "results"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    assert!(call_index(&e, "DeleteVolume", "VolumeId", &volume).is_some());
    let moto = e.moto_client();
    let left = e.rt.block_on(async {
        moto.describe_volumes()
            .send()
            .await
            .expect("DescribeVolumes")
    });
    assert!(
        left.volumes()
            .iter()
            .all(|v| v.volume_id() != Some(volume.as_str())),
        "the volume is gone"
    );
}

#[test]
fn an_existing_volume_pins_its_pods_zone_and_conflicts_fail_clearly() {
    let e = Ec2Cluster::start(CLASSES);
    let moto = e.moto_client();
    let zone_b = e.zone_of_subnet(&e.subnets[1]);
    let volume = e.make_volume(&zone_b);
    let meta = format!("  annotations:\n    orca.research/ebs-volume-id: {volume}\n");
    e.apply(&claim("dataset", &meta, ""));
    assert_eq!(claim_json(&e, "dataset")["phase"], "Bound");

    // Its subnet is in the other zone.
    let wrong = format!(
        "  annotations:\n    orca.research/subnet: {}\n",
        e.subnets[0]
    );
    e.apply(&pod(&e, "elsewhere", "dataset", "true", &wrong));
    let failed = e.wait_phase("elsewhere", "Failed");
    assert_eq!(failed["reason"], "VolumeZoneMismatch", "{failed}");
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&volume) && message.contains(&zone_b),
        "{failed}"
    );

    // Without one, the instance goes to the volume's zone.
    e.apply(&pod(
        &e,
        "placed",
        "dataset",
        "ls /data; exec sleep 600",
        "",
    ));
    let placed = e.wait_phase("placed", "Running");
    assert_eq!(subnet_of(&e, &placed), e.subnets[1], "{placed}");
    eventually_blocking("an ext4 root in the volume", DEADLINE, || {
        let log = e.cluster.orca_ok(&["logs", "placed"]);
        if log.contains("lost+found") {
            Ok(())
        } else {
            Err(log)
        }
    });
    e.cluster.orca_ok(&["delete", "pod", "placed"]);

    // Attached to an instance that is not the cluster's: the pod fails.
    let outsider = e.rt.block_on(async {
        let run = moto
            .run_instances()
            .image_id(orca_tests::ec2_cluster::AMI)
            .min_count(1)
            .max_count(1)
            .subnet_id(&e.subnets[1])
            .send()
            .await
            .expect("RunInstances");
        run.instances()[0].instance_id().expect("id").to_owned()
    });
    eventually_blocking("the volume to be free and then taken", DEADLINE, || {
        let out = e.rt.block_on(async {
            moto.attach_volume()
                .volume_id(&volume)
                .instance_id(&outsider)
                .device("/dev/sdz")
                .send()
                .await
        });
        out.map(drop).map_err(|err| format!("{err:?}"))
    });
    e.apply(&pod(&e, "blocked", "dataset", "true", ""));
    let failed = e.wait_phase("blocked", "Failed");
    assert_eq!(failed["reason"], "VolumeInUse", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&outsider),
        "{failed}"
    );
    // The static volume is not ORCA's: deleting the claim leaves it.
    e.cluster.orca_ok(&["delete", "pvc", "dataset"]);
    assert!(call_index(&e, "DeleteVolume", "VolumeId", &volume).is_none());
}
