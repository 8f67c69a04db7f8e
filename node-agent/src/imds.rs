//! The instance metadata service (IMDSv2), from which an agent on EC2 reads what
//! its launch gave it: a session token first (`PUT /latest/api/token` with a
//! TTL header), then `GET /latest/user-data` and `GET /latest/meta-data/...`
//! with that token. The endpoint is configurable (`http://169.254.169.254` on
//! EC2; a test server in tests, which never send traffic to the real address).
//!
//! ORCA's user data is a JSON object ([`BootData`]): the control plane's URL,
//! the cluster CA, the node's name and a single-use join token, consumed at
//! the first join (pods on the host can read IMDS too, so it must be worthless
//! afterwards).

use std::time::Duration;

/// EC2's metadata endpoint.
pub const EC2_ENDPOINT: &str = "http://169.254.169.254";

/// Lifetime asked for a session token, seconds.
const TOKEN_TTL_S: u32 = 300;

pub use orca_proto::boot::BootData;

/// Why the metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// The endpoint did not answer, or answered an error.
    #[error("IMDS {what} at {endpoint}: {reason}")]
    Request {
        /// Which request.
        what: &'static str,
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The user data is not ORCA's.
    #[error("the instance's user data is not ORCA boot data: {0}")]
    BadUserData(String),
}

/// An IMDSv2 client.
#[derive(Debug, Clone)]
pub struct Imds {
    endpoint: String,
    http: reqwest::Client,
}

impl Imds {
    /// A client of the metadata service at `endpoint` (no trailing slash needed).
    pub fn new(endpoint: &str, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            http,
        }
    }

    fn failed(&self, what: &'static str) -> impl Fn(String) -> ImdsError + '_ {
        move |reason| ImdsError::Request {
            what,
            endpoint: self.endpoint.clone(),
            reason,
        }
    }

    /// A session token (IMDSv2's PUT).
    pub async fn token(&self) -> Result<String, ImdsError> {
        let req = self
            .http
            .put(format!("{}/latest/api/token", self.endpoint))
            .header(
                "X-aws-ec2-metadata-token-ttl-seconds",
                TOKEN_TTL_S.to_string(),
            );
        self.text("token", req).await
    }

    /// `GET /latest/<path>` with a fresh session token.
    pub async fn get(&self, what: &'static str, path: &str) -> Result<String, ImdsError> {
        let token = self.token().await?;
        let req = self
            .http
            .get(format!("{}/latest/{path}", self.endpoint))
            .header("X-aws-ec2-metadata-token", token);
        self.text(what, req).await
    }

    /// `GET /latest/<path>` with `token` (from [`Imds::token`], shared by the
    /// reads of one look), with `None` for 404 Not Found: how IMDS says that a
    /// notice (`spot/instance-action`, `events/recommendations/rebalance`) is
    /// not there.
    pub async fn get_optional(
        &self,
        token: &str,
        what: &'static str,
        path: &str,
    ) -> Result<Option<String>, ImdsError> {
        let fail = self.failed(what);
        let resp = self
            .http
            .get(format!("{}/latest/{path}", self.endpoint))
            .header("X-aws-ec2-metadata-token", token)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        match resp.status() {
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            s if !s.is_success() => Err(fail(format!("HTTP {s}"))),
            _ => resp.text().await.map(Some).map_err(|e| fail(e.to_string())),
        }
    }

    /// Sends `req`; the body of a successful answer.
    async fn text(
        &self,
        what: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<String, ImdsError> {
        let fail = self.failed(what);
        let resp = req.send().await.map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status())));
        }
        resp.text().await.map_err(|e| fail(e.to_string()))
    }

    /// The instance's id.
    pub async fn instance_id(&self) -> Result<String, ImdsError> {
        self.get("instance id", "meta-data/instance-id").await
    }

    /// ORCA's boot data from the user data.
    pub async fn boot_data(&self) -> Result<BootData, ImdsError> {
        parse_boot_data(&self.get("user data", "user-data").await?)
    }
}

/// Fills what `flags` leave out from the instance's metadata at `endpoint`: the
/// control plane URL, node name and join token from the user data, the
/// advertised address from `local-ipv4` and the listen port. Returns the CA from
/// the user data, checked to be PEM certificates.
pub async fn boot(
    flags: &mut crate::config::Flags,
    endpoint: &str,
    timeout: Duration,
) -> Result<String, ImdsError> {
    let imds = Imds::new(endpoint, timeout);
    let data = imds.boot_data().await?;
    orca_proto::tls::certs("CA", &data.ca_pem)
        .map_err(|e| ImdsError::BadUserData(format!("ca_pem: {e}")))?;
    if flags.control_plane.is_empty() {
        flags.control_plane = data.control_plane;
    }
    if flags.node_name.is_empty() {
        flags.node_name = data.node_name;
    }
    if flags.join_token.is_empty() {
        flags.join_token = data.join_token;
    }
    if flags.advertise.is_none() {
        let ip = imds.get("private address", "meta-data/local-ipv4").await?;
        flags.advertise = Some(format!("{}:{}", ip.trim(), flags.listen.port()));
    }
    Ok(data.ca_pem)
}

/// Parses ORCA's user data, checking that every field is there.
pub fn parse_boot_data(text: &str) -> Result<BootData, ImdsError> {
    let data: BootData =
        serde_json::from_str(text).map_err(|e| ImdsError::BadUserData(e.to_string()))?;
    for (field, value) in [
        ("control_plane", &data.control_plane),
        ("ca_pem", &data.ca_pem),
        ("node_name", &data.node_name),
        ("join_token", &data.join_token),
    ] {
        if value.trim().is_empty() {
            return Err(ImdsError::BadUserData(format!("{field} is empty")));
        }
    }
    if !data.control_plane.starts_with("https://") {
        return Err(ImdsError::BadUserData(format!(
            "control_plane {:?} is not an https:// URL",
            data.control_plane
        )));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_data_needs_every_field_and_https() {
        let good = r#"{"control_plane":"https://10.0.0.1:7443","ca_pem":"PEM","node_name":"n1","join_token":"t"}"#;
        assert_eq!(parse_boot_data(good).unwrap().node_name, "n1");
        let e = parse_boot_data(&good.replace("\"t\"", "\"\"")).unwrap_err();
        assert!(e.to_string().contains("join_token is empty"), "{e}");
        let e = parse_boot_data(&good.replace("https", "http")).unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
        assert!(parse_boot_data("#!/bin/sh\necho hi").is_err());
    }
}
