//! Translation of one Kubernetes container (plus its image's config) into an OCI
//! runtime spec. Pure: no IO, unit-tested on its own.
//!
//! The defaults follow containerd's `oci.WithDefaultSpec` for Linux (mounts,
//! masked paths, default capability set) so that a container here behaves as it
//! would under `ctr run` or the kubelet.

pub mod security;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde_json::{Value, json};

/// The CFS period used to express a CPU limit as a quota, in microseconds (the kubelet's).
const CPU_PERIOD_US: u64 = 100_000;

/// What a pod spec asks for that this agent cannot do (yet) or that is malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// The pod has no containers.
    #[error("pod spec has no containers")]
    NoContainers,
    /// A container has no image.
    #[error("container {container:?} has no image")]
    NoImage {
        /// Container name.
        container: String,
    },
    /// Two containers share a name.
    #[error("container name {container:?} is used twice")]
    DuplicateName {
        /// Container name.
        container: String,
    },
    /// A container name is not a DNS-1123 label.
    #[error("container name {container:?} is not a lowercase DNS-1123 label")]
    BadName {
        /// Container name.
        container: String,
    },
    /// A field the agent does not implement yet; failing beats ignoring it.
    #[error("{field} is not supported by this agent yet")]
    Unsupported {
        /// The spec path, e.g. `containers[main].livenessProbe`.
        field: String,
    },
    /// A resource quantity that does not parse.
    #[error("{field}: {value:?} is not a valid quantity")]
    BadQuantity {
        /// The spec path.
        field: String,
        /// The text found.
        value: String,
    },
    /// The process to run is empty: no command, no args and no image entrypoint or cmd.
    #[error(
        "container {container:?} has nothing to run: no command and the image has no entrypoint or cmd"
    )]
    NothingToRun {
        /// Container name.
        container: String,
    },
    /// An image pull policy other than Always, IfNotPresent and Never.
    #[error(
        "container {container:?}: imagePullPolicy {policy:?} is not Always, IfNotPresent or Never"
    )]
    BadPullPolicy {
        /// Container name.
        container: String,
        /// The policy found.
        policy: String,
    },
    /// A resource request above its limit.
    #[error("container {container:?}: the {resource} request is above its limit")]
    RequestAboveLimit {
        /// Container name.
        container: String,
        /// `cpu` or `memory`.
        resource: String,
    },
    /// A capability name Linux does not have.
    #[error("container {container:?}: unknown capability {capability:?}")]
    UnknownCapability {
        /// Container name.
        container: String,
        /// The name found.
        capability: String,
    },
    /// A restart policy other than Always, OnFailure and Never.
    #[error("restartPolicy {policy:?} is not Always, OnFailure or Never")]
    BadRestartPolicy {
        /// The policy found.
        policy: String,
    },
}

/// The parts of an OCI image config that shape the process, read from the
/// image spec's [`ImageConfiguration`](oci_spec::image::ImageConfiguration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Env`, `KEY=value` entries.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User` (`user`, `uid`, `user:group`, `uid:gid`; empty when unset).
    /// Carried to [`runtime_spec`] but not honoured yet: a container runs as its
    /// securityContext says, or as root (honouring the image's user is a later
    /// issue).
    pub user: String,
}

impl ImageConfig {
    /// The process defaults of a parsed image config.
    pub fn from_oci(image: &oci_spec::image::ImageConfiguration) -> Self {
        let Some(config) = image.config() else {
            return Self::default();
        };
        Self {
            env: config.env().clone().unwrap_or_default(),
            entrypoint: config.entrypoint().clone().unwrap_or_default(),
            cmd: config.cmd().clone().unwrap_or_default(),
            working_dir: config.working_dir().clone().unwrap_or_default(),
            user: config.user().clone().unwrap_or_default(),
        }
    }
}

/// How the kubelet decides whether to pull an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull every time a container is created.
    Always,
    /// Pull only when the image is not present.
    IfNotPresent,
    /// Never pull; fail when absent.
    Never,
}

