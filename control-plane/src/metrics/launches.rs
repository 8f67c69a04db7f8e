//! Counts of instance launches, by provider, and of failed ones, by provider
//! and reason. The reason is a bounded word: EC2's error code where the
//! failure carries one (`InsufficientInstanceCapacity`), else the failure's
//! class or the [`ProviderError`] variant.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::cloud::ProviderError;

/// Launch counters; cheap to clone, every clone counts into the same numbers.
#[derive(Debug, Clone, Default)]
pub struct LaunchCounters {
    counts: Arc<Mutex<Launches>>,
}

/// What the counters have counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Launches {
    /// Launches asked of the provider (each `launch` call), by provider.
    pub attempts: BTreeMap<String, u64>,
    /// Launches that failed, by (provider, reason).
    pub failures: BTreeMap<(String, String), u64>,
}

impl Launches {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Launches) {
        for (provider, n) in &other.attempts {
            *self.attempts.entry(provider.clone()).or_default() += n;
        }
        for (key, n) in &other.failures {
            *self.failures.entry(key.clone()).or_default() += n;
        }
    }
}

impl LaunchCounters {
    /// Counts one launch by `provider` that ended in `result`.
    pub fn count<T>(&self, provider: &str, result: &Result<T, ProviderError>) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.attempts.entry(provider.to_owned()).or_default() += 1;
        if let Err(e) = result {
            *counts
                .failures
                .entry((provider.to_owned(), failure_reason(e)))
                .or_default() += 1;
        }
    }

    /// The counts so far.
    pub fn snapshot(&self) -> Launches {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The `reason` label of a failed launch.
pub fn failure_reason(e: &ProviderError) -> String {
    match e {
        ProviderError::Launch {
            code: Some(code), ..
        } => code.clone(),
        ProviderError::Launch { failure, .. } => format!("{failure:?}"),
        ProviderError::Unplaceable { code, .. } => (*code).to_owned(),
        ProviderError::Api(_) => "Api".into(),
        ProviderError::Terminate { .. } => "Terminate".into(),
        ProviderError::Prepare { .. } => "Prepare".into(),
        ProviderError::Fault { .. } => "Fault".into(),
        ProviderError::Unsupported { .. } => "Unsupported".into(),
        ProviderError::NotNow(_) => "NotNow".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "ec2")]
    use crate::cloud::LaunchFailure;
    #[cfg(feature = "ec2")]
    use crate::cloud::ec2::launch::LaunchError;

    /// A failed launch as the EC2 provider reports `e`.
    #[cfg(feature = "ec2")]
    fn ec2_error(e: LaunchError, failure: LaunchFailure) -> ProviderError {
        ProviderError::Launch {
            node: "n".into(),
            reason: e.to_string(),
            code: e.code().map(str::to_owned),
            failure,
        }
    }

    #[cfg(feature = "ec2")]
    #[test]
    fn reasons_are_ec2_codes_or_failure_classes() {
        let ec2 = |code: &str| LaunchError::from_code(code, "no capacity in us-east-1a");
        let capacity = ec2_error(ec2("InsufficientInstanceCapacity"), LaunchFailure::Capacity);
        assert_eq!(failure_reason(&capacity), "InsufficientInstanceCapacity");
        let limit = ec2_error(ec2("VcpuLimitExceeded"), LaunchFailure::Limit);
        assert_eq!(failure_reason(&limit), "VcpuLimitExceeded");
        let refused = ec2_error(ec2("InvalidAMIID.NotFound"), LaunchFailure::Fatal);
        assert_eq!(failure_reason(&refused), "InvalidAMIID.NotFound");
        let throttled = ec2_error(
            LaunchError::Throttled("Rate exceeded: slow down".into()),
            LaunchFailure::Throttled,
        );
        assert_eq!(failure_reason(&throttled), "Throttled");
        // Free text that looks like a code is not taken for one.
        let local = ProviderError::Launch {
            node: "n".into(),
            reason: "NoSuchFile: cannot start orca-agent".into(),
            code: None,
            failure: LaunchFailure::Fatal,
        };
        assert_eq!(failure_reason(&local), "Fatal");
        let unplaceable = ProviderError::Unplaceable {
            code: "NoInstanceType",
            reason: "none fits".into(),
        };
        assert_eq!(failure_reason(&unplaceable), "NoInstanceType");
        assert_eq!(failure_reason(&ProviderError::Api("x: y".into())), "Api");
    }

    #[test]
    fn clones_count_into_the_same_numbers() {
        let counters = LaunchCounters::default();
        let other = counters.clone();
        counters.count("local", &Ok::<(), ProviderError>(()));
        other.count::<()>("local", &Err(ProviderError::Api("down".into())));
        other.count::<()>("local", &Err(ProviderError::Api("down".into())));
        let counts = counters.snapshot();
        assert_eq!(counts.attempts["local"], 3);
        assert_eq!(counts.failures[&("local".into(), "Api".into())], 2);
        let mut sum = Launches::default();
        sum.add(&counts);
        sum.add(&counts);
        assert_eq!(sum.attempts["local"], 6);
    }
}
