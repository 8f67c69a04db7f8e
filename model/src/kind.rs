//! The kinds of objects ORCA keeps in standalone mode, as manifests and
//! command lines name them.

/// The kinds ORCA keeps in standalone mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `v1/Namespace` (cluster-scoped).
    Namespace,
    /// `v1/ResourceQuota`.
    ResourceQuota,
    /// `v1/LimitRange`.
    LimitRange,
    /// `v1/ConfigMap`.
    ConfigMap,
    /// `v1/Secret` (sealed at rest).
    Secret,
    /// `apps/v1/Deployment`.
    Deployment,
    /// `apps/v1/ReplicaSet` (made by Deployments).
    ReplicaSet,
    /// `v1/Service`.
    Service,
    /// `rbac.authorization.k8s.io/v1/Role`.
    Role,
    /// `rbac.authorization.k8s.io/v1/ClusterRole` (cluster-scoped).
    ClusterRole,
    /// `rbac.authorization.k8s.io/v1/RoleBinding`.
    RoleBinding,
    /// `rbac.authorization.k8s.io/v1/ClusterRoleBinding` (cluster-scoped).
    ClusterRoleBinding,
    /// `autoscaling/v2/HorizontalPodAutoscaler`.
    HorizontalPodAutoscaler,
}

/// Kinds that stay with Kubernetes: standalone mode does not emulate them.
pub const KUBERNETES_ONLY: [&str; 3] = ["Ingress", "NetworkPolicy", "CustomResourceDefinition"];

impl Kind {
    /// Every kind, in the order `orca api-resources` lists them.
    pub const ALL: [Kind; 13] = [
        Kind::Namespace,
        Kind::ResourceQuota,
        Kind::LimitRange,
        Kind::ConfigMap,
        Kind::Secret,
        Kind::Deployment,
        Kind::ReplicaSet,
        Kind::Service,
        Kind::Role,
        Kind::ClusterRole,
        Kind::RoleBinding,
        Kind::ClusterRoleBinding,
        Kind::HorizontalPodAutoscaler,
    ];

    /// The kind a manifest's `kind` or a command line's word names.
    pub fn parse(word: &str) -> Option<Self> {
        let lower = word.to_ascii_lowercase();
        Some(match lower.as_str() {
            "namespace" | "namespaces" | "ns" => Kind::Namespace,
            "resourcequota" | "resourcequotas" | "quota" => Kind::ResourceQuota,
            "limitrange" | "limitranges" | "limits" => Kind::LimitRange,
            "configmap" | "configmaps" | "cm" => Kind::ConfigMap,
            "secret" | "secrets" => Kind::Secret,
            "deployment" | "deployments" | "deploy" => Kind::Deployment,
            "replicaset" | "replicasets" | "rs" => Kind::ReplicaSet,
            "service" | "services" | "svc" => Kind::Service,
            "role" | "roles" => Kind::Role,
            "clusterrole" | "clusterroles" => Kind::ClusterRole,
            "rolebinding" | "rolebindings" => Kind::RoleBinding,
            "clusterrolebinding" | "clusterrolebindings" => Kind::ClusterRoleBinding,
            "horizontalpodautoscaler" | "horizontalpodautoscalers" | "hpa" => {
                Kind::HorizontalPodAutoscaler
            }
            _ => return None,
        })
    }

    /// As Kubernetes spells it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::ResourceQuota => "ResourceQuota",
            Kind::LimitRange => "LimitRange",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
            Kind::Deployment => "Deployment",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::Service => "Service",
            Kind::Role => "Role",
            Kind::ClusterRole => "ClusterRole",
            Kind::RoleBinding => "RoleBinding",
            Kind::ClusterRoleBinding => "ClusterRoleBinding",
            Kind::HorizontalPodAutoscaler => "HorizontalPodAutoscaler",
        }
    }

    /// The resource RBAC rules name it by (plural, lowercase).
    pub fn resource(self) -> String {
        match self {
            Kind::Namespace => "namespaces".into(),
            Kind::ResourceQuota => "resourcequotas".into(),
            Kind::LimitRange => "limitranges".into(),
            other => format!("{}s", other.name().to_ascii_lowercase()),
        }
    }

    /// Whether its objects live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Namespace | Kind::ClusterRole | Kind::ClusterRoleBinding
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_from_its_name_and_resource() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.name()), Some(kind));
            assert_eq!(Kind::parse(&kind.resource()), Some(kind));
        }
        assert_eq!(Kind::parse("svc"), Some(Kind::Service));
        assert_eq!(Kind::parse("Ingress"), None);
    }
}
