//! Restoring a backup into a data directory, with the control plane stopped
//! (`orca-control-plane restore --from FILE --data-dir DIR [--force]`).
//!
//! The archive is read and verified whole ([`archive::read`]) before anything
//! is written. The new content — `store/` rebuilt from the snapshot (and the
//! CA loaded from it once, as the control plane will), `ca.pem` (0644) and
//! `admin.yaml` (0600, as the control plane writes it) — is built in a staging
//! directory (0700) on the target's filesystem, and only then moved into place:
//! - a target that does not exist: the staging directory is its sibling
//!   `.<name>.orca-restore-<id>` and is renamed to it, one atomic step;
//! - a target that exists (empty, or non-empty with `--force`; a Kubernetes
//!   volume's mount point, which cannot be renamed): the staging directory is
//!   inside it, `.orca-restore-<id>`, and its entries are renamed into place,
//!   `store/` last: that rename is the commit. With `--force` the previous
//!   entries are first moved aside into `.orca-replaced-<id>` (the previous
//!   store last, just before the new one goes in) and deleted at the end.
//!
//! A failure before the commit leaves the target's entries as they were (the
//! staging directory is removed, renames already done are undone); only a
//! crash between the two renames of the store (`--force` into an existing
//! directory) can leave the target without a store, the previous one in
//! `.orca-replaced-<id>`. `lost+found` (a fresh ext4 volume's) does not
//! make a directory non-empty and is left alone. A store that a running control
//! plane holds (sled's lock on `store/db`) is never replaced.

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::archive::{self, ArchiveError, Backup};
use super::{ADMIN_CREDENTIALS_FILE, CA_FILE, STORE_DIR};
use crate::pki::{Pki, PkiError};
use orca_store::{Store, StoreError};

/// Entries of a data directory that do not make it non-empty (and stay).
const IGNORED: &[&str] = &["lost+found"];
/// Prefix of the staging directory.
const STAGE_PREFIX: &str = ".orca-restore-";
/// Prefix of the directory the previous contents are moved to (`--force`).
const REPLACED_PREFIX: &str = ".orca-replaced-";

/// Errors of a restore.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The archive file could not be read.
    #[error("cannot read the backup {path}")]
    Read {
        /// The file (`-`: standard input).
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The archive is corrupt, incomplete or not a backup.
    #[error("{path} is not a valid backup")]
    Archive {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: ArchiveError,
    },
    /// The target exists and is not a directory.
    #[error("data directory {path} exists and is not a directory")]
    NotADirectory {
        /// The target.
        path: PathBuf,
    },
    /// The target has content and `--force` was not given.
    #[error(
        "data directory {path} is not empty (it holds {entries}); restore into an empty or new directory, or pass --force to replace its contents"
    )]
    NotEmpty {
        /// The target.
        path: PathBuf,
        /// Some of its entries.
        entries: String,
    },
    /// A running control plane holds the target's store.
    #[error("a control plane is running on {path} (its store is locked): stop it before restoring")]
    InUse {
        /// The target.
        path: PathBuf,
    },
    /// A file or directory could not be written, moved or removed.
    #[error("cannot write {path}")]
    Write {
        /// What was being written.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The store could not be rebuilt.
    #[error("cannot rebuild the store at {path}")]
    Store {
        /// The new store's directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: StoreError,
    },
    /// The restored CA does not load.
    #[error("the restored CA does not load")]
    Pki(#[source] PkiError),
}

fn write_error(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Write {
        path: path.to_owned(),
        source,
    }
}

/// Reads and verifies the archive at `from` (`-`: standard input).
pub fn read_file(from: &Path) -> Result<Backup, RestoreError> {
    let read = |source| RestoreError::Read {
        path: from.to_owned(),
        source,
    };
    let bytes = if from == Path::new("-") {
        let mut bytes = Vec::new();
        io::stdin().lock().read_to_end(&mut bytes).map_err(read)?;
        bytes
    } else {
        fs::read(from).map_err(read)?
    };
    archive::read(bytes.as_slice()).map_err(|source| RestoreError::Archive {
        path: from.to_owned(),
        source,
    })
}

/// Restores `backup` into `data_dir` (see the module docs); `force` replaces
/// the contents of a non-empty directory.
pub fn restore(backup: &Backup, data_dir: &Path, force: bool) -> Result<(), RestoreError> {
    let target = std::path::absolute(data_dir).map_err(write_error(data_dir))?;
    // `read` checked it; the staged store must not create a CA of its own.
    archive::ca_record(&backup.contents.store).map_err(|source| RestoreError::Archive {
        path: target.clone(),
        source,
    })?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    match fs::metadata(&target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let (parent, name) = match (target.parent(), target.file_name()) {
                (Some(parent), Some(name)) => (parent, name.to_string_lossy()),
                _ => {
                    return Err(RestoreError::NotADirectory {
                        path: target.clone(),
                    });
                }
            };
            fs::create_dir_all(parent).map_err(write_error(parent))?;
            let stage = parent.join(format!(".{name}{STAGE_PREFIX}{id}"));
            staged(&stage, backup, |stage| {
                fs::rename(stage, &target).map_err(write_error(&target))
            })?;
            sync_dir(parent)
        }
        Err(e) => Err(write_error(&target)(e)),
        Ok(meta) if !meta.is_dir() => Err(RestoreError::NotADirectory { path: target }),
        Ok(_) => {
            // Held until the end, so no control plane opens the old store meanwhile.
            let _lock = lock_store(&target)?;
            let old = entries(&target)?;
            if !old.is_empty() && !force {
                let mut shown: Vec<&str> = old.iter().take(5).map(String::as_str).collect();
                if old.len() > shown.len() {
                    shown.push("...");
                }
                return Err(RestoreError::NotEmpty {
                    path: target,
                    entries: shown.join(", "),
                });
            }
            let stage = target.join(format!("{STAGE_PREFIX}{id}"));
            let replaced = target.join(format!("{REPLACED_PREFIX}{id}"));
            staged(&stage, backup, |stage| {
                commit_in_place(stage, &target, &old, &replaced)
            })?;
            if !old.is_empty() {
                fs::remove_dir_all(&replaced).map_err(write_error(&replaced))?;
            }
            fs::set_permissions(&target, fs::Permissions::from_mode(0o700))
                .map_err(write_error(&target))?;
            sync_dir(&target)
        }
    }
}

