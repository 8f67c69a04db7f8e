//! Smoke test of the test environment itself: real containerd, registry and moto start,
//! work together, and leave nothing running once dropped.

use std::time::Duration;

use orca_tests::env::{self, Containerd, Moto, Registry, busybox_image, process_running};

/// A DescribeInstanceTypes call as aws-sdk-ec2 sends it; moto checks neither the
/// signature nor the date, only that the header names a region and a service.
const DESCRIBE_P4D: &str =
    "Action=DescribeInstanceTypes&Version=2016-11-15&InstanceType.1=p4d.24xlarge";
const AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=x";

#[tokio::test]
async fn containerd_registry_and_moto_start_work_and_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let containerd = Containerd::start(dir.path()).expect("containerd starts");
    let registry = Registry::start(dir.path()).expect("registry starts");
    let moto = Moto::start(dir.path()).expect("moto starts");
    let mut pids = vec![
        ("containerd", containerd.pid()),
        ("docker-registry", registry.pid()),
        ("moto_server", moto.pid()),
    ];
    for (name, pid) in &pids {
        assert!(process_running(*pid), "{name} (pid {pid}) is not running");
    }

    // Image: build offline, push with skopeo, pull with containerd over plain HTTP, run.
    let image = busybox_image(dir.path()).expect("busybox image builds");
    let reference = registry
        .push_oci_archive(&image, "orca/busybox:test")
        .expect("skopeo pushes");
    assert_eq!(reference, format!("{}/orca/busybox:test", registry.addr));
    containerd
        .ctr("smoke", &["images", "pull", "--plain-http", &reference])
        .expect("ctr pulls from the registry");

    let mut sleeper = containerd.ctr_command("smoke");
    sleeper.args(["run", "-d", &reference, "sleeper", "/bin/sleep", "300"]);
    let out = sleeper.output().expect("ctr run -d");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tasks = containerd
        .ctr("smoke", &["tasks", "ls"])
        .expect("ctr tasks ls");
    let task_pid = tasks
        .lines()
        .find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            ["sleeper", pid, "RUNNING"] => pid.parse().ok(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("sleeper not running: {tasks}"));
    pids.push(("sleeper task", task_pid));
    pids.extend(containerd.shim_pids().into_iter().map(|p| ("shim", p)));
    assert!(
        pids.iter().any(|(n, _)| *n == "shim"),
        "no shim for the sleeper"
    );

    let hello = containerd
        .ctr(
            "smoke",
            &["run", "--rm", &reference, "c1", "/bin/echo", "hello"],
        )
        .expect("ctr runs a container");
    assert_eq!(hello.trim(), "hello");

    // EC2: moto answers DescribeInstanceTypes with GPU details.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let resp = client
        .post(&moto.endpoint)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Authorization", AUTHORIZATION)
        .body(DESCRIBE_P4D)
        .send()
        .await
        .expect("moto answers");
    let status = resp.status();
    let body = resp.text().await.expect("moto body");
    assert!(status.is_success(), "HTTP {status}: {body}");
    assert!(body.contains("A100"), "no A100 in {body}");
    moto.reset().expect("moto resets");

    // grpcurl is part of the environment too.
    let grpcurl = env::grpcurl();
    let version = std::process::Command::new(&grpcurl)
        .arg("-version")
        .output()
        .expect("grpcurl runs");
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("grpcurl")
            || String::from_utf8_lossy(&version.stderr).contains("grpcurl"),
        "{} -version printed nothing useful",
        grpcurl.display()
    );

    // Teardown: the still-running sleeper must go too.
    let containerd_dir = containerd.dir.clone();
    drop(moto);
    drop(registry);
    drop(containerd);
    for (name, pid) in &pids {
        assert!(
            !process_running(*pid),
            "{name} (pid {pid}) survived its Drop"
        );
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mountinfo.contains(containerd_dir.to_str().expect("utf-8 path")),
        "mounts left under {}",
        containerd_dir.display()
    );
    dir.close().expect("the test directory can be removed");
}
