//! Liveness, readiness and startup probes.
//!
//! A probe is one of four handlers, run as the kubelet runs them:
//! - `exec`: the command in the container ([`Containerd::exec`]); exit 0 succeeds.
//! - `httpGet`: an HTTP/1.1 GET; a status in 200..400 succeeds. Redirects are not
//!   followed (a 3xx is a success, as the kubelet counts a redirect to another host).
//! - `tcpSocket`: a TCP connect succeeds.
//! - `grpc`: `grpc.health.v1.Health/Check`; SERVING succeeds.
//!
//! Containers share the host's network namespace, so the "pod IP" that `httpGet`,
//! `tcpSocket` and `grpc` default to is the host's address (`host_ip`).
//!
//! [`run`] probes every `periodSeconds` after `initialDelaySeconds` and applies
//! the thresholds as the kubelet's prober worker does ([`Thresholds`]): a result
//! counts once it repeated `successThreshold` / `failureThreshold` times in a row.
//! A probe that *errors* (containerd could not run the exec at all) is logged and
//! not counted, as the kubelet discards errored results; a probe that runs and
//! fails, times out, or whose command cannot start, counts as a failure.
//!
//! What the loop leaves to its caller, as the kubelet does it: a startup probe is
//! stopped at its first success, and liveness and readiness probes start only then;
//! a liveness or startup failure restarts the container (per restart policy) and
//! the new container gets a new loop (so `initialDelaySeconds` applies again).
//!
//! # Limitations
//! HTTPS `httpGet` probes, `httpGet.protocol` other than HTTP/1.1 and gRPC probes
//! in TLS mode are not supported; [`validate`] rejects them, so a pod asking for
//! them fails up front instead of failing its probes.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ExecAction, GRPCAction, HTTPGetAction, HTTPHeader, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::runtime::{Containerd, RuntimeError};

/// Kubernetes' default `periodSeconds`.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(10);
/// Kubernetes' default `timeoutSeconds`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Kubernetes' default `successThreshold`.
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;
/// Kubernetes' default `failureThreshold`.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;

/// How much of an exec probe's output (each stream) and of an HTTP status line is
/// read: the kubelet's 10 KiB.
const MAX_OUTPUT: usize = 10 * 1024;

/// How much of a failing exec probe's output goes into its failure message.
const MAX_MESSAGE_OUTPUT: usize = 1024;

/// The `User-Agent` of HTTP probes (the kubelet sends `kube-probe/<version>`;
/// applications match on the prefix).
const USER_AGENT: &str = concat!("kube-probe/orca-", env!("CARGO_PKG_VERSION"));

/// Which probe of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// `livenessProbe`: failing restarts the container.
    Liveness,
    /// `readinessProbe`: whether the container is Ready.
    Readiness,
    /// `startupProbe`: holds the other probes until it succeeds once.
    Startup,
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Liveness => "liveness",
            Self::Readiness => "readiness",
            Self::Startup => "startup",
        })
    }
}

/// The result of one probe attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler succeeded.
    Success,
    /// The handler failed; the message says why (exit code and output, HTTP status,
    /// connect error, timeout).
    Failure(String),
}

/// A change of a probe's thresholded result, sent by [`run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Which probe.
    pub kind: ProbeKind,
    /// The new result: whether the probe now passes.
    pub healthy: bool,
    /// Why it fails (the last attempt's message); empty when healthy.
    pub message: String,
}

/// Errors of probes: a spec that cannot be probed, or a probe that could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The probe names none of exec, httpGet, tcpSocket, grpc.
    #[error("probe has no handler: set one of exec, httpGet, tcpSocket, grpc")]
    NoHandler,
    /// The probe names more than one handler.
    #[error("probe may have only one handler, has {}", .handlers.join(", "))]
    MultipleHandlers {
        /// The handlers it names.
        handlers: Vec<&'static str>,
    },
    /// A field of the probe is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, relative to the probe (`httpGet.port`).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A named port is not among the container's ports.
    #[error("{field}: container has no port named {name:?}")]
    NoSuchPort {
        /// The field naming the port.
        field: &'static str,
        /// The port name.
        name: String,
    },
    /// The probe asks for something not built yet.
    #[error("{field}: {what} is not supported yet")]
    Unsupported {
        /// The field.
        field: &'static str,
        /// What is asked for.
        what: String,
    },
    /// containerd could not run an exec probe (not a probe failure: the kubelet
    /// discards such results).
    #[error("exec probe could not run")]
    Runtime(#[from] RuntimeError),
}

