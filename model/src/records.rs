//! Records the control plane keeps that are not wire messages: the CA and
//! named API tokens (prost-encoded in the store), and a snapshot of the
//! store's trees (what a backup archive holds).

use prost::Message;

/// The CA as stored.
#[derive(Clone, PartialEq, Message)]
pub struct CaRecord {
    /// PEM certificate.
    #[prost(string, tag = "1")]
    pub cert_pem: String,
    /// PEM PKCS#8 private key.
    #[prost(string, tag = "2")]
    pub key_pem: String,
    /// SHA-256 (hex) of the admin bearer token.
    #[prost(string, tag = "3")]
    pub admin_token_sha256: String,
}

/// A named token, as stored: its name and when it was made (the key is the
/// token's SHA-256).
#[derive(Clone, PartialEq, Message)]
pub struct ApiToken {
    /// The user it authenticates.
    #[prost(string, tag = "1")]
    pub name: String,
    /// When it was made.
    #[prost(message, optional, tag = "2")]
    pub created_at: Option<prost_types::Timestamp>,
}

/// The store's content at one instant (the store's `snapshot`, and what a backup archive holds).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Every tree, by name.
    pub trees: Vec<TreeSnapshot>,
}

/// One tree of a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TreeSnapshot {
    /// The tree's name (ORCA's are ASCII; sled's own default tree is
    /// `__sled__default`).
    pub name: String,
    /// Its keys and values, in key order.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
}
