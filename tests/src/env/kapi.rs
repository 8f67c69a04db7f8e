//! The Kubernetes API emulator (`tests/kapi/orca_kapi.py`: kmock extended) on a
//! loopback port, with a kubeconfig for it and real kubectl.
//!
//! The emulator keeps objects with resourceVersions, watches with replay, selectors,
//! PUT/PATCH/DELETE with the API server's semantics (graceful pod deletion included),
//! TokenRequest and SubjectAccessReview, and relays `kubectl logs/exec/attach/port-forward`
//! to the pod's node's kubelet over TLS with a client certificate, as the API server
//! does. Every request is appended to a JSON-lines log ([`KubeApi::requests`]). See
//! `tests/kapi/kapi/__init__.py` for what each module does and what it leaves out.
//!
//! When dropped, the emulator adds the requests that bore [`TOKEN`] — the control
//! plane's, which alone uses the kubeconfig's credentials over `http://` — to the
//! run's recordings ([`crate::recordings`]), for the exact check of the ClusterRole;
//! a test whose own client presents the token says [`KubeApi::unrecorded`].

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::daemon::Daemon;
use super::error::{EnvError, Result, io_err};
use super::http::expect_ok;
use super::tools::{free_port, repo_root, try_require};
use super::with_port_retry;

/// How long the emulator gets to answer `GET /healthz` (a Python start with aiohttp).
const READY_WITHIN: Duration = Duration::from_secs(30);

/// The bearer token of the kubeconfig's user. kubectl sends no credentials to an
/// `http://` server, so only other clients (kube-rs) present it.
pub const TOKEN: &str = "orca-test";

/// The kmock release the emulator is written against.
const KMOCK: &str = "kmock==0.8";

/// What the emulator is started with.
#[derive(Debug, Clone, Default)]
pub struct KubeApiOptions {
    /// Certificate and key files (PEM) presented to kubelets (`--kubelet-client-cert/key`).
    pub kubelet_client: Option<(PathBuf, PathBuf)>,
    /// CA to verify kubelets' serving certificates with; `None`: not verified, the API
    /// server's default.
    pub kubelet_ca: Option<PathBuf>,
    /// SubjectAccessReview rules `USER:VERB:RESOURCE:SUBRESOURCE` (globs, `*` for any),
    /// e.g. `kube-apiserver-kubelet-client:*:nodes:*`; a review no rule matches is denied.
    pub sar_allow: Vec<String>,
}

/// One line of the emulator's request log.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedRequest {
    /// When it arrived (RFC 3339, milliseconds).
    pub time: String,
    /// `GET`, `POST`, ...
    pub method: String,
    /// The URL path, e.g. `/api/v1/namespaces/default/pods/p1/status`.
    pub path: String,
    /// The raw query string (no `?`).
    #[serde(default)]
    pub query: String,
    /// The verb as RBAC names it: get, list, watch, create, update, patch, delete,
    /// deletecollection (`create` for exec/attach/portforward, as the API server
    /// authorises them since 1.31); the lower-case method for non-resource paths.
    pub verb: String,
    /// API group (`""` for the core group); `None` for non-resource paths (discovery).
    pub api_group: Option<String>,
    /// API version, e.g. `v1`.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Resource, e.g. `pods`.
    pub resource: Option<String>,
    /// Subresource, e.g. `status`.
    pub subresource: Option<String>,
    /// Namespace of namespaced requests.
    pub namespace: Option<String>,
    /// Object name, when the path names one.
    pub name: Option<String>,
    /// HTTP status the response started with (200 for a watch that streamed).
    pub status: u16,
    /// `User-Agent` header.
    pub user_agent: Option<String>,
    /// Bearer token, when one was sent.
    #[serde(default)]
    pub token: Option<String>,
    /// For SubjectAccessReviews: `{spec, status}` of the review and the answer.
    #[serde(default)]
    pub review: Option<Value>,
}

