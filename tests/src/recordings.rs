//! What the control plane asked of Kubernetes and of EC2 over a whole test run,
//! recorded to disk, and the exact comparison of it with the rights the
//! deployment grants: the ClusterRole of `deploy/kubernetes/rbac.yaml` and the
//! IAM policy `deploy/kubernetes/iam-policy.json`.
//!
//! # Recording
//!
//! The Kubernetes API emulator ([`crate::env::KubeApi`]), when dropped, and the
//! EC2 proxy ([`crate::env::Ec2Proxy`]), as calls arrive, append JSON lines to
//! a file of their own under [`dir`]: `kube-requests/` holds
//! [`KubeRequestLine`]s (the requests bearing the control plane's token),
//! `ec2-calls/` holds [`Ec2CallLine`]s (the calls not signed by the test
//! harness's own key, [`crate::env::HARNESS_ACCESS_KEY`]). Files are named
//! `<pid>-<n>.jsonl`, one per emulator or proxy, so parallel tests never share
//! one. `tests/run.sh` empties the directory before the run.
//!
//! # Checking
//!
//! `check-recordings` ([`check`]) reads every file and compares sets, both ways:
//! the (API group, resource[/subresource], verb) triples the ClusterRole's rules
//! expand to (the cross product of each rule's lists) with those requested, and
//! the actions the policy allows with those called. A right no request used is
//! as much a finding as a request no right covers: the manifests say exactly
//! what the code does. The comparison only means something after a full run.
//!
//! The proxy also passes the control plane's IAM calls (the same query
//! protocol, on moto's same port); each line names the service its signature
//! was for, so `GetInstanceProfile` is `iam:GetInstanceProfile`.
//!
//! Some rights are not calls: EC2 authorises the tags of `RunInstances`'
//! `TagSpecification` as `ec2:CreateTags` (tag on create), and the role of an
//! instance profile a `RunInstances` names as `iam:PassRole`. [`iam_actions`]
//! derives those from the recorded parameters, documented there.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

/// Environment variable naming the recordings directory (default [`dir`]'s).
pub const DIR_ENV: &str = "ORCA_RECORDINGS_DIR";
/// Subdirectory of the Kubernetes API requests.
pub const KUBE_REQUESTS: &str = "kube-requests";
/// Subdirectory of the EC2 calls.
pub const EC2_CALLS: &str = "ec2-calls";

/// The recordings directory: `$ORCA_RECORDINGS_DIR`, else
/// `<repo>/target/orca-recordings`.
pub fn dir() -> PathBuf {
    match std::env::var_os(DIR_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => crate::env::repo_root()
            .join("target")
            .join("orca-recordings"),
    }
}

/// Which test made a recording: nextest's binary id and test name where it
/// runs the test, else the executable's name and the thread's.
pub fn source() -> String {
    let binary = std::env::var("NEXTEST_BINARY_ID").unwrap_or_else(|_| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_default()
    });
    let test = std::env::var("NEXTEST_TEST_NAME")
        .ok()
        .or_else(|| std::thread::current().name().map(str::to_owned))
        .unwrap_or_default();
    format!("{binary} {test}").trim().to_owned()
}

/// One recordings file, `<dir>/<kind>/<pid>-<n>.jsonl`, created on the first
/// append.
#[derive(Debug, Clone)]
pub struct Recorder {
    path: PathBuf,
}

impl Recorder {
    /// A new file of `kind` ([`KUBE_REQUESTS`] or [`EC2_CALLS`]) under [`dir`].
    pub fn new(kind: &str) -> Self {
        Self::in_dir(&dir(), kind)
    }

