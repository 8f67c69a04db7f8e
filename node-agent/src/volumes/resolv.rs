//! The containers' `/etc/resolv.conf` from the pod's `dnsConfig`, as the
//! kubelet writes it: `nameserver` lines (at most 3, resolvers read no
//! more), one `search` line (at most 32 domains), one `options` line
//! (`name` or `name:value`). Written once per pod under its directory and
//! bind-mounted read-only into every container. A pod without `dnsConfig`
//! keeps the image's file.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::PodDNSConfig;

use super::VolumeError;
use super::error::io_err;

/// The file's text, or None when there is nothing to write.
pub fn render(config: &PodDNSConfig) -> Option<String> {
    let servers = config.nameservers.as_deref().unwrap_or_default();
    let searches = config.searches.as_deref().unwrap_or_default();
    let options = config.options.as_deref().unwrap_or_default();
    if servers.is_empty() && searches.is_empty() && options.is_empty() {
        return None;
    }
    let mut text = String::new();
    for s in servers.iter().take(3) {
        text.push_str(&format!("nameserver {s}\n"));
    }
    if !searches.is_empty() {
        let list: Vec<&str> = searches.iter().take(32).map(String::as_str).collect();
        text.push_str(&format!("search {}\n", list.join(" ")));
    }
    let opts: Vec<String> = options
        .iter()
        .filter_map(|o| {
            let name = o.name.as_deref()?;
            Some(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.to_owned(),
            })
        })
        .collect();
    if !opts.is_empty() {
        text.push_str(&format!("options {}\n", opts.join(" ")));
    }
    Some(text)
}

/// Writes `<pod_dir>/resolv.conf` when the pod has a `dnsConfig`; its path.
pub fn write(
    pod_dir: &Path,
    config: Option<&PodDNSConfig>,
) -> Result<Option<PathBuf>, VolumeError> {
    let Some(text) = config.and_then(render) else {
        return Ok(None);
    };
    let path = pod_dir.join("resolv.conf");
    std::fs::write(&path, text).map_err(io_err("cannot write the pod's resolv.conf", &path))?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_as_the_kubelet_does() {
        let config: PodDNSConfig = serde_json::from_value(serde_json::json!({
            "nameservers": ["10.0.0.1"],
            "searches": ["lab.svc.cluster.local", "svc.cluster.local", "cluster.local"],
            "options": [{"name": "ndots", "value": "5"}, {"name": "edns0"}]
        }))
        .unwrap();
        assert_eq!(
            render(&config).unwrap(),
            "nameserver 10.0.0.1\nsearch lab.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 edns0\n"
        );
        assert_eq!(render(&PodDNSConfig::default()), None);
    }
}
