//! `orca-gpu-probe [--samples N] [--interval-ms MS]`: samples this host's GPUs
//! through NVML, as the agent does, and measures what a sample costs.
//!
//! Its standard output is a recording the fake GPU source replays (a `#`
//! header, one JSON frame per line, then `metric:` and `#` lines that the
//! replay skips):
//!
//! ```text
//! # device: NVIDIA H100 80GB HBM3 x8, driver 550.54.15, NVML 12.550.54.15
//! {"driver_version":"550.54.15",...}
//! metric: gpu_sample_us_per_gpu_nvml 41.250 us
//! # metric measured on NVIDIA H100 80GB HBM3 x8, driver 550.54.15, NVML 12.550.54.15
//! ```
//!
//! The cost is the median of [`MEASURED`] back-to-back samples after one
//! warm-up, divided by the device count. It needs no Rust toolchain on the GPU
//! host: copy the release binary (it links only the C library; NVML is loaded
//! at run time). Exit status 2 when NVML is unavailable or reports no device.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use orca_agent::gpu::nvml::NvmlSource;
use orca_agent::gpu::{Frame, GpuSource as _};

/// Timed samples for the cost metric.
const MEASURED: usize = 100;

/// Samples this host's GPUs through NVML and prints a replayable recording.
#[derive(Debug, Parser)]
#[command(name = "orca-gpu-probe")]
struct Cli {
    /// Frames to record (at least one).
    #[arg(long, default_value_t = 10)]
    samples: usize,
    /// Time between recorded frames, ms.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
}

/// `NAME xCOUNT` per model (` + ` between models), then the versions.
fn describe(frame: &Frame) -> String {
    let mut models: Vec<(&str, usize)> = Vec::new();
    for gpu in &frame.gpus {
        match models.iter_mut().find(|(m, _)| *m == gpu.model) {
            Some((_, n)) => *n += 1,
            None => models.push((&gpu.model, 1)),
        }
    }
    let devices = models
        .iter()
        .map(|(m, n)| format!("{m} x{n}"))
        .collect::<Vec<_>>()
        .join(" + ");
    format!(
        "{}, driver {}, NVML {}",
        if devices.is_empty() { "none" } else { &devices },
        frame.driver_version,
        frame.nvml_version
    )
}

/// The median (the mean of the middle two for an even count).
fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    match samples.len() {
        0 => Duration::ZERO,
        n if n % 2 == 0 => (samples[n / 2 - 1] + samples[n / 2]) / 2,
        n => samples[n / 2],
    }
}

fn run(cli: &Cli, source: &mut NvmlSource) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let mut device = String::new();
    for n in 0..cli.samples.max(1) {
        if n > 0 {
            std::thread::sleep(Duration::from_millis(cli.interval_ms));
        }
        let frame = source
            .sample()
            .with_context(|| format!("sample {}", n + 1))?;
        if n == 0 {
            device = describe(&frame);
            writeln!(out, "# device: {device}")?;
        }
        writeln!(out, "{}", serde_json::to_string(&frame)?)?;
        out.flush()?;
    }

    let warm_up = source.sample().context("warm-up sample")?;
    let count = warm_up.gpus.len();
    if count == 0 {
        eprintln!("orca-gpu-probe: NVML reports no devices; nothing to measure");
        return Ok(ExitCode::from(2));
    }
    let mut times = Vec::with_capacity(MEASURED);
    for n in 0..MEASURED {
        let started = Instant::now();
        let frame = source
            .sample()
            .with_context(|| format!("timed sample {}", n + 1))?;
        times.push(started.elapsed());
        std::hint::black_box(frame);
    }
    let per_gpu_us = median(times).as_secs_f64() * 1e6 / count as f64;
    writeln!(out, "metric: gpu_sample_us_per_gpu_nvml {per_gpu_us:.3} us")?;
    writeln!(out, "# metric measured on {device}")?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut source = match NvmlSource::open() {
        Ok(source) => source,
        Err(e) => {
            eprintln!("orca-gpu-probe: {e}");
            return ExitCode::from(2);
        }
    };
    for (index, why) in source.xid_unwatched() {
        eprintln!("orca-gpu-probe: GPU {index}: XID errors not watched ({why})");
    }
    match run(&cli, &mut source) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("orca-gpu-probe: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orca_agent::gpu::record::DeviceSample;

    #[test]
    fn describes_devices_by_model() {
        let gpu = |model: &str| DeviceSample {
            model: model.into(),
            ..Default::default()
        };
        let frame = Frame {
            driver_version: "550.54.15".into(),
            nvml_version: "12.550.54.15".into(),
            gpus: vec![gpu("H100"), gpu("H100"), gpu("L4")],
            ..Default::default()
        };
        assert_eq!(
            describe(&frame),
            "H100 x2 + L4 x1, driver 550.54.15, NVML 12.550.54.15"
        );
        assert_eq!(describe(&Frame::default()), "none, driver , NVML ");
    }

    #[test]
    fn medians() {
        let ms = |v: &[u64]| v.iter().copied().map(Duration::from_millis).collect();
        assert_eq!(median(ms(&[3, 1, 2])), Duration::from_millis(2));
        assert_eq!(median(ms(&[4, 1, 3, 2])), Duration::from_micros(2500));
        assert_eq!(median(Vec::new()), Duration::ZERO);
    }
}