    /// A new file of `kind` under `dir`.
    pub fn in_dir(dir: &Path, kind: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Self {
            path: dir
                .join(kind)
                .join(format!("{}-{n}.jsonl", std::process::id())),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `lines` as JSON lines, in one write.
    pub fn append<T: Serialize>(&self, lines: &[T]) -> std::io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for line in lines {
            text.push_str(&serde_json::to_string(line).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?
            .write_all(text.as_bytes())
    }
}

/// One recorded Kubernetes API request of the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeRequestLine {
    /// The test it came from ([`source`]).
    pub source: String,
    /// The verb as RBAC names it.
    pub verb: String,
    /// API group (`""` for core); `None` for a non-resource path.
    pub api_group: Option<String>,
    /// Resource; `None` for a non-resource path.
    pub resource: Option<String>,
    /// Subresource.
    pub subresource: Option<String>,
    /// The URL path, kept for non-resource requests (RBAC's `nonResourceURLs`).
    #[serde(default)]
    pub path: Option<String>,
}

/// One recorded EC2 (or IAM) call of the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ec2CallLine {
    /// The test it came from ([`source`]).
    pub source: String,
    /// The service the call was signed for: `ec2` or `iam` (`ec2` in lines
    /// written before the field was).
    #[serde(default = "ec2_service")]
    pub service: String,
    /// The query API's `Action`, e.g. `RunInstances`.
    pub action: String,
    /// The top-level parameter names (before the first `.`), e.g.
    /// `TagSpecification` for `TagSpecification.1.ResourceType`.
    pub params: BTreeSet<String>,
}

fn ec2_service() -> String {
    "ec2".to_owned()
}

impl Ec2CallLine {
    /// A line for a call to `service` with form parameters `params` (the
    /// `Action` among them).
    pub fn of<'a>(
        source: String,
        service: &str,
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let mut action = String::new();
        let mut names = BTreeSet::new();
        for (k, v) in params {
            if k == "Action" {
                action = v.to_owned();
            } else if k != "Version" {
                names.insert(k.split('.').next().unwrap_or(k).to_owned());
            }
        }
        Self {
            source,
            service: service.to_owned(),
            action,
            params: names,
        }
    }
}

/// One right an RBAC rule grants, or a request needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// A resource request.
    Resource {
        /// API group, `""` for core.
        group: String,
        /// `pods` or `pods/status`.
        resource: String,
        /// RBAC verb.
        verb: String,
    },
    /// A non-resource URL (discovery, `/version`).
    NonResource {
        /// The path.
        url: String,
        /// The lower-case HTTP method.
        verb: String,
    },
}

impl fmt::Display for Access {
    /// As `kubectl auth can-i` spells it: `patch pods/status`,
    /// `create leases.coordination.k8s.io`, `get /version`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Resource {
                group,
                resource,
                verb,
            } if group.is_empty() => write!(f, "{verb} {resource}"),
            Self::Resource {
                group,
                resource,
                verb,
            } => match resource.split_once('/') {
                Some((r, sub)) => write!(f, "{verb} {r}.{group}/{sub}"),
                None => write!(f, "{verb} {resource}.{group}"),
            },
            Self::NonResource { url, verb } => write!(f, "{verb} {url}"),
        }
    }
}

impl KubeRequestLine {
    /// The right this request needs.
    pub fn access(&self) -> Access {
        match (&self.api_group, &self.resource) {
            (Some(group), Some(resource)) => Access::Resource {
                group: group.clone(),
                resource: match &self.subresource {
                    Some(sub) => format!("{resource}/{sub}"),
                    None => resource.clone(),
                },
                verb: self.verb.clone(),
            },
            _ => Access::NonResource {
                url: self.path.clone().unwrap_or_default(),
                verb: self.verb.clone(),
            },
        }
    }
}

