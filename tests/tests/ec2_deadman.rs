//! The dead-man's switch on an EC2 instance (moto, played by a real agent): the
//! control plane dies while a pod runs; the agent keeps the host while the pod
//! runs, and once it has finished and the control plane has been silent for
//! `--dead-man-ms`, it powers the host off. The player applies what EC2 would:
//! the instance's shutdown behaviour, which ORCA launched as `terminate`, so
//! the instance ends terminated in moto (moto's own default would be `stop`).

use std::time::{Duration, Instant};

use orca_tests::cluster::DEADLINE;
use orca_tests::ec2_cluster::Ec2Cluster;
use orca_tests::eventually::eventually_blocking;

#[test]
fn a_host_cut_off_from_its_control_plane_powers_off_once_idle() {
    let mut c = Ec2Cluster::start_with_agents("", "", &["--dead-man-ms=1500"]);
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: brief\nspec:\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {}\n    command: [sleep, '4']\n",
        c.cluster.image
    ));
    c.wait_phase("brief", "Running");
    let running_seen = Instant::now();
    let instance = c
        .live_instances()
        .into_iter()
        .next()
        .expect("the pod's instance runs");
    c.cluster.kill_control_plane();

    let (at, behaviour) = eventually_blocking("the host to power itself off", DEADLINE, || {
        c.player
            .played()
            .into_iter()
            .find(|p| p.instance_id == instance.instance_id)
            .and_then(|p| p.shut_itself_down)
            .ok_or_else(|| c.player.played())
    });
    assert_eq!(
        behaviour, "terminate",
        "ORCA launches with shutdown behaviour terminate"
    );
    assert!(
        at.duration_since(running_seen) >= Duration::from_secs(3),
        "not while the pod ran ({:?} after it was seen Running)",
        at.duration_since(running_seen)
    );
    eventually_blocking("the instance to be terminated in moto", DEADLINE, || {
        let seen = c.instances();
        if seen
            .iter()
            .any(|i| i.instance_id == instance.instance_id && i.state == "terminated")
        {
            Ok(())
        } else {
            Err(seen)
        }
    });
    let log = c.player.agent_log(&instance.instance_id);
    assert!(log.contains("dead-man's switch: powering off"), "{log}");
}
