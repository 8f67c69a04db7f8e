//! How the Capacity Reservations and Capacity Blocks the cluster's instances
//! run in stand: DescribeCapacityReservations, for their end dates.

use aws_sdk_ec2::types::CapacityReservationType;

use super::Ec2Error;
use crate::cloud::ReservationInfo;

/// The reservations `ids` (EC2 answers `InvalidCapacityReservationId.NotFound`
/// when one is unknown: the caller sees that error).
pub async fn describe(
    client: &aws_sdk_ec2::Client,
    ids: &[String],
) -> Result<Vec<ReservationInfo>, Ec2Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let out = client
        .describe_capacity_reservations()
        .set_capacity_reservation_ids(Some(ids.to_vec()))
        .send()
        .await
        .map_err(Ec2Error::of("DescribeCapacityReservations"))?;
    Ok(out
        .capacity_reservations()
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
        .collect())
}
