//! Pods bound to this Node in Kubernetes, kept in step with ORCA's pods.
//!
//! Kubernetes → ORCA: a list, then a watch from the list's resource version,
//! and a full relist every `resync` (or when the watch's version expired). A
//! pod bound here that ORCA does not know becomes an ORCA pod with the same
//! namespace, name and uid; one with a `deletionTimestamp` has its containers
//! stopped within its grace period, then its object is removed (delete with
//! grace 0 and the uid as precondition), as the kubelet does. A pod ORCA knows
//! but Kubernetes no longer lists is stopped and forgotten.
//!
//! ORCA → Kubernetes: every `status_sync`, each pod's status (what agents
//! observed, or ORCA's own verdict) is compared with what was last patched and
//! patched when it differs; a restarted control plane patches every pod once.
//! The ORCA node a pod is placed on is written as the `orca.research/node`
//! annotation. A lost status update is repeated, never acted on: no pod is
//! restarted because Kubernetes missed a write.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1 as types;
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::kube::{KubeApi, PodChange};
use super::resolve::kubernetes_uid;
use crate::cluster::Cluster;
use crate::pods::names;
pub use crate::references::KUBERNETES_UID;
use orca_model::selection::annotations::{LEDGER, NODE};

/// Delay before listing again after a failed call.
const RETRY: Duration = Duration::from_secs(1);

/// The pod half of the Virtual Kubelet.
pub struct PodSync {
    cluster: Cluster,
    kube: Arc<dyn KubeApi>,
    node_name: String,
    /// Pods (`ns/name`) whose containers are being stopped for a deletion.
    terminating: Mutex<HashSet<String>>,
    /// What was last patched per pod (`ns/name`): status, node annotation and ledger.
    patched: Mutex<HashMap<String, (Value, String, String)>>,
}

/// Resolves once `stop` turns true (holding no borrow of it afterwards).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

fn meta(pod: &Pod) -> (String, String, String) {
    let m = &pod.metadata;
    (
        m.namespace.clone().unwrap_or_else(|| "default".into()),
        m.name.clone().unwrap_or_default(),
        m.uid.clone().unwrap_or_default(),
    )
}

/// Whether an ORCA pod came from Kubernetes.
fn from_kubernetes(record: &pb::PodRecord) -> bool {
    record
        .pod
        .as_ref()
        .is_some_and(|p| p.annotations.contains_key(KUBERNETES_UID))
}

impl PodSync {
    /// The pod sync of Node `node_name`.
    pub fn new(cluster: Cluster, kube: Arc<dyn KubeApi>, node_name: String) -> Arc<Self> {
        Arc::new(Self {
            cluster,
            kube,
            node_name,
            terminating: Mutex::default(),
            patched: Mutex::default(),
        })
    }

