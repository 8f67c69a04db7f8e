//! The Container Device Interface (CDI): the specs a device vendor writes to
//! `/etc/cdi` and `/var/run/cdi` (`nvidia-ctk cdi generate` for NVIDIA GPUs)
//! and how they edit a container's OCI runtime spec.
//!
//! A spec names a `kind` (`vendor/class`, e.g. `nvidia.com/gpu`), its devices
//! (`0`, `GPU-<uuid>`, MIG `0:1`, `all`), each with its own container edits,
//! and edits shared by every device of the spec. A container asks for devices
//! by their qualified name, `nvidia.com/gpu=0`.
//!
//! Design: [`Registry::load`] reads and validates every spec once, so a bad
//! file is reported naming the file. [`Registry::apply`] follows the reference
//! implementation (`tags.cncf.io/container-device-interface`,
//! `pkg/cdi/container-edits.go`): env entries replace the same key; device
//! nodes take missing type and numbers from the host node and get a cgroup
//! allow rule (an identical rule once); mounts replace the same destination
//! and are then sorted by depth (stable); hooks are appended; additional GIDs
//! are added once. It edits a copy and writes it back only when every edit
//! succeeded. Where this differs from the reference: a hook path must be
//! absolute (the spec's MUST), `permissions: none` adds no cgroup rule rather
//! than one with empty access, and a `u` node is a `c` to the cgroup.
//!
//! Limitations: `intelRdt` and `netDevices` are parsed but applying them is an
//! error, as are CDI mounts in a container with a user namespace (where the
//! reference adds idmapped mounts). Specs are read once; there is no watch.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

/// The `cdiVersion`s read (a leading `v` is allowed, as by the reference).
const VERSIONS: &[&str] = &["0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0"];
/// The OCI hook lists a CDI hook may name.
const HOOK_NAMES: &str = "prestart createRuntime createContainer startContainer poststart poststop";

/// Errors, naming the file / device at fault.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    /// A spec directory or file could not be read.
    #[error("reading {}", path.display())]
    Read {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A spec file is malformed, breaks a CDI rule or redefines a device of
    /// another file in its directory.
    #[error("CDI spec {}: {problem}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Devices asked for that no spec defines.
    #[error("unknown CDI device {} (searched {})", .devices.join(", "), display_dirs(.dirs))]
    UnknownDevice {
        /// The unknown qualified names.
        devices: Vec<String>,
        /// The directories searched.
        dirs: Vec<PathBuf>,
    },
    /// A device's edits cannot be applied: a host device node is missing or
    /// is not a device node, or an edit is not supported by this agent.
    #[error("CDI device {device}: {problem}")]
    Device {
        /// The qualified device name (or the spec, for spec-level edits).
        device: String,
        /// What is wrong.
        problem: String,
    },
    /// The OCI spec being edited has an unexpected shape.
    #[error("OCI spec: {0}")]
    OciSpec(String),
}

fn display_dirs(dirs: &[PathBuf]) -> String {
    let dirs: Vec<_> = dirs.iter().map(|d| d.display().to_string()).collect();
    if dirs.is_empty() {
        "no directories".into()
    } else {
        dirs.join(", ")
    }
}

/// One spec file (CDI JSON; YAML is read into the same shape).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSpec {
    cdi_version: String,
    kind: String,
    /// Metadata for the producer's tools; nothing to apply.
    #[serde(rename = "annotations")]
    _annotations: Option<IgnoredAny>,
    devices: Vec<RawDevice>,
    #[serde(default)]
    container_edits: Edits,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDevice {
    name: String,
    #[serde(rename = "annotations")]
    _annotations: Option<IgnoredAny>,
    #[serde(default)]
    container_edits: Edits,
}

