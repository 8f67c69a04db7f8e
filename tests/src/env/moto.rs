//! `moto_server` as the EC2 API on a loopback port (TESTENV §4).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::daemon::Daemon;
use super::error::{EnvError, Result, io_err};
use super::http::{expect_ok, http_request};
use super::tools::{free_port, try_require};
use super::with_port_retry;

/// How long moto gets to answer `GET /moto-api/` (importing moto takes a few seconds
/// on a busy 2-core machine).
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A `moto_server` with instance-type validation on; killed when dropped.
///
/// Clients use it with the endpoint override, region `us-east-1` and the credentials
/// `testing`/`testing`. moto does not implement capacity reservations and never answers
/// InsufficientInstanceCapacity (TESTENV §4).
#[derive(Debug)]
pub struct Moto {
    /// `http://HOST:PORT`, the EC2 endpoint override.
    pub endpoint: String,
    /// `HOST:PORT`.
    pub addr: String,
    /// The directory holding `moto.log`.
    pub dir: PathBuf,
    daemon: Daemon,
}

impl Moto {
    /// Starts moto on 127.0.0.1 and a free port, logging under `<dir>/moto`.
    pub fn start(dir: &Path) -> Result<Moto> {
        Moto::start_on(dir, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Starts moto on `host` (e.g. a bridge address) and a free port.
    pub fn start_on(dir: &Path, host: IpAddr) -> Result<Moto> {
        let program = try_require("moto_server")?;
        let base = dir.join("moto");
        std::fs::create_dir_all(&base).map_err(io_err(format!("creating {}", base.display())))?;
        with_port_retry(|| {
            let port = free_port();
            let addr = std::net::SocketAddr::new(host, port).to_string();
            let mut cmd = Command::new(&program);
            cmd.arg("-H")
                .arg(host.to_string())
                .arg("-p")
                .arg(port.to_string())
                .env("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
                .env("PYTHONUNBUFFERED", "1");
            let mut daemon = Daemon::spawn("moto_server", cmd, &base.join("moto.log"))?;
            daemon.wait_ready(READY_WITHIN, || expect_ok(&addr, "/moto-api/"))?;
            Ok(Moto {
                endpoint: format!("http://{addr}"),
                addr,
                dir: base.clone(),
                daemon,
            })
        })
    }

    /// moto's PID.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Forgets every resource (`POST /moto-api/reset`).
    pub fn reset(&self) -> Result<()> {
        let r = http_request(&self.addr, "POST", "/moto-api/reset", &[])
            .map_err(io_err(format!("POST {}/moto-api/reset", self.endpoint)))?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(EnvError::Command {
                cmd: format!("POST {}/moto-api/reset", self.endpoint),
                status: format!("HTTP {}", r.status),
                stderr: r.body,
            })
        }
    }
}
