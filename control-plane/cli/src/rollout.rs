//! `orca rollout status|history|undo` and `orca scale`, for Deployments, as
//! `kubectl` does them: from the Deployment's status and its ReplicaSets
//! (one per revision); undo and scale apply a changed Deployment.

use std::io::Write;
use std::time::{Duration, Instant};

use orca_proto::controlplane::v1 as pb;
use serde_json::{Value, json};

use super::output::table;
use super::{Admin as Client, CliError};
use orca_model::kind::Kind;
use orca_model::labels::{REVISION, TEMPLATE_HASH};

/// What `rollout` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Wait until the rollout completes or exceeds its progress deadline.
    Status,
    /// List the revisions.
    History,
    /// Go back to the previous revision (or `--to-revision`).
    Undo,
}

/// `deployment/NAME`, `deploy/NAME` or `NAME`: the Deployment's name.
pub fn deployment_name(target: &str) -> Result<String, CliError> {
    match target.split_once('/') {
        None => Ok(target.to_owned()),
        Some((kind, name)) if Kind::parse(kind) == Some(Kind::Deployment) => Ok(name.to_owned()),
        Some((kind, _)) => Err(CliError::Usage(format!(
            "{kind}: only deployments roll out and scale here (deployment/NAME)"
        ))),
    }
}

async fn get(client: &mut Client, kind: Kind, ns: &str, name: &str) -> Result<Value, CliError> {
    let o = client
        .get_object(pb::GetObjectRequest {
            kind: kind.name().into(),
            namespace: ns.into(),
            name: name.into(),
        })
        .await?
        .into_inner();
    let mut v: Value = serde_json::from_str(&o.manifest_json).unwrap_or(Value::Null);
    v["status"] = serde_json::from_str(&o.status_json).unwrap_or(Value::Null);
    Ok(v)
}

/// The ReplicaSets of Deployment `d`, by revision.
async fn revisions(
    client: &mut Client,
    ns: &str,
    d: &Value,
) -> Result<Vec<(i64, Value)>, CliError> {
    let list = client
        .list_objects(pb::ListObjectsRequest {
            kind: Kind::ReplicaSet.name().into(),
            namespace: ns.into(),
        })
        .await?
        .into_inner()
        .objects;
    let mut out: Vec<(i64, Value)> = list
        .iter()
        .filter_map(|o| serde_json::from_str::<Value>(&o.manifest_json).ok())
        .filter(|m| m["metadata"]["ownerReferences"][0]["uid"] == d["metadata"]["uid"])
        .map(|m| (orca_model::labels::revision(&m), m))
        .collect();
    out.sort_by_key(|(r, _)| *r);
    Ok(out)
}

async fn apply(client: &mut Client, d: &Value) -> Result<(), CliError> {
    let mut d = d.clone();
    d.as_object_mut().map(|m| m.remove("status"));
    client
        .apply_object(pb::ApplyObjectRequest {
            manifest_json: d.to_string(),
            namespace: String::new(),
        })
        .await?;
    Ok(())
}

