//! Services in standalone mode, on simulated hosts with real containers
//! (busybox httpd, each pod serving its own name): the virtual IP spreads
//! requests over the Ready pods (counted per pod, from this machine's own
//! network and from inside a host), stops sending to a pod whose readiness
//! fails, and least-connections sends new connections to the idle pod.
//! Discovery by the Kubernetes environment variables and by DNS
//! (`web.default.svc.cluster.local` through the pod's resolv.conf) resolves.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use orca_tests::cluster::{DEADLINE, TestCluster};
use orca_tests::eventually::eventually_blocking;

const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: IMAGE
        command: [sh, -c, 'echo $HOSTNAME > /www/index.html; echo ok > /www/ready; exec httpd -f -p 8080 -h /www']
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /ready, port: http}
          periodSeconds: 1
          failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
";

/// One HTTP/1.0 GET through `addr`: the body.
fn get(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn spread(addr: &str, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts.entry(get(addr)).or_default() += 1;
    }
    counts
}

fn service(c: &TestCluster) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&c.orca_ok(&["get", "svc", "web", "-o", "json"])).unwrap();
    v
}

fn endpoint_pods(c: &TestCluster) -> Vec<String> {
    let v = service(c);
    let mut pods: Vec<String> = v["status"]["ports"][0]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["pod"].as_str().unwrap_or_default().to_owned())
        .collect();
    pods.sort();
    pods
}

