//! The AMI (`ami/`) without AWS: Packer validates the template; the template's
//! provisioning scripts run in a debootstrapped Debian 12; systemd verifies the
//! unit they install; and the installed host boots in a network namespace of
//! its own, reads its boot data from IMDSv2 at 169.254.169.254 (inside that
//! namespace only), joins a control plane on this machine and runs a pod.

use std::process::Command;

use orca_control_plane::cloud::cidr::Ipv4Cidr;
use orca_control_plane::cloud::netns::{self, HostNetwork};
use orca_tests::ami::{AGENT_BINARIES, Rootfs, STAGING, Unit, packer_scripts};
use orca_tests::cluster::{DEADLINE, TestCluster};
use orca_tests::env::{ImdsServer, process_cmdline, repo_root, require, workspace_bin};
use orca_tests::eventually::eventually_blocking;

/// The node name the baked host joins as.
const NODE: &str = "ami-host";

fn ami_dir() -> std::path::PathBuf {
    repo_root().join("ami")
}

fn template() -> String {
    std::fs::read_to_string(ami_dir().join("orca-agent.pkr.hcl")).expect("ami/orca-agent.pkr.hcl")
}

#[test]
fn packer_validates_the_template_and_shellcheck_the_scripts() {
    let bin_dir = workspace_bin("orca-agent")
        .parent()
        .expect("target dir")
        .to_path_buf();
    let out = Command::new(require("packer"))
        .arg("validate")
        .arg(format!("-var=agent_dir={}", bin_dir.display()))
        .arg("-var=gpu=true")
        .arg(ami_dir())
        .current_dir(repo_root())
        .output()
        .expect("packer");
    assert!(
        out.status.success(),
        "packer validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A broken template is refused: the check can fail.
    let broken = tempfile::tempdir().unwrap();
    std::fs::write(
        broken.path().join("t.pkr.hcl"),
        template().replace("instance_type = var.instance_type", "instance_typo = 1"),
    )
    .unwrap();
    let out = Command::new(require("packer"))
        .arg("validate")
        .arg(broken.path())
        .output()
        .expect("packer");
    assert!(!out.status.success(), "a typo in the source is refused");

    let scripts: Vec<_> = std::fs::read_dir(ami_dir().join("scripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(scripts.len() >= 4, "{scripts:?}");
    let out = Command::new(require("shellcheck"))
        .args(&scripts)
        .output()
        .expect("shellcheck");
    assert!(
        out.status.success(),
        "shellcheck: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_provisioned_debian12_host_boots_from_imds_joins_and_runs_a_pod() {
    let cluster = TestCluster::start();
    assert!(
        cluster.namespaced,
        "the baked host needs network namespaces (run as root with iproute2)"
    );
    let dir = tempfile::tempdir().unwrap();

    // 1. The template's scripts, in its order, in a fresh Debian 12.
    let rootfs = Rootfs::unpack(&dir.path().join("root")).expect("Debian 12 root filesystem");
    rootfs.stage(&ami_dir()).expect("stage");
    let scripts = packer_scripts(&template()).expect("the template's scripts");
    let log = rootfs
        .provision(
            &scripts,
            &[
                ("ORCA_AMI_STAGING", STAGING),
                ("ORCA_AMI_GPU", "false"),
                ("DEBIAN_FRONTEND", "noninteractive"),
            ],
        )
        .unwrap_or_else(|e| panic!("provisioning: {e}"));
    assert!(log.contains("gpu: skipped"), "{log}");
    for bin in AGENT_BINARIES {
        let path = rootfs.path(&format!("/usr/local/bin/{bin}"));
        let mode = std::os::unix::fs::PermissionsExt::mode(&path.metadata().unwrap().permissions());
        assert_eq!(mode & 0o777, 0o755, "{}", path.display());
    }
    for enabled in ["orca-agent.service", "containerd.service"] {
        let link = rootfs.path(&format!(
            "/etc/systemd/system/multi-user.target.wants/{enabled}"
        ));
        assert!(link.symlink_metadata().is_ok(), "{enabled} enabled");
    }
    assert!(rootfs.path("/usr/bin/containerd").exists());
    assert!(rootfs.path("/usr/sbin/runc").exists() || rootfs.path("/usr/bin/runc").exists());
    assert!(
        !rootfs.path(STAGING).exists(),
        "the staging dir is cleaned up"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.path("/etc/machine-id")).unwrap(),
        "",
        "each instance gets its own machine id"
    );
    assert!(!rootfs.path("/usr/sbin/policy-rc.d").exists());

    // 2. systemd's own verdict on the installed unit.
    let out = Command::new(require("systemd-analyze"))
        .arg("verify")
        .arg(format!("--root={}", rootfs.root().display()))
        .arg("orca-agent.service")
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let unit_text =
        std::fs::read_to_string(rootfs.path("/etc/systemd/system/orca-agent.service")).unwrap();
    let unit = Unit::parse(&unit_text).expect("the installed unit");
    assert_eq!(unit.exec_start, ["/usr/local/bin/orca-agent"]);

    // 3. The host's network: a namespace on the cluster's bridge, with EC2's
    //    metadata address on its loopback and boot data minted by the control plane.
    let cidr: Ipv4Cidr = cluster.network.cidr.parse().unwrap();
    // High in the hosts' half (the upper half is for Services): clear of the
    // cluster's own hosts, which take addresses from the bottom.
    let ip = cidr.hosts().last().expect("an address");
    let net = HostNetwork::new(&cluster.network.bridge, NODE, ip);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(netns::create_host(&net, &cluster.network.bridge, &cidr))
        .expect("the host's network namespace");
    // Registered as an external node, as an operator adds a host ORCA did not launch.
    let out = cluster.orca_ok(&["node", "add", NODE, "--external"]);
    assert!(out.contains(&format!("node/{NODE} registered")), "{out}");
    let token = rt
        .block_on(async {
            cluster
                .admin()
                .await
                .create_join_token(orca_proto::controlplane::v1::CreateJoinTokenRequest {
                    node_name: NODE.into(),
                })
                .await
        })
        .expect("join token")
        .into_inner();
    let boot = serde_json::json!({
        "control_plane": token.control_plane_url,
        "ca_pem": token.ca_cert_pem,
        "node_name": NODE,
        "join_token": token.token,
    });
    let imds = ImdsServer::start_in_netns(
        &net.netns,
        &boot.to_string(),
        &[("instance-id", "i-0ami"), ("local-ipv4", &ip.to_string())],
    )
    .expect("IMDS in the host's namespace");
    // The operator's override file: the test registry speaks plain HTTP, and a
    // containerd namespace of its own keeps its cgroups apart.
    let defaults = rootfs.path("/etc/default/orca-agent");
    let mut text = std::fs::read_to_string(&defaults).expect("/etc/default/orca-agent");
    let namespace = format!("orca-ami-{}", std::process::id());
    text.push_str(&format!(
        "ORCA_AGENT_INSECURE_REGISTRIES={}\nORCA_AGENT_CONTAINERD_NAMESPACE={namespace}\n",
        cluster.registry.addr
    ));
    std::fs::write(&defaults, text).unwrap();

    // 4. Boot: containerd, then the agent as the unit runs it.
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let host = rootfs.boot(&net.netns, &unit, &logs).expect("boot");
    let node = eventually_blocking("the baked host to join and be Ready", DEADLINE, || {
        let n = cluster.node(NODE);
        if n["state"] == "Ready" {
            Ok(n)
        } else {
            Err(format!("{n}\n{}", host.log_tail()))
        }
    });
    assert_eq!(
        node["address"]
            .as_str()
            .map(|a| a.starts_with(&ip.to_string())),
        Some(true),
        "{node}"
    );
    let seen = imds.log();
    assert_eq!(
        seen.first().map(String::as_str),
        Some("PUT /latest/api/token 200"),
        "IMDSv2: a session token first: {seen:?}"
    );
    assert!(
        seen.iter().any(|l| l == "GET /latest/user-data 200"),
        "{seen:?}"
    );

    // 5. A pod on it, through the installed containerd and runc.
    cluster.orca_ok(&[
        "run",
        "baked",
        "--image",
        &cluster.image,
        "--annotation",
        &format!("orca.research/node={NODE}"),
        "--",
        "sh",
        "-c",
        "echo hello-from-the-ami; exec sleep 300",
    ]);
    let pod = cluster.wait_phase("baked", "Running");
    assert_eq!(pod["node"], NODE, "{pod}");
    let logs_out = eventually_blocking("the pod's log", DEADLINE, || {
        let out = cluster.orca_ok(&["logs", "baked"]);
        if out.contains("hello-from-the-ami") {
            Ok(out)
        } else {
            Err(out)
        }
    });
    assert_eq!(logs_out, "hello-from-the-ami\n");
    let running = in_cgroups_of(&namespace);
    assert_eq!(
        running.len(),
        1,
        "the container's process, in the host's cgroups: {running:?}"
    );
    assert_eq!(process_cmdline(running[0]), ["sleep", "300"]);
    let containerd_log = std::fs::read_to_string(logs.join("containerd.log")).unwrap_or_default();
    assert!(
        containerd_log.contains("containerd successfully booted"),
        "{containerd_log}"
    );
    let out = cluster.orca_ok(&["delete", "pod", "baked", "--grace-period", "1"]);
    assert!(out.contains("deleted"), "{out}");
    assert_eq!(
        in_cgroups_of(&namespace),
        Vec::<u32>::new(),
        "the container stopped"
    );

    // 6. Power off: the whole host goes at once.
    drop(host);
}

/// Processes in the cgroups of containerd namespace `ns` (its containers').
fn in_cgroups_of(ns: &str) -> Vec<u32> {
    let needle = format!(":/{ns}/");
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.contains(&needle))
        })
        .collect();
    pids.sort_unstable();
    pids
}
