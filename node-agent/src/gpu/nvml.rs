//! The NVML source: every device's readings and the XID errors since the last
//! sample, through [nvml-wrapper]'s safe API.
//!
//! `libnvidia-ml.so.1` (the name the driver installs; the unversioned
//! `libnvidia-ml.so` comes only with development packages) is loaded at run
//! time, so the agent builds and runs on hosts without a GPU: [`NvmlSource::open`]
//! then answers [`GpuError::Unavailable`] saying why.
//!
//! Design:
//! - One NVML handle per process, initialised by the first successful open and
//!   kept for the life of the process (a `static`): nvml-wrapper's event sets
//!   and devices borrow the handle, and a source that owned it would borrow
//!   from itself.
//! - XID errors: at open, one event set per device that supports
//!   `CRITICAL_XID_ERROR` (one set per device, because nvml-wrapper frees the
//!   set when a registration fails); every sample drains them with a 0 ms wait.
//!   A device whose XIDs cannot be watched says so in each sample's
//!   `unreadable` (`xid: NotSupported`).
//! - A reading that fails is left at zero and named in the device's
//!   `unreadable` (`ecc_uncorrected: NotSupported` on consumer GPUs), so one
//!   missing counter does not hide the others. A device that cannot be opened,
//!   or one that is lost (`GpuLost`, XID 79's "fallen off the bus"), fails the
//!   whole sample with [`GpuError::Sample`] naming it.
//! - A device's UUID, name and PCI bus id do not change while the driver is
//!   loaded: they are read once per device and kept.
//!
//! Limitations: nvml-wrapper calls the `_v3` process queries and
//! `nvmlDeviceGetMemoryInfo_v2`, which need driver R510 or newer; on older
//! drivers those readings are named in `unreadable`. The XID of an event is the
//! latest one NVML saw on the device (NVML's own rule), and 999 when NVML does
//! not know it.
//!
//! [nvml-wrapper]: https://docs.rs/nvml-wrapper

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::OnceLock;

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, EventSet, Nvml};

use super::record::{DeviceSample, Frame, ProcessSample, XidEvent};
use super::{GpuError, GpuSource};

/// The NVML library, by the name the NVIDIA driver installs.
pub const LIBRARY: &str = "libnvidia-ml.so.1";

/// NVML's `NVML_DEVICE_MIG_ENABLE`: the current MIG mode when enabled.
const MIG_ENABLE: u32 = 1;

/// The XID NVML reports when it does not know the code (`nvmlEventData_t`'s 999).
pub const UNKNOWN_XID: u64 = 999;

/// Events drained per device and sample at most, so a device that floods
/// events cannot hold the sampler in a loop.
const MAX_EVENTS_PER_SAMPLE: usize = 64;

/// The process's NVML handle, once initialised.
static NVML: OnceLock<Nvml> = OnceLock::new();

/// The process's NVML handle, initialising NVML on the first call that succeeds.
fn nvml() -> Result<&'static Nvml, GpuError> {
    if let Some(nvml) = NVML.get() {
        return Ok(nvml);
    }
    let nvml = Nvml::builder()
        .lib_path(OsStr::new(LIBRARY))
        .init()
        .map_err(|e| unavailable(&e))?;
    // A thread that raced us has set it first: ours is dropped (NVML counts
    // its initialisations).
    Ok(NVML.get_or_init(|| nvml))
}

/// Why NVML cannot run here, with the hint an operator needs.
fn unavailable(e: &NvmlError) -> GpuError {
    let why = match e {
        NvmlError::LibloadingError(e) => e.to_string(),
        NvmlError::DriverNotLoaded => "the NVIDIA kernel driver is not loaded".to_owned(),
        NvmlError::LibRmVersionMismatch => {
            "the library and the kernel driver differ in version (reboot after a driver upgrade)"
                .to_owned()
        }
        NvmlError::NoPermission => "no permission to talk to the driver".to_owned(),
        e => e.to_string(),
    };
    GpuError::Unavailable(format!(
        "NVML: {why} (is the NVIDIA driver installed? {LIBRARY})"
    ))
}

/// An `unreadable` entry: the reading and NVML's error (`ecc_corrected: NotSupported`).
fn unreadable(reading: &str, e: &NvmlError) -> String {
    format!("{reading}: {e:?}")
}

