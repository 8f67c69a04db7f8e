//! The control plane's backup archive format: a gzip'd tar, written and read
//! in memory. Its own crate so that the `orca` CLI checks what it downloads
//! without linking the store (sled) or anything else of the control plane.
//!
//! ```text
//! manifest.json      format and version, ORCA version, creation time, the
//!                    store's trees and key counts, size and SHA-256 of every
//!                    other entry
//! store.snapshot     every tree of the store (below)
//! pki/ca.pem         the cluster CA's certificate   } copies of the store's CA
//! pki/ca-key.pem     the cluster CA's private key   } record, for operators
//! admin.yaml         the admin credentials file, when the data dir had one
//! secrets.key        the key Secrets are sealed with, when the data dir had one
//! ```
//!
//! Every entry is a regular file with mode 0600 (the archive holds the CA's
//! key). Reading checks everything before anything is used: gzip's CRC, that
//! only these entries are present and each once, the manifest's format
//! version, each file's SHA-256, that the snapshot decodes and has the trees
//! and key counts the manifest names, and that the CA files equal the CA
//! record in the snapshot (which is what the control plane loads).
//!
//! `store.snapshot` is [`SNAPSHOT_MAGIC`], then a `u64` count of trees, then
//! per tree its name and its count of entries followed by the entries' keys and
//! values; names, keys and values are each a `u64` length and that many bytes;
//! integers are big-endian.

use std::collections::BTreeMap;
use std::io::{self, Read, Write as _};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use orca_model::records::{CaRecord, Snapshot, TreeSnapshot};

/// What `manifest.json` says the archive is.
pub const FORMAT: &str = "orca-control-plane-backup";
/// The archive layout this version writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest's entry.
pub const MANIFEST: &str = "manifest.json";
/// The store snapshot's entry.
pub const STORE: &str = "store.snapshot";
/// The CA certificate's entry.
pub const CA_CERT: &str = "pki/ca.pem";
/// The CA private key's entry.
pub const CA_KEY: &str = "pki/ca-key.pem";
/// The admin credentials file's entry.
pub const ADMIN_CREDENTIALS: &str = "admin.yaml";
/// The secrets key's entry (the control plane's `objects::sealing`).
pub const SECRETS_KEY: &str = "secrets.key";
/// The first bytes of `store.snapshot`.
pub const SNAPSHOT_MAGIC: &[u8] = b"ORCA-STORE-SNAPSHOT\n";
/// The store tree holding the CA record, and its key (the control plane's `pki`).
const CA_TREE: &str = "pki";
const CA_KEY_IN_TREE: &[u8] = b"ca";

/// Errors of writing or reading an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The bytes are not a complete gzip'd tar (truncated, a flipped byte
    /// caught by gzip's CRC or the deflate decoder, or another kind of file).
    #[error("the archive is not a readable gzip'd tar (corrupt or truncated)")]
    Unreadable {
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// An entry that no backup of this format holds.
    #[error(
        "unexpected entry {path:?}: not part of an ORCA control plane backup (format version {FORMAT_VERSION})"
    )]
    UnexpectedEntry {
        /// The entry's path.
        path: String,
    },
    /// An entry present twice.
    #[error("entry {path:?} appears twice")]
    DuplicateEntry {
        /// The entry's path.
        path: String,
    },
    /// No `manifest.json`.
    #[error("the archive has no {MANIFEST}: not an ORCA control plane backup")]
    NoManifest,
    /// `manifest.json` is not a manifest.
    #[error("{MANIFEST} does not parse")]
    Manifest {
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// Another format, or a version this build does not read.
    #[error(
        "the archive is {format:?} version {version}; this orca reads {FORMAT:?} version {FORMAT_VERSION}"
    )]
    Unsupported {
        /// The manifest's format.
        format: String,
        /// The manifest's format version.
        version: u32,
    },
    /// A file every backup holds is not in the manifest.
    #[error("{MANIFEST} does not list {path}, which every backup holds")]
    Unlisted {
        /// The file.
        path: String,
    },
    /// The manifest lists a file the archive lacks, or the archive holds a
    /// file the manifest does not list.
    #[error("{path} is {}", if *.in_manifest { "listed in the manifest but missing from the archive" } else { "in the archive but not in the manifest" })]
    Mismatch {
        /// The file.
        path: String,
        /// Whether the manifest lists it (and the archive lacks it).
        in_manifest: bool,
    },
    /// A file's content does not have the manifest's checksum.
    #[error("{path} is corrupt: its SHA-256 is {actual}, {MANIFEST} says {expected}")]
    Checksum {
        /// The file.
        path: String,
        /// The manifest's SHA-256 (hex).
        expected: String,
        /// The content's SHA-256 (hex).
        actual: String,
    },
    /// `store.snapshot` does not decode, or disagrees with the manifest.
    #[error("{STORE} is invalid: {reason}")]
    Snapshot {
        /// What is wrong.
        reason: String,
    },
    /// The CA is missing from the snapshot or the CA files disagree with it.
    #[error("the CA in the archive is invalid: {reason}")]
    Ca {
        /// What is wrong.
        reason: String,
    },
    /// Building the archive failed.
    #[error("cannot build the archive")]
    Write {
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The layout's version, [`FORMAT_VERSION`] when written by this build.
    pub format_version: u32,
    /// The version of the control plane that wrote it.
    pub orca_version: String,
    /// When the snapshot was taken.
    pub created_at: jiff::Timestamp,
    /// The store's trees, by name, with their key counts.
    pub trees: Vec<TreeCount>,
    /// Every entry but the manifest.
    pub files: Vec<FileEntry>,
}

