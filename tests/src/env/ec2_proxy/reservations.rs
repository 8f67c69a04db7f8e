//! On-Demand Capacity Reservations, which moto does not implement (TESTENV §4).
//!
//! The proxy answers `CreateCapacityReservation`, `DescribeCapacityReservations`
//! and `CancelCapacityReservation` itself, checks each RunInstances that targets a
//! reservation against it, forwards the launch to moto without the
//! `CapacityReservationSpecification` parameters (moto accepts and ignores them),
//! and writes the targeting into moto's instance XML, in RunInstances and in every
//! later DescribeInstances, as EC2 returns it: `capacityReservationId` and
//! `capacityReservationSpecification`. TerminateInstances gives the slot back.
//!
//! Errors, as EC2 documents and answers them (all HTTP 400, client errors, which
//! aws-sdk-ec2 does not retry):
//! - `InvalidCapacityReservationId.Malformed`: an id not of the form
//!   `cr-` + 17 hex digits; `InvalidCapacityReservationId.NotFound`: no such
//!   reservation (EC2 API reference, "Error codes for the Amazon EC2 API").
//! - `ReservationCapacityExceeded`: a targeted launch the reservation cannot take,
//!   because it is full, not active, or for another instance type or zone. The
//!   error-codes page lists it as the client error for "the targeted Capacity
//!   Reservation does not have enough available instance capacity"; EC2 answers the
//!   same code, with "The requested reservation does not have sufficient compatible
//!   and available capacity for this request.", for a full reservation
//!   (scylladb/scylla-cluster-tests#8839, RunInstances) and for an instance-type
//!   mismatch (hashicorp/terraform-provider-aws#32458, StartInstances), so the proxy
//!   does not invent a separate code for a mismatch. It is not
//!   `InsufficientInstanceCapacity` (that is EC2's 500 for its own pools).
//! - `InvalidParameterCombination`: a target together with a preference other
//!   than `capacity-reservations-only` (API reference,
//!   CapacityReservationSpecification).
//!
//! A targeted launch needs `MinCount` free slots and launches
//! `min(MaxCount, available)`, as RunInstances does with capacity; the slots are
//! taken before moto is asked and given back if moto fails, so concurrent launches
//! never overbook.
//!
//! End dates: `EndDateType=limited` with `EndDate` (ISO 8601) gives a
//! reservation an end, shown as `endDate`; from then on it is `expired` and
//! takes no launch. A Capacity Block (made by a test with
//! [`super::Ec2Proxy::create_capacity_block`], as PurchaseCapacityBlock would
//! after DescribeCapacityBlockOfferings) is a `targeted` reservation of
//! `reservationType` `capacity-block` with an end date.
//!
//! Not emulated: reservation groups (`CapacityReservationResourceGroupArn`,
//! answered `InvalidParameterValue`), `open`-preference launches consuming a
//! matching open reservation (they echo their preference only), `Filter.N` and
//! paging in DescribeCapacityReservations, the purchase of Capacity Blocks, and
//! EC2 terminating a Capacity Block's instances from 30 minutes before its end
//! (ORCA drains them before that; the tests check it did so in time).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher as _, RandomState};

use super::xml::{self, element};

/// How a test sees a capacity reservation ([`super::Ec2Proxy::reservation`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationView {
    /// `cr-` and 17 hex digits.
    pub id: String,
    /// The instance type it reserves (`g5.xlarge`).
    pub instance_type: String,
    /// Its Availability Zone (`us-east-1a`).
    pub availability_zone: String,
    /// `InstanceCount` at creation.
    pub total: u32,
    /// Slots not held by a running instance now.
    pub available: u32,
    /// `active`, `cancelled` or `expired`.
    pub state: String,
    /// When it ends, if it has an end date.
    pub end: Option<jiff::Timestamp>,
}