/// The XID code of an event.
fn xid_code(xid: Option<XidError>) -> u64 {
    match xid {
        Some(XidError::Value(code)) => code,
        Some(XidError::Unknown) | None => UNKNOWN_XID,
    }
}

/// A process's GPU memory in bytes (0 when the driver does not say).
fn used_bytes(used: &UsedGpuMemory) -> u64 {
    match used {
        UsedGpuMemory::Used(bytes) => *bytes,
        UsedGpuMemory::Unavailable => 0,
    }
}

/// Compute and graphics processes as one list by PID: a process with both
/// kinds of context appears once, with the larger of its memory figures.
fn merge_processes(processes: impl IntoIterator<Item = (u32, u64)>) -> Vec<ProcessSample> {
    let mut by_pid = BTreeMap::<u32, u64>::new();
    for (pid, used) in processes {
        let entry = by_pid.entry(pid).or_default();
        *entry = (*entry).max(used);
    }
    by_pid
        .into_iter()
        .map(|(pid, used_memory_bytes)| ProcessSample {
            pid,
            used_memory_bytes,
        })
        .collect()
}

/// What does not change about a device while the driver is loaded.
#[derive(Debug, Clone, Default)]
struct Identity {
    uuid: String,
    model: String,
    pci_bus_id: String,
    /// Identity readings that failed (retried at the next sample).
    unreadable: Vec<String>,
}

/// A device that answered neither a reading nor an open: the sample fails.
#[derive(Debug)]
struct Lost;

/// Readings of one device: failures are recorded, a lost device stops them.
struct Readings {
    unreadable: Vec<String>,
}

impl Readings {
    /// The value, or the default with the failure recorded; `Lost` for a lost GPU.
    fn take<T: Default>(&mut self, reading: &str, r: Result<T, NvmlError>) -> Result<T, Lost> {
        match r {
            Ok(v) => Ok(v),
            Err(NvmlError::GpuLost) => Err(Lost),
            Err(e) => {
                self.unreadable.push(unreadable(reading, &e));
                Ok(T::default())
            }
        }
    }
}

/// Samples every device through NVML.
#[derive(Debug)]
pub struct NvmlSource {
    nvml: &'static Nvml,
    driver_version: String,
    nvml_version: String,
    /// One XID event set per watched device, by index.
    xid_sets: Vec<(u32, EventSet<'static>)>,
    /// Devices whose XIDs are not watched, with why (`xid: NotSupported`).
    xid_unwatched: BTreeMap<u32, String>,
    /// Identities read so far, by index.
    identities: BTreeMap<u32, Identity>,
}

impl NvmlSource {
    /// Initialises NVML and starts watching every device's XID errors.
    /// [`GpuError::Unavailable`] when the library, the driver or the devices
    /// cannot be reached.
    pub fn open() -> Result<Self, GpuError> {
        let nvml = nvml()?;
        let count = nvml.device_count().map_err(|e| unavailable(&e))?;
        let mut source = Self {
            nvml,
            driver_version: nvml.sys_driver_version().unwrap_or_default(),
            nvml_version: nvml.sys_nvml_version().unwrap_or_default(),
            xid_sets: Vec::new(),
            xid_unwatched: BTreeMap::new(),
            identities: BTreeMap::new(),
        };
        for index in 0..count {
            match source.watch_xids(index) {
                Ok(set) => source.xid_sets.push((index, set)),
                Err(why) => {
                    source.xid_unwatched.insert(index, why);
                }
            }
        }
        Ok(source)
    }

    /// Devices whose XID errors are not watched, with why.
    pub fn xid_unwatched(&self) -> &BTreeMap<u32, String> {
        &self.xid_unwatched
    }

    /// An event set watching one device's critical XID errors, or why there is none.
    fn watch_xids(&self, index: u32) -> Result<EventSet<'static>, String> {
        let device = self
            .nvml
            .device_by_index(index)
            .map_err(|e| unreadable("xid", &e))?;
        let supported = device
            .supported_event_types()
            .map_err(|e| unreadable("xid", &e))?;
        if !supported.contains(EventTypes::CRITICAL_XID_ERROR) {
            return Err(unreadable("xid", &NvmlError::NotSupported));
        }
        let set = self
            .nvml
            .create_event_set()
            .map_err(|e| unreadable("xid", &e))?;
        device
            .register_events(EventTypes::CRITICAL_XID_ERROR, set)
            .map_err(|e| unreadable("xid", &e.error))
    }

