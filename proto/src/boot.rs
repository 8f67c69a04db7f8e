//! What the control plane writes into a launched instance's user data and the
//! agent reads back through IMDSv2: the whole contract between the two at boot.
//! Only the join token is secret, and it is single use: pods on the host can
//! read IMDS, but a token already consumed by the agent admits nobody.

/// An instance's boot data, as JSON in its user data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootData {
    /// `https://HOST:PORT` of the control plane.
    pub control_plane: String,
    /// PEM of the cluster CA.
    pub ca_pem: String,
    /// The node name the token is bound to.
    pub node_name: String,
    /// The single-use join token.
    pub join_token: String,
}

impl BootData {
    /// The user data text.
    pub fn to_user_data(&self) -> String {
        serde_json::to_string(self).expect("strings serialize")
    }

    /// Parses user data; `None` when it is not ORCA's.
    pub fn from_user_data(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}