impl PullPolicy {
    /// The container's policy, with Kubernetes' default: Always for `:latest` or an
    /// untagged reference, IfNotPresent otherwise.
    pub fn of(container: &Container) -> Result<Self, SpecError> {
        match container.image_pull_policy.as_deref() {
            Some("Always") => Ok(Self::Always),
            Some("IfNotPresent") => Ok(Self::IfNotPresent),
            Some("Never") => Ok(Self::Never),
            Some(other) => Err(SpecError::BadPullPolicy {
                container: container.name.clone(),
                policy: other.to_owned(),
            }),
            None => {
                let image = container.image.as_deref().unwrap_or_default();
                let last = image.rsplit('/').next().unwrap_or_default();
                let tagged = last.contains(':') || image.contains('@');
                if !tagged || image.ends_with(":latest") {
                    Ok(Self::Always)
                } else {
                    Ok(Self::IfNotPresent)
                }
            }
        }
    }
}

/// A pod's restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Restart containers whatever their exit status (Kubernetes' default).
    Always,
    /// Restart containers that exit non-zero.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// The pod's policy, Always when unset.
    pub fn of(spec: &PodSpec) -> Result<Self, SpecError> {
        match spec.restart_policy.as_deref() {
            None | Some("Always") => Ok(Self::Always),
            Some("OnFailure") => Ok(Self::OnFailure),
            Some("Never") => Ok(Self::Never),
            Some(other) => Err(SpecError::BadRestartPolicy {
                policy: other.to_owned(),
            }),
        }
    }
}

/// Checks what the agent can run; the first problem found is returned.
pub fn validate(spec: &PodSpec) -> Result<(), SpecError> {
    if spec.containers.is_empty() {
        return Err(SpecError::NoContainers);
    }
    RestartPolicy::of(spec)?;
    let unsupported = |field: String| Err(SpecError::Unsupported { field });
    let mut seen = std::collections::BTreeSet::new();
    let inits = spec.init_containers.iter().flatten();
    for c in inits.chain(&spec.containers) {
        if !is_dns_label(&c.name) {
            return Err(SpecError::BadName {
                container: c.name.clone(),
            });
        }
        if !seen.insert(c.name.as_str()) {
            return Err(SpecError::DuplicateName {
                container: c.name.clone(),
            });
        }
        if c.image.as_deref().unwrap_or_default().trim().is_empty() {
            return Err(SpecError::NoImage {
                container: c.name.clone(),
            });
        }
        PullPolicy::of(c)?;
        let at = |f: &str| format!("containers[{}].{f}", c.name);
        if c.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
            return unsupported(at("envFrom"));
        }
        if c.env.iter().flatten().any(|e| e.value_from.is_some()) {
            return unsupported(at("env.valueFrom"));
        }
        if c.tty == Some(true) || c.stdin == Some(true) {
            return unsupported(at("tty/stdin"));
        }
        security::capabilities(c)?;
        limits(c)?;
    }
    Ok(())
}

/// Whether `s` is a Kubernetes DNS-1123 label (container and volume names).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The process arguments with Kubernetes' rules: `command` replaces the image's
/// Entrypoint and then ignores its Cmd; `args` replaces Cmd.
pub fn process_args(container: &Container, image: &ImageConfig) -> Result<Vec<String>, SpecError> {
    let (entrypoint, cmd) = match (&container.command, &container.args) {
        (Some(command), Some(args)) => (command.clone(), args.clone()),
        (Some(command), None) => (command.clone(), Vec::new()),
        (None, Some(args)) => (image.entrypoint.clone(), args.clone()),
        (None, None) => (image.entrypoint.clone(), image.cmd.clone()),
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(SpecError::NothingToRun {
            container: container.name.clone(),
        });
    }
    Ok(argv)
}

