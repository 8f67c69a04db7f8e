//! What the kernel says about a container's cgroup, on cgroups v1 and v2.
//!
//! Containers' cgroups are at `/<containerd namespace>/<container id>` (the spec's
//! `cgroupsPath`): on v1 under each controller's hierarchy
//! (`/sys/fs/cgroup/memory/<ns>/<id>/memory.oom_control`), on v2 in the unified
//! tree (`/sys/fs/cgroup/<ns>/<id>/memory.events`). Both files carry an
//! `oom_kill N` line. The machines CI runs on use v1; the v2 parsing is
//! unit-tested on a recorded v2 file.
//!
//! A container's usage ([`usage`]) is what cAdvisor reads for the kubelet:
//! CPU time from v1 `cpuacct.usage` (the cpuacct hierarchy, mounted as
//! `cpuacct` or `cpu,cpuacct`) or v2 `cpu.stat` `usage_usec`; memory from v1
//! `memory.usage_in_bytes` and `memory.stat` `total_inactive_file`, or v2
//! `memory.current` and `memory.stat` `inactive_file`. The working set is usage
//! minus inactive file pages, never below zero.

use std::path::{Path, PathBuf};

/// The cgroup root.
const ROOT: &str = "/sys/fs/cgroup";

/// Which cgroup hierarchy this host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Per-controller hierarchies (possibly hybrid with an empty unified tree).
    V1,
    /// The unified hierarchy.
    V2,
}

/// The host's cgroup version: v2 when the root is the unified hierarchy.
pub fn version() -> Version {
    if Path::new(ROOT).join("cgroup.controllers").exists() {
        Version::V2
    } else {
        Version::V1
    }
}

/// The file holding the OOM kill count of a container's cgroup.
pub fn oom_file(version: Version, namespace: &str, id: &str) -> PathBuf {
    match version {
        Version::V1 => Path::new(ROOT)
            .join("memory")
            .join(namespace)
            .join(id)
            .join("memory.oom_control"),
        Version::V2 => Path::new(ROOT)
            .join(namespace)
            .join(id)
            .join("memory.events"),
    }
}

/// How many processes of the container the kernel's OOM killer killed; `None`
/// when the cgroup cannot be read (already removed, or not ours).
pub fn oom_kills(namespace: &str, id: &str) -> Option<u64> {
    parse_oom_kill(&std::fs::read_to_string(oom_file(version(), namespace, id)).ok()?)
}

/// The `oom_kill N` value of a v1 `memory.oom_control` or v2 `memory.events` file.
pub fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// Where the cpuacct hierarchy may be mounted on v1: systemd mounts
/// `cpu,cpuacct` and links `cpuacct` to it; some hosts mount `cpuacct` alone.
const V1_CPUACCT: &[&str] = &["cpuacct", "cpu,cpuacct"];

/// A container's CPU and memory usage as its cgroup accounts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used since the cgroup was made, core-nanoseconds.
    pub cpu_ns: u64,
    /// Memory charged to the cgroup, page cache included, bytes.
    pub memory_bytes: u64,
    /// Inactive file pages among them (reclaimable first), bytes.
    pub inactive_file_bytes: u64,
}

impl Usage {
    /// The working set: usage minus inactive file pages, never below zero (as
    /// cAdvisor computes it for the kubelet).
    pub fn working_set(&self) -> u64 {
        self.memory_bytes.saturating_sub(self.inactive_file_bytes)
    }
}

/// The usage of container `id`; `None` when its cgroup cannot be read (its
/// task just ended, or it is not ours).
pub fn usage(namespace: &str, id: &str) -> Option<Usage> {
    usage_under(Path::new(ROOT), version(), namespace, id)
}

/// [`usage`] under a cgroup root `root` of `version`.
pub fn usage_under(root: &Path, version: Version, namespace: &str, id: &str) -> Option<Usage> {
    let read = |path: PathBuf| std::fs::read_to_string(path).ok();
    match version {
        Version::V1 => {
            let cpu = V1_CPUACCT
                .iter()
                .find_map(|h| read(root.join(h).join(namespace).join(id).join("cpuacct.usage")))?;
            let memory = root.join("memory").join(namespace).join(id);
            parse_v1(
                &cpu,
                &read(memory.join("memory.usage_in_bytes"))?,
                &read(memory.join("memory.stat"))?,
            )
        }
        Version::V2 => {
            let dir = root.join(namespace).join(id);
            parse_v2(
                &read(dir.join("cpu.stat"))?,
                &read(dir.join("memory.current"))?,
                &read(dir.join("memory.stat"))?,
            )
        }
    }
}

