//! Authorization as Kubernetes' RBAC does it: a caller may do a verb on a
//! resource in a namespace when a RoleBinding there, or a ClusterRoleBinding,
//! names it (`kind: User`, the token's name) and binds a Role or ClusterRole
//! with a rule whose `verbs`, `resources` (and `apiGroups`, and
//! `resourceNames` when given) cover it. Cluster-scoped resources (nodes,
//! namespaces, cluster roles and bindings, ORCA's backups, budgets, telemetry
//! and tokens) are granted by ClusterRoleBindings only. Nothing is allowed
//! unless a rule allows it.
//!
//! The built-in ClusterRoles `cluster-admin`, `admin`, `edit` and `view` are
//! there without being applied, as in Kubernetes (`view` reads everything but
//! Secrets; `edit` also writes workloads, Secrets and exec; `admin` also
//! Roles and RoleBindings).

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};
use serde_json::json;

/// One thing a caller asks to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`.
    pub verb: String,
    /// Plural resource, with subresource (`pods/exec`).
    pub resource: String,
    /// Empty for cluster-scoped resources, or a request across namespaces.
    pub namespace: String,
    /// The object's name, when the request names one.
    pub name: String,
}

impl Access {
    /// `verb resource` in `namespace` on `name`.
    pub fn new(verb: &str, resource: &str, namespace: &str, name: &str) -> Self {
        Self {
            verb: verb.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// What Kubernetes' refusal says.
    pub fn refusal(&self, user: &str) -> String {
        let group = api_group(&self.resource);
        let what = if self.name.is_empty() {
            self.resource.clone()
        } else {
            format!("{} {:?}", self.resource, self.name)
        };
        if cluster_scoped(&self.resource) || self.namespace.is_empty() {
            format!(
                "{what} is forbidden: User {user:?} cannot {} resource {:?} in API group {group:?} at the cluster scope",
                self.verb, self.resource
            )
        } else {
            format!(
                "{what} is forbidden: User {user:?} cannot {} resource {:?} in API group {group:?} in the namespace {:?}",
                self.verb, self.resource, self.namespace
            )
        }
    }
}

/// The API group of a resource (its part before any `/subresource`).
pub fn api_group(resource: &str) -> &'static str {
    match resource.split('/').next().unwrap_or_default() {
        "deployments" | "replicasets" => "apps",
        "horizontalpodautoscalers" => "autoscaling",
        "roles" | "rolebindings" | "clusterroles" | "clusterrolebindings" => {
            "rbac.authorization.k8s.io"
        }
        "backups" | "budgets" | "telemetry" | "tokens" => "orca.research",
        _ => "",
    }
}

/// Whether a resource lives outside namespaces.
pub fn cluster_scoped(resource: &str) -> bool {
    matches!(
        resource.split('/').next().unwrap_or_default(),
        "nodes"
            | "namespaces"
            | "clusterroles"
            | "clusterrolebindings"
            | "backups"
            | "budgets"
            | "telemetry"
            | "tokens"
    )
}

fn covers(rule: &PolicyRule, access: &Access) -> bool {
    let any = |list: &[String], want: &str| list.iter().any(|v| v == "*" || v == want);
    let groups = rule.api_groups.as_deref().unwrap_or_default();
    let resources = rule.resources.as_deref().unwrap_or_default();
    let names = rule.resource_names.as_deref().unwrap_or_default();
    any(&rule.verbs, &access.verb)
        && any(groups, api_group(&access.resource))
        && any(resources, &access.resource)
        && (names.is_empty() || names.iter().any(|n| n == &access.name))
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(groups.iter().map(|s| (*s).to_owned()).collect()),
        resources: Some(resources.iter().map(|s| (*s).to_owned()).collect()),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

const READ: [&str; 3] = ["get", "list", "watch"];
const WRITE: [&str; 7] = [
    "get", "list", "watch", "create", "update", "patch", "delete",
];
const VIEWABLE: [&str; 13] = [
    "pods",
    "pods/log",
    "services",
    "configmaps",
    "events",
    "persistentvolumeclaims",
    "resourcequotas",
    "limitranges",
    "namespaces",
    "deployments",
    "replicasets",
    "horizontalpodautoscalers",
    "endpoints",
];

/// The rules of a built-in ClusterRole.
pub fn builtin(name: &str) -> Option<Vec<PolicyRule>> {
    let groups = ["", "apps", "autoscaling"];
    let view = rule(&groups, &VIEWABLE, &READ);
    let edit = rule(
        &groups,
        &[
            "pods",
            "pods/exec",
            "pods/attach",
            "services",
            "configmaps",
            "secrets",
            "persistentvolumeclaims",
            "deployments",
            "horizontalpodautoscalers",
        ],
        &WRITE,
    );
    Some(match name {
        "cluster-admin" => vec![rule(&["*"], &["*"], &["*"])],
        "view" => vec![view],
        "edit" => vec![view, edit],
        "admin" => vec![
            view,
            edit,
            rule(
                &["rbac.authorization.k8s.io"],
                &["roles", "rolebindings"],
                &WRITE,
            ),
        ],
        _ => return None,
    })
}

/// The built-in ClusterRoles as manifests (for `orca get clusterroles`).
pub fn builtin_manifests() -> Vec<serde_json::Value> {
    ["cluster-admin", "admin", "edit", "view"]
        .iter()
        .map(|n| {
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                   "metadata": {"name": n, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                   "rules": builtin(n)})
        })
        .collect()
}

fn names_user(subjects: Option<&Vec<Subject>>, user: &str) -> bool {
    subjects
        .into_iter()
        .flatten()
        .any(|s| s.kind == "User" && s.name == user)
}

/// What the authorizer reads: the stored roles and bindings.
pub struct Policy {
    /// Roles, with their namespace.
    pub roles: Vec<Role>,
    /// ClusterRoles applied (the built-ins come on top).
    pub cluster_roles: Vec<ClusterRole>,
    /// RoleBindings, with their namespace.
    pub role_bindings: Vec<RoleBinding>,
    /// ClusterRoleBindings.
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
}

impl Policy {
    fn cluster_role(&self, name: &str) -> Vec<PolicyRule> {
        builtin(name).unwrap_or_else(|| {
            self.cluster_roles
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(name))
                .and_then(|r| r.rules.clone())
                .unwrap_or_default()
        })
    }

