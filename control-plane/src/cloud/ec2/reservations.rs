//! How the Capacity Reservations and Capacity Blocks the cluster's instances
//! run in stand: DescribeCapacityReservations, for their end dates.

use aws_sdk_ec2::types::CapacityReservationType;

use super::Ec2Error;
use crate::cloud::ReservationInfo;

/// EC2's answer when one id of the batch is unknown (long expired or
/// cancelled): the whole call fails.
const NOT_FOUND: &str = "InvalidCapacityReservationId.NotFound";

/// The reservations `ids` that EC2 still knows. One unknown id fails EC2's
/// whole call, so then each is asked alone and the unknown ones left out (a
/// reservation gone has no end left to drain for).
pub async fn describe(
    client: &aws_sdk_ec2::Client,
    ids: &[String],
) -> Result<Vec<ReservationInfo>, Ec2Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    match describe_batch(client, ids).await? {
        Some(found) => Ok(found),
        None => {
            let mut found = Vec::new();
            for id in ids {
                found.extend(
                    describe_batch(client, std::slice::from_ref(id))
                        .await?
                        .unwrap_or_default(),
                );
            }
            Ok(found)
        }
    }
}

/// One DescribeCapacityReservations; `None` when an id is unknown.
async fn describe_batch(
    client: &aws_sdk_ec2::Client,
    ids: &[String],
) -> Result<Option<Vec<ReservationInfo>>, Ec2Error> {
    use aws_sdk_ec2::error::ProvideErrorMetadata as _;
    let out = match client
        .describe_capacity_reservations()
        .set_capacity_reservation_ids(Some(ids.to_vec()))
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) if e.code() == Some(NOT_FOUND) => return Ok(None),
        Err(e) => return Err(Ec2Error::of("DescribeCapacityReservations")(e)),
    };
    Ok(Some(
        out.capacity_reservations()
            .iter()
            .filter_map(|r| {
                Some(ReservationInfo {
                    id: r.capacity_reservation_id()?.to_owned(),
                    capacity_block: r.reservation_type()
                        == Some(&CapacityReservationType::CapacityBlock),
                    end: r
                        .end_date()
                        .and_then(|t| jiff::Timestamp::new(t.secs(), t.subsec_nanos() as i32).ok()),
                    state: r.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                })
            })
            .collect(),
    ))
}
