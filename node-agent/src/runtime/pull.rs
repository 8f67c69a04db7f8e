//! Image pulls into containerd, done as containerd's Go client does them.
//!
//! containerd 1.6 (Debian 12's) has no server-side pull, so the agent:
//! 1. resolves the reference with an OCI registry client (`oci-client`): the
//!    manifest, or the index and then this platform's manifest;
//! 2. writes config and layer blobs into containerd's content store
//!    (`Content.Write`, streamed, under a lease so garbage collection cannot take
//!    them mid-pull), then the manifest with `containerd.io/gc.ref.content.*`
//!    labels that keep its config and layers alive;
//! 3. unpacks the layers into overlayfs snapshots named by their chain ids
//!    (`Snapshots.Prepare` + `Diff.Apply` + `Snapshots.Commit`), and labels the
//!    config with the top snapshot so the image keeps its snapshots alive;
//! 4. records the image (`Images.Create`, or `Update` when it exists).
//!
//! Concurrent pulls of one image are collapsed: the second waits for the first
//! and reuses its result.
//!
//! Registry scheme: plain HTTP for loopback registries and those listed as
//! insecure (containerd's own default for `localhost`/`127.0.0.1`), HTTPS
//! otherwise.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use containerd_client::services::v1::Info as ContentInfo;
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, GetImageRequest, Image, InfoRequest, ReadContentRequest,
    UpdateImageRequest, UpdateRequest, WriteAction, WriteContentRequest,
    content_client::ContentClient, diff_client::DiffClient, images_client::ImagesClient, snapshots,
};
use containerd_client::types::Descriptor;
use futures::{Stream, StreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client as RegistryClient, Reference};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tracing::info;

use super::{Containerd, RuntimeError, SNAPSHOTTER, op};
use oci_spec::image::ImageConfiguration;

use crate::spec::{ImageConfig, PullPolicy};

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Size of the chunks sent to `Content.Write`.
const WRITE_CHUNK: usize = 1 << 20;

/// An image present in containerd, ready for containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// containerd's image name, the fully qualified reference (`docker.io/library/x:tag`).
    pub name: String,
    /// Manifest digest.
    pub digest: String,
    /// The image's process defaults.
    pub config: ImageConfig,
    /// Chain id of the top layer: the parent snapshot for containers.
    pub chain_id: String,
}

/// Credentials for one registry host.
#[derive(Debug, Clone)]
pub struct Credential {
    /// Registry `host[:port]`.
    pub registry: String,
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

/// How registries are reached: plain HTTP for loopback registries and the
/// `insecure` list, HTTPS otherwise; a registry with a CA of its own is reached
/// over HTTPS trusting that CA only (a loopback registry with a CA too).
#[derive(Debug, Clone, Default)]
pub struct RegistryAccess {
    /// Registries (`host[:port]`) reached over plain HTTP.
    pub insecure: Vec<String>,
    /// PEM CA bundles by registry `host[:port]`.
    pub ca_pems: HashMap<String, Vec<u8>>,
}

/// Pulls images into containerd, one pull per image at a time.
pub struct Puller {
    ctrd: Containerd,
    access: RegistryAccess,
    /// Per-image lock and the time of the last completed pull.
    inflight: std::sync::Mutex<HashMap<String, Arc<Mutex<Option<Instant>>>>>,
}

impl Puller {
    /// A puller on `ctrd`; `insecure` lists registries reached over plain HTTP.
    pub fn new(ctrd: Containerd, access: RegistryAccess) -> Self {
        Self {
            ctrd,
            access,
            inflight: Default::default(),
        }
    }

    /// Makes the image present according to the pull policy and returns it.
    pub async fn ensure(
        &self,
        image: &str,
        policy: PullPolicy,
        credentials: &[Credential],
    ) -> Result<ImageInfo, RuntimeError> {
        let parsed =
            super::reference::ImageRef::parse(image).map_err(|e| RuntimeError::BadImage {
                reference: image.to_owned(),
                reason: format!("not a valid reference: {e}"),
            })?;
        let name = parsed.to_string();
        let reference = parsed.to_oci();
        let asked = Instant::now();
        let slot = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(name.clone()).or_default().clone()
        };
        let mut last_pull = slot.lock().await;
        let present = self.local(&name).await?;
        let fresh = last_pull.is_some_and(|t| t >= asked);
        match (policy, present) {
            (PullPolicy::Never, Some(info)) | (PullPolicy::IfNotPresent, Some(info)) => {
                return Ok(info);
            }
            (PullPolicy::Always, Some(info)) if fresh => return Ok(info),
            (PullPolicy::Never, None) => {
                return Err(RuntimeError::ImageNeverPull {
                    reference: image.to_owned(),
                });
            }
            _ => {}
        }
        let started = Instant::now();
        let info = self.pull(&reference, image, credentials).await?;
        *last_pull = Some(Instant::now());
        info!(image = %name, digest = %info.digest, ms = started.elapsed().as_millis() as u64, "image pulled");
        Ok(info)
    }

