//! Kubernetes Pod Security Standards (`privileged`, `baseline`, `restricted`).
//!
//! A pure re-implementation of the checks in pod-security-admission's policy
//! package (`k8s.io/pod-security-admission/policy`, the `check_*.go` files),
//! evaluated at policy version `latest` — Kubernetes 1.37, the release that
//! k8s-openapi's `latest` feature models (checked against upstream's
//! `kubernetes/pod-security-admission` at commit 8f84a87). Checks run in upstream's order
//! (baseline check IDs sorted, then restricted check IDs sorted; at
//! `restricted`, the baseline checks that a restricted check overrides are
//! skipped), and reasons and details are worded as upstream words them, so
//! [`message`] reproduces the API server's refusal text. Pod annotations
//! (the legacy AppArmor and seccomp annotations) are not inspected.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{
    ContainerPort, HTTPGetAction, PodSecurityContext, PodSpec, SELinuxOptions, SecurityContext,
    TCPSocketAction, Volume, WindowsSecurityContextOptions,
};

/// A Pod Security Standards level, from least to most restrictive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// No restrictions at all.
    Privileged,
    /// Prevents known privilege escalations.
    Baseline,
    /// Heavily restricted, following pod-hardening best practice.
    Restricted,
}

impl Level {
    /// The level's name as Kubernetes spells it: `privileged`, `baseline` or `restricted`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a [`Level`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseLevelError {
    /// The value is none of the known level names.
    #[error("unknown pod security level {0:?}: expected one of {ALLOWED_LEVELS}")]
    Unknown(String),
}

const ALLOWED_LEVELS: &str = r#""privileged", "baseline", "restricted""#;

impl FromStr for Level {
    type Err = ParseLevelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "privileged" => Ok(Level::Privileged),
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            other => Err(ParseLevelError::Unknown(other.to_owned())),
        }
    }
}

/// One failed check, as pod-security-admission reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The short reason, e.g. `host namespaces`.
    pub reason: String,
    /// The specifics, e.g. `hostPID=true`.
    pub detail: String,
}

impl fmt::Display for Violation {
    /// `reason (detail)`, or just `reason` when the detail is empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.detail.as_str() {
            "" => f.write_str(&self.reason),
            detail => write!(f, "{} ({detail})", self.reason),
        }
    }
}

/// Every check of `level` (and of the levels below it) that `spec` fails, in upstream's order.
///
/// As upstream, `restricted` replaces some baseline checks with stricter ones: a hostPath
/// volume, for one, is then reported as a restricted volume type.
pub fn check(level: Level, spec: &PodSpec) -> Vec<Violation> {
    let runs = |scope: &Scope| match level {
        Level::Privileged => false,
        Level::Baseline => *scope != Scope::Restricted,
        Level::Restricted => *scope != Scope::Overridden,
    };
    let pod = Pod::new(spec);
    let checks = CHECKS.iter().filter(|(scope, _)| runs(scope));
    checks.filter_map(|(_, f)| f(&pod)).collect()
}

/// The API server's message for a refusal, e.g.
/// `violates PodSecurity "baseline:latest": host namespaces (hostPID=true), privileged (container "c" must not set securityContext.privileged=true)`
pub fn message(level: Level, violations: &[Violation]) -> String {
    let details: Vec<String> = violations.iter().map(ToString::to_string).collect();
    format!(
        "violates PodSecurity \"{level}:latest\": {}",
        details.join(", ")
    )
}

/// Where a check sits in upstream's registry.
#[derive(PartialEq)]
enum Scope {
    /// A baseline check, also run at restricted.
    Baseline,
    /// A baseline check that a restricted check overrides, so not run at restricted.
    Overridden,
    /// A restricted-only check.
    Restricted,
}

