//! A small EC2 proxy in front of `moto_server`, for what moto cannot do
//! (TESTENV §4): it forwards every call and, as a test directs, answers with
//! EC2's documented error responses instead, or lets a call through and loses
//! its answer. It enforces RunInstances' `ClientToken` idempotency as EC2 does
//! (the same token answers with the same instances; moto ignores tokens), and
//! logs every call it sees, so tests can check what the control plane asked.
//! It emulates On-Demand Capacity Reservations, which moto lacks
//! ([`reservations`]: create, describe, cancel, targeted launches and their
//! errors, the targeting echoed in instances).
//!
//! IAM speaks the same query protocol and `moto_server` serves it on the same
//! port, so the control plane's IAM endpoint (which defaults to its EC2 one) is
//! this proxy too: its IAM calls (`GetInstanceProfile`) are forwarded, logged
//! and recorded like EC2's, told apart by the service their signature names.
//!
//! Every call not signed with the test harness's own key ([`HARNESS_ACCESS_KEY`],
//! which [`ec2_client`] and [`iam_client`] use) is the control plane's: it is
//! also appended to a file under [`crate::recordings::dir`] as it arrives, for
//! the exact check of `deploy/kubernetes/iam-policy.json` (`check-recordings`).
//!
//! It speaks just enough HTTP/1.1 for the AWS query protocol (aws-sdk-ec2's and
//! aws-sdk-iam's): one form-encoded POST per connection, answered with
//! `connection: close`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

mod reservations;
mod xml;

pub use reservations::ReservationView;
use reservations::Reservations;

/// The access key id of the tests' own EC2 clients ([`ec2_client`]). The
/// control plane signs with another (`testing`), so the proxy tells its calls
/// from the tests' own; moto takes any key and puts both in its default account.
pub const HARNESS_ACCESS_KEY: &str = "orca-test-harness";

/// An EC2 client of `endpoint` (moto or the proxy) in moto's region, with
/// static credentials ([`HARNESS_ACCESS_KEY`]).
pub async fn ec2_client(endpoint: &str) -> aws_sdk_ec2::Client {
    orca_control_plane::cloud::ec2::client(&orca_control_plane::cloud::ec2::ClientSettings {
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint.into()),
        iam_endpoint: None,
        static_credentials: Some((HARNESS_ACCESS_KEY.into(), "testing".into())),
        call_timeout: None,
    })
    .await
}

/// An IAM client of `endpoint` (moto or the proxy), with static credentials
/// ([`HARNESS_ACCESS_KEY`]).
pub async fn iam_client(endpoint: &str) -> aws_sdk_iam::Client {
    orca_control_plane::cloud::ec2::iam_client(&orca_control_plane::cloud::ec2::ClientSettings {
        region: Some("us-east-1".into()),
        endpoint: None,
        iam_endpoint: Some(endpoint.into()),
        static_credentials: Some((HARNESS_ACCESS_KEY.into(), "testing".into())),
        call_timeout: None,
    })
    .await
}

/// What the proxy does to a matching call instead of forwarding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answers with this EC2 error (`InsufficientInstanceCapacity`, ...) and HTTP status.
    Error {
        /// The error code.
        code: String,
        /// Its message.
        message: String,
        /// HTTP status (EC2 uses 400 for client errors, 500/503 for capacity and throttling).
        status: u16,
    },
    /// Forwards the call (it takes effect) and closes the connection without an answer.
    DropResponse,
    /// Lets the call take effect (forwarded, or the cached answer for a known
    /// ClientToken) and never answers: the client must give up on its own.
    Hang,
}

impl Fault {
    /// An EC2 error answer.
    pub fn error(code: &str, message: &str, status: u16) -> Self {
        Self::Error {
            code: code.into(),
            message: message.into(),
            status,
        }
    }
}

/// One call the proxy saw.
#[derive(Debug, Clone)]
pub struct Call {
    /// The `Action` parameter.
    pub action: String,
    /// Every form parameter.
    pub params: BTreeMap<String, String>,
    /// What the client got: an HTTP status, or 0 when the answer was dropped.
    pub status: u16,
    /// When the whole request had arrived.
    pub at: std::time::SystemTime,
}

#[derive(Debug, Default)]
struct State {
    /// (action, times left, fault).
    faults: Vec<(String, usize, Fault)>,
    /// RunInstances answers by ClientToken.
    tokens: HashMap<String, (u16, String)>,
    calls: Vec<Call>,
    reservations: Reservations,
    /// Where the control plane's calls are recorded, and the test's name
    /// (taken when the proxy starts, on the test's thread).
    recorder: Option<(crate::recordings::Recorder, String)>,
}