    /// A device's identity, read at its first sample (failed readings again later).
    fn identity(&mut self, index: u32, device: &Device<'static>) -> Result<Identity, Lost> {
        if let Some(known) = self.identities.get(&index)
            && known.unreadable.is_empty()
        {
            return Ok(known.clone());
        }
        let mut r = Readings {
            unreadable: Vec::new(),
        };
        let identity = Identity {
            uuid: r.take("uuid", device.uuid())?,
            model: r.take("model", device.name())?,
            pci_bus_id: r.take("pci_bus_id", device.pci_info().map(|p| p.bus_id))?,
            unreadable: Vec::new(),
        };
        let identity = Identity {
            unreadable: r.unreadable,
            ..identity
        };
        self.identities.insert(index, identity.clone());
        Ok(identity)
    }

    /// The XID errors pending on every watched device.
    fn drain_xids(&self) -> Result<Vec<XidEvent>, GpuError> {
        let mut events = Vec::new();
        for (index, set) in &self.xid_sets {
            for _ in 0..MAX_EVENTS_PER_SAMPLE {
                match set.wait(0) {
                    Ok(data) if data.event_type.contains(EventTypes::CRITICAL_XID_ERROR) => {
                        events.push(XidEvent {
                            index: *index,
                            uuid: self
                                .identities
                                .get(index)
                                .map(|i| i.uuid.clone())
                                .filter(|u| !u.is_empty())
                                .or_else(|| data.device.uuid().ok())
                                .unwrap_or_default(),
                            xid: xid_code(data.event_data),
                        });
                    }
                    Ok(_) => {}
                    Err(NvmlError::GpuLost) => return Err(lost(*index, &self.identities)),
                    // Timeout: none pending. Anything else: the next sample tries again.
                    Err(_) => break,
                }
            }
        }
        Ok(events)
    }

    /// One device's readings.
    fn device(&mut self, index: u32) -> Result<DeviceSample, GpuError> {
        let device = self.nvml.device_by_index(index).map_err(|e| match e {
            NvmlError::GpuLost => lost(index, &self.identities),
            e => GpuError::Sample(format!("NVML: GPU {index} cannot be opened: {e}")),
        })?;
        self.read(index, &device)
            .map_err(|Lost| lost(index, &self.identities))
    }

    fn read(&mut self, index: u32, device: &Device<'static>) -> Result<DeviceSample, Lost> {
        let identity = self.identity(index, device)?;
        let mut r = Readings {
            unreadable: identity.unreadable.clone(),
        };
        let utilization = r.take("utilization", device.utilization_rates().map(Some))?;
        let memory = r.take("memory", device.memory_info().map(Some))?;
        let mig = r.take("mig_enabled", device.mig_mode().map(Some))?;
        let compute = r.take("processes.compute", device.running_compute_processes())?;
        let graphics = r.take("processes.graphics", device.running_graphics_processes())?;
        let mut sample = DeviceSample {
            index,
            uuid: identity.uuid,
            model: identity.model,
            pci_bus_id: identity.pci_bus_id,
            gpu_util_percent: utilization.as_ref().map_or(0, |u| u.gpu),
            mem_util_percent: utilization.as_ref().map_or(0, |u| u.memory),
            memory_used_bytes: memory.as_ref().map_or(0, |m| m.used),
            memory_total_bytes: memory.as_ref().map_or(0, |m| m.total),
            temperature_c: r.take("temperature_c", device.temperature(TemperatureSensor::Gpu))?,
            power_mw: r.take("power_mw", device.power_usage())?,
            power_limit_mw: r.take("power_limit_mw", device.enforced_power_limit())?,
            sm_clock_mhz: r.take("sm_clock_mhz", device.clock_info(Clock::SM))?,
            mem_clock_mhz: r.take("mem_clock_mhz", device.clock_info(Clock::Memory))?,
            ecc_uncorrected: r.take(
                "ecc_uncorrected",
                device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
            )?,
            ecc_corrected: r.take(
                "ecc_corrected",
                device.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile),
            )?,
            mig_enabled: mig.is_some_and(|m| m.current == MIG_ENABLE),
            processes: merge_processes(
                compute
                    .iter()
                    .chain(&graphics)
                    .map(|p| (p.pid, used_bytes(&p.used_gpu_memory))),
            ),
            unreadable: Vec::new(),
        };
        if let Some(why) = self.xid_unwatched.get(&index) {
            r.unreadable.push(why.clone());
        }
        sample.unreadable = r.unreadable;
        Ok(sample)
    }
}

