//! What a pod refers to, resolved just before it is handed to its agent:
//! ConfigMaps and Secrets (volumes, `env[].valueFrom`, `envFrom`), the service
//! account token (projected volumes), registry credentials
//! (`imagePullSecrets`), and the values of `fieldRef` and `resourceFieldRef`.
//! The objects come from an [`ObjectSource`]: the Kubernetes API server in
//! Kubernetes mode ([`crate::vk::resolve`]), ORCA's own store in standalone
//! mode ([`crate::objects::source`]).
//!
//! The agent gets environment variables as values in the spec (as the kubelet
//! hands them to the runtime), and volume content in `VolumeData`.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, PodSpec, Secret};
use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1 as types;

use crate::shared::{ResolveError, Resolved};

/// Lifetime asked for a projected service account token without one (s).
const DEFAULT_TOKEN_EXPIRATION_S: i64 = 3600;

/// Where the objects a pod refers to are read.
pub trait ObjectSource: Send + Sync {
    /// A ConfigMap, if it exists.
    fn config_map<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ConfigMap>, ResolveError>>;
    /// A Secret, if it exists.
    fn secret<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Secret>, ResolveError>>;
    /// A token of service account `sa` bound to `pod` (name, uid).
    fn token<'a>(
        &'a self,
        ns: &'a str,
        sa: &'a str,
        pod: (&'a str, &'a str),
        audiences: Vec<String>,
        expiration_seconds: i64,
    ) -> BoxFuture<'a, Result<String, ResolveError>>;
    /// The node name a pod on `node` sees (`spec.nodeName`).
    fn node_name_of(&self, node: &pb::Node) -> String;
}

