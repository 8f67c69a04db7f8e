//! Backups of the control plane, taken while it runs, restored offline.
//!
//! # Background
//! Everything the control plane must keep lives in its data directory: the
//! sled store (nodes, pods, events, join tokens, and the cluster CA's
//! certificate and private key with the admin token's hash, in the `pki`
//! tree), `ca.pem` (the CA certificate, rewritten from the store at every
//! start) and `admin.yaml` (the admin credentials, written once when the
//! cluster is created). Losing the CA means every agent's and every user's
//! certificate and token stop verifying; losing the store means forgetting
//! every node and pod.
//!
//! # Design
//! - **Backup** (AdminService `Backup`, `orca backup FILE`): [`create`] copies
//!   the store with [`Store::snapshot`](orca_store::Store::snapshot) — the
//!   store as it stood at one instant between writes (see there) — reads
//!   `admin.yaml`, and writes a gzip'd tar in memory ([`archive`]), which the
//!   server streams in [`CHUNK_BYTES`] pieces. The CA files in the archive are
//!   taken from the same snapshot, so they always match the store.
//! - **Restore** (`orca-control-plane restore --from FILE --data-dir DIR`,
//!   offline): [`restore`] verifies the whole archive first, then builds the
//!   new data directory beside or inside the target and moves it into place.
//!
//! The snapshot is what a crash at that instant would have left (a prefix of
//! the writes), and a control plane started on a restored directory recovers
//! as after such a crash: agents keep their certificates (same CA) and
//! reconnect, their heartbeats report the pods' actual state, and pods created
//! after the backup are unknown to it: their agents report them, and, as for
//! any incarnation the control plane does not know, are told to stop them.
//!
//! # Limitations
//! - The whole archive is held in memory on both sides (the store is small:
//!   records of nodes, pods and events).
//! - The `local` provider's `hosts/` directory (the simulated hosts' disks:
//!   their keys, logs and state) is not part of a backup, as an EC2
//!   instance's disk is not.
//! - Writers wait while the snapshot is copied.

pub use orca_archive as archive;
pub mod restore;

use std::path::{Path, PathBuf};

pub use archive::{ArchiveError, Backup, Contents, Manifest};
use orca_store::{Store, StoreError};

/// Size of the pieces the Backup RPC streams (well under gRPC's default
/// 4 MiB message limit).
pub const CHUNK_BYTES: usize = 256 * 1024;

/// The admin credentials file in the data directory.
pub const ADMIN_CREDENTIALS_FILE: &str = "admin.yaml";
/// The CA certificate file in the data directory.
pub const CA_FILE: &str = "ca.pem";
/// The store's directory in the data directory.
pub const STORE_DIR: &str = "store";

/// Errors of taking a backup.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The store could not be copied.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file of the data directory could not be read.
    #[error("cannot read {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The archive could not be built (or the store has no CA).
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

/// A backup of a running control plane: a snapshot of `store`, and the admin
/// credentials file and secrets key of `data_dir`, as a gzip'd tar; with its
/// manifest.
pub fn create(store: &Store, data_dir: &Path) -> Result<(Vec<u8>, Manifest), BackupError> {
    let snapshot = store.snapshot()?;
    let created_at = jiff::Timestamp::now();
    let optional = |name: &str| {
        let path = data_dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(BackupError::ReadFile { path, source }),
        }
    };
    let admin = optional(ADMIN_CREDENTIALS_FILE)?;
    let key = optional(crate::objects::sealing::KEY_FILE)?;
    let contents = Contents::new(snapshot, admin)?.with_secrets_key(key);
    Ok(archive::write(&contents, created_at)?)
}

/// `archive` in pieces of [`CHUNK_BYTES`], without copying.
pub fn chunks(archive: Vec<u8>) -> impl Iterator<Item = bytes::Bytes> {
    let archive = bytes::Bytes::from(archive);
    (0..archive.len())
        .step_by(CHUNK_BYTES)
        .map(move |at| archive.slice(at..(at + CHUNK_BYTES).min(archive.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_of_a_store_holds_its_ca_and_credentials_and_chunks_back_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(STORE_DIR)).unwrap();
        let (pki, _) = crate::pki::Pki::load_or_create(&store.pki).unwrap();
        let (bytes, manifest) = create(&store, dir.path()).unwrap();
        let backup = archive::read(bytes.as_slice()).unwrap();
        assert_eq!(backup.manifest, manifest);
        assert_eq!(backup.contents.ca_cert_pem, pki.ca_pem());
        assert!(backup.contents.admin_credentials.is_none());

        std::fs::write(dir.path().join(ADMIN_CREDENTIALS_FILE), "token: t\n").unwrap();
        let (bytes, _) = create(&store, dir.path()).unwrap();
        let backup = archive::read(bytes.as_slice()).unwrap();
        assert_eq!(
            backup.contents.admin_credentials.as_deref(),
            Some(&b"token: t\n"[..])
        );

        let big: Vec<u8> = (0..CHUNK_BYTES * 2 + 5).map(|i| i as u8).collect();
        let pieces: Vec<bytes::Bytes> = chunks(big.clone()).collect();
        assert_eq!(
            pieces.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [CHUNK_BYTES, CHUNK_BYTES, 5]
        );
        assert_eq!(pieces.concat(), big);
        assert_eq!(chunks(Vec::new()).count(), 0);
    }
}