/// Builds the new content in `stage`, then `commit`s it; removes `stage` if
/// either fails.
fn staged(
    stage: &Path,
    backup: &Backup,
    commit: impl FnOnce(&Path) -> Result<(), RestoreError>,
) -> Result<(), RestoreError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(stage)
        .map_err(write_error(stage))?;
    let result = build(stage, backup).and_then(|()| commit(stage));
    if result.is_err() {
        let _ = fs::remove_dir_all(stage);
    }
    result
}

/// Writes the data directory's content into `dir`.
fn build(dir: &Path, backup: &Backup) -> Result<(), RestoreError> {
    let path = dir.join(STORE_DIR);
    let store_error = |source| RestoreError::Store {
        path: path.clone(),
        source,
    };
    let store = Store::open(&path).map_err(store_error)?;
    store.import(&backup.contents.store).map_err(store_error)?;
    Pki::load_or_create(&store.pki).map_err(RestoreError::Pki)?;
    drop(store);
    let contents = &backup.contents;
    write_file(&dir.join(CA_FILE), contents.ca_cert_pem.as_bytes(), 0o644)?;
    if let Some(admin) = &contents.admin_credentials {
        write_file(&dir.join(ADMIN_CREDENTIALS_FILE), admin, 0o600)?;
    }
    if let Some(key) = &contents.secrets_key {
        write_file(&dir.join(crate::objects::sealing::KEY_FILE), key, 0o600)?;
    }
    sync_dir(dir)
}

/// Moves `stage`'s entries into `target`, the store last; `old` entries of
/// `target` go into `replaced` first (the old store last). If a rename fails,
/// the ones done are undone.
fn commit_in_place(
    stage: &Path,
    target: &Path,
    old: &[String],
    replaced: &Path,
) -> Result<(), RestoreError> {
    if !old.is_empty() {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(replaced)
            .map_err(write_error(replaced))?;
    }
    let new = entries(stage)?;
    let not_store = |n: &&String| *n != STORE_DIR;
    let mut moves: Vec<(PathBuf, PathBuf)> = Vec::new();
    for name in old.iter().filter(not_store) {
        moves.push((target.join(name), replaced.join(name)));
    }
    for name in new.iter().filter(not_store) {
        moves.push((stage.join(name), target.join(name)));
    }
    if old.iter().any(|n| n == STORE_DIR) {
        moves.push((target.join(STORE_DIR), replaced.join(STORE_DIR)));
    }
    // The last one is the commit.
    moves.push((stage.join(STORE_DIR), target.join(STORE_DIR)));
    for (done, (from, to)) in moves.iter().enumerate() {
        if let Err(source) = fs::rename(from, to) {
            for (from, to) in moves[..done].iter().rev() {
                let _ = fs::rename(to, from);
            }
            return Err(RestoreError::Write {
                path: to.clone(),
                source,
            });
        }
    }
    fs::remove_dir(stage).map_err(write_error(stage))
}

/// The entries of `dir` that make it non-empty, sorted.
fn entries(dir: &Path) -> Result<Vec<String>, RestoreError> {
    let mut names = fs::read_dir(dir)
        .map_err(write_error(dir))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<Vec<String>>>()
        .map_err(write_error(dir))?;
    names.retain(|n| !IGNORED.contains(&n.as_str()));
    names.sort();
    Ok(names)
}