/// The objects a pod refers to, fetched once each.
#[derive(Default)]
struct Fetched {
    config_maps: BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    secrets: BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

async fn read_config_map(
    objects: &dyn ObjectSource,
    ns: &str,
    name: &str,
    fetched: &mut Fetched,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, ResolveError> {
    if let Some(v) = fetched.config_maps.get(name) {
        return Ok(v.clone());
    }
    let cm = objects
        .config_map(ns, name)
        .await
        .map_err(|e| e.context(format_args!("configmap {ns}/{name}")))?;
    let data = cm.map(|cm| {
        let mut data: BTreeMap<String, Vec<u8>> = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        data.extend(
            cm.binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        data
    });
    fetched.config_maps.insert(name.to_owned(), data.clone());
    Ok(data)
}

async fn read_secret(
    objects: &dyn ObjectSource,
    ns: &str,
    name: &str,
    fetched: &mut Fetched,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, ResolveError> {
    if let Some(v) = fetched.secrets.get(name) {
        return Ok(v.clone());
    }
    let secret = objects
        .secret(ns, name)
        .await
        .map_err(|e| e.context(format_args!("secret {ns}/{name}")))?;
    let data = secret.map(|s| {
        let mut data: BTreeMap<String, Vec<u8>> = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        data.extend(
            s.string_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes())),
        );
        data
    });
    fetched.secrets.insert(name.to_owned(), data.clone());
    Ok(data)
}

/// Resolves what a pod refers to, reading objects from `objects`, just before
/// the pod is handed to its agent on `node`.
pub async fn resolve(
    objects: &dyn ObjectSource,
    record: &pb::PodRecord,
    node: &pb::Node,
) -> Result<Resolved, ResolveError> {
    let pod = record
        .pod
        .as_ref()
        .ok_or_else(|| ResolveError::Unresolvable("pod record without a pod".into()))?;
    let r = pod.r#ref.clone().unwrap_or_default();
    let ns = r.namespace.as_str();
    let mut spec: PodSpec = serde_json::from_str(&pod.spec_json)
        .map_err(|e| ResolveError::Unresolvable(e.to_string()))?;
    let mut fetched = Fetched::default();
    let mut volume_data = types::VolumeData::default();
    let mut token_wanted: Option<(Vec<String>, i64)> = None;

    // Volumes: every ConfigMap and Secret named (directly or projected),
    // and the token if a projected source asks for one.
    let mut wanted: Vec<(bool, String, bool, &str)> = Vec::new(); // (secret?, name, optional, volume)
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            wanted.push((
                false,
                cm.name.clone(),
                cm.optional.unwrap_or(false),
                &v.name,
            ));
        }
        if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            wanted.push((true, name, s.optional.unwrap_or(false), &v.name));
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &source.config_map {
                wanted.push((
                    false,
                    cm.name.clone(),
                    cm.optional.unwrap_or(false),
                    &v.name,
                ));
            }
            if let Some(s) = &source.secret {
                wanted.push((true, s.name.clone(), s.optional.unwrap_or(false), &v.name));
            }
            if let Some(t) = &source.service_account_token {
                token_wanted.get_or_insert((
                    t.audience.clone().into_iter().collect(),
                    t.expiration_seconds.unwrap_or(DEFAULT_TOKEN_EXPIRATION_S),
                ));
            }
        }
    }
    for (secret, name, optional, volume) in wanted {
        let (data, table, kind) = if secret {
            let data = read_secret(objects, ns, &name, &mut fetched).await?;
            (data, &mut volume_data.secrets, "secret")
        } else {
            let data = read_config_map(objects, ns, &name, &mut fetched).await?;
            (data, &mut volume_data.config_maps, "configmap")
        };
        match data {
            Some(data) => insert(table, &name, data),
            None if optional => {}
            None => return Err(missing(kind, ns, &name, volume).into()),
        }
    }
    if let Some((audiences, expiration)) = token_wanted {
        let sa = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        volume_data.service_account_token = objects
            .token(
                ns,
                &sa,
                (&r.name, &kubernetes_uid(pod)),
                audiences,
                expiration,
            )
            .await
            .map_err(|e| e.context(format_args!("service account token of {ns}/{sa}")))?;
    }

    // Registry credentials.
    let mut registry_credentials = Vec::new();
    for s in spec.image_pull_secrets.iter().flatten() {
        // A missing pull secret is not an error for the kubelet either: the
        // pull is tried without it.
        if let Some(data) = read_secret(objects, ns, &s.name, &mut fetched).await? {
            registry_credentials.extend(docker_config(&data));
        }
    }

    // Environment.
    let context = FieldContext {
        pod,
        node_name: &objects.node_name_of(node),
        host_ip: node_ip(node),
        service_account: spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into()),
    };
    let mut changed = false;
    let mut containers: Vec<&mut Container> = spec.containers.iter_mut().collect();
    containers.extend(spec.init_containers.iter_mut().flatten());
    for c in containers {
        changed |= resolve_env(objects, ns, c, &context, &mut fetched).await?;
    }
    let spec_json = if changed {
        Some(serde_json::to_string(&spec).map_err(|e| ResolveError::Unresolvable(e.to_string()))?)
    } else {
        None
    };
    Ok(Resolved {
        registry_credentials,
        volume_data: Some(volume_data),
        spec_json,
    })
}

