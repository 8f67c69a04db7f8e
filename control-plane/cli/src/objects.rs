//! `orca apply|get|describe|delete` of the standalone-mode objects:
//! Namespaces, ResourceQuotas and LimitRanges (as `kubectl` shows them).

use std::io::Write;

use orca_proto::controlplane::v1 as pb;
use serde_json::Value;

use super::output::{human, structured, table};
use super::{Admin as Client, CliError};
use orca_model::kind::Kind;
use orca_model::time::age;

/// The largest manifest file `orca apply -f` reads: the API server's request
/// limit (3 MiB). The server's own message limit (4 MiB) would otherwise answer
/// with a bare gRPC size error.
pub const MAX_MANIFEST_BYTES: u64 = 3 * 1024 * 1024;

/// Deepest nesting of a manifest's YAML or JSON (serde_json's own bound, which
/// the control plane applies to what it is sent).
pub const MAX_MANIFEST_DEPTH: usize = 128;

/// Reads a manifest file, refusing one larger than [`MAX_MANIFEST_BYTES`].
pub fn read_manifest(file: &std::path::Path) -> Result<String, CliError> {
    let shown = file.display();
    let size = std::fs::metadata(file)
        .map_err(|e| CliError::Usage(format!("{shown}: {e}")))?
        .len();
    if size > MAX_MANIFEST_BYTES {
        return Err(CliError::Usage(format!(
            "{shown}: the manifest is {size} bytes; the largest accepted is {MAX_MANIFEST_BYTES} \
             bytes (3 MiB, the API server's request limit)"
        )));
    }
    std::fs::read_to_string(file).map_err(|e| CliError::Usage(format!("{shown}: {e}")))
}

/// How deeply a YAML or JSON text nests, over-estimated cheaply: flow
/// collections (`[`, `{`) outside quotes, plus block indentation in steps of
/// one column. Bounding it before parsing keeps a hostile file from costing
/// minutes (a 600 KB nested file took the YAML parser 58 s).
fn nesting(text: &str) -> usize {
    let mut deepest = 0;
    let mut flow = 0usize;
    for line in text.lines() {
        let indent = line.len() - line.trim_start_matches([' ', '-']).len();
        let (mut single, mut double) = (false, false);
        for c in line.chars() {
            match c {
                '#' if !single && !double => break,
                '\'' if !double => single = !single,
                '"' if !single => double = !double,
                '[' | '{' if !single && !double => flow += 1,
                ']' | '}' if !single && !double => flow = flow.saturating_sub(1),
                _ => {}
            }
            deepest = deepest.max(flow + indent / 2);
        }
    }
    deepest
}

