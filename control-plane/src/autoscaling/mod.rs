//! The HorizontalPodAutoscaler (autoscaling/v2) of standalone mode: every
//! `autoscaling_sync_ms` each HPA reads its Deployment's Ready pods' usage and
//! sets the Deployment's replicas, as Kubernetes' controller does:
//! `desired = ceil(current × usage / target)`, no change within a 10%
//! tolerance, clamped to `minReplicas..maxReplicas`, at most doubling (or +4)
//! per step, and held by the stabilization windows of `behavior` (scale-down
//! takes the highest recommendation of its window, default 300 s; scale-up
//! the lowest of its, default 0 s).
//!
//! Metrics:
//! - `type: Resource`, `cpu`, target `averageUtilization`: the pods' usage
//!   as a percentage of their requests (memory is not served). CPU usage is the rate
//!   between two readings of the containers' cgroups (agents' Stats), so a
//!   pod counts from its second reading on; a pod without a request for the
//!   resource makes the metric unavailable, as in Kubernetes.
//! - Beyond Kubernetes, `type: Pods` with metric `orca.research/gpu-utilization`
//!   and target `averageValue` (percent): the mean utilisation of the GPUs each
//!   pod holds, from the agents' NVML telemetry.
//!
//! Each rescale is an Event (`SuccessfulRescale`, with the metric that
//! drove it); the HPA's status shows current and desired replicas and the
//! current metric values.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use orca_proto::controlplane::v1 as pb;
use serde_json::{Value, json};
use tracing::warn;

use crate::objects::{Kind, key};
use crate::pods::names;
use crate::resources::requests;
use crate::shared::{ClusterError, Shared};

pub mod validation;

pub use validation::GPU_UTILIZATION;

/// Kubernetes' tolerance: no change while usage/target is within 10%.
const TOLERANCE: f64 = 0.1;
/// Default scale-down stabilization window.
const DOWN_WINDOW: Duration = Duration::from_secs(300);

/// One recommendation `desired` for `current` replicas from a usage/target
/// ratio, before windows and bounds.
pub fn recommend(current: i32, ratio: f64) -> i32 {
    if (ratio - 1.0).abs() <= TOLERANCE {
        return current;
    }
    (f64::from(current) * ratio).ceil() as i32
}

/// An HPA's limits: replicas, and its stabilization windows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `minReplicas`.
    pub min: i32,
    /// `maxReplicas`.
    pub max: i32,
    /// `behavior.scaleUp.stabilizationWindowSeconds`.
    pub up_window: Duration,
    /// `behavior.scaleDown.stabilizationWindowSeconds`.
    pub down_window: Duration,
}

/// The replicas to set: `desired` clamped, scale-up limited per step, and
/// held by the windows over past recommendations (`(when, desired)`).
pub fn stabilize(
    current: i32,
    desired: i32,
    limits: &Limits,
    history: &[(Instant, i32)],
    now: Instant,
) -> i32 {
    let Limits {
        min,
        max,
        up_window,
        down_window,
    } = *limits;
    let desired = desired.clamp(min, max);
    let within = |w: Duration| {
        history
            .iter()
            .filter(move |(t, _)| now.duration_since(*t) <= w)
            .map(|(_, d)| *d)
    };
    let out = if desired > current {
        within(up_window)
            .chain(std::iter::once(desired))
            .min()
            .unwrap_or(desired)
    } else {
        within(down_window)
            .chain(std::iter::once(desired))
            .max()
            .unwrap_or(desired)
    };
    let step_limit = (current * 2).max(current + 4);
    out.min(step_limit).clamp(min, max)
}

/// A reading of one pod's CPU time.
#[derive(Debug, Clone, Copy)]
struct CpuReading {
    core_ns: u64,
    at: Instant,
}

/// What the autoscaler remembers: CPU readings by pod uid, and each HPA's
/// recommendations.
#[derive(Default)]
pub struct Memory {
    cpu: Mutex<HashMap<String, CpuReading>>,
    history: Mutex<HashMap<String, Vec<(Instant, i32)>>>,
}