type CheckFn = fn(&Pod<'_>) -> Option<Violation>;

/// Upstream's order: baseline check IDs sorted, then restricted check IDs sorted.
const CHECKS: [(Scope, CheckFn); 19] = [
    (Scope::Baseline, app_armor_profile),
    (Scope::Overridden, capabilities_baseline), // by capabilities_restricted
    (Scope::Baseline, host_namespaces),
    (Scope::Overridden, host_path_volumes), // by restrictedVolumes
    (Scope::Baseline, host_ports),
    (Scope::Baseline, host_probes_and_lifecycle),
    (Scope::Baseline, privileged),
    (Scope::Overridden, proc_mount_baseline), // by procMount_restricted
    (Scope::Baseline, se_linux_options),
    (Scope::Overridden, seccomp_baseline), // by seccompProfile_restricted
    (Scope::Baseline, sysctls),
    (Scope::Baseline, windows_host_process),
    (Scope::Restricted, allow_privilege_escalation),
    (Scope::Restricted, capabilities_restricted),
    (Scope::Restricted, proc_mount),
    (Scope::Restricted, restricted_volumes),
    (Scope::Restricted, run_as_non_root),
    (Scope::Restricted, run_as_user),
    (Scope::Restricted, seccomp_restricted),
];

const BASELINE_CAPABILITIES: &str = "AUDIT_WRITE CHOWN DAC_OVERRIDE FOWNER FSETID KILL MKNOD \
    NET_BIND_SERVICE SETFCAP SETGID SETPCAP SETUID SYS_CHROOT";
/// The 1.37 safe set (1.0, plus 1.27, 1.29, 1.32 and 1.37 additions).
const SAFE_SYSCTLS: &str = "kernel.shm_rmid_forced net.ipv4.ip_local_port_range \
    net.ipv4.tcp_syncookies net.ipv4.ping_group_range net.ipv4.ip_unprivileged_port_start \
    net.ipv4.ip_local_reserved_ports net.ipv4.tcp_keepalive_time net.ipv4.tcp_fin_timeout \
    net.ipv4.tcp_keepalive_intvl net.ipv4.tcp_keepalive_probes net.ipv4.tcp_rmem \
    net.ipv4.tcp_wmem net.ipv4.tcp_slow_start_after_idle net.ipv4.tcp_notsent_lowat";
/// Besides the empty type.
const SELINUX_TYPES: &str = "container_t container_init_t container_kvm_t container_engine_t";
const ALLOWED_VOLUMES: &str = "configMap csi downwardAPI emptyDir ephemeral image \
    persistentVolumeClaim projected secret";

fn listed(list: &str, item: &str) -> bool {
    list.split_whitespace().any(|x| x == item)
}

/// The fields of a container (regular, init or ephemeral) that the checks read.
struct Ctr<'a> {
    name: &'a str,
    sc: Option<&'a SecurityContext>,
    ports: &'a [ContainerPort],
    /// Non-empty `host` fields of its probes and lifecycle handlers.
    hosts: Vec<&'a str>,
}

fn endpoint_hosts<'a>(
    http: &'a Option<HTTPGetAction>,
    tcp: &'a Option<TCPSocketAction>,
) -> impl Iterator<Item = &'a str> {
    let http = http.as_ref().and_then(|h| h.host.as_deref());
    let tcp = tcp.as_ref().and_then(|t| t.host.as_deref());
    http.into_iter().chain(tcp).filter(|h| !h.is_empty())
}

/// `Container` and `EphemeralContainer` share these fields but not a type.
macro_rules! ctr {
    ($c:expr) => {{
        let c = $c;
        let mut hosts = Vec::new();
        let probes = [&c.liveness_probe, &c.readiness_probe, &c.startup_probe];
        for p in probes.into_iter().flatten() {
            hosts.extend(endpoint_hosts(&p.http_get, &p.tcp_socket));
        }
        if let Some(l) = &c.lifecycle {
            for h in [&l.post_start, &l.pre_stop].into_iter().flatten() {
                hosts.extend(endpoint_hosts(&h.http_get, &h.tcp_socket));
            }
        }
        let (name, sc) = (c.name.as_str(), c.security_context.as_ref());
        let ports = c.ports.as_deref().unwrap_or_default();
        Ctr {
            name,
            sc,
            ports,
            hosts,
        }
    }};
}

/// A pod spec with its containers in upstream's visiting order: init, regular, ephemeral.
struct Pod<'a> {
    spec: &'a PodSpec,
    psc: Option<&'a PodSecurityContext>,
    ctrs: Vec<Ctr<'a>>,
}

impl<'a> Pod<'a> {
    fn new(spec: &'a PodSpec) -> Self {
        let init = spec.init_containers.iter().flatten().map(|c| ctr!(c));
        let regular = spec.containers.iter().map(|c| ctr!(c));
        let ephemeral = spec.ephemeral_containers.iter().flatten().map(|c| ctr!(c));
        let ctrs = init.chain(regular).chain(ephemeral).collect();
        let psc = spec.security_context.as_ref();
        Pod { spec, psc, ctrs }
    }

