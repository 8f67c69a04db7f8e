//! persistentVolumeClaim volumes on a real agent and containerd: an EBS volume (a
//! real loop device, named under a by-id directory as a Nitro instance names it)
//! is waited for, formatted when empty, mounted, written by one pod, unmounted when
//! that pod is removed, and read back by the next; a local persistent volume
//! likewise; a volume that never appears fails the pod with FailedAttachVolume.

use std::process::Command;

use orca_proto::types::v1::{self as types, PodPhase};
use orca_tests::agent::TestAgent;
use orca_tests::env::{EbsDisk, require};
use serde_json::json;

const VOLUME_ID: &str = "vol-0123456789abcdef0";

fn claim_data(source: types::claim_volume::Source) -> types::VolumeData {
    types::VolumeData {
        claims: [(
            "data".to_owned(),
            types::ClaimVolume {
                claim: "default/results".into(),
                source: Some(source),
            },
        )]
        .into(),
        ..Default::default()
    }
}

fn ebs() -> types::claim_volume::Source {
    types::claim_volume::Source::Ebs(types::EbsVolume {
        volume_id: VOLUME_ID.into(),
        fs_type: "ext4".into(),
    })
}

fn pod(image: &str, script: &str) -> serde_json::Value {
    json!({
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "app", "image": image, "command": ["sh", "-c", script],
            "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
        }],
        "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "results" } }],
    })
}

/// Whether `device` is mounted anywhere on this machine.
fn mounted(device: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|tail| tail.split(' ').nth(1) == Some(device))
        })
}

fn blkid_type(device: &str) -> String {
    let out = Command::new(require("blkid"))
        .args(["-p", "-s", "TYPE", "-o", "value", device])
        .output()
        .expect("blkid runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ebs_claim_is_waited_for_formatted_and_keeps_its_data_for_the_next_pod() {
    require("mkfs.ext4");
    let dirs = tempfile::tempdir().expect("tempdir");
    let by_id = dirs.path().join("by-id");
    let by_id_arg = by_id.to_str().expect("utf-8").to_owned();
    let a = TestAgent::start_with(&[
        "--ebs-device-dir",
        &by_id_arg,
        "--volume-attach-wait-ms",
        "120000",
    ]);
    let mut disk = EbsDisk::open(&dirs.path().join("disks"), VOLUME_ID, 64 << 20).expect("disk");

    // The pod arrives before its volume, as on an instance still booting.
    let script = "echo from-the-first-pod > /data/result && grep ' /data ' /proc/mounts";
    let uid = a
        .run_with(
            "writer",
            pod(&a.image, script),
            Vec::new(),
            Some(claim_data(ebs())),
        )
        .await;
    let device = disk.attach(&by_id).expect("attached");
    a.wait_phase(&uid, PodPhase::Succeeded).await;
    let mounts = a.logs(&uid, "app", false).await;
    assert!(
        mounts.contains(" ext4 ") && mounts.contains(" rw"),
        "{mounts}"
    );
    assert_eq!(
        blkid_type(&device),
        "ext4",
        "the empty volume was formatted"
    );
    assert!(mounted(&device), "mounted while the pod exists");

    a.stop(&uid, 1).await;
    assert!(!mounted(&device), "unmounted once the pod is removed");

    let uid = a
        .run_with(
            "reader",
            pod(&a.image, "cat /data/result"),
            Vec::new(),
            Some(claim_data(ebs())),
        )
        .await;
    a.wait_phase(&uid, PodPhase::Succeeded).await;
    assert_eq!(
        a.logs(&uid, "app", false).await,
        "from-the-first-pod\n",
        "the next pod reads the data back: the volume was not formatted again"
    );
    a.stop(&uid, 1).await;
    assert!(!mounted(&device));
    disk.detach().expect("detached");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_claim_outlives_its_pod() {
    let dirs = tempfile::tempdir().expect("tempdir");
    let path = dirs.path().join("claims").join("default-results");
    let local = || types::claim_volume::Source::LocalPath(path.to_str().expect("utf-8").to_owned());
    let a = TestAgent::start();
    let uid = a
        .run_with(
            "writer",
            pod(&a.image, "echo kept > /data/result"),
            Vec::new(),
            Some(claim_data(local())),
        )
        .await;
    a.wait_phase(&uid, PodPhase::Succeeded).await;
    a.stop(&uid, 1).await;
    assert_eq!(
        std::fs::read_to_string(path.join("result")).expect("left on the host"),
        "kept\n"
    );
    let uid = a
        .run_with(
            "reader",
            pod(&a.image, "cat /data/result"),
            Vec::new(),
            Some(claim_data(local())),
        )
        .await;
    a.wait_phase(&uid, PodPhase::Succeeded).await;
    assert_eq!(a.logs(&uid, "app", false).await, "kept\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_volume_that_is_never_attached_fails_the_pod_naming_it() {
    let dirs = tempfile::tempdir().expect("tempdir");
    let by_id = dirs.path().to_str().expect("utf-8").to_owned();
    let a = TestAgent::start_with(&["--ebs-device-dir", &by_id, "--volume-attach-wait-ms", "300"]);
    let uid = a
        .run_with(
            "orphan",
            pod(&a.image, "true"),
            Vec::new(),
            Some(claim_data(ebs())),
        )
        .await;
    let failed = a.wait_phase(&uid, PodPhase::Failed).await;
    assert_eq!(failed.reason, "FailedAttachVolume", "{failed:?}");
    assert!(failed.message.contains(VOLUME_ID), "{failed:?}");

    // A claim the control plane sent no storage for is refused at once.
    let uid = a
        .run_with("unresolved", pod(&a.image, "true"), Vec::new(), None)
        .await;
    let failed = a.wait_phase(&uid, PodPhase::Failed).await;
    assert!(failed.message.contains("results"), "{failed:?}");
}
