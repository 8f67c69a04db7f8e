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
    /// TLS and basic auth, for a registry started with [`Registry::start_secured`].
    pub secured: Option<Secured>,
    daemon: Daemon,
}

/// How to reach a TLS registry with htpasswd auth (TESTENV §3b).
#[derive(Debug, Clone)]
pub struct Secured {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// The CA (PEM) that signed the registry's certificate.
    pub ca: PathBuf,
    /// A directory with `ca.crt`, as skopeo's `--dest-cert-dir` wants it.
    pub cert_dir: PathBuf,
}

impl Registry {
    /// Starts a registry on 127.0.0.1 and a free port under `<dir>/registry`.
    pub fn start(dir: &Path) -> Result<Registry> {
        Registry::start_on(dir, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Starts a registry on `host` (e.g. a bridge address that network namespaces
    /// reach, or `0.0.0.0` for every address) and a free port under `<dir>/registry`.
    /// Listening on every address, its [`Registry::addr`] is the loopback one.
    pub fn start_on(dir: &Path, host: IpAddr) -> Result<Registry> {
        let program = try_require("docker-registry")?;
        let base = dir.join("registry");
        let data = base.join("data");
        std::fs::create_dir_all(&data).map_err(io_err(format!("creating {}", data.display())))?;
        with_port_retry(|| {
            let listen = std::net::SocketAddr::new(host, free_port());
            let addr = if host.is_unspecified() {
                std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
            } else {
                listen
            }
            .to_string();
            let config = base.join("config.yml");
            std::fs::write(&config, config_yml(&data, &listen.to_string()))
                .map_err(io_err(format!("writing {}", config.display())))?;
            let mut cmd = Command::new(&program);
            cmd.arg("serve").arg(&config);
            let mut daemon = Daemon::spawn("docker-registry", cmd, &base.join("registry.log"))?;
            daemon.wait_ready(READY_WITHIN, || expect_ok(&addr, "/v2/"))?;
            Ok(Registry {
                addr,
                dir: base.clone(),
                secured: None,
                daemon,
            })
        })
    }

    /// Starts a registry on 127.0.0.1 with TLS (a fresh self-signed certificate for
    /// 127.0.0.1) and htpasswd auth for `user`/`password`, under `<dir>/registry-tls`.
    pub fn start_secured(dir: &Path, user: &str, password: &str) -> Result<Registry> {
        let program = try_require("docker-registry")?;
        let base = dir.join("registry-tls");
        let data = base.join("data");
        let cert_dir = base.join("certs.d");
        std::fs::create_dir_all(&data).map_err(io_err(format!("creating {}", data.display())))?;
        std::fs::create_dir_all(&cert_dir).map_err(io_err("creating certs.d".to_owned()))?;
        // A CA and a leaf for 127.0.0.1 signed by it: rustls (as webpki) refuses a
        // CA certificate used as the server's own.
        let (ca, ca_key) = (base.join("ca.pem"), base.join("ca.key"));
        let (cert, key, csr) = (
            base.join("cert.pem"),
            base.join("key.pem"),
            base.join("leaf.csr"),
        );
        let ext = base.join("leaf.ext");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .map_err(io_err("writing leaf.ext".to_owned()))?;
        let openssl = try_require("openssl")?;
        let run = |args: Vec<std::ffi::OsString>| {
            let mut cmd = Command::new(&openssl);
            cmd.args(args);
            output(cmd)
        };
        let os = |items: &[&dyn AsRef<std::ffi::OsStr>]| {
            items
                .iter()
                .map(|a| a.as_ref().to_owned())
                .collect::<Vec<_>>()
        };
        run(os(&[
            &"req",
            &"-x509",
            &"-newkey",
            &"rsa:2048",
            &"-nodes",
            &"-days",
            &"2",
            &"-subj",
            &"/CN=orca-test-ca",
            &"-keyout",
            &ca_key,
            &"-out",
            &ca,
        ]))?;
        run(os(&[
            &"req",
            &"-newkey",
            &"rsa:2048",
            &"-nodes",
            &"-subj",
            &"/CN=127.0.0.1",
            &"-keyout",
            &key,
            &"-out",
            &csr,
        ]))?;
        run(os(&[
            &"x509",
            &"-req",
            &"-in",
            &csr,
            &"-CA",
            &ca,
            &"-CAkey",
            &ca_key,
            &"-CAcreateserial",
            &"-days",
            &"2",
            &"-extfile",
            &ext,
            &"-out",
            &cert,
        ]))?;
        std::fs::copy(&ca, cert_dir.join("ca.crt")).map_err(io_err("copying ca.crt".to_owned()))?;
        let mut htpasswd = Command::new(try_require("htpasswd")?);
        htpasswd.args(["-Bbn", user, password]);
        let entry = output(htpasswd)?;
        let htpasswd_file = base.join("htpasswd");
        std::fs::write(&htpasswd_file, entry).map_err(io_err("writing htpasswd".to_owned()))?;
        let secured = Secured {
            user: user.into(),
            password: password.into(),
            ca: ca.clone(),
            cert_dir,
        };
        with_port_retry(|| {
            let addr = format!("127.0.0.1:{}", free_port());
            let config = base.join("config.yml");
            let extra = format!(
                "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: orca-registry\n    path: {}\n",
                cert.display(),
                key.display(),
                htpasswd_file.display()
            );
            let yml = config_yml(&data, &addr).replace("health:\n", &format!("{extra}health:\n"));
            std::fs::write(&config, yml)
                .map_err(io_err(format!("writing {}", config.display())))?;
            let mut cmd = Command::new(&program);
            cmd.arg("serve").arg(&config);
            let mut daemon = Daemon::spawn("docker-registry", cmd, &base.join("registry.log"))?;
            daemon.wait_ready(READY_WITHIN, || {
                std::net::TcpStream::connect(&addr).map(drop)
            })?;
            Ok(Registry {
                addr,
                dir: base.clone(),
                secured: Some(secured.clone()),
                daemon,
            })
        })
    }

    /// The registry's port.
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_default()
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
        cmd.env("TMPDIR", &tmp).args(["copy", "--insecure-policy"]);
        match &self.secured {
            Some(s) => cmd
                .arg(format!("--dest-creds={}:{}", s.user, s.password))
                .arg(format!("--dest-cert-dir={}", s.cert_dir.display())),
            None => cmd.arg("--dest-tls-verify=false"),
        };
        cmd.arg(format!("oci-archive:{}", tar.display()))
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
