//! Interruption notices: the agent asks the instance metadata service (IMDSv2,
//! every `--notice-poll-ms`) whether its instance is going away:
//!
//! - `meta-data/spot/instance-action`: `{"action": "terminate", "time": "…Z"}`,
//!   about two minutes before EC2 reclaims a spot instance (404 when none);
//! - `meta-data/events/recommendations/rebalance`: `{"noticeTime": "…Z"}`, an
//!   advisory that the spot instance is at elevated risk (404 when none);
//! - `meta-data/events/maintenance/scheduled`: a JSON array of events
//!   (`Code`, `NotBefore` as `21 Jan 2019 09:00:43 GMT`, `State`, `EventId`).
//!
//! The control plane adds what the metadata does not show: the end of the
//! instance's Capacity Block or Capacity Reservation, learned from EC2, comes in
//! every heartbeat answer while it is due ([`Notices::push`]) and is acted on
//! at once, like the agent's own notices.
//!
//! A notice is *due* at once (spot, rebalance, reservation end) or, for
//! maintenance, from `--drain-lead-ms` before it starts. Due notices go into
//! every heartbeat ([`Notices`], which wakes the heartbeat when they change),
//! and each interrupting one (spot, maintenance, reservation end; not the
//! advisory rebalance) starts the pods' checkpoint handshake once
//! ([`crate::pods::PodManager::interrupt`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use orca_proto::controlplane::v1::{Notice, NoticeKind};
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::imds::Imds;
use crate::pods::PodManager;

/// The due notices, shared with the heartbeat, and those the control plane
/// sent.
#[derive(Clone)]
pub struct Notices {
    due: Arc<watch::Sender<Vec<Notice>>>,
    pushed: Arc<watch::Sender<Vec<Notice>>>,
}

impl Default for Notices {
    fn default() -> Self {
        Self {
            due: Arc::new(watch::Sender::new(Vec::new())),
            pushed: Arc::new(watch::Sender::new(Vec::new())),
        }
    }
}

fn replace_if_new(sender: &watch::Sender<Vec<Notice>>, notices: Vec<Notice>) {
    sender.send_if_modified(|kept| {
        let ids = |v: &[Notice]| v.iter().map(|n| n.id.clone()).collect::<Vec<_>>();
        let changed = ids(kept) != ids(&notices);
        if changed {
            *kept = notices;
        }
        changed
    });
}

impl Notices {
    /// The notices due now.
    pub fn latest(&self) -> Vec<Notice> {
        self.due.borrow().clone()
    }

    /// Resolves when the due notices change.
    pub async fn changed(&self) {
        let mut rx = self.due.subscribe();
        let _ = rx.changed().await;
    }

    /// The notices of the control plane's last heartbeat answer (it repeats
    /// them while they are due); the watcher acts on new ones at once.
    pub fn push(&self, notices: Vec<Notice>) {
        replace_if_new(&self.pushed, notices);
    }

    fn publish(&self, notices: Vec<Notice>) {
        replace_if_new(&self.due, notices);
    }
}

/// How the notices are watched and acted on.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Pause between looks at the metadata service.
    pub every: Duration,
    /// Maintenance is due this long before it starts.
    pub drain_lead: Duration,
    /// A pod's containers get this long between the notice file and SIGTERM.
    pub pause: Duration,
}

/// Polls `imds` until the process ends, publishing due notices (the metadata's
/// and the control plane's) into `notices` and starting the pods' handshake for
/// each new interrupting one.
pub async fn run(imds: Imds, watch: Watch, pods: PodManager, notices: Notices) {
    let mut acted: BTreeSet<String> = BTreeSet::new();
    let mut failing = false;
    let mut from_imds: Vec<Notice> = Vec::new();
    let mut pushed = notices.pushed.subscribe();
    let mut next_look = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_look {
            match read(&imds).await {
                Ok(all) => {
                    if failing {
                        info!("instance metadata answers again");
                        failing = false;
                    }
                    from_imds = all;
                }
                Err(e) if !failing => {
                    warn!(error = %e, "cannot read interruption notices; retrying");
                    failing = true;
                }
                Err(_) => {}
            }
            next_look = tokio::time::Instant::now() + watch.every;
        }
        let now = Timestamp::now();
        let due: Vec<Notice> = from_imds
            .iter()
            .chain(pushed.borrow_and_update().iter())
            .filter(|n| is_due(n, now, watch.drain_lead))
            .cloned()
            .collect();
        for n in &due {
            if interrupting(n) && acted.insert(n.id.clone()) {
                info!(kind = ?n.kind(), action = %n.action, id = %n.id, "interruption notice");
                pods.interrupt(n, watch.pause);
            }
        }
        notices.publish(due);
        tokio::select! {
            _ = tokio::time::sleep_until(next_look) => {}
            _ = pushed.changed() => {}
        }
    }
}

