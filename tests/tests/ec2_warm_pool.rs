//! The warm pool on the `ec2` provider (moto, played by real agents): with
//! `warm_pool: {t3.small: 1}` one instance is launched, joins, and is stopped
//! (node `Stopped`, moto `stopped`); a pod whose selection picks t3.small starts
//! that instance (StartInstances, no RunInstances for the pod), its agent comes
//! back with its identity on the same disk and the pod runs there; the pool then
//! refills with a new stopped instance.

use orca_tests::cluster::DEADLINE;
use orca_tests::ec2_cluster::{Ec2Cluster, uid_of};
use orca_tests::eventually::eventually_blocking;

fn pool_nodes(c: &Ec2Cluster) -> Vec<serde_json::Value> {
    let list: serde_json::Value =
        serde_json::from_str(&c.cluster.orca_ok(&["node", "list", "-o", "json"])).unwrap();
    list.as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n["labels"]["orca.research/warm-pool"] == "t3.small")
        .collect()
}

fn wait_stopped_pool_node(c: &Ec2Cluster, except: Option<&str>) -> (String, String) {
    eventually_blocking("a stopped warm-pool instance", DEADLINE, || {
        let nodes = pool_nodes(c);
        let stopped = nodes.iter().find(|n| {
            n["state"] == "Stopped" && Some(n["instanceId"].as_str().unwrap_or_default()) != except
        });
        let Some(node) = stopped else {
            return Err(nodes);
        };
        let instance = node["instanceId"].as_str().unwrap_or_default().to_owned();
        let in_moto = c
            .instances()
            .into_iter()
            .find(|i| i.instance_id == instance)
            .map(|i| i.state);
        if in_moto.as_deref() == Some("stopped") {
            Ok((
                node["name"].as_str().unwrap_or_default().to_owned(),
                instance,
            ))
        } else {
            Err(nodes)
        }
    })
}

#[test]
fn a_pod_starts_a_stopped_warm_instance_and_the_pool_refills() {
    let c = Ec2Cluster::start("    warm_pool: {t3.small: 1}\n");
    let (node, instance) = wait_stopped_pool_node(&c, None);
    assert_eq!(c.proxy.calls_of("StopInstances").len(), 1, "stopped once");

    c.apply(&c.pod(
        "warm",
        &[("orca.research/instance-type", "t3.small")],
        "",
        "",
    ));
    let running = c.wait_phase("warm", "Running");
    assert_eq!(running["node"], node.as_str(), "{running}");
    let record = c.rt.block_on(async {
        let mut admin = c.cluster.admin().await;
        admin
            .get_pod(orca_proto::controlplane::v1::GetPodRequest {
                namespace: "default".into(),
                name: "warm".into(),
            })
            .await
            .expect("GetPod")
            .into_inner()
    });
    assert!(
        c.run_calls(&uid_of(&record)).is_empty(),
        "no RunInstances for the pod: it took the warm instance"
    );
    let starts = c.proxy.calls_of("StartInstances");
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert_eq!(
        running["placements"][0]["instanceId"],
        instance.as_str(),
        "{running}"
    );
    let played = c
        .player
        .played()
        .into_iter()
        .find(|p| p.instance_id == instance)
        .expect("the player plays it");
    assert_eq!(
        played.restarts, 1,
        "booted again after the stop: {played:?}"
    );
    let events = c.events("warm");
    assert!(events.iter().any(|(r, _)| r == "WarmStarted"), "{events:?}");

    // The pool refills: another instance, launched and stopped.
    let (again, _) = wait_stopped_pool_node(&c, Some(&instance));
    assert_ne!(again, node);
}
