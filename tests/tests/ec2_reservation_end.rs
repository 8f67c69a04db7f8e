//! The end of a Capacity Block on the `ec2` provider (moto, behind the EC2
//! proxy that emulates reservations, played by real agents): a pod pinned to
//! the block runs in it; while the block's end is far, the control plane only
//! looks (DescribeCapacityReservations); once EC2's reclaim (30 minutes before
//! the end) is within the drain lead, the node is cordoned, the agent gets the
//! notice in its heartbeat answer and hands it to the container
//! (`/run/orca/notice`), waits for its checkpoint, stops it, and the pod ends
//! `Failed (CapacityReservationEnd)`: it is pinned to the block, so it is not
//! relaunched into it. The instance is terminated before EC2's reclaim, the
//! ledger has the block, the notice and the checkpoint, and a new pod pinned to
//! the ending block is refused without a launch.

use orca_tests::cluster::DEADLINE;
use orca_tests::ec2_cluster::{Ec2Cluster, uid_of};
use orca_tests::eventually::eventually_blocking;

/// Confirms a checkpoint named after the notice's kind and action.
const TRAINER: &str = r#"
trap 'echo TERM; exit 0' TERM
while true; do
  if [ -f /run/orca/notice ] && [ ! -f /run/orca/checkpoint-done ]; then
    kind=$(sed 's/.*"kind":"\([A-Za-z]*\)".*/\1/' /run/orca/notice)
    action=$(sed 's/.*"action":"\([a-z]*\)".*/\1/' /run/orca/notice)
    echo "s3://bucket/$kind/$action" > /run/orca/checkpoint-done
  fi
  sleep 1 & wait $!
done
"#;

fn pinned(c: &Ec2Cluster, name: &str, block: &str) -> String {
    let script = TRAINER.replace('\n', "\n      ");
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations:\n    \
         orca.research/instance-type: t3.small\n    \
         orca.research/capacity-reservation-id: {block}\n    \
         orca.research/checkpoint-wait: 60s\n\
         spec:\n  restartPolicy: Always\n  terminationGracePeriodSeconds: 5\n  containers:\n  \
         - name: main\n    image: {}\n    command: [sh, -c]\n    args:\n    - |\n      {script}\n",
        c.cluster.image
    )
}

#[test]
fn a_capacity_block_end_drains_its_node_before_ec2_reclaims_it() {
    let c = Ec2Cluster::start_with_agents(
        "    subnets: $SUBNETS\n    reservation_check_ms: 200\n    reservation_drain_lead_ms: 600000\n",
        "",
        &["--notice-poll-ms=200", "--notice-pause-ms=300"],
    );
    let zone = c.zone_of_subnet(&c.subnets[0]);
    let far = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(48);
    let block = c.proxy.create_capacity_block("t3.small", &zone, 1, far);

    c.apply(&pinned(&c, "trainer", &block));
    let running = c.wait_phase("trainer", "Running");
    let uid = uid_of(&c.record("trainer"));
    let call = c.run_calls(&uid).pop().expect("its RunInstances");
    assert_eq!(
        call["CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId"],
        block,
        "{call:?}"
    );
    let node = running["node"].as_str().expect("a node").to_owned();
    assert_eq!(
        c.cluster.node(&node)["labels"]["orca.research/capacity-reservation"],
        block.as_str(),
        "the node knows its reservation from the RunInstances answer"
    );

    // A far end: the block is looked at, the node left alone.
    let looked = c.proxy.calls_of("DescribeCapacityReservations").len();
    eventually_blocking("two more looks at the block", DEADLINE, || {
        let now = c.proxy.calls_of("DescribeCapacityReservations");
        if now.len() >= looked + 2 {
            Ok(())
        } else {
            Err(now.len())
        }
    });
    let quiet = c.cluster.node(&node);
    assert_ne!(quiet["unschedulable"], true, "{quiet:#}");
    assert_eq!(c.cluster.pod("trainer")["phase"], "Running");

    // EC2 reclaims the block's instances 30 minutes before its end: move the
    // end so that the reclaim is 3 minutes away, inside the 10-minute lead.
    let end = jiff::Timestamp::now() + jiff::SignedDuration::from_mins(33);
    let reclaim = end - jiff::SignedDuration::from_mins(30);
    assert!(c.proxy.set_reservation_end(&block, end));

    let failed = c.wait_phase("trainer", "Failed");
    assert_eq!(failed["reason"], "CapacityReservationEnd", "{failed:#}");
    // The verdict is the control plane's or, when its report comes last, the
    // agent's: both name the block. The control plane's Event says why the pod
    // is not relaunched.
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(message.contains(&block), "{message}");
    let events = c.events("trainer");
    assert!(
        events.iter().any(|(r, m)| r == "CapacityReservationEnd"
            && m.contains("pinned")
            && m.contains(&block)),
        "{events:?}"
    );
    let cordoned = c.cluster.node(&node);
    assert_eq!(cordoned["unschedulable"], true, "{cordoned:#}");
    assert!(
        c.events(&node)
            .iter()
            .any(|(r, m)| r == "CapacityReservationEnd" && m.contains("Capacity Block")),
        "{:?}",
        c.events(&node)
    );
    assert_eq!(
        c.run_calls(&uid).len(),
        1,
        "a pinned pod is not relaunched into its ending block"
    );

    // The container had the notice and confirmed its checkpoint before it stopped.
    let ledger = eventually_blocking("the checkpoint in the ledger", DEADLINE, || {
        let ledger: serde_json::Value =
            serde_json::from_str(&c.cluster.orca_ok(&["ledger", "trainer", "-o", "json"])).unwrap();
        if ledger["interruptions"][0]["checkpoint"].as_str() == Some("") {
            Err(ledger)
        } else {
            Ok(ledger)
        }
    });
    let interruption = &ledger["interruptions"][0];
    assert_eq!(
        interruption["checkpoint"], "s3://bucket/CapacityReservationEnd/terminate",
        "{ledger:#}"
    );
    assert_eq!(interruption["kind"], "reservation_end", "{ledger:#}");
    assert_eq!(interruption["reservationId"], block.as_str(), "{ledger:#}");
    let deadline: jiff::Timestamp = interruption["deadline"]
        .as_str()
        .expect("a deadline")
        .parse()
        .unwrap();
    assert_eq!(
        deadline.as_second(),
        reclaim.as_second(),
        "the deadline is EC2's reclaim, 30 minutes before the end: {ledger:#}"
    );
    assert_eq!(
        ledger["placements"][0]["capacityReservationId"],
        block.as_str(),
        "{ledger:#}"
    );

    // The instance goes, well before EC2 would take it, and gives its slot back
    // (the proxy sees moto's answer to TerminateInstances just after moto
    // shows the instance terminated).
    eventually_blocking("the block's instance terminated", DEADLINE, || {
        let live = c.live_instances();
        let available = c.proxy.reservation(&block).expect("the block").available;
        if live.is_empty() && available == 1 {
            Ok(())
        } else {
            Err((live, available))
        }
    });
    assert!(jiff::Timestamp::now() < reclaim);

    // A new pod pinned to the ending block is refused, with no launch.
    c.apply(&pinned(&c, "late", &block));
    let late = c.wait_phase("late", "Failed");
    assert_eq!(late["reason"], "CapacityReservationEnd", "{late:#}");
    assert!(
        late["message"]
            .as_str()
            .unwrap_or_default()
            .contains("ends"),
        "{late:#}"
    );
    assert!(c.run_calls(&uid_of(&c.record("late"))).is_empty());
}
