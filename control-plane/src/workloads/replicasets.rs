//! The ReplicaSet controller: keeps `spec.replicas` pods from the set's
//! template, created through standalone admission (a quota that has no room
//! is a `FailedCreate` Event, and the set tries again next pass). Extra pods go
//! unscheduled first, then not Ready, then newest, as in Kubernetes. Finished
//! pods (a template with restartPolicy Always restarts containers in place, so
//! these are pods that failed as a whole) are removed and replaced. A set whose
//! Deployment is gone is emptied, then deleted.

use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1 as types;
use serde_json::{Value, json};

use super::Workloads;
use super::{CONTROLLED_BY, Member, Memory, World, manifest, suffix};
use crate::objects::{Kind, key};
use crate::shared::ClusterError;

/// The order in which a set gives up pods: unscheduled, not Ready, newest.
fn victims(live: &[&Member], count: usize) -> Vec<String> {
    let mut order: Vec<&&Member> = live.iter().collect();
    order.sort_by_key(|m| (m.scheduled, m.ready, std::cmp::Reverse(m.created)));
    order
        .into_iter()
        .take(count)
        .map(|m| m.name.clone())
        .collect()
}

/// Whether the Deployment an owner reference names still exists.
fn owner_exists(cluster: &Workloads, ns: &str, m: &Value) -> Result<bool, ClusterError> {
    let Some(owner) = m["metadata"]["ownerReferences"]
        .as_array()
        .and_then(|o| o.first())
    else {
        return Ok(true);
    };
    let name = owner["name"].as_str().unwrap_or_default();
    Ok(cluster
        .shared
        .store()
        .objects
        .get(&key(Kind::Deployment, ns, name))?
        .is_some_and(|d| d.uid == owner["uid"].as_str().unwrap_or_default()))
}

/// A new pod of set `rs` (its template, its owner annotation).
fn pod_from_template(ns: &str, rs: &str, template: &Value) -> Result<types::Pod, String> {
    let spec = &template["spec"];
    if !spec.is_object() {
        return Err("the template has no spec".into());
    }
    let strings = |v: &Value| -> std::collections::HashMap<String, String> {
        v.as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect()
    };
    let mut annotations = strings(&template["metadata"]["annotations"]);
    annotations.insert(CONTROLLED_BY.into(), format!("ReplicaSet/{rs}"));
    let id = uuid::Uuid::new_v4();
    Ok(types::Pod {
        r#ref: Some(types::PodRef {
            namespace: ns.into(),
            name: format!("{rs}-{}", suffix(id.as_bytes(), 5)),
            ..Default::default()
        }),
        spec_json: spec.to_string(),
        labels: strings(&template["metadata"]["labels"]),
        annotations,
    })
}

impl Workloads {
    /// One pass over one ReplicaSet; whether it wrote anything.
    pub(super) async fn reconcile_replicaset(
        &self,
        rs: &pb::StoredObject,
        world: &World,
        memory: &Memory,
    ) -> Result<bool, ClusterError> {
        let (ns, name) = (rs.namespace.as_str(), rs.name.as_str());
        let m = manifest(rs);
        let orphan = !owner_exists(self, ns, &m)?;
        let desired = if orphan {
            0
        } else {
            m["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize
        };
        let members = world.members(ns, name);
        for done in members.iter().filter(|p| p.finished) {
            self.stop_member(memory, ns, &done.name);
        }
        let active: Vec<&Member> = members.iter().filter(|p| !p.finished).collect();
        if orphan && active.is_empty() {
            self.shared
                .store()
                .objects
                .remove(&key(Kind::ReplicaSet, ns, name))?;
            self.shared.event(
                "ReplicaSet",
                ns,
                name,
                false,
                "Deleted",
                format!("its Deployment is gone; replica set {name} deleted"),
            );
            return Ok(true);
        }
        let live: Vec<&Member> = active.iter().copied().filter(|p| !p.stopping).collect();
        let k = key(Kind::ReplicaSet, ns, name);
        if live.len() < desired {
            for _ in live.len()..desired {
                let created = match pod_from_template(ns, name, &m["spec"]["template"]) {
                    Ok(pod) => self.objects.create_admitted_pod(pod).await,
                    Err(why) => Err(ClusterError::Invalid(why)),
                };
                match created {
                    Ok(record) => {
                        memory.clear_warning(&k);
                        let (_, pod) = crate::pods::names(&record);
                        self.shared.event(
                            "ReplicaSet",
                            ns,
                            name,
                            false,
                            "SuccessfulCreate",
                            format!("Created pod: {pod}"),
                        );
                    }
                    Err(e) => {
                        let message = format!("Error creating: {e}");
                        if memory.first_warning(&k, &message) {
                            self.shared.event(
                                "ReplicaSet",
                                ns,
                                name,
                                true,
                                "FailedCreate",
                                message,
                            );
                        }
                        break;
                    }
                }
            }
        } else if live.len() > desired {
            for victim in victims(&live, live.len() - desired) {
                self.stop_member(memory, ns, &victim);
                self.shared.event(
                    "ReplicaSet",
                    ns,
                    name,
                    false,
                    "SuccessfulDelete",
                    format!("Deleted pod: {victim}"),
                );
            }
        }
        let ready = active.iter().filter(|p| p.ready).count();
        let status = json!({
            "replicas": active.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": m["metadata"]["generation"].as_i64().unwrap_or(1),
        })
        .to_string();
        if status != rs.status_json {
            return self.patch_object(Kind::ReplicaSet, ns, name, |o| {
                o.status_json = status.clone();
            });
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, scheduled: bool, ready: bool, created: i64) -> Member {
        Member {
            name: name.into(),
            scheduled,
            ready,
            stopping: false,
            finished: false,
            created,
        }
    }

    #[test]
    fn extra_pods_go_unscheduled_then_unready_then_newest() {
        let pods = [
            member("old-ready", true, true, 1),
            member("new-ready", true, true, 5),
            member("unready", true, false, 2),
            member("pending", false, false, 3),
        ];
        let live: Vec<&Member> = pods.iter().collect();
        assert_eq!(victims(&live, 3), ["pending", "unready", "new-ready"]);
    }

    #[test]
    fn pods_carry_the_template_and_their_owner() {
        let template = json!({
            "metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}, "annotations": {"note": "x"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        });
        let pod = pod_from_template("lab", "web-abc", &template).unwrap();
        let r = pod.r#ref.unwrap();
        assert!(
            r.name.starts_with("web-abc-") && r.name.len() == 13,
            "{}",
            r.name
        );
        assert_eq!(r.namespace, "lab");
        assert_eq!(pod.labels["pod-template-hash"], "abc");
        assert_eq!(pod.annotations[CONTROLLED_BY], "ReplicaSet/web-abc");
        assert_eq!(pod.annotations["note"], "x");
        assert!(pod.spec_json.contains("busybox"));
        assert!(pod_from_template("lab", "x", &json!({})).is_err());
    }
}