    /// Names of the containers for which `bad` is true, in visiting order.
    fn names(&self, mut bad: impl FnMut(&Ctr<'a>) -> bool) -> Vec<&'a str> {
        let bad = self.ctrs.iter().filter(|c| bad(c));
        bad.map(|c| c.name).collect()
    }

    fn windows(&self) -> bool {
        self.spec.os.as_ref().is_some_and(|os| os.name == "windows")
    }

    /// `hostUsers: false`, which relaxes some checks since 1.35.
    fn user_namespaced(&self) -> bool {
        self.spec.host_users == Some(false)
    }
}

fn violation(reason: &str, detail: String) -> Option<Violation> {
    let reason = reason.to_owned();
    Some(Violation { reason, detail })
}

fn join_quote<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    let quoted = items.into_iter().map(|s| format!("\"{}\"", s.as_ref()));
    quoted.collect::<Vec<_>>().join(", ")
}

/// Upstream's `pluralize`; every plural it uses is the singular plus `s`.
fn plural(word: &str, count: usize) -> String {
    if count == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}

fn uses(count: usize) -> &'static str {
    if count == 1 { "uses" } else { "use" }
}

/// `container "a"` or `containers "a", "b"`; `None` if there are none.
fn containers(names: &[&str]) -> Option<String> {
    let noun = plural("container", names.len());
    (!names.is_empty()).then(|| format!("{noun} {}", join_quote(names)))
}

/// `pod`, `container "a"` or `pod and containers "a", "b"`; `None` if nothing is bad.
fn who(pod_bad: bool, bad: &[&str]) -> Option<String> {
    let mut parts = Vec::from_iter(pod_bad.then(|| "pod".to_owned()));
    parts.extend(containers(bad));
    (!parts.is_empty()).then(|| parts.join(" and "))
}

/// Records `value` in `values` when `allowed` rejects it; returns whether it did.
fn reject<'a>(values: &mut BTreeSet<&'a str>, value: &'a str, allowed: bool) -> bool {
    if !allowed {
        values.insert(value);
    }
    !allowed
}

fn app_armor_profile<'a>(p: &Pod<'a>) -> Option<Violation> {
    let mut values = BTreeSet::new();
    let mut bad = |t: &'a str| reject(&mut values, t, matches!(t, "RuntimeDefault" | "Localhost"));
    let pod_profile = p.psc.and_then(|s| s.app_armor_profile.as_ref());
    let pod_bad = pod_profile.is_some_and(|a| bad(&a.type_));
    let ctrs = p.names(|c| {
        c.sc.and_then(|s| s.app_armor_profile.as_ref())
            .is_some_and(|a| bad(&a.type_))
    });
    let who = who(pod_bad, &ctrs)?;
    let reason = plural("forbidden AppArmor profile", values.len());
    let detail = format!(
        "{who} must not set AppArmor profile type to {}",
        join_quote(&values)
    );
    violation(&reason, detail)
}

fn added_capabilities<'a>(c: &Ctr<'a>) -> impl Iterator<Item = &'a str> {
    let caps = c.sc.and_then(|s| s.capabilities.as_ref());
    caps.and_then(|c| c.add.as_deref())
        .unwrap_or_default()
        .iter()
        .map(String::as_str)
}

fn capabilities_baseline(p: &Pod<'_>) -> Option<Violation> {
    let mut caps = BTreeSet::new();
    let bad = p.names(|c| {
        let mut forbidden = false;
        for cap in added_capabilities(c) {
            forbidden |= reject(&mut caps, cap, listed(BASELINE_CAPABILITIES, cap));
        }
        forbidden
    });
    let who = containers(&bad)?;
    let caps = join_quote(&caps);
    let detail = format!("{who} must not include {caps} in securityContext.capabilities.add");
    violation("non-default capabilities", detail)
}

fn host_namespaces(p: &Pod<'_>) -> Option<Violation> {
    let s = p.spec;
    let on = [
        (s.host_network, "hostNetwork"),
        (s.host_pid, "hostPID"),
        (s.host_ipc, "hostIPC"),
    ];
    let on = on.iter().filter(|(set, _)| *set == Some(true));
    let set: Vec<String> = on.map(|(_, name)| format!("{name}=true")).collect();
    (!set.is_empty()).then(|| violation("host namespaces", set.join(", ")))?
}

fn host_path_volumes(p: &Pod<'_>) -> Option<Violation> {
    let volumes = p.spec.volumes.iter().flatten();
    let host_path = volumes.filter(|v| v.host_path.is_some());
    let bad = Vec::from_iter(host_path.map(|v| v.name.as_str()));
    let detail = format!("{} {}", plural("volume", bad.len()), join_quote(&bad));
    (!bad.is_empty()).then(|| violation("hostPath volumes", detail))?
}

