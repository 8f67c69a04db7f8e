//! The recording format shared by every GPU source: one [`Frame`] per sample,
//! written as one JSON line. The NVML source produces frames, `orca-gpu-probe`
//! prints them (that output is a recording), and the fake source replays them.

use serde::{Deserialize, Serialize};

/// One sample of every device on a host, and the XID errors seen since the last one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Frame {
    /// NVIDIA driver version (`550.54.15`).
    pub driver_version: String,
    /// NVML library version, when known.
    pub nvml_version: String,
    /// One entry per device, by index.
    pub gpus: Vec<DeviceSample>,
    /// XID errors reported since the previous frame.
    pub xids: Vec<XidEvent>,
}

/// One device's readings. Fields NVML could not read are left at zero and
/// named in [`DeviceSample::unreadable`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceSample {
    /// NVML index (`/dev/nvidia<index>`).
    pub index: u32,
    /// `GPU-...`.
    pub uuid: String,
    /// Product name (`NVIDIA H100 80GB HBM3`).
    pub model: String,
    /// PCI bus id (`00000000:18:00.0`).
    pub pci_bus_id: String,
    /// GPU utilisation, percent.
    pub gpu_util_percent: u32,
    /// Memory controller utilisation, percent.
    pub mem_util_percent: u32,
    /// Framebuffer memory used, bytes.
    pub memory_used_bytes: u64,
    /// Framebuffer memory total, bytes.
    pub memory_total_bytes: u64,
    /// Temperature, °C.
    pub temperature_c: u32,
    /// Power draw, mW.
    pub power_mw: u32,
    /// Enforced power limit, mW.
    pub power_limit_mw: u32,
    /// SM clock, MHz.
    pub sm_clock_mhz: u32,
    /// Memory clock, MHz.
    pub mem_clock_mhz: u32,
    /// Volatile uncorrected ECC errors.
    pub ecc_uncorrected: u64,
    /// Volatile corrected ECC errors.
    pub ecc_corrected: u64,
    /// MIG mode enabled.
    pub mig_enabled: bool,
    /// Compute and graphics processes on the device.
    pub processes: Vec<ProcessSample>,
    /// Readings NVML refused (`ecc: NotSupported`), for honesty in recordings.
    pub unreadable: Vec<String>,
}

/// A process on a device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessSample {
    /// Host PID.
    pub pid: u32,
    /// GPU memory used, bytes (0 when the driver does not say).
    pub used_memory_bytes: u64,
}

/// An XID error event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct XidEvent {
    /// The device's index.
    pub index: u32,
    /// The device's UUID, when NVML gave it.
    pub uuid: String,
    /// The XID code.
    pub xid: u64,
}

impl Frame {
    /// Parses a JSON-lines recording: one frame per non-empty line that is not a
    /// `#` comment or a `metric:` line (what `orca-gpu-probe` prints besides frames).
    pub fn parse_recording(text: &str) -> Result<Vec<Frame>, String> {
        text.lines()
            .enumerate()
            .filter(|(_, l)| {
                let l = l.trim();
                !l.is_empty() && !l.starts_with('#') && !l.starts_with("metric:")
            })
            .map(|(n, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", n + 1)))
            .collect()
    }
}
