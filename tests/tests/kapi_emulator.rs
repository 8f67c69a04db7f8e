//! The Kubernetes API emulator (`tests/kapi`, kmock extended) against the real kubectl:
//! discovery, objects with resourceVersions, selectors, patches, graceful pod deletion,
//! watches, TokenRequest, SubjectAccessReview, and `kubectl logs`/`exec` relayed to a
//! fake kubelet over mutual TLS. No ORCA runs here.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use base64::Engine as _;
use orca_proto::tls::{CertSlot, ClientAuth, common_name, server_config};
use orca_tests::env::{KubeApi, KubeApiOptions, emulator_python, http_request, repo_root};
use orca_tests::eventually::eventually_blocking;
use orca_tests::pki::{Issued, TestPki};
use serde_json::Value;

const WITHIN: Duration = Duration::from_secs(20);

fn start(dir: &Path) -> KubeApi {
    KubeApi::start(dir, KubeApiOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// kubectl's stdout; panics with its stderr when it fails.
fn ok(kapi: &KubeApi, args: &[&str]) -> String {
    let out = kapi.kubectl(args).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}\n--- emulator output ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        kapi.output_tail()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// kubectl's stderr; panics when it succeeds.
fn fails(kapi: &KubeApi, args: &[&str]) -> String {
    let out = kapi.kubectl(args).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !out.status.success(),
        "kubectl {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `yaml` to `<dir>/<name>.yaml` and returns the path.
fn manifest(dir: &Path, name: &str, yaml: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write manifest");
    path.display().to_string()
}

fn pod_yaml(name: &str, node: Option<&str>, containers: &[&str]) -> String {
    let node = node
        .map(|n| format!("  nodeName: {n}\n"))
        .unwrap_or_default();
    let containers: String = containers
        .iter()
        .map(|c| format!("  - name: {c}\n    image: busybox:1.36\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: web\nspec:\n{node}  containers:\n{containers}"
    )
}

fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric resourceVersion in {obj}"))
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            i["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[test]
fn the_emulators_own_unit_tests_pass() {
    let python = emulator_python().unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(python)
        .args([
            "-m",
            "unittest",
            "discover",
            "-s",
            "tests/kapi",
            "-p",
            "test_*.py",
        ])
        .current_dir(repo_root())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kubectl_discovers_creates_selects_and_patches() {
    let dir = tempfile::tempdir().unwrap();
    let kapi = start(dir.path());

    let resources = ok(&kapi, &["api-resources"]);
    for (name, line_has) in [
        ("pods", "po"),
        ("nodes", "no"),
        ("leases", "coordination.k8s.io/v1"),
        ("configmaps", "cm"),
        ("subjectaccessreviews", "authorization.k8s.io/v1"),
    ] {
        assert!(
            resources
                .lines()
                .any(|l| l.starts_with(&format!("{name} ")) && l.contains(line_has)),
            "{name} ({line_has}) missing from\n{resources}"
        );
    }

    let both = format!(
        "{}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm1\ndata:\n  a: b\n",
        pod_yaml("p1", Some("n1"), &["c1"])
    );
    let created = ok(&kapi, &["create", "-f", &manifest(dir.path(), "p1", &both)]);
    assert!(
        created.contains("pod/p1 created") && created.contains("configmap/cm1 created"),
        "{created}"
    );
    ok(
        &kapi,
        &[
            "create",
            "-f",
            &manifest(dir.path(), "p2", &pod_yaml("p2", Some("n2"), &["c1"])),
        ],
    );

    let p1 = kapi.kubectl_json(&["get", "pod", "p1"]);
    assert!(
        !p1["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{p1}"
    );
    assert!(p1["metadata"]["creationTimestamp"].is_string(), "{p1}");
    assert_eq!(p1["status"]["phase"], "Pending");
    assert_eq!(p1["spec"]["terminationGracePeriodSeconds"], 30, "defaulted");
    let first_rv = rv(&p1);
    assert_eq!(kapi.kubectl_json(&["get", "cm", "cm1"])["data"]["a"], "b");

    let dup = fails(
        &kapi,
        &[
            "create",
            "-f",
            &manifest(dir.path(), "p1again", &pod_yaml("p1", None, &["c1"])),
        ],
    );
    assert!(
        dup.contains("AlreadyExists") && dup.contains("pods \"p1\" already exists"),
        "{dup}"
    );
    let missing = fails(&kapi, &["get", "pod", "nope"]);
    assert!(
        missing.contains("NotFound") && missing.contains("pods \"nope\" not found"),
        "{missing}"
    );

    let on_n1 = kapi.kubectl_json(&["get", "pods", "--field-selector", "spec.nodeName=n1"]);
    assert_eq!(names(&on_n1), ["p1"]);
    let not_n1 = kapi.kubectl_json(&[
        "get",
        "pods",
        "--field-selector",
        "spec.nodeName!=n1,metadata.namespace=default",
    ]);
    assert_eq!(names(&not_n1), ["p2"]);
    let all = kapi.kubectl_json(&["get", "pods", "-A", "-l", "app in (web,db)"]);
    assert_eq!(names(&all), ["p1", "p2"]);

    ok(&kapi, &["label", "pod", "p1", "tier=db"]);
    ok(&kapi, &["annotate", "pod", "p1", "note=hello"]);
    ok(&kapi, &["label", "pod", "p1", "app-"]);
    let p1 = kapi.kubectl_json(&["get", "pod", "p1"]);
    assert_eq!(
        p1["metadata"]["labels"],
        serde_json::json!({"tier": "db"}),
        "{p1}"
    );
    assert_eq!(p1["metadata"]["annotations"]["note"], "hello");
    assert!(rv(&p1) > first_rv);
    assert_eq!(
        names(&kapi.kubectl_json(&["get", "pods", "-l", "tier=db"])),
        ["p1"]
    );
    assert_eq!(
        names(&kapi.kubectl_json(&["get", "pods", "-l", "!tier"])),
        ["p2"]
    );

    // apply: create, then a three-way strategic merge patch.
    let cm = |v: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm2\ndata:\n  k: {v}\n")
    };
    ok(
        &kapi,
        &["apply", "-f", &manifest(dir.path(), "cm2a", &cm("one"))],
    );
    ok(
        &kapi,
        &["apply", "-f", &manifest(dir.path(), "cm2b", &cm("two"))],
    );
    assert_eq!(kapi.kubectl_json(&["get", "cm", "cm2"])["data"]["k"], "two");

    // Pod specs are immutable but for images, as on a real API server.
    let forbidden = fails(
        &kapi,
        &[
            "patch",
            "pod",
            "p1",
            "--type=merge",
            "-p",
            r#"{"spec":{"nodeName":"n3"}}"#,
        ],
    );
    assert!(
        forbidden.contains("pod updates may not change fields"),
        "{forbidden}"
    );

    // TokenRequest.
    let token = ok(&kapi, &["create", "token", "default", "--audience", "orca"]);
    let parts: Vec<&str> = token.trim().split('.').collect();
    assert_eq!(parts.len(), 3, "JWT-shaped: {token}");
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .expect("base64url payload"),
    )
    .expect("JSON payload");
    assert_eq!(payload["sub"], "system:serviceaccount:default:default");
    assert_eq!(payload["aud"], serde_json::json!(["orca"]));
    assert!(payload["exp"].as_i64().unwrap() > payload["iat"].as_i64().unwrap());
    let no_sa = fails(&kapi, &["create", "token", "nope"]);
    assert!(
        no_sa.contains("serviceaccounts \"nope\" not found"),
        "{no_sa}"
    );

    // A new namespace gets its default ServiceAccount.
    ok(&kapi, &["create", "namespace", "team"]);
    kapi.kubectl_json(&["get", "serviceaccount", "default", "-n", "team"]);

    let requests = kapi.requests();
    let kubectl = |r: &&orca_tests::env::RecordedRequest| {
        r.user_agent
            .as_deref()
            .is_some_and(|ua| ua.starts_with("kubectl/"))
    };
    for (verb, resource) in [
        ("create", "pods"),
        ("list", "pods"),
        ("get", "pods"),
        ("patch", "pods"),
        ("create", "serviceaccounts/token"),
        ("create", "namespaces"),
    ] {
        assert!(
            requests
                .iter()
                .filter(kubectl)
                .any(|r| r.verb == verb && r.rbac_resource().as_deref() == Some(resource)),
            "no {verb} {resource} in the request log"
        );
    }
    assert!(
        requests
            .iter()
            .any(|r| r.path == "/api/v1" && !r.is_resource())
    );
}

#[test]
fn a_bound_pod_is_deleted_gracefully_then_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let kapi = start(dir.path());
    ok(
        &kapi,
        &[
            "create",
            "-f",
            &manifest(dir.path(), "bound", &pod_yaml("bound", Some("n1"), &["c1"])),
        ],
    );
    ok(
        &kapi,
        &[
            "create",
            "-f",
            &manifest(dir.path(), "loose", &pod_yaml("loose", None, &["c1"])),
        ],
    );

    ok(&kapi, &["delete", "pod", "bound", "--wait=false"]);
    let bound = kapi.kubectl_json(&["get", "pod", "bound"]);
    assert!(
        bound["metadata"]["deletionTimestamp"].is_string(),
        "{bound}"
    );
    assert_eq!(bound["metadata"]["deletionGracePeriodSeconds"], 30);

    // Not on a node: gone at once.
    ok(&kapi, &["delete", "pod", "loose", "--wait=false"]);
    assert!(fails(&kapi, &["get", "pod", "loose"]).contains("NotFound"));

    // What the kubelet sends once the containers stopped.
    ok(
        &kapi,
        &["delete", "pod", "bound", "--grace-period=0", "--force"],
    );
    assert!(fails(&kapi, &["get", "pod", "bound"]).contains("NotFound"));
}

/// A watch event as (type, name, resourceVersion).
fn event_of(e: &Value) -> (String, String, u64) {
    (
        e["type"].as_str().unwrap_or_default().to_owned(),
        e["object"]["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        rv(&e["object"]),
    )
}

/// Events of a watch body (one JSON object per line): (type, name, resourceVersion).
fn events(body: &str) -> Vec<(String, String, u64)> {
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| event_of(&serde_json::from_str(l).unwrap_or_else(|err| panic!("{err}: {l}"))))
        .collect()
}

#[test]
fn watches_stream_and_replay_events_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let kapi = start(dir.path());
    // kubectl -o json rewrites lists (no resourceVersion): ask the API directly.
    let list =
        http_request(&kapi.addr, "GET", "/api/v1/namespaces/default/pods", &[]).expect("list");
    let start_rv = rv(&serde_json::from_str(&list.body).expect("a PodList"));

    // A live watch: kubectl get -w, its events collected as they come.
    let mut watch = kapi
        .kubectl_command(&["get", "pods", "-w", "--output-watch-events", "-o", "json"])
        .unwrap()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let seen = Arc::new(Mutex::new(Vec::<Value>::new()));
    let stdout = watch.stdout.take().unwrap();
    let sink = seen.clone();
    std::thread::spawn(move || {
        for event in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>() {
            match event {
                Ok(e) => sink.lock().unwrap().push(e),
                Err(_) => return,
            }
        }
    });
    // The watch is open once the emulator logged it.
    eventually_blocking("kubectl's watch is open", WITHIN, || {
        match kapi
            .requests()
            .iter()
            .any(|r| r.verb == "watch" && r.resource.as_deref() == Some("pods"))
        {
            true => Ok(()),
            false => Err("no watch yet"),
        }
    });

    ok(
        &kapi,
        &[
            "create",
            "-f",
            &manifest(dir.path(), "w1", &pod_yaml("w1", Some("n1"), &["c1"])),
        ],
    );
    ok(&kapi, &["label", "pod", "w1", "step=2"]);
    ok(&kapi, &["delete", "pod", "w1", "--wait=false"]);
    ok(
        &kapi,
        &["delete", "pod", "w1", "--grace-period=0", "--force"],
    );
    let expected = ["ADDED", "MODIFIED", "MODIFIED", "DELETED"];

    let live = eventually_blocking("kubectl's watch saw the pod deleted", WITHIN, || {
        let got: Vec<(String, String, u64)> = seen.lock().unwrap().iter().map(event_of).collect();
        if got.len() >= expected.len() {
            Ok(got)
        } else {
            Err(got)
        }
    });
    let _ = watch.kill();
    let _ = watch.wait();
    let types: Vec<&str> = live.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(types, expected, "{live:?}");
    assert!(live.iter().all(|(_, n, _)| n == "w1"));
    assert!(
        live.windows(2).all(|w| w[0].2 < w[1].2),
        "increasing resourceVersions: {live:?}"
    );

    // The same events replayed from the list's resourceVersion (HTTP/1.0: one JSON
    // object per line, until timeoutSeconds ends the watch).
    let replay = http_request(
        &kapi.addr,
        "GET",
        &format!(
            "/api/v1/namespaces/default/pods?watch=1&resourceVersion={start_rv}&timeoutSeconds=1"
        ),
        &[],
    )
    .expect("watch");
    assert_eq!(replay.status, 200);
    assert_eq!(events(&replay.body), live);

    // Selectors apply to watches too.
    let other = http_request(
        &kapi.addr,
        "GET",
        &format!("/api/v1/pods?watch=true&resourceVersion={start_rv}&timeoutSeconds=1&fieldSelector=spec.nodeName%3Dn9"),
        &[],
    )
    .expect("watch");
    assert_eq!(events(&other.body), []);
}

#[test]
fn a_watch_from_a_compacted_resource_version_is_expired() {
    let dir = tempfile::tempdir().unwrap();
    let kapi = KubeApi::start_with_args(dir.path(), KubeApiOptions::default(), &["--history", "2"])
        .unwrap_or_else(|e| panic!("{e}"));
    for n in 0..4 {
        ok(&kapi, &["create", "configmap", &format!("c{n}")]);
    }
    let r = http_request(
        &kapi.addr,
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=1",
        &[],
    )
    .expect("watch");
    let event: Value =
        serde_json::from_str(r.body.lines().next().expect("an event")).expect("JSON");
    assert_eq!(event["type"], "ERROR", "{event}");
    assert_eq!(event["object"]["code"], 410);
    assert_eq!(event["object"]["reason"], "Expired");
}

#[test]
fn subject_access_reviews_follow_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let kapi = KubeApi::start(
        dir.path(),
        KubeApiOptions {
            sar_allow: vec!["kube-apiserver-kubelet-client:*:nodes:*".to_owned()],
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let review = |user: &str| {
        let body = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": user, "resourceAttributes": {"verb": "get", "resource": "nodes", "subresource": "log", "name": "n1"}},
        });
        let r = http_request(
            &kapi.addr,
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            body.to_string().as_bytes(),
        )
        .expect("review");
        assert_eq!(r.status, 201, "{}", r.body);
        serde_json::from_str::<Value>(&r.body).expect("JSON")
    };
    assert_eq!(
        review("kube-apiserver-kubelet-client")["status"]["allowed"],
        true
    );
    let denied = review("mallory");
    assert_eq!(denied["status"]["allowed"], false);
    assert!(
        denied["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("mallory:get:nodes:log")
    );
    let logged: Vec<_> = kapi
        .requests()
        .into_iter()
        .filter_map(|r| r.review)
        .collect();
    assert_eq!(logged.len(), 2);
    assert_eq!(logged[1]["spec"]["user"], "mallory");
}

// --- the kubelet proxy ------------------------------------------------------------

/// One request a fake kubelet received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    client_cn: Option<String>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A kubelet that demands a client certificate from the test CA and answers:
/// `/containerLogs/…` with `line 1` (and, when following, `line 2` once released);
/// `/exec/…?command=relay…` with a 101 and then an upper-casing echo until `quit`;
/// any other upgrade with a 400.
struct FakeKubelet {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: mpsc::Sender<()>,
}

impl FakeKubelet {
    fn start(pki: &TestPki, cert: &Issued) -> Self {
        let slot = CertSlot::new(&cert.cert_pem, &cert.key_pem).expect("kubelet cert");
        let config = server_config(slot, &pki.ca_pem, ClientAuth::Required).expect("server config");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (release, released) = mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(released));
        let recorded = seen.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (config, recorded, released) =
                    (config.clone(), recorded.clone(), released.clone());
                std::thread::spawn(move || {
                    let _ = serve_kubelet(config, tcp, &recorded, &released);
                });
            }
        });
        Self {
            port,
            seen,
            release,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn read_line<R: Read>(r: &mut R) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while r.read(&mut byte)? == 1 {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn serve_kubelet(
    config: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    recorded: &Mutex<Vec<Seen>>,
    released: &Mutex<mpsc::Receiver<()>>,
) -> std::io::Result<()> {
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let request_line = read_line(&mut tls)?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(&mut tls)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut parts = request_line.split_whitespace();
    let seen = Seen {
        method: parts.next().unwrap_or_default().to_owned(),
        target: parts.next().unwrap_or_default().to_owned(),
        headers,
        client_cn: tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| common_name(c)),
    };
    recorded.lock().unwrap().push(seen.clone());
    let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());

    if seen.target.starts_with("/containerLogs/") {
        tls.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
        )?;
        tls.write_all(chunk("line 1\n").as_bytes())?;
        tls.flush()?;
        if seen.target.contains("follow=true") {
            let _ = released.lock().unwrap().recv_timeout(WITHIN);
            tls.write_all(chunk("line 2\n").as_bytes())?;
        }
        tls.write_all(b"0\r\n\r\n")?;
    } else if seen.target.contains("command=relay") {
        let upgrade = seen.header("Upgrade").unwrap_or_default().to_owned();
        tls.write_all(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\n\
                 X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
            )
            .as_bytes(),
        )?;
        tls.flush()?;
        loop {
            let line = read_line(&mut tls)?;
            if line.is_empty() || line.trim() == "quit" {
                break;
            }
            tls.write_all(line.to_uppercase().as_bytes())?;
            tls.flush()?;
        }
        tls.write_all(b"bye\n")?;
    } else {
        let body = "fake kubelet refuses exec";
        tls.write_all(
            format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )?;
    }
    tls.flush()?;
    tls.conn.send_close_notify();
    tls.flush()
}