/// The environment: the image's, then the container's (later entries win, as in
/// Kubernetes), with `$(VAR)` references expanded against what came before.
pub fn environment(container: &Container, image: &ImageConfig, hostname: &str) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |k: &str, v: String, env: &mut Vec<(String, String)>| {
        if let Some(slot) = env.iter_mut().find(|(key, _)| key == k) {
            slot.1 = v;
        } else {
            env.push((k.to_owned(), v));
        }
    };
    for entry in &image.env {
        let (k, v) = entry.split_once('=').unwrap_or((entry, ""));
        set(k, v.to_owned(), &mut env);
    }
    set("HOSTNAME", hostname.to_owned(), &mut env);
    for var in container.env.iter().flatten() {
        let value = expand(var.value.as_deref().unwrap_or_default(), &env);
        set(&var.name, value, &mut env);
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` escapes,
/// undefined references stay as written.
fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[pos..pos + 3 + end]),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// CPU and memory limits of a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// CPU limit in millicores.
    pub cpu_millis: Option<u64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU request in millicores (becomes cgroup shares).
    pub cpu_request_millis: Option<u64>,
}

/// Reads a container's CPU and memory limits and CPU request.
pub fn limits(container: &Container) -> Result<Limits, SpecError> {
    let Some(res) = &container.resources else {
        return Ok(Limits::default());
    };
    let get = |map: &Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
               key: &str,
               kind: &str| {
        map.as_ref().and_then(|m| m.get(key)).map(|q| {
            let field = format!("containers[{}].resources.{kind}.{key}", container.name);
            parse_quantity(&q.0, key == "cpu").ok_or(SpecError::BadQuantity {
                field,
                value: q.0.clone(),
            })
        })
    };
    let limits = Limits {
        cpu_millis: get(&res.limits, "cpu", "limits").transpose()?,
        memory_bytes: get(&res.limits, "memory", "limits").transpose()?,
        cpu_request_millis: get(&res.requests, "cpu", "requests").transpose()?,
    };
    // Kubernetes' rule: a request never exceeds its limit.
    let memory_request = get(&res.requests, "memory", "requests").transpose()?;
    for (key, request, limit) in [
        ("cpu", limits.cpu_request_millis, limits.cpu_millis),
        ("memory", memory_request, limits.memory_bytes),
    ] {
        if let (Some(request), Some(limit)) = (request, limit)
            && request > limit
        {
            return Err(SpecError::RequestAboveLimit {
                container: container.name.clone(),
                resource: key.into(),
            });
        }
    }
    Ok(limits)
}

pub use orca_model::quantity::parse as parse_quantity;

/// Everything the runtime spec of one container depends on.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    /// The container from the pod spec.
    pub container: &'a Container,
    /// The pod spec (for pod-level security settings).
    pub pod: &'a PodSpec,
    /// The image's config.
    pub image: &'a ImageConfig,
    /// The pod's hostname (the pod name, as in Kubernetes).
    pub hostname: &'a str,
    /// containerd namespace, for the cgroup path.
    pub namespace: &'a str,
    /// containerd container id, for the cgroup path.
    pub container_id: &'a str,
    /// The pod's shared namespaces, when it has them.
    pub shared: &'a PodNamespaces,
    /// Volume mounts for this container (OCI mount objects).
    pub mounts: &'a [Value],
    /// Host devices, given to privileged containers.
    pub host_devices: &'a [security::Device],
    /// The host's capabilities, given to privileged containers.
    pub host_capabilities: &'a [String],
    /// The most processes (and threads) the container may hold at once, its
    /// cgroup's `pids.max`; `None` for no limit.
    pub pids_limit: Option<i64>,
}

/// Namespaces and `/dev/shm` that a pod's containers share, as Kubernetes pods
/// share IPC, UTS and network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNamespaces {
    /// `/proc/<pid>/ns/ipc` of the pod's namespace holder.
    pub ipc: Option<String>,
    /// `/proc/<pid>/ns/uts` of the pod's namespace holder.
    pub uts: Option<String>,
    /// `/proc/<pid>/ns/net` of the pod's namespace holder: the network namespace
    /// the agent runs in (a simulated host's, or an instance's own), so the pod
    /// has its host's address. Without it, containers get the network namespace
    /// of containerd's shim, which is the machine's.
    pub net: Option<String>,
    /// Host directory bind-mounted at `/dev/shm` in every container.
    pub shm: Option<String>,
}

/// The OCI runtime spec (as JSON) for one container.
pub fn runtime_spec(input: &SpecInput<'_>) -> Result<Value, SpecError> {
    let c = input.container;
    let args = process_args(c, input.image)?;
    let env = environment(c, input.image, input.hostname);
    let cwd = c
        .working_dir
        .clone()
        .filter(|d| !d.is_empty())
        .or_else(|| Some(input.image.working_dir.clone()).filter(|d| !d.is_empty()))
        .unwrap_or_else(|| "/".to_owned());
    let sc = c.security_context.as_ref();
    let pod_sc = input.pod.security_context.as_ref();
    // The image's `User` (`input.image.user`) is not honoured yet: without a
    // runAsUser the process runs as root, as it always has (a later issue reads
    // the image's /etc/passwd and /etc/group for it).
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user))
        .unwrap_or(0);
    let gid = sc
        .and_then(|s| s.run_as_group)
        .or(pod_sc.and_then(|s| s.run_as_group))
        .unwrap_or(0);
    // Kubernetes adds the pod's fsGroup and supplementalGroups to every process.
    let mut additional_gids: Vec<i64> = pod_sc.and_then(|s| s.fs_group).into_iter().collect();
    additional_gids.extend(
        pod_sc
            .and_then(|s| s.supplemental_groups.clone())
            .unwrap_or_default(),
    );
    additional_gids.sort_unstable();
    additional_gids.dedup();
    let read_only = sc
        .and_then(|s| s.read_only_root_filesystem)
        .unwrap_or(false);
    let no_new_privileges = !sc
        .and_then(|s| s.allow_privilege_escalation)
        .unwrap_or(true);
    let privileged = security::privileged(c);
    let caps = if privileged {
        input.host_capabilities.to_vec()
    } else {
        security::capabilities(c)?
    };
    let limits = limits(c)?;

    let mut resources = json!({ "devices": [{ "allow": privileged, "access": "rwm" }] });
    if let Some(mem) = limits.memory_bytes {
        resources["memory"] = json!({ "limit": mem });
    }
    let mut cpu = serde_json::Map::new();
    if let Some(m) = limits.cpu_millis {
        cpu.insert("quota".into(), json!((m * CPU_PERIOD_US / 1000).max(1000)));
        cpu.insert("period".into(), json!(CPU_PERIOD_US));
    }
    if let Some(m) = limits.cpu_request_millis.or(limits.cpu_millis) {
        // The kubelet's conversion: 1024 shares per CPU, at least 2.
        cpu.insert("shares".into(), json!((m * 1024 / 1000).max(2)));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if let Some(limit) = input.pids_limit {
        resources["pids"] = json!({ "limit": limit });
    }

    let ns = |kind: &str, path: &Option<String>| match path {
        Some(p) => json!({ "type": kind, "path": p }),
        None => json!({ "type": kind }),
    };
    let mut namespaces = vec![
        json!({ "type": "pid" }),
        ns("ipc", &input.shared.ipc),
        ns("uts", &input.shared.uts),
        json!({ "type": "mount" }),
    ];
    // A network entry without a path would be a fresh, unconnected namespace.
    if input.shared.net.is_some() {
        namespaces.push(ns("network", &input.shared.net));
    }
    let mut mounts = default_mounts(privileged, input.shared.shm.as_deref());
    mounts.extend(input.mounts.iter().cloned());
    let devices: Vec<Value> = if privileged {
        input
            .host_devices
            .iter()
            .map(security::Device::to_oci)
            .collect()
    } else {
        Vec::new()
    };
    Ok(json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": { "uid": uid, "gid": gid, "additionalGids": additional_gids },
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": { "bounding": caps, "effective": caps, "permitted": caps },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
            "noNewPrivileges": no_new_privileges,
        },
        "root": { "path": "rootfs", "readonly": read_only },
        "hostname": input.hostname,
        "mounts": mounts,
        "linux": {
            "resources": resources,
            "cgroupsPath": format!("/{}/{}", input.namespace, input.container_id),
            // Network: the pod holder's, which is the host's (a simulated host's
            // namespace, or the instance's own network).
            "namespaces": namespaces,
            "devices": devices,
            "maskedPaths": if privileged { json!([]) } else { json!(MASKED_PATHS) },
            "readonlyPaths": if privileged { json!([]) } else { json!(READONLY_PATHS) },
        },
    }))
}

/// Paths hidden from unprivileged containers (containerd's defaults).
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// Paths read-only in unprivileged containers (containerd's defaults).
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The mounts every container gets (containerd's defaults); `/sys` is writable
/// for privileged containers, and `/dev/shm` is the pod's shared one when given.
fn default_mounts(privileged: bool, shm: Option<&str>) -> Vec<Value> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    let shm = match shm {
        Some(dir) => {
            json!({ "destination": "/dev/shm", "type": "bind", "source": dir, "options": ["rbind", "rprivate", "rw"] })
        }
        None => {
            json!({ "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] })
        }
    };
    vec![
        json!({ "destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"] }),
        json!({ "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] }),
        json!({ "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] }),
        shm,
        json!({ "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] }),
        json!({ "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", sys_mode] }),
        json!({ "destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, SecurityContext};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            image: Some("r/busybox:1".into()),
            ..Default::default()
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            env: vec!["PATH=/bin".into(), "A=img".into()],
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
            working_dir: "/work".into(),
            user: String::new(),
        }
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let img = image();
        let mut c = container("c");
        assert_eq!(process_args(&c, &img).unwrap(), ["/entry", "default"]);
        c.args = Some(vec!["x".into()]);
        assert_eq!(process_args(&c, &img).unwrap(), ["/entry", "x"]);
        c.command = Some(vec!["/bin/sh".into()]);
        c.args = None;
        assert_eq!(
            process_args(&c, &img).unwrap(),
            ["/bin/sh"],
            "command drops the image's Cmd"
        );
        c.args = Some(vec!["-c".into(), "echo".into()]);
        assert_eq!(process_args(&c, &img).unwrap(), ["/bin/sh", "-c", "echo"]);
        let empty = ImageConfig::default();
        assert_eq!(
            process_args(&container("e"), &empty),
            Err(SpecError::NothingToRun {
                container: "e".into()
            })
        );
    }

    #[test]
    fn environment_overrides_image_and_expands_references() {
        let mut c = container("c");
        c.env = Some(vec![
            EnvVar {
                name: "A".into(),
                value: Some("pod".into()),
                ..Default::default()
            },
            EnvVar {
                name: "B".into(),
                value: Some("$(A)-$(NOPE)-$$(A)".into()),
                ..Default::default()
            },
        ]);
        let env = environment(&c, &image(), "web");
        assert_eq!(
            env,
            ["PATH=/bin", "A=pod", "HOSTNAME=web", "B=pod-$(NOPE)-$(A)"]
        );
    }

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse_quantity("500m", true), Some(500));
        assert_eq!(parse_quantity("2", true), Some(2000));
        assert_eq!(parse_quantity("0.25", true), Some(250));
        assert_eq!(parse_quantity("128Mi", false), Some(128 * 1024 * 1024));
        assert_eq!(parse_quantity("1G", false), Some(1_000_000_000));
        assert_eq!(parse_quantity("1e3", false), Some(1000));
        assert_eq!(parse_quantity("12 parsecs", false), None);
        assert_eq!(parse_quantity("", false), None);
    }

    #[test]
    fn pull_policy_defaults_like_kubernetes() {
        let mut c = container("c");
        assert_eq!(PullPolicy::of(&c).unwrap(), PullPolicy::IfNotPresent);
        c.image = Some("127.0.0.1:5000/busybox".into());
        assert_eq!(
            PullPolicy::of(&c).unwrap(),
            PullPolicy::Always,
            "a registry port is not a tag"
        );
        c.image = Some("busybox:latest".into());
        assert_eq!(PullPolicy::of(&c).unwrap(), PullPolicy::Always);
        c.image_pull_policy = Some("Sometimes".into());
        assert!(matches!(
            PullPolicy::of(&c),
            Err(SpecError::BadPullPolicy { .. })
        ));
    }

    #[test]
    fn validation_names_the_problem() {
        let mut spec = PodSpec::default();
        assert_eq!(validate(&spec), Err(SpecError::NoContainers));
        spec.containers = vec![container("a"), container("a")];
        assert_eq!(
            validate(&spec),
            Err(SpecError::DuplicateName {
                container: "a".into()
            })
        );
        spec.containers = vec![Container {
            image: None,
            ..container("a")
        }];
        assert_eq!(
            validate(&spec),
            Err(SpecError::NoImage {
                container: "a".into()
            })
        );
        spec.containers = vec![container("Bad_Name")];
        assert!(matches!(validate(&spec), Err(SpecError::BadName { .. })));
        let mut c = container("a");
        c.resources = Some(ResourceRequirements {
            limits: Some([("cpu".to_owned(), Quantity("lots".into()))].into()),
            ..Default::default()
        });
        spec.containers = vec![c];
        assert_eq!(
            validate(&spec),
            Err(SpecError::BadQuantity {
                field: "containers[a].resources.limits.cpu".into(),
                value: "lots".into()
            })
        );
        spec.containers = vec![container("a")];
        spec.restart_policy = Some("Sometimes".into());
        assert!(matches!(
            validate(&spec),
            Err(SpecError::BadRestartPolicy { .. })
        ));
        spec.restart_policy = Some("Never".into());
        assert_eq!(validate(&spec), Ok(()));
    }

    #[test]
    fn runtime_spec_carries_limits_user_and_cgroup() {
        let mut c = container("main");
        c.resources = Some(ResourceRequirements {
            limits: Some(
                [
                    ("cpu".to_owned(), Quantity("500m".into())),
                    ("memory".to_owned(), Quantity("64Mi".into())),
                ]
                .into(),
            ),
            ..Default::default()
        });
        c.security_context = Some(SecurityContext {
            run_as_user: Some(1000),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            ..Default::default()
        });
        let pod = PodSpec {
            containers: vec![c.clone()],
            ..Default::default()
        };
        let img = image();
        let spec = runtime_spec(&SpecInput {
            container: &c,
            pod: &pod,
            image: &img,
            hostname: "web",
            namespace: "orca",
            container_id: "abc-main",
            shared: &PodNamespaces::default(),
            mounts: &[],
            host_devices: &[],
            host_capabilities: &[],
            pids_limit: Some(4096),
        })
        .unwrap();
        assert_eq!(spec["process"]["user"]["uid"], 1000);
        assert_eq!(spec["process"]["cwd"], "/work");
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        assert_eq!(spec["root"]["readonly"], true);
        assert_eq!(
            spec["linux"]["resources"]["memory"]["limit"],
            64 * 1024 * 1024
        );
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(spec["linux"]["resources"]["cpu"]["shares"], 512);
        assert_eq!(spec["linux"]["cgroupsPath"], "/orca/abc-main");
        assert_eq!(spec["linux"]["resources"]["pids"]["limit"], 4096);
        assert_eq!(spec["hostname"], "web");
    }

    #[test]
    fn containers_join_the_pod_holders_namespaces() {
        let c = container("main");
        let pod = PodSpec {
            containers: vec![c.clone()],
            ..Default::default()
        };
        let img = image();
        let shared = PodNamespaces {
            ipc: Some("/proc/42/ns/ipc".into()),
            uts: Some("/proc/42/ns/uts".into()),
            net: Some("/proc/42/ns/net".into()),
            shm: Some("/state/pods/x/shm".into()),
        };
        let spec_with = |shared: &PodNamespaces| {
            runtime_spec(&SpecInput {
                container: &c,
                pod: &pod,
                image: &img,
                hostname: "web",
                namespace: "orca",
                container_id: "abc-main",
                shared,
                mounts: &[],
                host_devices: &[],
                host_capabilities: &[],
                pids_limit: None,
            })
            .unwrap()
        };
        let spec = spec_with(&shared);
        let namespaces = spec["linux"]["namespaces"].as_array().unwrap();
        let path_of = |kind: &str| {
            namespaces
                .iter()
                .find(|n| n["type"] == kind)
                .map(|n| n["path"].clone())
        };
        assert_eq!(path_of("network"), Some(json!("/proc/42/ns/net")));
        assert_eq!(path_of("ipc"), Some(json!("/proc/42/ns/ipc")));
        assert_eq!(path_of("uts"), Some(json!("/proc/42/ns/uts")));
        assert_eq!(
            path_of("pid"),
            Some(Value::Null),
            "a pid namespace of its own"
        );
        // Without a holder, no network entry: a pathless one would be a fresh,
        // unconnected namespace.
        let spec = spec_with(&PodNamespaces::default());
        let namespaces = spec["linux"]["namespaces"].as_array().unwrap();
        assert!(namespaces.iter().all(|n| n["type"] != "network"));
    }

    #[test]
    fn image_config_reads_the_oci_config_object() {
        let raw = br#"{"architecture":"amd64","os":"linux","config":{"User":"nobody:nogroup","Env":["PATH=/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let oci = oci_spec::image::ImageConfiguration::from_reader(&raw[..]).unwrap();
        let cfg = ImageConfig::from_oci(&oci);
        assert_eq!(cfg.cmd, ["/bin/sh"]);
        assert!(cfg.entrypoint.is_empty());
        assert_eq!(cfg.working_dir, "/");
        assert_eq!(cfg.user, "nobody:nogroup", "kept, though not honoured yet");
    }

    #[test]
    fn the_images_user_is_not_honoured_yet() {
        let oci = image();
        let image = ImageConfig {
            user: "1234:1234".into(),
            ..oci
        };
        let c = container("main");
        let pod = PodSpec {
            containers: vec![c.clone()],
            ..Default::default()
        };
        let spec = runtime_spec(&SpecInput {
            container: &c,
            pod: &pod,
            image: &image,
            hostname: "web",
            namespace: "orca",
            container_id: "abc-main",
            shared: &PodNamespaces::default(),
            mounts: &[],
            host_devices: &[],
            host_capabilities: &[],
            pids_limit: None,
        })
        .unwrap();
        assert_eq!(spec["process"]["user"]["uid"], 0);
        assert_eq!(spec["process"]["user"]["gid"], 0);
    }
}