/// The IAM actions one call needs: `<service>:<Action>`; for a `RunInstances`
/// `CreateFleet` or `CreateVolume` with `TagSpecification`, `ec2:CreateTags` (EC2 authorises
/// tags applied on create as that action, with `ec2:CreateAction` naming the
/// call); and for a `RunInstances` with `IamInstanceProfile`, `iam:PassRole`
/// (EC2 checks that the caller may pass the profile's role to
/// `ec2.amazonaws.com`; moto checks no permission, so this is from the AWS
/// documentation, "Using an IAM role to grant permissions to applications
/// running on Amazon EC2 instances").
pub fn iam_actions(call: &Ec2CallLine) -> Vec<String> {
    let mut actions = vec![format!("{}:{}", call.service, call.action)];
    let ec2 = call.service == "ec2";
    let tags_on_create = matches!(
        call.action.as_str(),
        "RunInstances" | "CreateFleet" | "CreateVolume"
    );
    if ec2 && tags_on_create && call.params.contains("TagSpecification") {
        actions.push("ec2:CreateTags".to_owned());
    }
    if ec2 && call.action == "RunInstances" && call.params.contains("IamInstanceProfile") {
        actions.push("iam:PassRole".to_owned());
    }
    actions
}

/// Why recordings or manifests could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordingsError {
    /// A file or directory could not be read.
    #[error("cannot read {path}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A recording line is not what the recorders write.
    #[error("{path}:{line}: not a recording: {message}")]
    Line {
        /// File.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// serde's message.
        message: String,
    },
    /// A manifest does not parse or lacks what the check needs.
    #[error("{what}: {message}")]
    Manifest {
        /// Which manifest.
        what: String,
        /// What is wrong.
        message: String,
    },
}

fn read_lines<T: serde::de::DeserializeOwned>(
    dir: &Path,
) -> Result<(Vec<T>, usize), RecordingsError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| RecordingsError::Read { path, source }
    };
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(read_err(dir))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(read_err(dir)(e)),
    };
    files.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
    files.sort();
    let mut out = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).map_err(read_err(path))?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            out.push(
                serde_json::from_str(line).map_err(|e| RecordingsError::Line {
                    path: path.clone(),
                    line: i + 1,
                    message: e.to_string(),
                })?,
            );
        }
    }
    Ok((out, files.len()))
}

/// Everything recorded under a recordings directory.
#[derive(Debug, Default)]
pub struct Recordings {
    /// Each right the control plane's Kubernetes requests needed, with the tests
    /// that needed it.
    pub kube: BTreeMap<Access, BTreeSet<String>>,
    /// Each IAM action the control plane's EC2 calls needed, with the tests.
    pub ec2: BTreeMap<String, BTreeSet<String>>,
    /// Files read: Kubernetes, EC2.
    pub files: (usize, usize),
    /// Lines read: Kubernetes, EC2.
    pub lines: (usize, usize),
}

impl Recordings {
    /// Reads `<dir>/kube-requests/*.jsonl` and `<dir>/ec2-calls/*.jsonl`.
    pub fn read(dir: &Path) -> Result<Self, RecordingsError> {
        let (kube, kube_files) = read_lines::<KubeRequestLine>(&dir.join(KUBE_REQUESTS))?;
        let (ec2, ec2_files) = read_lines::<Ec2CallLine>(&dir.join(EC2_CALLS))?;
        let mut this = Self {
            files: (kube_files, ec2_files),
            lines: (kube.len(), ec2.len()),
            ..Self::default()
        };
        for r in kube {
            this.kube.entry(r.access()).or_default().insert(r.source);
        }
        for c in ec2 {
            for action in iam_actions(&c) {
                this.ec2.entry(action).or_default().insert(c.source.clone());
            }
        }
        Ok(this)
    }
}

/// One RBAC policy rule, as the check reads it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
}