/// A tree of the store and how many keys it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeCount {
    /// The tree's name.
    pub name: String,
    /// Its number of keys.
    pub keys: u64,
}

/// An entry of the archive as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path in the archive.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
}

impl Manifest {
    /// The key counts of ORCA's trees, for people: `events 12, nodes 1, ...`
    /// (sled's default tree, always empty, left out).
    pub fn summary(&self) -> String {
        self.trees
            .iter()
            .filter(|t| !t.name.starts_with("__sled__"))
            .map(|t| format!("{} {}", t.name, t.keys))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    /// Every tree of the store.
    pub store: Snapshot,
    /// The CA certificate, PEM (equal to the store's CA record).
    pub ca_cert_pem: String,
    /// The CA private key, PEM (equal to the store's CA record).
    pub ca_key_pem: String,
    /// The admin credentials file, when the data directory had one.
    pub admin_credentials: Option<Vec<u8>>,
    /// The key the store's Secrets are sealed with, when the data directory
    /// had one (without it they cannot be opened).
    pub secrets_key: Option<Vec<u8>>,
}

/// A verified archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its content.
    pub contents: Contents,
}

/// The CA record in a snapshot.
pub fn ca_record(store: &Snapshot) -> Result<CaRecord, ArchiveError> {
    let missing = || ArchiveError::Ca {
        reason: format!("the store has no CA record (tree {CA_TREE:?}, key \"ca\")"),
    };
    let tree = store
        .trees
        .iter()
        .find(|t| t.name == CA_TREE)
        .ok_or_else(missing)?;
    let (_, bytes) = tree
        .entries
        .iter()
        .find(|(k, _)| k == CA_KEY_IN_TREE)
        .ok_or_else(missing)?;
    CaRecord::decode(bytes.as_slice()).map_err(|e| ArchiveError::Ca {
        reason: format!("the store's CA record does not decode: {e}"),
    })
}

impl Contents {
    /// The contents of a backup of `store` (its CA files taken from its CA
    /// record), with the admin credentials file if there is one.
    pub fn new(store: Snapshot, admin_credentials: Option<Vec<u8>>) -> Result<Self, ArchiveError> {
        let ca = ca_record(&store)?;
        Ok(Self {
            store,
            ca_cert_pem: ca.cert_pem,
            ca_key_pem: ca.key_pem,
            admin_credentials,
            secrets_key: None,
        })
    }

    /// The same contents with the secrets key.
    pub fn with_secrets_key(mut self, key: Option<Vec<u8>>) -> Self {
        self.secrets_key = key;
        self
    }
}

