//! The EC2 instance-type catalogue through the real aws-sdk-ec2 against
//! `moto_server`, and instance selection over it.

use std::collections::BTreeMap;

use orca_control_plane::cloud::ec2::catalogue;
use orca_model::selection::{
    self, Arch, CapacityType, LaunchAnnotations, Needs, Policy, SelectionError,
};
use orca_tests::env::{Moto, ec2_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_comes_from_describe_instance_types_and_selection_runs_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).expect("moto_server starts");
    let client = ec2_client(&moto.endpoint).await;
    let prices = BTreeMap::from([
        ("g5.xlarge".to_owned(), 1.006),
        ("g4dn.xlarge".to_owned(), 0.526),
        ("p4d.24xlarge".to_owned(), 32.7726),
    ]);
    let cat = catalogue::load(&client, &prices).await.expect("catalogue");
    assert!(cat.len() > 500, "every page read: {} types", cat.len());

    let g5 = cat.get("g5.xlarge").expect("g5.xlarge");
    assert_eq!((g5.vcpus, g5.memory_mib, g5.gpus), (4, 16384, 1), "{g5:?}");
    assert_eq!(
        (g5.gpu_manufacturer.as_str(), g5.gpu_model.as_str()),
        ("NVIDIA", "A10G")
    );
    assert!(g5.gpu_memory_mib > 20_000, "{g5:?}");
    assert_eq!(g5.architectures, [Arch::X86_64]);
    assert_eq!(g5.on_demand_usd_per_hour, Some(1.006));
    let p4d = cat.get("p4d.24xlarge").expect("p4d.24xlarge");
    assert_eq!(
        (p4d.vcpus, p4d.gpus, p4d.gpu_model.as_str()),
        (96, 8, "A100")
    );
    assert_eq!(
        cat.get("c7g.large").expect("c7g.large").architectures,
        [Arch::Arm64]
    );
    assert_eq!(cat.get("m5.large").expect("m5.large").gpus, 0);

    // Auto: the cheapest priced type with an A100 among the allowed.
    let policy = Policy {
        allowed: vec!["p4d*".into(), "p5.*".into()],
        ..Default::default()
    };
    let a100 = Needs {
        cpu_millis: 8000,
        memory_bytes: 64 << 30,
        gpus: 1,
        architectures: vec![Arch::X86_64],
        ..Default::default()
    };
    let annotations = LaunchAnnotations {
        gpu_model: Some("a100".into()),
        ..Default::default()
    };
    let d = selection::select(&annotations, &a100, &cat, &policy).expect("a type");
    assert_eq!(d.candidates[0].instance_type, "p4d.24xlarge", "{d:?}");
    assert!(
        d.candidates
            .iter()
            .all(|c| cat.get(&c.instance_type).unwrap().gpu_model == "A100"),
        "{d:?}"
    );

    // An arm64 type for an amd64 image: refused, saying why.
    let arm = LaunchAnnotations {
        instance_type: Some("g5g.xlarge".into()),
        ..Default::default()
    };
    let x86 = Needs {
        architectures: vec![Arch::X86_64],
        ..Default::default()
    };
    match selection::select(&arm, &x86, &cat, &Policy::default()) {
        Err(SelectionError::Unfit(why)) => assert!(why.contains("arm64"), "{why}"),
        other => panic!("{other:?}"),
    }

    // Spot ranks by the spot price EC2 reports (moto's are all equal; the name breaks ties).
    let spot = LaunchAnnotations {
        capacity_type: CapacityType::Spot,
        gpu_model: Some("T4".into()),
        ..Default::default()
    };
    let d = selection::select(
        &spot,
        &Needs {
            gpus: 1,
            ..Default::default()
        },
        &cat,
        &Policy::default(),
    )
    .expect("a T4 type");
    assert!(d.candidates[0].usd_per_hour.is_some(), "{d:?}");
    assert!(d.reason.contains("spot"), "{}", d.reason);
}