fn window(behavior: &Value, which: &str, default: Duration) -> Duration {
    behavior[which]["stabilizationWindowSeconds"]
        .as_u64()
        .map(Duration::from_secs)
        .unwrap_or(default)
}

/// HorizontalPodAutoscalers.
#[derive(Clone)]
pub struct Autoscaler {
    shared: Shared,
    streams: crate::streams::Streams,
    workloads: crate::workloads::Workloads,
}

impl Autoscaler {
    /// The component over `shared` and the components below it.
    pub fn new(
        shared: Shared,
        streams: crate::streams::Streams,
        workloads: crate::workloads::Workloads,
    ) -> Self {
        Self {
            shared,
            streams,
            workloads,
        }
    }
}

impl Autoscaler {
    /// Runs the autoscaler until `stop` resolves.
    pub async fn run_autoscaling(&self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let memory = Memory::default();
        loop {
            if let Err(e) = self.autoscale_once(&memory).await {
                warn!(error = %e, "autoscaler: pass failed; retrying");
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(self.shared.config().autoscaling_sync) => {}
            }
        }
    }

    async fn autoscale_once(&self, memory: &Memory) -> Result<(), ClusterError> {
        let hpas = self
            .shared
            .store()
            .objects
            .scan(&format!("{}/", Kind::HorizontalPodAutoscaler.name()))?;
        if hpas.is_empty() {
            return Ok(());
        }
        let pods = self.shared.store().pods.scan("")?;
        let cpu = self.cpu_millis(&pods, memory).await;
        let nodes = self.shared.telemetry().snapshot("", 0);
        let gpu: HashMap<String, u32> = crate::telemetry::pod_usage(&nodes, &pods)
            .into_iter()
            .filter_map(|u| Some((u.pod?.uid, u.gpu_util_percent)))
            .collect();
        for h in hpas {
            if let Err(e) = self.autoscale(&h, &pods, &cpu, &gpu, memory).await {
                warn!(hpa = %h.name, error = %e, "autoscaler: this HPA failed");
            }
        }
        Ok(())
    }

    /// CPU use of every running pod, millicores, by uid (pods read twice).
    async fn cpu_millis(&self, pods: &[pb::PodRecord], memory: &Memory) -> HashMap<String, f64> {
        let mut hosts: Vec<String> = pods
            .iter()
            .map(|p| p.node_name.clone())
            .filter(|n| !n.is_empty())
            .collect();
        hosts.sort();
        hosts.dedup();
        let mut out = HashMap::new();
        for host in hosts {
            let Ok(stats) = self.streams.pod_stats(&host).await else {
                continue;
            };
            let now = Instant::now();
            let mut readings = memory.cpu.lock().unwrap_or_else(PoisonError::into_inner);
            for p in stats.pods {
                let uid = p.pod.map(|r| r.uid).unwrap_or_default();
                let core_ns: u64 = p
                    .containers
                    .iter()
                    .map(|c| c.cpu_usage_core_nanoseconds)
                    .sum();
                let reading = CpuReading { core_ns, at: now };
                if let Some(prev) = readings.insert(uid.clone(), reading) {
                    let dt = now.duration_since(prev.at).as_nanos() as f64;
                    if dt > 0.0 && core_ns >= prev.core_ns {
                        out.insert(uid, (core_ns - prev.core_ns) as f64 / dt * 1000.0);
                    }
                }
            }
        }
        out
    }

