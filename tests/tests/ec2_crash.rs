//! The fault test of the EC2 provider: pods launch while the control plane is
//! SIGKILLed at random moments and restarted. Afterwards no instance is leaked
//! or doubled and every pod is Running or Failed with a reason. `orca-bench
//! ec2-crash` runs the same scenario 20 times with 100 pods.

use orca_tests::bench::ec2::crash_run;

#[test]
fn kill_9_during_launches_leaks_and_doubles_nothing() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}");
    let o = crash_run(20, 3, seed);
    assert!(o.unsettled.is_empty(), "seed {seed}: {o:?}");
    assert_eq!(o.leaked, 0, "seed {seed}: {o:?}");
    assert_eq!(o.duplicates, 0, "seed {seed}: {o:?}");
    assert_eq!(o.running + o.failed, 20, "seed {seed}: {o:?}");
}
