//! The control plane's Prometheus endpoint, scraped over real HTTP from the real
//! binary: nodes by state and instance launches as a node is added, the GPU
//! series (dcgm-exporter's names and labels) from a node's fake GPU telemetry,
//! `/healthz`, and 404s. The text is read by a strict parser of the format.

use std::collections::BTreeSet;
use std::time::Duration;

use orca_tests::cluster::{DEADLINE, TestCluster};
use orca_tests::eventually::eventually;
use prom_text_format_parser::Scrape;

/// One scrape of `/metrics`, parsed; an error names what went wrong.
async fn scrape(client: &reqwest::Client, url: &str) -> Result<Scrape, String> {
    let response = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE].clone();
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let text = response.text().await.map_err(|e| e.to_string())?;
    Ok(Scrape::parse(&text).unwrap_or_else(|e| panic!("not a valid exposition: {e:?}\n{text}")))
}

/// The values of family `name`'s samples that have every label of `labels`,
/// with all their labels.
fn samples(
    scrape: &Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Vec<(Vec<(String, String)>, f64)> {
    scrape
        .metrics
        .iter()
        .filter(|m| m.name == name)
        .flat_map(|m| &m.samples)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|l| l.key == *k && l.value == *v))
        })
        .map(|s| {
            let labels = s
                .labels
                .iter()
                .map(|l| (l.key.clone(), l.value.clone()))
                .collect();
            (labels, s.value.value.as_f64())
        })
        .collect()
}

/// The one sample of family `name` with `labels`, if there is one.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match samples(scrape, name, labels).as_slice() {
        [(_, v)] => Some(*v),
        [] => None,
        more => panic!("{name}{labels:?} matches {} samples: {more:?}", more.len()),
    }
}

#[tokio::test]
async fn metrics_count_nodes_and_launches_and_show_each_gpu_as_dcgm_exporter_does() {
    let c = TestCluster::start();
    let url = c.metrics_url();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let health = client.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    assert_eq!(health.text().await.unwrap().trim(), "ok");
    for path in ["/", "/nope", "/metrics/extra"] {
        let r = client.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND, "{path}");
    }

    let before = scrape(&client, &url).await.unwrap();
    assert_eq!(
        value(&before, "orca_nodes", &[("state", "Ready")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &before,
            "orca_instance_launches_total",
            &[("provider", "local")]
        ),
        Some(0.0),
        "the provider's counter exists before its first launch"
    );

    c.orca_ok(&["node", "add", "g", "--gpus", "2"]);
    c.wait_node_ready("g");
    let after = eventually("the node counted Ready", DEADLINE, || async {
        let s = scrape(&client, &url).await?;
        match value(&s, "orca_nodes", &[("state", "Ready")]) {
            Some(1.0) => Ok(s),
            other => Err(format!("orca_nodes{{state=\"Ready\"}} = {other:?}")),
        }
    })
    .await;
    assert_eq!(
        value(
            &after,
            "orca_instance_launches_total",
            &[("provider", "local")]
        ),
        Some(1.0)
    );
    assert!(
        samples(&after, "orca_instance_launch_failures_total", &[]).is_empty(),
        "no launch failed"
    );
    let age = value(&after, "orca_node_heartbeat_age_seconds", &[("node", "g")])
        .expect("the node's heartbeat age");
    assert!(age < DEADLINE.as_secs_f64(), "{age}");

    // The node's agent reports fake GPU telemetry for its 2 GPUs in its
    // heartbeats: one series per GPU, under dcgm-exporter's name and labels.
    let gpus = eventually(
        "two DCGM_FI_DEV_GPU_UTIL series of node g with distinct UUIDs",
        DEADLINE,
        || async {
            let s = scrape(&client, &url).await?;
            let util = samples(&s, "DCGM_FI_DEV_GPU_UTIL", &[("Hostname", "g")]);
            let uuids: BTreeSet<String> = util
                .iter()
                .filter_map(|(labels, _)| {
                    labels
                        .iter()
                        .find(|(k, _)| k == "UUID")
                        .map(|(_, v)| v.clone())
                })
                .collect();
            if util.len() == 2 && uuids.len() == 2 {
                Ok((s, util))
            } else {
                Err(format!("{util:?}"))
            }
        },
    )
    .await;
    let (s, util) = gpus;
    for (labels, v) in &util {
        let keys: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys[..6],
            [
                "gpu",
                "UUID",
                "pci_bus_id",
                "device",
                "modelName",
                "Hostname"
            ],
            "dcgm-exporter's label order: {labels:?}"
        );
        let index = &labels[0].1;
        assert_eq!(labels[3].1, format!("nvidia{index}"));
        assert!((0.0..=100.0).contains(v), "{v}");
    }
    assert_eq!(
        value(&s, "orca_gpus", &[("node", "g"), ("health", "healthy")]),
        Some(2.0)
    );
    assert_eq!(
        samples(&s, "DCGM_FI_DEV_FB_USED", &[("Hostname", "g")]).len(),
        2
    );

    // A pod holding one of the GPUs: that GPU's series name it (namespace and
    // pod, as dcgm-exporter does in Kubernetes); the other's do not.
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: train\nspec:\n  restartPolicy: Never\n  \
         containers:\n  - name: c\n    image: {}\n    command: [sleep, '600']\n    \
         resources:\n      limits: {{nvidia.com/gpu: 1}}\n",
        c.image
    );
    let file = c.dir().join("train.yaml");
    std::fs::write(&file, manifest).unwrap();
    c.orca_ok(&["apply", "-f", file.to_str().unwrap()]);
    c.wait_phase("train", "Running");
    let s = eventually("the GPU's series to name pod train", DEADLINE, || async {
        let s = scrape(&client, &url).await?;
        let held = samples(
            &s,
            "DCGM_FI_DEV_GPU_UTIL",
            &[
                ("Hostname", "g"),
                ("namespace", "default"),
                ("pod", "train"),
            ],
        );
        if held.len() == 1 {
            Ok(s)
        } else {
            Err(format!("{:?}", samples(&s, "DCGM_FI_DEV_GPU_UTIL", &[])))
        }
    })
    .await;
    let util = samples(&s, "DCGM_FI_DEV_GPU_UTIL", &[("Hostname", "g")]);
    let keys = |labels: &[(String, String)]| -> Vec<String> {
        labels.iter().map(|(k, _)| k.clone()).collect()
    };
    let (held, free): (Vec<_>, Vec<_>) = util
        .iter()
        .partition(|(labels, _)| labels.iter().any(|(k, _)| k == "pod"));
    assert_eq!((held.len(), free.len()), (1, 1), "{util:?}");
    assert_eq!(
        keys(&held[0].0)[keys(&held[0].0).len() - 3..],
        ["container", "namespace", "pod"],
        "the pod's labels come last: {:?}",
        held[0].0
    );
    assert_eq!(value(&s, "orca_pods", &[("phase", "Running")]), Some(1.0));
}
