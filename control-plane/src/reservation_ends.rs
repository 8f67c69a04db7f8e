//! Capacity Block and Capacity Reservation ends: the nodes of an instance in a
//! reservation that is about to end are drained ahead of time.
//!
//! An instance's reservation is known from its RunInstances answer
//! (`capacityReservationId`, kept as the node label
//! [`LABEL_RESERVATION`]). Every `provider.ec2.reservation_check_ms` the
//! control plane asks EC2 how those reservations stand
//! (DescribeCapacityReservations) and works out when each one's instances go:
//!
//! - a **Capacity Block**: EC2 terminates its instances from 30 minutes before
//!   its end (the "Capacity Block Reservation Expiration Warning" comes 10
//!   minutes before that);
//! - an **On-Demand Capacity Reservation** with an end date: it expires then and
//!   its instances run on at the on-demand price, a bill nobody planned.
//!
//! From `provider.ec2.reservation_drain_lead_ms` (default 10 minutes, as
//! Karpenter) before that time, each node in the reservation gets a notice of
//! kind `RESERVATION_END`, handled as an interruption
//! ([`crate::interruptions`]): the node is cordoned, its offering avoided and
//! its pods moved, and the notice goes to the agent in every heartbeat answer
//! (IMDS does not show it), which runs the checkpoint handshake
//! (`/run/orca/notice`, `checkpoint-wait`, SIGTERM). A pod pinned to that
//! reservation (`orca.research/capacity-reservation-id`) cannot be relaunched
//! into it: it ends `Failed (CapacityReservationEnd)`, its checkpoint recorded,
//! and a new pod pinned to an ending reservation is refused at launch.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use jiff::Timestamp;
use orca_proto::controlplane::v1::{self as pb, NoticeKind};
use tracing::warn;

use crate::cloud::{InstanceProvider, ReservationInfo};

pub use orca_model::labels::LABEL_RESERVATION;

/// The reason of the Events, the cordon and the pods' verdicts.
pub const REASON: &str = "CapacityReservationEnd";

/// How long before a Capacity Block's end EC2 starts terminating its instances.
pub const CAPACITY_BLOCK_RECLAIM: Duration = Duration::from_secs(30 * 60);

/// When a reservation's instances go (a Capacity Block's) or start to cost the
/// on-demand price (a reservation's); `None` for one without an end.
pub fn reclaim_at(r: &ReservationInfo) -> Option<Timestamp> {
    let end = r.end?;
    if r.capacity_block {
        end.checked_sub(jiff::SignedDuration::try_from(CAPACITY_BLOCK_RECLAIM).ok()?)
            .ok()
    } else {
        Some(end)
    }
}

