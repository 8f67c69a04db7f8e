//! The agent's IMDSv2 client against a metadata server that, like EC2 with
//! `HttpTokens: required`, answers only requests carrying a session token.

use std::time::Duration;

use orca_agent::imds::{BootData, Imds};
use orca_tests::env::ImdsServer;

#[tokio::test]
async fn boot_data_and_instance_id_come_through_imdsv2_sessions() {
    let boot = BootData {
        control_plane: "https://10.96.0.1:7443".into(),
        ca_pem: "-----BEGIN CERTIFICATE-----\n...\n".into(),
        node_name: "i-0abc".into(),
        join_token: "single-use".into(),
    };
    let server = ImdsServer::start(
        &serde_json::to_string(&boot).unwrap(),
        &[("instance-id", "i-0abc123")],
    )
    .unwrap();
    let imds = Imds::new(&server.endpoint, Duration::from_secs(5));
    assert_eq!(imds.boot_data().await.expect("boot data"), boot);
    assert_eq!(imds.instance_id().await.expect("instance id"), "i-0abc123");
    assert_eq!(
        server.log(),
        [
            "PUT /latest/api/token 200",
            "GET /latest/user-data 200",
            "PUT /latest/api/token 200",
            "GET /latest/meta-data/instance-id 200"
        ],
        "a token first, then the read with it"
    );

    // A token-less read is refused by the server; the client never makes one.
    let plain = reqwest::get(format!("{}/latest/user-data", server.endpoint))
        .await
        .unwrap();
    assert_eq!(plain.status().as_u16(), 401);

    // User data that is not ORCA's, and an endpoint that does not answer: clear errors.
    let other = ImdsServer::start("#!/bin/sh\necho hello\n", &[]).unwrap();
    let e = Imds::new(&other.endpoint, Duration::from_secs(5))
        .boot_data()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not ORCA boot data"), "{e}");
    let port = orca_tests::env::free_port();
    let e = Imds::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2))
        .boot_data()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("IMDS token"), "{e}");
}
