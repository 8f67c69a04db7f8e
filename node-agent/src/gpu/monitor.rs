//! Sampling: a [`Sampler`] turns a source's frames into the protocol's
//! `GpuSample`s with each device's health; [`Monitor`] runs it on an interval
//! in a thread of its own (NVML calls block) and publishes the latest
//! [`Telemetry`] to the heartbeat, the `Telemetry` call and GPU allocation.
//! The node's GPUs count only once the source has answered: until then a GPU
//! node reports none, so no GPU pod is placed on it.

use std::sync::Arc;
use std::time::Duration;

use orca_proto::types::v1 as pb;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use super::alloc::Gpu;
use super::health::Health;
use super::record::Frame;
use super::{GpuError, GpuSource};

/// The latest telemetry of this host's GPUs.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    /// `nvml`, `fake`, `none`.
    pub source: &'static str,
    /// Whether the source has answered at least once.
    pub ready: bool,
    /// Why there are no devices (the source's error), empty when it answers.
    pub note: String,
    /// NVIDIA driver version.
    pub driver_version: String,
    /// One sample per device (processes carry PIDs only; the pod manager
    /// attributes them).
    pub gpus: Vec<pb::GpuSample>,
    /// When it was sampled.
    pub sampled_at: Option<jiff::Timestamp>,
}

impl Telemetry {
    /// The devices a pod may be given.
    pub fn healthy(&self) -> Vec<Gpu> {
        self.gpus
            .iter()
            .filter(|g| g.healthy)
            .map(|g| Gpu {
                index: g.index.max(0) as u32,
                uuid: g.uuid.clone(),
            })
            .collect()
    }
}

/// A source with the health of its devices.
pub struct Sampler {
    source: Box<dyn GpuSource>,
    health: Health,
    last: Telemetry,
}

fn to_pb(frame: &Frame, health: &Health, at: jiff::Timestamp) -> Vec<pb::GpuSample> {
    let ts = prost_types::Timestamp {
        seconds: at.as_second(),
        nanos: at.subsec_nanosecond(),
    };
    frame
        .gpus
        .iter()
        .map(|d| pb::GpuSample {
            index: d.index as i32,
            uuid: d.uuid.clone(),
            model: d.model.clone(),
            gpu_util_percent: d.gpu_util_percent,
            mem_util_percent: d.mem_util_percent,
            memory_used_bytes: d.memory_used_bytes,
            memory_total_bytes: d.memory_total_bytes,
            temperature_c: d.temperature_c,
            power_mw: d.power_mw,
            power_limit_mw: d.power_limit_mw,
            sm_clock_mhz: d.sm_clock_mhz,
            mem_clock_mhz: d.mem_clock_mhz,
            ecc_uncorrected: d.ecc_uncorrected,
            ecc_corrected: d.ecc_corrected,
            mig_enabled: d.mig_enabled,
            sampled_at: Some(ts),
            processes: d
                .processes
                .iter()
                .map(|p| pb::GpuProcess {
                    pid: p.pid,
                    used_memory_bytes: p.used_memory_bytes,
                    ..Default::default()
                })
                .collect(),
            healthy: health.reason(&d.uuid).is_none(),
            health_reason: health.reason(&d.uuid).unwrap_or_default().to_owned(),
            last_xid: health.last_xid(&d.uuid) as u32,
            pci_bus_id: d.pci_bus_id.clone(),
            allocated_to: String::new(),
        })
        .collect()
}

impl Sampler {
    /// A sampler over `source`.
    pub fn new(source: Box<dyn GpuSource>) -> Self {
        let name = source.name();
        Self {
            source,
            health: Health::default(),
            last: Telemetry {
                source: name,
                note: "not sampled yet".into(),
                ..Default::default()
            },
        }
    }