/// The documents of a manifest file (`---`-separated YAML, or JSON): each
/// one's text (parsed again by its kind's own parser, so YAML's integer forms
/// such as `0400` keep their meaning) and its value.
pub fn documents(text: &str) -> Result<Vec<(String, Value)>, CliError> {
    let depth = nesting(text);
    if depth > MAX_MANIFEST_DEPTH {
        return Err(CliError::Usage(format!(
            "the manifest nests {depth} levels deep; the most accepted is {MAX_MANIFEST_DEPTH}"
        )));
    }
    let mut docs = Vec::new();
    let mut chunk = String::new();
    let lines = text.lines().chain(std::iter::once("---"));
    for line in lines {
        let separator = line.strip_prefix("---").is_some_and(|rest| {
            let rest = rest.trim_start();
            rest.is_empty() || rest.starts_with('#')
        });
        if separator {
            let v: Value = serde_yaml::from_str(&chunk)
                .map_err(|e| CliError::Usage(format!("not a YAML or JSON manifest: {e}")))?;
            if !v.is_null() {
                docs.push((std::mem::take(&mut chunk), v));
            }
            chunk.clear();
        } else {
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    if docs.is_empty() {
        return Err(CliError::Usage(
            "the manifest holds no object (it is empty, or only comments and `---`)".into(),
        ));
    }
    Ok(docs)
}

/// The lowercase word `kubectl` prints before an object's name.
fn word(kind: &str) -> String {
    kind.to_ascii_lowercase()
}

/// Applies one object (any kind but Pod and PersistentVolumeClaim).
pub async fn apply(
    client: &mut Client,
    ns: &str,
    manifest: &Value,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let resp = client
        .apply_object(pb::ApplyObjectRequest {
            manifest_json: manifest.to_string(),
            namespace: ns.to_owned(),
        })
        .await?
        .into_inner();
    let o = resp.object.unwrap_or_default();
    let verb = if resp.created {
        "created"
    } else {
        "configured"
    };
    writeln!(out, "{}/{} {verb}", word(&o.kind), o.name)?;
    Ok(())
}

/// An object as `-o json|yaml` shows it: its manifest with its status.
fn value(o: &pb::StoredObject) -> Value {
    let mut v: Value = serde_json::from_str(&o.manifest_json).unwrap_or(Value::Null);
    if !o.status_json.is_empty()
        && let Ok(status) = serde_json::from_str::<Value>(&o.status_json)
    {
        v["status"] = status;
    }
    v
}

/// A ConfigMap's or Secret's keys: name, size in bytes, and (a ConfigMap's
/// text only) the value; a Secret's values are never printed, as `kubectl
/// describe` does.
fn data_entries(v: &Value) -> Vec<(String, usize, Option<String>)> {
    let secret = v["kind"] == "Secret";
    let mut out = Vec::new();
    for field in ["data", "binaryData", "stringData"] {
        for (k, value) in v[field].as_object().into_iter().flatten() {
            let text = value.as_str().unwrap_or_default();
            let size = if field == "stringData" || (field == "data" && !secret) {
                text.len()
            } else {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map(|b| b.len())
                    .unwrap_or(0)
            };
            let shown = (!secret && field == "data").then(|| text.to_owned());
            out.push((k.clone(), size, shown));
        }
    }
    out
}

/// `USED/HARD` per resource, as `kubectl get quota` lists them.
fn quota_summary(o: &pb::StoredObject) -> String {
    let status: Value = serde_json::from_str(&o.status_json).unwrap_or(Value::Null);
    status["hard"]
        .as_object()
        .map(|hard| {
            hard.iter()
                .map(|(k, h)| {
                    let used = status["used"][k].as_str().unwrap_or("0");
                    format!("{k}: {used}/{}", h.as_str().unwrap_or_default())
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

async fn fetch(
    client: &mut Client,
    kind: Kind,
    ns: &str,
    name: Option<&str>,
) -> Result<Vec<pb::StoredObject>, CliError> {
    Ok(match name {
        Some(name) => vec![
            client
                .get_object(pb::GetObjectRequest {
                    kind: kind.name().into(),
                    namespace: ns.into(),
                    name: name.into(),
                })
                .await?
                .into_inner(),
        ],
        None => {
            client
                .list_objects(pb::ListObjectsRequest {
                    kind: kind.name().into(),
                    namespace: ns.into(),
                })
                .await?
                .into_inner()
                .objects
        }
    })
}

/// `orca get KIND [NAME]`.
pub async fn get(
    client: &mut Client,
    kind: Kind,
    ns: &str,
    name: Option<String>,
    format: &str,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let list = fetch(client, kind, ns, name.as_deref()).await?;
    match format {
        "json" | "yaml" => structured(
            out,
            list.iter().map(value).collect(),
            name.is_some(),
            format,
        )?,
        _ => {
            if matches!(kind, Kind::Deployment | Kind::ReplicaSet) {
                return workload_table(kind, &list, out);
            }
            if kind == Kind::Service {
                return service_table(&list, out);
            }
            if kind == Kind::HorizontalPodAutoscaler {
                return hpa_table(&list, out);
            }
            let mut rows = vec![vec!["NAME".to_owned(), "AGE".to_owned()]];
            let data = matches!(kind, Kind::ConfigMap | Kind::Secret);
            if kind == Kind::ResourceQuota {
                rows[0].push("USED/HARD".into());
            }
            if data {
                rows[0].push("DATA".into());
            }
            for o in &list {
                let mut row = vec![o.name.clone(), human(age(o.created_at.as_ref()))];
                if kind == Kind::ResourceQuota {
                    row.push(quota_summary(o));
                }
                if data {
                    row.push(data_entries(&value(o)).len().to_string());
                }
                rows.push(row);
            }
            table(out, &rows)?;
        }
    }
    Ok(())
}

fn count(v: &Value) -> String {
    v.as_i64().unwrap_or(0).to_string()
}

/// Deployments and ReplicaSets as `kubectl get` lists them.
fn workload_table(
    kind: Kind,
    list: &[pb::StoredObject],
    out: &mut impl Write,
) -> Result<(), CliError> {
    let mut rows = vec![
        match kind {
            Kind::Deployment => ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
            _ => ["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
        }
        .map(String::from)
        .to_vec(),
    ];
    for o in list {
        let v = value(o);
        let (s, replicas) = (&v["status"], count(&v["spec"]["replicas"]));
        let age = human(age(o.created_at.as_ref()));
        rows.push(match kind {
            Kind::Deployment => vec![
                o.name.clone(),
                format!("{}/{replicas}", count(&s["readyReplicas"])),
                count(&s["updatedReplicas"]),
                count(&s["availableReplicas"]),
                age,
            ],
            _ => vec![
                o.name.clone(),
                replicas,
                count(&s["replicas"]),
                count(&s["readyReplicas"]),
                age,
            ],
        });
    }
    table(out, &rows)?;
    Ok(())
}

/// `80/TCP`, or `80:30000/TCP` with a node port, per port.
fn service_ports(v: &Value) -> String {
    v["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| match p["nodePort"].as_i64() {
            Some(n) => format!("{}:{n}/TCP", count(&p["port"])),
            None => format!("{}/TCP", count(&p["port"])),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Services as `kubectl get svc` lists them.
fn service_table(list: &[pb::StoredObject], out: &mut impl Write) -> Result<(), CliError> {
    let mut rows = vec![
        ["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "ENDPOINTS", "AGE"]
            .map(String::from)
            .to_vec(),
    ];
    for o in list {
        let v = value(o);
        let endpoints: usize = v["status"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["endpoints"].as_array().map_or(0, Vec::len))
            .max()
            .unwrap_or(0);
        rows.push(vec![
            o.name.clone(),
            v["spec"]["type"].as_str().unwrap_or("ClusterIP").to_owned(),
            v["spec"]["clusterIP"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            service_ports(&v),
            endpoints.to_string(),
            human(age(o.created_at.as_ref())),
        ]);
    }
    table(out, &rows)?;
    Ok(())
}

/// `current/target` of each metric, as `kubectl get hpa` shows them.
fn hpa_targets(v: &Value) -> String {
    let current = v["status"]["currentMetrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    v["spec"]["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let (now, target) = if m["type"] == "Pods" {
                let now = current.iter().find(|c| c["type"] == "Pods").map(|c| {
                    c["pods"]["current"]["averageValue"]
                        .as_str()
                        .unwrap_or("?")
                        .to_owned()
                });
                (
                    now,
                    m["pods"]["target"]["averageValue"]
                        .as_str()
                        .unwrap_or("?")
                        .to_owned(),
                )
            } else {
                let now = current.iter().find(|c| c["type"] == "Resource").map(|c| {
                    format!(
                        "{}%",
                        count(&c["resource"]["current"]["averageUtilization"])
                    )
                });
                (
                    now,
                    format!("{}%", count(&m["resource"]["target"]["averageUtilization"])),
                )
            };
            format!("{}/{target}", now.unwrap_or_else(|| "<unknown>".into()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// HorizontalPodAutoscalers as `kubectl get hpa` lists them.
fn hpa_table(list: &[pb::StoredObject], out: &mut impl Write) -> Result<(), CliError> {
    let mut rows = vec![
        [
            "NAME",
            "REFERENCE",
            "TARGETS",
            "MINPODS",
            "MAXPODS",
            "REPLICAS",
            "AGE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for o in list {
        let v = value(o);
        rows.push(vec![
            o.name.clone(),
            format!(
                "Deployment/{}",
                v["spec"]["scaleTargetRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
            ),
            hpa_targets(&v),
            v["spec"]["minReplicas"].as_i64().unwrap_or(1).to_string(),
            count(&v["spec"]["maxReplicas"]),
            count(&v["status"]["currentReplicas"]),
            human(age(o.created_at.as_ref())),
        ]);
    }
    table(out, &rows)?;
    Ok(())
}

/// The events of object `name` of `kind`, as `describe` ends with them.
async fn object_events(
    client: &mut Client,
    kind: Kind,
    ns: &str,
    name: &str,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let events = client
        .list_events(pb::ListEventsRequest {
            namespace: ns.into(),
            name: name.into(),
        })
        .await?
        .into_inner()
        .events;
    let events: Vec<pb::Event> = events
        .into_iter()
        .filter(|e| e.kind == kind.name())
        .collect();
    super::output::events(out, &events)?;
    Ok(())
}

/// `orca describe KIND NAME`.
pub async fn describe(
    client: &mut Client,
    kind: Kind,
    ns: &str,
    name: &str,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let o = fetch(client, kind, ns, Some(name)).await?.remove(0);
    writeln!(out, "Name:       {}", o.name)?;
    if kind.namespaced() {
        writeln!(out, "Namespace:  {}", o.namespace)?;
    }
    let v = value(&o);
    match kind {
        Kind::ResourceQuota => {
            let mut rows = vec![["Resource", "Used", "Hard"].map(String::from).to_vec()];
            for (k, h) in v["status"]["hard"].as_object().into_iter().flatten() {
                rows.push(vec![
                    k.clone(),
                    v["status"]["used"][k].as_str().unwrap_or("0").to_owned(),
                    h.as_str().unwrap_or_default().to_owned(),
                ]);
            }
            table(out, &rows)?;
        }
        Kind::LimitRange => {
            let mut rows = vec![
                [
                    "Type",
                    "Resource",
                    "Min",
                    "Max",
                    "Default Request",
                    "Default Limit",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for item in v["spec"]["limits"].as_array().into_iter().flatten() {
                let mut resources: Vec<&String> = ["min", "max", "defaultRequest", "default"]
                    .iter()
                    .filter_map(|f| item[*f].as_object())
                    .flat_map(|m| m.keys())
                    .collect();
                resources.sort();
                resources.dedup();
                for r in resources {
                    let cell = |f: &str| item[f][r].as_str().unwrap_or("-").to_owned();
                    rows.push(vec![
                        item["type"].as_str().unwrap_or_default().to_owned(),
                        r.clone(),
                        cell("min"),
                        cell("max"),
                        cell("defaultRequest"),
                        cell("default"),
                    ]);
                }
            }
            table(out, &rows)?;
        }
        Kind::ConfigMap | Kind::Secret => {
            writeln!(out, "Data")?;
            writeln!(out, "====")?;
            for (k, size, shown) in data_entries(&v) {
                match shown {
                    Some(text) => writeln!(out, "{k}:\n----\n{text}\n")?,
                    None => writeln!(out, "{k}:  {size} bytes")?,
                }
            }
        }
        Kind::Deployment | Kind::ReplicaSet => {
            let (spec, s) = (&v["spec"], &v["status"]);
            if kind == Kind::ReplicaSet {
                writeln!(out, "Revision:   {}", super::rollout::revision_of(&v))?;
            }
            writeln!(
                out,
                "Replicas:   {} desired | {} updated | {} total | {} available | {} unavailable",
                count(&spec["replicas"]),
                count(&s["updatedReplicas"]),
                count(&s["replicas"]),
                count(&s["availableReplicas"]),
                count(&s["unavailableReplicas"]),
            )?;
            if kind == Kind::Deployment {
                let strategy = spec["strategy"]["type"].as_str().unwrap_or("RollingUpdate");
                writeln!(out, "StrategyType: {strategy}")?;
                let mut rows = vec![
                    ["Type", "Status", "Reason", "Message"]
                        .map(String::from)
                        .to_vec(),
                ];
                for c in s["conditions"].as_array().into_iter().flatten() {
                    let f = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
                    rows.push(vec![f("type"), f("status"), f("reason"), f("message")]);
                }
                writeln!(out, "Conditions:")?;
                table(out, &rows)?;
            }
            object_events(client, kind, ns, name, out).await?;
        }
        Kind::Service => {
            writeln!(
                out,
                "Type:       {}",
                v["spec"]["type"].as_str().unwrap_or("ClusterIP")
            )?;
            writeln!(
                out,
                "IP:         {}",
                v["spec"]["clusterIP"].as_str().unwrap_or_default()
            )?;
            let algorithm = v["metadata"]["annotations"][orca_model::labels::LB_ALGORITHM]
                .as_str()
                .unwrap_or("round-robin");
            writeln!(out, "Balancing:  {algorithm}")?;
            writeln!(out, "Selector:   {}", v["spec"]["selector"])?;
            for p in v["status"]["ports"].as_array().into_iter().flatten() {
                writeln!(out, "Port:       {}", count(&p["port"]))?;
                let mut rows = vec![
                    ["Endpoint", "Pod", "Served", "Active"]
                        .map(String::from)
                        .to_vec(),
                ];
                for e in p["endpoints"].as_array().into_iter().flatten() {
                    let f = |k: &str| {
                        e[k].as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| count(&e[k]))
                    };
                    rows.push(vec![f("address"), f("pod"), f("served"), f("active")]);
                }
                table(out, &rows)?;
            }
            object_events(client, kind, ns, name, out).await?;
        }
        Kind::HorizontalPodAutoscaler => {
            writeln!(
                out,
                "Reference:  Deployment/{}",
                v["spec"]["scaleTargetRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
            )?;
            writeln!(out, "Metrics:    {}", hpa_targets(&v))?;
            writeln!(
                out,
                "Replicas:   {} current / {} desired",
                count(&v["status"]["currentReplicas"]),
                count(&v["status"]["desiredReplicas"])
            )?;
            object_events(client, kind, ns, name, out).await?;
        }
        Kind::Role | Kind::ClusterRole => {
            let mut rows = vec![
                ["Resources", "Resource Names", "Verbs"]
                    .map(String::from)
                    .to_vec(),
            ];
            for r in v["rules"].as_array().into_iter().flatten() {
                let list = |k: &str| {
                    r[k].as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default()
                };
                rows.push(vec![
                    list("resources"),
                    list("resourceNames"),
                    list("verbs"),
                ]);
            }
            table(out, &rows)?;
        }
        Kind::RoleBinding | Kind::ClusterRoleBinding => {
            writeln!(
                out,
                "Role:       {}/{}",
                v["roleRef"]["kind"].as_str().unwrap_or_default(),
                v["roleRef"]["name"].as_str().unwrap_or_default()
            )?;
            for s in v["subjects"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "Subject:    {} {}",
                    s["kind"].as_str().unwrap_or_default(),
                    s["name"].as_str().unwrap_or_default()
                )?;
            }
        }
        Kind::Namespace => {
            writeln!(out, "Status:     Active")?;
            let quotas = fetch(client, Kind::ResourceQuota, name, None).await?;
            for q in quotas {
                writeln!(out, "Resource quota {}: {}", q.name, quota_summary(&q))?;
            }
        }
    }
    Ok(())
}

/// `orca delete KIND NAME`.
pub async fn delete(
    client: &mut Client,
    kind: Kind,
    ns: &str,
    name: &str,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let resp = client
        .delete_object(pb::DeleteObjectRequest {
            kind: kind.name().into(),
            namespace: ns.into(),
            name: name.into(),
        })
        .await?
        .into_inner();
    if kind == Kind::Namespace {
        writeln!(
            out,
            "namespace/{name} deleted (with {} pod(s))",
            resp.pods_deleted
        )?;
    } else {
        writeln!(out, "{}/{name} deleted", word(kind.name()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_holds_several_documents() {
        let docs = documents(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: lab}\n--- # quota\napiVersion: v1\nkind: ResourceQuota\nmetadata: {name: compute, namespace: lab}\nspec: {hard: {pods: '2'}}\n---\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].1["spec"]["hard"]["pods"], "2");
        assert!(docs[0].0.contains("kind: Namespace"));
        assert!(documents("kind: [").is_err());
    }

    /// Finding 10 of the hardening review: an empty manifest did nothing and
    /// exited 0; a deeply nested one took the parser a minute.
    #[test]
    fn empty_and_deeply_nested_manifests_are_refused_at_once() {
        for empty in ["", "\n", "# nothing\n", "---\n---\n"] {
            let e = documents(empty).unwrap_err().to_string();
            assert!(e.contains("holds no object"), "{empty:?}: {e}");
        }
        let deep = format!("a: {}1{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let e = documents(&deep).unwrap_err().to_string();
        assert!(e.contains("nests 100000 levels deep"), "{e}");
        let shallow = format!("a: {}1{}\n", "[".repeat(20), "]".repeat(20));
        assert_eq!(documents(&shallow).unwrap().len(), 1);
    }
}
