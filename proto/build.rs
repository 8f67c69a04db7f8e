//! Generates the messages, the tonic clients and servers (feature `grpc`), and the descriptor set that reflection serves.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "orca/types/v1/pod.proto",
    "orca/agent/v1/agent.proto",
    "orca/controlplane/v1/node.proto",
    "orca/controlplane/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    // Without the `grpc` feature: the messages alone (no tonic in the generated code).
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .file_descriptor_set_path(out.join("orca_descriptor.bin"))
        // Stream payloads as `bytes::Bytes`: decoding slices the received buffer
        // instead of copying, so the control plane relays them with one copy less.
        .bytes(".orca.agent.v1.LogChunk.data")
        .bytes(".orca.agent.v1.ExecOutput.stdout")
        .bytes(".orca.agent.v1.ExecOutput.stderr")
        .bytes(".orca.agent.v1.ExecInput.stdin")
        .bytes(".orca.agent.v1.AttachInput.stdin")
        .bytes(".orca.agent.v1.PortForwardInput.data")
        .bytes(".orca.agent.v1.PortForwardOutput.data")
        .bytes(".orca.controlplane.v1.BackupChunk.data")
        .compile_protos(PROTOS, &["."])
        .map_err(|e| {
            format!("{e}\nhint: protoc is required: apt-get install -y protobuf-compiler").into()
        })
}
