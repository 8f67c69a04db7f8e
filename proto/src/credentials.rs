//! The `orca` CLI's credentials file, kubeconfig-like: where the control plane is,
//! the CA that signs its certificate, and the admin bearer token.
//!
//! The control plane writes one at `<data_dir>/admin.yaml` when it creates a
//! cluster. `orca` reads `--config`, else `$ORCACONFIG`, else
//! `$XDG_CONFIG_HOME/orca/config`, else `~/.config/orca/config`.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a credentials file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a credentials file.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: serde_yaml::Error,
    },
}

/// The credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Credentials {
    /// The control plane's URL, `https://host:port`.
    pub server: String,
    /// PEM of the cluster CA.
    pub certificate_authority_data: String,
    /// The admin bearer token.
    pub token: String,
}

impl Credentials {
    /// Where `orca` looks when neither `--config` nor `$ORCACONFIG` is set.
    pub fn default_path() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(base.join("orca").join("config"))
    }

    /// Reads a credentials file.
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_yaml::from_str(&text).map_err(|source| CredentialsError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes the file, readable by its owner only.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_yaml::to_string(self).map_err(std::io::Error::other)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(text.as_bytes())
    }
}