/// A reservation and what EC2 shows of it.
#[derive(Debug, Clone)]
struct Reservation {
    view: ReservationView,
    platform: String,
    tenancy: String,
    match_criteria: String,
    end_date_type: String,
    /// `default` or `capacity-block`.
    reservation_type: String,
    created: String,
}

/// How an instance was launched, for the echo into instance XML.
#[derive(Debug, Clone)]
struct Targeting {
    preference: Option<String>,
    target: Option<String>,
    /// Holds one slot of `target` until it is terminated.
    holds_slot: bool,
}

/// A RunInstances the proxy let through: what to forward and what it holds.
#[derive(Debug)]
pub(super) struct Admission {
    /// The form parameters for moto: no `CapacityReservationSpecification.*`,
    /// `MaxCount` capped at the free slots, the reservation's zone as placement.
    pub(super) params: BTreeMap<String, String>,
    preference: Option<String>,
    target: Option<String>,
    /// Slots taken from `target`.
    claimed: u32,
}

/// An answer the proxy gives itself: HTTP status and body.
pub(super) type Answer = (u16, String);

/// Every capacity reservation, and the targeting of the instances launched
/// through the proxy.
#[derive(Debug, Default)]
pub(super) struct Reservations {
    by_id: BTreeMap<String, Reservation>,
    instances: HashMap<String, Targeting>,
}

const SPEC: &str = "CapacityReservationSpecification.";
const PREFERENCE: &str = "CapacityReservationSpecification.CapacityReservationPreference";
const TARGET_ID: &str =
    "CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId";
const TARGET_GROUP: &str = "CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationResourceGroupArn";
/// moto's account.
const OWNER: &str = "123456789012";
/// The one message EC2 gives with `ReservationCapacityExceeded`.
const EXCEEDED: &str = "The requested reservation does not have sufficient compatible and available capacity for this request.";

fn fail(code: &str, message: &str) -> Answer {
    (400, xml::error(code, message))
}

fn not_found(id: &str) -> Answer {
    fail(
        "InvalidCapacityReservationId.NotFound",
        &format!("The capacity reservation ID '{id}' does not exist"),
    )
}

