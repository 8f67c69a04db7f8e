//! The cluster's identity rules, against the real control plane over TLS: join
//! tokens are single use, bound to one node and expire; heartbeats need the
//! node's own certificate; certificates renew before they expire.

use orca_proto::controlplane::v1::{HeartbeatRequest, JoinRequest, RenewCertificateRequest};
use orca_tests::cluster::{DEADLINE, TestCluster};
use orca_tests::eventually::eventually_blocking;

/// A key and a CSR for it, as an agent makes them.
fn key_and_csr() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (key.serialize_pem(), csr)
}

fn join_request(token: &str, node: &str, csr: &str) -> JoinRequest {
    JoinRequest {
        token: token.into(),
        node_name: node.into(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        agent_address: "127.0.0.1:1".into(),
        csr_pem: csr.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn tokens_are_single_use_bound_to_their_node_and_heartbeats_need_the_nodes_certificate() {
    let c = TestCluster::start();
    c.orca_ok(&["node", "add", "n1"]);
    let n1_id = c.node("n1")["id"].as_str().unwrap().to_owned();
    let mut anonymous = c.node_client(None).await;

    let token = c.external_token("ext");
    let (key, csr) = key_and_csr();
    let joined = anonymous
        .join(join_request(&token, "ext", &csr))
        .await
        .expect("a fresh token joins")
        .into_inner();
    let der = orca_proto::tls::certs("node", &joined.node_cert_pem)
        .unwrap()
        .remove(0);
    assert_eq!(
        orca_proto::tls::common_name(&der).as_deref(),
        Some("orca:node:ext"),
        "the certificate names the node the token was for"
    );

    // The same agent again (its answer lost, e.g. the control plane died after
    // consuming the token): the same key is admitted again; any other key is not.
    let again = anonymous
        .join(join_request(&token, "ext", &csr))
        .await
        .expect("a join repeated with the key that used the token")
        .into_inner();
    assert_eq!(again.node_id, joined.node_id, "the same node id");
    let (_, other_csr) = key_and_csr();
    let reused = anonymous
        .join(join_request(&token, "ext", &other_csr))
        .await
        .expect_err("a used token is refused to another key");
    assert_eq!(reused.code(), tonic::Code::PermissionDenied, "{reused:?}");
    assert!(reused.message().contains("already used"), "{reused:?}");

    let other = c.external_token("ext2");
    let wrong = anonymous
        .join(join_request(&other, "ext", &csr))
        .await
        .expect_err("a token is bound to its node");
    assert!(
        wrong.message().contains("issued for node \"ext2\""),
        "{wrong:?}"
    );

    // Heartbeats: no certificate, another node's certificate, then its own.
    let beat = |id: &str| HeartbeatRequest {
        node_id: id.into(),
        sequence: 1,
        ..Default::default()
    };
    let e = anonymous
        .heartbeat(beat(&joined.node_id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let mut ext = c.node_client(Some((&joined.node_cert_pem, &key))).await;
    let e = ext.heartbeat(beat(&n1_id)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("cannot speak for"), "{e:?}");
    ext.heartbeat(beat(&joined.node_id))
        .await
        .expect("its own certificate and id");
    // ext heartbeats only once here: Ready, or Suspect if the machine was slow since.
    let ext_state = c.node("ext")["state"].clone();
    assert!(
        ext_state == "Ready" || ext_state == "Suspect",
        "{ext_state}"
    );
    c.wait_node_ready("n1");

    // Renewal is for the node's own certificate only.
    let (_, csr2) = key_and_csr();
    let renewed = ext
        .renew_certificate(RenewCertificateRequest {
            node_id: joined.node_id.clone(),
            csr_pem: csr2.clone(),
        })
        .await
        .expect("renewed")
        .into_inner();
    assert_ne!(renewed.node_cert_pem, joined.node_cert_pem);
    let e = ext
        .renew_certificate(RenewCertificateRequest {
            node_id: n1_id,
            csr_pem: csr2,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
}

#[tokio::test]
async fn expired_tokens_are_refused_and_agents_renew_short_lived_certificates() {
    let c = TestCluster::start_configured(
        &["--retry-ms=100"],
        "join_token_ttl_s: 1\ntls:\n  cert_lifetime_s: 3\n",
    );
    let out = c.orca_ok(&["node", "add", "late", "--external"]);
    let token = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ORCA_AGENT_JOIN_TOKEN="))
        .unwrap()
        .to_owned();
    let expires_at: i64 = out
        .split("expires at ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("expiry in {out}"));
    eventually_blocking("the token to expire", DEADLINE, || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        if now > expires_at { Ok(()) } else { Err(now) }
    });
    let (_, csr) = key_and_csr();
    let e = c
        .node_client(None)
        .await
        .join(join_request(&token, "late", &csr))
        .await
        .unwrap_err();
    assert!(e.message().contains("expired"), "{e:?}");

    // A real agent with a 3 s certificate renews it (twice, to see it keeps
    // doing so) and stays Ready past the first certificate's expiry.
    c.orca_ok(&["node", "add", "n1"]);
    let (first, _) = c.node_identity("n1");
    let mut seen = vec![first];
    eventually_blocking("two renewals", DEADLINE, || {
        let (now, _) = c.node_identity("n1");
        if !seen.contains(&now) {
            seen.push(now);
        }
        if seen.len() >= 3 {
            Ok(())
        } else {
            Err(seen.len())
        }
    });
    let (_, first_expiry) = orca_proto::tls::validity(&seen[0]).unwrap();
    eventually_blocking("past the first certificate's expiry", DEADLINE, || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        if now > first_expiry + 1 {
            Ok(())
        } else {
            Err(now)
        }
    });
    c.wait_node_ready("n1");
    // The control plane still reaches the agent (it dials with a renewed
    // certificate of its own, and checks the agent's renewed one).
    c.orca_ok(&["run", "after", "--image", &c.image, "--", "true"]);
    c.wait_phase("after", "Succeeded");
}

/// An agent started with nothing but `--imds-endpoint` (and its local
/// containerd settings) reads its control plane, CA, node name and join token
/// from the instance's user data over IMDSv2, joins, and runs a pod; the token
/// is single use, so user data read again later is worthless.
#[test]
fn an_agent_boots_from_imds_user_data_and_its_token_is_consumed() {
    let c = TestCluster::start();
    let token = c.external_token("imds-node");
    let ca = std::fs::read_to_string(c.data_dir().join("ca.pem")).unwrap();
    let boot = orca_agent::imds::BootData {
        control_plane: c.server.clone(),
        ca_pem: ca,
        node_name: "imds-node".into(),
        join_token: token,
    };
    let user_data = serde_json::to_string(&boot).unwrap();
    let imds = orca_tests::env::ImdsServer::start(
        &user_data,
        &[("instance-id", "i-0imds"), ("local-ipv4", "127.0.0.1")],
    )
    .unwrap();
    // Under the data dir, so the cluster's teardown finds its pods' orca-pause.
    let agent_dir = c.data_dir().join("imds-agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let start_agent = |state: &str| {
        let port = orca_tests::env::free_port();
        let mut cmd = std::process::Command::new(orca_tests::env::workspace_bin("orca-agent"));
        cmd.args(["--imds-endpoint", &imds.endpoint])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--containerd-socket")
            .arg(&c.containerd.socket)
            .args(["--containerd-namespace", &c.namespace("imds-node")])
            .arg("--state-dir")
            .arg(agent_dir.join(state))
            .args(["--insecure-registry", &c.registry.addr, "--retry-ms", "100"]);
        orca_tests::env::Daemon::spawn("orca-agent", cmd, &agent_dir.join(format!("{state}.log")))
            .expect("agent starts")
    };
    let _agent = start_agent("first");
    let node = c.wait_node_ready("imds-node");
    assert!(
        node["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "the address from local-ipv4: {node}"
    );
    assert!(
        imds.log()
            .first()
            .is_some_and(|l| l == "PUT /latest/api/token 200"),
        "a session token first: {:?}",
        imds.log()
    );
    c.orca_ok(&["run", "on-imds", "--image", &c.image, "--", "sleep", "300"]);
    let pod = c.wait_phase("on-imds", "Running");
    assert_eq!(pod["node"], "imds-node", "{pod}");

    // Another host reading the same user data cannot join with it.
    let mut second = start_agent("second");
    let log = eventually_blocking("the second join to be refused", DEADLINE, || {
        let log = std::fs::read_to_string(agent_dir.join("second.log")).unwrap_or_default();
        if log.contains("join failed") {
            Ok(log)
        } else {
            Err(log)
        }
    });
    assert!(log.contains("join refused"), "{log}");
    second.terminate(DEADLINE);
}
