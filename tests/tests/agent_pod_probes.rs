//! Probes, preStop hooks and volumes through the agent's RunPod, on a real
//! containerd: restarts driven by liveness, Ready driven by readiness, liveness
//! held back by the startup probe, and volume content seen inside containers.

use orca_proto::agent::v1 as pb;
use orca_proto::types::v1::{KeyValues, PodPhase, PodStatus, VolumeData, container_state::State};
use orca_tests::agent::TestAgent;
use serde_json::json;

fn ready(status: &PodStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.r#type == "Ready" && c.status == "True")
}

fn exec_probe(cmd: &str, failure_threshold: i32) -> serde_json::Value {
    json!({ "exec": { "command": ["sh", "-c", cmd] }, "periodSeconds": 1, "failureThreshold": failure_threshold })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_liveness_probe_restarts_the_container() {
    let a = TestAgent::start();
    let spec = json!({
        "restartPolicy": "Always", "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "app", "image": a.image,
            "command": ["sh", "-c", "touch /tmp/alive; sleep 2; rm /tmp/alive; exec sleep 300"],
            "livenessProbe": exec_probe("test -f /tmp/alive", 1),
        }],
    });
    let uid = a.run("live", spec).await;
    let restarted = a
        .wait_for(&uid, "a restart after the liveness probe failed", |s| {
            s.container_statuses
                .first()
                .is_some_and(|c| c.restart_count >= 1)
        })
        .await;
    let c = &restarted.container_statuses[0];
    let Some(State::Terminated(last)) = c.last_state.clone().and_then(|s| s.state) else {
        panic!("{c:?}")
    };
    assert!(last.message.contains("liveness probe failed"), "{last:?}");
    assert_ne!(last.exit_code, 0);
    a.stop(&uid, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_drives_the_ready_condition() {
    let a = TestAgent::start();
    let spec = json!({
        "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "app", "image": a.image,
            "command": ["sh", "-c", "sleep 2; touch /tmp/ready; exec sleep 300"],
            "readinessProbe": exec_probe("test -f /tmp/ready", 1),
        }],
    });
    let uid = a.run("ready", spec).await;
    let running = a.wait_phase(&uid, PodPhase::Running).await;
    assert!(
        !ready(&running),
        "not Ready before the probe passes: {running:?}"
    );
    assert!(!running.container_statuses[0].ready);
    let now_ready = a.wait_for(&uid, "Ready", ready).await;
    assert!(now_ready.container_statuses[0].ready);
    assert_eq!(
        now_ready.container_statuses[0].restart_count, 0,
        "readiness never restarts"
    );
    a.stop(&uid, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_startup_probe_holds_back_liveness() {
    let a = TestAgent::start();
    let spec = json!({
        "restartPolicy": "Always", "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "slow", "image": a.image,
            "command": ["sh", "-c", "sleep 3; touch /tmp/up; exec sleep 300"],
            "startupProbe": exec_probe("test -f /tmp/up", 30),
            "livenessProbe": exec_probe("test -f /tmp/up", 1),
        }],
    });
    let uid = a.run("startup", spec).await;
    let up = a.wait_for(&uid, "Ready after startup", ready).await;
    assert_eq!(
        up.container_statuses[0].restart_count, 0,
        "liveness waited for the startup probe"
    );
    a.stop(&uid, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pre_stop_hooks_run_before_sigterm() {
    let a = TestAgent::start();
    let spec = json!({
        "restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
        "containers": [{
            "name": "app", "image": a.image,
            "command": ["sh", "-c", "trap 'echo got-sigterm; exit 0' TERM; echo up; while :; do sleep 0.1; done"],
            "lifecycle": { "preStop": { "exec": { "command": ["sh", "-c", "echo pre-stop > /proc/1/fd/1"] } } },
        }],
    });
    let uid = a.run("prestop", spec).await;
    a.wait_phase(&uid, PodPhase::Running).await;
    let req = pb::StopPodRequest {
        uid: uid.clone(),
        grace_period_seconds: -1,
        remove: false,
    };
    let stopped = a
        .client()
        .await
        .stop_pod(req)
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let c = &stopped.container_statuses[0];
    let Some(State::Terminated(t)) = c.state.clone().and_then(|s| s.state) else {
        panic!("{c:?}")
    };
    assert_eq!(t.exit_code, 0, "the container handled SIGTERM");
    let logs = a.logs(&uid, "app", false).await;
    assert_eq!(
        logs, "up\npre-stop\ngot-sigterm\n",
        "preStop ran first, then SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn volumes_reach_the_containers() {
    let a = TestAgent::start();
    let spec = json!({
        "restartPolicy": "Never",
        "volumes": [
            { "name": "scratch", "emptyDir": {} },
            { "name": "settings", "configMap": { "name": "app-settings", "items": [{ "key": "mode", "path": "mode.txt" }] } },
            { "name": "creds", "secret": { "secretName": "app-creds", "defaultMode": 256 } },
            { "name": "me", "downwardAPI": { "items": [{ "path": "name", "fieldRef": { "fieldPath": "metadata.name" } }] } },
        ],
        "initContainers": [{
            "name": "writer", "image": a.image, "command": ["sh", "-c", "echo from-init > /scratch/note"],
            "volumeMounts": [{ "name": "scratch", "mountPath": "/scratch" }],
        }],
        "containers": [{
            "name": "reader", "image": a.image,
            "command": ["sh", "-c", "cat /scratch/note /etc/app/mode.txt /etc/creds/token /etc/me/name; echo; (echo x > /etc/app/new) 2>/dev/null || echo read-only"],
            "volumeMounts": [
                { "name": "scratch", "mountPath": "/scratch" },
                { "name": "settings", "mountPath": "/etc/app" },
                { "name": "creds", "mountPath": "/etc/creds" },
                { "name": "me", "mountPath": "/etc/me" },
            ],
        }],
    });
    let data = VolumeData {
        config_maps: [(
            "app-settings".to_owned(),
            KeyValues {
                data: [("mode".to_owned(), b"fast\n".to_vec())].into(),
            },
        )]
        .into(),
        secrets: [(
            "app-creds".to_owned(),
            KeyValues {
                data: [("token".to_owned(), b"s3cret\n".to_vec())].into(),
            },
        )]
        .into(),
        service_account_token: String::new(),
        ..Default::default()
    };
    let uid = a.run_with("vols", spec, Vec::new(), Some(data)).await;
    a.wait_phase(&uid, PodPhase::Succeeded).await;
    assert_eq!(
        a.logs(&uid, "reader", false).await,
        "from-init\nfast\ns3cret\nvols\nread-only\n"
    );

    // A volume that names a ConfigMap the control plane did not send fails the pod up front.
    let bad = json!({
        "restartPolicy": "Never",
        "volumes": [{ "name": "settings", "configMap": { "name": "missing" } }],
        "containers": [{ "name": "c", "image": a.image, "volumeMounts": [{ "name": "settings", "mountPath": "/etc/app" }] }],
    });
    let uid = a.run("novol", bad).await;
    let failed = a.wait_phase(&uid, PodPhase::Failed).await;
    assert_eq!(failed.reason, "InvalidPodSpec");
    assert!(failed.message.contains("missing"), "{failed:?}");
}
