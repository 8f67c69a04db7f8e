//! The audit log: one JSON line per authorization decision, appended to
//! `<data_dir>/audit.log` (mode 0600) as it is made — `time`, `user`,
//! `method` (the AdminService call), `verb`, `resource`, `namespace`,
//! `name`, `allowed`, and `reason` (the binding that allowed it, or the
//! refusal). A line that cannot be written is logged as a warning; the call
//! is not failed for it.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde_json::json;

use super::rbac::Access;

/// File name of the audit log in the data directory.
pub const FILE: &str = "audit.log";

/// The audit log of one control plane.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

impl AuditLog {
    /// The log in `data_dir` (opened at the first record).
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(FILE),
            file: Mutex::new(None),
        }
    }

    /// Appends one decision.
    pub fn record(
        &self,
        caller: &Caller,
        method: &str,
        access: &Access,
        allowed: bool,
        reason: &str,
    ) {
        let line = json!({
            "time": jiff::Timestamp::now().to_string(),
            "user": caller.name(),
            "method": method,
            "verb": access.verb,
            "resource": access.resource,
            "namespace": access.namespace,
            "name": access.name,
            "allowed": allowed,
            "reason": reason,
        });
        self.append(&line);
    }

    /// Appends a Pod Security audit annotation: a pod admitted although it
    /// would violate its namespace's `audit` level (`pod-security.kubernetes.io/audit-violations`,
    /// as the API server annotates its audit event).
    pub fn pod_security(&self, namespace: &str, name: &str, violations: &str) {
        self.append(&json!({
            "time": jiff::Timestamp::now().to_string(),
            "method": "RunPod",
            "verb": "create",
            "resource": "pods",
            "namespace": namespace,
            "name": name,
            "allowed": true,
            "annotations": { "pod-security.kubernetes.io/audit-violations": violations },
        }));
    }

    fn append(&self, line: &serde_json::Value) {
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if file.is_none() {
            *file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)
                .map_err(|e| tracing::warn!(path = %self.path.display(), error = %e, "audit log cannot be opened"))
                .ok();
        }
        if let Some(f) = file.as_mut()
            && let Err(e) = writeln!(f, "{line}")
        {
            tracing::warn!(path = %self.path.display(), error = %e, "audit line not written");
        }
    }
}

/// Who is calling, as authenticated from the request's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The cluster's admin token.
    Admin,
    /// A named token.
    User(String),
}

impl Caller {
    /// The name audits and refusals use.
    pub fn name(&self) -> &str {
        match self {
            Caller::Admin => "admin",
            Caller::User(n) => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        log.record(
            &Caller::User("ann".into()),
            "DeletePod",
            &Access::new("delete", "pods", "lab", "web"),
            false,
            "no",
        );
        log.record(
            &Caller::Admin,
            "ListNodes",
            &Access::new("list", "nodes", "", ""),
            true,
            "the admin token",
        );
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["user"], "ann");
        assert_eq!(lines[0]["allowed"], false);
        assert_eq!(lines[1]["resource"], "nodes");
    }
}
