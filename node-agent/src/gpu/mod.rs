//! GPUs: where their telemetry comes from, which are healthy, which pod holds
//! which, and how a container is given exactly its own.
//!
//! - [`GpuSource`]: one sample of every device per call, as a [`record::Frame`].
//!   Three sources: [`nvml`] (NVML through nvml-wrapper, `libnvidia-ml.so.1`
//!   loaded at run time, so the agent runs on hosts without a GPU and says so),
//!   [`fake`] (replays a recording, for simulated hosts and tests) and
//!   [`NoGpus`].
//! - [`health`]: XID errors that make a device unhealthy (the NVIDIA device
//!   plugin's rule: every XID but the application errors).
//! - [`monitor`]: samples on an interval in a blocking thread, keeps device
//!   health, attributes processes to pods by PID and publishes the latest
//!   telemetry for heartbeats and `Telemetry`.
//! - [`cdi`]: Container Device Interface specs (what `nvidia-ctk cdi generate`
//!   writes to `/etc/cdi`), applied to a container's OCI spec.

pub mod alloc;
pub mod cdi;
pub mod fake;
pub mod health;
pub mod monitor;
pub mod nvml;
pub mod record;

pub use record::Frame;

/// Why a source gave no sample.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GpuError {
    /// The source cannot run on this host (no NVML library, no driver, no device).
    #[error("{0}")]
    Unavailable(String),
    /// The source ran but a reading failed.
    #[error("{0}")]
    Sample(String),
    /// A replay file is missing or malformed.
    #[error("replay file {path}: {problem}")]
    Replay {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

/// A source of GPU telemetry. Calls block (NVML is synchronous); the monitor
/// runs them on a blocking thread.
pub trait GpuSource: Send {
    /// `nvml`, `fake` or `none`.
    fn name(&self) -> &'static str;
    /// One sample of every device, and the XID errors since the last call.
    fn sample(&mut self) -> Result<Frame, GpuError>;
}

/// The source of a host without GPUs.
#[derive(Debug, Default)]
pub struct NoGpus;

impl GpuSource for NoGpus {
    fn name(&self) -> &'static str {
        "none"
    }

    fn sample(&mut self) -> Result<Frame, GpuError> {
        Ok(Frame::default())
    }
}

/// Which source to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceChoice {
    /// NVML.
    Nvml,
    /// The fake source replaying a recording file.
    Replay(std::path::PathBuf),
    /// The fake source replaying the bundled recording with `count` devices.
    Simulated {
        /// The node, whose name the devices' UUIDs derive from.
        node: String,
        /// Devices.
        count: usize,
        /// Their product name, when not the recording's.
        model: Option<String>,
    },
    /// No GPUs.
    None,
}

/// A source that failed to open: it says why at every sample, so heartbeats
/// carry the reason and the node offers no GPUs.
struct Unopened(&'static str, GpuError);

impl GpuSource for Unopened {
    fn name(&self) -> &'static str {
        self.0
    }

    fn sample(&mut self) -> Result<Frame, GpuError> {
        Err(self.1.clone())
    }
}

/// Opens the chosen source. One that cannot run here (no NVML, an unreadable
/// replay file) still starts, reporting why.
pub fn open(choice: &SourceChoice) -> Box<dyn GpuSource> {
    match choice {
        SourceChoice::Nvml => match nvml::NvmlSource::open() {
            Ok(s) => Box::new(s),
            Err(e) => Box::new(Unopened("nvml", e)),
        },
        SourceChoice::Replay(path) => match fake::FakeSource::from_file(path) {
            Ok(s) => Box::new(s),
            Err(e) => Box::new(Unopened("fake", e)),
        },
        SourceChoice::Simulated { node, count, model } => {
            Box::new(fake::FakeSource::simulated(node, *count, model.as_deref()))
        }
        SourceChoice::None => Box::new(NoGpus),
    }
}