/// A probe's timing and thresholds, with Kubernetes' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// `initialDelaySeconds` (default 0).
    pub initial_delay: Duration,
    /// `periodSeconds` (default 10).
    pub period: Duration,
    /// `timeoutSeconds` (default 1).
    pub timeout: Duration,
    /// `successThreshold` (default 1).
    pub success_threshold: u32,
    /// `failureThreshold` (default 3).
    pub failure_threshold: u32,
}

impl Timing {
    /// The probe's timing. Unset and zero fields take the defaults, as the API
    /// server's defaulting does (zero is below every field's minimum but
    /// `initialDelaySeconds`'); negative ones are for [`validate`] to reject.
    pub fn of(probe: &Probe) -> Timing {
        let secs = |v: Option<i32>, default: Duration| match v {
            Some(n) if n > 0 => Duration::from_secs(n.unsigned_abs().into()),
            _ => default,
        };
        let count = |v: Option<i32>, default: u32| match v {
            Some(n) if n > 0 => n.unsigned_abs(),
            _ => default,
        };
        Timing {
            initial_delay: secs(probe.initial_delay_seconds, Duration::ZERO),
            period: secs(probe.period_seconds, DEFAULT_PERIOD),
            timeout: secs(probe.timeout_seconds, DEFAULT_TIMEOUT),
            success_threshold: count(probe.success_threshold, DEFAULT_SUCCESS_THRESHOLD),
            failure_threshold: count(probe.failure_threshold, DEFAULT_FAILURE_THRESHOLD),
        }
    }
}

/// The kubelet's threshold rule: a result becomes the probe's state once it
/// repeated its threshold's number of times in a row.
#[derive(Debug, Clone)]
pub struct Thresholds {
    success_threshold: u32,
    failure_threshold: u32,
    last: Option<bool>,
    run: u32,
    state: Option<bool>,
}

impl Thresholds {
    /// No results yet, no state.
    pub fn new(timing: &Timing) -> Self {
        Self {
            success_threshold: timing.success_threshold.max(1),
            failure_threshold: timing.failure_threshold.max(1),
            last: None,
            run: 0,
            state: None,
        }
    }

    /// Records one attempt's result; returns the new state when it changed (the
    /// first state reached counts as a change).
    pub fn observe(&mut self, success: bool) -> Option<bool> {
        if self.last == Some(success) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(success);
            self.run = 1;
        }
        let threshold = if success {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.run < threshold || self.state == Some(success) {
            return None;
        }
        self.state = Some(success);
        self.state
    }

    /// The thresholded state: `None` until a result reached its threshold.
    pub fn state(&self) -> Option<bool> {
        self.state
    }
}