    /// Samples once. A failed sample keeps the devices of the last good one
    /// (marked with the error) once the source has answered, so a transient
    /// NVML error does not make the node's GPUs vanish.
    pub fn sample_once(&mut self) -> &Telemetry {
        let at = jiff::Timestamp::now();
        match self.source.sample() {
            Ok(frame) => {
                for (uuid, reason) in self.health.observe(&frame) {
                    warn!(
                        uuid,
                        reason, "GPU marked unhealthy; no new pod will be given it"
                    );
                }
                if !self.last.ready {
                    info!(source = self.source.name(), gpus = frame.gpus.len(), driver = %frame.driver_version, "GPU source answers");
                }
                self.last = Telemetry {
                    source: self.source.name(),
                    ready: true,
                    note: if frame.gpus.is_empty() && self.source.name() != "none" {
                        "the source reports no devices".into()
                    } else {
                        String::new()
                    },
                    driver_version: frame.driver_version.clone(),
                    gpus: to_pb(&frame, &self.health, at),
                    sampled_at: Some(at),
                };
            }
            Err(e) => {
                if self.last.note != e.to_string() {
                    warn!(source = self.source.name(), error = %e, "GPU sample failed");
                }
                self.last.note = e.to_string();
                if matches!(e, GpuError::Unavailable(_)) {
                    self.last.gpus.clear();
                    self.last.ready = false;
                }
            }
        }
        &self.last
    }
}

/// Runs a sampler on an interval and publishes its telemetry.
#[derive(Clone)]
pub struct Monitor {
    rx: watch::Receiver<Arc<Telemetry>>,
    /// Notified when readiness or a device's health changes.
    changed: Arc<Notify>,
}

/// What decides whether a change is worth an immediate heartbeat.
fn shape(t: &Telemetry) -> (bool, Vec<(String, bool)>) {
    (
        t.ready,
        t.gpus.iter().map(|g| (g.uuid.clone(), g.healthy)).collect(),
    )
}

impl Monitor {
    /// Starts sampling `source` every `interval` in a thread of its own, until
    /// every handle is dropped.
    pub fn spawn(source: Box<dyn GpuSource>, interval: Duration) -> Self {
        let mut sampler = Sampler::new(source);
        let (tx, rx) = watch::channel(Arc::new(sampler.last.clone()));
        let changed = Arc::new(Notify::new());
        let notify = changed.clone();
        std::thread::Builder::new()
            .name("gpu-sampler".into())
            .spawn(move || {
                loop {
                    let before = shape(&tx.borrow());
                    let t = Arc::new(sampler.sample_once().clone());
                    let after = shape(&t);
                    if tx.send(t).is_err() {
                        return;
                    }
                    if before != after {
                        notify.notify_waiters();
                        notify.notify_one();
                    }
                    std::thread::sleep(interval);
                }
            })
            .ok();
        Self { rx, changed }
    }

    /// A receiver that sees every new sample.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Telemetry>> {
        self.rx.clone()
    }

    /// The latest telemetry.
    pub fn latest(&self) -> Arc<Telemetry> {
        self.rx.borrow().clone()
    }

    /// Resolves when the source becomes ready or a device's health changes.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Waits up to `timeout` for telemetry that satisfies `ok`; returns the last seen.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        ok: impl Fn(&Telemetry) -> bool,
    ) -> Arc<Telemetry> {
        let mut rx = self.rx.clone();
        let found = tokio::time::timeout(timeout, rx.wait_for(|t| ok(t))).await;
        match found {
            Ok(Ok(t)) => t.clone(),
            _ => self.latest(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::fake::FakeSource;

    struct Flaky(u32);
    impl GpuSource for Flaky {
        fn name(&self) -> &'static str {
            "nvml"
        }
        fn sample(&mut self) -> Result<Frame, GpuError> {
            self.0 += 1;
            match self.0 {
                1 => Err(GpuError::Unavailable("NVML: driver not loaded".into())),
                2 => Ok(FakeSource::simulated("n", 2, None).sample()?),
                _ => Err(GpuError::Sample("GPU is lost".into())),
            }
        }
    }

    #[test]
    fn readiness_follows_the_source() {
        let mut s = Sampler::new(Box::new(Flaky(0)));
        let t = s.sample_once();
        assert!(!t.ready && t.gpus.is_empty());
        assert_eq!(t.note, "NVML: driver not loaded");
        let t = s.sample_once();
        assert!(t.ready && t.note.is_empty());
        assert_eq!(t.healthy().len(), 2);
        // A failed reading keeps the devices and says why.
        let t = s.sample_once();
        assert_eq!((t.gpus.len(), t.note.as_str()), (2, "GPU is lost"));
    }
}
