//! Research budgets: a pod joins one with `orca.research/budget-namespace:
//! NAME` (a budget of the config's `budgets`).
//!
//! - **Admission**: the pod's cost is estimated as the hourly price it would
//!   run at (a simulated host's `provider.local.usd_per_hour`; on EC2 the first
//!   offering of the same selection a launch makes) × its
//!   `orca.research/max-lifetime` (or the budget's `default_lifetime`). A pod the
//!   budget cannot cover ends `Failed (BudgetExceeded)` at once, the message
//!   saying what is left and what it was estimated at. A pod whose price is not
//!   known is admitted, with an Event saying so.
//! - **Accrual** (every `budget_accrual_interval_ms`): each placement of a pod
//!   in a budget (the ledger: its price, from when the agent reported it
//!   running until it ended) is kept in the `spend` table, which outlives the
//!   pod; spend is the cost within the rolling `period`.
//! - **Cap**: once spend reaches the amount, with `on_cap: stop` every unfinished
//!   pod of the budget ends `Failed (BudgetExceeded)` (a verdict: the agent is
//!   told to stop it) with Events; with `finish` they run on. New pods are
//!   refused either way (nothing is left).
//!
//! What is counted is the pod's run, not the instance's boot time.

use std::time::Duration;

use k8s_openapi::api::core::v1::PodSpec;
use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1::{self as types, PodPhase};

use crate::config::Provider;
use crate::config::budgets::Budget;
use crate::shared::{ClusterError, Shared, now};
use orca_model::pod::phase;
use orca_model::selection::annotations::{BUDGET, parse};

pub(crate) fn seconds(t: Option<&prost_types::Timestamp>) -> f64 {
    t.map_or(0.0, |t| t.seconds as f64 + f64::from(t.nanos) / 1e9)
}

/// Hours of `spend` that fall in the window of `period` ending at `now_s`.
pub fn hours_in_window(spend: &pb::Spend, period: Duration, now_s: f64) -> f64 {
    let from = seconds(spend.started_at.as_ref()).max(now_s - period.as_secs_f64());
    let to = spend
        .ended_at
        .as_ref()
        .map_or(now_s, |t| seconds(Some(t)))
        .min(now_s);
    ((to - from) / 3600.0).max(0.0)
}

/// What `spends` cost within the window of `period` ending now, USD.
pub(crate) fn window_cost(spends: &[pb::Spend], period: Duration) -> f64 {
    let now_s = seconds(Some(&now()));
    spends
        .iter()
        .map(|s| s.usd_per_hour * hours_in_window(s, period, now_s))
        .sum()
}

/// The budget a pod names, if any.
pub fn budget_of(pod: &types::Pod) -> Option<&str> {
    pod.annotations.get(BUDGET).map(String::as_str)
}

pub(crate) fn unfinished(p: &pb::PodRecord) -> bool {
    !matches!(phase(p), PodPhase::Succeeded | PodPhase::Failed)
}

/// Budgets: admission estimates, accrued spend and statuses.
#[derive(Clone)]
pub struct Budgets {
    shared: Shared,
}

impl Budgets {
    /// The component over `shared` and the components below it.
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }
}

impl Budgets {
    pub(crate) fn budget(&self, name: &str) -> Option<&Budget> {
        self.shared.config().budgets.iter().find(|b| b.name == name)
    }

