//! `orca ledger`: the provenance ledger of every pod (or one): where and on
//! what each incarnation ran, the interruptions that moved it, and its cost so
//! far; and the ledger section of `orca describe pod`.

use std::io::{self, Write};

use orca_proto::controlplane::v1 as pb;

use super::output::table;
use orca_model::ledger::{cost, hours};

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn price(p: &pb::Placement) -> String {
    if p.usd_per_hour > 0.0 {
        format!("{:.4}", p.usd_per_hour)
    } else {
        "-".into()
    }
}

/// The ledger as a table: one row per placement.
pub fn table_of(out: &mut impl Write, pods: &[pb::PodRecord]) -> io::Result<()> {
    let mut rows = vec![
        [
            "POD", "UID", "INSTANCE", "TYPE", "ZONE", "CAPACITY", "USD/H", "HOURS", "END", "COST",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for record in pods {
        let (ns, name) = orca_model::pod::names(record);
        for p in &record.placements {
            rows.push(vec![
                format!("{ns}/{name}"),
                p.uid.chars().take(8).collect(),
                or_dash(&p.instance_id).to_owned(),
                or_dash(&p.instance_type).to_owned(),
                or_dash(&p.zone).to_owned(),
                or_dash(&p.capacity_type).to_owned(),
                price(p),
                format!("{:.3}", hours(p)),
                if p.ended_at.is_none() {
                    "running".into()
                } else {
                    or_dash(&p.end_reason).to_owned()
                },
                format!("{:.4}", p.usd_per_hour * hours(p)),
            ]);
        }
    }
    table(out, &rows)
}

/// The ledger section of `orca describe pod`.
pub fn describe(out: &mut impl Write, record: &pb::PodRecord) -> io::Result<()> {
    if record.placements.is_empty() && record.interruptions.is_empty() {
        return Ok(());
    }
    writeln!(out, "Ledger:       cost so far {:.4} USD", cost(record))?;
    for p in &record.placements {
        let end = if p.ended_at.is_none() {
            "running".to_owned()
        } else {
            format!("ended: {}", or_dash(&p.end_reason))
        };
        writeln!(
            out,
            "  {} on {} ({}, {} {} {}, {} USD/h, image {}): {:.3} h, {} restarts, {end}",
            p.uid,
            p.node_name,
            or_dash(&p.instance_id),
            or_dash(&p.instance_type),
            or_dash(&p.zone),
            or_dash(&p.capacity_type),
            price(p),
            or_dash(&p.image_id),
            hours(p),
            p.restarts,
        )?;
        if !p.gpu_uuids.is_empty() {
            writeln!(
                out,
                "    GPUs {} (driver {})",
                p.gpu_uuids.join(","),
                or_dash(&p.gpu_driver_version)
            )?;
        }
    }
    for i in &record.interruptions {
        let notice = i.notice.clone().unwrap_or_default();
        writeln!(
            out,
            "  interrupted: {} on {} ({} {}), checkpoint {}",
            i.uid,
            i.node_name,
            notice
                .kind()
                .as_str_name()
                .trim_start_matches("NOTICE_KIND_")
                .to_lowercase(),
            notice.action,
            or_dash(&i.checkpoint),
        )?;
    }
    Ok(())
}
