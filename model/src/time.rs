//! Wire timestamps (`google.protobuf.Timestamp`).

/// Now, as a wire timestamp.
pub fn now() -> prost_types::Timestamp {
    let t = jiff::Timestamp::now();
    prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

/// Time since a wire timestamp (zero for none, or one in the future).
pub fn age(t: Option<&prost_types::Timestamp>) -> std::time::Duration {
    let Some(t) = t else {
        return std::time::Duration::ZERO;
    };
    let now = jiff::Timestamp::now();
    let secs = now.as_second() - t.seconds;
    let nanos = now.subsec_nanosecond() - t.nanos;
    std::time::Duration::try_from(jiff::SignedDuration::new(secs, nanos)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_never_negative() {
        assert_eq!(age(None), std::time::Duration::ZERO);
        let mut future = now();
        future.seconds += 3600;
        assert_eq!(age(Some(&future)), std::time::Duration::ZERO);
        let mut past = now();
        past.seconds -= 90;
        let a = age(Some(&past)).as_secs();
        assert!((90..=91).contains(&a), "{a}");
    }
}
