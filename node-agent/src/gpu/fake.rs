//! The fake GPU source: replays a recording ([`super::record`]) frame by
//! frame, starting over at the end. A recording given as a file is read again
//! when the file changes (tests write the PIDs of real containers, or an XID
//! error, into it while the agent runs). Simulated hosts with `--gpus N` replay
//! the bundled recording resized to N devices, with UUIDs of their own.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

use super::record::Frame;
use super::{GpuError, GpuSource};

/// The recording replayed by simulated hosts: synthetic (see its header), two H100s.
pub const BUNDLED: &str = include_str!("replay/h100x2-synthetic.jsonl");

/// Replays frames.
#[derive(Debug)]
pub struct FakeSource {
    frames: Vec<Frame>,
    next: usize,
    file: Option<(PathBuf, Option<(SystemTime, u64)>)>,
}

/// What tells a rewritten file: its modification time and length.
fn modified(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn read(path: &Path) -> Result<Vec<Frame>, GpuError> {
    let replay = |problem: String| GpuError::Replay {
        path: path.display().to_string(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| replay(e.to_string()))?;
    let frames = Frame::parse_recording(&text).map_err(replay)?;
    if frames.is_empty() {
        return Err(replay("no frames".into()));
    }
    Ok(frames)
}

impl FakeSource {
    /// Replays `frames` (at least one).
    pub fn from_frames(frames: Vec<Frame>) -> Result<Self, GpuError> {
        if frames.is_empty() {
            return Err(GpuError::Replay {
                path: "(frames)".into(),
                problem: "no frames".into(),
            });
        }
        Ok(Self {
            frames,
            next: 0,
            file: None,
        })
    }

    /// Replays a recording file, read again whenever it changes.
    pub fn from_file(path: &Path) -> Result<Self, GpuError> {
        let stamp = modified(path);
        Ok(Self {
            frames: read(path)?,
            next: 0,
            file: Some((path.to_owned(), stamp)),
        })
    }

    /// The bundled recording with `count` devices (the recorded ones repeated
    /// as needed), whose UUIDs and bus ids are derived from `node` so that no two
    /// simulated hosts share a GPU. Recorded processes are dropped: their PIDs
    /// were another machine's. `model` renames the devices (an instance type's
    /// GPU, for a simulated EC2 host).
    pub fn simulated(node: &str, count: usize, model: Option<&str>) -> Self {
        let frames = Frame::parse_recording(BUNDLED)
            .unwrap_or_default()
            .into_iter()
            .map(|f| resize(f, node, count, model))
            .collect::<Vec<_>>();
        Self::from_frames(frames).unwrap_or(Self {
            frames: vec![Frame::default()],
            next: 0,
            file: None,
        })
    }
}

/// A UUID in NVML's `GPU-8-4-4-4-12` form derived from the node and index.
pub fn derived_uuid(node: &str, index: usize) -> String {
    let h = hex::encode(Sha256::digest(format!("{node}/{index}")));
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn resize(mut frame: Frame, node: &str, count: usize, model: Option<&str>) -> Frame {
    let recorded = std::mem::take(&mut frame.gpus);
    if recorded.is_empty() {
        return frame;
    }
    frame.gpus = (0..count)
        .map(|i| {
            let mut d = recorded[i % recorded.len()].clone();
            d.index = i as u32;
            d.uuid = derived_uuid(node, i);
            d.pci_bus_id = format!("00000000:{:02X}:00.0", 0x18 + i);
            d.processes.clear();
            if let Some(model) = model {
                d.model = model.to_owned();
            }
            d
        })
        .collect();
    frame.xids.clear();
    frame
}

impl GpuSource for FakeSource {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn sample(&mut self) -> Result<Frame, GpuError> {
        if let Some((path, stamp)) = &mut self.file {
            let now = modified(path);
            if now != *stamp {
                self.frames = read(path)?;
                self.next = 0;
                *stamp = now;
            }
        }
        let frame = self.frames[self.next % self.frames.len()].clone();
        self.next = (self.next + 1) % self.frames.len();
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_recording_parses_and_resizes() {
        let frames = Frame::parse_recording(BUNDLED).unwrap();
        assert!(frames.len() > 1);
        assert_eq!(frames[0].gpus.len(), 2);
        let mut a = FakeSource::simulated("a", 3, None);
        let f = a.sample().unwrap();
        assert_eq!(f.gpus.len(), 3);
        assert_eq!(f.gpus[2].index, 2);
        let mut b = FakeSource::simulated("b", 3, Some("NVIDIA A10G"));
        let g = b.sample().unwrap();
        assert_ne!(f.gpus[0].uuid, g.gpus[0].uuid);
        assert_eq!(g.gpus[2].model, "NVIDIA A10G");
        assert!(f.gpus[0].uuid.starts_with("GPU-") && f.gpus[0].uuid.len() == 40);
    }

    #[test]
    fn replays_in_order_and_rereads_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let frame = |util: u32| Frame {
            gpus: vec![super::super::record::DeviceSample {
                gpu_util_percent: util,
                ..Default::default()
            }],
            ..Default::default()
        };
        let write = |utils: &[u32]| {
            let text: Vec<String> = utils
                .iter()
                .map(|u| serde_json::to_string(&frame(*u)).unwrap())
                .collect();
            std::fs::write(&path, text.join("\n")).unwrap();
        };
        write(&[1, 2]);
        let mut s = FakeSource::from_file(&path).unwrap();
        let util = |s: &mut FakeSource| s.sample().unwrap().gpus[0].gpu_util_percent;
        assert_eq!([util(&mut s), util(&mut s), util(&mut s)], [1, 2, 1]);
        // A different length makes the change visible even within the mtime granularity.
        write(&[7, 8, 9]);
        let f = std::fs::File::options().append(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        assert_eq!(util(&mut s), 7);
        std::fs::write(&path, "{not json").unwrap();
        f.set_modified(SystemTime::now() + std::time::Duration::from_secs(10))
            .unwrap();
        let e = s.sample().unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }
}
