//! The Deployment controller: one ReplicaSet per pod template (named by the
//! template's hash, numbered by revision), moved by the strategy one step per
//! pass ([`super::rolling`]); the status Kubernetes reports (replicas,
//! updated, ready, available; conditions Available and Progressing, with
//! `ProgressDeadlineExceeded` when the rollout made no progress for
//! `progressDeadlineSeconds`); old ReplicaSets kept up to
//! `revisionHistoryLimit` for `orca rollout undo`.
//!
//! A rollout whose new pods never become Ready stops by itself: the old pods
//! are only given up as new ones become available (`maxUnavailable`), and the
//! new set grows no further than `maxSurge`. The deadline reports it.

use std::collections::BTreeMap;

use orca_proto::controlplane::v1 as pb;
use serde_json::{Value, json};

use super::Workloads;
use super::rolling::{self, Set};
use super::{Memory, REVISION, TEMPLATE_HASH, World, manifest, suffix};
use crate::objects::{Kind, key};
use crate::shared::{ClusterError, now};

/// Default `progressDeadlineSeconds`.
const DEFAULT_PROGRESS_DEADLINE_S: i64 = 600;
/// Default `revisionHistoryLimit`.
const DEFAULT_HISTORY: usize = 10;

/// The JSON of `v` with every object's keys sorted.
fn canonical(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let m: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sorted(v))).collect();
                json!(m)
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

/// The hash naming a template's ReplicaSet (10 characters of Kubernetes'
/// alphabet, from SHA-256 of the template without its hash label).
pub fn template_hash(template: &Value) -> String {
    let mut t = template.clone();
    if let Some(labels) = t["metadata"]["labels"].as_object_mut() {
        labels.remove(TEMPLATE_HASH);
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical(&t).as_bytes());
    suffix(digest.as_ref(), 10)
}

pub use orca_model::labels::revision;

/// Whether a ReplicaSet belongs to Deployment `d`.
fn owned_by(rs: &pb::StoredObject, d: &pb::StoredObject) -> bool {
    rs.namespace == d.namespace
        && manifest(rs)["metadata"]["ownerReferences"]
            .as_array()
            .and_then(|o| o.first())
            .is_some_and(|o| o["uid"] == d.uid.as_str())
}

/// The new ReplicaSet of Deployment `d` for its template.
fn new_replicaset(d: &pb::StoredObject, dm: &Value, hash: &str, revision: i64) -> pb::StoredObject {
    let name = format!("{}-{hash}", d.name);
    let mut template = dm["spec"]["template"].clone();
    template["metadata"]["labels"][TEMPLATE_HASH] = json!(hash);
    let mut selector = dm["spec"]["selector"].clone();
    selector["matchLabels"][TEMPLATE_HASH] = json!(hash);
    let mut annotations = json!({REVISION: revision.to_string()});
    if let Some(cause) = dm["metadata"]["annotations"]["kubernetes.io/change-cause"].as_str() {
        annotations["kubernetes.io/change-cause"] = json!(cause);
    }
    let uid = uuid::Uuid::new_v4().to_string();
    let m = json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name, "namespace": d.namespace, "uid": uid, "generation": 1,
            "labels": template["metadata"]["labels"].clone(),
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": d.name, "uid": d.uid, "controller": true}],
        },
        "spec": {"replicas": 0, "selector": selector, "template": template},
    });
    pb::StoredObject {
        kind: Kind::ReplicaSet.name().into(),
        namespace: d.namespace.clone(),
        name,
        uid,
        manifest_json: m.to_string(),
        status_json: String::new(),
        created_at: Some(now()),
    }
}

fn timestamp() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

fn seconds_since(t: &Value) -> i64 {
    t.as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| (jiff::Timestamp::now() - t).get_seconds())
        .unwrap_or(0)
}

/// A Deployment as one pass sees it after stepping: its manifest, its
/// ReplicaSets (by revision, with their manifests) and which is the new one.
#[derive(Clone, Copy)]
struct State<'a> {
    d: &'a pb::StoredObject,
    dm: &'a Value,
    sets: &'a [(pb::StoredObject, Value)],
    new_at: usize,
    world: &'a World,
}