/// A probe's one handler.
enum Handler<'a> {
    Exec(&'a ExecAction),
    Http(&'a HTTPGetAction),
    Tcp(&'a TCPSocketAction),
    Grpc(&'a GRPCAction),
}

fn handler(probe: &Probe) -> Result<Handler<'_>, ProbeError> {
    let mut found = Vec::new();
    if let Some(a) = &probe.exec {
        found.push(("exec", Handler::Exec(a)));
    }
    if let Some(a) = &probe.http_get {
        found.push(("httpGet", Handler::Http(a)));
    }
    if let Some(a) = &probe.tcp_socket {
        found.push(("tcpSocket", Handler::Tcp(a)));
    }
    if let Some(a) = &probe.grpc {
        found.push(("grpc", Handler::Grpc(a)));
    }
    match found.len() {
        0 => Err(ProbeError::NoHandler),
        1 => Ok(found.remove(0).1),
        _ => Err(ProbeError::MultipleHandlers {
            handlers: found.into_iter().map(|(name, _)| name).collect(),
        }),
    }
}

/// Validates a probe: exactly one handler, a command for exec, ports in range or
/// named among the container's ports, well-formed headers, supported schemes and
/// modes, non-negative numbers. Errors name the field relative to the probe.
pub fn validate(container: &Container, probe: &Probe) -> Result<(), ProbeError> {
    for (field, value) in [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("periodSeconds", probe.period_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if let Some(v) = value
            && v < 0
        {
            return Err(ProbeError::Invalid {
                field,
                reason: format!("must be non-negative, is {v}"),
            });
        }
    }
    if let Some(v) = probe.termination_grace_period_seconds
        && v < 1
    {
        return Err(ProbeError::Invalid {
            field: "terminationGracePeriodSeconds",
            reason: format!("must be at least 1, is {v}"),
        });
    }
    match handler(probe)? {
        Handler::Exec(a) => {
            if a.command.as_ref().is_none_or(Vec::is_empty) {
                return Err(ProbeError::Invalid {
                    field: "exec.command",
                    reason: "must not be empty".to_owned(),
                });
            }
        }
        Handler::Http(a) => {
            http_scheme(a)?;
            resolve_port(container, &a.port, "httpGet.port")?;
            if let Some(host) = &a.host {
                check_host(host, "httpGet.host")?;
            }
            for h in a.http_headers.iter().flatten() {
                check_header(h)?;
            }
        }
        Handler::Tcp(a) => {
            resolve_port(container, &a.port, "tcpSocket.port")?;
            if let Some(host) = &a.host {
                check_host(host, "tcpSocket.host")?;
            }
        }
        Handler::Grpc(a) => {
            grpc_mode(a)?;
            port_in_range(a.port, "grpc.port")?;
        }
    }
    Ok(())
}

/// The rules that depend on the probe's kind: `successThreshold` must be 1 for
/// liveness and startup probes, and readiness probes take no
/// `terminationGracePeriodSeconds`.
pub fn validate_kind(kind: ProbeKind, probe: &Probe) -> Result<(), ProbeError> {
    if kind != ProbeKind::Readiness
        && let Some(n) = probe.success_threshold
        && n > 1
    {
        return Err(ProbeError::Invalid {
            field: "successThreshold",
            reason: format!("must be 1 for {kind} probes, is {n}"),
        });
    }
    if kind == ProbeKind::Readiness && probe.termination_grace_period_seconds.is_some() {
        return Err(ProbeError::Invalid {
            field: "terminationGracePeriodSeconds",
            reason: "must not be set for readiness probes".to_owned(),
        });
    }
    Ok(())
}

fn http_scheme(a: &HTTPGetAction) -> Result<(), ProbeError> {
    match a.scheme.as_deref() {
        None | Some("HTTP") => {}
        Some("HTTPS") => {
            return Err(ProbeError::Unsupported {
                field: "httpGet.scheme",
                what: "HTTPS".to_owned(),
            });
        }
        Some(other) => {
            return Err(ProbeError::Invalid {
                field: "httpGet.scheme",
                reason: format!("must be HTTP or HTTPS, is {other:?}"),
            });
        }
    }
    match a.protocol.as_deref() {
        None | Some("HTTP/1.1") => Ok(()),
        Some(other) => Err(ProbeError::Unsupported {
            field: "httpGet.protocol",
            what: format!("{other:?}"),
        }),
    }
}

fn grpc_mode(a: &GRPCAction) -> Result<(), ProbeError> {
    match a.mode.as_deref() {
        None | Some("Plaintext") => Ok(()),
        Some("TLS") => Err(ProbeError::Unsupported {
            field: "grpc.mode",
            what: "TLS".to_owned(),
        }),
        Some(other) => Err(ProbeError::Invalid {
            field: "grpc.mode",
            reason: format!("must be Plaintext or TLS, is {other:?}"),
        }),
    }
}

fn port_in_range(port: i32, field: &'static str) -> Result<u16, ProbeError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ProbeError::Invalid {
            field,
            reason: format!("must be between 1 and 65535, is {port}"),
        })
}

/// A probe's port: a number, or the name of one of the container's ports (or, as
/// the kubelet accepts, a number written as a string).
fn resolve_port(
    container: &Container,
    port: &IntOrString,
    field: &'static str,
) -> Result<u16, ProbeError> {
    match port {
        IntOrString::Int(n) => port_in_range(*n, field),
        IntOrString::String(name) => {
            let named = container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()));
            match (named, name.parse::<i32>()) {
                (Some(p), _) => port_in_range(p.container_port, field),
                (None, Ok(n)) => port_in_range(n, field),
                (None, Err(_)) => Err(ProbeError::NoSuchPort {
                    field,
                    name: name.clone(),
                }),
            }
        }
    }
}

fn check_host(host: &str, field: &'static str) -> Result<(), ProbeError> {
    if host
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/')
    {
        return Err(ProbeError::Invalid {
            field,
            reason: format!("{host:?} is not a host name or address"),
        });
    }
    Ok(())
}

fn check_header(h: &HTTPHeader) -> Result<(), ProbeError> {
    // RFC 9110 token characters for names; no line breaks in values.
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if h.name.is_empty() || !h.name.bytes().all(token) {
        return Err(ProbeError::Invalid {
            field: "httpGet.httpHeaders",
            reason: format!("{:?} is not a valid header name", h.name),
        });
    }
    if h.value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(ProbeError::Invalid {
            field: "httpGet.httpHeaders",
            reason: format!("the value of {:?} contains a line break", h.name),
        });
    }
    Ok(())
}

