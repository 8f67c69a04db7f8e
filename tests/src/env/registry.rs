//! A container registry on a loopback port (Debian's `docker-registry`, TESTENV §3).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::containerd::output;
use super::daemon::Daemon;
use super::error::{Result, io_err};
use super::http::expect_ok;
use super::tools::{free_port, try_require};
use super::with_port_retry;

/// How long the registry gets to answer `GET /v2/` with 200.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A plain-HTTP registry without auth, storage under `<dir>/registry/data`; killed when dropped.
///
/// Always runs with its own config: Debian's default one enables htpasswd auth with a
/// broken path and listens on every interface.
#[derive(Debug)]
pub struct Registry {
    /// `HOST:PORT`, e.g. `127.0.0.1:41234`: the prefix of image references.
    pub addr: String,
    /// The directory holding `config.yml`, `registry.log` and `data/`.
    pub dir: PathBuf,
    daemon: Daemon,
}

impl Registry {
    /// Starts a registry on 127.0.0.1 and a free port under `<dir>/registry`.
    pub fn start(dir: &Path) -> Result<Registry> {
        Registry::start_on(dir, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Starts a registry on `host` (e.g. a bridge address that network namespaces
    /// reach) and a free port under `<dir>/registry`.
    pub fn start_on(dir: &Path, host: IpAddr) -> Result<Registry> {
        let program = try_require("docker-registry")?;
        let base = dir.join("registry");
        let data = base.join("data");
        std::fs::create_dir_all(&data).map_err(io_err(format!("creating {}", data.display())))?;
        with_port_retry(|| {
            let addr = std::net::SocketAddr::new(host, free_port()).to_string();
            let config = base.join("config.yml");
            std::fs::write(&config, config_yml(&data, &addr))
                .map_err(io_err(format!("writing {}", config.display())))?;
            let mut cmd = Command::new(&program);
            cmd.arg("serve").arg(&config);
            let mut daemon = Daemon::spawn("docker-registry", cmd, &base.join("registry.log"))?;
            daemon.wait_ready(READY_WITHIN, || expect_ok(&addr, "/v2/"))?;
            Ok(Registry {
                addr,
                dir: base.clone(),
                daemon,
            })
        })
    }

    /// The registry's PID.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// The registry's log (its access log included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// How many blob downloads (`GET /v2/<repo>/blobs/...`) of `repo` the access log shows.
    pub fn blob_gets(&self, repo: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/");
        self.log().lines().filter(|l| l.contains(&needle)).count()
    }

    /// Pushes an OCI archive as `REPO:TAG` with skopeo
    /// (`skopeo copy --dest-tls-verify=false oci-archive:TAR docker://ADDR/REPO:TAG`) and
    /// returns the full reference `ADDR/REPO:TAG`. The manifest digest is preserved.
    pub fn push_oci_archive(&self, tar: &Path, repo_tag: &str) -> Result<String> {
        let skopeo = try_require("skopeo")?;
        let reference = format!("{}/{repo_tag}", self.addr);
        // skopeo unpacks the archive into TMPDIR: keep that inside the test's directory.
        let tmp = self.dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        let mut cmd = Command::new(skopeo);
        cmd.env("TMPDIR", &tmp)
            .args(["copy", "--insecure-policy", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}", tar.display()))
            .arg(format!("docker://{reference}"));
        output(cmd)?;
        Ok(reference)
    }
}

/// The config of TESTENV §3: filesystem storage, deletes enabled, no auth, no debug
/// listener, no storage health check; the access log on, so tests can count pulls.
fn config_yml(data: &Path, addr: &str) -> String {
    format!(
        r#"version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: {addr}
  debug:
    addr: ""
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: false
"#,
        data = data.display()
    )
}