    fn role(&self, ns: &str, name: &str) -> Vec<PolicyRule> {
        self.roles
            .iter()
            .find(|r| {
                r.metadata.namespace.as_deref() == Some(ns)
                    && r.metadata.name.as_deref() == Some(name)
            })
            .and_then(|r| r.rules.clone())
            .unwrap_or_default()
    }

    /// The rules a binding's `roleRef` grants, in namespace `ns` (empty for a
    /// ClusterRoleBinding).
    pub fn referenced(&self, role_kind: &str, ns: &str, name: &str) -> Vec<PolicyRule> {
        match role_kind {
            "ClusterRole" => self.cluster_role(name),
            _ => self.role(ns, name),
        }
    }

    /// The first thing `rules` would grant in `ns` that `user` may not do
    /// itself (Kubernetes' escalation check: one can only grant what one
    /// has), or None.
    pub fn escalation(&self, user: &str, ns: &str, rules: &[PolicyRule]) -> Option<Access> {
        for r in rules {
            for verb in &r.verbs {
                for resource in r.resources.as_deref().unwrap_or_default() {
                    // A RoleBinding cannot grant cluster-scoped resources anyway.
                    if !ns.is_empty() && cluster_scoped(resource) {
                        continue;
                    }
                    let access = Access::new(verb, resource, ns, "");
                    if self.allows(user, &access).is_none() {
                        return Some(access);
                    }
                }
            }
        }
        None
    }

