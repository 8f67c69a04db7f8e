//! Research budgets on simulated hosts priced at 36 USD/h (0.01 USD a second):
//! a pod the budget cannot cover is refused at admission with what is left
//! and its estimate; a pod admitted on the budget's default lifetime that runs
//! on is stopped when spend reaches the cap (`on_cap: stop`), ending
//! `Failed (BudgetExceeded)` with its container gone; the ledger carries the
//! price; `orca budget list` shows the spend, and a pod after the cap is refused.

use orca_tests::cluster::{DEADLINE, TestCluster};
use orca_tests::eventually::eventually_blocking;

fn apply(c: &TestCluster, name: &str, annotations: &str) {
    let text = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations:\n{annotations}spec:\n  restartPolicy: Always\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {}\n    command: [sleep, '600']\n",
        c.image
    );
    let file = c.dir().join(format!("{name}.yaml"));
    std::fs::write(&file, text).unwrap();
    c.orca_ok(&["apply", "-f", file.to_str().unwrap()]);
}

fn budget(c: &TestCluster) -> serde_json::Value {
    let list: serde_json::Value =
        serde_json::from_str(&c.orca_ok(&["budget", "list", "-o", "json"])).unwrap();
    list.as_array()
        .and_then(|l| l.iter().find(|b| b["name"] == "lab").cloned())
        .unwrap_or_else(|| panic!("no budget lab: {list}"))
}

#[test]
fn a_budget_refuses_what_it_cannot_cover_and_stops_pods_at_its_cap() {
    let c = TestCluster::start_local(
        &["--retry-ms=100"],
        "budgets:\n- {name: lab, amount_usd: 0.06, period: 1h, on_cap: stop, default_lifetime: 2s}\nbudget_accrual_interval_ms: 200\n",
        "    usd_per_hour: 36\n",
    );
    c.orca_ok(&["node", "add", "one"]);
    c.wait_node_ready("one");

    // 36 USD/h for an hour: far beyond 0.06 USD.
    apply(
        &c,
        "big",
        "    orca.research/budget-namespace: lab\n    orca.research/max-lifetime: 1h\n",
    );
    let big = c.wait_phase("big", "Failed");
    assert_eq!(big["reason"], "BudgetExceeded", "{big}");
    let msg = big["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("budget lab has 0.0600 USD left") && msg.contains("estimated at 36.0000 USD"),
        "{big}"
    );
    apply(&c, "stray", "    orca.research/budget-namespace: nolab\n");
    let stray = c.wait_phase("stray", "Failed");
    assert_eq!(stray["reason"], "InvalidAnnotation", "{stray}");
    assert!(
        stray["message"]
            .as_str()
            .unwrap_or_default()
            .contains("known: lab"),
        "{stray}"
    );

    // Estimated at 2 s (0.02 USD): admitted; it runs on, and is stopped at the cap.
    apply(&c, "runner", "    orca.research/budget-namespace: lab\n");
    let running = c.wait_phase("runner", "Running");
    assert_eq!(running["placements"][0]["usdPerHour"], 36.0, "{running}");
    let b = eventually_blocking("the budget to burn", DEADLINE, || {
        let b = budget(&c);
        if b["runningPods"] == 1 && b["burnUSDPerHour"] == 36.0 {
            Ok(b)
        } else {
            Err(b)
        }
    });
    assert!(b["spentUSD"].as_f64().unwrap() < 0.06, "{b}");
    let stopped = c.wait_phase("runner", "Failed");
    assert_eq!(stopped["reason"], "BudgetExceeded", "{stopped}");
    c.wait_nothing_running("one", "runner's container to be gone");
    let b = eventually_blocking("the spend to be final", DEADLINE, || {
        let b = budget(&c);
        if b["runningPods"] == 0 { Ok(b) } else { Err(b) }
    });
    let spent = b["spentUSD"].as_f64().unwrap();
    assert!((0.06..0.2).contains(&spent), "stopped at the cap: {b}");
    assert_eq!(b["remainingUSD"], 0.0, "{b}");
    let events = c.orca_ok(&["events"]);
    assert!(events.contains("BudgetCapReached"), "{events}");

    // Nothing is left: the next pod is refused at admission.
    apply(&c, "late", "    orca.research/budget-namespace: lab\n");
    let late = c.wait_phase("late", "Failed");
    assert_eq!(late["reason"], "BudgetExceeded", "{late}");
}