/// EC2's form: `cr-` and 17 lowercase hex digits.
fn well_formed(id: &str) -> bool {
    id.strip_prefix("cr-").is_some_and(|hex| {
        hex.len() == 17
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn count(params: &BTreeMap<String, String>, key: &str) -> Result<u32, Answer> {
    match params.get(key) {
        None => Ok(1),
        Some(v) => v.parse().map_err(|_| {
            fail(
                "InvalidParameterValue",
                &format!("Invalid value '{v}' for {key}"),
            )
        }),
    }
}

impl Reservations {
    /// Whether the proxy answers `action` itself.
    pub(super) fn answers(action: &str) -> bool {
        matches!(
            action,
            "CreateCapacityReservation"
                | "DescribeCapacityReservations"
                | "CancelCapacityReservation"
        )
    }

    /// The answer to one of the actions [`Self::answers`] names.
    pub(super) fn answer(&mut self, action: &str, params: &BTreeMap<String, String>) -> Answer {
        match action {
            "CreateCapacityReservation" => self.create(params),
            "DescribeCapacityReservations" => self.describe(params),
            "CancelCapacityReservation" => self.cancel(params),
            other => fail("InvalidAction", &format!("{other} is not answered here")),
        }
    }

    /// A test's view of reservation `id`.
    pub(super) fn view(&mut self, id: &str) -> Option<ReservationView> {
        self.expire();
        self.by_id.get(id).map(|r| r.view.clone())
    }

    /// Every reservation, by id.
    pub(super) fn views(&mut self) -> Vec<ReservationView> {
        self.expire();
        self.by_id.values().map(|r| r.view.clone()).collect()
    }

    /// Moves the end of reservation `id` to `end` (ModifyCapacityReservation's
    /// `EndDate`); whether it exists.
    pub(super) fn set_end(&mut self, id: &str, end: jiff::Timestamp) -> bool {
        let Some(r) = self.by_id.get_mut(id) else {
            return false;
        };
        r.view.end = Some(end);
        r.end_date_type = "limited".into();
        true
    }

    /// Active reservations whose end date has passed are `expired`.
    fn expire(&mut self) {
        let now = jiff::Timestamp::now();
        for r in self.by_id.values_mut() {
            if r.view.state == "active" && r.view.end.is_some_and(|end| end <= now) {
                r.view.state = "expired".into();
                r.view.available = 0;
            }
        }
    }

    /// Makes a Capacity Block of `count` `instance_type` in `zone`, active
    /// until `end`; its id.
    pub(super) fn insert_capacity_block(
        &mut self,
        instance_type: &str,
        zone: &str,
        count: u32,
        end: jiff::Timestamp,
    ) -> String {
        let params: BTreeMap<String, String> = [
            ("InstanceType", instance_type.to_owned()),
            ("InstancePlatform", "Linux/UNIX".to_owned()),
            ("AvailabilityZone", zone.to_owned()),
            ("InstanceCount", count.to_string()),
            ("InstanceMatchCriteria", "targeted".to_owned()),
            ("EndDateType", "limited".to_owned()),
            ("EndDate", end.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let id = self
            .insert(&params)
            .unwrap_or_else(|(_, body)| panic!("creating a capacity block: {body}"));
        if let Some(r) = self.by_id.get_mut(&id) {
            r.reservation_type = "capacity-block".into();
        }
        id
    }

    fn create(&mut self, params: &BTreeMap<String, String>) -> Answer {
        match self.insert(params) {
            Ok(id) => {
                let body = format!(
                    "<capacityReservation>{}</capacityReservation>",
                    self.by_id[&id].xml()
                );
                (200, xml::response("CreateCapacityReservation", &body))
            }
            Err(refusal) => refusal,
        }
    }

    /// Makes the reservation `CreateCapacityReservation`'s `params` ask for; its id.
    pub(super) fn insert(&mut self, params: &BTreeMap<String, String>) -> Result<String, Answer> {
        let get = |k: &str| params.get(k).cloned();
        let (Some(instance_type), Some(platform)) = (get("InstanceType"), get("InstancePlatform"))
        else {
            return Err(fail(
                "MissingParameter",
                "The request must contain the parameters InstanceType and InstancePlatform",
            ));
        };
        let Some(availability_zone) = get("AvailabilityZone") else {
            return Err(fail(
                "MissingParameter",
                "The request must contain the parameter AvailabilityZone",
            ));
        };
        let total = match params.get("InstanceCount").map(|v| v.parse::<u32>()) {
            Some(Ok(n)) if n > 0 => n,
            _ => {
                return Err(fail(
                    "InvalidParameterValue",
                    "InstanceCount must be a positive integer",
                ));
            }
        };
        let match_criteria = get("InstanceMatchCriteria").unwrap_or_else(|| "open".into());
        if !matches!(match_criteria.as_str(), "open" | "targeted") {
            return Err(fail(
                "InvalidParameterValue",
                &format!("Invalid value '{match_criteria}' for InstanceMatchCriteria"),
            ));
        }
        let end_date_type = get("EndDateType").unwrap_or_else(|| "unlimited".into());
        let end = match (end_date_type.as_str(), get("EndDate")) {
            ("unlimited", None) => None,
            ("unlimited", Some(_)) => {
                return Err(fail(
                    "InvalidParameterCombination",
                    "EndDate can only be specified when EndDateType is limited",
                ));
            }
            ("limited", None) => {
                return Err(fail(
                    "InvalidParameterValue",
                    "EndDate must be specified when EndDateType is limited",
                ));
            }
            ("limited", Some(at)) => match at.parse::<jiff::Timestamp>() {
                Ok(t) => Some(t),
                Err(_) => {
                    return Err(fail(
                        "InvalidParameterValue",
                        &format!("Invalid value '{at}' for EndDate"),
                    ));
                }
            },
            (other, _) => {
                return Err(fail(
                    "InvalidParameterValue",
                    &format!("Invalid value '{other}' for EndDateType"),
                ));
            }
        };
        let id = loop {
            let id = format!("cr-0{:016x}", RandomState::new().hash_one(self.by_id.len()));
            if !self.by_id.contains_key(&id) {
                break id;
            }
        };
        let reservation = Reservation {
            view: ReservationView {
                id: id.clone(),
                instance_type,
                availability_zone,
                total,
                available: total,
                state: "active".into(),
                end,
            },
            platform,
            tenancy: get("Tenancy").unwrap_or_else(|| "default".into()),
            match_criteria,
            end_date_type,
            reservation_type: "default".into(),
            created: jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%S.000Z")
                .to_string(),
        };
        self.by_id.insert(id.clone(), reservation);
        Ok(id)
    }

    fn describe(&mut self, params: &BTreeMap<String, String>) -> Answer {
        self.expire();
        let ids: Vec<&String> = params
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix("CapacityReservationId.")
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .map(|(_, v)| v)
            .collect();
        let mut items = String::new();
        if ids.is_empty() {
            for r in self.by_id.values() {
                items.push_str(&format!("<item>{}</item>", r.xml()));
            }
        }
        for id in ids {
            if !well_formed(id) {
                return malformed(id);
            }
            let Some(r) = self.by_id.get(id) else {
                return not_found(id);
            };
            items.push_str(&format!("<item>{}</item>", r.xml()));
        }
        let body = format!("<capacityReservationSet>{items}</capacityReservationSet>");
        (200, xml::response("DescribeCapacityReservations", &body))
    }

    fn cancel(&mut self, params: &BTreeMap<String, String>) -> Answer {
        let Some(id) = params.get("CapacityReservationId") else {
            return fail(
                "MissingParameter",
                "The request must contain the parameter CapacityReservationId",
            );
        };
        if !well_formed(id) {
            return malformed(id);
        }
        let Some(r) = self.by_id.get_mut(id) else {
            return not_found(id);
        };
        r.view.state = "cancelled".into();
        (
            200,
            xml::response("CancelCapacityReservation", &element("return", "true")),
        )
    }

    /// Checks a RunInstances' `CapacityReservationSpecification` and, for a targeted
    /// launch, takes its slots. The error is EC2's answer to give instead.
    pub(super) fn admit(&mut self, params: &BTreeMap<String, String>) -> Result<Admission, Answer> {
        let mut forward = params.clone();
        forward.retain(|k, _| !k.starts_with(SPEC));
        let preference = params.get(PREFERENCE).cloned();
        let target = params.get(TARGET_ID).cloned();
        if params.contains_key(TARGET_GROUP) {
            return Err(fail(
                "InvalidParameterValue",
                "the ORCA EC2 proxy does not emulate Capacity Reservation groups",
            ));
        }
        self.expire();
        let Some(id) = target else {
            return Ok(Admission {
                params: forward,
                preference,
                target: None,
                claimed: 0,
            });
        };
        if preference
            .as_deref()
            .is_some_and(|p| p != "capacity-reservations-only")
        {
            return Err(fail(
                "InvalidParameterCombination",
                "The request can include either a CapacityReservationId or a CapacityReservationPreference but not both.",
            ));
        }
        if !well_formed(&id) {
            return Err(malformed(&id));
        }
        let Some(r) = self.by_id.get_mut(&id) else {
            return Err(not_found(&id));
        };
        let (min, max) = (count(params, "MinCount")?, count(params, "MaxCount")?);
        let zone = params.get("Placement.AvailabilityZone");
        let fits = r.view.state == "active"
            && params.get("InstanceType") == Some(&r.view.instance_type)
            && zone.is_none_or(|z| *z == r.view.availability_zone)
            && r.view.available >= min.max(1);
        if !fits {
            return Err(fail("ReservationCapacityExceeded", EXCEEDED));
        }
        let claimed = max.max(min).min(r.view.available);
        r.view.available -= claimed;
        forward.insert("MaxCount".into(), claimed.to_string());
        let placed = forward
            .keys()
            .any(|k| k.starts_with("SubnetId") || k.starts_with("NetworkInterface"));
        if zone.is_none() && !placed {
            forward.insert(
                "Placement.AvailabilityZone".into(),
                r.view.availability_zone.clone(),
            );
        }
        Ok(Admission {
            params: forward,
            preference,
            target: Some(id),
            claimed,
        })
    }

    /// moto answered `status` and `body` to an admitted launch: gives unused slots
    /// back, remembers each instance's targeting, and returns the body to answer,
    /// with the targeting written into each instance.
    pub(super) fn launched(&mut self, admission: Admission, status: u16, body: String) -> String {
        let ids: Vec<String> = if status == 200 {
            xml::instance_items(&body)
                .into_iter()
                .map(|i| i.instance_id)
                .collect()
        } else {
            Vec::new()
        };
        if let Some(target) = &admission.target {
            let used = u32::try_from(ids.len()).unwrap_or(u32::MAX);
            self.give_back(target, admission.claimed.saturating_sub(used));
        }
        if admission.target.is_none() && admission.preference.is_none() {
            return body;
        }
        for id in ids {
            self.instances.insert(
                id,
                Targeting {
                    preference: admission.preference.clone(),
                    target: admission.target.clone(),
                    holds_slot: admission.target.is_some(),
                },
            );
        }
        self.echo(&body)
    }

    /// `body` (a RunInstances or DescribeInstances answer) with the targeting of the
    /// instances launched through the proxy written into them.
    pub(super) fn echo(&self, body: &str) -> String {
        if self.instances.is_empty() {
            return body.to_owned();
        }
        xml::add_to_instances(body, |id| self.instances.get(id).map(Targeting::xml))
    }

    /// A TerminateInstances answered `body` (200): each instance there that held a
    /// slot gives it back, once.
    pub(super) fn terminated(&mut self, body: &str) {
        for item in xml::instance_items(body) {
            if let Some(t) = self.instances.get_mut(&item.instance_id)
                && t.holds_slot
            {
                t.holds_slot = false;
                if let Some(target) = t.target.clone() {
                    self.give_back(&target, 1);
                }
            }
        }
    }

    fn give_back(&mut self, id: &str, slots: u32) {
        if let Some(r) = self.by_id.get_mut(id)
            && r.view.state == "active"
        {
            r.view.available = (r.view.available + slots).min(r.view.total);
        }
    }
}

fn malformed(id: &str) -> Answer {
    fail(
        "InvalidCapacityReservationId.Malformed",
        &format!("Invalid id: \"{id}\" (expecting \"cr-...\")"),
    )
}

impl Reservation {
    /// The children of a `CapacityReservation` element.
    fn xml(&self) -> String {
        let v = &self.view;
        let mut out = String::new();
        for (name, value) in [
            ("capacityReservationId", v.id.as_str()),
            ("ownerId", OWNER),
            (
                "capacityReservationArn",
                &format!(
                    "arn:aws:ec2:us-east-1:{OWNER}:capacity-reservation/{}",
                    v.id
                ),
            ),
            ("instanceType", &v.instance_type),
            ("instancePlatform", &self.platform),
            ("availabilityZone", &v.availability_zone),
            ("tenancy", &self.tenancy),
            ("totalInstanceCount", &v.total.to_string()),
            ("availableInstanceCount", &v.available.to_string()),
            ("ebsOptimized", "false"),
            ("ephemeralStorage", "false"),
            ("state", &v.state),
            ("startDate", &self.created),
            ("endDateType", &self.end_date_type),
            ("instanceMatchCriteria", &self.match_criteria),
            ("createDate", &self.created),
            ("reservationType", &self.reservation_type),
        ] {
            out.push_str(&element(name, value));
        }
        if let Some(end) = v.end {
            out.push_str(&element(
                "endDate",
                &end.strftime("%Y-%m-%dT%H:%M:%S.000Z").to_string(),
            ));
        }
        out.push_str("<tagSet/>");
        out
    }
}

impl Targeting {
    /// What EC2 shows of the targeting in an instance: `capacityReservationId` for a
    /// targeted launch, and `capacityReservationSpecification` with the preference
    /// asked for and/or the target (CapacityReservationSpecificationResponse).
    fn xml(&self) -> String {
        let mut spec = String::new();
        if let Some(p) = &self.preference {
            spec.push_str(&element("capacityReservationPreference", p));
        }
        let mut out = String::new();
        if let Some(id) = &self.target {
            out.push_str(&element("capacityReservationId", id));
            spec.push_str(&format!(
                "<capacityReservationTarget>{}</capacityReservationTarget>",
                element("capacityReservationId", id)
            ));
        }
        out.push_str(&format!(
            "<capacityReservationSpecification>{spec}</capacityReservationSpecification>"
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn created(r: &mut Reservations, count: &str) -> String {
        let (status, body) = r.answer(
            "CreateCapacityReservation",
            &params(&[
                ("InstanceType", "g5.xlarge"),
                ("InstancePlatform", "Linux/UNIX"),
                ("AvailabilityZone", "us-east-1a"),
                ("InstanceCount", count),
            ]),
        );
        assert_eq!(status, 200, "{body}");
        r.views().pop().unwrap().id
    }

    fn launch(id: &str, max: &str) -> BTreeMap<String, String> {
        params(&[
            ("Action", "RunInstances"),
            ("InstanceType", "g5.xlarge"),
            ("MinCount", "1"),
            ("MaxCount", max),
            (TARGET_ID, id),
        ])
    }

    fn code(answer: Answer) -> String {
        let body = answer.1;
        let start = body.find("<Code>").unwrap() + "<Code>".len();
        body[start..body.find("</Code>").unwrap()].to_owned()
    }

    #[test]
    fn ids_have_ec2s_form() {
        let mut r = Reservations::default();
        let id = created(&mut r, "1");
        assert!(well_formed(&id), "{id}");
        assert!(!well_formed("cr-123"));
        assert!(!well_formed("i-0123456789abcdef0"));
    }

    #[test]
    fn a_targeted_launch_takes_slots_and_a_failed_one_gives_them_back() {
        let mut r = Reservations::default();
        let id = created(&mut r, "3");
        let a = r.admit(&launch(&id, "5")).unwrap();
        assert_eq!(
            a.params.get("MaxCount").unwrap(),
            "3",
            "capped at the free slots"
        );
        assert_eq!(
            a.params.get("Placement.AvailabilityZone").unwrap(),
            "us-east-1a"
        );
        assert!(!a.params.keys().any(|k| k.starts_with(SPEC)));
        assert_eq!(r.view(&id).unwrap().available, 0);
        r.launched(a, 500, String::new());
        assert_eq!(r.view(&id).unwrap().available, 3);
    }

    #[test]
    fn launches_the_reservation_cannot_take_are_refused_as_ec2_does() {
        let mut r = Reservations::default();
        let id = created(&mut r, "1");
        let mut other_type = launch(&id, "1");
        other_type.insert("InstanceType".into(), "p4d.24xlarge".into());
        assert_eq!(
            code(r.admit(&other_type).unwrap_err()),
            "ReservationCapacityExceeded"
        );
        let mut other_zone = launch(&id, "1");
        other_zone.insert("Placement.AvailabilityZone".into(), "us-east-1b".into());
        assert_eq!(
            code(r.admit(&other_zone).unwrap_err()),
            "ReservationCapacityExceeded"
        );
        let mut both = launch(&id, "1");
        both.insert(PREFERENCE.into(), "open".into());
        assert_eq!(
            code(r.admit(&both).unwrap_err()),
            "InvalidParameterCombination"
        );
        assert_eq!(
            code(r.admit(&launch("cr-0123456789abcdef0", "1")).unwrap_err()),
            "InvalidCapacityReservationId.NotFound"
        );
        assert_eq!(
            code(r.admit(&launch("cr-nope", "1")).unwrap_err()),
            "InvalidCapacityReservationId.Malformed"
        );
        r.answer(
            "CancelCapacityReservation",
            &params(&[("CapacityReservationId", &id)]),
        );
        assert_eq!(
            code(r.admit(&launch(&id, "1")).unwrap_err()),
            "ReservationCapacityExceeded"
        );
    }

    #[test]
    fn terminating_gives_a_slot_back_once() {
        let mut r = Reservations::default();
        let id = created(&mut r, "1");
        let a = r.admit(&launch(&id, "1")).unwrap();
        let run = "<RunInstancesResponse><instancesSet><item><instanceId>i-1</instanceId></item></instancesSet></RunInstancesResponse>";
        let echoed = r.launched(a, 200, run.into());
        assert!(echoed.contains(&format!(
            "<capacityReservationId>{id}</capacityReservationId><capacityReservationSpecification><capacityReservationTarget><capacityReservationId>{id}</capacityReservationId></capacityReservationTarget></capacityReservationSpecification></item>"
        )), "{echoed}");
        assert_eq!(r.view(&id).unwrap().available, 0);
        let terminate = "<TerminateInstancesResponse><instancesSet><item><instanceId>i-1</instanceId><currentState><code>32</code></currentState></item></instancesSet></TerminateInstancesResponse>";
        r.terminated(terminate);
        r.terminated(terminate);
        assert_eq!(r.view(&id).unwrap().available, 1);
    }

    #[test]
    fn an_end_date_is_shown_and_ends_the_reservation() {
        let mut r = Reservations::default();
        let mut limited = params(&[
            ("InstanceType", "g5.xlarge"),
            ("InstancePlatform", "Linux/UNIX"),
            ("AvailabilityZone", "us-east-1a"),
            ("InstanceCount", "1"),
            ("EndDateType", "limited"),
        ]);
        assert_eq!(
            code(r.answer("CreateCapacityReservation", &limited)),
            "InvalidParameterValue",
            "limited needs an EndDate"
        );
        limited.insert("EndDate".into(), "2026-01-01T00:00:00Z".into());
        let (status, body) = r.answer("CreateCapacityReservation", &limited);
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("<endDate>2026-01-01T00:00:00.000Z</endDate>"),
            "{body}"
        );
        let past = r.views().pop().unwrap();
        assert_eq!(past.state, "expired", "its end date has passed");
        assert_eq!(
            code(r.admit(&launch(&past.id, "1")).unwrap_err()),
            "ReservationCapacityExceeded"
        );
        let mut unlimited = limited.clone();
        unlimited.insert("EndDateType".into(), "unlimited".into());
        assert_eq!(
            code(r.answer("CreateCapacityReservation", &unlimited)),
            "InvalidParameterCombination"
        );
        let end = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
        let block = r.insert_capacity_block("g5.xlarge", "us-east-1a", 1, end);
        let (_, body) = r.answer(
            "DescribeCapacityReservations",
            &params(&[("CapacityReservationId.1", &block)]),
        );
        assert!(
            body.contains("<reservationType>capacity-block</reservationType>")
                && body.contains("<instanceMatchCriteria>targeted</instanceMatchCriteria>")
                && body.contains("<state>active</state>"),
            "{body}"
        );
        assert!(r.admit(&launch(&block, "1")).is_ok());
    }
}
