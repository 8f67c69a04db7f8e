//! The agent's seam to containerd, through its gRPC API (containerd-client).
//!
//! containerd's nouns are used exactly: a *container* is metadata (spec,
//! snapshot, labels), a *task* is its running process. Every call carries the
//! agent's containerd namespace, so several agents (simulated hosts) can share one
//! containerd without seeing each other's containers.
//!
//! - [`pull`]: images, pulled as containerd's own Go client does on 1.6 (which has
//!   no server-side pull): registry → content store → image record → unpacked
//!   snapshots. One pull per image at a time.
//! - [`task`]: containers and tasks: create, start, observe, kill, delete.

pub mod exec;
pub mod pull;
pub mod reference;
pub mod task;

use std::path::Path;

use containerd_client::tonic::transport::Channel;
use tonic::metadata::MetadataValue;

pub use pull::{ImageInfo, Puller};
pub use task::{TaskObservation, TaskStatus};

/// The snapshotter used for images and containers (overlayfs, as containerd's default).
pub const SNAPSHOTTER: &str = "overlayfs";

/// containerd's runc v2 shim.
pub const RUNTIME: &str = "io.containerd.runc.v2";

/// Errors of the containerd seam.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// containerd's socket could not be reached.
    #[error("cannot connect to containerd at {socket}")]
    Connect {
        /// Socket path.
        socket: String,
        /// Cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// A containerd call failed.
    #[error("containerd {op} failed: {}", .source.message())]
    Containerd {
        /// Which call.
        op: &'static str,
        /// The gRPC status containerd returned.
        #[source]
        source: tonic::Status,
    },
    /// The registry refused or failed a pull.
    #[error("failed to pull image {reference:?}: {message}")]
    ImagePull {
        /// Image reference.
        reference: String,
        /// The registry's message.
        message: String,
    },
    /// The image is absent and the pull policy is Never.
    #[error("image {reference:?} is not present and imagePullPolicy is Never")]
    ImageNeverPull {
        /// Image reference.
        reference: String,
    },
    /// The image's manifest or config is not usable.
    #[error("image {reference:?} is unusable: {reason}")]
    BadImage {
        /// Image reference.
        reference: String,
        /// What is wrong.
        reason: String,
    },
}

impl RuntimeError {
    /// Whether containerd answered NotFound.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Containerd { source, .. } if source.code() == tonic::Code::NotFound)
    }
}

/// A containerd connection bound to one containerd namespace.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
}

impl Containerd {
    /// Connects to containerd's gRPC socket.
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Self, RuntimeError> {
        let channel =
            containerd_client::connect(socket)
                .await
                .map_err(|source| RuntimeError::Connect {
                    socket: socket.display().to_string(),
                    source,
                })?;
        Ok(Self {
            channel,
            namespace: namespace.to_owned(),
        })
    }

    /// The containerd namespace of this connection.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The channel, for service clients.
    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Wraps a message in a request carrying the namespace (and lease, when given).
    pub(crate) fn request<T>(&self, message: T, lease: Option<&str>) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        let md = req.metadata_mut();
        md.insert("containerd-namespace", ascii(&self.namespace));
        if let Some(lease) = lease {
            md.insert("containerd-lease", ascii(lease));
        }
        req
    }
}

fn ascii(s: &str) -> MetadataValue<tonic::metadata::Ascii> {
    // Namespaces and lease ids are validated identifiers ([a-z0-9._-]): always ASCII.
    MetadataValue::try_from(s).unwrap_or_else(|_| MetadataValue::from_static("invalid"))
}

/// How long a lease protects what it holds if the agent dies before deleting it.
const LEASE_EXPIRY: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

impl Containerd {
    /// Creates a lease: content and snapshots made under it are safe from
    /// containerd's garbage collector until it is deleted (or expires) — the gap
    /// between writing something and referencing it from an image or container.
    pub(crate) async fn create_lease(&self, purpose: &str) -> Result<String, RuntimeError> {
        use containerd_client::services::v1::{CreateRequest, leases_client::LeasesClient};
        let id = format!("orca-{purpose}-{}", uuid::Uuid::new_v4().simple());
        let expire = jiff::Timestamp::now() + LEASE_EXPIRY;
        let req = CreateRequest {
            id: id.clone(),
            labels: std::collections::HashMap::from([(
                "containerd.io/gc.expire".to_owned(),
                expire.to_string(),
            )]),
        };
        LeasesClient::new(self.channel())
            .create(self.request(req, None))
            .await
            .map_err(op("Leases.Create"))?;
        Ok(id)
    }

    /// Deletes a lease; failures only mean it expires on its own.
    pub(crate) async fn delete_lease(&self, id: &str) {
        use containerd_client::services::v1::{DeleteRequest, leases_client::LeasesClient};
        let req = DeleteRequest {
            id: id.to_owned(),
            sync: false,
        };
        if let Err(e) = LeasesClient::new(self.channel())
            .delete(self.request(req, None))
            .await
        {
            tracing::debug!(lease = id, error = %e, "lease not deleted; it expires on its own");
        }
    }
}

/// Maps a failed containerd call to [`RuntimeError::Containerd`].
pub(crate) fn op(op: &'static str) -> impl FnOnce(tonic::Status) -> RuntimeError {
    move |source| RuntimeError::Containerd { op, source }
}