/// The error of a lost device.
fn lost(index: u32, identities: &BTreeMap<u32, Identity>) -> GpuError {
    match identities.get(&index).map(|i| i.uuid.as_str()) {
        Some(uuid) if !uuid.is_empty() => {
            GpuError::Sample(format!("NVML: GPU {index} ({uuid}) is lost"))
        }
        _ => GpuError::Sample(format!("NVML: GPU {index} is lost")),
    }
}

impl GpuSource for NvmlSource {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn sample(&mut self) -> Result<Frame, GpuError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|e| GpuError::Sample(format!("NVML: the devices cannot be counted: {e}")))?;
        let xids = self.drain_xids()?;
        let gpus = (0..count)
            .map(|index| self.device(index))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Frame {
            driver_version: self.driver_version.clone(),
            nvml_version: self.nvml_version.clone(),
            gpus,
            xids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Here (no NVIDIA driver) NVML is unavailable and says what to install; on
    /// a GPU host it samples every device.
    #[test]
    fn open_says_why_nvml_is_unavailable() {
        match NvmlSource::open() {
            Err(GpuError::Unavailable(why)) => {
                assert!(why.starts_with("NVML: "), "{why}");
                assert!(why.contains("libnvidia-ml.so.1"), "{why}");
                assert!(why.contains("is the NVIDIA driver installed?"), "{why}");
            }
            Ok(mut source) => {
                let frame = source.sample().expect("a GPU host samples");
                assert!(!frame.driver_version.is_empty());
                assert!(frame.gpus.iter().all(|g| g.uuid.starts_with("GPU-")));
            }
            Err(e) => panic!("expected Unavailable, got {e:?}"),
        }
    }

    #[test]
    fn driver_errors_read_as_unavailable_with_the_hint() {
        let e = unavailable(&NvmlError::DriverNotLoaded);
        assert_eq!(
            e,
            GpuError::Unavailable(
                "NVML: the NVIDIA kernel driver is not loaded \
                 (is the NVIDIA driver installed? libnvidia-ml.so.1)"
                    .into()
            )
        );
    }

    #[test]
    fn failed_readings_are_zero_and_named_but_a_lost_gpu_stops() {
        let mut r = Readings {
            unreadable: Vec::new(),
        };
        assert_eq!(r.take("power_mw", Ok(250_000u32)).unwrap(), 250_000);
        assert_eq!(
            r.take("ecc_corrected", Err::<u64, _>(NvmlError::NotSupported))
                .unwrap(),
            0
        );
        assert_eq!(
            r.take("sm_clock_mhz", Err::<u32, _>(NvmlError::Unknown))
                .unwrap(),
            0
        );
        assert_eq!(
            r.unreadable,
            ["ecc_corrected: NotSupported", "sm_clock_mhz: Unknown"]
        );
        assert!(
            r.take("power_mw", Err::<u32, _>(NvmlError::GpuLost))
                .is_err()
        );
    }

    #[test]
    fn xid_codes() {
        assert_eq!(xid_code(Some(XidError::Value(79))), 79);
        assert_eq!(xid_code(Some(XidError::Unknown)), UNKNOWN_XID);
        assert_eq!(xid_code(None), UNKNOWN_XID);
    }

    #[test]
    fn compute_and_graphics_processes_merge_by_pid() {
        let merged = merge_processes([
            (20, used_bytes(&UsedGpuMemory::Used(1 << 30))),
            (10, used_bytes(&UsedGpuMemory::Unavailable)),
            (20, used_bytes(&UsedGpuMemory::Used(2 << 30))),
        ]);
        assert_eq!(
            merged,
            [
                ProcessSample {
                    pid: 10,
                    used_memory_bytes: 0,
                },
                ProcessSample {
                    pid: 20,
                    used_memory_bytes: 2 << 30,
                },
            ]
        );
    }

    #[test]
    fn lost_names_the_device() {
        let mut ids = BTreeMap::new();
        assert_eq!(
            lost(3, &ids),
            GpuError::Sample("NVML: GPU 3 is lost".into())
        );
        ids.insert(
            3,
            Identity {
                uuid: "GPU-x".into(),
                ..Default::default()
            },
        );
        assert_eq!(
            lost(3, &ids),
            GpuError::Sample("NVML: GPU 3 (GPU-x) is lost".into())
        );
    }
}
