//! A small IMDSv2 server playing an EC2 instance's metadata service on a
//! loopback port: a session token from `PUT /latest/api/token` (which needs the
//! TTL header), then `GET /latest/user-data` and `/latest/meta-data/<key>` only
//! with that token, as EC2 answers with `HttpTokens: required`. Tests point
//! agents at it; nothing is ever sent to 169.254.169.254 on the machine's own
//! network (a server on that address lives only inside a test's namespace).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use orca_control_plane::cloud::netns::NETNS_DIR;

/// A running metadata server; it stops with the test process.
#[derive(Debug, Clone)]
pub struct ImdsServer {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    user_data: String,
    /// `meta-data/<key>` → value.
    meta: Vec<(String, String)>,
    tokens: Vec<String>,
    /// Requests seen: `METHOD PATH STATUS`.
    log: Vec<String>,
}

impl ImdsServer {
    /// Serves `user_data` and the `meta-data/<key>` values of `meta`
    /// (`instance-id`, `local-ipv4`, ...) on a loopback port.
    pub fn start(user_data: &str, meta: &[(&str, &str)]) -> std::io::Result<Self> {
        Self::serve_on(TcpListener::bind("127.0.0.1:0")?, user_data, meta)
    }

    /// As [`ImdsServer::start`], on EC2's own address and port
    /// (`169.254.169.254:80`) inside network namespace `netns`, so that an agent
    /// there reads its metadata at the default endpoint, as on EC2. The address
    /// is added to the namespace's `lo`; nothing outside the namespace sees it.
    pub fn start_in_netns(
        netns: &str,
        user_data: &str,
        meta: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        let ip = super::require("ip");
        let out = std::process::Command::new(ip)
            .args([
                "-n",
                netns,
                "addr",
                "add",
                "169.254.169.254/32",
                "dev",
                "lo",
            ])
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "adding 169.254.169.254 to lo in {netns}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let path = std::path::Path::new(NETNS_DIR).join(netns);
        // setns(2) moves only the calling thread: a thread of its own binds the
        // socket there, and the socket stays in that namespace.
        let listener = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path)?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            TcpListener::bind("169.254.169.254:80")
        })
        .join()
        .map_err(|_| std::io::Error::other("the netns binding thread panicked"))??;
        Self::serve_on(listener, user_data, meta)
    }

    fn serve_on(
        listener: TcpListener,
        user_data: &str,
        meta: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        let endpoint = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State {
            user_data: user_data.into(),
            meta: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        Ok(Self { endpoint, state })
    }

    /// Sets `meta-data/<key>` (e.g. `spot/instance-action`, as EC2 does two
    /// minutes before reclaiming a spot instance).
    pub fn set_meta(&self, key: &str, value: &str) {
        let mut st = self.state.lock().unwrap();
        st.meta.retain(|(k, _)| k != key);
        st.meta.push((key.to_owned(), value.to_owned()));
    }

    /// The requests seen so far, `METHOD PATH STATUS` each.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    );
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut st = state.lock().unwrap();
    let (status, body) = match (method.as_str(), path.as_str()) {
        ("PUT", "/latest/api/token") => match header("x-aws-ec2-metadata-token-ttl-seconds") {
            Some(_) => {
                let token = format!("token-{}", st.tokens.len() + 1);
                st.tokens.push(token.clone());
                (200, token)
            }
            None => (400, "missing x-aws-ec2-metadata-token-ttl-seconds".into()),
        },
        ("GET", p) => {
            let authorised =
                header("x-aws-ec2-metadata-token").is_some_and(|t| st.tokens.contains(&t));
            match (authorised, p) {
                (false, _) => (401, String::new()),
                (true, "/latest/user-data") => (200, st.user_data.clone()),
                (true, p) => match p
                    .strip_prefix("/latest/meta-data/")
                    .and_then(|k| st.meta.iter().find(|(key, _)| key == k))
                {
                    Some((_, v)) => (200, v.clone()),
                    None => (404, String::new()),
                },
            }
        }
        _ => (405, String::new()),
    };
    st.log.push(format!("{method} {path} {status}"));
    drop(st);
    let mut out = stream;
    let _ = write!(
        out,
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}