fn pb_time(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

/// The notice for the nodes in `r`, when its reclaim is within `lead` of `now`.
pub fn notice(r: &ReservationInfo, now: Timestamp, lead: Duration) -> Option<pb::Notice> {
    let at = reclaim_at(r)?;
    let lead = jiff::SignedDuration::try_from(lead).unwrap_or(jiff::SignedDuration::MAX);
    let from = at.checked_sub(lead).unwrap_or(Timestamp::MIN);
    (from <= now).then(|| pb::Notice {
        kind: NoticeKind::ReservationEnd as i32,
        action: if r.capacity_block {
            "terminate"
        } else {
            "expire"
        }
        .into(),
        deadline: Some(pb_time(at)),
        noticed_at: Some(pb_time(now)),
        id: format!("reservation:{}:{at}", r.id),
        reservation_id: r.id.clone(),
    })
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Ending reservations: what the control plane remembers of them (recomputed
/// by the next check after a restart), the notices their nodes' heartbeat
/// answers carry, and the refusal of pods pinned to them. Part of the
/// provisioner, which checks them on each pass; cheap to clone.
#[derive(Clone, Default)]
pub struct ReservationEnds {
    memory: std::sync::Arc<Memory>,
}

#[derive(Default)]
struct Memory {
    /// Node → the reservation-end notice for its agent.
    notices: std::sync::Mutex<HashMap<String, pb::Notice>>,
    /// Reservations found ending → when their instances go (kept after their
    /// nodes are gone, so a pod pinned to one is still refused).
    ending: std::sync::Mutex<HashMap<String, Timestamp>>,
    /// When the last check ran.
    last_check: std::sync::Mutex<Option<std::time::Instant>>,
    /// Notices found, not yet handed to the interruptions.
    due: std::sync::Mutex<Vec<(pb::Node, pb::Notice)>>,
}

impl ReservationEnds {
    /// The notices a node's heartbeat answer carries.
    pub(crate) fn pushed_notices(&self, node: &str) -> Vec<pb::Notice> {
        lock(&self.memory.notices)
            .get(node)
            .cloned()
            .into_iter()
            .collect()
    }

    /// Why a pod pinned to reservation `id` cannot launch now; `None` when it can.
    pub(crate) fn reservation_ending(&self, id: &str) -> Option<String> {
        let at = *lock(&self.memory.ending).get(id)?;
        Some(format!(
            "capacity reservation {id} ends: its instances go at {at} and its nodes are being drained; pin the pod to another reservation or drop orca.research/capacity-reservation-id"
        ))
    }

    /// Looks at the reservations of `nodes` when a check is due, and hands the
    /// nodes of the ending ones their notice.
    pub(crate) async fn check_reservation_ends(
        &self,
        provider: &dyn InstanceProvider,
        nodes: &[pb::Node],
        every: Duration,
        lead: Duration,
    ) {
        {
            let mut last = lock(&self.memory.last_check);
            if last.is_some_and(|t| t.elapsed() < every) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let held: Vec<&pb::Node> = nodes
            .iter()
            .filter(|n| n.labels.contains_key(LABEL_RESERVATION) && !n.instance_id.is_empty())
            .collect();
        let ids: Vec<String> = held
            .iter()
            .map(|n| n.labels[LABEL_RESERVATION].clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if ids.is_empty() {
            lock(&self.memory.notices).clear();
            return;
        }
        let reservations = match provider.reservations(&ids).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "capacity reservations not described; retrying at the next check");
                return;
            }
        };
        let now = Timestamp::now();
        {
            let mut ending = lock(&self.memory.ending);
            for r in &reservations {
                match notice(r, now, lead).and_then(|_| reclaim_at(r)) {
                    Some(at) => ending.insert(r.id.clone(), at),
                    // Its end was moved away.
                    None => ending.remove(&r.id),
                };
            }
        }
        let mut due = HashMap::new();
        for node in held {
            let id = &node.labels[LABEL_RESERVATION];
            let Some(n) = reservations
                .iter()
                .find(|r| &r.id == id)
                .and_then(|r| notice(r, now, lead))
            else {
                continue;
            };
            due.insert(node.name.clone(), n);
        }
        *lock(&self.memory.notices) = due.clone();
        let mut handed = lock(&self.memory.due);
        for (name, n) in due {
            let Some(node) = nodes.iter().find(|x| x.name == name) else {
                continue;
            };
            handed.push((node.clone(), n));
        }
    }

    /// The reservation-end notices found since the last call, for
    /// [`crate::interruptions`] to handle like an agent's (the scheduler's pass
    /// hands them over right after `Provisioner::tend_instances`).
    pub fn take_reservation_notices(&self) -> Vec<(pb::Node, pb::Notice)> {
        std::mem::take(&mut *lock(&self.memory.due))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn reservation(capacity_block: bool, end: Option<&str>) -> ReservationInfo {
        ReservationInfo {
            id: "cr-0123456789abcdef0".into(),
            capacity_block,
            end: end.map(at),
            state: "active".into(),
        }
    }

    #[test]
    fn a_capacity_block_is_reclaimed_half_an_hour_before_its_end() {
        let block = reservation(true, Some("2026-11-24T12:00:00Z"));
        assert_eq!(reclaim_at(&block), Some(at("2026-11-24T11:30:00Z")));
        let odcr = reservation(false, Some("2026-11-24T12:00:00Z"));
        assert_eq!(reclaim_at(&odcr), Some(at("2026-11-24T12:00:00Z")));
        assert_eq!(reclaim_at(&reservation(false, None)), None);
    }

    #[test]
    fn the_notice_is_due_from_the_lead_before_the_reclaim() {
        let block = reservation(true, Some("2026-11-24T12:00:00Z"));
        let lead = Duration::from_secs(600);
        assert!(notice(&block, at("2026-11-24T11:19:59Z"), lead).is_none());
        let n = notice(&block, at("2026-11-24T11:20:00Z"), lead).unwrap();
        assert_eq!(n.kind(), NoticeKind::ReservationEnd);
        assert_eq!(n.action, "terminate");
        assert_eq!(n.reservation_id, block.id);
        assert_eq!(
            n.deadline.unwrap().seconds,
            at("2026-11-24T11:30:00Z").as_second()
        );
        let later = notice(&block, at("2026-11-24T11:25:00Z"), lead).unwrap();
        assert_eq!(n.id, later.id, "one notice per reservation end");
        let odcr = reservation(false, Some("2026-11-24T12:00:00Z"));
        assert_eq!(
            notice(&odcr, at("2026-11-24T11:55:00Z"), lead)
                .unwrap()
                .action,
            "expire"
        );
        assert!(notice(&reservation(false, None), Timestamp::MAX, lead).is_none());
    }
}