/// Runs one probe attempt with the probe's handler, within its `timeoutSeconds`.
/// `host_ip` is where the container's ports are (the default host of httpGet and
/// tcpSocket, the address of grpc). A failing probe is `Ok(Outcome::Failure)`;
/// `Err` is a probe that cannot be run (see [`ProbeError`]).
pub async fn probe_once(
    ctrd: &Containerd,
    container_id: &str,
    host_ip: &str,
    container: &Container,
    probe: &Probe,
) -> Result<Outcome, ProbeError> {
    let timeout = Timing::of(probe).timeout;
    match handler(probe)? {
        Handler::Exec(a) => exec_probe(ctrd, container_id, a, timeout).await,
        Handler::Http(a) => {
            http_scheme(a)?;
            let port = resolve_port(container, &a.port, "httpGet.port")?;
            let host = a
                .host
                .as_deref()
                .filter(|h| !h.is_empty())
                .unwrap_or(host_ip);
            let path = a.path.as_deref().unwrap_or("/");
            let headers = a.http_headers.as_deref().unwrap_or_default();
            for h in headers {
                check_header(h)?;
            }
            Ok(http_probe(host, port, path, headers, timeout).await)
        }
        Handler::Tcp(a) => {
            let port = resolve_port(container, &a.port, "tcpSocket.port")?;
            let host = a
                .host
                .as_deref()
                .filter(|h| !h.is_empty())
                .unwrap_or(host_ip);
            Ok(tcp_probe(host, port, timeout).await)
        }
        Handler::Grpc(a) => {
            grpc_mode(a)?;
            let port = port_in_range(a.port, "grpc.port")?;
            let service = a.service.clone().unwrap_or_default();
            Ok(grpc_probe(host_ip, port, service, timeout).await)
        }
    }
}

async fn exec_probe(
    ctrd: &Containerd,
    container_id: &str,
    action: &ExecAction,
    timeout: Duration,
) -> Result<Outcome, ProbeError> {
    let command = action.command.as_deref().unwrap_or_default();
    if command.is_empty() {
        return Err(ProbeError::Invalid {
            field: "exec.command",
            reason: "must not be empty".to_owned(),
        });
    }
    match ctrd.exec(container_id, command, timeout, MAX_OUTPUT).await {
        Ok(r) if r.timed_out => Ok(Outcome::Failure(format!(
            "command {command:?} timed out after {timeout:?}"
        ))),
        Ok(r) if r.exit_code == 0 => Ok(Outcome::Success),
        Ok(r) => {
            let mut output = r.stdout;
            output.extend_from_slice(&r.stderr);
            Ok(Outcome::Failure(format!(
                "command {command:?} exited with {}: {}",
                r.exit_code,
                excerpt(&output)
            )))
        }
        // runc could not start it (no such executable, ...): the probe ran and failed.
        Err(RuntimeError::Containerd {
            op: "Tasks.Start",
            source,
        }) => Ok(Outcome::Failure(format!(
            "command {command:?} could not start: {}",
            source.message()
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The first [`MAX_MESSAGE_OUTPUT`] bytes of `output`, as trimmed text.
fn excerpt(output: &[u8]) -> String {
    let cut = &output[..output.len().min(MAX_MESSAGE_OUTPUT)];
    String::from_utf8_lossy(cut).trim().to_owned()
}

async fn tcp_probe(host: &str, port: u16, timeout: Duration) -> Outcome {
    let addr = host_port(host, port);
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Outcome::Success,
        Ok(Err(e)) => Outcome::Failure(format!("dial tcp {addr}: {e}")),
        Err(_) => Outcome::Failure(format!("dial tcp {addr}: timed out after {timeout:?}")),
    }
}

async fn http_probe(
    host: &str,
    port: u16,
    path: &str,
    headers: &[HTTPHeader],
    timeout: Duration,
) -> Outcome {
    let request = http_request(host, port, path, headers);
    let url = format!("http://{}{}", host_port(host, port), request_target(path));
    let attempt = async {
        let mut stream = TcpStream::connect((host, port)).await?;
        stream.write_all(request.as_bytes()).await?;
        read_status(&mut stream).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(status)) if (200..400).contains(&status) => Outcome::Success,
        Ok(Ok(status)) => Outcome::Failure(format!("HTTP probe failed with statuscode: {status}")),
        Ok(Err(e)) => Outcome::Failure(format!("Get {url:?}: {e}")),
        Err(_) => Outcome::Failure(format!("Get {url:?}: timed out after {timeout:?}")),
    }
}

/// `host:port`, with an IPv6 address in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The request target: the path with a leading `/`, bytes that cannot appear in a
/// request line percent-encoded.
fn request_target(path: &str) -> String {
    let mut target = String::with_capacity(path.len() + 1);
    if !path.starts_with('/') {
        target.push('/');
    }
    for b in path.bytes() {
        if b <= b' ' || b >= 0x7f {
            target.push_str(&format!("%{b:02X}"));
        } else {
            target.push(char::from(b));
        }
    }
    target
}

/// The probe's request: the kubelet's default `Host`, `User-Agent` and `Accept`
/// unless the probe's headers set them, then the probe's headers.
fn http_request(host: &str, port: u16, path: &str, headers: &[HTTPHeader]) -> String {
    let set = |name: &str| headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
    let mut req = format!("GET {} HTTP/1.1\r\n", request_target(path));
    if !set("Host") {
        req.push_str(&format!("Host: {}\r\n", host_port(host, port)));
    }
    if !set("User-Agent") {
        req.push_str(&format!("User-Agent: {USER_AGENT}\r\n"));
    }
    if !set("Accept") {
        req.push_str("Accept: */*\r\n");
    }
    for h in headers {
        req.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    req.push_str("Connection: close\r\n\r\n");
    req
}

/// Reads the response's status line and returns its status code.
async fn read_status(stream: &mut TcpStream) -> std::io::Result<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0; 1024];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..end]);
            return parse_status_line(&line).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("malformed HTTP status line {line:?}"),
                )
            });
        }
        if buf.len() >= MAX_OUTPUT {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no HTTP status line in the first 10 KiB",
            ));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before an HTTP status line",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The status code of an HTTP/1.x status line (`HTTP/1.1 200 OK`).
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/1.")
        || code.len() != 3
        || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    code.parse().ok().filter(|c| (100..600).contains(c))
}