    /// The image if containerd has it, with its config and top chain id.
    pub async fn local(&self, name: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        let mut images = ImagesClient::new(self.ctrd.channel());
        let image = match images
            .get(self.ctrd.request(
                GetImageRequest {
                    name: name.to_owned(),
                },
                None,
            ))
            .await
        {
            Ok(resp) => resp.into_inner().image,
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(op("Images.Get")(s)),
        };
        let Some(target) = image.and_then(|i| i.target) else {
            return Ok(None);
        };
        let manifest: Value = self.read_json(name, &target.digest).await?;
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let raw_config = self.read(&config_digest).await?;
        let ParsedConfig {
            config, chain_id, ..
        } = parse_config(name, &raw_config)?;
        // The image record can outlive its snapshots (removed by hand): then it is not usable.
        if !self.snapshot_exists(&chain_id).await? {
            return Ok(None);
        }
        Ok(Some(ImageInfo {
            name: name.to_owned(),
            digest: target.digest,
            config,
            chain_id,
        }))
    }

    async fn pull(
        &self,
        reference: &Reference,
        image: &str,
        credentials: &[Credential],
    ) -> Result<ImageInfo, RuntimeError> {
        let registry = reference.resolve_registry().to_owned();
        let ca = self.access.ca_pems.get(&registry);
        let protocol = if ca.is_none()
            && (is_loopback(&registry) || self.access.insecure.contains(&registry))
        {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let tls_certs_only = ca
            .map(|pem| Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.clone(),
            })
            .into_iter()
            .collect();
        let client = RegistryClient::new(ClientConfig {
            protocol,
            tls_certs_only,
            ..Default::default()
        });
        let auth = credentials
            .iter()
            .find(|c| c.registry == registry || c.registry == reference.registry())
            .map(|c| RegistryAuth::Basic(c.username.clone(), c.password.clone()))
            .unwrap_or(RegistryAuth::Anonymous);
        let pull_err = |e: oci_client::errors::OciDistributionError| RuntimeError::ImagePull {
            reference: image.to_owned(),
            message: error_chain(&e),
        };
        let bad = |reason: String| RuntimeError::BadImage {
            reference: image.to_owned(),
            reason,
        };

        let (mut raw, mut digest) = client
            .pull_manifest_raw(reference, &auth, MANIFEST_TYPES)
            .await
            .map_err(pull_err)?;
        let mut doc: Value =
            serde_json::from_slice(&raw).map_err(|e| bad(format!("manifest: {e}")))?;
        if doc["manifests"].is_array() {
            let chosen = choose_platform(&doc)
                .ok_or_else(|| bad(format!("no manifest for linux/{}", arch())))?;
            let by_digest = reference.clone_with_digest(chosen);
            (raw, digest) = client
                .pull_manifest_raw(&by_digest, &auth, MANIFEST_TYPES)
                .await
                .map_err(pull_err)?;
            doc = serde_json::from_slice(&raw).map_err(|e| bad(format!("manifest: {e}")))?;
        }
        let media_type = doc["mediaType"]
            .as_str()
            .unwrap_or(MANIFEST_TYPES[0])
            .to_owned();
        let config_desc =
            descriptor(&doc["config"]).ok_or_else(|| bad("manifest has no config".into()))?;
        let layers: Vec<OciDescriptor> = doc["layers"]
            .as_array()
            .map(|a| a.iter().filter_map(descriptor).collect())
            .unwrap_or_default();

        let lease = self.ctrd.create_lease("pull").await?;
        let result = async {
            let mut config_raw = Vec::new();
            client
                .pull_blob(reference, &config_desc, &mut config_raw)
                .await
                .map_err(pull_err)?;
            let ParsedConfig {
                config,
                diff_ids,
                chain_id,
            } = parse_config(image, &config_raw)?;
            if diff_ids.len() != layers.len() {
                return Err(bad(format!(
                    "{} layers but {} diff ids",
                    layers.len(),
                    diff_ids.len()
                )));
            }
            self.write(
                &lease,
                &config_desc,
                futures::stream::iter([Ok(config_raw.into())]),
                HashMap::new(),
            )
            .await?;
            for (layer, diff_id) in layers.iter().zip(&diff_ids) {
                if !self.content_exists(&layer.digest).await? {
                    let blob = client
                        .pull_blob_stream(reference, layer)
                        .await
                        .map_err(pull_err)?;
                    let labels =
                        HashMap::from([("containerd.io/uncompressed".to_owned(), diff_id.clone())]);
                    self.write(&lease, layer, blob.stream, labels).await?;
                }
            }
            let mut labels = HashMap::from([(
                "containerd.io/gc.ref.content.config".to_owned(),
                config_desc.digest.clone(),
            )]);
            for (i, layer) in layers.iter().enumerate() {
                labels.insert(
                    format!("containerd.io/gc.ref.content.l.{i}"),
                    layer.digest.clone(),
                );
            }
            let manifest_desc = OciDescriptor {
                media_type: media_type.clone(),
                digest: digest.clone(),
                size: raw.len() as i64,
                urls: None,
                annotations: None,
                artifact_type: None,
            };
            self.write(
                &lease,
                &manifest_desc,
                futures::stream::iter([Ok(raw.clone())]),
                labels,
            )
            .await?;
            let top = self.unpack(&lease, &layers, &diff_ids).await?;
            if top != chain_id {
                return Err(bad(format!(
                    "unpacked chain {top} differs from the config's {chain_id}"
                )));
            }
            self.label_config(&config_desc.digest, &chain_id).await?;
            let info = ImageInfo {
                name: reference.whole(),
                digest: digest.clone(),
                config,
                chain_id,
            };
            self.record_image(&info.name, &media_type, &digest, raw.len() as i64)
                .await?;
            Ok(info)
        }
        .await;
        self.ctrd.delete_lease(&lease).await;
        result
    }