fn sha256(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// Writes the archive of `contents`, stamped `created_at`; returns it and its manifest.
pub fn write(
    contents: &Contents,
    created_at: jiff::Timestamp,
) -> Result<(Vec<u8>, Manifest), ArchiveError> {
    let snapshot = encode_snapshot(&contents.store);
    let mut files: Vec<(&str, &[u8])> = vec![
        (STORE, &snapshot),
        (CA_CERT, contents.ca_cert_pem.as_bytes()),
        (CA_KEY, contents.ca_key_pem.as_bytes()),
    ];
    if let Some(admin) = &contents.admin_credentials {
        files.push((ADMIN_CREDENTIALS, admin));
    }
    if let Some(key) = &contents.secrets_key {
        files.push((SECRETS_KEY, key));
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        orca_version: env!("CARGO_PKG_VERSION").into(),
        created_at,
        trees: contents
            .store
            .trees
            .iter()
            .map(|t| TreeCount {
                name: t.name.clone(),
                keys: t.entries.len() as u64,
            })
            .collect(),
        files: files
            .iter()
            .map(|(path, data)| FileEntry {
                path: (*path).into(),
                size: data.len() as u64,
                sha256: sha256(data),
            })
            .collect(),
    };
    let mut json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| ArchiveError::Write { source: e.into() })?;
    json.push(b'\n');
    let write = |source| ArchiveError::Write { source };
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    let mtime = u64::try_from(created_at.as_second()).unwrap_or(0);
    for (path, data) in std::iter::once((MANIFEST, json.as_slice())).chain(files) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(mtime);
        tar.append_data(&mut header, path, data).map_err(write)?;
    }
    let gzip = tar.into_inner().map_err(write)?;
    let mut bytes = gzip.finish().map_err(write)?;
    bytes.flush().map_err(write)?;
    Ok((bytes, manifest))
}

/// Reads and verifies an archive (see the module docs for what is checked).
pub fn read(reader: impl Read) -> Result<Backup, ArchiveError> {
    let mut entries = read_entries(reader)?;
    let json = entries.remove(MANIFEST).ok_or(ArchiveError::NoManifest)?;
    let manifest: Manifest =
        serde_json::from_slice(&json).map_err(|source| ArchiveError::Manifest { source })?;
    if manifest.format != FORMAT || manifest.format_version != FORMAT_VERSION {
        return Err(ArchiveError::Unsupported {
            format: manifest.format,
            version: manifest.format_version,
        });
    }
    for required in [STORE, CA_CERT, CA_KEY] {
        if !manifest.files.iter().any(|f| f.path == required) {
            return Err(ArchiveError::Unlisted {
                path: required.into(),
            });
        }
    }
    for file in &manifest.files {
        let data = entries
            .get(&file.path)
            .ok_or_else(|| ArchiveError::Mismatch {
                path: file.path.clone(),
                in_manifest: true,
            })?;
        let actual = sha256(data);
        if !actual.eq_ignore_ascii_case(&file.sha256) {
            return Err(ArchiveError::Checksum {
                path: file.path.clone(),
                expected: file.sha256.clone(),
                actual,
            });
        }
    }
    if let Some(path) = entries
        .keys()
        .find(|p| !manifest.files.iter().any(|f| &f.path == *p))
    {
        return Err(ArchiveError::Mismatch {
            path: path.clone(),
            in_manifest: false,
        });
    }
    let mut take = |path: &str| entries.remove(path).unwrap_or_default();
    let store = decode_snapshot(&take(STORE))?;
    let counts: Vec<TreeCount> = store
        .trees
        .iter()
        .map(|t| TreeCount {
            name: t.name.clone(),
            keys: t.entries.len() as u64,
        })
        .collect();
    if counts != manifest.trees {
        return Err(ArchiveError::Snapshot {
            reason: format!(
                "it holds trees {counts:?}, {MANIFEST} says {:?}",
                manifest.trees
            ),
        });
    }
    let text = |path: &str, data: Vec<u8>| {
        String::from_utf8(data).map_err(|_| ArchiveError::Ca {
            reason: format!("{path} is not UTF-8 PEM"),
        })
    };
    let ca_cert_pem = text(CA_CERT, take(CA_CERT))?;
    let ca_key_pem = text(CA_KEY, take(CA_KEY))?;
    let admin_credentials = manifest
        .files
        .iter()
        .any(|f| f.path == ADMIN_CREDENTIALS)
        .then(|| take(ADMIN_CREDENTIALS));
    let secrets_key = manifest
        .files
        .iter()
        .any(|f| f.path == SECRETS_KEY)
        .then(|| take(SECRETS_KEY));
    let ca = ca_record(&store)?;
    for (path, file, record) in [
        (CA_CERT, &ca_cert_pem, &ca.cert_pem),
        (CA_KEY, &ca_key_pem, &ca.key_pem),
    ] {
        if file != record {
            return Err(ArchiveError::Ca {
                reason: format!("{path} differs from the CA record in {STORE}"),
            });
        }
    }
    Ok(Backup {
        manifest,
        contents: Contents {
            store,
            ca_cert_pem,
            ca_key_pem,
            admin_credentials,
            secrets_key,
        },
    })
}