/// Turns `envFrom` and `env[].valueFrom` into plain values; whether anything changed.
async fn resolve_env(
    objects: &dyn ObjectSource,
    ns: &str,
    c: &mut Container,
    context: &FieldContext<'_>,
    fetched: &mut Fetched,
) -> Result<bool, ResolveError> {
    let from = c.env_from.take().unwrap_or_default();
    let has_value_from = c.env.iter().flatten().any(|e| e.value_from.is_some());
    if from.is_empty() && !has_value_from {
        return Ok(false);
    }
    let mut env: Vec<EnvVar> = Vec::new();
    let set = |name: String, value: String, env: &mut Vec<EnvVar>| {
        env.retain(|e| e.name != name);
        env.push(EnvVar {
            name,
            value: Some(value),
            value_from: None,
        });
    };
    for source in from {
        let prefix = source.prefix.clone().unwrap_or_default();
        let (kind, name, optional, data) = if let Some(cm) = &source.config_map_ref {
            let data = read_config_map(objects, ns, &cm.name, fetched).await?;
            (
                "configmap",
                cm.name.clone(),
                cm.optional.unwrap_or(false),
                data,
            )
        } else if let Some(s) = &source.secret_ref {
            let data = read_secret(objects, ns, &s.name, fetched).await?;
            ("secret", s.name.clone(), s.optional.unwrap_or(false), data)
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    set(
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v).into_owned(),
                        &mut env,
                    );
                }
            }
            None if optional => {}
            None => {
                return Err(ResolveError::Unresolvable(format!(
                    "{kind} {ns}/{name} (envFrom of container {:?}) not found",
                    c.name
                )));
            }
        }
    }
    for var in c.env.take().unwrap_or_default() {
        let Some(from) = &var.value_from else {
            set(
                var.name.clone(),
                var.value.clone().unwrap_or_default(),
                &mut env,
            );
            continue;
        };
        let value = if let Some(k) = &from.config_map_key_ref {
            let data = read_config_map(objects, ns, &k.name, fetched).await?;
            match data.as_ref().and_then(|d| d.get(&k.key)) {
                Some(v) => Some(String::from_utf8_lossy(v).into_owned()),
                None if k.optional.unwrap_or(false) => None,
                None => {
                    return Err(ResolveError::Unresolvable(format!(
                        "key {:?} of configmap {ns}/{} (env {} of container {:?}) not found",
                        k.key, k.name, var.name, c.name
                    )));
                }
            }
        } else if let Some(k) = &from.secret_key_ref {
            let data = read_secret(objects, ns, &k.name, fetched).await?;
            match data.as_ref().and_then(|d| d.get(&k.key)) {
                Some(v) => Some(String::from_utf8_lossy(v).into_owned()),
                None if k.optional.unwrap_or(false) => None,
                None => {
                    return Err(ResolveError::Unresolvable(format!(
                        "key {:?} of secret {ns}/{} (env {} of container {:?}) not found",
                        k.key, k.name, var.name, c.name
                    )));
                }
            }
        } else if let Some(f) = &from.field_ref {
            Some(context.field(&f.field_path).ok_or_else(|| {
                format!(
                    "env {} of container {:?}: unsupported fieldRef {:?}",
                    var.name, c.name, f.field_path
                )
            })?)
        } else if let Some(r) = &from.resource_field_ref {
            Some(resource_field(c, r).ok_or_else(|| {
                format!(
                    "env {} of container {:?}: unsupported resourceFieldRef {:?}",
                    var.name, c.name, r.resource
                )
            })?)
        } else {
            None
        };
        if let Some(value) = value {
            set(var.name.clone(), value, &mut env);
        }
    }
    c.env = Some(env);
    Ok(true)
}

/// The Kubernetes uid of an ORCA pod (its first incarnation's uid).
pub fn kubernetes_uid(pod: &types::Pod) -> String {
    pod.annotations
        .get(KUBERNETES_UID)
        .cloned()
        .or_else(|| pod.r#ref.as_ref().map(|r| r.uid.clone()))
        .unwrap_or_default()
}

fn insert(
    into: &mut HashMap<String, types::KeyValues>,
    name: &str,
    data: BTreeMap<String, Vec<u8>>,
) {
    into.insert(
        name.to_owned(),
        types::KeyValues {
            data: data.into_iter().collect(),
        },
    );
}

fn missing(kind: &str, ns: &str, name: &str, volume: &str) -> String {
    format!("{kind} {ns}/{name} (volume {volume:?}) not found")
}

/// The host part of a node's agent address.
fn node_ip(node: &pb::Node) -> String {
    node.agent_address
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_default()
}

/// What `fieldRef` paths read.
struct FieldContext<'a> {
    pod: &'a types::Pod,
    node_name: &'a str,
    host_ip: String,
    service_account: String,
}

impl FieldContext<'_> {
    fn field(&self, path: &str) -> Option<String> {
        let r = self.pod.r#ref.clone().unwrap_or_default();
        let keyed = |prefix: &str, map: &HashMap<String, String>| {
            path.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix("']"))
                .map(|key| map.get(key).cloned().unwrap_or_default())
        };
        match path {
            "metadata.name" => Some(r.name),
            "metadata.namespace" => Some(r.namespace),
            "metadata.uid" => Some(kubernetes_uid(self.pod)),
            "spec.nodeName" => Some(self.node_name.to_owned()),
            "spec.serviceAccountName" => Some(self.service_account.clone()),
            // A pod's address is its host's (one pod per instance, host network).
            "status.hostIP" | "status.podIP" | "status.hostIPs" | "status.podIPs" => {
                Some(self.host_ip.clone())
            }
            _ => keyed("metadata.labels['", &self.pod.labels)
                .or_else(|| keyed("metadata.annotations['", &self.pod.annotations)),
        }
    }
}

