//! downwardAPI files: pod fields and container resources, as the kubelet writes them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, PodSpec, ResourceFieldSelector};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::validation::containers;
use super::{PodInfo, VolumeError};
use crate::spec::parse_quantity;

/// The content of one downwardAPI file.
pub(super) fn downward_value(
    item: &DownwardAPIVolumeFile,
    field: &str,
    pod: &PodInfo<'_>,
    spec: &PodSpec,
) -> Result<String, VolumeError> {
    match (&item.field_ref, &item.resource_field_ref) {
        (Some(f), None) => {
            if let Some(v) = f.api_version.as_deref()
                && !v.is_empty()
                && v != "v1"
            {
                return Err(VolumeError::Invalid {
                    field: format!("{field}.fieldRef.apiVersion"),
                    reason: format!("{v:?} is not v1"),
                });
            }
            field_value(&f.field_path, pod).ok_or_else(|| VolumeError::Invalid {
                field: format!("{field}.fieldRef.fieldPath"),
                reason: format!(
                    "{:?} is not one of metadata.name, metadata.namespace, metadata.uid, \
                     metadata.labels, metadata.annotations, metadata.labels['KEY'], \
                     metadata.annotations['KEY'], spec.nodeName, status.hostIP",
                    f.field_path
                ),
            })
        }
        (None, Some(r)) => resource_value(r, &format!("{field}.resourceFieldRef"), pod, spec),
        _ => Err(VolumeError::Invalid {
            field: field.to_owned(),
            reason: "exactly one of fieldRef and resourceFieldRef is required".into(),
        }),
    }
}

/// A pod field as the kubelet writes it into a downwardAPI file.
fn field_value(path: &str, pod: &PodInfo<'_>) -> Option<String> {
    if let Some((map, key)) = path.strip_suffix("']").and_then(|p| p.split_once("['")) {
        let map = match map {
            "metadata.labels" => pod.labels,
            "metadata.annotations" => pod.annotations,
            _ => return None,
        };
        return Some(map.get(key).cloned().unwrap_or_default());
    }
    Some(match path {
        "metadata.name" => pod.name.to_owned(),
        "metadata.namespace" => pod.namespace.to_owned(),
        "metadata.uid" => pod.uid.to_owned(),
        "metadata.labels" => format_map(pod.labels),
        "metadata.annotations" => format_map(pod.annotations),
        "spec.nodeName" => pod.node_name.to_owned(),
        "status.hostIP" => pod.host_ip.to_owned(),
        _ => return None,
    })
}