/// `intelRdt` and `netDevices` are parsed only to be refused when applied.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct Edits {
    env: Vec<String>,
    device_nodes: Vec<DeviceNode>,
    hooks: Vec<Hook>,
    mounts: Vec<Mount>,
    additional_gids: Vec<u32>,
    intel_rdt: Option<IgnoredAny>,
    net_devices: Vec<IgnoredAny>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DeviceNode {
    path: String,
    host_path: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    major: Option<i64>,
    minor: Option<i64>,
    file_mode: Option<u32>,
    permissions: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Mount {
    host_path: String,
    container_path: String,
    #[serde(default)]
    options: Vec<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Hook {
    hook_name: String,
    path: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    timeout: Option<i64>,
}

/// All CDI specs found in some directories.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    dirs: Vec<PathBuf>,
    /// Each spec with the file it came from.
    specs: Vec<(PathBuf, RawSpec)>,
    /// Qualified name → (index in `specs`, index in its `devices`).
    devices: BTreeMap<String, (usize, usize)>,
}

impl Registry {
    /// Loads every `*.json`, `*.yaml`, `*.yml` spec in `dirs`, in order; a
    /// missing directory is not an error (empty). A later directory's device
    /// of the same qualified name overrides an earlier one's (CDI:
    /// `/var/run/cdi` has priority over `/etc/cdi`, so callers pass
    /// `["/etc/cdi", "/var/run/cdi"]`). Two files of one directory defining the
    /// same device is an error, as is a malformed file (naming the file and
    /// what is wrong).
    pub fn load(dirs: &[PathBuf]) -> Result<Self, CdiError> {
        let mut registry = Registry {
            dirs: dirs.to_vec(),
            ..Registry::default()
        };
        for dir in dirs {
            let read_err = |source| CdiError::Read {
                path: dir.clone(),
                source,
            };
            let mut files = match std::fs::read_dir(dir) {
                Ok(entries) => entries
                    .map(|e| e.map(|e| e.path()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(read_err)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(read_err(e)),
            };
            files.retain(|p| {
                let ext = p.extension().and_then(|e| e.to_str());
                matches!(ext, Some("json" | "yaml" | "yml")) && p.is_file()
            });
            files.sort();
            let mut in_dir: BTreeMap<String, PathBuf> = BTreeMap::new();
            for path in files {
                let raw = read_spec(&path)?;
                for (d, device) in raw.devices.iter().enumerate() {
                    let qualified = format!("{}={}", raw.kind, device.name);
                    if let Some(first) = in_dir.insert(qualified.clone(), path.clone()) {
                        let problem =
                            format!("device {qualified} is also defined in {}", first.display());
                        return Err(CdiError::Invalid { path, problem });
                    }
                    registry
                        .devices
                        .insert(qualified, (registry.specs.len(), d));
                }
                registry.specs.push((path, raw));
            }
        }
        Ok(registry)
    }

    /// Whether a fully qualified device name (`nvidia.com/gpu=0`,
    /// `nvidia.com/gpu=GPU-1234...`) is known.
    pub fn has(&self, qualified: &str) -> bool {
        self.devices.contains_key(qualified)
    }

    /// The qualified names of every known device, sorted.
    pub fn devices(&self) -> impl Iterator<Item = &str> {
        self.devices.keys().map(String::as_str)
    }

    /// Applies the container edits of the named devices to an OCI runtime spec
    /// (`process.env`, `process.user.additionalGids`, `mounts`, `linux.devices`,
    /// `linux.resources.devices`, `hooks`; missing ones are created). The
    /// spec-level edits of every spec that contributes a device are applied
    /// once, before its first device's own edits; devices are taken in the
    /// order given, a repeated one once. On error `spec` is left unchanged.
    pub fn apply(&self, spec: &mut Value, devices: &[String]) -> Result<(), CdiError> {
        let mut asked = BTreeSet::new();
        let wanted: Vec<&String> = devices.iter().filter(|d| asked.insert(*d)).collect();
        let unknown: Vec<String> = wanted
            .iter()
            .filter(|d| !self.has(d))
            .map(|d| d.to_string())
            .collect();
        if !unknown.is_empty() {
            return Err(CdiError::UnknownDevice {
                devices: unknown,
                dirs: self.dirs.clone(),
            });
        }
        let mut edited = spec.clone();
        let mut specs_done = BTreeSet::new();
        for name in wanted {
            let (s, d) = self.devices[name];
            let (path, raw) = &self.specs[s];
            if specs_done.insert(s) {
                let origin = format!("{} (spec-level edits of {})", raw.kind, path.display());
                apply_edits(&mut edited, &raw.container_edits, &origin)?;
            }
            apply_edits(&mut edited, &raw.devices[d].container_edits, name)?;
        }
        *spec = edited;
        Ok(())
    }

    /// Directories searched (for error messages).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

/// Reads, parses and validates one spec file.
fn read_spec(path: &Path) -> Result<RawSpec, CdiError> {
    let text = std::fs::read_to_string(path).map_err(|source| CdiError::Read {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |problem| CdiError::Invalid {
        path: path.to_owned(),
        problem,
    };
    let raw: RawSpec = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?
    } else {
        serde_yaml::from_str(&text).map_err(|e| invalid(e.to_string()))?
    };
    validate(&raw).map_err(invalid)?;
    Ok(raw)
}

/// The CDI rules a spec must follow (the reference's `Spec.validate`).
fn validate(raw: &RawSpec) -> Result<(), String> {
    if !VERSIONS.contains(&raw.cdi_version.trim_start_matches('v')) {
        let v = &raw.cdi_version;
        return Err(format!(
            "unsupported cdiVersion {v:?} (reads 0.3.0 to 0.8.0)"
        ));
    }
    let Some((vendor, class)) = raw.kind.split_once('/') else {
        return Err(format!("kind {:?} is not vendor/class", raw.kind));
    };
    check_name(vendor, false).map_err(|p| format!("kind {:?}: vendor {p}", raw.kind))?;
    check_name(class, false).map_err(|p| format!("kind {:?}: class {p}", raw.kind))?;
    validate_edits(&raw.container_edits).map_err(|p| format!("containerEdits: {p}"))?;
    if raw.devices.is_empty() {
        return Err("no devices".into());
    }
    let mut names = BTreeSet::new();
    for (i, device) in raw.devices.iter().enumerate() {
        check_name(&device.name, true).map_err(|p| format!("devices[{i}]: name {p}"))?;
        let problem = if !names.insert(&device.name) {
            Some("is defined twice".to_owned())
        } else if device.container_edits == Edits::default() {
            Some("has no containerEdits".to_owned())
        } else {
            validate_edits(&device.container_edits).err()
        };
        if let Some(problem) = problem {
            return Err(format!("device {:?}: {problem}", device.name));
        }
    }
    Ok(())
}

/// A vendor or class (`device` false: starts with a letter; letters, digits,
/// `_-.`; ends with a letter or digit) or a device name (`device` true: may
/// also start with a digit and hold `:`).
fn check_name(name: &str, device: bool) -> Result<(), String> {
    let first = name.chars().next().ok_or("is empty")?;
    let first_ok = first.is_ascii_alphabetic() || (device && first.is_ascii_digit());
    if !first_ok || !name.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        let start = if device {
            "a letter or digit"
        } else {
            "a letter"
        };
        return Err(format!(
            "{name:?} must start with {start} and end with a letter or digit"
        ));
    }
    let bad = |c: char| !(c.is_ascii_alphanumeric() || "_-.".contains(c) || (device && c == ':'));
    match name.chars().find(|&c| bad(c)) {
        Some(c) => Err(format!("{name:?} holds {c:?}")),
        None => Ok(()),
    }
}

/// Env entries are `KEY=VALUE` with a key.
fn check_env(env: &[String]) -> Result<(), String> {
    match env.iter().find(|kv| kv.find('=').is_none_or(|i| i == 0)) {
        Some(kv) => Err(format!("env entry {kv:?} is not KEY=VALUE")),
        None => Ok(()),
    }
}

/// The reference's `ContainerEdits.Validate`.
fn validate_edits(e: &Edits) -> Result<(), String> {
    check_env(&e.env)?;
    for n in &e.device_nodes {
        let (path, kind) = (&n.path, n.kind.as_deref().unwrap_or(""));
        let perms = n.permissions.as_deref().unwrap_or("");
        if path.is_empty() {
            return Err("a device node has no path".into());
        } else if !["", "b", "c", "u", "p"].contains(&kind) {
            return Err(format!(
                "device node {path}: type {kind:?} is not b, c, u or p"
            ));
        } else if n.major.is_some_and(|m| m < 0) || n.minor.is_some_and(|m| m < 0) {
            return Err(format!("device node {path}: negative device number"));
        } else if perms != "none" && !perms.chars().all(|c| "rwm".contains(c)) {
            return Err(format!(
                "device node {path}: permissions {perms:?} are not r, w, m or none"
            ));
        }
    }
    for h in &e.hooks {
        let (name, path) = (&h.hook_name, &h.path);
        if !HOOK_NAMES.split(' ').any(|n| n == name) {
            return Err(format!("hook name {name:?} is not one of {HOOK_NAMES}"));
        } else if !path.starts_with('/') {
            return Err(format!("{name} hook path {path:?} is not absolute"));
        } else if h.timeout.is_some_and(|t| t <= 0) {
            return Err(format!("{name} hook {path}: timeout is not positive"));
        }
        check_env(&h.env).map_err(|p| format!("{name} hook {path}: {p}"))?;
    }
    if e.mounts
        .iter()
        .any(|m| m.host_path.is_empty() || m.container_path.is_empty())
    {
        return Err("a mount lacks hostPath or containerPath".into());
    }
    Ok(())
}

/// Applies one set of edits; `origin` names the device (or spec) for errors.
fn apply_edits(spec: &mut Value, e: &Edits, origin: &str) -> Result<(), CdiError> {
    let fail = |problem| CdiError::Device {
        device: origin.to_owned(),
        problem,
    };
    let namespaces = spec.pointer("/linux/namespaces").and_then(Value::as_array);
    let user_ns = namespaces.is_some_and(|ns| ns.iter().any(|n| n["type"] == "user"));
    let unsupported = [
        (e.intel_rdt.is_some(), "intelRdt"),
        (!e.net_devices.is_empty(), "netDevices"),
        (user_ns && !e.mounts.is_empty(), "a user-namespace mount"),
    ];
    if let Some((_, what)) = unsupported.iter().find(|(used, _)| *used) {
        return Err(fail(format!("{what} is not supported by this agent")));
    }

    let env = array_at(spec, &["process", "env"])?;
    for kv in &e.env {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        let same_key = |v: &&mut Value| {
            let entry = v.as_str().and_then(|s| s.split_once('='));
            entry.is_some_and(|(k, _)| k == key)
        };
        match env.iter_mut().find(same_key) {
            Some(slot) => *slot = json!(kv),
            None => env.push(json!(kv)),
        }
    }

    // As the reference: a node without uid/gid gets the process's, unless root.
    let user = &spec["process"]["user"];
    let uid = user["uid"].as_u64().filter(|&id| id > 0);
    let gid = user["gid"].as_u64().filter(|&id| id > 0);
    for node in &e.device_nodes {
        let (kind, major, minor) = resolve_node(node).map_err(fail)?;
        let entry = object([
            ("path", Some(json!(node.path))),
            ("type", Some(json!(kind))),
            ("major", Some(json!(major))),
            ("minor", Some(json!(minor))),
            ("fileMode", node.file_mode.map(Value::from)),
            ("uid", node.uid.map(u64::from).or(uid).map(Value::from)),
            ("gid", node.gid.map(u64::from).or(gid).map(Value::from)),
        ]);
        let linux_devices = array_at(spec, &["linux", "devices"])?;
        linux_devices.retain(|d| d["path"] != node.path.as_str());
        linux_devices.push(entry);
        // "none" grants no access, so no rule; to the cgroup a `u` (unbuffered)
        // node is a character device.
        let access = match node.permissions.as_deref() {
            None | Some("") => Some("rwm"),
            Some("none") => None,
            Some(p) => Some(p),
        };
        let cgroup_type = match kind.as_str() {
            "b" => Some("b"),
            "c" | "u" => Some("c"),
            _ => None,
        };
        if let (Some(access), Some(kind)) = (access, cgroup_type) {
            let rule = json!({
                "allow": true, "type": kind, "major": major, "minor": minor, "access": access,
            });
            let rules = array_at(spec, &["linux", "resources", "devices"])?;
            if !rules.contains(&rule) {
                rules.push(rule);
            }
        }
    }

    if !e.mounts.is_empty() {
        let mounts = array_at(spec, &["mounts"])?;
        for m in &e.mounts {
            mounts.retain(|x| x["destination"] != m.container_path.as_str());
            let kind = m.kind.as_deref().filter(|t| !t.is_empty());
            mounts.push(object([
                ("source", Some(json!(m.host_path))),
                ("destination", Some(json!(m.container_path))),
                ("options", (!m.options.is_empty()).then(|| json!(m.options))),
                ("type", kind.map(Value::from)),
            ]));
        }
        // Stable: parents before children, otherwise in the order given.
        mounts.sort_by_key(|m| depth(m["destination"].as_str().unwrap_or("")));
    }

    for h in &e.hooks {
        array_at(spec, &["hooks", &h.hook_name])?.push(object([
            ("path", Some(json!(h.path))),
            ("args", (!h.args.is_empty()).then(|| json!(h.args))),
            ("env", (!h.env.is_empty()).then(|| json!(h.env))),
            ("timeout", h.timeout.map(Value::from)),
        ]));
    }

    if e.additional_gids.iter().any(|&g| g != 0) {
        let gids = array_at(spec, &["process", "user", "additionalGids"])?;
        for &gid in e.additional_gids.iter().filter(|&&g| g != 0) {
            if !gids.iter().any(|v| v.as_u64() == Some(u64::from(gid))) {
                gids.push(json!(gid));
            }
        }
    }
    Ok(())
}

/// A JSON object of the fields that are given.
fn object<const N: usize>(fields: [(&str, Option<Value>); N]) -> Value {
    let fields = fields
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), v?)));
    Value::Object(fields.collect())
}

