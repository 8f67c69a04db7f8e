//! What a HorizontalPodAutoscaler must say to be stored: pure, a leaf that
//! [`crate::objects`] checks manifests with.

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use serde_json::Value;

/// The GPU utilisation metric's name.
pub const GPU_UTILIZATION: &str = "orca.research/gpu-utilization";

/// Checks an HPA manifest; the error names the field.
pub fn validate(manifest: &Value) -> Result<(), String> {
    let h: HorizontalPodAutoscaler = serde_json::from_value(manifest.clone())
        .map_err(|e| format!("not an autoscaling/v2 HorizontalPodAutoscaler: {e}"))?;
    if !manifest["spec"].is_object() {
        return Err("spec is required".into());
    }
    let spec = h.spec;
    if spec.scale_target_ref.kind != "Deployment" {
        return Err(format!(
            "spec.scaleTargetRef.kind: {} is not Deployment (the only kind scaled here)",
            spec.scale_target_ref.kind
        ));
    }
    let min = spec.min_replicas.unwrap_or(1);
    if min < 1 || spec.max_replicas < min {
        return Err(format!(
            "spec: need 1 <= minReplicas ({min}) <= maxReplicas ({})",
            spec.max_replicas
        ));
    }
    let metrics = spec.metrics.unwrap_or_default();
    if metrics.is_empty() {
        return Err("spec.metrics: at least one metric is required".into());
    }
    for (i, m) in metrics.iter().enumerate() {
        match (m.type_.as_str(), &m.resource, &m.pods) {
            ("Resource", Some(r), _) if r.name == "cpu" => {
                if r.target.type_ != "Utilization" || r.target.average_utilization.unwrap_or(0) <= 0
                {
                    return Err(format!(
                        "spec.metrics[{i}].resource.target: type Utilization with a positive averageUtilization"
                    ));
                }
            }
            ("Pods", _, Some(p)) if p.metric.name == GPU_UTILIZATION => {
                if p.target.type_ != "AverageValue" || p.target.average_value.is_none() {
                    return Err(format!(
                        "spec.metrics[{i}].pods.target: type AverageValue with an averageValue (percent)"
                    ));
                }
            }
            (t, _, _) => {
                return Err(format!(
                    "spec.metrics[{i}]: {t} metric not served (Resource cpu Utilization, or Pods {GPU_UTILIZATION})"
                ));
            }
        }
    }
    Ok(())
}