/// Every entry of the gzip'd tar, by path; only known entries, each once.
fn read_entries(reader: impl Read) -> Result<BTreeMap<String, Vec<u8>>, ArchiveError> {
    let unreadable = |source| ArchiveError::Unreadable { source };
    let mut archive = tar::Archive::new(GzDecoder::new(reader));
    let mut entries = BTreeMap::new();
    for entry in archive.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        let path = entry
            .path()
            .map_err(unreadable)?
            .to_string_lossy()
            .into_owned();
        let known = [
            MANIFEST,
            STORE,
            CA_CERT,
            CA_KEY,
            ADMIN_CREDENTIALS,
            SECRETS_KEY,
        ]
        .contains(&path.as_str());
        if !known || entry.header().entry_type() != tar::EntryType::Regular {
            return Err(ArchiveError::UnexpectedEntry { path });
        }
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(unreadable)?;
        if entries.insert(path.clone(), data).is_some() {
            return Err(ArchiveError::DuplicateEntry { path });
        }
    }
    // tar stops at its end-of-archive blocks; gzip checks its CRC and length
    // only at the end of its stream.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(unreadable)?;
    Ok(entries)
}

/// `store.snapshot`'s bytes for `snapshot`.
pub fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    fn put(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let mut out = SNAPSHOT_MAGIC.to_vec();
    out.extend_from_slice(&(snapshot.trees.len() as u64).to_be_bytes());
    for tree in &snapshot.trees {
        put(&mut out, tree.name.as_bytes());
        out.extend_from_slice(&(tree.entries.len() as u64).to_be_bytes());
        for (key, value) in &tree.entries {
            put(&mut out, key);
            put(&mut out, value);
        }
    }
    out
}

