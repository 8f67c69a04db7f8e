//! Kubernetes resource quantities (`500m`, `2Gi`, `1e3`), as they appear in the
//! PodSpec JSON that travels on the wire. Shared by the agent (cgroup limits)
//! and the control plane (placement by requests).
//!
//! Parsing is exact: the number is read as a decimal (integer digits, fraction
//! digits, an exponent) and scaled with integer arithmetic, then rounded up to
//! the unit asked for, as Kubernetes' `ScaledValue` does (`700m` is 700
//! millicores, `0.1m` is 1). Floating point gave `700m` → 701. Every suffix of
//! Kubernetes' grammar is accepted: `n u m k M G T P E`, `Ki Mi Gi Ti Pi Ei`, and
//! decimal exponents (`1e3`, `1E-3`). A value beyond `i64::MAX` in the unit asked
//! for (Kubernetes' own bound, and beyond what any cgroup takes) is
//! [`QuantityError::TooLarge`], never wrapped or saturated into something else.

/// Why a quantity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not a quantity in Kubernetes' grammar (or negative, which no resource is).
    #[error("{0:?} is not a quantity (e.g. 500m, 2, 1.5Gi, 1e3)")]
    Invalid(String),
    /// A quantity, but larger than the largest a resource can hold.
    #[error("{text:?} is larger than the largest quantity ({max}{unit})", max = i64::MAX, unit = if *.millis { "m" } else { "" })]
    TooLarge {
        /// The text.
        text: String,
        /// Whether it was read in thousandths.
        millis: bool,
    },
}

/// Parses a Kubernetes quantity. With `millis`, the result is in thousandths
/// (`500m` → 500, `2` → 2000); otherwise in units (`1Ki` → 1024, `1k` → 1000).
/// `None` for anything [`parse_exact`] refuses.
pub fn parse(text: &str, millis: bool) -> Option<u64> {
    parse_exact(text, millis).ok()
}

/// Significant digits kept of a mantissa; later ones only round up.
const MAX_DIGITS: usize = 36;