#[test]
fn a_service_balances_over_ready_pods_and_is_discovered() {
    let c = TestCluster::start_with(&["--retry-ms=100"]);
    assert!(c.namespaced, "Services need hosts in network namespaces");
    for n in ["h1", "h2", "h3"] {
        c.orca_ok(&["node", "add", n]);
    }
    for n in ["h1", "h2", "h3"] {
        c.wait_node_ready(n);
    }
    let file = c.dir().join("web.yaml");
    std::fs::write(&file, WEB.replace("IMAGE", &c.image)).unwrap();
    let applied = c.orca_ok(&["apply", "-f", file.to_str().unwrap()]);
    assert!(applied.contains("service/web created"), "{applied}");
    c.orca_ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);

    let vip = service(&c)["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        vip.starts_with(c.network.gateway.to_string().rsplit_once('.').unwrap().0),
        "{vip}"
    );
    let addr = format!("{vip}:80");
    let pods = eventually_blocking("three endpoints", DEADLINE, || {
        let p = endpoint_pods(&c);
        if p.len() == 3 { Ok(p) } else { Err(p) }
    });

    // Round-robin: 30 sequential requests, 10 per pod.
    let counts = spread(&addr, 30);
    assert_eq!(counts.len(), 3, "{counts:?}");
    for p in &pods {
        assert_eq!(counts.get(p), Some(&10), "{counts:?}");
    }
    let described = c.orca_ok(&["describe", "svc", "web"]);
    assert!(
        described.contains(&pods[0]) && described.contains("Served"),
        "{described}"
    );

    // One pod's readiness fails: it gets nothing more.
    let out_pod = pods[0].clone();
    c.orca_ok(&["exec", &out_pod, "--", "rm", "/www/ready"]);
    eventually_blocking("the unready pod leaves the endpoints", DEADLINE, || {
        let p = endpoint_pods(&c);
        if p.len() == 2 && !p.contains(&out_pod) {
            Ok(())
        } else {
            Err(p)
        }
    });
    let counts = spread(&addr, 20);
    assert!(!counts.contains_key(&out_pod), "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 20, "{counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");
    // Ready again: back in.
    c.orca_ok(&["exec", &out_pod, "--", "sh", "-c", "echo ok > /www/ready"]);
    eventually_blocking("the pod is back", DEADLINE, || {
        let p = endpoint_pods(&c);
        if p.len() == 3 { Ok(()) } else { Err(p) }
    });

    // Discovery from a pod started after the Service: environment and DNS,
    // and the virtual IP reached from inside a host.
    let client = c.dir().join("client.yaml");
    std::fs::write(
        &client,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: client}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {}\n    command: [sh, -c, 'env; sleep 600']\n",
            c.image
        ),
    )
    .unwrap();
    c.orca_ok(&["apply", "-f", client.to_str().unwrap()]);
    c.wait_phase("client", "Running");
    let env = eventually_blocking("the client's environment", DEADLINE, || {
        let log = c.orca_ok(&["logs", "client"]);
        if log.contains("WEB_SERVICE_HOST") {
            Ok(log)
        } else {
            Err(log)
        }
    });
    assert!(
        env.lines().any(|l| l == format!("WEB_SERVICE_HOST={vip}")),
        "{env}"
    );
    assert!(env.lines().any(|l| l == "WEB_SERVICE_PORT=80"), "{env}");
    assert!(
        env.lines()
            .any(|l| l == format!("WEB_PORT_80_TCP=tcp://{vip}:80")),
        "{env}"
    );
    let resolv = c.orca_ok(&["exec", "client", "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains(&format!("nameserver {}", c.network.gateway)),
        "{resolv}"
    );
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    let lookup = c.orca_ok(&[
        "exec",
        "client",
        "--",
        "nslookup",
        "web.default.svc.cluster.local",
    ]);
    assert!(lookup.contains(&vip), "{lookup}");
    let short = c.orca_ok(&["exec", "client", "--", "nslookup", "web.default.svc"]);
    assert!(short.contains(&vip), "{short}");
    let missing = c.orca(&[
        "exec",
        "client",
        "--",
        "nslookup",
        "nope.default.svc.cluster.local",
    ]);
    assert!(!missing.status.success(), "{missing:?}");
    let body = c.orca_ok(&["exec", "client", "--", "wget", "-qO-", "http://web/"]);
    assert!(
        pods.contains(&body.trim().to_owned()),
        "by name through the VIP: {body}"
    );

    // Least connections: two idle connections held open take two pods; new
    // requests all go to the third.
    let annotated = c.dir().join("lc.yaml");
    std::fs::write(
        &annotated,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  annotations: {orca.research/lb-algorithm: least-connections}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n",
    )
    .unwrap();
    c.orca_ok(&["apply", "-f", annotated.to_str().unwrap()]);
    assert_eq!(
        service(&c)["spec"]["clusterIP"],
        vip.as_str(),
        "the address is kept"
    );
    eventually_blocking("least-connections in force", DEADLINE, || {
        let d = c.orca_ok(&["describe", "svc", "web"]);
        if d.contains("least-connections") {
            Ok(())
        } else {
            Err(d)
        }
    });
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let busy: Vec<String> = eventually_blocking("two connections held", DEADLINE, || {
        let v = service(&c);
        let busy: Vec<String> = v["status"]["ports"][0]["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["active"].as_u64() == Some(1))
            .map(|e| e["pod"].as_str().unwrap_or_default().to_owned())
            .collect();
        if busy.len() == 2 { Ok(busy) } else { Err(v) }
    });
    let idle: Vec<&String> = pods.iter().filter(|p| !busy.contains(p)).collect();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..6 {
        *counts.entry(get(&addr)).or_default() += 1;
        // The proxy counts a connection until both sides closed: wait for
        // that before the next, or it would be a tie.
        eventually_blocking("the request's connection closed", DEADLINE, || {
            let v = service(&c);
            let open: u64 = v["status"]["ports"][0]["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["active"].as_u64())
                .sum();
            if open == 2 { Ok(()) } else { Err(v) }
        });
    }
    assert_eq!(
        counts.get(idle[0]),
        Some(&6),
        "all to the idle pod {idle:?}: {counts:?}"
    );
    drop(held);

    // NodePort: every host forwards its node port to the virtual IP.
    let np = c.dir().join("np.yaml");
    std::fs::write(
        &np,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web-np}\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n",
    )
    .unwrap();
    c.orca_ok(&["apply", "-f", np.to_str().unwrap()]);
    let np: serde_json::Value =
        serde_json::from_str(&c.orca_ok(&["get", "svc", "web-np", "-o", "json"])).unwrap();
    let node_port = np["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("a node port");
    assert!((30000..=32767).contains(&node_port), "{np:#}");
    for host in ["h1", "h3"] {
        let ip = c.host_network(host).expect("a namespaced host").ip;
        let body = eventually_blocking("the node port answers", DEADLINE, || {
            match TcpStream::connect_timeout(
                &format!("{ip}:{node_port}").parse().unwrap(),
                Duration::from_secs(1),
            ) {
                Ok(_) => Ok(get(&format!("{ip}:{node_port}"))),
                Err(e) => Err(e.to_string()),
            }
        });
        assert!(pods.contains(&body), "{host}: {body}");
    }

    // Deleted: the address is gone.
    c.orca_ok(&["delete", "svc", "web"]);
    eventually_blocking(
        "the virtual IP is gone",
        DEADLINE,
        || match TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(1)) {
            Err(_) => Ok(()),
            Ok(_) => Err("still accepting"),
        },
    );
}
