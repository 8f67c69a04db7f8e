//! `orca apply -f` of a PersistentVolumeClaim, `orca get pvc`, `orca delete pvc`.

use std::io::{self, Write};

use orca_proto::controlplane::v1::{self as pb, ClaimPhase};

use super::CliError;
use super::output::{human, table};
use orca_model::time::age;

/// The claim a manifest describes, as JSON, in `namespace` unless it names one.
pub fn from_manifest(namespace: &str, text: &str) -> Result<String, CliError> {
    let mut v: serde_json::Value = serde_yaml::from_str(text)
        .map_err(|e| CliError::Usage(format!("not a PersistentVolumeClaim: {e}")))?;
    let meta = v
        .get_mut("metadata")
        .and_then(|m| m.as_object_mut())
        .ok_or_else(|| CliError::Usage("the manifest has no metadata".into()))?;
    meta.entry("namespace")
        .or_insert_with(|| serde_json::Value::String(namespace.to_owned()));
    Ok(v.to_string())
}

fn phase(c: &pb::Claim) -> &'static str {
    match ClaimPhase::try_from(c.phase).unwrap_or(ClaimPhase::Unspecified) {
        ClaimPhase::Pending => "Pending",
        ClaimPhase::Bound => "Bound",
        ClaimPhase::Lost => "Lost",
        ClaimPhase::Unspecified => "Unknown",
    }
}

/// Bytes as a Kubernetes quantity (`1Gi`), or empty.
fn capacity(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    if bytes == 0 {
        return String::new();
    }
    for (unit, size) in UNITS {
        if bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Prints claims as a table.
pub fn table_of(out: &mut impl Write, claims: &[pb::Claim]) -> io::Result<()> {
    let mut rows = vec![
        [
            "NAME",
            "STATUS",
            "KIND",
            "VOLUME",
            "NODE",
            "CAPACITY",
            "STORAGECLASS",
            "AGE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for c in claims {
        rows.push(vec![
            c.name.clone(),
            phase(c).into(),
            c.kind.clone(),
            if c.volume_id.is_empty() {
                c.local_path.clone()
            } else {
                c.volume_id.clone()
            },
            c.node_name.clone(),
            capacity(c.size_bytes),
            c.storage_class.clone(),
            human(age(c.created_at.as_ref())),
        ]);
    }
    table(out, &rows)
}

/// A claim as `-o json|yaml` shows it.
pub fn value(c: &pb::Claim) -> serde_json::Value {
    serde_json::json!({
        "namespace": c.namespace,
        "name": c.name,
        "uid": c.uid,
        "phase": phase(c),
        "kind": c.kind,
        "nodeName": c.node_name,
        "localPath": c.local_path,
        "volumeId": c.volume_id,
        "zone": c.zone,
        "storageClass": c.storage_class,
        "provisioned": c.provisioned,
        "reclaimPolicy": c.reclaim_policy,
        "sizeBytes": c.size_bytes,
        "message": c.message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_get_the_namespace() {
        let text = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\n";
        let json: serde_json::Value =
            serde_json::from_str(&from_manifest("lab", text).unwrap()).unwrap();
        assert_eq!(json["metadata"]["namespace"], "lab");
        assert_eq!(capacity(1 << 30), "1Gi");
        assert_eq!(capacity(1536 << 20), "1536Mi");
    }
}
