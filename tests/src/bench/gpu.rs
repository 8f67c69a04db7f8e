//! `gpu-sample`: the agent's own cost of one GPU sample, and its size on the
//! wire. The agent's [`Sampler`] samples the fake source replaying the bundled
//! H100 recording on [`DEVICES`] devices, converts the frame to the protocol's
//! `GpuSample`s and keeps each device's health; the median per call, divided by
//! the device count, is `gpu_sample_us_per_gpu`. The NVML calls themselves are
//! not in it: `orca-gpu-probe` measures those on a GPU host
//! (`gpu_sample_us_per_gpu_nvml`). `heartbeat_gpu_bytes_per_gpu` is the encoded
//! size of a heartbeat's `gpus` field (tag, length and message of each sample),
//! per device.

use std::time::{Duration, Instant};

use orca_agent::gpu::fake::FakeSource;
use orca_agent::gpu::monitor::Sampler;
use orca_proto::controlplane::v1::HeartbeatRequest;
use prost::Message as _;

use crate::bench::{median, metric};

/// Devices of the simulated host (a p5.48xlarge's eight H100s).
pub const DEVICES: usize = 8;

/// Untimed samples before the timed ones.
const WARM_UP: usize = 200;

/// Runs the scenario with `iterations` timed samples.
pub fn run(iterations: usize) {
    let mut sampler = Sampler::new(Box::new(FakeSource::simulated("bench", DEVICES, None)));
    for _ in 0..WARM_UP {
        std::hint::black_box(sampler.sample_once());
    }
    let mut times: Vec<Duration> = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        std::hint::black_box(sampler.sample_once());
        times.push(started.elapsed());
    }
    let per_gpu_us = median(&times).as_secs_f64() * 1e6 / DEVICES as f64;

    let telemetry = sampler.sample_once();
    assert_eq!(telemetry.gpus.len(), DEVICES, "{}", telemetry.note);
    let heartbeat = HeartbeatRequest {
        gpus: telemetry.gpus.clone(),
        ..Default::default()
    };
    let bytes = heartbeat.encoded_len() as f64 / DEVICES as f64;

    eprintln!("{iterations} samples of {DEVICES} simulated GPUs after {WARM_UP} warm-up samples");
    metric("gpu_sample_us_per_gpu", per_gpu_us, "us");
    metric("heartbeat_gpu_bytes_per_gpu", bytes, "bytes");
}
