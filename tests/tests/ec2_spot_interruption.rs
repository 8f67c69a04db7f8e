//! A spot interruption on the `ec2` provider (moto, played by real agents): the
//! instance's metadata (the player's token-checking IMDSv2 server) starts to
//! show `spot/instance-action`; its agent reads it and reports it; the control
//! plane moves the pod, avoiding the interrupted offering, so the replacement is
//! launched in the other subnet (zone); the old instance is terminated once the
//! old incarnation has stopped.

use orca_tests::cluster::DEADLINE;
use orca_tests::ec2_cluster::{Ec2Cluster, uid_of};
use orca_tests::eventually::eventually_blocking;

#[test]
fn a_spot_notice_moves_the_pod_to_another_offering() {
    let c = Ec2Cluster::start_with_agents(
        "    subnets: $SUBNETS\n",
        "",
        &["--notice-poll-ms=200", "--notice-pause-ms=300"],
    );
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: spotty\n  annotations:\n    \
         orca.research/instance-type: t3.small\n    orca.research/capacity-type: spot\n\
         spec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    \
         image: {}\n    command: [sleep, '600']\n",
        c.cluster.image
    ));
    let first = c.wait_phase("spotty", "Running");
    let first_uid = uid_of(&c.record("spotty"));
    let first_call = c.run_calls(&first_uid).pop().expect("its RunInstances");
    let instance = c
        .live_instances()
        .into_iter()
        .next()
        .expect("its instance")
        .instance_id;

    let at = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 120).unwrap();
    assert!(c.player.set_metadata(
        &instance,
        "spot/instance-action",
        &format!(r#"{{"action": "terminate", "time": "{at}"}}"#),
    ));

    let moved = eventually_blocking(
        "the replacement Running on another instance",
        DEADLINE,
        || {
            let p = c.cluster.pod("spotty");
            if p["phase"] == "Running" && p["node"] != first["node"] {
                Ok(p)
            } else {
                Err(p)
            }
        },
    );
    let new_uid = uid_of(&c.record("spotty"));
    assert_ne!(new_uid, first_uid, "{moved}");
    let call = c
        .run_calls(&new_uid)
        .pop()
        .expect("the replacement's RunInstances");
    assert_eq!(call["InstanceMarketOptions.MarketType"], "spot", "{call:?}");
    assert_ne!(
        call["SubnetId"], first_call["SubnetId"],
        "the interrupted offering is avoided: another zone"
    );
    let log = c.player.imds_log(&instance);
    assert!(
        log.iter()
            .any(|l| l == "GET /latest/meta-data/spot/instance-action 200"),
        "{log:?}"
    );
    let events = c.events("spotty");
    assert!(
        events.iter().any(|(r, _)| r == "SpotInterruption"),
        "{events:?}"
    );
    eventually_blocking(
        "the interrupted instance to be terminated",
        DEADLINE,
        || {
            let seen = c.instances();
            if seen
                .iter()
                .any(|i| i.instance_id == instance && i.state == "terminated")
            {
                Ok(())
            } else {
                Err(seen)
            }
        },
    );
}