/// `orca rollout ACTION deployment/NAME`.
pub async fn rollout(
    client: &mut Client,
    ns: &str,
    action: Action,
    target: &str,
    to_revision: Option<i64>,
    timeout: Duration,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let name = deployment_name(target)?;
    match action {
        Action::Status => {
            let start = Instant::now();
            let mut last = String::new();
            loop {
                let d = get(client, Kind::Deployment, ns, &name).await?;
                let (done, line) = progress(&d);
                if line != last {
                    writeln!(out, "{line}")?;
                    out.flush()?;
                    last = line.clone();
                }
                match done {
                    Some(true) => return Ok(()),
                    Some(false) => return Err(CliError::Usage(line)),
                    None if start.elapsed() > timeout => {
                        return Err(CliError::Timeout(
                            timeout,
                            format!("deployment {name:?} has not rolled out: {line}"),
                        ));
                    }
                    None => tokio::time::sleep(super::POLL * 10).await,
                }
            }
        }
        Action::History => {
            let d = get(client, Kind::Deployment, ns, &name).await?;
            writeln!(out, "deployment.apps/{name}")?;
            let mut rows = vec![vec![
                "REVISION".to_owned(),
                "CHANGE-CAUSE".to_owned(),
                "REPLICASET".to_owned(),
            ]];
            for (rev, m) in revisions(client, ns, &d).await? {
                rows.push(vec![
                    rev.to_string(),
                    m["metadata"]["annotations"]["kubernetes.io/change-cause"]
                        .as_str()
                        .unwrap_or("<none>")
                        .to_owned(),
                    m["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                ]);
            }
            table(out, &rows)?;
            Ok(())
        }
        Action::Undo => {
            let mut d = get(client, Kind::Deployment, ns, &name).await?;
            let revs = revisions(client, ns, &d).await?;
            let current = revs.last().map(|(r, _)| *r).unwrap_or(0);
            let target = match to_revision {
                Some(r) => revs.iter().find(|(rev, _)| *rev == r).ok_or_else(|| {
                    CliError::Usage(format!("unable to find the specified revision {r}"))
                })?,
                None => revs
                    .iter()
                    .rev()
                    .find(|(r, _)| *r < current)
                    .ok_or_else(|| {
                        CliError::Usage(format!("no rollout history found for deployment {name:?}"))
                    })?,
            };
            let mut template = target.1["spec"]["template"].clone();
            if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
                labels.remove(TEMPLATE_HASH);
            }
            if d["spec"]["template"] == template {
                writeln!(
                    out,
                    "deployment.apps/{name} skipped rollback (current template already matches revision {})",
                    target.0
                )?;
                return Ok(());
            }
            d["spec"]["template"] = template;
            apply(client, &d).await?;
            writeln!(out, "deployment.apps/{name} rolled back")?;
            Ok(())
        }
    }
}

/// Whether a Deployment's rollout is done (`Some(true)`), failed
/// (`Some(false)`) or going on, and the line `kubectl` prints for it.
fn progress(d: &Value) -> (Option<bool>, String) {
    let name = d["metadata"]["name"].as_str().unwrap_or_default();
    let s = &d["status"];
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let progressing = s["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Progressing");
    // As kubectl: a status older than the spec says nothing yet.
    if n(&s["observedGeneration"]) < n(&d["metadata"]["generation"]) {
        return (
            None,
            "Waiting for deployment spec update to be observed...".into(),
        );
    }
    if progressing.is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded") {
        return (
            Some(false),
            format!("error: deployment {name:?} exceeded its progress deadline"),
        );
    }
    let (updated, all, available) = (
        n(&s["updatedReplicas"]),
        n(&s["replicas"]),
        n(&s["availableReplicas"]),
    );
    if updated < replicas {
        (
            None,
            format!(
                "Waiting for deployment {name:?} rollout to finish: {updated} out of {replicas} new replicas have been updated..."
            ),
        )
    } else if all > updated {
        (
            None,
            format!(
                "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...",
                all - updated
            ),
        )
    } else if available < updated {
        (
            None,
            format!(
                "Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available..."
            ),
        )
    } else {
        (
            Some(true),
            format!("deployment {name:?} successfully rolled out"),
        )
    }
}

/// `orca scale deployment/NAME --replicas N`.
pub async fn scale(
    client: &mut Client,
    ns: &str,
    target: &str,
    replicas: u32,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let name = deployment_name(target)?;
    let mut d = get(client, Kind::Deployment, ns, &name).await?;
    d["spec"]["replicas"] = json!(replicas);
    apply(client, &d).await?;
    writeln!(out, "deployment.apps/{name} scaled")?;
    Ok(())
}

/// A ReplicaSet's revision, for `describe`.
pub fn revision_of(m: &Value) -> String {
    m["metadata"]["annotations"][REVISION]
        .as_str()
        .unwrap_or("?")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_deployments() {
        assert_eq!(deployment_name("deployment/web").unwrap(), "web");
        assert_eq!(deployment_name("deploy/web").unwrap(), "web");
        assert_eq!(deployment_name("web").unwrap(), "web");
        assert!(deployment_name("pod/web").is_err());
    }

    #[test]
    fn progress_reads_like_kubectl() {
        let d = |status: Value| json!({"metadata": {"name": "web", "generation": 2}, "spec": {"replicas": 3}, "status": status});
        let (done, line) = progress(&d(
            json!({"observedGeneration": 2, "updatedReplicas": 1, "replicas": 4, "availableReplicas": 3}),
        ));
        assert_eq!(done, None);
        assert!(line.contains("1 out of 3 new replicas"), "{line}");
        let (done, _) = progress(&d(
            json!({"observedGeneration": 2, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 3}),
        ));
        assert_eq!(done, Some(true));
        let (done, line) = progress(&d(
            json!({"observedGeneration": 2, "conditions": [{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]}),
        ));
        assert_eq!(done, Some(false));
        assert!(line.contains("exceeded its progress deadline"));
        let (stale, _) = progress(&d(
            json!({"observedGeneration": 1, "conditions": [{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]}),
        ));
        assert_eq!(
            stale, None,
            "an old deadline says nothing about a newer spec"
        );
        let (done, _) = progress(&d(
            json!({"observedGeneration": 1, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 3}),
        ));
        assert_eq!(done, None);
    }
}