/// Whether a notice stops the instance's pods (the rebalance advisory does not).
pub fn interrupting(n: &Notice) -> bool {
    matches!(
        n.kind(),
        NoticeKind::SpotInterruption
            | NoticeKind::ScheduledMaintenance
            | NoticeKind::ReservationEnd
    )
}

/// Whether a notice is to be reported and acted on now.
pub fn is_due(n: &Notice, now: Timestamp, lead: Duration) -> bool {
    match (n.kind(), deadline(n)) {
        (NoticeKind::ScheduledMaintenance, Some(at)) => {
            let lead = jiff::SignedDuration::try_from(lead).unwrap_or(jiff::SignedDuration::MAX);
            at.checked_sub(lead).is_ok_and(|from| from <= now)
        }
        _ => true,
    }
}

/// A notice's deadline.
pub fn deadline(n: &Notice) -> Option<Timestamp> {
    let t = n.deadline?;
    Timestamp::new(t.seconds, t.nanos).ok()
}

/// What an answer of one metadata path means.
type Parse = fn(&str) -> Result<Vec<Notice>, String>;

/// The metadata paths polled, with what each answer means.
const PATHS: [(&str, &str, Parse); 3] = [
    ("spot notice", "meta-data/spot/instance-action", |b| {
        parse_spot(b).map(|n| vec![n])
    }),
    (
        "rebalance",
        "meta-data/events/recommendations/rebalance",
        |b| parse_rebalance(b).map(|n| vec![n]),
    ),
    (
        "maintenance",
        "meta-data/events/maintenance/scheduled",
        parse_maintenance,
    ),
];

async fn read(imds: &Imds) -> Result<Vec<Notice>, String> {
    let mut out = Vec::new();
    // One session token per look, not one per path.
    let token = imds.token().await.map_err(|e| e.to_string())?;
    for (what, path, parse) in PATHS {
        let body = imds
            .get_optional(&token, what, path)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(body) = body {
            out.extend(parse(&body)?);
        }
    }
    Ok(out)
}

fn pb_time(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

fn rfc3339(what: &str, s: &str) -> Result<Timestamp, String> {
    s.parse()
        .map_err(|e| format!("{what}: {s:?} is not an RFC 3339 time: {e}"))
}

/// `spot/instance-action`.
pub fn parse_spot(body: &str) -> Result<Notice, String> {
    #[derive(Deserialize)]
    struct Action {
        action: String,
        time: String,
    }
    let a: Action =
        serde_json::from_str(body).map_err(|e| format!("spot/instance-action: {e}: {body}"))?;
    let at = rfc3339("spot/instance-action time", &a.time)?;
    Ok(Notice {
        kind: NoticeKind::SpotInterruption as i32,
        id: format!("spot:{}:{}", a.action, a.time),
        action: a.action,
        deadline: Some(pb_time(at)),
        noticed_at: Some(pb_time(Timestamp::now())),
        reservation_id: String::new(),
    })
}

/// `events/recommendations/rebalance`.
pub fn parse_rebalance(body: &str) -> Result<Notice, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Rebalance {
        notice_time: String,
    }
    let r: Rebalance = serde_json::from_str(body)
        .map_err(|e| format!("events/recommendations/rebalance: {e}: {body}"))?;
    let at = rfc3339("rebalance noticeTime", &r.notice_time)?;
    Ok(Notice {
        kind: NoticeKind::Rebalance as i32,
        id: format!("rebalance:{}", r.notice_time),
        action: String::new(),
        deadline: None,
        noticed_at: Some(pb_time(at)),
        reservation_id: String::new(),
    })
}

