//! Durations as Go writes them (`time.ParseDuration`, which kubectl's flags
//! use): `90s`, `5m`, `1h30m`, `250ms`, `1.5h`, `100us`. The one grammar of
//! ORCA's CLI flags, duration annotations and configuration.
//!
//! Differences from Go, all refusals: no sign (every ORCA duration is a wait or
//! a limit, never negative) and nothing beyond `u64` nanoseconds (Go's bound is
//! `i64`, ~292 years; larger is refused rather than wrapped). Like Go, `0` alone
//! needs no unit, units may repeat and come in any order (`1m1h`), and a
//! fraction is exact to the nanosecond, truncated beyond it.

use std::time::Duration;

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a duration in Go's grammar.
    #[error("{0:?} is not a duration like 30s, 5m, 1h30m or 250ms")]
    Invalid(String),
    /// A duration, but beyond what ORCA keeps (about 584 years).
    #[error("{0:?} is too long a duration")]
    TooLarge(String),
}

/// Nanoseconds per unit, as Go names them.
fn unit(name: &str) -> Option<u64> {
    Some(match name {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Parses a Go-style duration: one or more `<decimal><unit>` with unit `ns`,
/// `us` (or `µs`), `ms`, `s`, `m` or `h`; or `0`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError::Invalid(text.to_owned());
    let too_large = || DurationError::TooLarge(text.to_owned());
    let mut rest = text.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &after_dot[..frac_len];
            rest = &after_dot[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let per = unit(&rest[..unit_len]).ok_or_else(invalid)?;
        rest = &rest[unit_len..];
        // Integer part, exactly.
        let whole: u64 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_large())?
        };
        let mut nanos = whole.checked_mul(per).ok_or_else(too_large)?;
        // Fraction, exact to the nanosecond: digits beyond what `per` can
        // resolve are dropped (truncated), as Go does.
        let mut scale = per;
        for digit in frac_part.bytes() {
            if scale < 10 {
                break;
            }
            scale /= 10;
            nanos = nanos
                .checked_add(u64::from(digit - b'0') * scale)
                .ok_or_else(too_large)?;
        }
        total = total.checked_add(nanos).ok_or_else(too_large)?;
    }
    Ok(Duration::from_nanos(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> u128 {
        parse(text).unwrap().as_millis()
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(ms("1.5h"), 5_400_000);
        assert_eq!(ms(".5s"), 500);
        assert_eq!(ms("1.s"), 1000);
        assert_eq!(ms("1m1h"), 3_660_000);
        assert_eq!(ms("5s5s"), 10_000);
        assert_eq!(parse("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse("100µs"), Ok(Duration::from_micros(100)));
        assert_eq!(parse("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(
            parse("1.0000000019s"),
            Ok(Duration::from_nanos(1_000_000_001))
        );
        assert_eq!(parse("2h45m30.5s").unwrap().as_millis(), 9_930_500);
    }

    #[test]
    fn what_go_refuses_and_what_orca_refuses_besides() {
        for bad in [
            "", " ", "5", "x5s", "5d", "s", ".s", "1..5s", "-5s", "+5s", "5 s", "5S", "1h-1m",
        ] {
            assert_eq!(
                parse(bad),
                Err(DurationError::Invalid(bad.into())),
                "{bad:?}"
            );
        }
        for huge in [
            "18446744073709551616ns",
            "6000000h",
            "99999999999999999999999s",
        ] {
            assert_eq!(
                parse(huge),
                Err(DurationError::TooLarge(huge.into())),
                "{huge:?}"
            );
        }
        assert!(
            parse("5d")
                .unwrap_err()
                .to_string()
                .contains("not a duration like 30s"),
            "the message shows what is accepted"
        );
    }

    #[test]
    fn every_whole_number_of_each_unit_up_to_ten_thousand() {
        for n in 0..=10_000u64 {
            assert_eq!(parse(&format!("{n}ms")), Ok(Duration::from_millis(n)));
            assert_eq!(parse(&format!("{n}s")), Ok(Duration::from_secs(n)));
            assert_eq!(parse(&format!("{n}m")), Ok(Duration::from_secs(n * 60)));
            assert_eq!(parse(&format!("{n}h")), Ok(Duration::from_secs(n * 3600)));
        }
    }
}