impl RecordedRequest {
    /// Whether the request named a resource (not discovery or another non-resource path).
    pub fn is_resource(&self) -> bool {
        self.resource.is_some()
    }

    /// The resource as an RBAC rule lists it: `pods`, `pods/status`; `None` for
    /// non-resource paths.
    pub fn rbac_resource(&self) -> Option<String> {
        let resource = self.resource.as_deref()?;
        Some(match self.subresource.as_deref() {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_owned(),
        })
    }
}

/// The emulator, killed when dropped.
#[derive(Debug)]
pub struct KubeApi {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// A kubeconfig for it: cluster `kapi` (the URL), user `orca-test` (token
    /// [`TOKEN`]), context `kapi` (namespace `default`), the current context.
    pub kubeconfig: PathBuf,
    /// The JSON-lines request log ([`KubeApi::requests`] parses it).
    pub log: PathBuf,
    /// Its directory: `<dir>/kapi`, with the emulator's own output in `kapi.log`.
    pub dir: PathBuf,
    /// The test's name for the recordings; `None`: not recorded.
    record_as: Option<String>,
    daemon: Daemon,
}

/// The venv's Python the emulator runs on, failing with the install hint when it or
/// kmock is missing.
pub fn emulator_python() -> Result<PathBuf> {
    let venv = repo_root().join(".venv");
    let python = venv.join("bin").join("python3");
    let missing = || EnvError::Missing {
        tool: "kmock".to_owned(),
        hint: format!("run deploy/local/setup.sh (.venv/bin/pip install '{KMOCK}')"),
    };
    if !python.is_file() {
        return Err(missing());
    }
    let lib = venv.join("lib");
    let installed = std::fs::read_dir(&lib)
        .map(|entries| {
            entries.flatten().any(|entry| {
                entry.file_name().to_string_lossy().starts_with("python")
                    && entry
                        .path()
                        .join("site-packages/kmock/__init__.py")
                        .is_file()
            })
        })
        .unwrap_or(false);
    if installed {
        Ok(python)
    } else {
        Err(missing())
    }
}

/// The kubectl binary, with a hint when it is missing.
pub fn kubectl_binary() -> Result<PathBuf> {
    try_require("kubectl").map_err(|_| EnvError::Missing {
        tool: "kubectl".to_owned(),
        hint: "the dev image has kubectl 1.32 at /usr/bin/kubectl (TESTENV §8); install one from \
               https://dl.k8s.io/release/v1.32.4/bin/linux/amd64/kubectl"
            .to_owned(),
    })
}

fn kubeconfig_yaml(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kapi\n  cluster:\n    server: {url}\n\
         users:\n- name: orca-test\n  user:\n    token: {TOKEN}\n\
         contexts:\n- name: kapi\n  context:\n    cluster: kapi\n    user: orca-test\n    namespace: default\n\
         current-context: kapi\n"
    )
}

impl KubeApi {
    /// Starts the emulator on 127.0.0.1 and a free port, under `<dir>/kapi`.
    ///
    /// # Errors
    ///
    /// [`EnvError::Missing`] when the venv or kmock is missing (with the setup hint),
    /// [`EnvError::Start`] when it does not answer `/healthz` in time.
    pub fn start(dir: &Path, opts: KubeApiOptions) -> Result<KubeApi> {
        Self::start_with_args(dir, opts, &[])
    }

