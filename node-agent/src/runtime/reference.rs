//! Image references, parsed and normalised as containerd and Docker do
//! (`busybox` → `docker.io/library/busybox:latest`), without a regex engine:
//! the agent parses a reference for every container it starts, and a compiled
//! reference regex costs megabytes of resident memory for the agent's lifetime.

use std::fmt;

/// The registry Docker Hub images live in.
const DOCKER_HUB: &str = "docker.io";

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag; `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// `algorithm:hex` digest.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses a reference, naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > 4096 {
            return Err("empty or too long".into());
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                let (algo, hex) = digest
                    .split_once(':')
                    .ok_or("digest must be algorithm:hex")?;
                let hex_ok = hex.len() >= 32
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
                if algo.is_empty()
                    || !algo
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                    || !hex_ok
                {
                    return Err(format!("invalid digest {digest:?}"));
                }
                (rest, Some(digest.to_owned()))
            }
            None => (text, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && !tag.starts_with(['.', '-'])
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !valid {
                return Err(format!("invalid tag {tag:?}"));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_owned(), path.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        if !valid_host(&registry) {
            return Err(format!("invalid registry {registry:?}"));
        }
        if path.is_empty() || !path.split('/').all(valid_component) {
            return Err(format!(
                "invalid repository {path:?} (lowercase letters, digits and separators)"
            ));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The reference for the registry client.
    pub fn to_oci(&self) -> oci_client::Reference {
        match (&self.digest, &self.tag) {
            (Some(d), _) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.clone(),
            ),
            (None, tag) => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                tag.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }
}

impl fmt::Display for ImageRef {
    /// The fully qualified form containerd names images by.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]".contains(&b))
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A path component: lowercase alphanumerics joined by `.`, `_`, `__` or `-`s.
fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    !c.is_empty()
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_like_containerd() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("user/app", "docker.io/user/app:latest"),
            (
                "127.0.0.1:5000/orca/busybox:test",
                "127.0.0.1:5000/orca/busybox:test",
            ),
            ("localhost/x", "localhost/x:latest"),
            (
                "registry.example.org/a/b/c:v1",
                "registry.example.org/a/b/c:v1",
            ),
            (
                "nvcr.io/nvidia/pytorch:24.01-py3",
                "nvcr.io/nvidia/pytorch:24.01-py3",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(ImageRef::parse(text).unwrap().to_string(), want, "{text}");
        }
        let d = "sha256:90bb664504369e5128edfbfa6f412bad12ba170833e0d1f47866070b0cfbe2c2";
        let r = ImageRef::parse(&format!("r.io/x@{d}")).unwrap();
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(d)));
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in [
            "",
            "UPPER/case",
            "a::b",
            "x:",
            "x@sha256:zz",
            "a//b",
            "-a",
            "host:port:x/y/z:",
            "a/b:-tag",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
