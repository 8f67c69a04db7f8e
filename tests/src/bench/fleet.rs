//! `pod-start --pods N --hosts M`: N pods created at once through AdminService
//! on a cluster of M simulated hosts (each its own network namespace, agent
//! and containerd namespace, the image already present on each), timing each
//! pod from its RunPod call until the control plane reports it Running (as
//! observed by its agent). The tail (p99) shows how placement, dispatch and
//! status reporting hold up under a burst. The anchor, measured right after
//! in the same run: as many `ctr run -d` at once on the same containerd.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1::PodPhase;

use crate::bench::{median, metric, ms, percentile};
use crate::cluster::{DEADLINE, TestCluster};

fn manifest(name: &str, image: &str, selector: Option<&str>) -> String {
    let selector = selector
        .map(|h| format!("  nodeSelector: {{host: {h}}}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{selector}  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: {image}\n    command: [sleep, '600']\n"
    )
}

/// Runs the scenario.
pub fn fleet(pods: usize, hosts: usize) {
    let yaml = "heartbeat_interval_ms: 1000\nsuspect_after_ms: 5000\nnot_ready_after_ms: 10000\nlost_after_ms: 30000\npending_timeout_ms: 300000\nagent_call_timeout_ms: 30000\n";
    let c = TestCluster::start_configured(&["--retry-ms=100"], yaml);
    for h in 0..hosts {
        let name = format!("h{h}");
        c.orca_ok(&["node", "add", &name, "--label", &format!("host={name}")]);
    }
    // The image is pulled once per host (each has its own containerd namespace).
    for h in 0..hosts {
        let name = format!("warm{h}");
        let file = c.dir().join(format!("{name}.yaml"));
        std::fs::write(&file, manifest(&name, &c.image, Some(&format!("h{h}")))).unwrap();
        c.orca_ok(&["apply", "-f", file.to_str().unwrap()]);
    }
    for h in 0..hosts {
        c.wait_phase(&format!("warm{h}"), "Running");
        c.orca_ok(&["delete", "pod", &format!("warm{h}"), "--grace-period", "0"]);
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (samples, orca_all) = rt.block_on(async {
        let admin = orca_cli::connect(Some(c.credentials()), None)
            .await
            .expect("admin client");
        let started = Instant::now();
        let mut sent = HashMap::new();
        let mut calls = Vec::new();
        for i in 0..pods {
            let name = format!("p{i:03}");
            let pod = orca_cli::pod::from_manifest("default", &manifest(&name, &c.image, None))
                .expect("manifest");
            let mut admin = admin.clone();
            sent.insert(name, Instant::now());
            calls.push(tokio::spawn(async move {
                admin
                    .run_pod(pb::RunPodRequest { pod: Some(pod) })
                    .await
                    .expect("RunPod")
            }));
        }
        let mut running: HashMap<String, Duration> = HashMap::new();
        let deadline = Instant::now() + DEADLINE * 3;
        let mut poller = admin.clone();
        while running.len() < pods {
            assert!(
                Instant::now() < deadline,
                "only {} of {pods} Running",
                running.len()
            );
            let list = poller
                .list_pods(pb::ListPodsRequest::default())
                .await
                .expect("ListPods")
                .into_inner()
                .pods;
            for p in list {
                let (_, name) = orca_model::pod::names(&p);
                let phase = orca_model::pod::phase(&p);
                assert!(phase != PodPhase::Failed, "{name} failed: {:?}", p.status);
                if phase == PodPhase::Running
                    && let Some(t0) = sent.get(&name)
                {
                    running.entry(name).or_insert_with(|| t0.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for call in calls {
            call.await.expect("RunPod task");
        }
        eprintln!(
            "{pods} pods on {hosts} hosts all Running after {:.2}s",
            started.elapsed().as_secs_f64()
        );
        let all = started.elapsed().as_secs_f64();
        metric("fleet_all_running_s", all, "s");
        (running.into_values().collect::<Vec<_>>(), all)
    });
    metric("pod_start_ms_p50", ms(median(&samples)), "ms");
    metric("pod_start_ms_p99", ms(percentile(&samples, 99)), "ms");
    rt.shutdown_background();
    for i in 0..pods {
        let _ = c.orca(&["delete", "pod", &format!("p{i:03}"), "--grace-period", "0"]);
    }

    // The anchor, on the same machine right after: the same number of `ctr run -d`
    // at once on the same containerd (one namespace, image present), until every
    // task is RUNNING.
    let ns = "bench-fleet-ctr";
    c.containerd
        .ctr(ns, &["images", "pull", "--plain-http", &c.image])
        .expect("ctr pulls the image");
    let started = Instant::now();
    let runs: Vec<_> = (0..pods)
        .map(|i| {
            let mut cmd = c.containerd.ctr_command(ns);
            cmd.args(["run", "-d", &c.image, &format!("k{i:03}"), "sleep", "600"]);
            cmd.spawn().expect("ctr run -d")
        })
        .collect();
    for mut run in runs {
        let _ = run.wait();
    }
    let deadline = Instant::now() + DEADLINE;
    loop {
        let out = c.containerd.ctr(ns, &["tasks", "ls"]).unwrap_or_default();
        let running = out.lines().filter(|l| l.contains("RUNNING")).count();
        if running >= pods {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {running} ctr tasks running"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let ctr_s = started.elapsed().as_secs_f64();
    eprintln!("{pods} `ctr run -d` at once all RUNNING after {ctr_s:.2}s");
    metric("ctr_fleet_all_running_s", ctr_s, "s");
    metric("fleet_ratio_vs_ctr", orca_all / ctr_s, "x");
    for i in 0..pods {
        let id = format!("k{i:03}");
        let _ = c
            .containerd
            .ctr(ns, &["tasks", "kill", "-s", "SIGKILL", &id]);
        let _ = c.containerd.ctr(ns, &["tasks", "delete", "-f", &id]);
        let _ = c.containerd.ctr(ns, &["containers", "delete", &id]);
    }
}