/// The kubelet's `fieldpath.FormatMap`: `key="value"` lines sorted by key, values
/// quoted as Go's `%q` does, no final newline.
fn format_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Go's `strconv.Quote`. Go escapes what `unicode.IsPrint` rejects; std has no
/// Unicode categories, so beyond ASCII this escapes control characters, non-ASCII
/// spaces and the common format characters (soft hyphen, zero-width and
/// bidirectional marks, BOM).
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            ' ' => out.push(' '),
            c if c.is_ascii_graphic() => out.push(c),
            c if c.is_ascii() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c if c.is_control()
                || c.is_whitespace()
                || matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}') =>
            {
                let n = u32::from(c);
                if n < 0x10000 {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A container's CPU or memory limit or request, as the kubelet writes it: a limit
/// not set is the node's allocatable, a request not set is the limit (the API
/// server's defaulting) or 0; the value is divided by `divisor`, rounding up.
fn resource_value(
    r: &ResourceFieldSelector,
    field: &str,
    pod: &PodInfo<'_>,
    spec: &PodSpec,
) -> Result<String, VolumeError> {
    let invalid = |sub: &str, reason: String| VolumeError::Invalid {
        field: format!("{field}{sub}"),
        reason,
    };
    let name = r.container_name.as_deref().unwrap_or_default();
    if name.is_empty() {
        return Err(invalid(".containerName", "is required in a volume".into()));
    }
    let Some((_, container)) = containers(spec).find(|(_, c)| c.name == name) else {
        return Err(invalid(
            ".containerName",
            format!("the pod has no container {name:?}"),
        ));
    };
    let (kind, resource) = r
        .resource
        .split_once('.')
        .filter(|(k, _)| matches!(*k, "limits" | "requests"))
        .ok_or_else(|| {
            invalid(
                ".resource",
                format!(
                    "{:?} is not limits.RESOURCE or requests.RESOURCE",
                    r.resource
                ),
            )
        })?;
    let cpu = match resource {
        "cpu" => true,
        "memory" => false,
        res if res == "ephemeral-storage" || res.starts_with("hugepages-") => {
            return Err(VolumeError::Unsupported {
                field: format!("{field}.resource"),
            });
        }
        _ => {
            return Err(invalid(
                ".resource",
                format!(
                    "{:?} is not cpu, memory, ephemeral-storage or hugepages",
                    r.resource
                ),
            ));
        }
    };
    let quantity = |map: Option<&BTreeMap<String, Quantity>>, which: &str| {
        map.and_then(|m| m.get(resource))
            .map(|q| {
                parse_quantity(&q.0, cpu).ok_or_else(|| {
                    invalid(
                        "",
                        format!("{which}.{resource} of container {name:?}: {:?} is not a valid quantity", q.0),
                    )
                })
            })
            .transpose()
    };
    let resources = container.resources.as_ref();
    let limit = quantity(resources.and_then(|r| r.limits.as_ref()), "limits")?;
    let request = quantity(resources.and_then(|r| r.requests.as_ref()), "requests")?;
    let value = if kind == "limits" {
        limit.unwrap_or(if cpu {
            pod.node_cpu_millis
        } else {
            pod.node_memory_bytes
        })
    } else {
        request.or(limit).unwrap_or(0)
    };
    let divisor = match &r.divisor {
        None => {
            if cpu {
                1000
            } else {
                1
            }
        }
        Some(q) => parse_quantity(&q.0, cpu)
            .filter(|d| *d > 0)
            .ok_or_else(|| invalid(".divisor", format!("{:?} is not a positive quantity", q.0)))?,
    };
    Ok(value.div_ceil(divisor).to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    use crate::volumes::test_support::*;

    #[test]
    fn downward_api_writes_metadata_node_and_resources_like_the_kubelet() {
        let dir = PodDir::new();
        let spec = pod(json!({
            "containers": [
                { "name": "main", "image": "busybox", "resources": {
                    "limits": { "cpu": "1500m", "memory": "64Mi" },
                    "requests": { "memory": "32Mi" },
                } },
                { "name": "side", "image": "busybox" },
            ],
            "volumes": [{ "name": "info", "downwardAPI": { "items": [
                { "path": "name", "fieldRef": { "fieldPath": "metadata.name" } },
                { "path": "namespace", "fieldRef": { "fieldPath": "metadata.namespace" } },
                { "path": "uid", "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.uid" } },
                { "path": "labels", "fieldRef": { "fieldPath": "metadata.labels" }, "mode": 0o600 },
                { "path": "annotations", "fieldRef": { "fieldPath": "metadata.annotations" } },
                { "path": "app", "fieldRef": { "fieldPath": "metadata.labels['app']" } },
                { "path": "missing", "fieldRef": { "fieldPath": "metadata.annotations['none']" } },
                { "path": "node", "fieldRef": { "fieldPath": "spec.nodeName" } },
                { "path": "ip", "fieldRef": { "fieldPath": "status.hostIP" } },
                { "path": "res/cpu_limit", "resourceFieldRef": { "containerName": "main", "resource": "limits.cpu" } },
                { "path": "res/cpu_limit_m", "resourceFieldRef": { "containerName": "main", "resource": "limits.cpu", "divisor": "1m" } },
                { "path": "res/cpu_request", "resourceFieldRef": { "containerName": "main", "resource": "requests.cpu", "divisor": "1m" } },
                { "path": "res/mem_limit_mi", "resourceFieldRef": { "containerName": "main", "resource": "limits.memory", "divisor": "1Mi" } },
                { "path": "res/mem_request", "resourceFieldRef": { "containerName": "main", "resource": "requests.memory" } },
                { "path": "res/side_cpu_limit", "resourceFieldRef": { "containerName": "side", "resource": "limits.cpu" } },
                { "path": "res/side_mem_limit", "resourceFieldRef": { "containerName": "side", "resource": "limits.memory", "divisor": "1Gi" } },
                { "path": "res/side_mem_request", "resourceFieldRef": { "containerName": "side", "resource": "requests.memory" } },
            ] } }],
        }));
        let l = labels();
        let a: BTreeMap<String, String> = [
            ("b".to_owned(), "2".to_owned()),
            ("a/x".to_owned(), "é\t".to_owned()),
        ]
        .into();
        prepare_with(dir.path(), &info(&l, &a), &spec, &data()).expect("prepare");
        let v = dir.volume("info");
        let file = |p: &str| read(&v.join(p));
        assert_eq!(file("name"), "web-0");
        assert_eq!(file("namespace"), "prod");
        assert_eq!(file("uid"), "0b3c-uid");
        assert_eq!(
            file("labels"),
            "app=\"web\"\ntier=\"a \\\"quoted\\\"\\nvalue\""
        );
        assert_eq!(mode_of(&v.join("labels")), 0o600);
        assert_eq!(file("annotations"), "a/x=\"é\\t\"\nb=\"2\"");
        assert_eq!(file("app"), "web");
        assert_eq!(file("missing"), "");
        assert_eq!(file("node"), "node-1");
        assert_eq!(file("ip"), "10.0.0.7");
        assert_eq!(file("res/cpu_limit"), "2", "1.5 CPUs rounded up");
        assert_eq!(file("res/cpu_limit_m"), "1500");
        assert_eq!(
            file("res/cpu_request"),
            "1500",
            "a request defaults to the limit"
        );
        assert_eq!(file("res/mem_limit_mi"), "64");
        assert_eq!(file("res/mem_request"), (32 << 20).to_string());
        assert_eq!(
            file("res/side_cpu_limit"),
            "4",
            "no limit: the node's allocatable"
        );
        assert_eq!(file("res/side_mem_limit"), "8");
        assert_eq!(file("res/side_mem_request"), "0");
        assert_eq!(mode_of(&v.join("name")), 0o644);
    }

    #[test]
    fn go_quoting_matches_strconv_quote() {
        assert_eq!(go_quote("plain"), "\"plain\"");
        assert_eq!(go_quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(go_quote("\u{1}\u{7f}\u{7}"), "\"\\x01\\x7f\\a\"");
        assert_eq!(go_quote("日本 ✓"), "\"日本 ✓\"");
        assert_eq!(
            go_quote("\u{a0}\u{200b}\u{85}"),
            "\"\\u00a0\\u200b\\u0085\""
        );
    }
}