fn host_ports(p: &Pod<'_>) -> Option<Violation> {
    // Upstream collects the ports as strings, so they sort as strings.
    let mut ports = BTreeSet::new();
    let bad = p.names(|c| {
        let used = c.ports.iter().filter_map(|cp| cp.host_port);
        let used = Vec::from_iter(used.filter(|&hp| hp != 0).map(|hp| hp.to_string()));
        let any = !used.is_empty();
        ports.extend(used);
        any
    });
    let who = containers(&bad)?;
    let (uses, noun) = (uses(bad.len()), plural("hostPort", ports.len()));
    let ports = Vec::from_iter(ports).join(", ");
    violation("hostPort", format!("{who} {uses} {noun} {ports}"))
}

fn host_probes_and_lifecycle(p: &Pod<'_>) -> Option<Violation> {
    let (mut names, mut hosts) = (BTreeSet::new(), BTreeSet::new());
    for c in p.ctrs.iter().filter(|c| !c.hosts.is_empty()) {
        names.insert(c.name);
        hosts.extend(c.hosts.iter().copied());
    }
    let who = containers(&Vec::from_iter(names.iter().copied()))?;
    let uses = uses(names.len());
    let noun = plural("probe or lifecycle host", hosts.len());
    let detail = format!("{who} {uses} {noun} {}", join_quote(&hosts));
    violation("probe or lifecycle host", detail)
}

fn privileged(p: &Pod<'_>) -> Option<Violation> {
    let bad = p.names(|c| c.sc.and_then(|s| s.privileged) == Some(true));
    let who = containers(&bad)?;
    let detail = format!("{who} must not set securityContext.privileged=true");
    violation("privileged", detail)
}

/// procMount at restricted (and, outside user namespaces, at baseline).
fn proc_mount<'a>(p: &Pod<'a>) -> Option<Violation> {
    let mut types = BTreeSet::new();
    let proc_mount = |c: &Ctr<'a>| c.sc.and_then(|s| s.proc_mount.as_deref());
    let bad = p.names(|c| proc_mount(c).is_some_and(|t| reject(&mut types, t, t == "Default")));
    let who = containers(&bad)?;
    let types = join_quote(&types);
    let detail = format!("{who} must not set securityContext.procMount to {types}");
    violation("procMount", detail)
}

fn proc_mount_baseline(p: &Pod<'_>) -> Option<Violation> {
    proc_mount(p).filter(|_| !p.user_namespaced())
}

fn se_linux_options<'a>(p: &Pod<'a>) -> Option<Violation> {
    let (mut types, mut user, mut role) = (BTreeSet::new(), false, false);
    let mut invalid = |o: &'a SELinuxOptions| {
        let t = o.type_.as_deref().unwrap_or_default();
        let bad_type = reject(&mut types, t, t.is_empty() || listed(SELINUX_TYPES, t));
        let set_user = o.user.as_deref().is_some_and(|u| !u.is_empty());
        let set_role = o.role.as_deref().is_some_and(|r| !r.is_empty());
        (user, role) = (user || set_user, role || set_role);
        bad_type || set_user || set_role
    };
    let pod_options = p.psc.and_then(|s| s.se_linux_options.as_ref());
    let pod_bad = pod_options.is_some_and(&mut invalid);
    let ctrs = p.names(|c| {
        c.sc.and_then(|s| s.se_linux_options.as_ref())
            .is_some_and(&mut invalid)
    });
    let who = who(pod_bad, &ctrs)?;
    let mut data = Vec::new();
    if !types.is_empty() {
        let noun = plural("type", types.len());
        data.push(format!("{noun} {}", join_quote(&types)));
    }
    data.extend(user.then(|| "user may not be set".to_owned()));
    data.extend(role.then(|| "role may not be set".to_owned()));
    let data = data.join("; ");
    let detail = format!("{who} set forbidden securityContext.seLinuxOptions: {data}");
    violation("seLinuxOptions", detail)
}

/// The seccomp check; `required` (restricted) makes an unset profile a violation.
fn seccomp<'a>(p: &Pod<'a>, required: bool) -> Option<Violation> {
    let mut values = BTreeSet::new();
    let mut bad = |t: &'a str| reject(&mut values, t, matches!(t, "RuntimeDefault" | "Localhost"));
    let pod_profile = p.psc.and_then(|s| s.seccomp_profile.as_ref());
    let pod_bad = pod_profile.is_some_and(|sp| bad(&sp.type_));
    let pod_set = pod_profile.is_some() && !pod_bad;
    let mut implicit = Vec::new();
    let ctrs = p.names(|c| match c.sc.and_then(|s| s.seccomp_profile.as_ref()) {
        Some(sp) => bad(&sp.type_),
        None => {
            implicit.extend((!pod_set).then_some(c.name));
            false
        }
    });
    if let Some(who) = who(pod_bad, &ctrs) {
        let values = join_quote(&values);
        let detail = format!("{who} must not set securityContext.seccompProfile.type to {values}");
        return violation("seccompProfile", detail);
    }
    let who = containers(&implicit).filter(|_| required)?;
    let detail = format!(
        r#"pod or {who} must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost""#
    );
    violation("seccompProfile", detail)
}