    async fn content_exists(&self, digest: &str) -> Result<bool, RuntimeError> {
        let req = InfoRequest {
            digest: digest.to_owned(),
        };
        match ContentClient::new(self.ctrd.channel())
            .info(self.ctrd.request(req, None))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(op("Content.Info")(s)),
        }
    }

    /// Streams a blob into the content store and commits it with `labels`.
    /// Content already there (another tag of the same image, a pull racing
    /// this one) is not an error: containerd says AlreadyExists at whichever
    /// step it notices, the open, a write or the commit.
    async fn write<S>(
        &self,
        lease: &str,
        desc: &OciDescriptor,
        data: S,
        labels: HashMap<String, String>,
    ) -> Result<(), RuntimeError>
    where
        S: Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + Unpin,
    {
        match self.write_once(lease, desc, data, labels).await {
            Err(RuntimeError::Containerd { source, .. })
                if source.code() == tonic::Code::AlreadyExists =>
            {
                Ok(())
            }
            other => other,
        }
    }

    async fn write_once<S>(
        &self,
        lease: &str,
        desc: &OciDescriptor,
        data: S,
        labels: HashMap<String, String>,
    ) -> Result<(), RuntimeError>
    where
        S: Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + Unpin,
    {
        let (tx, rx) = mpsc::channel::<WriteContentRequest>(2);
        let write_ref = format!(
            "orca-{}-{}",
            desc.digest.replace(':', "-"),
            uuid::Uuid::new_v4().simple()
        );
        let base = WriteContentRequest {
            r#ref: write_ref,
            total: desc.size,
            expected: desc.digest.clone(),
            ..Default::default()
        };
        let mut client = ContentClient::new(self.ctrd.channel());
        let send = |req: WriteContentRequest| {
            let tx = tx.clone();
            async move { tx.send(req).await.is_ok() }
        };
        send(WriteContentRequest {
            action: WriteAction::Stat as i32,
            ..base.clone()
        })
        .await;
        let mut responses = client
            .write(self.ctrd.request(ReceiverStream::new(rx), Some(lease)))
            .await
            .map_err(op("Content.Write"))?
            .into_inner();
        let mut next = async || responses.message().await.map_err(op("Content.Write"));
        next().await?;
        let mut offset: i64 = 0;
        let mut data = data;
        let bad_blob = |message: String| RuntimeError::ImagePull {
            reference: desc.digest.clone(),
            message,
        };
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|e| bad_blob(format!("reading blob: {e}")))?;
            for piece in chunk.chunks(WRITE_CHUNK) {
                let req = WriteContentRequest {
                    action: WriteAction::Write as i32,
                    offset,
                    data: piece.to_vec(),
                    ..base.clone()
                };
                send(req).await;
                next().await?;
                offset += piece.len() as i64;
            }
        }
        let commit = WriteContentRequest {
            action: WriteAction::Commit as i32,
            offset,
            labels,
            ..base.clone()
        };
        send(commit).await;
        next().await.map(drop)
    }

    async fn unpack(
        &self,
        lease: &str,
        layers: &[OciDescriptor],
        diff_ids: &[String],
    ) -> Result<String, RuntimeError> {
        let mut snaps = snapshots::snapshots_client::SnapshotsClient::new(self.ctrd.channel());
        let mut differ = DiffClient::new(self.ctrd.channel());
        let mut parent = String::new();
        for (layer, diff_id) in layers.iter().zip(diff_ids) {
            let chain = chain_id(&parent, diff_id);
            if self.snapshot_exists(&chain).await? {
                parent = chain;
                continue;
            }
            let key = format!("extract-{}-{}", uuid::Uuid::new_v4().simple(), chain);
            let prepare = snapshots::PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_owned(),
                key: key.clone(),
                parent: parent.clone(),
                labels: HashMap::new(),
            };
            let mounts = snaps
                .prepare(self.ctrd.request(prepare, Some(lease)))
                .await
                .map_err(op("Snapshots.Prepare"))?
                .into_inner()
                .mounts;
            let apply = ApplyRequest {
                diff: Some(Descriptor {
                    media_type: layer.media_type.clone(),
                    digest: layer.digest.clone(),
                    size: layer.size,
                    annotations: HashMap::new(),
                }),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            };
            let applied = differ
                .apply(self.ctrd.request(apply, Some(lease)))
                .await
                .map_err(op("Diff.Apply"))?
                .into_inner()
                .applied
                .map(|d| d.digest)
                .unwrap_or_default();
            if &applied != diff_id {
                return Err(RuntimeError::BadImage {
                    reference: layer.digest.clone(),
                    reason: format!("layer unpacked to {applied}, config says {diff_id}"),
                });
            }
            let commit = snapshots::CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_owned(),
                name: chain.clone(),
                key: key.clone(),
                labels: HashMap::new(),
            };
            match snaps.commit(self.ctrd.request(commit, Some(lease))).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::AlreadyExists => {
                    let rm = snapshots::RemoveSnapshotRequest {
                        snapshotter: SNAPSHOTTER.to_owned(),
                        key,
                    };
                    let _ = snaps.remove(self.ctrd.request(rm, None)).await;
                }
                Err(s) => return Err(op("Snapshots.Commit")(s)),
            }
            parent = chain;
        }
        Ok(parent)
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool, RuntimeError> {
        let req = snapshots::StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_owned(),
            key: key.to_owned(),
        };
        let mut snaps = snapshots::snapshots_client::SnapshotsClient::new(self.ctrd.channel());
        match snaps.stat(self.ctrd.request(req, None)).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(op("Snapshots.Stat")(s)),
        }
    }

    /// Labels the config blob with the image's top snapshot, so that the image
    /// keeps its unpacked snapshots from garbage collection.
    async fn label_config(&self, config_digest: &str, chain_id: &str) -> Result<(), RuntimeError> {
        let label = format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}");
        let req = UpdateRequest {
            info: Some(ContentInfo {
                digest: config_digest.to_owned(),
                labels: HashMap::from([(label.clone(), chain_id.to_owned())]),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![format!("labels.{label}")],
            }),
        };
        ContentClient::new(self.ctrd.channel())
            .update(self.ctrd.request(req, None))
            .await
            .map_err(op("Content.Update"))?;
        Ok(())
    }

    async fn record_image(
        &self,
        name: &str,
        media_type: &str,
        digest: &str,
        size: i64,
    ) -> Result<(), RuntimeError> {
        let image = Image {
            name: name.to_owned(),
            target: Some(Descriptor {
                media_type: media_type.to_owned(),
                digest: digest.to_owned(),
                size,
                annotations: HashMap::new(),
            }),
            ..Default::default()
        };
        let mut images = ImagesClient::new(self.ctrd.channel());
        let create = CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        };
        match images.create(self.ctrd.request(create, None)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                let update = UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                    source_date_epoch: None,
                };
                images
                    .update(self.ctrd.request(update, None))
                    .await
                    .map_err(op("Images.Update"))?;
                Ok(())
            }
            Err(s) => Err(op("Images.Create")(s)),
        }
    }

    async fn read(&self, digest: &str) -> Result<Vec<u8>, RuntimeError> {
        let req = ReadContentRequest {
            digest: digest.to_owned(),
            offset: 0,
            size: 0,
        };
        let mut stream = ContentClient::new(self.ctrd.channel())
            .read(self.ctrd.request(req, None))
            .await
            .map_err(op("Content.Read"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(op("Content.Read"))? {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    async fn read_json(&self, name: &str, digest: &str) -> Result<Value, RuntimeError> {
        let raw = self.read(digest).await?;
        serde_json::from_slice(&raw).map_err(|e| RuntimeError::BadImage {
            reference: name.to_owned(),
            reason: format!("{digest}: {e}"),
        })
    }
}

/// An error and its causes, `outer: inner: innermost` (a TLS or connection
/// failure is only visible in the causes of the registry client's error).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

fn is_loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The digest of this platform's manifest in an index.
fn choose_platform(index: &Value) -> Option<String> {
    index["manifests"].as_array()?.iter().find_map(|m| {
        let p = &m["platform"];
        (p["os"] == "linux" && p["architecture"] == arch())
            .then(|| m["digest"].as_str().map(str::to_owned))?
    })
}

fn descriptor(v: &Value) -> Option<OciDescriptor> {
    Some(OciDescriptor {
        media_type: v["mediaType"].as_str()?.to_owned(),
        digest: v["digest"].as_str()?.to_owned(),
        size: v["size"].as_i64()?,
        urls: None,
        annotations: None,
        artifact_type: None,
    })
}

/// An image config as pulled: the process defaults, the layers' diff ids and
/// the top layer's chain id.
struct ParsedConfig {
    config: ImageConfig,
    diff_ids: Vec<String>,
    chain_id: String,
}

/// Reads an image config with the image spec's own type.
fn parse_config(reference: &str, raw: &[u8]) -> Result<ParsedConfig, RuntimeError> {
    let oci = ImageConfiguration::from_reader(raw).map_err(|e| RuntimeError::BadImage {
        reference: reference.to_owned(),
        reason: format!("config: {e}"),
    })?;
    let diff_ids = oci.rootfs().diff_ids().clone();
    let chain_id = diff_ids
        .iter()
        .fold(String::new(), |parent, d| chain_id(&parent, d));
    if chain_id.is_empty() {
        return Err(RuntimeError::BadImage {
            reference: reference.to_owned(),
            reason: "image has no layers".into(),
        });
    }
    Ok(ParsedConfig {
        config: ImageConfig::from_oci(&oci),
        diff_ids,
        chain_id,
    })
}

/// The chain id of a layer over `parent` (the image spec's ChainID).
pub fn chain_id(parent: &str, diff_id: &str) -> String {
    if parent.is_empty() {
        return diff_id.to_owned();
    }
    let digest = Sha256::digest(format!("{parent} {diff_id}").as_bytes());
    format!("sha256:{}", hex::encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_image_spec() {
        let a = "sha256:aaaa";
        assert_eq!(chain_id("", a), a);
        let expected = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(b"sha256:aaaa sha256:bbbb"))
        );
        assert_eq!(chain_id(a, "sha256:bbbb"), expected);
    }

    #[test]
    fn loopback_registries_use_plain_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(!is_loopback("registry.example.org"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }

    #[test]
    fn index_resolves_to_this_platform() {
        let index = serde_json::json!({"manifests": [
            {"digest": "sha256:other", "platform": {"os": "linux", "architecture": "s390x"}},
            {"digest": "sha256:mine", "platform": {"os": "linux", "architecture": arch()}},
        ]});
        assert_eq!(choose_platform(&index).as_deref(), Some("sha256:mine"));
    }
}