/// Parses a Kubernetes quantity exactly, rounding up to the unit (see
/// [`parse`]); the result is at most `i64::MAX`.
pub fn parse_exact(text: &str, millis: bool) -> Result<u64, QuantityError> {
    let invalid = || QuantityError::Invalid(text.to_owned());
    let too_large = || QuantityError::TooLarge {
        text: text.to_owned(),
        millis,
    };
    let t = text.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(invalid());
    }
    // value = mantissa * 10^exp10 * 2^exp2, rounded up when digits were dropped.
    let (exp10, exp2): (i64, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        s if s.starts_with(['e', 'E']) => {
            let e = &s[1..];
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            // Any exponent past a few hundred is all zeros or overflow alike.
            let e: i64 = e
                .parse()
                .unwrap_or(if e.starts_with('-') { -1000 } else { 1000 });
            (e.clamp(-1000, 1000), 0)
        }
        _ => return Err(invalid()),
    };
    let mut mantissa: u128 = 0;
    let mut digits = 0usize;
    let mut exp = exp10 + if millis { 3 } else { 0 };
    let mut dropped = false;
    let all = int_part.bytes().map(|b| (b, false));
    let all = all.chain(frac_part.bytes().map(|b| (b, true)));
    for (b, fraction) in all {
        let d = u128::from(b - b'0');
        if digits >= MAX_DIGITS {
            // Too many significant digits: an integer digit scales the value up,
            // a dropped one only makes it larger than what is kept.
            dropped |= d != 0;
            if !fraction {
                exp += 1;
            }
            continue;
        }
        mantissa = mantissa * 10 + d;
        if mantissa > 0 {
            digits += 1;
        }
        if fraction {
            exp -= 1;
        }
    }
    if mantissa == 0 && !dropped {
        return Ok(0);
    }
    let mut value = mantissa.checked_mul(1u128 << exp2).ok_or_else(too_large)?;
    if exp >= 0 {
        let scale = u32::try_from(exp)
            .ok()
            .and_then(|e| 10u128.checked_pow(e))
            .ok_or_else(too_large)?;
        value = value.checked_mul(scale).ok_or_else(too_large)?;
        if dropped {
            value = value.checked_add(1).ok_or_else(too_large)?;
        }
    } else {
        match u32::try_from(-exp).ok().and_then(|e| 10u128.checked_pow(e)) {
            Some(scale) => {
                let rem = value % scale;
                value = value / scale + u128::from(rem != 0 || dropped);
            }
            // Smaller than 10^-38 of the unit: one unit, rounded up.
            None => value = 1,
        }
    }
    u64::try_from(value)
        .ok()
        .filter(|v| i64::try_from(*v).is_ok())
        .ok_or_else(too_large)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(parse("500m", true), Some(500));
        assert_eq!(parse("2", true), Some(2000));
        assert_eq!(parse("1Gi", false), Some(1 << 30));
        assert_eq!(parse("1k", false), Some(1000));
        assert_eq!(parse("1e3", false), Some(1000));
        assert_eq!(parse("1E3", false), Some(1000));
        assert_eq!(parse("1e-3", true), Some(1));
        assert_eq!(parse("1.5Gi", false), Some(3 << 29));
        assert_eq!(parse(".5", true), Some(500));
        assert_eq!(parse("+2", false), Some(2));
        assert_eq!(parse("0", true), Some(0));
        assert_eq!(parse("0.000", true), Some(0));
        assert_eq!(parse("12x", false), None);
        assert_eq!(parse("-1", false), None);
        assert_eq!(parse("", false), None);
        assert_eq!(parse(".", false), None);
        assert_eq!(parse("1.2.3", false), None);
        assert_eq!(parse("1e", false), None);
        assert_eq!(parse("1e+", false), None);
        assert_eq!(parse("1Gii", false), None);
    }

    #[test]
    fn every_suffix_is_accepted() {
        let cases: [(&str, u64); 16] = [
            ("1n", 1),
            ("1u", 1),
            ("1m", 1),
            ("1", 1),
            ("1k", 1_000),
            ("1M", 1_000_000),
            ("1G", 1_000_000_000),
            ("1T", 1_000_000_000_000),
            ("1P", 1_000_000_000_000_000),
            ("1E", 1_000_000_000_000_000_000),
            ("1Ki", 1 << 10),
            ("1Mi", 1 << 20),
            ("1Gi", 1 << 30),
            ("1Ti", 1 << 40),
            ("1Pi", 1 << 50),
            ("1Ei", 1 << 60),
        ];
        for (text, want) in cases {
            assert_eq!(parse_exact(text, false), Ok(want), "{text}");
        }
        assert_eq!(parse_exact("1500n", true), Ok(1), "rounded up to 1m");
        assert_eq!(parse_exact("1000000n", true), Ok(1));
        assert_eq!(parse_exact("2000001n", true), Ok(3));
    }

    /// Every millicore value 1m…99999m reads back as itself, and as cores.
    #[test]
    fn every_millicore_value_is_exact() {
        for m in 1u64..=99_999 {
            assert_eq!(parse_exact(&format!("{m}m"), true), Ok(m), "{m}m");
            let cores = format!("{}.{:03}", m / 1000, m % 1000);
            assert_eq!(parse_exact(&cores, true), Ok(m), "{cores}");
        }
        assert_eq!(parse("700m", true), Some(700));
        assert_eq!(parse("9m", true), Some(9));
        assert_eq!(parse("0.7", true), Some(700));
    }

    #[test]
    fn values_beyond_i64_are_too_large_not_wrapped() {
        let big = |t: &str, millis| {
            assert!(
                matches!(parse_exact(t, millis), Err(QuantityError::TooLarge { .. })),
                "{t}: {:?}",
                parse_exact(t, millis)
            )
        };
        big("1e30", true);
        big("1e30", false);
        big("16Ei", false);
        big("9223372036854775808", false);
        big("9223372036854775807", true);
        big("1e1000000", false);
        big("99999999999999999999999999999999999999999999999", false);
        assert_eq!(
            parse_exact("9223372036854775807", false),
            Ok(i64::MAX as u64)
        );
        assert_eq!(parse_exact("1Ei", false), Ok(1 << 60));
        assert_eq!(parse_exact("7Ei", false), Ok(7 << 60));
        assert_eq!(parse_exact("1e-1000000", false), Ok(1), "tiny rounds up");
        assert_eq!(parse_exact("0e1000000", false), Ok(0));
        let msg = parse_exact("1e30", true).unwrap_err().to_string();
        assert!(msg.contains("9223372036854775807m"), "{msg}");
    }

    #[test]
    fn long_mantissas_round_up_exactly() {
        // 40 significant digits, most after the point: 1.000…0001 cores.
        let text = format!("1.{}1", "0".repeat(38));
        assert_eq!(parse_exact(&text, true), Ok(1001));
        assert_eq!(
            parse_exact(&format!("1.{}", "0".repeat(50)), true),
            Ok(1000)
        );
        let many = format!("{}e-40", "1".repeat(45));
        // 111…1 (45 ones) * 10^-40 = 11111.1…: rounded up.
        assert_eq!(parse_exact(&many, false), Ok(11_112));
    }
}
