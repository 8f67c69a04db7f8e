//! `orca budget list`: each research budget's amount, spend within its
//! period, burn rate and what is left.

use std::io::{self, Write};

use orca_proto::controlplane::v1 as pb;

use super::output::table;

fn period(b: &pb::BudgetStatus) -> String {
    b.period
        .and_then(|d| std::time::Duration::try_from(d).ok())
        .map_or_else(|| "-".into(), |d| format!("{}h", d.as_secs_f64() / 3600.0))
}

/// One budget as JSON.
pub fn value(b: &pb::BudgetStatus) -> serde_json::Value {
    serde_json::json!({
        "name": b.name, "amountUSD": b.amount_usd, "period": period(b), "onCap": b.on_cap,
        "spentUSD": b.spent_usd, "burnUSDPerHour": b.burn_usd_per_hour,
        "remainingUSD": b.remaining_usd, "runningPods": b.running_pods,
    })
}

/// The budgets as a table.
pub fn table_of(out: &mut impl Write, budgets: &[pb::BudgetStatus]) -> io::Result<()> {
    let mut rows = vec![
        [
            "NAME",
            "AMOUNT",
            "PERIOD",
            "SPENT",
            "BURN/H",
            "REMAINING",
            "RUNNING",
            "ON-CAP",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for b in budgets {
        rows.push(vec![
            b.name.clone(),
            format!("{:.2}", b.amount_usd),
            period(b),
            format!("{:.4}", b.spent_usd),
            format!("{:.4}", b.burn_usd_per_hour),
            format!("{:.4}", b.remaining_usd),
            b.running_pods.to_string(),
            b.on_cap.clone(),
        ]);
    }
    table(out, &rows)
}