async fn grpc_probe(host: &str, port: u16, service: String, timeout: Duration) -> Outcome {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let addr = host_port(host, port);
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
        Ok(e) => e.connect_timeout(timeout).timeout(timeout),
        Err(e) => return Outcome::Failure(format!("bad gRPC address {addr}: {e}")),
    };
    let attempt = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("failed to connect service {addr:?}: {e}"))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest { service })
            .await
            .map(|r| r.into_inner().status)
            .map_err(|s| match s.code() {
                tonic::Code::Unimplemented => format!(
                    "this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                    s.message()
                ),
                code => format!("rpc error: code = {code:?} desc = {}", s.message()),
            })
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(status)) if status == ServingStatus::Serving as i32 => Outcome::Success,
        Ok(Ok(status)) => Outcome::Failure(format!(
            "service unhealthy (responded with {:?})",
            ServingStatus::try_from(status).map_or("UNKNOWN", |s| s.as_str_name())
        )),
        Ok(Err(message)) => Outcome::Failure(message),
        Err(_) => Outcome::Failure(format!(
            "timeout: health rpc did not complete within {timeout:?}"
        )),
    }
}

/// Runs the probe until `stop` resolves: waits `initialDelaySeconds`, probes every
/// `periodSeconds`, applies the thresholds ([`Thresholds`]) and sends a
/// [`Transition`] on `tx` each time the thresholded result changes, the first
/// result included. Returns early when `tx`'s receiver is gone or the probe is
/// invalid (callers [`validate`] first; an invalid probe is logged and never run).
#[allow(
    clippy::too_many_arguments,
    reason = "each is one thing the loop owns for its lifetime; a struct would only rename them"
)]
pub async fn run(
    ctrd: Containerd,
    container_id: String,
    host_ip: String,
    container: Container,
    kind: ProbeKind,
    probe: Probe,
    tx: mpsc::Sender<Transition>,
    stop: impl Future<Output = ()>,
) {
    if let Err(e) = validate(&container, &probe) {
        warn!(container = %container_id, probe = %kind, error = %e, "invalid probe not run");
        return;
    }
    let timing = Timing::of(&probe);
    let attempt = || probe_once(&ctrd, &container_id, &host_ip, &container, &probe);
    tokio::select! {
        () = stop => {}
        () = probe_loop(&container_id, kind, timing, attempt, &tx) => {}
    }
}