/// Decodes `store.snapshot`.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, ArchiveError> {
    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], ArchiveError> {
            match usize::try_from(n) {
                Ok(n) if n <= self.0.len() => {
                    let (head, rest) = self.0.split_at(n);
                    self.0 = rest;
                    Ok(head)
                }
                _ => Err(ArchiveError::Snapshot {
                    reason: format!("truncated: {what} needs {n} bytes, {} left", self.0.len()),
                }),
            }
        }
        fn u64(&mut self, what: &str) -> Result<u64, ArchiveError> {
            let b = self.take(8, what)?;
            Ok(u64::from_be_bytes(b.try_into().unwrap_or_default()))
        }
        fn bytes(&mut self, what: &str) -> Result<&'a [u8], ArchiveError> {
            let n = self.u64(what)?;
            self.take(n, what)
        }
    }
    let mut c = Cursor(bytes);
    if c.take(SNAPSHOT_MAGIC.len() as u64, "the header")? != SNAPSHOT_MAGIC {
        return Err(ArchiveError::Snapshot {
            reason: "it does not start with the snapshot header".into(),
        });
    }
    let count = c.u64("the tree count")?;
    let mut trees = Vec::new();
    for _ in 0..count {
        let name = std::str::from_utf8(c.bytes("a tree name")?)
            .map_err(|_| ArchiveError::Snapshot {
                reason: "a tree name is not UTF-8".into(),
            })?
            .to_owned();
        let n = c.u64("an entry count")?;
        let mut entries = Vec::new();
        for _ in 0..n {
            let key = c.bytes("a key")?.to_vec();
            let value = c.bytes("a value")?.to_vec();
            entries.push((key, value));
        }
        trees.push(TreeSnapshot { name, entries });
    }
    if !c.0.is_empty() {
        return Err(ArchiveError::Snapshot {
            reason: format!("{} bytes after the last tree", c.0.len()),
        });
    }
    Ok(Snapshot { trees })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(admin: bool) -> Contents {
        let ca = CaRecord {
            cert_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n".into(),
            admin_token_sha256: "ab".repeat(32),
        };
        let store = Snapshot {
            trees: vec![
                TreeSnapshot {
                    name: "__sled__default".into(),
                    entries: vec![],
                },
                TreeSnapshot {
                    name: "nodes".into(),
                    entries: vec![
                        (b"a".to_vec(), vec![1, 2, 3]),
                        (b"b".to_vec(), vec![]),
                        (vec![0, 255], vec![0; 1000]),
                    ],
                },
                TreeSnapshot {
                    name: "pki".into(),
                    entries: vec![(b"ca".to_vec(), ca.encode_to_vec())],
                },
            ],
        };
        Contents::new(store, admin.then(|| b"server: https://x\n".to_vec())).unwrap()
    }

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000).unwrap()
    }

    /// A gzip'd tar of these entries, as [`write`] makes them.
    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
        for (path, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o600);
            tar.append_data(&mut header, path, *data).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    /// The entries of an archive, in order.
    fn untar(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut tar = tar::Archive::new(GzDecoder::new(archive));
        tar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (e.path().unwrap().to_string_lossy().into_owned(), data)
            })
            .collect()
    }

    fn retar(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
        let borrowed: Vec<(&str, &[u8])> = entries
            .iter()
            .map(|(p, d)| (p.as_str(), d.as_slice()))
            .collect();
        tar_of(&borrowed)
    }

    #[test]
    fn an_archive_round_trips() {
        for admin in [true, false] {
            let contents = contents(admin);
            let (bytes, manifest) = write(&contents, now()).unwrap();
            let backup = read(bytes.as_slice()).unwrap();
            assert_eq!(backup.contents, contents);
            assert_eq!(backup.manifest, manifest);
            assert_eq!(manifest.format_version, FORMAT_VERSION);
            assert_eq!(manifest.summary(), "nodes 3, pki 1");
            let paths: Vec<String> = untar(&bytes).into_iter().map(|(p, _)| p).collect();
            let mut expected = vec![MANIFEST, STORE, CA_CERT, CA_KEY];
            if admin {
                expected.push(ADMIN_CREDENTIALS);
            }
            assert_eq!(paths, expected, "the manifest comes first");
        }
    }

    #[test]
    fn the_manifest_is_plain_json_with_a_checksum_per_file() {
        let (bytes, _) = write(&contents(true), now()).unwrap();
        let entries = untar(&bytes);
        let json: serde_json::Value = serde_json::from_slice(&entries[0].1).unwrap();
        assert_eq!(json["format"], FORMAT);
        assert_eq!(json["created_at"], "2027-01-15T08:00:00Z");
        assert_eq!(
            json["trees"][1],
            serde_json::json!({"name": "nodes", "keys": 3})
        );
        for (path, data) in &entries[1..] {
            let listed = json["files"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["path"] == path.as_str())
                .unwrap();
            assert_eq!(listed["sha256"], sha256(data), "{path}");
            assert_eq!(listed["size"], data.len(), "{path}");
        }
    }

    #[test]
    fn a_file_whose_checksum_differs_from_the_manifest_is_refused() {
        let (bytes, _) = write(&contents(true), now()).unwrap();
        let mut entries = untar(&bytes);
        let key = entries.iter_mut().find(|(p, _)| p == CA_KEY).unwrap();
        key.1[30] ^= 1;
        let err = read(retar(&entries).as_slice()).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::Checksum { path, .. } if path == CA_KEY),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("pki/ca-key.pem is corrupt"),
            "{err}"
        );
    }

    #[test]
    fn a_flipped_byte_in_the_compressed_stream_is_refused() {
        let (bytes, _) = write(&contents(true), now()).unwrap();
        let content = |archive: &[u8]| {
            let mut all = Vec::new();
            GzDecoder::new(archive).read_to_end(&mut all).map(|_| all)
        };
        let original = content(&bytes).unwrap();
        // Past gzip's 10-byte header (whose mtime no checksum covers): a flip
        // is caught by the deflate decoder, gzip's CRC or length, or the
        // manifest's checksums, unless it lands on bits deflate ignores (a
        // code length of an unused symbol, padding), where the content read
        // is the original.
        for at in 10..bytes.len() {
            let mut corrupt = bytes.clone();
            corrupt[at] ^= 0x20;
            if read(corrupt.as_slice()).is_ok() {
                assert_eq!(
                    content(&corrupt).ok().as_ref(),
                    Some(&original),
                    "byte {at} flipped: different content accepted"
                );
            }
        }
        let mut corrupt = bytes.clone();
        corrupt[bytes.len() / 2] ^= 0xff;
        let err = read(corrupt.as_slice()).unwrap_err();
        assert!(matches!(err, ArchiveError::Unreadable { .. }), "{err:?}");
        let err = read(&bytes[..bytes.len() / 2]).unwrap_err();
        assert!(matches!(err, ArchiveError::Unreadable { .. }), "{err:?}");
        let err = read(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(matches!(err, ArchiveError::Unreadable { .. }), "{err:?}");
        let err = read(&b"not a backup"[..]).unwrap_err();
        assert!(matches!(err, ArchiveError::Unreadable { .. }), "{err:?}");
    }

    #[test]
    fn entries_beyond_the_manifest_and_foreign_formats_are_refused() {
        let (bytes, _) = write(&contents(true), now()).unwrap();
        let entries = untar(&bytes);

        let mut extra = entries.clone();
        extra.push(("store/db".into(), b"x".to_vec()));
        let err = read(retar(&extra).as_slice()).unwrap_err();
        assert!(
            matches!(err, ArchiveError::UnexpectedEntry { .. }),
            "{err:?}"
        );

        let without_admin: Vec<_> = entries
            .iter()
            .filter(|(p, _)| p != ADMIN_CREDENTIALS)
            .cloned()
            .collect();
        let err = read(retar(&without_admin).as_slice()).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::Mismatch { path, in_manifest: true } if path == ADMIN_CREDENTIALS),
            "{err:?}"
        );

        let mut newer = entries.clone();
        let mut json: serde_json::Value = serde_json::from_slice(&newer[0].1).unwrap();
        json["format_version"] = 2.into();
        newer[0].1 = serde_json::to_vec(&json).unwrap();
        let err = read(retar(&newer).as_slice()).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Unsupported { version: 2, .. }),
            "{err:?}"
        );

        let err = read(retar(&entries[1..]).as_slice()).unwrap_err();
        assert!(matches!(err, ArchiveError::NoManifest), "{err:?}");
    }

    #[test]
    fn ca_files_must_match_the_stores_ca_record() {
        let mut contents = contents(false);
        contents.ca_cert_pem.push('\n');
        let (bytes, _) = write(&contents, now()).unwrap();
        let err = read(bytes.as_slice()).unwrap_err();
        assert!(matches!(err, ArchiveError::Ca { .. }), "{err:?}");

        let no_ca = Snapshot {
            trees: vec![TreeSnapshot {
                name: "pki".into(),
                entries: vec![],
            }],
        };
        assert!(matches!(
            Contents::new(no_ca, None),
            Err(ArchiveError::Ca { .. })
        ));
    }

    #[test]
    fn a_truncated_or_padded_snapshot_does_not_decode() {
        let bytes = encode_snapshot(&contents(false).store);
        assert_eq!(decode_snapshot(&bytes).unwrap(), contents(false).store);
        for cut in [0, 5, SNAPSHOT_MAGIC.len() + 3, bytes.len() - 1] {
            assert!(decode_snapshot(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(decode_snapshot(&padded).is_err());
        // A length far beyond the data is refused, not allocated.
        let mut huge = SNAPSHOT_MAGIC.to_vec();
        huge.extend_from_slice(&1u64.to_be_bytes());
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(decode_snapshot(&huge).is_err());
    }
}
