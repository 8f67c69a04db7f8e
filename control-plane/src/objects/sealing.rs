//! Secrets encrypted at rest: a Secret's manifest is stored sealed with
//! AES-256-GCM under a key kept outside the store, in the data directory
//! (`secrets.key`, 32 random bytes, mode 0600, made at first start), as
//! Kubernetes keeps its EncryptionConfiguration's key outside etcd. A copy of
//! the store's files alone does not reveal a Secret; backups carry the key with
//! the store (they hold the CA's private key already).
//!
//! Sealed form: `sealed:v1:` then base64 of the 12-byte nonce and the
//! ciphertext with its tag. The object's store key is the associated data, so
//! a sealed manifest moved to another key does not open.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};

/// The key file in the data directory.
pub const KEY_FILE: &str = "secrets.key";

const PREFIX: &str = "sealed:v1:";

/// Why a Secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file could not be read or written.
    #[error("secrets key {path}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not hold 32 bytes.
    #[error("secrets key {0}: not 32 bytes")]
    BadKey(PathBuf),
    /// A sealed value did not open (another key, or damaged).
    #[error("a sealed secret does not open with this key")]
    Open,
}

/// The key Secrets are sealed with.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// The key in `data_dir`, made when missing.
    pub fn open_or_create(data_dir: &Path) -> Result<Self, SealError> {
        let path = data_dir.join(KEY_FILE);
        let io = |source| SealError::Key {
            path: path.clone(),
            source,
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| io(std::io::Error::other("no randomness")))?;
                // Written aside and renamed: a crash never leaves a short key.
                let tmp = path.with_extension("key.tmp");
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode_0600()
                    .open(&tmp)
                    .map_err(io)?;
                f.write_all(&key).map_err(io)?;
                f.sync_all().map_err(io)?;
                std::fs::rename(&tmp, &path).map_err(io)?;
                key.to_vec()
            }
            Err(e) => return Err(io(e)),
        };
        Self::from_bytes(&bytes).ok_or(SealError::BadKey(path))
    }

    /// A sealer over a 32-byte key.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
        Some(Self {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// `plain` sealed, bound to `context` (the object's store key).
    pub fn seal(&self, context: &str, plain: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Open)?;
        let mut data = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Open)?;
        let mut out = nonce.to_vec();
        out.extend(data);
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// What [`Self::seal`] sealed under `context`; a value not sealed is
    /// returned as it is.
    pub fn open(&self, context: &str, stored: &str) -> Result<String, SealError> {
        let Some(encoded) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_owned());
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| SealError::Open)?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut data = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| SealError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Open)
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt as _;
        self.mode(0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_place() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::open_or_create(dir.path()).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = sealer
            .seal("Secret/lab/db", r#"{"data":{"p":"aHVudGVyMg=="}}"#)
            .unwrap();
        assert!(sealed.starts_with(PREFIX));
        assert!(!sealed.contains("aHVudGVyMg"), "{sealed}");
        assert_eq!(
            sealer.open("Secret/lab/db", &sealed).unwrap(),
            r#"{"data":{"p":"aHVudGVyMg=="}}"#
        );
        assert!(sealer.open("Secret/lab/other", &sealed).is_err());
        let again = Sealer::open_or_create(dir.path()).unwrap();
        assert!(
            again.open("Secret/lab/db", &sealed).is_ok(),
            "the key is kept"
        );
        let other = Sealer::from_bytes(&[7u8; 32]).unwrap();
        assert!(other.open("Secret/lab/db", &sealed).is_err());
        assert_eq!(sealer.open("x", "{}").unwrap(), "{}");
    }
}