fn seccomp_baseline(p: &Pod<'_>) -> Option<Violation> {
    seccomp(p, false)
}

fn seccomp_restricted(p: &Pod<'_>) -> Option<Violation> {
    seccomp(p, true).filter(|_| !p.windows())
}

fn sysctls(p: &Pod<'_>) -> Option<Violation> {
    let all = p.psc.and_then(|s| s.sysctls.as_deref()).unwrap_or_default();
    let names = all.iter().map(|s| s.name.as_str());
    let bad = Vec::from_iter(names.filter(|n| !listed(SAFE_SYSCTLS, n)));
    (!bad.is_empty()).then(|| violation("forbidden sysctls", bad.join(", ")))?
}

fn windows_host_process(p: &Pod<'_>) -> Option<Violation> {
    let on =
        |w: Option<&WindowsSecurityContextOptions>| w.and_then(|w| w.host_process) == Some(true);
    let ctrs = p.names(|c| on(c.sc.and_then(|s| s.windows_options.as_ref())));
    let who = who(on(p.psc.and_then(|s| s.windows_options.as_ref())), &ctrs)?;
    let detail = format!("{who} must not set securityContext.windowsOptions.hostProcess=true");
    violation("hostProcess", detail)
}

fn allow_privilege_escalation(p: &Pod<'_>) -> Option<Violation> {
    let bad = p.names(|c| c.sc.and_then(|s| s.allow_privilege_escalation) != Some(false));
    let who = containers(&bad).filter(|_| !p.windows())?;
    let detail = format!("{who} must set securityContext.allowPrivilegeEscalation=false");
    violation("allowPrivilegeEscalation != false", detail)
}

fn capabilities_restricted(p: &Pod<'_>) -> Option<Violation> {
    let (mut caps, mut adding) = (BTreeSet::new(), Vec::new());
    let missing_drop = p.names(|c| {
        let Some(capabilities) = c.sc.and_then(|s| s.capabilities.as_ref()) else {
            return true;
        };
        let mut forbidden = false;
        for cap in added_capabilities(c) {
            forbidden |= reject(&mut caps, cap, cap == "NET_BIND_SERVICE");
        }
        adding.extend(forbidden.then_some(c.name));
        !capabilities.drop.iter().flatten().any(|d| d == "ALL")
    });
    let mut details = Vec::new();
    if let Some(who) = containers(&missing_drop) {
        let detail = format!(r#"{who} must set securityContext.capabilities.drop=["ALL"]"#);
        details.push(detail);
    }
    if let Some(who) = containers(&adding) {
        let caps = join_quote(&caps);
        let detail = format!("{who} must not include {caps} in securityContext.capabilities.add");
        details.push(detail);
    }
    let detail = details.join("; ");
    (!details.is_empty() && !p.windows()).then(|| violation("unrestricted capabilities", detail))?
}

/// The restricted-profile name of a volume's disallowed type, or `None` if it is allowed.
fn restricted_volume_type(v: &Volume) -> Option<&'static str> {
    #[rustfmt::skip]
    let types = [
        (v.config_map.is_some(), "configMap"), (v.csi.is_some(), "csi"),
        (v.downward_api.is_some(), "downwardAPI"), (v.empty_dir.is_some(), "emptyDir"),
        (v.ephemeral.is_some(), "ephemeral"), (v.image.is_some(), "image"),
        (v.persistent_volume_claim.is_some(), "persistentVolumeClaim"),
        (v.projected.is_some(), "projected"), (v.secret.is_some(), "secret"),
        (v.host_path.is_some(), "hostPath"), (v.gce_persistent_disk.is_some(), "gcePersistentDisk"),
        (v.aws_elastic_block_store.is_some(), "awsElasticBlockStore"),
        (v.git_repo.is_some(), "gitRepo"), (v.nfs.is_some(), "nfs"), (v.iscsi.is_some(), "iscsi"),
        (v.glusterfs.is_some(), "glusterfs"), (v.rbd.is_some(), "rbd"),
        (v.flex_volume.is_some(), "flexVolume"), (v.cinder.is_some(), "cinder"),
        (v.cephfs.is_some(), "cephfs"), (v.flocker.is_some(), "flocker"), (v.fc.is_some(), "fc"),
        (v.azure_file.is_some(), "azureFile"), (v.vsphere_volume.is_some(), "vsphereVolume"),
        (v.quobyte.is_some(), "quobyte"), (v.azure_disk.is_some(), "azureDisk"),
        (v.photon_persistent_disk.is_some(), "photonPersistentDisk"),
        (v.portworx_volume.is_some(), "portworxVolume"), (v.scale_io.is_some(), "scaleIO"),
        (v.storageos.is_some(), "storageos"),
    ];
    let mut set = types.iter().filter(|(set, _)| *set).map(|(_, name)| *name);
    let allowed = set.clone().any(|name| listed(ALLOWED_VOLUMES, name));
    (!allowed).then(|| set.next().unwrap_or("unknown"))
}

