//! Device health from XID errors. The rule is the NVIDIA Kubernetes device
//! plugin's: every XID marks its device unhealthy except those that report an
//! application's own fault (13, 31, 43, 45, 68, 109: a bad kernel, a page fault,
//! a reset channel). An unhealthy device stays so until the agent restarts
//! (after a reboot or a GPU reset); no new pod is given it.

use std::collections::BTreeMap;

use super::record::Frame;

/// XIDs caused by applications rather than the device.
pub const APPLICATION_XIDS: &[u64] = &[13, 31, 43, 45, 68, 109];

/// Whether an XID makes its device unhealthy.
pub fn is_fatal(xid: u64) -> bool {
    !APPLICATION_XIDS.contains(&xid)
}

/// What NVIDIA's XID catalogue says of the common fatal codes.
pub fn describe(xid: u64) -> &'static str {
    match xid {
        48 => "double bit ECC error",
        61 | 62 => "internal micro-controller error",
        63 | 64 => "ECC page retirement or row remapping event",
        74 => "NVLink error",
        79 => "GPU has fallen off the bus",
        92 => "high single-bit ECC error rate",
        94 => "contained ECC error",
        95 => "uncontained ECC error",
        119 | 120 => "GSP error",
        _ => "see NVIDIA's XID catalogue",
    }
}

/// Health of the devices seen so far, by UUID.
#[derive(Debug, Default)]
pub struct Health {
    unhealthy: BTreeMap<String, String>,
    last_xid: BTreeMap<String, u64>,
}

impl Health {
    /// Takes in a frame's XID events; returns the devices that just became
    /// unhealthy, with the reason.
    pub fn observe(&mut self, frame: &Frame) -> Vec<(String, String)> {
        let mut newly = Vec::new();
        for event in &frame.xids {
            let uuid = if event.uuid.is_empty() {
                match frame.gpus.iter().find(|g| g.index == event.index) {
                    Some(g) => g.uuid.clone(),
                    None => continue,
                }
            } else {
                event.uuid.clone()
            };
            self.last_xid.insert(uuid.clone(), event.xid);
            if is_fatal(event.xid) && !self.unhealthy.contains_key(&uuid) {
                let reason = format!("XID {}: {}", event.xid, describe(event.xid));
                self.unhealthy.insert(uuid.clone(), reason.clone());
                newly.push((uuid, reason));
            }
        }
        newly
    }

    /// Why a device is unhealthy, when it is.
    pub fn reason(&self, uuid: &str) -> Option<&str> {
        self.unhealthy.get(uuid).map(String::as_str)
    }

    /// The latest XID of a device (0: none).
    pub fn last_xid(&self, uuid: &str) -> u64 {
        self.last_xid.get(uuid).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{DeviceSample, XidEvent};
    use super::*;

    #[test]
    fn fatal_xids_mark_their_device_once() {
        let frame = |xids: Vec<XidEvent>| Frame {
            gpus: vec![DeviceSample {
                index: 1,
                uuid: "GPU-b".into(),
                ..Default::default()
            }],
            xids,
            ..Default::default()
        };
        let mut h = Health::default();
        let app = XidEvent {
            index: 1,
            xid: 13,
            ..Default::default()
        };
        assert!(h.observe(&frame(vec![app])).is_empty());
        assert_eq!((h.reason("GPU-b"), h.last_xid("GPU-b")), (None, 13));
        let bus = XidEvent {
            index: 1,
            xid: 79,
            ..Default::default()
        };
        let newly = h.observe(&frame(vec![bus.clone()]));
        assert_eq!(
            newly,
            [(
                "GPU-b".to_owned(),
                "XID 79: GPU has fallen off the bus".to_owned()
            )]
        );
        assert!(h.observe(&frame(vec![bus])).is_empty());
        assert_eq!(
            h.reason("GPU-b"),
            Some("XID 79: GPU has fallen off the bus")
        );
    }
}