    async fn autoscale(
        &self,
        h: &pb::StoredObject,
        pods: &[pb::PodRecord],
        cpu: &HashMap<String, f64>,
        gpu: &HashMap<String, u32>,
        memory: &Memory,
    ) -> Result<(), ClusterError> {
        let m: Value = serde_json::from_str(&h.manifest_json).unwrap_or(Value::Null);
        let (ns, name) = (h.namespace.as_str(), h.name.as_str());
        let spec = &m["spec"];
        let target = spec["scaleTargetRef"]["name"].as_str().unwrap_or_default();
        let dk = key(Kind::Deployment, ns, target);
        let Some(d) = self.shared.store().objects.get(&dk)? else {
            return self.hpa_status(h, json!({"conditions": [{"type": "AbleToScale", "status": "False", "reason": "FailedGetScale", "message": format!("deployment {target} not found")}]}));
        };
        let dm: Value = serde_json::from_str(&d.manifest_json).unwrap_or(Value::Null);
        let current = dm["spec"]["replicas"].as_i64().unwrap_or(1) as i32;
        let selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
            serde_json::from_value(dm["spec"]["selector"].clone()).unwrap_or_default();
        let ready: Vec<&pb::PodRecord> = pods
            .iter()
            .filter(|p| names(p).0 == ns && crate::pods::ready(p))
            .filter(|p| {
                p.pod.as_ref().is_some_and(|pod| {
                    crate::workloads::selector::matches_map(&selector, &pod.labels)
                })
            })
            .collect();
        let mut ratios: Vec<(f64, String, Value)> = Vec::new();
        for metric in spec["metrics"].as_array().into_iter().flatten() {
            if let Some(r) = self.metric_ratio(metric, &ready, cpu, gpu) {
                ratios.push(r);
            }
        }
        let Some((ratio, why, _)) = ratios.iter().cloned().max_by(|a, b| a.0.total_cmp(&b.0))
        else {
            return self.hpa_status(h, json!({"currentReplicas": current, "desiredReplicas": current,
                "conditions": [{"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric", "message": "no metric could be read yet"}]}));
        };
        let min = spec["minReplicas"].as_i64().unwrap_or(1) as i32;
        let max = spec["maxReplicas"].as_i64().unwrap_or(1) as i32;
        let now = Instant::now();
        let raw = recommend(current, ratio);
        let limits = Limits {
            min,
            max,
            up_window: window(&spec["behavior"], "scaleUp", Duration::ZERO),
            down_window: window(&spec["behavior"], "scaleDown", DOWN_WINDOW),
        };
        let desired = {
            let mut history = memory
                .history
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let past = history.entry(format!("{ns}/{name}")).or_default();
            let out = stabilize(current, raw, &limits, past, now);
            past.push((now, raw.clamp(min, max)));
            let keep = limits.up_window.max(limits.down_window);
            past.retain(|(t, _)| now.duration_since(*t) <= keep);
            out
        };
        let current_metrics: Vec<Value> = ratios.iter().map(|(_, _, v)| v.clone()).collect();
        if desired != current {
            self.workloads
                .patch_manifest(Kind::Deployment, ns, target, |m| {
                    m["spec"]["replicas"] = json!(desired);
                })?;
            let direction = if desired > current { "above" } else { "below" };
            self.shared.event(
                "HorizontalPodAutoscaler",
                ns,
                name,
                false,
                "SuccessfulRescale",
                format!("New size: {desired}; reason: {why} {direction} target"),
            );
        }
        self.hpa_status(h, json!({
            "currentReplicas": current, "desiredReplicas": desired, "currentMetrics": current_metrics,
            "conditions": [{"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound"}],
        }))
    }