/// `events/maintenance/scheduled`: the active events (completed and canceled
/// ones are history).
pub fn parse_maintenance(body: &str) -> Result<Vec<Notice>, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Event {
        code: String,
        not_before: String,
        #[serde(default)]
        state: String,
        #[serde(default)]
        event_id: String,
    }
    let body = body.trim();
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let events: Vec<Event> = serde_json::from_str(body)
        .map_err(|e| format!("events/maintenance/scheduled: {e}: {body}"))?;
    events
        .into_iter()
        .filter(|e| e.state.is_empty() || e.state == "active")
        .map(|e| {
            let at = jiff::fmt::strtime::parse("%d %b %Y %H:%M:%S GMT", &e.not_before)
                .and_then(|t| t.to_datetime())
                .and_then(|t| t.to_zoned(jiff::tz::TimeZone::UTC))
                .map_err(|err| format!("maintenance NotBefore {:?}: {err}", e.not_before))?
                .timestamp();
            Ok(Notice {
                kind: NoticeKind::ScheduledMaintenance as i32,
                id: format!("maintenance:{}:{}", e.event_id, e.not_before),
                action: e.code,
                deadline: Some(pb_time(at)),
                noticed_at: Some(pb_time(Timestamp::now())),
                reservation_id: String::new(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spot_notice_has_action_and_deadline() {
        let n = parse_spot(r#"{"action": "terminate", "time": "2017-09-18T08:22:00Z"}"#).unwrap();
        assert_eq!(n.kind(), NoticeKind::SpotInterruption);
        assert_eq!(n.action, "terminate");
        assert_eq!(
            deadline(&n).unwrap(),
            "2017-09-18T08:22:00Z".parse::<Timestamp>().unwrap()
        );
        assert!(interrupting(&n));
        assert!(parse_spot(r#"{"action": "stop"}"#).is_err());
        assert!(parse_spot(r#"{"action": "stop", "time": "soon"}"#).is_err());
    }

    #[test]
    fn rebalance_is_advisory() {
        let n = parse_rebalance(r#"{"noticeTime": "2020-10-27T08:22:00Z"}"#).unwrap();
        assert_eq!(n.kind(), NoticeKind::Rebalance);
        assert!(n.deadline.is_none());
        assert!(!interrupting(&n));
        assert!(is_due(&n, Timestamp::now(), Duration::ZERO));
    }

    #[test]
    fn maintenance_is_due_within_the_lead_and_only_when_active() {
        let body = r#"[
          {"NotBefore": "21 Jan 2019 09:00:43 GMT", "Code": "system-reboot",
           "Description": "scheduled reboot", "EventId": "instance-event-0d59937288b749b32",
           "NotAfter": "21 Jan 2019 09:17:23 GMT", "State": "active"},
          {"NotBefore": "22 Jan 2019 09:00:43 GMT", "Code": "instance-stop",
           "EventId": "instance-event-1", "State": "canceled"}
        ]"#;
        let events = parse_maintenance(body).unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        let n = &events[0];
        assert_eq!(n.action, "system-reboot");
        let start: Timestamp = "2019-01-21T09:00:43Z".parse().unwrap();
        assert_eq!(deadline(n).unwrap(), start);
        let lead = Duration::from_secs(600);
        let early = start - jiff::SignedDuration::from_secs(601);
        let inside = start - jiff::SignedDuration::from_secs(599);
        assert!(!is_due(n, early, lead));
        assert!(is_due(n, inside, lead));
        assert!(parse_maintenance("[]").unwrap().is_empty());
        assert!(parse_maintenance("").unwrap().is_empty());
        let bad = r#"[{"NotBefore": "tomorrow", "Code": "system-reboot"}]"#;
        assert!(parse_maintenance(bad).unwrap_err().contains("tomorrow"));
    }
}