    /// Why a new pod is refused by its budget; `None` when it is admitted.
    pub(crate) async fn budget_refusal(
        &self,
        pod: &types::Pod,
        spec: &PodSpec,
    ) -> Result<Option<(&'static str, String)>, ClusterError> {
        let Some(name) = budget_of(pod) else {
            return Ok(None);
        };
        let Some(budget) = self.budget(name) else {
            let known: Vec<&str> = self
                .shared
                .config()
                .budgets
                .iter()
                .map(|b| b.name.as_str())
                .collect();
            return Ok(Some((
                "InvalidAnnotation",
                format!(
                    "{BUDGET}: no budget {name:?} in the config (known: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            )));
        };
        let Some(price) = self.price_estimate(pod, spec).await else {
            let (ns, pod_name) = pod
                .r#ref
                .as_ref()
                .map(|r| (r.namespace.clone(), r.name.clone()))
                .unwrap_or_default();
            self.shared.event(
                "Pod",
                &ns,
                &pod_name,
                true,
                "BudgetEstimateUnknown",
                format!("no price is known for this pod: budget {name} admits it unestimated"),
            );
            return Ok(None);
        };
        let lifetime = parse(&pod.annotations)
            .ok()
            .and_then(|a| a.max_lifetime)
            .unwrap_or(budget.default_lifetime);
        let hours = lifetime.as_secs_f64() / 3600.0;
        let estimate = price * hours;
        let left = (budget.amount_usd - self.spent(budget)?).max(0.0);
        Ok((estimate > left).then(|| {
            (
                "BudgetExceeded",
                format!(
                    "budget {name} has {left:.4} USD left of {:.4} USD per {:?}; this pod is estimated at {estimate:.4} USD ({price} USD/h × {hours:.3} h{})",
                    budget.amount_usd,
                    budget.period,
                    if lifetime == budget.default_lifetime { ", the budget's default_lifetime" } else { ", its max-lifetime" }
                ),
            )
        }))
    }

    /// The hourly price a pod would run at, when known.
    async fn price_estimate(&self, pod: &types::Pod, spec: &PodSpec) -> Option<f64> {
        match &self.shared.config().provider {
            Provider::Local(l) => (l.usd_per_hour > 0.0).then_some(l.usd_per_hour),
            Provider::Ec2(_) => {
                let annotations = parse(&pod.annotations).ok()?;
                let needs = crate::resources::needs_of(spec);
                let plan = self
                    .shared
                    .provider()
                    .plan(&needs, &annotations)
                    .await
                    .ok()?;
                plan.offerings.first()?.usd_per_hour
            }
        }
    }

    /// Spend of `budget` within its window, USD.
    pub(crate) fn spent(&self, budget: &Budget) -> Result<f64, ClusterError> {
        let spends = self
            .shared
            .store()
            .spend
            .scan(&format!("{}/", budget.name))?;
        Ok(window_cost(&spends, budget.period))
    }

    /// Every budget's status.
    pub fn budget_statuses(&self) -> Result<Vec<pb::BudgetStatus>, ClusterError> {
        let mut out = Vec::new();
        for b in &self.shared.config().budgets {
            let spends = self.shared.store().spend.scan(&format!("{}/", b.name))?;
            let running: Vec<&pb::Spend> = spends.iter().filter(|s| s.ended_at.is_none()).collect();
            let spent = window_cost(&spends, b.period);
            out.push(pb::BudgetStatus {
                name: b.name.clone(),
                amount_usd: b.amount_usd,
                period: prost_types::Duration::try_from(b.period).ok(),
                on_cap: b.on_cap.as_str().into(),
                spent_usd: spent,
                burn_usd_per_hour: running.iter().map(|s| s.usd_per_hour).sum(),
                remaining_usd: (b.amount_usd - spent).max(0.0),
                running_pods: running.len() as i32,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        })
    }

    #[test]
    fn spend_counts_only_within_the_rolling_window() {
        let hour = Duration::from_secs(3600);
        let s = |start, end| pb::Spend {
            started_at: at(start),
            ended_at: end,
            usd_per_hour: 2.0,
            ..Default::default()
        };
        let now_s = 10_000.0;
        assert_eq!(
            hours_in_window(&s(9_000, None), hour, now_s),
            1000.0 / 3600.0
        );
        assert_eq!(
            hours_in_window(&s(0, None), hour, now_s),
            1.0,
            "clipped to the window"
        );
        assert_eq!(
            hours_in_window(&s(0, at(5_000)), hour, now_s),
            0.0,
            "ended before it"
        );
        assert_eq!(
            hours_in_window(&s(6_000, at(7_000)), hour, now_s),
            600.0 / 3600.0
        );
    }
}
