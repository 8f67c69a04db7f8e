//! The kubelet HTTPS API (port 10250) the API server calls: the streaming
//! protocols of exec, attach and port-forward ([`upgrade`] negotiates SPDY/3.1
//! or WebSocket channels; [`spdy`] and [`channels`] are the transports;
//! [`remotecommand`] and [`portforward`] the sessions over either), and what
//! is served: [`server`] (routing, client certificates, SubjectAccessReview,
//! logs, `/pods`), [`exec`] (exec and attach bridged to the pod's agent),
//! [`forward`] (port-forward bridged likewise), [`stats`] (`/metrics/resource`,
//! `/stats/summary`), [`tls`] and [`query`].

pub mod channels;
pub mod portforward;
pub mod remotecommand;
pub mod spdy;
pub mod upgrade;

pub mod exec;
pub mod forward;
pub mod query;
pub mod server;
pub mod stats;
pub mod tls;
