//! The `budgets` section: named research budgets that pods join with the
//! annotation `orca.research/budget-namespace`.
//!
//! ```yaml
//! budgets:
//!   - name: vision-lab
//!     amount_usd: 500
//!     period: 720h            # a rolling window (Go duration)
//!     on_cap: stop            # stop | finish: what running pods do at the cap
//!     default_lifetime: 4h    # the cost horizon of a pod without max-lifetime
//! budget_accrual_interval_ms: 10000
//! ```

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// One budget as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetFile {
    /// Its name, which pods give in `orca.research/budget-namespace`.
    pub name: String,
    /// What may be spent within `period`, USD.
    pub amount_usd: f64,
    /// The rolling window spend is counted over (Go duration; default 30 days).
    #[serde(default = "d_period")]
    pub period: String,
    /// `stop` (running pods end `Failed (BudgetExceeded)` at the cap) or
    /// `finish` (they run on; new pods are refused).
    #[serde(default = "d_on_cap")]
    pub on_cap: String,
    /// How long a pod without `orca.research/max-lifetime` is assumed to run
    /// when its cost is estimated at admission (Go duration; default 1h).
    #[serde(default = "d_lifetime")]
    pub default_lifetime: String,
}

fn d_period() -> String {
    "720h".into()
}
fn d_on_cap() -> String {
    "stop".into()
}
fn d_lifetime() -> String {
    "1h".into()
}

/// What running pods of a budget do when it is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCap {
    /// They are stopped, `Failed (BudgetExceeded)`.
    Stop,
    /// They run on; only new pods are refused.
    Finish,
}

impl OnCap {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Finish => "finish",
        }
    }
}

/// A validated budget.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Name.
    pub name: String,
    /// USD per period.
    pub amount_usd: f64,
    /// The rolling window.
    pub period: Duration,
    /// At the cap.
    pub on_cap: OnCap,
    /// The estimate's horizon without a max-lifetime.
    pub default_lifetime: Duration,
}

/// Validates the budgets, naming the field and the budget at fault.
pub fn validate(files: Vec<BudgetFile>) -> Result<Vec<Budget>, ConfigError> {
    let invalid = |field, problem: String| ConfigError::Invalid { field, problem };
    let mut out: Vec<Budget> = Vec::new();
    for b in files {
        let name = b.name.clone();
        if !orca_model::pod::valid_name(&name) {
            return Err(invalid(
                "budgets[].name",
                format!("{name:?} must be a lowercase DNS name"),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(invalid(
                "budgets[].name",
                format!("{name:?} is given twice"),
            ));
        }
        if !(b.amount_usd.is_finite() && b.amount_usd >= 0.0) {
            return Err(invalid(
                "budgets[].amount_usd",
                format!(
                    "budget {name}: {} is not a non-negative amount",
                    b.amount_usd
                ),
            ));
        }
        let duration = |field, text: &str| {
            orca_model::duration::parse(text)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    invalid(
                        field,
                        format!(
                            "budget {name}: {text:?} is not a positive duration like 720h or 90m"
                        ),
                    )
                })
        };
        let period = duration("budgets[].period", &b.period)?;
        let default_lifetime = duration("budgets[].default_lifetime", &b.default_lifetime)?;
        let on_cap = match b.on_cap.as_str() {
            "stop" => OnCap::Stop,
            "finish" => OnCap::Finish,
            other => {
                return Err(invalid(
                    "budgets[].on_cap",
                    format!("budget {name}: {other:?}: use stop or finish"),
                ));
            }
        };
        out.push(Budget {
            name,
            amount_usd: b.amount_usd,
            period,
            on_cap,
            default_lifetime,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(yaml: &str) -> Vec<BudgetFile> {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn budgets_validate_naming_the_field() {
        let ok = validate(file(
            "- {name: lab, amount_usd: 5, period: 24h, on_cap: finish}",
        ))
        .unwrap();
        assert_eq!(ok[0].period, Duration::from_secs(86_400));
        assert_eq!(ok[0].on_cap, OnCap::Finish);
        assert_eq!(ok[0].default_lifetime, Duration::from_secs(3600));
        for (yaml, field) in [
            ("- {name: Lab, amount_usd: 5}", "budgets[].name"),
            (
                "- {name: a, amount_usd: 1}\n- {name: a, amount_usd: 2}",
                "budgets[].name",
            ),
            ("- {name: a, amount_usd: -1}", "budgets[].amount_usd"),
            (
                "- {name: a, amount_usd: 1, period: monthly}",
                "budgets[].period",
            ),
            (
                "- {name: a, amount_usd: 1, on_cap: pause}",
                "budgets[].on_cap",
            ),
            (
                "- {name: a, amount_usd: 1, default_lifetime: 0s}",
                "budgets[].default_lifetime",
            ),
        ] {
            match validate(file(yaml)) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{yaml}"),
                other => panic!("{yaml}: {other:?}"),
            }
        }
    }
}
