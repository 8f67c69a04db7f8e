//! ORCA's events about Kubernetes pods, recorded as Kubernetes Events on the
//! pod objects, so `kubectl describe pod` shows every decision (instance type
//! chosen, launch, fallback, pull, start, probe failure, interruption).

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use orca_proto::controlplane::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, warn};

use super::kube::KubeApi;
use super::resolve::kubernetes_uid;
use crate::cluster::Cluster;

/// Forwards pod events until `stop`.
pub async fn run(
    cluster: Cluster,
    kube: Arc<dyn KubeApi>,
    node_name: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut events = cluster.shared().subscribe_events();
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = stop.wait_for(|s| *s) => return,
        };
        match event {
            Ok(e) if e.kind == "Pod" => forward(&cluster, kube.as_ref(), &node_name, e).await,
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => {
                warn!(lost = n, "events came faster than Kubernetes took them")
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn forward(cluster: &Cluster, kube: &dyn KubeApi, node_name: &str, e: pb::Event) {
    // Only pods that came from Kubernetes (a deleted one's last events too,
    // while its object still exists: the uid comes from the store or not at all).
    let Ok(Some(record)) = cluster
        .shared()
        .store()
        .pods
        .get(&crate::pods::key(&e.namespace, &e.name))
    else {
        return;
    };
    let Some(pod) = record
        .pod
        .as_ref()
        .filter(|p| p.annotations.contains_key(super::pods::KUBERNETES_UID))
    else {
        return;
    };
    let at = e
        .time
        .and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
        .unwrap_or_else(jiff::Timestamp::now);
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", e.name, at.as_nanosecond())),
            namespace: Some(e.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(e.name.clone()),
            namespace: Some(e.namespace.clone()),
            uid: Some(kubernetes_uid(pod)),
            ..Default::default()
        },
        reason: Some(e.reason.clone()),
        message: Some(e.message.clone()),
        type_: Some(e.r#type.clone()),
        source: Some(EventSource {
            component: Some("orca".into()),
            host: Some(node_name.into()),
        }),
        reporting_component: Some("orca".into()),
        reporting_instance: Some(node_name.into()),
        first_timestamp: Some(Time(at)),
        last_timestamp: Some(Time(at)),
        count: Some(1),
        ..Default::default()
    };
    if let Err(err) = kube.create_event(&e.namespace, event).await {
        debug!(pod = %e.name, reason = %e.reason, error = %err, "event not recorded in Kubernetes");
    }
}
