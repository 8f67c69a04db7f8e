//! `/exec` and `/attach`: the upgrade (SPDY/3.1 or WebSocket channels, see
//! [`upgrade`]), then the session bridged to the pod's agent through
//! [`crate::streams::Streams::exec`](crate::cluster::crate::streams::Streams::exec) and `attach`.

use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use orca_kubelet_streams::remotecommand::{self, Outcome, RemoteSession, StreamOptions};
use orca_kubelet_streams::upgrade;
use orca_proto::agent::v1 as agent;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use super::query::Query;
use super::server::{Body, Kubelet, empty, error_response, text};

/// Which of the two the request is.
#[derive(Debug, Clone, Copy)]
pub enum What {
    /// A new process in the container.
    Exec,
    /// The container's main process.
    Attach,
}

/// Upgrades the request and runs the session in the background.
pub async fn serve(
    kubelet: Arc<Kubelet>,
    mut req: Request<Incoming>,
    what: What,
    ns: String,
    pod: String,
    container: String,
) -> Response<Body> {
    let q = Query::parse(req.uri().query().unwrap_or(""));
    let options = StreamOptions::from_query(req.uri().query().unwrap_or(""));
    let command = q.all("command");
    let tty = options.tty;
    if matches!(what, What::Exec) && command.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least one command for the container",
        );
    }
    if !options.any() {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 of stdin, stdout, stderr",
        );
    }
    // Refuse before upgrading when the pod cannot be reached.
    if let Err(e) = kubelet.cluster.pods().pod(&ns, &pod) {
        return error_response(&e);
    }
    let negotiated = match upgrade::negotiate(upgrade::Kind::RemoteCommand, req.headers()) {
        Ok(n) => n,
        Err(rejection) => return text(StatusCode::BAD_REQUEST, rejection.to_string()),
    };
    let mut response = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    if let Some(headers) = response.headers_mut() {
        headers.extend(negotiated.response_headers.clone());
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let timeout = kubelet.config.kubelet.stream_creation_timeout;
    // Protocol v3 and later carry terminal sizes (v1 and v2 have no resize stream).
    let sized = tty && negotiated.version >= 3;
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                debug!(error = %e, "exec upgrade failed");
                return;
            }
        };
        let session = match remotecommand::accept(io, negotiated, options, timeout).await {
            Ok(s) => s,
            Err(e) => {
                warn!(pod = %pod, error = %e, "exec session not established");
                return;
            }
        };
        run(
            kubelet,
            session,
            what,
            (ns, pod, container),
            command,
            (tty, sized),
        )
        .await;
    });
    response.body(empty()).unwrap_or_default()
}

/// Client input as the agent takes it: stdin (closed with `close_stdin`) and
/// resizes, interleaved as they come.
fn input<T: Send + 'static>(
    session: &mut RemoteSession,
    stdin: impl Fn(bytes::Bytes) -> T + Send + 'static,
    close: impl Fn() -> T + Send + 'static,
    resize: impl Fn(agent::TerminalSize) -> T + Send + 'static,
) -> impl Stream<Item = T> + Send + 'static {
    let data = match session.stdin.take() {
        Some(rx) => ReceiverStream::new(rx)
            .map(stdin)
            .chain(futures::stream::once(async move { close() }))
            .boxed(),
        None => futures::stream::empty().boxed(),
    };
    let (_, dummy) = tokio::sync::mpsc::channel(1);
    let resizes =
        ReceiverStream::new(std::mem::replace(&mut session.resize, dummy)).map(move |s| {
            resize(agent::TerminalSize {
                width: u32::from(s.width),
                height: u32::from(s.height),
            })
        });
    futures::stream::select(data, resizes)
}

/// How long a terminal session waits for the client's first size before the
/// process starts: kubectl sends it at once, and a process that starts first
/// sees the wrong size (`stty size`, a full-screen program's first frame).
const FIRST_SIZE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The client's first terminal size, or 80x24 if none comes in time.
async fn first_size(session: &mut RemoteSession) -> agent::TerminalSize {
    match tokio::time::timeout(FIRST_SIZE_WAIT, session.resize.recv()).await {
        Ok(Some(s)) if s.width > 0 && s.height > 0 => agent::TerminalSize {
            width: u32::from(s.width),
            height: u32::from(s.height),
        },
        _ => agent::TerminalSize {
            width: 80,
            height: 24,
        },
    }
}

async fn run(
    kubelet: Arc<Kubelet>,
    mut session: RemoteSession,
    what: What,
    (ns, pod, container): (String, String, String),
    command: Vec<String>,
    (tty, sized): (bool, bool),
) {
    let stdin = session.stdin.is_some();
    let output = match what {
        What::Exec => {
            let terminal_size = match (tty, sized) {
                (true, true) => Some(first_size(&mut session).await),
                (true, false) => Some(agent::TerminalSize {
                    width: 80,
                    height: 24,
                }),
                (false, _) => None,
            };
            let input = input(
                &mut session,
                |b| agent::ExecInput {
                    input: Some(agent::exec_input::Input::Stdin(b)),
                },
                || agent::ExecInput {
                    input: Some(agent::exec_input::Input::CloseStdin(true)),
                },
                |s| agent::ExecInput {
                    input: Some(agent::exec_input::Input::Resize(s)),
                },
            );
            let start = agent::ExecStart {
                uid: String::new(),
                container,
                command,
                tty,
                stdin,
                terminal_size,
            };
            kubelet
                .cluster
                .streams()
                .exec(&ns, &pod, start, input)
                .await
        }
        What::Attach => {
            let input = input(
                &mut session,
                |b| agent::AttachInput {
                    input: Some(agent::attach_input::Input::Stdin(b)),
                },
                || agent::AttachInput {
                    input: Some(agent::attach_input::Input::CloseStdin(true)),
                },
                |s| agent::AttachInput {
                    input: Some(agent::attach_input::Input::Resize(s)),
                },
            );
            let start = agent::AttachStart {
                uid: String::new(),
                container,
                stdin,
                tty,
            };
            kubelet
                .cluster
                .streams()
                .attach(&ns, &pod, start, input)
                .await
        }
    };
    let mut output = match output {
        Ok(o) => o,
        Err(e) => {
            session.finish.finish(Outcome::Error(e.to_string())).await;
            return;
        }
    };
    let mut outcome = Outcome::Exited(0);
    while let Some(item) = output.next().await {
        use agent::exec_output::Output;
        match item.map(|o| o.output) {
            Ok(Some(Output::Stdout(b))) => {
                if let Some(out) = &session.stdout {
                    let _ = out.send(b).await;
                }
            }
            Ok(Some(Output::Stderr(b))) => {
                if let Some(err) = session.stderr.as_ref().or(session.stdout.as_ref()) {
                    let _ = err.send(b).await;
                }
            }
            Ok(Some(Output::Exit(exit))) => {
                outcome = if exit.code >= 0 {
                    Outcome::Exited(exit.code)
                } else {
                    Outcome::Error(exit.reason)
                };
            }
            Ok(None) => {}
            Err(status) => {
                outcome = Outcome::Error(status.message().to_owned());
                break;
            }
        }
    }
    session.finish.finish(outcome).await;
}
