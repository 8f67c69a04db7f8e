//! Who calls AdminService and what they may do.
//!
//! - **Authentication**: a bearer token on every call. The admin token (made
//!   with the cluster, in `admin.yaml`) is the cluster's superuser, as
//!   Kubernetes' `system:masters`; named tokens (`orca auth token create
//!   NAME`) are the user `NAME`. Tokens are kept as their SHA-256 only; the
//!   token itself is shown once, when made.
//! - **Authorization**: every call names what it does (verb × resource in a
//!   namespace, as Kubernetes writes it) and is checked against the stored
//!   Roles, ClusterRoles and their bindings ([`rbac`]). A named token with no
//!   binding may do nothing but ask what it may do (`orca auth can-i`).
//! - **Audit**: every decision, allowed or refused, is one JSON line in
//!   `<data_dir>/audit.log`: when, who, verb, resource, namespace, name, the
//!   decision and what decided it ([`audit`]).

pub mod audit;
pub mod rbac;

use orca_proto::controlplane::v1 as pb;
use ring::digest::{SHA256, digest};

use crate::shared::{ClusterError, Shared, now};
use orca_model::kind::Kind;
use rbac::{Access, Policy};

pub use audit::Caller;

pub use orca_model::records::ApiToken;

/// Store key of a token: the hex SHA-256 of its text.
fn token_key(token: &str) -> String {
    digest(&SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decoded<T: serde::de::DeserializeOwned>(objects: Vec<pb::StoredObject>) -> Vec<T> {
    objects
        .iter()
        .filter_map(|o| serde_json::from_str(&o.manifest_json).ok())
        .collect()
}

/// Tokens and the authorization of every AdminService call.
#[derive(Clone)]
pub struct Auth {
    shared: Shared,
}

impl Auth {
    /// The component over `shared` and the components below it.
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }
}

impl Auth {
    /// Who `token` is, if anyone.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        if self.shared.pki().admin_token_ok(token) {
            return Some(Caller::Admin);
        }
        let t = self
            .shared
            .store()
            .api_tokens
            .get(&token_key(token))
            .ok()??;
        Some(Caller::User(t.name))
    }

    /// Makes a named token; its text (shown once).
    pub async fn create_token(&self, name: &str) -> Result<String, ClusterError> {
        if !crate::pods::valid_name(name) || name == "admin" {
            return Err(ClusterError::Invalid(format!(
                "token {name:?}: names are lowercase DNS subdomains, and not admin"
            )));
        }
        if self.tokens()?.iter().any(|t| t.name == name) {
            return Err(ClusterError::AlreadyExists {
                kind: "token",
                name: name.into(),
            });
        }
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| ClusterError::FailedPrecondition("no randomness for a token".into()))?;
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let token = format!("orca-{name}.{hex}");
        self.shared.store().api_tokens.put(
            &token_key(&token),
            &ApiToken {
                name: name.into(),
                created_at: Some(now()),
            },
        )?;
        self.shared.store().flush().await?;
        Ok(token)
    }

    /// The named tokens.
    pub fn tokens(&self) -> Result<Vec<ApiToken>, ClusterError> {
        Ok(self.shared.store().api_tokens.scan("")?)
    }

    /// Deletes the named token: it authenticates no one from now on.
    pub async fn delete_token(&self, name: &str) -> Result<(), ClusterError> {
        let found: Vec<String> = self
            .shared
            .store()
            .api_tokens
            .entries("")?
            .into_iter()
            .filter(|(_, t)| t.name == name)
            .map(|(k, _)| k)
            .collect();
        if found.is_empty() {
            return Err(ClusterError::NotFound {
                kind: "token",
                name: name.into(),
            });
        }
        for k in found {
            self.shared.store().api_tokens.remove(&k)?;
        }
        self.shared.store().flush().await?;
        Ok(())
    }

    fn policy(&self) -> Result<Policy, ClusterError> {
        let scan = |kind: Kind| {
            self.shared
                .store()
                .objects
                .scan(&format!("{}/", kind.name()))
        };
        Ok(Policy {
            roles: decoded(scan(Kind::Role)?),
            cluster_roles: decoded(scan(Kind::ClusterRole)?),
            role_bindings: decoded(scan(Kind::RoleBinding)?),
            cluster_role_bindings: decoded(scan(Kind::ClusterRoleBinding)?),
        })
    }

    /// Whether `caller` may do `access`, and what decided it.
    pub fn decide(&self, caller: &Caller, access: &Access) -> Result<(bool, String), ClusterError> {
        Ok(match caller {
            Caller::Admin => (true, "the admin token".into()),
            Caller::User(name) => match self.policy()?.allows(name, access) {
                Some(binding) => (true, binding),
                None => (false, access.refusal(name)),
            },
        })
    }

    /// Refuses a Role, ClusterRole or binding (`manifest`) that would grant
    /// more than `caller` has itself, as Kubernetes does (no `escalate` or
    /// `bind` verbs here: the admin token is the only way past it).
    pub fn refuse_escalation(
        &self,
        caller: &Caller,
        manifest: &serde_json::Value,
    ) -> Result<(), ClusterError> {
        let Caller::User(user) = caller else {
            return Ok(());
        };
        let kind = manifest["kind"].as_str().unwrap_or_default();
        let ns = if kind.starts_with("Cluster") {
            ""
        } else {
            manifest["metadata"]["namespace"]
                .as_str()
                .unwrap_or(crate::pods::DEFAULT_NAMESPACE)
        };
        let policy = self.policy()?;
        let rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule> = match kind {
            "Role" | "ClusterRole" => {
                serde_json::from_value(manifest["rules"].clone()).unwrap_or_default()
            }
            "RoleBinding" | "ClusterRoleBinding" => policy.referenced(
                manifest["roleRef"]["kind"].as_str().unwrap_or_default(),
                ns,
                manifest["roleRef"]["name"].as_str().unwrap_or_default(),
            ),
            _ => return Ok(()),
        };
        match policy.escalation(user, ns, &rules) {
            None => Ok(()),
            Some(a) => {
                let why = format!(
                    "{kind} {:?} is forbidden: User {user:?} would grant {} on {} {}, which it may not do itself (escalation)",
                    manifest["metadata"]["name"].as_str().unwrap_or_default(),
                    a.verb,
                    a.resource,
                    if ns.is_empty() {
                        "at the cluster scope".to_owned()
                    } else {
                        format!("in the namespace {ns:?}")
                    }
                );
                let access = Access::new("escalate", &kind.to_ascii_lowercase(), ns, "");
                self.shared
                    .audit()
                    .record(caller, "ApplyObject", &access, false, &why);
                Err(ClusterError::PermissionDenied(why))
            }
        }
    }

    /// Allows `access` to `caller` or refuses it, recording the decision in
    /// the audit log.
    pub fn authorize(
        &self,
        caller: &Caller,
        method: &str,
        access: &Access,
    ) -> Result<(), ClusterError> {
        let (allowed, why) = self.decide(caller, access)?;
        self.shared
            .audit()
            .record(caller, method, access, allowed, &why);
        if allowed {
            Ok(())
        } else {
            Err(ClusterError::PermissionDenied(why))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_keys_are_hashes() {
        let k = token_key("orca-ann.00");
        assert_eq!(k.len(), 64);
        assert_ne!(k, token_key("orca-ann.01"));
    }
}