fn restricted_volumes(p: &Pod<'_>) -> Option<Violation> {
    let (mut bad, mut types) = (Vec::new(), BTreeSet::new());
    for v in p.spec.volumes.iter().flatten() {
        if let Some(t) = restricted_volume_type(v) {
            bad.push(v.name.as_str());
            types.insert(t);
        }
    }
    let (volumes, uses) = (plural("volume", bad.len()), uses(bad.len()));
    let noun = plural("restricted volume type", types.len());
    let (bad_list, types) = (join_quote(&bad), join_quote(&types));
    let detail = format!("{volumes} {bad_list} {uses} {noun} {types}");
    (!bad.is_empty()).then(|| violation("restricted volume types", detail))?
}

fn run_as_non_root(p: &Pod<'_>) -> Option<Violation> {
    let pod = p.psc.and_then(|s| s.run_as_non_root);
    let mut implicit = Vec::new();
    let explicit = p.names(|c| match c.sc.and_then(|s| s.run_as_non_root) {
        Some(v) => !v,
        None => {
            implicit.extend((pod != Some(true)).then_some(c.name));
            false
        }
    });
    let detail = if let Some(who) = who(pod == Some(false), &explicit) {
        format!("{who} must not set securityContext.runAsNonRoot=false")
    } else {
        let who = containers(&implicit)?;
        format!("pod or {who} must set securityContext.runAsNonRoot=true")
    };
    violation("runAsNonRoot != true", detail).filter(|_| !p.user_namespaced())
}