fn node_yaml(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nstatus:\n  addresses:\n  - type: Hostname\n    address: {name}.invalid\n  \
         - type: InternalIP\n    address: 127.0.0.1\n  daemonEndpoints:\n    kubeletEndpoint:\n      Port: {port}\n"
    )
}

#[test]
fn logs_and_exec_reach_the_nodes_kubelet_with_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let client = pki.issue(
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        &[],
    );
    let kubelet_cert = pki.issue("kubelet", "n1", &["127.0.0.1"]);
    let kubelet = FakeKubelet::start(&pki, &kubelet_cert);
    let kapi = KubeApi::start(
        dir.path(),
        KubeApiOptions {
            kubelet_client: Some((client.cert_file.clone(), client.key_file.clone())),
            kubelet_ca: Some(pki.ca_file()),
            sar_allow: Vec::new(),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let closed_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let objects = [
        node_yaml("n1", kubelet.port),
        node_yaml("n2", closed_port),
        pod_yaml("p1", Some("n1"), &["c1"]),
        pod_yaml("p2", Some("n2"), &["c1"]),
        pod_yaml("p3", Some("n1"), &["a", "b"]),
        pod_yaml("p4", None, &["c1"]),
    ]
    .join("---\n");
    ok(
        &kapi,
        &["create", "-f", &manifest(dir.path(), "objects", &objects)],
    );

    // kubectl logs: the API server's kubelet path and parameters, our client certificate.
    let logs = ok(&kapi, &["logs", "p1", "--tail=5", "--timestamps"]);
    assert_eq!(logs, "line 1\n");
    let seen = kubelet.seen();
    let first = seen.last().expect("the kubelet was called");
    assert_eq!(first.method, "GET");
    assert_eq!(
        first.target,
        "/containerLogs/default/p1/c1?tailLines=5&timestamps=true"
    );
    assert_eq!(
        first.client_cn.as_deref(),
        Some("kube-apiserver-kubelet-client")
    );
    assert_eq!(first.header("Authorization"), None);

    // kubectl logs -f sees each line as the kubelet writes it.
    let mut follow = kapi
        .kubectl_command(&["logs", "-f", "p1"])
        .unwrap()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl logs -f");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let stdout = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    eventually_blocking("kubectl logs -f printed the first line", WITHIN, || {
        let got = lines.lock().unwrap().clone();
        if got == ["line 1"] { Ok(()) } else { Err(got) }
    });
    kubelet.release.send(()).unwrap();
    let status = follow.wait().expect("kubectl logs -f exits");
    reader.join().unwrap();
    assert!(status.success(), "kubectl logs -f: {status}");
    assert_eq!(*lines.lock().unwrap(), ["line 1", "line 2"]);
    assert!(
        kubelet
            .seen()
            .last()
            .unwrap()
            .target
            .contains("follow=true")
    );

    // kubectl exec: the upgrade reaches the kubelet (websocket, then SPDY when that is
    // refused) and the kubelet's refusal reaches kubectl.
    let refused = fails(&kapi, &["exec", "p1", "--", "echo", "hi"]);
    assert!(
        refused.contains("unable to upgrade connection: fake kubelet refuses exec"),
        "{refused}"
    );
    let execs: Vec<Seen> = kubelet
        .seen()
        .into_iter()
        .filter(|s| s.target.starts_with("/exec/"))
        .collect();
    assert!(!execs.is_empty());
    for exec in &execs {
        assert_eq!(
            exec.target,
            "/exec/default/p1/c1?command=echo&command=hi&error=1&output=1"
        );
        assert!(
            exec.header("Connection")
                .unwrap_or_default()
                .to_lowercase()
                .contains("upgrade"),
            "{exec:?}"
        );
        assert_eq!(
            exec.client_cn.as_deref(),
            Some("kube-apiserver-kubelet-client")
        );
    }
    let upgrades: Vec<String> = execs
        .iter()
        .map(|e| e.header("Upgrade").unwrap_or_default().to_lowercase())
        .collect();
    assert!(
        upgrades.iter().any(|u| u == "websocket" || u == "spdy/3.1"),
        "{upgrades:?}"
    );

    // After a 101, bytes go both ways verbatim until the kubelet closes.
    let mut raw = TcpStream::connect(&kapi.addr).unwrap();
    raw.set_read_timeout(Some(WITHIN)).unwrap();
    raw.write_all(
        b"POST /api/v1/namespaces/default/pods/p1/exec?command=relay&stdin=true&stdout=true HTTP/1.1\r\n\
          Host: kapi\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
          X-Stream-Protocol-Version: v4.channel.k8s.io\r\nAuthorization: Bearer secret\r\n\r\n",
    )
    .unwrap();
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        head.push_str(&read_line(&mut raw).unwrap());
        assert!(!head.is_empty(), "connection closed before a response");
    }
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("Upgrade: SPDY/3.1"), "{head}");
    raw.write_all(b"ping\n").unwrap();
    assert_eq!(read_line(&mut raw).unwrap(), "PING\n");
    raw.write_all(b"quit\n").unwrap();
    let mut rest = String::new();
    raw.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "bye\n");
    let relayed = kubelet.seen().last().unwrap().clone();
    assert_eq!(
        relayed.target,
        "/exec/default/p1/c1?command=relay&input=1&output=1"
    );
    assert_eq!(
        relayed.header("Authorization"),
        None,
        "the user's token stays with the API server"
    );
    assert_eq!(
        relayed.header("X-Stream-Protocol-Version"),
        Some("v4.channel.k8s.io")
    );

    // Errors come back as Status objects kubectl prints.
    let unreachable = fails(&kapi, &["logs", "p2"]);
    assert!(
        unreachable.contains(&format!("127.0.0.1:{closed_port}"))
            && unreachable.contains("connection refused"),
        "{unreachable}"
    );
    let unbound = fails(&kapi, &["exec", "p4", "--", "true"]);
    assert!(
        unbound.contains("pod p4 does not have a host assigned"),
        "{unbound}"
    );
    let ambiguous = http_request(
        &kapi.addr,
        "GET",
        "/api/v1/namespaces/default/pods/p3/log",
        &[],
    )
    .unwrap();
    assert_eq!(ambiguous.status, 400);
    assert!(
        ambiguous
            .body
            .contains("a container name must be specified for pod p3, choose one of: [a b]"),
        "{}",
        ambiguous.body
    );

    let logged: Vec<_> = kapi
        .requests()
        .into_iter()
        .filter(|r| r.subresource.is_some() && r.resource.as_deref() == Some("pods"))
        .map(|r| (r.verb, r.subresource.unwrap_or_default()))
        .collect();
    assert!(
        logged.contains(&("get".to_owned(), "log".to_owned())),
        "{logged:?}"
    );
    assert!(
        logged.contains(&("create".to_owned(), "exec".to_owned())),
        "{logged:?}"
    );
}

