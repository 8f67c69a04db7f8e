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

/// A kubectl-style age: `5s`, `3m`, `2h`, `4d`.
pub fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_kubectl_writes_them() {
        let h = |s| human(std::time::Duration::from_secs(s));
        assert_eq!(
            [
                h(0),
                h(119),
                h(120),
                h(7199),
                h(7200),
                h(172_799),
                h(172_800)
            ],
            ["0s", "119s", "2m", "119m", "2h", "47h", "2d"]
        );
    }

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
