//! The benchmark harness behind `orca-bench`: named scenarios run against the
//! same real parts as the tests, printing `metric: NAME VALUE UNIT` lines. Ratios
//! are measured side by side, in the same run, against the anchor named in the
//! metric (`..._vs_ctr`).

pub mod ec2;
pub mod exec;
pub mod fleet;
pub mod gpu;
pub mod heartbeats;
pub mod logs;
pub mod pod_start;
pub mod recovery;
pub mod service;
pub mod spot_notice;

use std::time::Duration;

/// Polls `f` (every 5 ms: a benchmark's clock must not wait on a coarse poll)
/// until it gives a value; panics naming `what` after the test deadline.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + crate::cluster::DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Prints one metric line.
pub fn metric(name: &str, value: f64, unit: &str) {
    println!("metric: {name} {value:.3} {unit}");
}

/// The median of samples (the mean of the middle two for an even count).
pub fn median(samples: &[Duration]) -> Duration {
    percentile(samples, 50)
}

/// The `p`th percentile (nearest rank) of samples.
pub fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    if p == 50 && sorted.len().is_multiple_of(2) {
        let (a, b) = (sorted[sorted.len() / 2 - 1], sorted[sorted.len() / 2]);
        return (a + b) / 2;
    }
    let rank = (p * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Milliseconds as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        let s: Vec<Duration> = [5, 1, 3, 2, 4].map(Duration::from_millis).to_vec();
        assert_eq!(median(&s), Duration::from_millis(3));
        assert_eq!(
            median(&s[..4]),
            Duration::from_micros(2500),
            "mean of the middle two of 5,1,3,2"
        );
        assert_eq!(percentile(&s, 90), Duration::from_millis(5));
        assert_eq!(median(&[]), Duration::ZERO);
    }
}
