//! Standalone mode's workload controllers: Deployments keep a ReplicaSet per
//! pod template and move pods between them by their strategy
//! ([`deployments`], [`rolling`]); ReplicaSets keep their number of pods
//! ([`replicasets`]). As in Kubernetes, the Deployment owns its ReplicaSets
//! (`ownerReferences`), and each ReplicaSet owns its pods; a pod's owner is
//! its `orca.research/controlled-by` annotation (`ReplicaSet/NAME`), since the
//! pod record has no owner references of its own.
//!
//! One loop runs both, level-triggered: it wakes on every change to pods or
//! objects (the store's watch) and every reconcile interval, reads everything
//! once, and acts on the difference between what is asked and what exists.
//! Every decision it takes is an Event on the object that took it.
//! Pods are stopped in the background; until gone they still count as the
//! ReplicaSet's (see [`rolling`] for why).

pub mod deployments;
pub mod replicasets;
pub mod rolling;
pub mod selector;
pub mod validation;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1::PodPhase;
use serde_json::Value;
use tracing::warn;

use crate::objects::{Kind, key};
use crate::pods::ready;
use crate::pods::{names, phase};
use crate::shared::{ClusterError, Shared};

pub use orca_model::labels::{REVISION, TEMPLATE_HASH};
/// The annotation naming a pod's controller (`ReplicaSet/NAME`).
pub use orca_model::selection::annotations::CONTROLLED_BY;

/// What the controllers remember between passes, in memory only: the pods
/// they are stopping (by `namespace/name`), and the last warning each object
/// got (a failure repeated every pass is one Event, not one per pass).
#[derive(Clone, Default)]
pub struct Memory {
    stopping: Arc<Mutex<HashSet<String>>>,
    warned: Arc<Mutex<HashMap<String, String>>>,
}

impl Memory {
    /// Marks `k` as being stopped; false when it already was.
    fn start_stopping(&self, k: &str) -> bool {
        self.stopping
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(k.to_owned())
    }

    fn stopped(&self, k: &str) {
        self.stopping
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(k);
    }

    /// Whether `message` is news for object `k` (then remembered).
    fn first_warning(&self, k: &str, message: &str) -> bool {
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        if warned.get(k).is_some_and(|m| m == message) {
            return false;
        }
        warned.insert(k.to_owned(), message.to_owned());
        true
    }

    /// Object `k` is fine again.
    fn clear_warning(&self, k: &str) {
        self.warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(k);
    }
}

/// A pod as the controllers see it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its name.
    pub name: String,
    /// Bound to a node.
    pub scheduled: bool,
    /// Running with its Ready condition True, and not being stopped.
    pub ready: bool,
    /// Being stopped by a controller.
    pub stopping: bool,
    /// Finished (Succeeded or Failed): no longer one of the replicas.
    pub finished: bool,
    /// When it was created (seconds).
    pub created: i64,
}

/// The owner a pod's annotation names, if it is a ReplicaSet.
fn owner(record: &pb::PodRecord) -> Option<&str> {
    record
        .pod
        .as_ref()?
        .annotations
        .get(CONTROLLED_BY)?
        .strip_prefix("ReplicaSet/")
}

/// Everything one pass reads, once.
pub struct World {
    /// Pods of each ReplicaSet, by `namespace/rs-name`.
    pub members: HashMap<String, Vec<Member>>,
    /// Deployments and ReplicaSets as stored.
    pub deployments: Vec<pb::StoredObject>,
    /// ReplicaSets as stored.
    pub replicasets: Vec<pb::StoredObject>,
}

impl World {
    fn read(cluster: &Workloads, memory: &Memory) -> Result<Self, ClusterError> {
        let mut members: HashMap<String, Vec<Member>> = HashMap::new();
        // The pods being stopped, taken before the listing: a pod listed
        // after its stop began is never seen live.
        let stopping_now: HashSet<String> = memory
            .stopping
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for record in cluster.shared.store().pods.scan("")? {
            let Some(rs) = owner(&record) else { continue };
            let (ns, name) = names(&record);
            let stopping = stopping_now.contains(&crate::pods::key(&ns, &name));
            let finished = matches!(phase(&record), PodPhase::Succeeded | PodPhase::Failed);
            members
                .entry(format!("{ns}/{rs}"))
                .or_default()
                .push(Member {
                    scheduled: !record.node_name.is_empty(),
                    ready: ready(&record) && !stopping,
                    stopping,
                    finished,
                    created: record.created_at.map(|t| t.seconds).unwrap_or_default(),
                    name,
                });
        }
        Ok(Self {
            members,
            deployments: cluster
                .shared
                .store()
                .objects
                .scan(&format!("{}/", Kind::Deployment.name()))?,
            replicasets: cluster
                .shared
                .store()
                .objects
                .scan(&format!("{}/", Kind::ReplicaSet.name()))?,
        })
    }