    /// Lists and watches pods bound to the node until `stop`.
    pub async fn run_watch(
        self: Arc<Self>,
        resync: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = self.list_and_watch(resync) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn list_and_watch(self: &Arc<Self>, resync: Duration) {
        let (pods, mut version) = match self.kube.list_pods(&self.node_name).await {
            Ok(listed) => listed,
            Err(e) => {
                warn!(error = %e, "listing pods bound to this node failed; retrying");
                tokio::time::sleep(RETRY).await;
                return;
            }
        };
        self.reconcile(pods).await;
        let until = tokio::time::Instant::now() + resync;
        while tokio::time::Instant::now() < until {
            let mut stream = match self.kube.watch_pods(&self.node_name, &version).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "watching pods failed; listing again");
                    tokio::time::sleep(RETRY).await;
                    return;
                }
            };
            loop {
                let next = tokio::time::timeout_at(until, stream.next()).await;
                match next {
                    Err(_) => return,  // resync
                    Ok(None) => break, // the server ended the watch: resume it
                    Ok(Some(Err(e))) => {
                        if !e.is_gone() {
                            warn!(error = %e, "pod watch failed; listing again");
                            tokio::time::sleep(RETRY).await;
                        }
                        return;
                    }
                    Ok(Some(Ok(change))) => {
                        if let Some(v) = self.apply(change).await {
                            version = v;
                        }
                    }
                }
            }
        }
    }

    /// Applies one watched change; the resource version to resume from.
    async fn apply(self: &Arc<Self>, change: PodChange) -> Option<String> {
        match change {
            PodChange::Bookmark(v) => Some(v),
            PodChange::Applied(pod) => {
                let v = pod.metadata.resource_version.clone();
                self.observe(&pod).await;
                v
            }
            PodChange::Deleted(pod) => {
                let v = pod.metadata.resource_version.clone();
                let (ns, name, uid) = meta(&pod);
                self.forget(&ns, &name, Some(&uid));
                v
            }
        }
    }

    /// A full list: every listed pod observed, every ORCA pod from Kubernetes
    /// that is no longer listed stopped and forgotten.
    async fn reconcile(self: &Arc<Self>, pods: Vec<Pod>) {
        let listed: HashSet<String> = pods
            .iter()
            .map(|p| {
                let (ns, name, _) = meta(p);
                key(&ns, &name)
            })
            .collect();
        for pod in &pods {
            self.observe(pod).await;
        }
        let known = self
            .cluster
            .shared()
            .store()
            .pods
            .scan("")
            .unwrap_or_default();
        for record in known.iter().filter(|r| from_kubernetes(r)) {
            let (ns, name) = names(record);
            if !listed.contains(&key(&ns, &name)) {
                info!(pod = %key(&ns, &name), "pod no longer bound here in Kubernetes; stopping it");
                self.forget(&ns, &name, None);
            }
        }
    }

    /// One pod as Kubernetes shows it.
    async fn observe(self: &Arc<Self>, pod: &Pod) {
        let (ns, name, uid) = meta(pod);
        if pod.metadata.deletion_timestamp.is_some() {
            self.terminate(pod);
            return;
        }
        match self
            .cluster
            .shared()
            .store()
            .pods
            .get(&crate::pods::key(&ns, &name))
        {
            Ok(Some(record)) => {
                let known_uid = record.pod.as_ref().map(kubernetes_uid).unwrap_or_default();
                if known_uid != uid {
                    // The name was deleted and taken again while we were not watching.
                    info!(pod = %key(&ns, &name), "a new pod took this name; stopping the old one");
                    self.forget(&ns, &name, None);
                }
            }
            Ok(None) => {
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                if matches!(phase, Some("Succeeded" | "Failed")) {
                    // Finished before ORCA forgot it: nothing to run again.
                    return;
                }
                self.create(pod, &ns, &name, &uid).await;
            }
            Err(e) => warn!(pod = %key(&ns, &name), error = %e, "store read failed"),
        }
    }

    async fn create(&self, pod: &Pod, ns: &str, name: &str, uid: &str) {
        let spec = match serde_json::to_string(&pod.spec) {
            Ok(s) => s,
            Err(e) => {
                warn!(pod = %key(ns, name), error = %e, "pod spec not encodable");
                return;
            }
        };
        let mut annotations: HashMap<String, String> = pod
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        annotations.insert(KUBERNETES_UID.into(), uid.into());
        let orca_pod = types::Pod {
            r#ref: Some(types::PodRef {
                namespace: ns.into(),
                name: name.into(),
                uid: uid.into(),
            }),
            spec_json: spec,
            labels: pod
                .metadata
                .labels
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            annotations,
        };
        match self.cluster.pods().create_pod(orca_pod).await {
            Ok(_) => info!(pod = %key(ns, name), "pod from Kubernetes accepted"),
            Err(e) => warn!(pod = %key(ns, name), error = %e, "pod from Kubernetes refused"),
        }
    }

    /// Stops a deleted pod's containers within its grace period, records the
    /// final status, then removes the object.
    fn terminate(self: &Arc<Self>, pod: &Pod) {
        let (ns, name, uid) = meta(pod);
        let k = key(&ns, &name);
        if !self.terminating.lock().expect("poisoned").insert(k.clone()) {
            return;
        }
        let grace = pod.metadata.deletion_grace_period_seconds;
        let this = self.clone();
        tokio::spawn(async move {
            let known = this
                .cluster
                .shared()
                .store()
                .pods
                .get(&crate::pods::key(&ns, &name))
                .ok()
                .flatten()
                .filter(|r| r.pod.as_ref().map(kubernetes_uid).as_deref() == Some(uid.as_str()));
            let stopped = match known {
                Some(_) => match this.cluster.pods().delete_pod(&ns, &name, grace).await {
                    Ok(record) => {
                        if let Some(status) = &record.status {
                            let mut status = super::status::pod_status(status);
                            status["phase"] = json!(final_phase(&status));
                            let _ = this
                                .kube
                                .patch_pod_status(&ns, &name, json!({"status": status}))
                                .await;
                        }
                        true
                    }
                    Err(e) => {
                        warn!(pod = %k, error = %e, "stopping a deleted pod failed; will retry");
                        false
                    }
                },
                None => true,
            };
            if stopped {
                match this.kube.delete_pod(&ns, &name, &uid).await {
                    Ok(()) => info!(pod = %k, "containers stopped; pod object removed"),
                    Err(e) if e.is_not_found() || e.is_conflict() => {}
                    Err(e) => {
                        warn!(pod = %k, error = %e, "removing the pod object failed; will retry")
                    }
                }
            }
            this.patched.lock().expect("poisoned").remove(&k);
            this.terminating.lock().expect("poisoned").remove(&k);
        });
    }

    /// Stops and forgets an ORCA pod whose Kubernetes object is gone (or is
    /// another incarnation than `uid`).
    fn forget(self: &Arc<Self>, ns: &str, name: &str, uid: Option<&str>) {
        let record = match self
            .cluster
            .shared()
            .store()
            .pods
            .get(&crate::pods::key(ns, name))
        {
            Ok(Some(r)) if from_kubernetes(&r) => r,
            _ => return,
        };
        if let Some(uid) = uid
            && record.pod.as_ref().map(kubernetes_uid).as_deref() != Some(uid)
        {
            return;
        }
        let (ns, name) = (ns.to_owned(), name.to_owned());
        let this = self.clone();
        tokio::spawn(async move {
            match this.cluster.pods().delete_pod(&ns, &name, Some(0)).await {
                Ok(_) => info!(pod = %key(&ns, &name), "pod removed from Kubernetes; stopped"),
                Err(e) => debug!(pod = %key(&ns, &name), error = %e, "stopping a removed pod"),
            }
            this.patched
                .lock()
                .expect("poisoned")
                .remove(&key(&ns, &name));
        });
    }

    /// Patches every pod whose status or placement changed since the last patch,
    /// every `period` until `stop`.
    pub async fn run_status(
        self: Arc<Self>,
        period: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sync_statuses().await,
                _ = stopped(&mut stop) => return,
            }
        }
    }

    async fn sync_statuses(&self) {
        let records = self
            .cluster
            .shared()
            .store()
            .pods
            .scan("")
            .unwrap_or_default();
        for record in records.iter().filter(|r| from_kubernetes(r)) {
            let (ns, name) = names(record);
            let k = key(&ns, &name);
            if self.terminating.lock().expect("poisoned").contains(&k) {
                continue;
            }
            let status = super::status::pod_status(&record.status.clone().unwrap_or_default());
            let last = self.patched.lock().expect("poisoned").get(&k).cloned();
            let (last_status, last_node, last_ledger) = last.unwrap_or_default();
            let ledger = if record.placements.is_empty() {
                String::new()
            } else {
                orca_model::ledger::annotation(record)
            };
            let mut annotations = serde_json::Map::new();
            if record.node_name != last_node && !record.node_name.is_empty() {
                annotations.insert(NODE.into(), json!(record.node_name));
            }
            if ledger != last_ledger && !ledger.is_empty() {
                annotations.insert(LEDGER.into(), json!(ledger));
            }
            if !annotations.is_empty() {
                let patch = json!({"metadata": {"annotations": annotations}});
                if let Err(e) = self.kube.patch_pod(&ns, &name, patch).await {
                    debug!(pod = %k, error = %e, "placement annotations not written");
                    continue;
                }
            }
            if status != last_status {
                let mut status = status.clone();
                if status["phase"] == "Pending" {
                    status["conditions"] = scheduled(&status["conditions"]);
                }
                if let Err(e) = self
                    .kube
                    .patch_pod_status(&ns, &name, json!({"status": status}))
                    .await
                {
                    debug!(pod = %k, error = %e, "status not patched; will retry");
                    continue;
                }
            }
            self.patched
                .lock()
                .expect("poisoned")
                .insert(k, (status, record.node_name.clone(), ledger));
        }
    }
}

/// A pod bound to this node is scheduled, even while ORCA is still finding it
/// a host: Kubernetes' PodScheduled condition is about the Node.
fn scheduled(conditions: &Value) -> Value {
    let mut list = conditions.as_array().cloned().unwrap_or_default();
    if !list.iter().any(|c| c["type"] == "PodScheduled") {
        list.push(json!({"type": "PodScheduled", "status": "True"}));
    }
    Value::Array(list)
}

/// The phase a deleted pod ends in: Succeeded if every container exited 0,
/// else Failed (the kubelet's rule for a pod stopped by deletion).
fn final_phase(status: &Value) -> &'static str {
    let all_zero = status["containerStatuses"].as_array().is_some_and(|cs| {
        !cs.is_empty() && cs.iter().all(|c| c["state"]["terminated"]["exitCode"] == 0)
    });
    if all_zero { "Succeeded" } else { "Failed" }
}