    /// The binding that allows `access` to `user`, named (`ClusterRoleBinding
    /// x`, `RoleBinding ns/x`), or None.
    pub fn allows(&self, user: &str, access: &Access) -> Option<String> {
        for b in &self.cluster_role_bindings {
            if names_user(b.subjects.as_ref(), user)
                && b.role_ref.kind == "ClusterRole"
                && self
                    .cluster_role(&b.role_ref.name)
                    .iter()
                    .any(|r| covers(r, access))
            {
                return Some(format!(
                    "ClusterRoleBinding {}",
                    b.metadata.name.as_deref().unwrap_or_default()
                ));
            }
        }
        if cluster_scoped(&access.resource) || access.namespace.is_empty() {
            return None;
        }
        for b in &self.role_bindings {
            let ns = b.metadata.namespace.as_deref().unwrap_or_default();
            if ns != access.namespace || !names_user(b.subjects.as_ref(), user) {
                continue;
            }
            let rules = match b.role_ref.kind.as_str() {
                "ClusterRole" => self.cluster_role(&b.role_ref.name),
                _ => self.role(ns, &b.role_ref.name),
            };
            if rules.iter().any(|r| covers(r, access)) {
                return Some(format!(
                    "RoleBinding {ns}/{}",
                    b.metadata.name.as_deref().unwrap_or_default()
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> Policy {
        Policy {
            roles: vec![serde_json::from_value(json!({"metadata": {"name": "reader", "namespace": "lab"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["settings"]}]})).unwrap()],
            cluster_roles: vec![],
            role_bindings: vec![
                serde_json::from_value(json!({"metadata": {"name": "ann-views", "namespace": "lab"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                    "subjects": [{"kind": "User", "name": "ann"}]})).unwrap(),
                serde_json::from_value(json!({"metadata": {"name": "ann-reads", "namespace": "lab"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
                    "subjects": [{"kind": "User", "name": "ann"}]})).unwrap(),
            ],
            cluster_role_bindings: vec![serde_json::from_value(json!({"metadata": {"name": "ops"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"kind": "User", "name": "bob"}]})).unwrap()],
        }
    }

    #[test]
    fn bindings_grant_what_their_roles_cover_and_nothing_else() {
        let p = policy();
        let a = |v: &str, r: &str, ns: &str, n: &str| Access::new(v, r, ns, n);
        assert!(p.allows("ann", &a("list", "pods", "lab", "")).is_some());
        assert!(p.allows("ann", &a("get", "pods/log", "lab", "x")).is_some());
        assert_eq!(p.allows("ann", &a("delete", "pods", "lab", "x")), None);
        assert_eq!(
            p.allows("ann", &a("list", "pods", "default", "")),
            None,
            "another namespace"
        );
        assert_eq!(
            p.allows("ann", &a("get", "secrets", "lab", "s")),
            None,
            "view reads no Secrets"
        );
        assert!(
            p.allows("ann", &a("get", "configmaps", "lab", "settings"))
                .is_some()
        );
        assert!(
            p.allows("ann", &a("list", "nodes", "", "")).is_none(),
            "cluster scope needs a ClusterRoleBinding"
        );
        assert_eq!(
            p.allows("bob", &a("delete", "nodes", "", "h1")).as_deref(),
            Some("ClusterRoleBinding ops")
        );
        assert_eq!(p.allows("carol", &a("get", "pods", "lab", "x")), None);
    }

    #[test]
    fn one_grants_only_what_one_has() {
        let p = policy();
        let view = builtin("view").unwrap();
        assert_eq!(
            p.escalation("ann", "lab", &view),
            None,
            "ann has view in lab"
        );
        let admin = builtin("cluster-admin").unwrap();
        assert!(p.escalation("ann", "lab", &admin).is_some());
        assert!(
            p.escalation("ann", "default", &view).is_some(),
            "not in another namespace"
        );
        assert_eq!(p.escalation("bob", "", &admin), None);
    }

    #[test]
    fn refusals_read_like_kubernetes() {
        assert_eq!(
            Access::new("delete", "pods", "default", "web").refusal("viewer"),
            "pods \"web\" is forbidden: User \"viewer\" cannot delete resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        assert!(
            Access::new("list", "nodes", "", "")
                .refusal("v")
                .ends_with("at the cluster scope")
        );
    }
}