    /// usage / target for one metric spec, the words for Events, and the
    /// status entry; None when it cannot be read.
    fn metric_ratio(
        &self,
        metric: &Value,
        ready: &[&pb::PodRecord],
        cpu: &HashMap<String, f64>,
        gpu: &HashMap<String, u32>,
    ) -> Option<(f64, String, Value)> {
        if ready.is_empty() {
            return None;
        }
        let uid = |p: &pb::PodRecord| crate::pods::uid(p);
        match metric["type"].as_str()? {
            "Resource" => {
                let resource = metric["resource"]["name"].as_str()?;
                let target = metric["resource"]["target"]["averageUtilization"].as_f64()?;
                if resource != "cpu" {
                    return None;
                }
                let mut percents = Vec::new();
                for p in ready {
                    let spec: k8s_openapi::api::core::v1::PodSpec =
                        serde_json::from_str(&p.pod.as_ref()?.spec_json).ok()?;
                    let request = requests(&spec).cpu_millis;
                    if request <= 0 {
                        return None;
                    }
                    if let Some(used) = cpu.get(&uid(p)) {
                        percents.push(used / request as f64 * 100.0);
                    }
                }
                if percents.is_empty() {
                    return None;
                }
                let avg = percents.iter().sum::<f64>() / percents.len() as f64;
                Some((
                    avg / target,
                    "cpu resource utilization (percentage of request)".into(),
                    json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": avg.round() as i64}}}),
                ))
            }
            "Pods" => {
                let target: f64 = metric["pods"]["target"]["averageValue"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .or_else(|| metric["pods"]["target"]["averageValue"].as_f64())?;
                let values: Vec<f64> = ready
                    .iter()
                    .filter_map(|p| gpu.get(&uid(p)))
                    .map(|v| f64::from(*v))
                    .collect();
                if values.is_empty() || target <= 0.0 {
                    return None;
                }
                let avg = values.iter().sum::<f64>() / values.len() as f64;
                Some((
                    avg / target,
                    format!("pods metric {GPU_UTILIZATION}"),
                    json!({"type": "Pods", "pods": {"metric": {"name": GPU_UTILIZATION}, "current": {"averageValue": format!("{}", avg.round() as i64)}}}),
                ))
            }
            _ => None,
        }
    }

    fn hpa_status(&self, h: &pb::StoredObject, status: Value) -> Result<(), ClusterError> {
        let status = status.to_string();
        if status != h.status_json {
            let mut o = h.clone();
            o.status_json = status;
            self.shared.store().objects.put(
                &key(Kind::HorizontalPodAutoscaler, &h.namespace, &h.name),
                &o,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::validation::validate;
    use super::*;

    #[test]
    fn recommendations_follow_kubernetes() {
        assert_eq!(recommend(2, 1.05), 2, "within tolerance");
        assert_eq!(recommend(1, 10.0), 10);
        assert_eq!(recommend(4, 0.3), 2);
    }

    #[test]
    fn windows_hold_scale_down_and_steps_limit_scale_up() {
        let now = Instant::now();
        let ago = |s: u64| now - Duration::from_secs(s);
        // A high recommendation 10 s ago, inside a 60 s down window: no scale-down yet.
        let limits = |max: i32, down: u64| Limits {
            min: 1,
            max,
            up_window: Duration::ZERO,
            down_window: Duration::from_secs(down),
        };
        let history = [(ago(10), 3)];
        assert_eq!(stabilize(3, 1, &limits(5, 60), &history, now), 3);
        // Outside the window: down to the new recommendation.
        assert_eq!(stabilize(3, 1, &limits(5, 5), &history, now), 1);
        // Up: clamped to max, and at most double or +4 per step.
        assert_eq!(stabilize(1, 20, &limits(3, 300), &[], now), 3);
        assert_eq!(stabilize(1, 20, &limits(50, 300), &[], now), 5);
    }

    #[test]
    fn manifests_are_checked_naming_the_field() {
        let hpa = |metric: Value| {
            json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                     "minReplicas": 1, "maxReplicas": 3, "metrics": [metric]}})
        };
        assert!(validate(&hpa(json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}))).is_ok());
        assert!(validate(&hpa(json!({"type": "Pods", "pods": {"metric": {"name": GPU_UTILIZATION}, "target": {"type": "AverageValue", "averageValue": "60"}}}))).is_ok());
        let e = validate(&hpa(json!({"type": "External", "external": {"metric": {"name": "x"}, "target": {"type": "Value", "value": "1"}}}))).unwrap_err();
        assert!(e.contains("not served"), "{e}");
    }
}
