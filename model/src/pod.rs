//! Pods' names and keys, and what a pod record says of itself.

use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1::PodPhase;

/// Namespace used when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Store key of a pod.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Namespace and name of a record.
pub fn names(record: &pb::PodRecord) -> (String, String) {
    let r = record
        .pod
        .as_ref()
        .and_then(|p| p.r#ref.clone())
        .unwrap_or_default();
    (r.namespace, r.name)
}

/// Uid of a record.
pub fn uid(record: &pb::PodRecord) -> String {
    record
        .pod
        .as_ref()
        .and_then(|p| p.r#ref.as_ref())
        .map(|r| r.uid.clone())
        .unwrap_or_default()
}

/// The phase of a record.
pub fn phase(record: &pb::PodRecord) -> PodPhase {
    record
        .status
        .as_ref()
        .and_then(|s| PodPhase::try_from(s.phase).ok())
        .unwrap_or(PodPhase::Unspecified)
}

/// Whether `name` is a lowercase DNS subdomain (pod, namespace and node names).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_dns_subdomains() {
        for good in ["a", "web-1", "a.b", "0abc"] {
            assert!(valid_name(good), "{good:?}");
        }
        for bad in ["", "A", "-a", "a-", "a_b", "a/b", "..", &"a".repeat(254)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn an_empty_record_has_empty_names_and_no_phase() {
        let r = pb::PodRecord::default();
        assert_eq!(names(&r), (String::new(), String::new()));
        assert_eq!(uid(&r), "");
        assert_eq!(phase(&r), PodPhase::Unspecified);
        assert_eq!(key("ns", "p"), "ns/p");
    }
}