fn run_as_user(p: &Pod<'_>) -> Option<Violation> {
    let pod_bad = p.psc.and_then(|s| s.run_as_user) == Some(0);
    let ctrs = p.names(|c| c.sc.and_then(|s| s.run_as_user) == Some(0));
    let who = who(pod_bad, &ctrs)?;
    violation("runAsUser=0", format!("{who} must not set runAsUser=0"))
        .filter(|_| !p.user_namespaced())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn spec(v: Value) -> PodSpec {
        serde_json::from_value(v).expect("valid PodSpec")
    }

    /// A pod whose one container, `c`, has the given security context.
    fn sc(sc: Value) -> Value {
        json!({"containers": [{"name": "c", "image": "i", "securityContext": sc}]})
    }

    fn run(level: Level, pod: Value) -> Vec<(String, String)> {
        let vs = check(level, &spec(pod));
        vs.into_iter().map(|v| (v.reason, v.detail)).collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(r, d)| (r.to_string(), d.to_string()))
            .collect()
    }

    #[test]
    fn default_pod_at_each_level() {
        let pod = json!({"containers": [{"name": "c", "image": "i"}]});
        assert_eq!(run(Level::Privileged, pod.clone()), []);
        assert_eq!(run(Level::Baseline, pod.clone()), []);
        let seccomp = r#"pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost""#;
        let expected = pairs(&[
            (
                "allowPrivilegeEscalation != false",
                r#"container "c" must set securityContext.allowPrivilegeEscalation=false"#,
            ),
            (
                "unrestricted capabilities",
                r#"container "c" must set securityContext.capabilities.drop=["ALL"]"#,
            ),
            (
                "runAsNonRoot != true",
                r#"pod or container "c" must set securityContext.runAsNonRoot=true"#,
            ),
            ("seccompProfile", seccomp),
        ]);
        assert_eq!(run(Level::Restricted, pod), expected);
    }

    #[test]
    fn each_baseline_check_fails_and_passes() {
        let c = r#"container "c""#;
        let volume = |v: Value| json!({"containers": [], "volumes": [v]});
        let sysctl = |n: &str| {
            let sysctls = json!([{"name": n, "value": "1"}]);
            json!({"containers": [], "securityContext": {"sysctls": sysctls}})
        };
        let seccomp =
            |t: &str| json!({"securityContext": {"seccompProfile": {"type": t}}, "containers": []});
        let ports = |p: Value| json!({"containers": [{"name": "c", "ports": p}]});
        let probe = |h: &str| {
            let probe = json!({"tcpSocket": {"port": 1, "host": h}});
            json!({"containers": [{"name": "c", "startupProbe": probe}]})
        };
        let cases = [
            (
                json!({"securityContext": {"windowsOptions": {"hostProcess": true}},
                    "containers": [{"name": "c",
                        "securityContext": {"windowsOptions": {"hostProcess": true}}}]}),
                sc(json!({"windowsOptions": {"hostProcess": false}})),
                "hostProcess",
                format!("pod and {c} must not set securityContext.windowsOptions.hostProcess=true"),
            ),
            (
                json!({"hostNetwork": true, "hostIPC": true, "containers": []}),
                json!({"hostNetwork": false, "hostPID": false, "containers": []}),
                "host namespaces",
                "hostNetwork=true, hostIPC=true".to_owned(),
            ),
            (
                sc(json!({"privileged": true})),
                sc(json!({"privileged": false})),
                "privileged",
                format!("{c} must not set securityContext.privileged=true"),
            ),
            (
                sc(json!({"capabilities": {"add": ["SYS_ADMIN", "CHOWN", "NET_RAW"]}})),
                sc(json!({"capabilities": {"add": ["CHOWN", "NET_BIND_SERVICE"]}})),
                "non-default capabilities",
                format!(
                    r#"{c} must not include "NET_RAW", "SYS_ADMIN" in securityContext.capabilities.add"#
                ),
            ),
            (
                volume(json!({"name": "root", "hostPath": {"path": "/"}})),
                volume(json!({"name": "nfs", "nfs": {"server": "s", "path": "/"}})),
                "hostPath volumes",
                r#"volume "root""#.to_owned(),
            ),
            (
                ports(json!([{"containerPort": 1, "hostPort": 80},
                        {"containerPort": 2, "hostPort": 443}])),
                ports(json!([{"containerPort": 80, "hostPort": 0}])),
                "hostPort",
                format!("{c} uses hostPorts 443, 80"),
            ),
            (
                sc(json!({"appArmorProfile": {"type": "Unconfined"}})),
                sc(json!({"appArmorProfile": {"type": "Localhost", "localhostProfile": "p"}})),
                "forbidden AppArmor profile",
                format!(r#"{c} must not set AppArmor profile type to "Unconfined""#),
            ),
            (
                sc(json!({"seLinuxOptions": {"type": "spc_t", "user": "u"}})),
                sc(json!({"seLinuxOptions": {"type": "container_engine_t", "level": "s0"}})),
                "seLinuxOptions",
                format!(
                    r#"{c} set forbidden securityContext.seLinuxOptions: type "spc_t"; user may not be set"#
                ),
            ),
            (
                sc(json!({"procMount": "Unmasked"})),
                sc(json!({"procMount": "Default"})),
                "procMount",
                format!(r#"{c} must not set securityContext.procMount to "Unmasked""#),
            ),
            (
                seccomp("Unconfined"),
                seccomp("RuntimeDefault"),
                "seccompProfile",
                r#"pod must not set securityContext.seccompProfile.type to "Unconfined""#
                    .to_owned(),
            ),
            (
                sysctl("kernel.msgmax"),
                sysctl("net.ipv4.ip_local_port_range"),
                "forbidden sysctls",
                "kernel.msgmax".to_owned(),
            ),
            (
                probe("10.0.0.1"),
                probe(""),
                "probe or lifecycle host",
                format!(r#"{c} uses probe or lifecycle host "10.0.0.1""#),
            ),
        ];
        for (bad, good, reason, detail) in cases {
            assert_eq!(
                run(Level::Baseline, bad.clone()),
                pairs(&[(reason, &detail)])
            );
            assert_eq!(run(Level::Privileged, bad), []);
            assert_eq!(run(Level::Baseline, good), [], "{reason} should pass");
        }
    }

    #[test]
    fn restricted_compliant_pod_passes() {
        let pod = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "i", "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "cfg", "configMap": {"name": "x"}},
                {"name": "tmp", "emptyDir": {}}],
        });
        assert_eq!(run(Level::Restricted, pod), []);
    }

    #[test]
    fn restricted_only_checks() {
        let mut pod = json!({
            "securityContext": {"runAsNonRoot": false, "runAsUser": 0},
            "containers": [{"name": "a", "securityContext": {"allowPrivilegeEscalation": false,
                "seccompProfile": {"type": "Localhost", "localhostProfile": "p"},
                "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}}],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}},
                {"name": "n", "nfs": {"server": "s", "path": "/"}}],
        });
        let caps = (
            "unrestricted capabilities",
            r#"container "a" must not include "SYS_ADMIN" in securityContext.capabilities.add"#,
        );
        let volumes = (
            "restricted volume types",
            r#"volumes "root", "n" use restricted volume types "hostPath", "nfs""#,
        );
        let expected = pairs(&[
            caps,
            volumes,
            (
                "runAsNonRoot != true",
                "pod must not set securityContext.runAsNonRoot=false",
            ),
            ("runAsUser=0", "pod must not set runAsUser=0"),
        ]);
        assert_eq!(run(Level::Restricted, pod.clone()), expected);
        // hostUsers: false relaxes runAsNonRoot and runAsUser.
        pod["hostUsers"] = json!(false);
        assert_eq!(run(Level::Restricted, pod), pairs(&[caps, volumes]));
    }

    #[test]
    fn restricted_capabilities_report_both_problems() {
        let ctr = |name: &str, caps: Value| json!({"name": name, "securityContext": {"capabilities": caps}});
        let pod = json!({"securityContext": {"runAsNonRoot": true,
            "seccompProfile": {"type": "RuntimeDefault"}}, "containers": [
            ctr("a", json!({"add": ["FOO", "CHOWN"]})),
            ctr("b", json!({"add": ["NET_BIND_SERVICE", "BAR"], "drop": ["ALL"]})),
        ]});
        let vs = check(Level::Restricted, &spec(pod));
        let detail = r#"container "a" must set securityContext.capabilities.drop=["ALL"]; containers "a", "b" must not include "BAR", "CHOWN", "FOO" in securityContext.capabilities.add"#;
        assert_eq!(vs[1].reason, "unrestricted capabilities");
        assert_eq!(vs[1].detail, detail);
    }

    #[test]
    fn four_baseline_violations_in_order_and_message() {
        let pod = spec(json!({
            "hostPID": true,
            "containers": [{"name": "c", "image": "i",
                "securityContext": {"privileged": true, "capabilities": {"add": ["ALL"]}}}],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        }));
        let vs = check(Level::Baseline, &pod);
        let reasons = Vec::from_iter(vs.iter().map(|v| v.reason.as_str()));
        let expected = [
            "non-default capabilities",
            "host namespaces",
            "hostPath volumes",
            "privileged",
        ];
        assert_eq!(reasons, expected);
        assert_eq!(
            message(Level::Baseline, &vs),
            r#"violates PodSecurity "baseline:latest": non-default capabilities (container "c" must not include "ALL" in securityContext.capabilities.add), host namespaces (hostPID=true), hostPath volumes (volume "root"), privileged (container "c" must not set securityContext.privileged=true)"#
        );
    }

    #[test]
    fn init_and_ephemeral_containers_are_checked() {
        let privileged = json!({"privileged": true});
        let pod = json!({
            "initContainers": [{"name": "init", "securityContext": privileged}],
            "containers": [{"name": "app"}],
            "ephemeralContainers": [{"name": "debug", "securityContext": privileged}],
        });
        let detail = r#"containers "init", "debug" must not set securityContext.privileged=true"#;
        assert_eq!(run(Level::Baseline, pod), pairs(&[("privileged", detail)]));
    }

    #[test]
    fn windows_pods_skip_linux_only_restricted_checks() {
        let mut pod = json!({"securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "c"}], "os": {"name": "windows"}});
        assert_eq!(run(Level::Restricted, pod.clone()), []);
        pod["os"]["name"] = json!("linux");
        assert_eq!(run(Level::Restricted, pod).len(), 3);
    }

    #[test]
    fn level_parses_and_displays() {
        for level in [Level::Privileged, Level::Baseline, Level::Restricted] {
            assert_eq!(level.as_str().parse::<Level>(), Ok(level));
            assert_eq!(level.to_string(), level.as_str());
        }
        assert!(Level::Privileged < Level::Baseline && Level::Baseline < Level::Restricted);
        let err = "Baseline"
            .parse::<Level>()
            .expect_err("names are case-sensitive");
        assert_eq!(
            err.to_string(),
            r#"unknown pod security level "Baseline": expected one of "privileged", "baseline", "restricted""#
        );
    }
}