/// The rights the one ClusterRole in `yaml` (a multi-document manifest)
/// grants, each rule expanded to the cross product of its lists; and the
/// role's name.
pub fn cluster_role_grants(yaml: &str) -> Result<(String, BTreeSet<Access>), RecordingsError> {
    let bad = |message: String| RecordingsError::Manifest {
        what: "the ClusterRole".to_owned(),
        message,
    };
    let mut roles = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = serde_yaml::Value::deserialize(doc).map_err(|e| bad(e.to_string()))?;
        if v["kind"] == "ClusterRole" {
            roles.push(v);
        }
    }
    let [role] = roles.as_slice() else {
        return Err(bad(format!(
            "expected one ClusterRole, found {}",
            roles.len()
        )));
    };
    let name = role["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let rules: Vec<Rule> =
        serde_yaml::from_value(role["rules"].clone()).map_err(|e| bad(e.to_string()))?;
    let mut grants = BTreeSet::new();
    for rule in rules {
        for verb in &rule.verbs {
            for group in &rule.api_groups {
                for resource in &rule.resources {
                    grants.insert(Access::Resource {
                        group: group.clone(),
                        resource: resource.clone(),
                        verb: verb.clone(),
                    });
                }
            }
            for url in &rule.non_resource_urls {
                grants.insert(Access::NonResource {
                    url: url.clone(),
                    verb: verb.clone(),
                });
            }
        }
    }
    Ok((name, grants))
}

/// An IAM policy document, as AWS reads it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Policy {
    /// The policy language version; `2012-10-17`.
    pub version: String,
    /// The statements.
    pub statement: Vec<Statement>,
}

/// One or several strings, as IAM allows for `Action` and `Resource`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMore {
    /// A single string.
    One(String),
    /// A list.
    More(Vec<String>),
}

impl OneOrMore {
    /// The strings.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.clone()],
            Self::More(v) => v.clone(),
        }
    }
}

/// One statement of a [`Policy`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Statement {
    /// Statement id.
    pub sid: Option<String>,
    /// `Allow` or `Deny`.
    pub effect: String,
    /// Actions, `service:Name`.
    pub action: OneOrMore,
    /// Resources: `*` or ARNs.
    pub resource: OneOrMore,
    /// Condition operator → key → value(s).
    #[serde(default)]
    pub condition: BTreeMap<String, BTreeMap<String, OneOrMore>>,
}

/// The condition operators this repository's policy may use (a typo would be a
/// policy AWS rejects).
const CONDITION_OPERATORS: &[&str] = &[
    "StringEquals",
    "StringNotEquals",
    "StringLike",
    "StringNotLike",
    "ArnEquals",
    "ArnLike",
    "Bool",
    "NumericEquals",
    "NumericLessThanEquals",
    "ForAllValues:StringEquals",
    "ForAnyValue:StringEquals",
    "Null",
];

/// Parses an IAM policy and checks every statement is well-formed: version
/// `2012-10-17`; unique alphanumeric Sids; `Allow` or `Deny`; actions
/// `service:Action` without wildcards (the check compares them exactly);
/// resources `*` or `arn:` ARNs; known condition operators, non-empty values.
pub fn parse_policy(json: &str) -> Result<Policy, RecordingsError> {
    let bad = |message: String| RecordingsError::Manifest {
        what: "the IAM policy".to_owned(),
        message,
    };
    let policy: Policy = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    if policy.version != "2012-10-17" {
        return Err(bad(format!("Version {:?}: use 2012-10-17", policy.version)));
    }
    if policy.statement.is_empty() {
        return Err(bad("no statements".to_owned()));
    }
    let mut sids = BTreeSet::new();
    for (i, s) in policy.statement.iter().enumerate() {
        let at = format!("statement {i} ({})", s.sid.as_deref().unwrap_or("no Sid"));
        if let Some(sid) = &s.sid
            && (sid.is_empty()
                || !sid.chars().all(|c| c.is_ascii_alphanumeric())
                || !sids.insert(sid.clone()))
        {
            return Err(bad(format!("{at}: Sid must be unique and alphanumeric")));
        }
        if !matches!(s.effect.as_str(), "Allow" | "Deny") {
            return Err(bad(format!("{at}: Effect {:?}", s.effect)));
        }
        let actions = s.action.to_vec();
        let action_ok = |a: &String| {
            a.split_once(':').is_some_and(|(svc, name)| {
                !svc.is_empty()
                    && svc
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && name.starts_with(|c: char| c.is_ascii_uppercase())
                    && name.chars().all(|c| c.is_ascii_alphanumeric())
            })
        };
        if actions.is_empty() || !actions.iter().all(action_ok) {
            return Err(bad(format!("{at}: Action {actions:?}")));
        }
        let resources = s.resource.to_vec();
        let arn_ok = |r: &String| r == "*" || (r.starts_with("arn:") && r.split(':').count() >= 6);
        if resources.is_empty() || !resources.iter().all(arn_ok) {
            return Err(bad(format!("{at}: Resource {resources:?}")));
        }
        for (op, keys) in &s.condition {
            if !CONDITION_OPERATORS.contains(&op.as_str()) || keys.is_empty() {
                return Err(bad(format!("{at}: Condition operator {op:?}")));
            }
            if let Some((key, _)) = keys.iter().find(|(k, v)| {
                !k.contains(':') || v.to_vec().is_empty() || v.to_vec().iter().any(String::is_empty)
            }) {
                return Err(bad(format!("{at}: Condition {op} {key:?}")));
            }
        }
    }
    Ok(policy)
}