impl Workloads {
    /// One pass over one Deployment; whether it wrote anything.
    pub(super) async fn reconcile_deployment(
        &self,
        d: &pb::StoredObject,
        world: &World,
        memory: &Memory,
    ) -> Result<bool, ClusterError> {
        let (ns, name) = (d.namespace.as_str(), d.name.as_str());
        let dm = manifest(d);
        let spec = &dm["spec"];
        let replicas = spec["replicas"].as_i64().unwrap_or(1) as i32;
        let hash = template_hash(&spec["template"]);
        let mut sets: Vec<(pb::StoredObject, Value)> = world
            .replicasets
            .iter()
            .filter(|rs| owned_by(rs, d))
            .map(|rs| (rs.clone(), manifest(rs)))
            .collect();
        sets.sort_by_key(|(_, m)| revision(m));
        let top = sets.last().map(|(_, m)| revision(m)).unwrap_or(0);
        let mut wrote = false;
        let new_at = match sets
            .iter()
            .position(|(_, m)| m["metadata"]["labels"][TEMPLATE_HASH] == hash.as_str())
        {
            Some(i) if revision(&sets[i].1) == top => i,
            Some(i) => {
                // An older template is back (`rollout undo`): its set becomes
                // the newest revision.
                let (mut rs, mut m) = sets.remove(i);
                let from = revision(&m);
                let next = json!((top + 1).to_string());
                m["metadata"]["annotations"][REVISION] = next.clone();
                rs.manifest_json = m.to_string();
                self.patch_manifest(Kind::ReplicaSet, ns, &rs.name, |m| {
                    m["metadata"]["annotations"][REVISION] = next.clone();
                })?;
                self.shared.event(
                    "Deployment",
                    ns,
                    name,
                    false,
                    "DeploymentRollback",
                    format!(
                        "Rolled back to the template of revision {from}, now revision {}",
                        top + 1
                    ),
                );
                sets.push((rs, m));
                wrote = true;
                sets.len() - 1
            }
            None => {
                let rs = new_replicaset(d, &dm, &hash, top + 1);
                self.shared
                    .store()
                    .objects
                    .create(&key(Kind::ReplicaSet, ns, &rs.name), &rs)?;
                self.shared.event(
                    "Deployment",
                    ns,
                    name,
                    false,
                    "NewReplicaSet",
                    format!("Created replica set {} for revision {}", rs.name, top + 1),
                );
                let m = manifest(&rs);
                sets.push((rs, m));
                wrote = true;
                sets.len() - 1
            }
        };
        let state = |(rs, m): &(pb::StoredObject, Value)| {
            let members = world.members(ns, &rs.name);
            Set {
                desired: m["spec"]["replicas"].as_i64().unwrap_or(0) as i32,
                pods: members.iter().filter(|p| !p.finished).count() as i32,
                available: members.iter().filter(|p| p.ready).count() as i32,
            }
        };
        let new = state(&sets[new_at]);
        let old: Vec<Set> = sets
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != new_at)
            .map(|(_, s)| state(s))
            .collect();