/// sled's lock on `<dir>/store/db`, if there is a store: refused while a
/// control plane holds it.
fn lock_store(dir: &Path) -> Result<Option<fs::File>, RestoreError> {
    let db = dir.join(STORE_DIR).join("db");
    let file = match fs::File::open(&db) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(write_error(&db)(e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Err(RestoreError::InUse {
            path: dir.to_owned(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(write_error(&db)(e)),
    }
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), RestoreError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(write_error(path))?;
    file.write_all(data).map_err(write_error(path))?;
    file.sync_all().map_err(write_error(path))
}

fn sync_dir(dir: &Path) -> Result<(), RestoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_error(dir))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use orca_proto::controlplane::v1 as pb;

    use super::*;

    /// A backup of a store with a CA and node `n1`, and its admin.yaml.
    fn backup() -> Backup {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(STORE_DIR)).unwrap();
        Pki::load_or_create(&store.pki).unwrap();
        store
            .nodes
            .put(
                "n1",
                &pb::Node {
                    name: "n1".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        fs::write(dir.path().join(ADMIN_CREDENTIALS_FILE), "token: t\n").unwrap();
        let (bytes, _) = super::super::create(&store, dir.path()).unwrap();
        archive::read(bytes.as_slice()).unwrap()
    }

    fn assert_restored(dir: &Path, backup: &Backup) {
        let store = Store::open(&dir.join(STORE_DIR)).unwrap();
        assert_eq!(store.snapshot().unwrap(), backup.contents.store);
        assert_eq!(store.nodes.get("n1").unwrap().unwrap().name, "n1");
        let (pki, created) = Pki::load_or_create(&store.pki).unwrap();
        assert!(
            created.is_none(),
            "the restored CA is loaded, not made anew"
        );
        assert_eq!(pki.ca_pem(), backup.contents.ca_cert_pem);
        assert_eq!(
            fs::read_to_string(dir.join(CA_FILE)).unwrap(),
            backup.contents.ca_cert_pem
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir.join(ADMIN_CREDENTIALS_FILE)), 0o600);
        assert_eq!(mode(dir), 0o700);
        let names = entries(dir).unwrap();
        assert_eq!(names, [ADMIN_CREDENTIALS_FILE, CA_FILE, STORE_DIR]);
    }

    #[test]
    fn restores_into_a_new_directory_leaving_nothing_beside_it() {
        let backup = backup();
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("deep").join("orca");
        restore(&backup, &target, false).unwrap();
        assert_restored(&target, &backup);
        assert_eq!(entries(&root.path().join("deep")).unwrap(), ["orca"]);
    }

    #[test]
    fn restores_into_an_empty_directory_such_as_a_fresh_volume() {
        let backup = backup();
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("lost+found")).unwrap();
        restore(&backup, root.path(), false).unwrap();
        assert_restored(root.path(), &backup);
        assert!(root.path().join("lost+found").is_dir(), "left alone");
    }

    #[test]
    fn a_non_empty_directory_is_refused_unless_forced_and_then_replaced() {
        let backup = backup();
        let root = tempfile::tempdir().unwrap();
        let target = root.path();
        fs::write(target.join("junk"), "old").unwrap();
        let old_store = Store::open(&target.join(STORE_DIR)).unwrap();
        old_store.nodes.put("old", &pb::Node::default()).unwrap();
        drop(old_store);

        let err = restore(&backup, target, false).unwrap_err();
        assert!(matches!(err, RestoreError::NotEmpty { .. }), "{err:?}");
        assert!(err.to_string().contains("junk, store"), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(entries(target).unwrap(), ["junk", STORE_DIR], "untouched");

        restore(&backup, target, true).unwrap();
        assert_restored(target, &backup);
        let store = Store::open(&target.join(STORE_DIR)).unwrap();
        assert!(
            store.nodes.get("old").unwrap().is_none(),
            "the old store is gone"
        );
    }

    #[test]
    fn a_store_held_by_a_running_control_plane_is_never_replaced() {
        let backup = backup();
        let root = tempfile::tempdir().unwrap();
        let running = Store::open(&root.path().join(STORE_DIR)).unwrap();
        let err = restore(&backup, root.path(), true).unwrap_err();
        assert!(matches!(err, RestoreError::InUse { .. }), "{err:?}");
        assert!(err.to_string().contains("stop it"), "{err}");
        assert_eq!(entries(root.path()).unwrap(), [STORE_DIR]);
        drop(running);
    }

    #[test]
    fn a_file_where_the_directory_should_be_is_refused() {
        let backup = backup();
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("orca");
        fs::write(&file, "x").unwrap();
        let err = restore(&backup, &file, true).unwrap_err();
        assert!(matches!(err, RestoreError::NotADirectory { .. }), "{err:?}");
    }

    #[test]
    fn a_corrupt_file_is_named_in_the_error() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("backup.tar.gz");
        fs::write(&path, b"\x1f\x8b\x08\x00garbage").unwrap();
        let err = read_file(&path).unwrap_err();
        assert!(
            err.to_string()
                .contains("backup.tar.gz is not a valid backup"),
            "{err}"
        );
        let err = read_file(&root.path().join("missing")).unwrap_err();
        assert!(matches!(err, RestoreError::Read { .. }), "{err:?}");
    }
}