/// A running proxy; it stops when the test's runtime ends.
#[derive(Debug, Clone)]
pub struct Ec2Proxy {
    /// `http://127.0.0.1:PORT`, the endpoint override for clients.
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

impl Ec2Proxy {
    /// Starts a proxy forwarding to `upstream` (moto's endpoint). Call it inside
    /// a tokio runtime.
    pub async fn start(upstream: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State {
            recorder: Some((
                crate::recordings::Recorder::new(crate::recordings::EC2_CALLS),
                crate::recordings::source(),
            )),
            ..State::default()
        }));
        let shared = state.clone();
        let upstream = upstream.trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (state, upstream, http) = (shared.clone(), upstream.clone(), http.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, &state, &upstream, &http).await {
                        tracing::debug!(error = %e, "ec2 proxy connection failed");
                    }
                });
            }
        });
        Ok(Self { endpoint, state })
    }

    /// The next `times` calls of `action` meet `fault`.
    pub fn fail(&self, action: &str, times: usize, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .push((action.into(), times, fault));
    }

    /// Forgets the faults not yet used up.
    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Capacity reservation `id` as it stands now (made through
    /// `CreateCapacityReservation`).
    pub fn reservation(&self, id: &str) -> Option<ReservationView> {
        self.state.lock().unwrap().reservations.view(id)
    }

    /// Makes an active, `open`, Linux/UNIX capacity reservation of `count`
    /// `instance_type` in `availability_zone`, as `CreateCapacityReservation` would
    /// (without a call in the log); its id.
    pub fn create_reservation(
        &self,
        instance_type: &str,
        availability_zone: &str,
        count: u32,
    ) -> String {
        let params = BTreeMap::from([
            ("InstanceType".to_owned(), instance_type.to_owned()),
            ("InstancePlatform".to_owned(), "Linux/UNIX".to_owned()),
            ("AvailabilityZone".to_owned(), availability_zone.to_owned()),
            ("InstanceCount".to_owned(), count.to_string()),
        ]);
        self.state
            .lock()
            .unwrap()
            .reservations
            .insert(&params)
            .unwrap_or_else(|(_, body)| panic!("creating a capacity reservation: {body}"))
    }

    /// Makes a Capacity Block of `count` `instance_type` in `availability_zone`
    /// that ends at `end`, as PurchaseCapacityBlock would (without a call in the
    /// log); its id.
    pub fn create_capacity_block(
        &self,
        instance_type: &str,
        availability_zone: &str,
        count: u32,
        end: jiff::Timestamp,
    ) -> String {
        self.state
            .lock()
            .unwrap()
            .reservations
            .insert_capacity_block(instance_type, availability_zone, count, end)
    }

    /// Moves the end of reservation `id` to `end`, as ModifyCapacityReservation
    /// would (without a call in the log); whether it exists.
    pub fn set_reservation_end(&self, id: &str, end: jiff::Timestamp) -> bool {
        self.state.lock().unwrap().reservations.set_end(id, end)
    }

    /// Every capacity reservation, by id.
    pub fn reservations(&self) -> Vec<ReservationView> {
        self.state.lock().unwrap().reservations.views()
    }

    /// The calls of one action so far.
    pub fn calls_of(&self, action: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.action == action)
            .collect()
    }
}

