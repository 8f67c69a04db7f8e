//! `Stats`: CPU and memory usage of the node and of every running container,
//! read from the kernel when asked (nothing is sampled in the background; the
//! caller computes rates from two reads, as metrics-server does).
//!
//! - Containers: their cgroups ([`crate::cgroup::usage`], v1 or v2), the
//!   figures cAdvisor gives the kubelet: cumulative CPU time and the memory
//!   working set (usage minus inactive file pages).
//! - The node: the kernel's accounting of the whole machine, `/proc/stat`'s
//!   `cpu` line and `/proc/meminfo`, rather than the cgroup the agent runs in.
//!   The agent's cgroup holds the agent alone (containers get cgroups of their
//!   own under containerd's namespace, not under the agent's), so it says
//!   nothing about the node; the machine is what the kubelet reports as the
//!   node (its root cgroup). On a simulated host the machine is shared by every
//!   simulated host, and each reports it whole.
//!
//! Files are read on a blocking thread; a container whose cgroup cannot be
//! read (its task ended between the listing and the read) is left out.

use orca_proto::agent::v1 as pb;
use orca_proto::types::v1::PodRef;
use tracing::debug;

use crate::cgroup;
use crate::pods::LivePod;
use crate::status::to_pb_time;

/// The node's usage, from `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeUsage {
    /// CPU time spent outside idle and iowait since boot, all CPUs, core-nanoseconds.
    pub cpu_ns: u64,
    /// MemTotal minus MemFree, bytes.
    pub memory_bytes: u64,
    /// Memory usage minus `Inactive(file)`, never below zero, bytes.
    pub working_set_bytes: u64,
    /// MemAvailable, bytes.
    pub available_bytes: u64,
}

/// CPU time in core-nanoseconds from `/proc/stat`'s `cpu` line, whose columns
/// count ticks of `ticks_per_second`: user, nice, system, irq, softirq and
/// steal (guest time is already inside user and nice; idle and iowait are not
/// usage).
pub fn parse_proc_stat(text: &str, ticks_per_second: u64) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let columns: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal guest guest_nice
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| columns.get(i).copied().unwrap_or(0))
        .sum();
    if ticks_per_second == 0 || columns.len() < 4 {
        return None;
    }
    let ns = u128::from(busy) * 1_000_000_000 / u128::from(ticks_per_second);
    u64::try_from(ns).ok()
}

/// The node's memory from `/proc/meminfo` (whose figures are kB).
pub fn parse_meminfo(text: &str) -> Option<(u64, u64, u64)> {
    let kib = |key: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            let value = rest.trim().strip_suffix("kB").unwrap_or(rest).trim();
            value.parse::<u64>().ok().map(|v| v * 1024)
        })
    };
    let usage = kib("MemTotal")?.saturating_sub(kib("MemFree")?);
    let working_set = usage.saturating_sub(kib("Inactive(file)")?);
    Some((usage, working_set, kib("MemAvailable")?))
}

/// The node's usage now; `None` when `/proc` cannot be read or parsed.
pub fn node_usage() -> Option<NodeUsage> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())?;
    let cpu_ns = parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?, ticks)?;
    let (memory_bytes, working_set_bytes, available_bytes) =
        parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)?;
    Some(NodeUsage {
        cpu_ns,
        memory_bytes,
        working_set_bytes,
        available_bytes,
    })
}

/// Reads the node's usage and that of every running container of `pods`
/// (cgroups under containerd namespace `namespace`). Blocking: file reads.
pub fn collect(pods: &[LivePod], namespace: &str) -> pb::StatsResponse {
    let node = node_usage().map(|n| pb::NodeStats {
        time: Some(to_pb_time(jiff::Timestamp::now())),
        cpu_usage_core_nanoseconds: n.cpu_ns,
        memory_usage_bytes: n.memory_bytes,
        memory_working_set_bytes: n.working_set_bytes,
        memory_available_bytes: n.available_bytes,
    });
    let pods = pods
        .iter()
        .filter_map(|pod| {
            let containers: Vec<pb::ContainerStats> = pod
                .running
                .iter()
                .filter_map(|run| {
                    let Some(usage) = cgroup::usage(namespace, &run.id) else {
                        debug!(container = %run.id, "cgroup not readable; left out of stats");
                        return None;
                    };
                    Some(pb::ContainerStats {
                        name: run.container.clone(),
                        start_time: Some(to_pb_time(run.started_at)),
                        time: Some(to_pb_time(jiff::Timestamp::now())),
                        cpu_usage_core_nanoseconds: usage.cpu_ns,
                        memory_usage_bytes: usage.memory_bytes,
                        memory_working_set_bytes: usage.working_set(),
                    })
                })
                .collect();
            (!containers.is_empty()).then(|| pb::PodStats {
                pod: Some(PodRef {
                    namespace: pod.key.namespace.clone(),
                    name: pod.key.name.clone(),
                    uid: pod.key.uid.clone(),
                }),
                containers,
            })
        })
        .collect();
    pb::StatsResponse { node, pods }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_cpu_counts_busy_ticks_only() {
        // Recorded on this machine (2 CPUs, 100 ticks per second).
        let stat = "cpu  4677858 20974 990173 3683707 115448 0 24028 68482 0 0\n\
                    cpu0 2150643 9766 471763 2076600 36990 0 9772 34227 0 0\n\
                    cpu1 2527214 11208 518410 1607107 78458 0 14256 34254 0 0\n";
        let busy_ticks = 4_677_858 + 20_974 + 990_173 + 24_028 + 68_482;
        assert_eq!(
            parse_proc_stat(stat, 100),
            Some(busy_ticks * 10_000_000),
            "user + nice + system + irq + softirq + steal, 10 ms a tick"
        );
        // Older kernels print fewer columns; what is there counts.
        assert_eq!(parse_proc_stat("cpu 1 2 3 4\n", 100), Some(60_000_000));
        assert_eq!(
            parse_proc_stat("cpu0 1 2 3 4\n", 100),
            None,
            "the total line only"
        );
        assert_eq!(parse_proc_stat("cpu 1 x 3 4\n", 100), None);
        assert_eq!(parse_proc_stat("cpu 1 2 3 4\n", 0), None);
    }

    #[test]
    fn node_memory_is_the_kubelets_working_set() {
        // Recorded on this machine.
        let meminfo = "MemTotal:       24683656 kB\n\
                       MemFree:         7215264 kB\n\
                       MemAvailable:   17489292 kB\n\
                       Buffers:           51260 kB\n\
                       Cached:         10136364 kB\n\
                       Inactive(anon):  5823300 kB\n\
                       Active(file):    2897888 kB\n\
                       Inactive(file):  7280780 kB\n";
        let (usage, working_set, available) = parse_meminfo(meminfo).expect("parses");
        assert_eq!(usage, (24_683_656 - 7_215_264) * 1024);
        assert_eq!(working_set, (24_683_656 - 7_215_264 - 7_280_780) * 1024);
        assert_eq!(available, 17_489_292 * 1024);
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None, "incomplete");
    }
}