/// The actions a policy's `Allow` statements grant.
pub fn allowed_actions(policy: &Policy) -> BTreeSet<String> {
    policy
        .statement
        .iter()
        .filter(|s| s.effect == "Allow")
        .flat_map(|s| s.action.to_vec())
        .collect()
}

/// Where the granted and the used sets differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference<T: Ord> {
    /// Granted, never used by any test.
    pub unused: BTreeSet<T>,
    /// Used, not granted: with the tests that used it.
    pub ungranted: BTreeMap<T, BTreeSet<String>>,
}

impl<T: Ord> Difference<T> {
    /// Whether the sets are equal.
    pub fn is_empty(&self) -> bool {
        self.unused.is_empty() && self.ungranted.is_empty()
    }
}

impl<T: Ord + Clone> Difference<T> {
    /// Compares `granted` with `used` (right → tests).
    pub fn of(granted: &BTreeSet<T>, used: &BTreeMap<T, BTreeSet<String>>) -> Self {
        Self {
            unused: granted
                .iter()
                .filter(|g| !used.contains_key(g))
                .cloned()
                .collect(),
            ungranted: used
                .iter()
                .filter(|(u, _)| !granted.contains(u))
                .map(|(u, s)| (u.clone(), s.clone()))
                .collect(),
        }
    }
}

/// The outcome of [`check`].
#[derive(Debug)]
pub struct Report {
    /// The ClusterRole's name.
    pub role: String,
    /// Rights the ClusterRole grants.
    pub role_grants: usize,
    /// ClusterRole vs Kubernetes requests.
    pub kube: Difference<Access>,
    /// Actions the IAM policy allows.
    pub policy_actions: usize,
    /// IAM policy vs EC2 calls.
    pub ec2: Difference<String>,
    /// What was read.
    pub recordings: Recordings,
}

impl Report {
    /// Whether both comparisons found the sets equal.
    pub fn is_exact(&self) -> bool {
        self.kube.is_empty() && self.ec2.is_empty()
    }
}