async fn serve(
    stream: TcpStream,
    state: &Mutex<State>,
    upstream: &str,
    http: &reqwest::Client,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_owned(), v.trim().to_owned());
            if k.eq_ignore_ascii_case("content-length") {
                length = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    let received = std::time::SystemTime::now();
    let params: BTreeMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let action = params.get("Action").cloned().unwrap_or_default();

    let fault = {
        let mut st = state.lock().unwrap();
        let hit = st
            .faults
            .iter_mut()
            .find(|(a, left, _)| *a == action && *left > 0);
        hit.map(|(_, left, fault)| {
            *left -= 1;
            fault.clone()
        })
    };
    let token = (action == "RunInstances")
        .then(|| params.get("ClientToken").cloned())
        .flatten();
    let cached = token
        .as_ref()
        .and_then(|t| state.lock().unwrap().tokens.get(t).cloned());

    let answer = match (&fault, cached) {
        (
            Some(Fault::Error {
                code,
                message,
                status,
            }),
            _,
        ) => Some((*status, xml::error(code, message))),
        (Some(Fault::Hang), Some(_)) => None,
        (_, Some(answer)) => Some(answer),
        (_, None) => {
            let moto = Upstream {
                http,
                url: format!("{upstream}{path}"),
                headers: &headers,
            };
            let answered = answer(state, &moto, &action, &params, body).await;
            if let (Some(t), (200, _)) = (&token, &answered) {
                state
                    .lock()
                    .unwrap()
                    .tokens
                    .insert(t.clone(), answered.clone());
            }
            (!matches!(fault, Some(Fault::DropResponse | Fault::Hang))).then_some(answered)
        }
    };
    let status = answer.as_ref().map_or(0, |(s, _)| *s);
    if !signed_by_harness(&headers) {
        record(state, signing_service(&headers), &params);
    }
    state.lock().unwrap().calls.push(Call {
        action,
        params,
        status,
        at: received,
    });
    let mut stream = reader.into_inner();
    if fault == Some(Fault::Hang) {
        // Hold the connection open until the client closes it.
        let mut sink = [0u8; 64];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        return Ok(());
    }
    if let Some((status, body)) = answer {
        let head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: text/xml;charset=UTF-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            if status == 200 { "OK" } else { "Error" },
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

/// Whether the `authorization` header names [`HARNESS_ACCESS_KEY`]
/// (`AWS4-HMAC-SHA256 Credential=KEY/date/region/ec2/aws4_request, ...`).
fn signed_by_harness(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("authorization")
            && v.contains(&format!("Credential={HARNESS_ACCESS_KEY}/"))
    })
}

/// The service a call's signature is for, from its credential scope
/// (`Credential=KEY/date/region/SERVICE/aws4_request`); `ec2` when unsigned.
fn signing_service(headers: &[(String, String)]) -> &str {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .and_then(|(_, v)| v.split("Credential=").nth(1))
        .and_then(|scope| scope.split([',', ' ']).next())
        .and_then(|scope| scope.split('/').nth(3))
        .unwrap_or("ec2")
}

/// Appends the control plane's call to the recordings.
fn record(state: &Mutex<State>, service: &str, params: &BTreeMap<String, String>) {
    let Some((recorder, source)) = state.lock().unwrap().recorder.clone() else {
        return;
    };
    let line = crate::recordings::Ec2CallLine::of(
        source,
        service,
        params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    if let Err(e) = recorder.append(&[line]) {
        eprintln!(
            "warning: cannot record an EC2 call in {}: {e}",
            recorder.path().display()
        );
    }
}

/// The answer to a call that no fault or cached answer takes: the proxy's own for
/// capacity reservations, else moto's, with the reservation bookkeeping around it.
async fn answer(
    state: &Mutex<State>,
    moto: &Upstream<'_>,
    action: &str,
    params: &BTreeMap<String, String>,
    body: Vec<u8>,
) -> (u16, String) {
    if Reservations::answers(action) {
        return state.lock().unwrap().reservations.answer(action, params);
    }
    match action {
        "RunInstances" => {
            let admitted = state.lock().unwrap().reservations.admit(params);
            let admission = match admitted {
                Ok(admission) => admission,
                Err(refusal) => return refusal,
            };
            let body = if admission.params == *params {
                body
            } else {
                form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(&admission.params)
                    .finish()
                    .into_bytes()
            };
            let (status, text) = moto.forward(body).await;
            let text = state
                .lock()
                .unwrap()
                .reservations
                .launched(admission, status, text);
            (status, text)
        }
        "TerminateInstances" => {
            let (status, text) = moto.forward(body).await;
            if status == 200 {
                state.lock().unwrap().reservations.terminated(&text);
            }
            (status, text)
        }
        "DescribeInstances" => {
            let (status, text) = moto.forward(body).await;
            if status == 200 {
                let text = state.lock().unwrap().reservations.echo(&text);
                return (status, text);
            }
            (status, text)
        }
        _ => moto.forward(body).await,
    }
}

/// Where a call goes on: moto's URL, with the client's headers.
struct Upstream<'a> {
    http: &'a reqwest::Client,
    url: String,
    headers: &'a [(String, String)],
}

impl Upstream<'_> {
    /// Sends `body` to moto; a failure to reach it is answered 502.
    async fn forward(&self, body: Vec<u8>) -> (u16, String) {
        let mut req = self.http.post(&self.url).body(body);
        for (k, v) in self.headers {
            if !matches!(
                k.to_ascii_lowercase().as_str(),
                "host" | "content-length" | "connection"
            ) {
                req = req.header(k, v);
            }
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                (status, resp.text().await.unwrap_or_default())
            }
            Err(e) => (502, xml::error("ProxyUpstreamError", &e.to_string())),
        }
    }
}
