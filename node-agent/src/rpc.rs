//! What the gRPC edge of the agent shares: the one `match` from pod manager
//! errors to gRPC codes, and the type of a response stream. `server`,
//! `streams` and `portforward` use it; it uses none of them (so that no module
//! import cycle runs through the edge).

use std::pin::Pin;

use futures::Stream;
use tonic::Status;

use crate::pods::PodError;
use crate::runtime::RuntimeError;

/// A response stream.
pub type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The gRPC status of a pod manager error.
pub fn status(e: PodError) -> Status {
    match e {
        PodError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        PodError::NotRunning(_) => Status::failed_precondition(e.to_string()),
        PodError::NotFound { .. } | PodError::NoContainer { .. } => {
            Status::not_found(e.to_string())
        }
        PodError::Removing { .. } => Status::unavailable(e.to_string()),
        PodError::Runtime(ref r) => match r {
            RuntimeError::Connect { .. } => Status::unavailable(e.to_string()),
            RuntimeError::Containerd { source, .. } if source.code() == tonic::Code::NotFound => {
                Status::not_found(e.to_string())
            }
            RuntimeError::Containerd { .. } => Status::internal(e.to_string()),
            RuntimeError::ImagePull { .. }
            | RuntimeError::ImageNeverPull { .. }
            | RuntimeError::BadImage { .. } => Status::failed_precondition(e.to_string()),
        },
    }
}