/// Usage from v1 `cpuacct.usage`, `memory.usage_in_bytes` and `memory.stat`.
pub fn parse_v1(cpuacct_usage: &str, usage_in_bytes: &str, memory_stat: &str) -> Option<Usage> {
    Some(Usage {
        cpu_ns: cpuacct_usage.trim().parse().ok()?,
        memory_bytes: usage_in_bytes.trim().parse().ok()?,
        inactive_file_bytes: stat_value(memory_stat, "total_inactive_file")?,
    })
}

/// Usage from v2 `cpu.stat`, `memory.current` and `memory.stat`.
pub fn parse_v2(cpu_stat: &str, memory_current: &str, memory_stat: &str) -> Option<Usage> {
    Some(Usage {
        cpu_ns: stat_value(cpu_stat, "usage_usec")?.checked_mul(1000)?,
        memory_bytes: memory_current.trim().parse().ok()?,
        inactive_file_bytes: stat_value(memory_stat, "inactive_file")?,
    })
}

/// The value of the `key N` line of a flat-keyed cgroup file.
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `memory.stat` of a v1 cgroup (recorded on this machine: the root of the
    /// memory hierarchy, whose `total_` lines cover every container).
    const V1_MEMORY_STAT: &str = "cache 10682368\n\
rss 3936256\n\
rss_huge 0\n\
shmem 9166848\n\
mapped_file 7090176\n\
dirty 36864\n\
writeback 0\n\
workingset_refault_anon 0\n\
workingset_refault_file 18161\n\
swap 0\n\
swapcached 0\n\
pgpgin 102539\n\
pgpgout 98970\n\
pgfault 141502\n\
pgmajfault 0\n\
inactive_anon 0\n\
active_anon 1531904\n\
inactive_file 49152\n\
active_file 1466368\n\
unevictable 11571200\n\
hierarchical_memory_limit 9223372036854771712\n\
hierarchical_memsw_limit 9223372036854771712\n\
total_cache 9356476416\n\
total_rss 363388928\n\
total_rss_huge 0\n\
total_shmem 9170944\n\
total_mapped_file 293969920\n\
total_dirty 284164096\n\
total_writeback 0\n\
total_workingset_refault_anon 0\n\
total_workingset_refault_file 25368993\n\
total_swap 0\n\
total_swapcached 0\n\
total_pgpgin 1241563702\n\
total_pgpgout 1240455565\n\
total_pgfault 1402339019\n\
total_pgmajfault 344171\n\
total_inactive_anon 359231488\n\
total_active_anon 1593344\n\
total_inactive_file 6722670592\n\
total_active_file 2624626688\n\
total_unevictable 11571200\n\
";
    /// `memory.usage_in_bytes` read with [`V1_MEMORY_STAT`].
    const V1_USAGE: &str = "9719734272\n";
    /// `memory.stat` of a v2 container cgroup, in the layout of Linux 6.1's
    /// (Debian 12); this machine has no v2 memory controller to record from.
    const V2_MEMORY_STAT: &str = "anon 1363968\n\
file 2375680\n\
kernel 516096\n\
kernel_stack 32768\n\
pagetables 61440\n\
sec_pagetables 0\n\
percpu 0\n\
sock 0\n\
vmalloc 0\n\
shmem 0\n\
zswap 0\n\
zswapped 0\n\
file_mapped 1216512\n\
file_dirty 0\n\
file_writeback 0\n\
swapcached 0\n\
anon_thp 0\n\
file_thp 0\n\
shmem_thp 0\n\
inactive_anon 1339392\n\
active_anon 24576\n\
inactive_file 1937408\n\
active_file 438272\n\
unevictable 0\n\
slab_reclaimable 229376\n\
slab_unreclaimable 153600\n\
slab 382976\n\
workingset_refault_anon 0\n\
workingset_refault_file 0\n\
workingset_activate_anon 0\n\
workingset_activate_file 0\n\
workingset_restore_anon 0\n\
workingset_restore_file 0\n\
workingset_nodereclaim 0\n\
pgscan 0\n\
pgsteal 0\n\
pgscan_kswapd 0\n\
pgscan_direct 0\n\
pgsteal_kswapd 0\n\
pgsteal_direct 0\n\
pgfault 1749\n\
pgmajfault 11\n\
pgrefill 0\n\
pgactivate 107\n\
pgdeactivate 0\n\
pglazyfree 0\n\
pglazyfreed 0\n\
zswpin 0\n\
zswpout 0\n\
thp_fault_alloc 0\n\
thp_collapse_alloc 0\n\
";
    /// `cpu.stat` of a v2 cgroup (recorded on this machine's unified tree).
    const V2_CPU_STAT: &str = "usage_usec 56992818581\nuser_usec 46867636125\nsystem_usec 10125182456\nnice_usec 209747722\n";

    #[test]
    fn usage_parses_on_v1_and_v2() {
        let v1 = parse_v1("57041622192593\n", V1_USAGE, V1_MEMORY_STAT).expect("v1 parses");
        assert_eq!(v1.cpu_ns, 57_041_622_192_593);
        assert_eq!(v1.memory_bytes, 9_719_734_272);
        assert_eq!(v1.inactive_file_bytes, 6_722_670_592, "total_inactive_file");
        assert_eq!(v1.working_set(), 2_997_063_680);

        let v2 = parse_v2(V2_CPU_STAT, "8388608\n", V2_MEMORY_STAT).expect("v2 parses");
        assert_eq!(
            v2.cpu_ns, 56_992_818_581_000,
            "microseconds become nanoseconds"
        );
        assert_eq!(v2.memory_bytes, 8_388_608);
        assert_eq!(v2.inactive_file_bytes, 1_937_408);
        assert_eq!(v2.working_set(), 8_388_608 - 1_937_408);

        // `inactive_file`, not `total_inactive_file` nor `inactive_anon`: keys match whole.
        assert_eq!(
            stat_value("total_inactive_file 7\ninactive_file 3\n", "inactive_file"),
            Some(3)
        );
        // More inactive file pages than usage (the counters are read apart): zero, not a wrap.
        let odd = Usage {
            cpu_ns: 0,
            memory_bytes: 10,
            inactive_file_bytes: 20,
        };
        assert_eq!(odd.working_set(), 0);
        // A file cut short or not a number: no figure rather than a wrong one.
        assert_eq!(parse_v1("", "1", V1_MEMORY_STAT), None);
        assert_eq!(parse_v2("user_usec 5\n", "1", V2_MEMORY_STAT), None);
        assert_eq!(parse_v1("5", "max", V1_MEMORY_STAT), None);
    }

    #[test]
    fn usage_reads_each_versions_layout() {
        let root = tempfile::tempdir().expect("tempdir");
        let write = |rel: &str, text: &str| {
            let path = root.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
            std::fs::write(path, text).expect("write");
        };
        // v1 with cpu and cpuacct co-mounted (systemd's layout).
        write("cpu,cpuacct/orca/abc-main/cpuacct.usage", "42\n");
        write("memory/orca/abc-main/memory.usage_in_bytes", V1_USAGE);
        write("memory/orca/abc-main/memory.stat", V1_MEMORY_STAT);
        let v1 = usage_under(root.path(), Version::V1, "orca", "abc-main").expect("v1 reads");
        assert_eq!((v1.cpu_ns, v1.working_set()), (42, 2_997_063_680));
        assert_eq!(usage_under(root.path(), Version::V1, "orca", "gone"), None);

        write("orca/abc-main/cpu.stat", V2_CPU_STAT);
        write("orca/abc-main/memory.current", "8388608\n");
        write("orca/abc-main/memory.stat", V2_MEMORY_STAT);
        let v2 = usage_under(root.path(), Version::V2, "orca", "abc-main").expect("v2 reads");
        assert_eq!(
            (v2.cpu_ns, v2.memory_bytes),
            (56_992_818_581_000, 8_388_608)
        );
    }

    #[test]
    fn oom_kill_counts_parse_on_v1_and_v2() {
        // Recorded from a v1 host (this machine) and a v2 host (Debian 12 on EC2).
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n";
        let v2 = "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(v1), Some(1));
        assert_eq!(parse_oom_kill(v2), Some(1));
        assert_eq!(parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n"), None);
        assert_eq!(
            oom_file(Version::V2, "orca", "abc-main"),
            Path::new("/sys/fs/cgroup/orca/abc-main/memory.events")
        );
        assert_eq!(
            oom_file(Version::V1, "orca", "abc-main"),
            Path::new("/sys/fs/cgroup/memory/orca/abc-main/memory.oom_control")
        );
    }
}