    /// [`KubeApi::start`] with extra arguments for `orca_kapi.py` (e.g. `--history 50`).
    pub fn start_with_args(dir: &Path, opts: KubeApiOptions, extra: &[&str]) -> Result<KubeApi> {
        let python = emulator_python()?;
        let script = repo_root().join("tests").join("kapi").join("orca_kapi.py");
        let base = dir.join("kapi");
        std::fs::create_dir_all(&base).map_err(io_err(format!("creating {}", base.display())))?;
        let log = base.join("requests.jsonl");
        let kubeconfig = base.join("kubeconfig");
        with_port_retry(|| {
            let port = free_port();
            let addr = std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port).to_string();
            let url = format!("http://{addr}");
            let mut cmd = Command::new(&python);
            cmd.arg(&script)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .arg("--log")
                .arg(&log);
            if let Some((cert, key)) = &opts.kubelet_client {
                cmd.arg("--kubelet-client-cert")
                    .arg(cert)
                    .arg("--kubelet-client-key")
                    .arg(key);
            }
            if let Some(ca) = &opts.kubelet_ca {
                cmd.arg("--kubelet-ca").arg(ca);
            }
            for rule in &opts.sar_allow {
                cmd.arg("--sar-allow").arg(rule);
            }
            cmd.args(extra)
                .env("PYTHONUNBUFFERED", "1")
                .env("PYTHONDONTWRITEBYTECODE", "1");
            let mut daemon = Daemon::spawn("kapi", cmd, &base.join("kapi.log"))?;
            daemon.wait_ready(READY_WITHIN, || expect_ok(&addr, "/healthz"))?;
            std::fs::write(&kubeconfig, kubeconfig_yaml(&url))
                .map_err(io_err(format!("writing {}", kubeconfig.display())))?;
            Ok(KubeApi {
                url,
                addr,
                kubeconfig: kubeconfig.clone(),
                log: log.clone(),
                dir: base.clone(),
                record_as: Some(crate::recordings::source()),
                daemon,
            })
        })
    }

    /// Keeps this emulator's requests out of the recordings: for tests whose own
    /// client presents [`TOKEN`], so that only the control plane's requests are
    /// compared with the ClusterRole.
    pub fn unrecorded(mut self) -> Self {
        self.record_as = None;
        self
    }

    /// The emulator's PID.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// The last lines of the emulator's own output (`<dir>/kapi/kapi.log`), for failure
    /// messages.
    pub fn output_tail(&self) -> String {
        self.daemon.log_tail()
    }

    /// Every request logged so far, in order (a line still being written is skipped).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Runs `kubectl --kubeconfig KUBECONFIG ARGS…` (discovery cached under `<dir>/kapi`).
    ///
    /// # Errors
    ///
    /// [`EnvError::Missing`] when kubectl is not installed; [`EnvError::Io`] when it
    /// cannot be run. A kubectl that runs and fails is an `Ok` with its status.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.kubectl_command(args)?
            .output()
            .map_err(io_err(format!("running kubectl {args:?}")))
    }

    /// The [`Command`] [`KubeApi::kubectl`] runs, for callers that stream its output
    /// (`kubectl get -w`, `kubectl logs -f`).
    ///
    /// # Errors
    ///
    /// [`EnvError::Missing`] when kubectl is not installed.
    pub fn kubectl_command(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new(kubectl_binary()?);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("KUBECACHEDIR", self.dir.join("kubectl-cache"));
        Ok(cmd)
    }

    /// `kubectl ARGS… -o json`, parsed.
    ///
    /// # Panics
    ///
    /// When kubectl is missing, fails (with its stderr), or prints no JSON.
    pub fn kubectl_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.kubectl(&all).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "kubectl {all:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "kubectl {all:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for KubeApi {
    /// Appends the requests that bore [`TOKEN`] to the recordings (see the module docs).
    fn drop(&mut self) {
        let Some(source) = self.record_as.take() else {
            return;
        };
        let lines: Vec<_> = self
            .requests()
            .into_iter()
            .filter(|r| r.token.as_deref() == Some(TOKEN))
            .map(|r| crate::recordings::KubeRequestLine {
                source: source.clone(),
                path: (!r.is_resource()).then(|| r.path.clone()),
                verb: r.verb,
                api_group: r.api_group,
                resource: r.resource,
                subresource: r.subresource,
            })
            .collect();
        let recorder = crate::recordings::Recorder::new(crate::recordings::KUBE_REQUESTS);
        if let Err(e) = recorder.append(&lines) {
            eprintln!(
                "warning: cannot record Kubernetes requests in {}: {e}",
                recorder.path().display()
            );
        }
    }
}