fn write_difference<T: Ord + fmt::Display>(
    f: &mut fmt::Formatter<'_>,
    d: &Difference<T>,
    unused: &str,
    ungranted: &str,
) -> fmt::Result {
    if d.is_empty() {
        return writeln!(f, "  equal");
    }
    if !d.unused.is_empty() {
        writeln!(f, "  granted, never used by any test ({unused}):")?;
        for u in &d.unused {
            writeln!(f, "    - {u}")?;
        }
    }
    if !d.ungranted.is_empty() {
        writeln!(f, "  used, not granted ({ungranted}):")?;
        for (u, tests) in &d.ungranted {
            let shown: Vec<&str> = tests.iter().take(3).map(String::as_str).collect();
            let more = tests.len().saturating_sub(shown.len());
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            writeln!(f, "    - {u}  (by {}{more})", shown.join(", "))?;
        }
    }
    Ok(())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.recordings;
        writeln!(
            f,
            "Kubernetes: ClusterRole {} ({} rights) vs {} requests in {} recordings ({} rights used)",
            self.role,
            self.role_grants,
            r.lines.0,
            r.files.0,
            r.kube.len()
        )?;
        write_difference(
            f,
            &self.kube,
            "remove the rule, or add the test that needs it",
            "add the rule to deploy/kubernetes/rbac.yaml",
        )?;
        writeln!(
            f,
            "EC2: IAM policy ({} actions) vs {} calls in {} recordings ({} actions used)",
            self.policy_actions,
            r.lines.1,
            r.files.1,
            r.ec2.len()
        )?;
        write_difference(
            f,
            &self.ec2,
            "remove the action, or add the test that needs it",
            "add the action to deploy/kubernetes/iam-policy.json",
        )
    }
}

