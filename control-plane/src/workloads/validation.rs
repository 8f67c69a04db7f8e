//! What a Deployment must say to be stored: pure, a leaf that
//! [`crate::objects`] checks manifests with.

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::Value;

use super::rolling;
use super::selector;
use k8s_openapi::api::apps::v1::DeploymentStrategy;

/// Checks a Deployment manifest; the error names what is wrong.
pub fn validate(manifest: &Value) -> Result<(), String> {
    let d: Deployment = serde_json::from_value(manifest.clone())
        .map_err(|e| format!("not an apps/v1 Deployment: {e}"))?;
    if !manifest["spec"].is_object() {
        return Err("spec is required".into());
    }
    let spec = d.spec;
    selector::validate(&spec.selector).map_err(|e| format!("spec.{e}"))?;
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    if !selector::matches(&spec.selector, |k| labels.get(k).map(String::as_str)) {
        return Err("spec.selector does not match spec.template.metadata.labels".into());
    }
    let pod = spec.template.spec.ok_or("spec.template.spec is required")?;
    if pod.containers.is_empty() {
        return Err("spec.template.spec.containers: at least one container is required".into());
    }
    if pod.restart_policy.as_deref().is_some_and(|p| p != "Always") {
        return Err(
            "spec.template.spec.restartPolicy: only Always is allowed in a Deployment".into(),
        );
    }
    let replicas = spec.replicas.unwrap_or(1);
    if replicas < 0 {
        return Err("spec.replicas must not be negative".into());
    }
    if spec.progress_deadline_seconds.is_some_and(|s| s <= 0) {
        return Err("spec.progressDeadlineSeconds must be positive".into());
    }
    match spec.strategy.unwrap_or_default() {
        DeploymentStrategy {
            type_: Some(t),
            rolling_update: Some(_),
        } if t == "Recreate" => {
            Err("spec.strategy.rollingUpdate may not be given when type is Recreate".into())
        }
        DeploymentStrategy { type_: Some(t), .. } if t != "Recreate" && t != "RollingUpdate" => {
            Err(format!(
                "spec.strategy.type: {t:?} is not RollingUpdate or Recreate"
            ))
        }
        DeploymentStrategy { rolling_update, .. } => {
            let r = rolling_update.unwrap_or_default();
            rolling::bounds(replicas, r.max_surge.as_ref(), r.max_unavailable.as_ref())
                .map(drop)
                .map_err(|e| format!("spec.strategy.rollingUpdate.{e}"))
        }
    }
}
