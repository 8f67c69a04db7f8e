//! The budgets' caps: spend accrued every `budget_accrual_interval` into the
//! `spend` table, and the pods of a budget spent with `on_cap: stop` failed
//! (`BudgetExceeded`) and stopped. Above [`crate::pods`], which asks
//! [`crate::budgets`] for its admission estimate.

use orca_proto::controlplane::v1 as pb;
use tracing::{info, warn};

use crate::budgets::Budgets;
use crate::budgets::{budget_of, seconds, unfinished};
use crate::config::budgets::{Budget, OnCap};
use crate::pods::{Pods, key, names};
use crate::shared::now;
use crate::shared::{ClusterError, Shared};
use std::time::Duration;

/// Enforces the budgets' caps.
#[derive(Clone)]
pub struct BudgetCaps {
    shared: Shared,
    budgets: Budgets,
    pods: Pods,
}

impl BudgetCaps {
    /// The component over `shared`, the budgets and the pods.
    pub fn new(shared: Shared, budgets: Budgets, pods: Pods) -> Self {
        Self {
            shared,
            budgets,
            pods,
        }
    }

    /// Accrues spend and enforces caps every `budget_accrual_interval` until
    /// `shutdown` resolves.
    pub async fn run_budgets(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.accrue_budgets().await {
                warn!(error = %e, "budget accrual failed");
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(self.shared.config().budget_accrual_interval) => {}
            }
        }
    }

    /// One accrual: placements into the spend table, then the caps.
    pub async fn accrue_budgets(&self) -> Result<(), ClusterError> {
        let pods = self.shared.store().pods.scan("")?;
        let now_ts = now();
        let mut live = std::collections::HashSet::new();
        for record in &pods {
            let Some(name) = record.pod.as_ref().and_then(budget_of) else {
                continue;
            };
            let (ns, pod_name) = names(record);
            for p in record.placements.iter().filter(|p| p.usd_per_hour > 0.0) {
                let spend = pb::Spend {
                    budget: name.to_owned(),
                    pod: key(&ns, &pod_name),
                    uid: p.uid.clone(),
                    usd_per_hour: p.usd_per_hour,
                    started_at: p.started_at,
                    ended_at: p.ended_at,
                };
                let k = format!("{name}/{}", p.uid);
                live.insert(k.clone());
                if self.shared.store().spend.get(&k)?.as_ref() != Some(&spend) {
                    self.shared.store().spend.put(&k, &spend)?;
                }
            }
        }
        // Pods deleted meanwhile: their last run ends now (at the accrual's
        // resolution); spends older than their window go.
        let now_s = seconds(Some(&now_ts));
        for s in self.shared.store().spend.scan("")? {
            let k = format!("{}/{}", s.budget, s.uid);
            let period = self
                .budgets
                .budget(&s.budget)
                .map_or(Duration::ZERO, |b| b.period);
            if s.ended_at.is_none() && !live.contains(&k) {
                let closed = pb::Spend {
                    ended_at: Some(now_ts),
                    ..s
                };
                self.shared.store().spend.put(&k, &closed)?;
            } else if s
                .ended_at
                .is_some_and(|e| seconds(Some(&e)) < now_s - period.as_secs_f64())
            {
                self.shared.store().spend.remove(&k)?;
            }
        }
        self.shared.store().flush().await?;
        for budget in &self.shared.config().budgets {
            let spent = self.budgets.spent(budget)?;
            if spent < budget.amount_usd {
                self.shared.again(&format!("budget-cap:{}", budget.name));
                continue;
            }
            if self
                .shared
                .first_time(&format!("budget-cap:{}", budget.name))
            {
                let msg = format!(
                    "spent {spent:.4} USD of {:.4} USD per {:?} (on_cap: {})",
                    budget.amount_usd,
                    budget.period,
                    budget.on_cap.as_str()
                );
                warn!(budget = %budget.name, %msg, "budget cap reached");
                self.shared
                    .event("Budget", "", &budget.name, true, "BudgetCapReached", msg);
            }
            if budget.on_cap == OnCap::Stop {
                self.stop_budget_pods(budget, spent, &pods).await?;
            }
        }
        Ok(())
    }

    async fn stop_budget_pods(
        &self,
        budget: &Budget,
        spent: f64,
        pods: &[pb::PodRecord],
    ) -> Result<(), ClusterError> {
        for record in pods.iter().filter(|p| {
            unfinished(p) && p.pod.as_ref().and_then(budget_of) == Some(budget.name.as_str())
        }) {
            let (ns, name) = names(record);
            info!(pod = %key(&ns, &name), budget = %budget.name, "stopped at the budget's cap");
            let msg = format!(
                "budget {} is spent ({spent:.4} of {:.4} USD per {:?}; on_cap: stop)",
                budget.name, budget.amount_usd, budget.period
            );
            // The verdict first: reports of this incarnation are stale from now
            // on, and the agent is told to stop it if the call below fails.
            self.pods.fail_pod(&ns, &name, "BudgetExceeded", msg)?;
            self.shared.store().flush().await?;
            if let Some(node) = self.shared.store().nodes.get(&record.node_name)?
                && let Err(e) = self.pods.stop_on_node(&node, record, None).await
            {
                warn!(pod = %key(&ns, &name), error = %e, "not stopped at the cap; its agent will be told it is an orphan");
            }
        }
        Ok(())
    }
}