/// The loop of [`run`], over any attempt function (unit-tested with scripted ones).
async fn probe_loop<F, Fut>(
    container_id: &str,
    kind: ProbeKind,
    timing: Timing,
    mut attempt: F,
    tx: &mpsc::Sender<Transition>,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Outcome, ProbeError>>,
{
    tokio::time::sleep(timing.initial_delay).await;
    let mut thresholds = Thresholds::new(&timing);
    let mut ticks = tokio::time::interval(timing.period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let (success, message) = match attempt().await {
            Ok(Outcome::Success) => (true, String::new()),
            Ok(Outcome::Failure(message)) => (false, message),
            Err(e) => {
                debug!(container = container_id, probe = %kind, error = %e, "probe errored; result discarded");
                continue;
            }
        };
        let Some(healthy) = thresholds.observe(success) else {
            continue;
        };
        info!(container = container_id, probe = %kind, healthy, message = %message, "probe result changed");
        let transition = Transition {
            kind,
            healthy,
            message,
        };
        if tx.send(transition).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use k8s_openapi::api::core::v1::ContainerPort;

    use super::*;

    fn container_with_port(name: &str, port: i32) -> Container {
        Container {
            name: "c".to_owned(),
            ports: Some(vec![ContainerPort {
                name: Some(name.to_owned()),
                container_port: port,
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    fn http(port: IntOrString) -> Probe {
        Probe {
            http_get: Some(HTTPGetAction {
                port,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn exec(command: &[&str]) -> Probe {
        Probe {
            exec: Some(ExecAction {
                command: Some(command.iter().map(|s| (*s).to_owned()).collect()),
            }),
            ..Default::default()
        }
    }

    fn header(name: &str, value: &str) -> HTTPHeader {
        HTTPHeader {
            name: name.to_owned(),
            value: value.to_owned(),
        }
    }

    #[test]
    fn timing_defaults_are_kubernetes_defaults() {
        let defaults = Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
        };
        assert_eq!(Timing::of(&Probe::default()), defaults);
        let zeros = Probe {
            initial_delay_seconds: Some(0),
            period_seconds: Some(0),
            timeout_seconds: Some(0),
            success_threshold: Some(0),
            failure_threshold: Some(0),
            ..Default::default()
        };
        assert_eq!(Timing::of(&zeros), defaults);
        let set = Probe {
            initial_delay_seconds: Some(5),
            period_seconds: Some(2),
            timeout_seconds: Some(3),
            success_threshold: Some(2),
            failure_threshold: Some(7),
            ..Default::default()
        };
        assert_eq!(
            Timing::of(&set),
            Timing {
                initial_delay: Duration::from_secs(5),
                period: Duration::from_secs(2),
                timeout: Duration::from_secs(3),
                success_threshold: 2,
                failure_threshold: 7,
            }
        );
    }

    #[test]
    fn validate_accepts_each_handler() {
        let c = container_with_port("web", 8080);
        validate(&c, &exec(&["true"])).expect("exec");
        validate(&c, &http(IntOrString::Int(80))).expect("httpGet by number");
        validate(&c, &http(IntOrString::String("web".into()))).expect("httpGet by name");
        validate(&c, &http(IntOrString::String("8081".into()))).expect("numeric string");
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("web".into()),
                host: Some("127.0.0.1".into()),
            }),
            ..Default::default()
        };
        validate(&c, &tcp).expect("tcpSocket");
        let grpc = Probe {
            grpc: Some(GRPCAction {
                port: 9000,
                ..Default::default()
            }),
            ..Default::default()
        };
        validate(&c, &grpc).expect("grpc");
    }

    #[test]
    fn validate_rejects_bad_probes_naming_the_field() {
        let c = container_with_port("web", 8080);
        assert!(matches!(
            validate(&c, &Probe::default()),
            Err(ProbeError::NoHandler)
        ));
        let two = Probe {
            tcp_socket: Some(TCPSocketAction::default()),
            ..exec(&["true"])
        };
        match validate(&c, &two) {
            Err(ProbeError::MultipleHandlers { handlers }) => {
                assert_eq!(handlers, ["exec", "tcpSocket"]);
            }
            other => panic!("{other:?}"),
        }
        let field = |p: &Probe| match validate(&c, p) {
            Err(
                ProbeError::Invalid { field, .. }
                | ProbeError::NoSuchPort { field, .. }
                | ProbeError::Unsupported { field, .. },
            ) => field,
            other => panic!("{p:?}: {other:?}"),
        };
        assert_eq!(field(&exec(&[])), "exec.command");
        assert_eq!(
            field(&http(IntOrString::String("api".into()))),
            "httpGet.port"
        );
        assert_eq!(field(&http(IntOrString::Int(0))), "httpGet.port");
        assert_eq!(field(&http(IntOrString::Int(65536))), "httpGet.port");
        let named_missing = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("nope".into()),
                host: None,
            }),
            ..Default::default()
        };
        assert!(matches!(
            validate(&c, &named_missing),
            Err(ProbeError::NoSuchPort { field: "tcpSocket.port", ref name }) if name == "nope"
        ));
        let mut https = http(IntOrString::Int(443));
        if let Some(a) = https.http_get.as_mut() {
            a.scheme = Some("HTTPS".into());
        }
        assert!(matches!(
            validate(&c, &https),
            Err(ProbeError::Unsupported {
                field: "httpGet.scheme",
                ..
            })
        ));
        let mut bad_header = http(IntOrString::Int(80));
        if let Some(a) = bad_header.http_get.as_mut() {
            a.http_headers = Some(vec![header("X-Evil", "a\r\nInjected: 1")]);
        }
        assert_eq!(field(&bad_header), "httpGet.httpHeaders");
        let mut bad_name = http(IntOrString::Int(80));
        if let Some(a) = bad_name.http_get.as_mut() {
            a.http_headers = Some(vec![header("Bad Name", "v")]);
        }
        assert_eq!(field(&bad_name), "httpGet.httpHeaders");
        let grpc_tls = Probe {
            grpc: Some(GRPCAction {
                port: 9000,
                mode: Some("TLS".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(field(&grpc_tls), "grpc.mode");
        let grpc_port = Probe {
            grpc: Some(GRPCAction {
                port: -1,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(field(&grpc_port), "grpc.port");
        for (negative, name) in [
            (
                Probe {
                    initial_delay_seconds: Some(-1),
                    ..exec(&["true"])
                },
                "initialDelaySeconds",
            ),
            (
                Probe {
                    period_seconds: Some(-1),
                    ..exec(&["true"])
                },
                "periodSeconds",
            ),
            (
                Probe {
                    timeout_seconds: Some(-5),
                    ..exec(&["true"])
                },
                "timeoutSeconds",
            ),
            (
                Probe {
                    success_threshold: Some(-1),
                    ..exec(&["true"])
                },
                "successThreshold",
            ),
            (
                Probe {
                    failure_threshold: Some(-1),
                    ..exec(&["true"])
                },
                "failureThreshold",
            ),
            (
                Probe {
                    termination_grace_period_seconds: Some(0),
                    ..exec(&["true"])
                },
                "terminationGracePeriodSeconds",
            ),
        ] {
            assert_eq!(field(&negative), name);
        }
        let e = validate(&c, &exec(&[])).unwrap_err().to_string();
        assert_eq!(e, "exec.command: must not be empty");
    }

    #[test]
    fn kind_rules() {
        let three = Probe {
            success_threshold: Some(3),
            ..exec(&["true"])
        };
        validate_kind(ProbeKind::Readiness, &three).expect("readiness may need 3");
        assert!(validate_kind(ProbeKind::Liveness, &three).is_err());
        assert!(validate_kind(ProbeKind::Startup, &three).is_err());
        let grace = Probe {
            termination_grace_period_seconds: Some(5),
            ..exec(&["true"])
        };
        validate_kind(ProbeKind::Liveness, &grace).expect("liveness grace");
        assert!(validate_kind(ProbeKind::Readiness, &grace).is_err());
    }

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status_line("HTTP/1.0 404 Not Found"), Some(404));
        assert_eq!(parse_status_line("HTTP/1.1 204"), Some(204));
        assert_eq!(parse_status_line("HTTP/1.1 302 Found here"), Some(302));
        assert_eq!(parse_status_line("HTTP/1.1 20 OK"), None);
        assert_eq!(parse_status_line("HTTP/1.1 abc OK"), None);
        assert_eq!(parse_status_line("HTTP/1.1 999 Nope"), None);
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH_9.6"), None);
        assert_eq!(parse_status_line(""), None);
    }

    #[test]
    fn requests_carry_kubelet_defaults_unless_overridden() {
        let req = http_request("10.0.0.5", 8080, "healthz", &[header("X-Probe", "1")]);
        assert_eq!(
            req,
            format!(
                "GET /healthz HTTP/1.1\r\nHost: 10.0.0.5:8080\r\nUser-Agent: {USER_AGENT}\r\n\
                 Accept: */*\r\nX-Probe: 1\r\nConnection: close\r\n\r\n"
            )
        );
        let req = http_request(
            "::1",
            80,
            "/a b?q=ü",
            &[header("host", "example.com"), header("user-agent", "me")],
        );
        assert!(
            req.starts_with("GET /a%20b?q=%C3%BC HTTP/1.1\r\nAccept: */*\r\nhost: example.com\r\n"),
            "{req}"
        );
        assert!(!req.contains("User-Agent: kube-probe"), "{req}");
        assert_eq!(host_port("::1", 80), "[::1]:80");
    }

    #[test]
    fn thresholds_need_consecutive_results() {
        let timing = Timing {
            success_threshold: 2,
            failure_threshold: 3,
            ..Timing::of(&Probe::default())
        };
        let mut t = Thresholds::new(&timing);
        let seq = [
            (true, None),
            (false, None),
            (false, None),
            (true, None),
            (true, Some(true)),
            (true, None),
            (false, None),
            (false, None),
            (false, Some(false)),
            (false, None),
            (true, None),
            (false, None),
            (true, None),
            (true, Some(true)),
        ];
        for (i, (success, change)) in seq.into_iter().enumerate() {
            assert_eq!(t.observe(success), change, "step {i}");
        }
        assert_eq!(t.state(), Some(true));
    }

    #[test]
    fn default_thresholds_report_the_first_success_at_once() {
        let mut t = Thresholds::new(&Timing::of(&Probe::default()));
        assert_eq!(t.state(), None);
        assert_eq!(t.observe(true), Some(true));
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(false));
        assert_eq!(t.observe(true), Some(true));
    }

    #[test]
    fn excerpts_are_trimmed_and_capped() {
        assert_eq!(excerpt(b"  boom\n"), "boom");
        assert_eq!(excerpt(&[b'x'; 5000]).len(), MAX_MESSAGE_OUTPUT);
    }

    /// When each scripted attempt ran, from the script's start.
    type Times = Arc<Mutex<Vec<Duration>>>;

    /// Scripted attempts, recording when each ran.
    fn script(
        outcomes: Vec<Result<Outcome, ProbeError>>,
    ) -> (
        impl FnMut() -> std::future::Ready<Result<Outcome, ProbeError>>,
        Times,
    ) {
        let start = tokio::time::Instant::now();
        let times = Arc::new(Mutex::new(Vec::new()));
        let seen = times.clone();
        let mut outcomes = VecDeque::from(outcomes);
        let attempt = move || {
            seen.lock().expect("lock").push(start.elapsed());
            std::future::ready(outcomes.pop_front().unwrap_or(Ok(Outcome::Success)))
        };
        (attempt, times)
    }

    #[tokio::test(start_paused = true)]
    async fn loop_waits_probes_periodically_and_reports_changes() {
        let timing = Timing {
            initial_delay: Duration::from_secs(5),
            period: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 2,
        };
        let fail = |m: &str| Ok(Outcome::Failure(m.to_owned()));
        let (attempt, times) = script(vec![
            Ok(Outcome::Success),
            fail("one"),
            Err(ProbeError::NoHandler), // discarded: does not break the run of failures
            fail("two"),
            Ok(Outcome::Success),
        ]);
        let (tx, mut rx) = mpsc::channel(8);
        let looping = probe_loop("c1", ProbeKind::Liveness, timing, attempt, &tx);
        let received = async {
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(rx.recv().await.expect("transition"));
            }
            got
        };
        let got = tokio::select! {
            () = looping => panic!("loop ended"),
            got = received => got,
        };
        let t = |healthy: bool, message: &str| Transition {
            kind: ProbeKind::Liveness,
            healthy,
            message: message.to_owned(),
        };
        assert_eq!(got, [t(true, ""), t(false, "two"), t(true, "")]);
        let secs: Vec<u64> = times
            .lock()
            .expect("lock")
            .iter()
            .map(Duration::as_secs)
            .collect();
        assert_eq!(secs, [5, 7, 9, 11, 13]);
    }

    #[tokio::test(start_paused = true)]
    async fn loop_ends_when_the_receiver_is_gone() {
        let (attempt, _) = script(vec![]);
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let timing = Timing::of(&Probe::default());
        tokio::time::timeout(
            Duration::from_secs(60),
            probe_loop("c1", ProbeKind::Readiness, timing, attempt, &tx),
        )
        .await
        .expect("loop returns once its transition cannot be delivered");
    }
}
