//! The kubelet HTTPS API (port 10250) the API server calls: [`server`]
//! (routing, client certificates, SubjectAccessReview, logs, `/pods`),
//! [`exec`] (exec and attach bridged to the pod's agent), [`forward`]
//! (port-forward bridged likewise), [`stats`] (`/metrics/resource`,
//! `/stats/summary`), [`tls`] and [`query`]. The streaming protocols of exec,
//! attach and port-forward (upgrade negotiation, SPDY/3.1, WebSocket channels,
//! the sessions over them) are the `orca-kubelet-streams` crate's.

pub mod exec;
pub mod forward;
pub mod query;
pub mod server;
pub mod stats;
pub mod tls;