    /// The pods of ReplicaSet `ns/name`.
    pub fn members(&self, ns: &str, name: &str) -> &[Member] {
        self.members
            .get(&format!("{ns}/{name}"))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// An object's manifest, parsed.
pub fn manifest(o: &pb::StoredObject) -> Value {
    serde_json::from_str(&o.manifest_json).unwrap_or(Value::Null)
}

/// A name suffix from Kubernetes' alphabet for generated names (no vowels,
/// no look-alikes).
pub fn suffix(bytes: &[u8], len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    bytes
        .iter()
        .take(len)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// Deployments and ReplicaSets.
#[derive(Clone)]
pub struct Workloads {
    shared: Shared,
    pods: crate::pods::Pods,
    objects: crate::objects::Objects,
}

impl Workloads {
    /// The component over `shared` and the components below it.
    pub fn new(shared: Shared, pods: crate::pods::Pods, objects: crate::objects::Objects) -> Self {
        Self {
            shared,
            pods,
            objects,
        }
    }
}

impl Workloads {
    /// Runs the Deployment and ReplicaSet controllers until `stop` resolves.
    pub async fn run_workloads(&self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut wakeups =
            orca_store::Wakeups::new(self.shared.store(), self.shared.config().reconcile_interval);
        let memory = Memory::default();
        loop {
            if let Err(e) = self.reconcile_workloads(&memory).await {
                warn!(error = %e, "workload controllers: pass failed; retrying");
            }
            tokio::select! {
                () = &mut stop => return,
                () = wakeups.next() => {}
            }
        }
    }

    async fn reconcile_workloads(&self, memory: &Memory) -> Result<(), ClusterError> {
        let world = World::read(self, memory)?;
        let mut wrote = false;
        for d in &world.deployments {
            wrote |= self.reconcile_deployment(d, &world, memory).await?;
        }
        // Desired counts may have just changed: read the sets again.
        let replicasets = self
            .shared
            .store()
            .objects
            .scan(&format!("{}/", Kind::ReplicaSet.name()))?;
        for rs in &replicasets {
            wrote |= self.reconcile_replicaset(rs, &world, memory).await?;
        }
        if wrote {
            self.shared.store().flush().await?;
        }
        Ok(())
    }

    /// Changes a stored object in place, atomically on the object as it is
    /// now: a controller never writes back a stale copy over a user's apply,
    /// and an object deleted meanwhile stays deleted. Whether it was there.
    pub(crate) fn patch_object(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        mut f: impl FnMut(&mut pb::StoredObject),
    ) -> Result<bool, ClusterError> {
        Ok(self
            .shared
            .store()
            .objects
            .update(&key(kind, ns, name), |o| f(o))?
            .is_some())
    }

    /// [`Workloads::patch_object`] on the manifest.
    pub(crate) fn patch_manifest(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        f: impl Fn(&mut Value),
    ) -> Result<bool, ClusterError> {
        self.patch_object(kind, ns, name, |o| {
            if let Ok(mut m) = serde_json::from_str::<Value>(&o.manifest_json) {
                f(&mut m);
                o.manifest_json = m.to_string();
            }
        })
    }

    /// Stops pod `ns/name` in the background (within its grace period); it
    /// counts as its ReplicaSet's until gone.
    fn stop_member(&self, memory: &Memory, ns: &str, name: &str) {
        let k = crate::pods::key(ns, name);
        if !memory.start_stopping(&k) {
            return;
        }
        let (cluster, memory, ns, name) =
            (self.clone(), memory.clone(), ns.to_owned(), name.to_owned());
        tokio::spawn(async move {
            match cluster.pods.delete_pod(&ns, &name, None).await {
                Ok(_) | Err(ClusterError::NotFound { .. }) => {}
                Err(e) => {
                    warn!(pod = %k, error = %e, "could not stop a controller's pod; will retry")
                }
            }
            memory.stopped(&k);
            // The pod's removal wakes the controllers (store watch).
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_suffixes_use_kubernetes_alphabet() {
        let s = suffix(&[0, 1, 26, 27, 255], 5);
        assert_eq!(s.len(), 5);
        assert!(
            s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{s}"
        );
        assert_eq!(&s[..3], "bc9");
    }
}
