//! A tiny blocking HTTP/1.0 client for readiness probes, so that starting a service
//! needs no async runtime.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Connect, read and write timeout of one probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The body, lossily decoded as UTF-8.
    pub body: String,
}

/// Sends one `method path` request with `body` to `addr` (`host:port`) and reads the
/// whole response (`Connection: close`).
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let sock = addr.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no socket address")
    })?;
    let mut stream = TcpStream::connect_timeout(&sock, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP response: {:?}", text.lines().next()),
            )
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok(HttpResponse { status, body })
}

/// `GET path` on `addr` must answer 200; the error says what came back instead.
pub fn expect_ok(addr: &str, path: &str) -> Result<(), String> {
    match http_request(addr, "GET", path, &[]) {
        Ok(r) if r.status == 200 => Ok(()),
        Ok(r) => Err(format!("GET {path}: HTTP {}", r.status)),
        Err(e) => Err(format!("GET {path}: {e}")),
    }
}