/// A device node's type, major and minor: as written when the spec gives a
/// type and a major (or says `p`), else from the host node, not following a
/// symbolic link (as the reference).
fn resolve_node(node: &DeviceNode) -> Result<(String, i64, i64), String> {
    let kind = node.kind.as_deref().unwrap_or("");
    let (major, minor) = (node.major.unwrap_or(0), node.minor.unwrap_or(0));
    if !kind.is_empty() && (major != 0 || kind == "p") {
        return Ok((kind.to_owned(), major, minor));
    }
    let host = match node.host_path.as_deref() {
        Some(host) if !host.is_empty() => host,
        _ => &node.path,
    };
    let meta = std::fs::symlink_metadata(host).map_err(|e| format!("host device {host}: {e}"))?;
    let found = match meta.file_type() {
        t if t.is_block_device() => "b",
        t if t.is_char_device() => "c",
        t if t.is_fifo() => "p",
        _ => return Err(format!("host device {host}: not a device node")),
    };
    if !kind.is_empty() && kind != found && !(kind == "u" && found == "c") {
        return Err(format!(
            "host device {host}: the spec says type {kind} but it is {found}"
        ));
    }
    let kind = if kind.is_empty() { found } else { kind };
    if major != 0 || kind == "p" {
        return Ok((kind.to_owned(), major, minor));
    }
    let rdev = meta.rdev();
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    Ok((kind.to_owned(), major as i64, minor as i64))
}

/// How deep a mount destination is: its components, `/` counting as one (the
/// reference sorts by the `/`s of the cleaned path; destinations are absolute).
fn depth(path: &str) -> usize {
    let components = path.split('/').filter(|c| !c.is_empty() && *c != ".");
    components.count().max(1)
}

/// The array at `path` in the OCI spec, created (with the objects above it)
/// where missing or null.
fn array_at<'a>(spec: &'a mut Value, path: &[&str]) -> Result<&'a mut Vec<Value>, CdiError> {
    let wrong = || CdiError::OciSpec(format!("{} is not an array in objects", path.join(".")));
    let mut cur = spec;
    for key in path {
        if cur.is_null() {
            *cur = json!({});
        }
        let object = cur.as_object_mut().ok_or_else(wrong)?;
        cur = object.entry(*key).or_insert(Value::Null);
    }
    if cur.is_null() {
        *cur = json!([]);
    }
    cur.as_array_mut().ok_or_else(wrong)
}

#[cfg(test)]
mod tests;