        let strategy = &spec["strategy"];
        let (surge, unavailable) = rolling::bounds(
            replicas,
            serde_json::from_value(strategy["rollingUpdate"]["maxSurge"].clone())
                .ok()
                .as_ref(),
            serde_json::from_value(strategy["rollingUpdate"]["maxUnavailable"].clone())
                .ok()
                .as_ref(),
        )
        .unwrap_or((1, 0));
        if spec["paused"] != json!(true) {
            let (new_desired, old_desired) = if strategy["type"] == "Recreate" {
                rolling::recreate_step(replicas, &old)
            } else {
                rolling::rolling_step(replicas, surge, unavailable, new, &old)
            };
            let mut desired = old_desired.into_iter();
            for (i, (rs, m)) in sets.iter_mut().enumerate() {
                let want = if i == new_at {
                    new_desired
                } else {
                    desired.next().unwrap_or(0)
                };
                let had = m["spec"]["replicas"].as_i64().unwrap_or(0) as i32;
                if had != want {
                    m["spec"]["replicas"] = json!(want);
                    rs.manifest_json = m.to_string();
                    self.patch_manifest(Kind::ReplicaSet, ns, &rs.name, |m| {
                        m["spec"]["replicas"] = json!(want);
                    })?;
                    let verb = if want > had { "up" } else { "down" };
                    self.shared.event(
                        "Deployment",
                        ns,
                        name,
                        false,
                        "ScalingReplicaSet",
                        format!("Scaled {verb} replica set {} from {had} to {want}", rs.name),
                    );
                    wrote = true;
                }
            }
        }
        let state = State {
            d,
            dm: &dm,
            sets: &sets,
            new_at,
            world,
        };
        wrote |= self.prune_history(&state)?;
        wrote |= self.deployment_status(&state, unavailable, memory)?;
        Ok(wrote)
    }

    /// Deletes empty old ReplicaSets beyond `revisionHistoryLimit`.
    fn prune_history(&self, state: &State<'_>) -> Result<bool, ClusterError> {
        let State {
            d,
            dm,
            sets,
            new_at,
            world,
        } = *state;
        let limit = dm["spec"]["revisionHistoryLimit"]
            .as_u64()
            .map(|l| l as usize)
            .unwrap_or(DEFAULT_HISTORY);
        let empty: Vec<&pb::StoredObject> = sets
            .iter()
            .enumerate()
            .filter(|(i, (rs, m))| {
                *i != new_at
                    && m["spec"]["replicas"].as_i64() == Some(0)
                    && world.members(&rs.namespace, &rs.name).is_empty()
            })
            .map(|(_, (rs, _))| rs)
            .collect();
        let extra = empty.len().saturating_sub(limit);
        for rs in &empty[..extra] {
            self.shared
                .store()
                .objects
                .remove(&key(Kind::ReplicaSet, &rs.namespace, &rs.name))?;
            self.shared.event(
                "Deployment",
                &d.namespace,
                &d.name,
                false,
                "DeletedReplicaSet",
                format!(
                    "Deleted replica set {} (beyond revisionHistoryLimit {limit})",
                    rs.name
                ),
            );
        }
        Ok(extra > 0)
    }

    /// Writes the Deployment's status when it changed.
    fn deployment_status(
        &self,
        state: &State<'_>,
        unavailable: i32,
        memory: &Memory,
    ) -> Result<bool, ClusterError> {
        let State {
            d,
            dm,
            sets,
            new_at,
            world,
        } = *state;
        let (ns, name) = (d.namespace.as_str(), d.name.as_str());
        let replicas = dm["spec"]["replicas"].as_i64().unwrap_or(1);
        let count = |rs: &pb::StoredObject, f: &dyn Fn(&super::Member) -> bool| {
            world.members(ns, &rs.name).iter().filter(|p| f(p)).count() as i64
        };
        let new_rs = &sets[new_at].0;
        let all: i64 = sets.iter().map(|(rs, _)| count(rs, &|p| !p.finished)).sum();
        let ready: i64 = sets.iter().map(|(rs, _)| count(rs, &|p| p.ready)).sum();
        let updated = count(new_rs, &|p| !p.finished);
        let new_ready = count(new_rs, &|p| p.ready);
        let old_pods = all - updated;
        let previous: Value = serde_json::from_str(&d.status_json).unwrap_or(json!({}));
        let generation = dm["metadata"]["generation"].as_i64().unwrap_or(1);

        let complete = updated == replicas && new_ready == replicas && old_pods == 0;
        let marker = format!("{generation}:{updated}:{new_ready}:{old_pods}");
        let moved = previous["progressMarker"] != marker.as_str();
        let mut last_progress = previous["progressTime"].clone();
        if moved || last_progress.is_null() {
            last_progress = json!(timestamp());
        }
        let deadline = dm["spec"]["progressDeadlineSeconds"]
            .as_i64()
            .unwrap_or(DEFAULT_PROGRESS_DEADLINE_S);
        let (status, reason, message) = if complete {
            (
                "True",
                "NewReplicaSetAvailable",
                format!(
                    "ReplicaSet \"{}\" has successfully progressed.",
                    new_rs.name
                ),
            )
        } else if seconds_since(&last_progress) > deadline {
            (
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{}\" has timed out progressing.", new_rs.name),
            )
        } else {
            (
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{}\" is progressing.", new_rs.name),
            )
        };
        let old_progressing = &previous["conditions"][1];
        let transitioned = old_progressing["reason"] != reason;
        let available_ok = ready >= replicas - i64::from(unavailable);
        let condition = |type_: &str, status: &str, reason: &str, message: String, old: &Value| {
            let changed = old["status"] != status || old["reason"] != reason;
            json!({
                "type": type_, "status": status, "reason": reason, "message": message,
                "lastUpdateTime": if changed { json!(timestamp()) } else { old["lastUpdateTime"].clone() },
                "lastTransitionTime": if old["status"] != status || old.is_null() { json!(timestamp()) } else { old["lastTransitionTime"].clone() },
            })
        };
        let status_json = json!({
            "observedGeneration": generation,
            "replicas": all,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": (replicas - ready).max(0),
            "conditions": [
                condition("Available",
                    if available_ok { "True" } else { "False" },
                    if available_ok { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                    if available_ok { "Deployment has minimum availability.".into() } else { "Deployment does not have minimum availability.".into() },
                    &previous["conditions"][0]),
                condition("Progressing", status, reason, message.clone(), old_progressing),
            ],
            "progressMarker": marker,
            "progressTime": last_progress,
        });
        if transitioned && reason == "ProgressDeadlineExceeded" {
            let k = key(Kind::Deployment, ns, name);
            if memory.first_warning(&k, &message) {
                self.shared.event(
                    "Deployment",
                    ns,
                    name,
                    true,
                    "ProgressDeadlineExceeded",
                    message,
                );
            }
        }
        if transitioned && reason == "NewReplicaSetAvailable" {
            memory.clear_warning(&key(Kind::Deployment, ns, name));
            self.shared.event("Deployment", ns, name, false, "RolloutComplete",
                format!("Deployment {name} has {replicas} up-to-date, available replicas (replica set {})", new_rs.name));
        }
        // The status is written only when something but the clock changed.
        let mut before = previous.clone();
        let mut after = status_json.clone();
        for v in [&mut before, &mut after] {
            for c in v["conditions"].as_array_mut().into_iter().flatten() {
                c.as_object_mut().map(|c| {
                    c.remove("lastUpdateTime");
                    c.remove("lastTransitionTime")
                });
            }
            v.as_object_mut().map(|v| v.remove("progressTime"));
        }
        if before == after {
            return Ok(false);
        }
        let status_json = status_json.to_string();
        self.patch_object(Kind::Deployment, ns, name, |o| {
            o.status_json = status_json.clone();
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::validation::validate;

    fn deployment(extra: Value) -> Value {
        let mut d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
            }
        });
        merge(&mut d, extra);
        d
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn templates_hash_the_same_whatever_the_key_order_and_hash_label() {
        let a = json!({"metadata": {"labels": {"app": "web", "tier": "x"}}, "spec": {"containers": []}});
        let b = json!({"spec": {"containers": []}, "metadata": {"labels": {"tier": "x", "app": "web", TEMPLATE_HASH: "old"}}});
        assert_eq!(template_hash(&a), template_hash(&b));
        let c = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}});
        assert_ne!(template_hash(&a), template_hash(&c));
        assert_eq!(template_hash(&a).len(), 10);
    }

    #[test]
    fn deployments_are_checked_naming_the_field() {
        assert!(validate(&deployment(json!({}))).is_ok());
        let e = validate(&deployment(
            json!({"spec": {"selector": {"matchLabels": {"app": "db"}}}}),
        ))
        .unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        let e = validate(&deployment(json!({"spec": {"strategy": {"type": "Blue"}}}))).unwrap_err();
        assert!(e.contains("spec.strategy.type"), "{e}");
        let e = validate(&deployment(
            json!({"spec": {"strategy": {"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}}}),
        ))
        .unwrap_err();
        assert!(e.contains("Recreate"), "{e}");
        let e = validate(&deployment(
            json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": "x%"}}}}),
        ))
        .unwrap_err();
        assert!(e.contains("maxSurge"), "{e}");
        let e = validate(&deployment(
            json!({"spec": {"template": {"spec": {"restartPolicy": "Never"}}}}),
        ))
        .unwrap_err();
        assert!(e.contains("restartPolicy"), "{e}");
    }
}