/// The calls ORCA's Virtual Kubelet makes, through kube-rs as it makes them.
#[tokio::test(flavor = "multi_thread")]
async fn kube_rs_calls_as_the_virtual_kubelet_makes_them() {
    use futures::StreamExt as _;
    use k8s_openapi::api::authentication::v1::{
        BoundObjectReference, TokenRequest, TokenRequestSpec,
    };
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{Event, Node, Pod, ServiceAccount};
    use kube::api::{
        Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, WatchEvent,
        WatchParams,
    };

    // kube-rs's TLS stack needs a process-wide provider even for http:// (as in the control plane).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let kapi = KubeApi::start(
        dir.path(),
        KubeApiOptions {
            sar_allow: vec!["kube-apiserver-kubelet-client:*:nodes:*".to_owned()],
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
    // This test's client presents the control plane's token: not the control plane.
    .unrecorded();
    let kubeconfig = kube::config::Kubeconfig::read_from(&kapi.kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    let client = kube::Client::try_from(config).expect("client");

    // Node: created with its status, then status patches.
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "vk", "labels": {"type": "virtual-kubelet"}},
        "spec": {"taints": [{"key": "virtual-kubelet.io/provider", "value": "orca", "effect": "NoSchedule"}]},
        "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Starting"}],
                   "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]},
    }))
    .unwrap();
    let created = nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    assert_eq!(
        created.status.unwrap().conditions.unwrap()[0].status,
        "False"
    );
    let ready = serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}});
    let patched = nodes
        .patch_status("vk", &PatchParams::default(), &Patch::Merge(&ready))
        .await
        .expect("patch node status");
    assert_eq!(
        patched.status.unwrap().conditions.unwrap()[0].status,
        "True"
    );
    assert!(nodes.get_opt("nope").await.expect("get_opt").is_none());

    // Lease: create, replace, and a stale replace is a 409.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "vk"}, "spec": {"holderIdentity": "vk", "leaseDurationSeconds": 40},
    }))
    .unwrap();
    let lease = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create lease");
    let mut renewed = lease.clone();
    renewed.spec.as_mut().unwrap().lease_duration_seconds = Some(41);
    leases
        .replace("vk", &PostParams::default(), &renewed)
        .await
        .expect("renew");
    match leases.replace("vk", &PostParams::default(), &renewed).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
        other => panic!("a stale replace: {other:?}"),
    }

    // Pods on the node: list with the field selector, then watch from the list's version.
    let pods: Api<Pod> = Api::all(client.clone());
    let on_node = ListParams::default().fields("spec.nodeName=vk");
    let list = pods.list(&on_node).await.expect("list");
    assert!(list.items.is_empty());
    let version = list
        .metadata
        .resource_version
        .expect("list resourceVersion");
    let mut stream = pods
        .watch(
            &WatchParams::default()
                .fields("spec.nodeName=vk")
                .timeout(290),
            &version,
        )
        .await
        .expect("watch")
        .boxed();
    let default_pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, node) in [("elsewhere", "other"), ("mine", "vk")] {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap();
        default_pods
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
    }
    let first = tokio::time::timeout(WITHIN, stream.next())
        .await
        .expect("an event");
    let uid = match first {
        Some(Ok(WatchEvent::Added(p))) => {
            assert_eq!(p.metadata.name.as_deref(), Some("mine"));
            p.metadata.uid.unwrap()
        }
        other => panic!("expected ADDED mine: {other:?}"),
    };
    let running = serde_json::json!({"status": {"phase": "Running"}});
    default_pods
        .patch_status("mine", &PatchParams::default(), &Patch::Merge(&running))
        .await
        .expect("patch pod status");
    match tokio::time::timeout(WITHIN, stream.next())
        .await
        .expect("an event")
    {
        Some(Ok(WatchEvent::Modified(p))) => {
            assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"))
        }
        other => panic!("expected MODIFIED: {other:?}"),
    }

    // The kubelet's final delete, with the uid precondition.
    let wrong = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some("not-it".to_owned()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match default_pods.delete("mine", &wrong).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
        other => panic!("a wrong uid precondition: {other:?}"),
    }
    let right = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    default_pods.delete("mine", &right).await.expect("delete");
    match tokio::time::timeout(WITHIN, stream.next())
        .await
        .expect("an event")
    {
        Some(Ok(WatchEvent::Deleted(p))) => {
            assert_eq!(p.metadata.uid.as_deref(), Some(uid.as_str()))
        }
        other => panic!("expected DELETED: {other:?}"),
    }

    // An Event, a bound service account token, a SubjectAccessReview.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let event: Event = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "elsewhere.1"},
        "involvedObject": {"kind": "Pod", "name": "elsewhere", "namespace": "default"},
        "reason": "Started", "message": "started", "type": "Normal",
    }))
    .unwrap();
    events
        .create(&PostParams::default(), &event)
        .await
        .expect("event");
    let elsewhere = default_pods.get("elsewhere").await.expect("pod");
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec!["orca".to_owned()]),
            expiration_seconds: Some(3600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some("elsewhere".to_owned()),
                uid: elsewhere.metadata.uid.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let answer = accounts
        .create_token_request("default", &PostParams::default(), &request)
        .await
        .expect("token");
    let token = answer.status.and_then(|s| s.token).expect("a token");
    assert_eq!(token.split('.').count(), 3);
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some("kube-apiserver-kubelet-client".to_owned()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some("get".to_owned()),
                resource: Some("nodes".to_owned()),
                subresource: Some("log".to_owned()),
                name: Some("vk".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = reviews
        .create(&PostParams::default(), &review)
        .await
        .expect("review");
    assert!(answer.status.expect("status").allowed);

    // Every request is in the log with the kubeconfig's bearer token (kube-rs sends it
    // over http://, unlike kubectl; it sends no User-Agent unless configured to).
    let requests = kapi.requests();
    let ours: Vec<_> = requests
        .iter()
        .filter(|r| r.token.as_deref() == Some(orca_tests::env::KUBE_API_TOKEN))
        .collect();
    assert!(ours.len() >= 15, "{requests:?}");
    assert!(
        ours.iter()
            .any(|r| r.verb == "watch" && r.rbac_resource().as_deref() == Some("pods"))
    );
    assert!(
        ours.iter()
            .any(|r| r.verb == "patch" && r.rbac_resource().as_deref() == Some("nodes/status"))
    );
    assert!(ours.iter().any(
        |r| r.verb == "create" && r.rbac_resource().as_deref() == Some("serviceaccounts/token")
    ));
}
