//! Kubernetes resource quantities (`500m`, `2Gi`, `1e3`), as they appear in the
//! PodSpec JSON that travels on the wire. Shared by the agent (cgroup limits)
//! and the control plane (placement by requests).

/// Parses a Kubernetes quantity. With `millis`, the result is in thousandths
/// (`500m` → 500, `2` → 2000); otherwise in units (`1Ki` → 1024, `1k` → 1000).
pub fn parse(text: &str, millis: bool) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    let scaled = value * factor * if millis { 1000.0 } else { 1.0 };
    (scaled.is_finite() && scaled >= 0.0).then(|| scaled.ceil() as u64)
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
        assert_eq!(parse("12x", false), None);
        assert_eq!(parse("-1", false), None);
    }
}