/// A container's resource as `resourceFieldRef` reads it: CPU rounded up to
/// the divisor (default 1 core), memory in divisor units (default bytes).
fn resource_field(
    c: &Container,
    r: &k8s_openapi::api::core::v1::ResourceFieldSelector,
) -> Option<String> {
    let (kind, resource) = r.resource.split_once('.')?;
    let res = c.resources.as_ref();
    let table = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => return None,
    };
    let millis = resource == "cpu";
    if !millis && resource != "memory" && resource != "ephemeral-storage" {
        return None;
    }
    let divisor = r
        .divisor
        .as_ref()
        .and_then(|d| orca_model::quantity::parse(&d.0, millis))
        .filter(|d| *d > 0)
        .unwrap_or(if millis { 1000 } else { 1 });
    // Without a limit, the kubelet reports the node's allocatable; without a
    // request, zero (memory) or the limit.
    let value = table
        .and_then(|t| t.get(resource))
        .and_then(|q| orca_model::quantity::parse(&q.0, millis))
        .unwrap_or(0);
    Some(value.div_ceil(divisor).to_string())
}

/// Registry credentials from a `kubernetes.io/dockerconfigjson` (or legacy
/// `.dockercfg`) secret's data.
fn docker_config(data: &BTreeMap<String, Vec<u8>>) -> Vec<types::RegistryCredential> {
    let parsed: Option<serde_json::Value> = data
        .get(".dockerconfigjson")
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| v.get("auths").cloned())
        .or_else(|| {
            data.get(".dockercfg")
                .and_then(|b| serde_json::from_slice(b).ok())
        });
    let Some(serde_json::Value::Object(auths)) = parsed else {
        return Vec::new();
    };
    auths
        .into_iter()
        .filter_map(|(registry, entry)| {
            let field = |k: &str| entry.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            let (username, password) = match (field("username"), field("password")) {
                (Some(u), Some(p)) => (u, p),
                _ => {
                    let auth = field("auth")?;
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth)
                        .ok()?;
                    let text = String::from_utf8(decoded).ok()?;
                    let (u, p) = text.split_once(':')?;
                    (u.to_owned(), p.to_owned())
                }
            };
            let registry = registry
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned();
            Some(types::RegistryCredential {
                registry,
                username,
                password,
            })
        })
        .collect()
}

/// Annotation on ORCA's copy of a Kubernetes pod: the Kubernetes object's uid
/// (ORCA's own uid changes when it recreates a pod elsewhere).
pub const KUBERNETES_UID: &str = "kubernetes.orca.research/uid";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_reads_auth_and_user_password_forms() {
        let json = serde_json::json!({"auths": {
            "https://reg.example:5000/": {"auth": base64::engine::general_purpose::STANDARD.encode("u1:p:1")},
            "other.example": {"username": "u2", "password": "p2"},
        }});
        let data = BTreeMap::from([(
            ".dockerconfigjson".to_owned(),
            json.to_string().into_bytes(),
        )]);
        let mut creds = docker_config(&data);
        creds.sort_by(|a, b| a.registry.cmp(&b.registry));
        assert_eq!(creds.len(), 2);
        assert_eq!(creds[1].registry, "reg.example:5000");
        assert_eq!(
            (creds[1].username.as_str(), creds[1].password.as_str()),
            ("u1", "p:1")
        );
        assert_eq!(creds[0].registry, "other.example");
    }

    #[test]
    fn resource_fields_round_up_in_divisor_units() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "a",
            "resources": {"limits": {"cpu": "1500m", "memory": "64Mi"}, "requests": {"cpu": "250m"}},
        }))
        .unwrap();
        let sel = |r: &str, d: Option<&str>| k8s_openapi::api::core::v1::ResourceFieldSelector {
            resource: r.into(),
            divisor: d.map(|d| k8s_openapi::apimachinery::pkg::api::resource::Quantity(d.into())),
            container_name: None,
        };
        assert_eq!(resource_field(&c, &sel("limits.cpu", None)).unwrap(), "2");
        assert_eq!(
            resource_field(&c, &sel("requests.cpu", Some("1m"))).unwrap(),
            "250"
        );
        assert_eq!(
            resource_field(&c, &sel("limits.memory", Some("1Mi"))).unwrap(),
            "64"
        );
        assert!(resource_field(&c, &sel("limits.gpu", None)).is_none());
    }
}