/// Compares the recordings under `dir` with the ClusterRole in `rbac_yaml` and
/// the policy `policy_json`. An error when a manifest does not parse or a kind
/// of recording is missing altogether (no Kubernetes or EC2 test ran).
pub fn check(dir: &Path, rbac_yaml: &str, policy_json: &str) -> Result<Report, RecordingsError> {
    let recordings = Recordings::read(dir)?;
    for (files, kind, tests) in [
        (recordings.files.0, KUBE_REQUESTS, "k8s_*"),
        (recordings.files.1, EC2_CALLS, "ec2_*"),
    ] {
        if files == 0 {
            return Err(RecordingsError::Manifest {
                what: format!("{}", dir.join(kind).display()),
                message: format!(
                    "no recordings: run the whole test suite (or at least the {tests} tests) first"
                ),
            });
        }
    }
    let (role, grants) = cluster_role_grants(rbac_yaml)?;
    let policy = parse_policy(policy_json)?;
    let actions = allowed_actions(&policy);
    Ok(Report {
        role,
        role_grants: grants.len(),
        kube: Difference::of(&grants, &recordings.kube),
        policy_actions: actions.len(),
        ec2: Difference::of(&actions, &recordings.ec2),
        recordings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RBAC: &str = "kind: ServiceAccount\nmetadata: {name: sa}\n---\n\
        kind: ClusterRole\nmetadata: {name: r}\nrules:\n\
        - apiGroups: ['']\n  resources: [pods, pods/status]\n  verbs: [get, patch]\n\
        - apiGroups: [coordination.k8s.io]\n  resources: [leases]\n  verbs: [update]\n\
        - nonResourceURLs: [/version]\n  verbs: [get]\n";

    const POLICY: &str = r#"{"Version": "2012-10-17", "Statement": [
        {"Sid": "Read", "Effect": "Allow", "Action": ["ec2:DescribeInstances"], "Resource": "*"},
        {"Sid": "Run", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": ["arn:aws:ec2:*:*:instance/*"],
         "Condition": {"StringEquals": {"aws:RequestTag/orca.research/cluster": "C"}}},
        {"Effect": "Allow", "Action": "ec2:CreateTags", "Resource": "arn:aws:ec2:*:*:instance/*"}]}"#;

    fn res(group: &str, resource: &str, verb: &str) -> Access {
        Access::Resource {
            group: group.into(),
            resource: resource.into(),
            verb: verb.into(),
        }
    }

    fn kube_line(
        group: Option<&str>,
        resource: &str,
        sub: Option<&str>,
        verb: &str,
    ) -> KubeRequestLine {
        KubeRequestLine {
            source: "t".into(),
            verb: verb.into(),
            api_group: group.map(Into::into),
            resource: group.map(|_| resource.into()),
            subresource: sub.map(Into::into),
            path: group.is_none().then(|| resource.into()),
        }
    }

    #[test]
    fn rules_expand_to_their_cross_product() {
        let (name, grants) = cluster_role_grants(RBAC).unwrap();
        assert_eq!(name, "r");
        assert_eq!(grants.len(), 6, "{grants:?}");
        assert!(grants.contains(&res("", "pods/status", "get")));
        assert!(grants.contains(&res("coordination.k8s.io", "leases", "update")));
        assert!(grants.contains(&Access::NonResource {
            url: "/version".into(),
            verb: "get".into()
        }));
        let two = format!("{RBAC}---\nkind: ClusterRole\nmetadata: {{name: s}}\nrules: []\n");
        assert!(cluster_role_grants(&two).is_err());
    }

    #[test]
    fn accesses_read_as_kubectl_writes_them() {
        assert_eq!(
            res("", "pods/status", "patch").to_string(),
            "patch pods/status"
        );
        assert_eq!(
            res("coordination.k8s.io", "leases", "get").to_string(),
            "get leases.coordination.k8s.io"
        );
        let line = kube_line(Some(""), "pods", Some("status"), "patch");
        assert_eq!(line.access(), res("", "pods/status", "patch"));
        let line = kube_line(None, "/version", None, "get");
        assert_eq!(line.access().to_string(), "get /version");
    }

    #[test]
    fn tags_on_create_need_create_tags() {
        let params = [
            ("Action", "RunInstances"),
            ("Version", "2016-11-15"),
            ("ImageId", "ami-1"),
            ("TagSpecification.1.ResourceType", "instance"),
            ("TagSpecification.1.Tag.1.Key", "k"),
        ];
        let call = Ec2CallLine::of("t".into(), "ec2", params);
        assert_eq!(call.action, "RunInstances");
        assert_eq!(
            call.params.iter().map(String::as_str).collect::<Vec<_>>(),
            ["ImageId", "TagSpecification"]
        );
        assert_eq!(iam_actions(&call), ["ec2:RunInstances", "ec2:CreateTags"]);
        let plain = Ec2CallLine::of("t".into(), "ec2", [("Action", "RunInstances")]);
        assert_eq!(iam_actions(&plain), ["ec2:RunInstances"]);
    }

    #[test]
    fn an_instance_profile_needs_pass_role_and_iam_calls_are_iams() {
        let params = [
            ("Action", "RunInstances"),
            ("IamInstanceProfile.Name", "train"),
        ];
        let call = Ec2CallLine::of("t".into(), "ec2", params);
        assert_eq!(iam_actions(&call), ["ec2:RunInstances", "iam:PassRole"]);
        let get = Ec2CallLine::of(
            "t".into(),
            "iam",
            [
                ("Action", "GetInstanceProfile"),
                ("InstanceProfileName", "p"),
            ],
        );
        assert_eq!(iam_actions(&get), ["iam:GetInstanceProfile"]);
        let old: Ec2CallLine =
            serde_json::from_str(r#"{"source": "t", "action": "DescribeImages", "params": []}"#)
                .unwrap();
        assert_eq!(iam_actions(&old), ["ec2:DescribeImages"]);
    }

    #[test]
    fn policies_are_well_formed_or_refused() {
        let p = parse_policy(POLICY).unwrap();
        assert_eq!(
            allowed_actions(&p).into_iter().collect::<Vec<_>>(),
            [
                "ec2:CreateTags",
                "ec2:DescribeInstances",
                "ec2:RunInstances"
            ]
        );
        for (from, to) in [
            ("2012-10-17", "2008-10-17"),
            ("\"Allow\", \"Action\": [", "\"Permit\", \"Action\": ["),
            ("ec2:DescribeInstances", "ec2:Describe*"),
            ("ec2:DescribeInstances", "DescribeInstances"),
            ("\"Resource\": \"*\"", "\"Resource\": \"instance\""),
            ("StringEquals", "StringEqual"),
            ("\"Sid\": \"Run\"", "\"Sid\": \"Read\""),
            ("\"Sid\": \"Run\"", "\"Sid\": \"Ru-n\""),
            (
                "\"Sid\": \"Read\",",
                "\"Sid\": \"Read\", \"Principal\": \"*\",",
            ),
        ] {
            assert!(POLICY.contains(from), "{from}");
            assert!(parse_policy(&POLICY.replacen(from, to, 1)).is_err(), "{to}");
        }
    }

    #[test]
    fn recordings_are_compared_exactly_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let kube = Recorder::in_dir(dir.path(), KUBE_REQUESTS);
        let ec2 = Recorder::in_dir(dir.path(), EC2_CALLS);
        assert!(
            check(dir.path(), RBAC, POLICY).is_err(),
            "no recordings yet"
        );
        kube.append(&[
            kube_line(Some(""), "pods", None, "get"),
            kube_line(Some(""), "pods", Some("status"), "patch"),
            kube_line(Some(""), "nodes", None, "create"),
        ])
        .unwrap();
        ec2.append(&[
            Ec2CallLine::of(
                "t".into(),
                "ec2",
                [
                    ("Action", "RunInstances"),
                    ("TagSpecification.1.ResourceType", "instance"),
                ],
            ),
            Ec2CallLine::of("u".into(), "ec2", [("Action", "TerminateInstances")]),
        ])
        .unwrap();
        assert!(kube.path().starts_with(dir.path().join(KUBE_REQUESTS)));
        let report = check(dir.path(), RBAC, POLICY).unwrap();
        assert!(!report.is_exact());
        assert_eq!(
            report
                .kube
                .unused
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [
                "patch pods",
                "get pods/status",
                "update leases.coordination.k8s.io",
                "get /version"
            ]
        );
        assert_eq!(
            report
                .kube
                .ungranted
                .keys()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["create nodes"]
        );
        assert_eq!(
            report.ec2.unused.iter().collect::<Vec<_>>(),
            ["ec2:DescribeInstances"]
        );
        assert_eq!(
            report.ec2.ungranted.keys().collect::<Vec<_>>(),
            ["ec2:TerminateInstances"]
        );
        let text = report.to_string();
        assert!(text.contains("- create nodes  (by t)"), "{text}");
        assert!(text.contains("- ec2:TerminateInstances  (by u)"), "{text}");

        // The same rights as granted: exact.
        let exact_rbac = "kind: ClusterRole\nmetadata: {name: r}\nrules:\n\
            - apiGroups: ['']\n  resources: [pods]\n  verbs: [get]\n\
            - apiGroups: ['']\n  resources: [pods/status]\n  verbs: [patch]\n\
            - apiGroups: ['']\n  resources: [nodes]\n  verbs: [create]\n";
        let exact_policy = r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Action": ["ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances"], "Resource": "*"}]}"#;
        let report = check(dir.path(), exact_rbac, exact_policy).unwrap();
        assert!(report.is_exact(), "{report}");
        assert_eq!(report.recordings.lines, (3, 2));
    }

    #[test]
    fn a_malformed_line_names_its_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let ec2 = Recorder::in_dir(dir.path(), EC2_CALLS);
        ec2.append(&[Ec2CallLine::of(
            "t".into(),
            "ec2",
            [("Action", "RunInstances")],
        )])
        .unwrap();
        let kube = dir.path().join(KUBE_REQUESTS);
        std::fs::create_dir_all(&kube).unwrap();
        std::fs::write(kube.join("x.jsonl"), "{\"verb\": 1}\n").unwrap();
        let e = Recordings::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("x.jsonl:1"), "{e}");
    }
}
