//! Tests of CDI loading and application.
use super::*;

/// What `nvidia-ctk cdi generate` writes, trimmed, with `/dev/null` (char
/// 1:3) as the host node so that stat works on any host.
const NVIDIA: &str = r#"---
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes: [{path: /dev/nvidia0, hostPath: /dev/null}]
    hooks:
    - hookName: createContainer
      path: /usr/bin/nvidia-ctk
      args: [nvidia-ctk, hook, chmod, --mode, "755", --path, /dev/dri]
- name: GPU-520e01f2-cf30-6396-abef-e8e9a5233b0e
  containerEdits: {deviceNodes: [{path: /dev/nvidia0, hostPath: /dev/null}]}
- name: all
  containerEdits: {deviceNodes: [{path: /dev/nvidia0, hostPath: /dev/null}]}
- name: "0:1"
  containerEdits: {deviceNodes: [{path: /dev/nvidia-caps/nvidia-cap21, hostPath: /dev/null}]}
containerEdits:
  env: [NVIDIA_VISIBLE_DEVICES=void]
  deviceNodes:
  - {path: /dev/nvidiactl, hostPath: /dev/null}
  - {path: /dev/nvidia-uvm, type: c, major: 511, minor: 0}
  hooks:
  - hookName: createContainer
    path: /usr/bin/nvidia-ctk
    args: [nvidia-ctk, hook, create-symlinks, --link, libcuda.so.1::/usr/lib64/libcuda.so]
    env: [NVIDIA_CTK_DEBUG=false]
  - hookName: createContainer
    path: /usr/bin/nvidia-ctk
    args: [nvidia-ctk, hook, update-ldcache, --folder, /usr/lib/x86_64-linux-gnu]
  mounts:
  - hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.575.64.03
    containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.575.64.03
    options: [ro, nosuid, nodev, bind]
  - hostPath: /run/nvidia-persistenced/socket
    containerPath: /run/nvidia-persistenced/socket
    options: [ro, nosuid, nodev, bind, noexec]
  - {hostPath: /usr/bin/nvidia-smi, containerPath: /usr/bin/nvidia-smi, options: [ro, bind]}
"#;

/// An OCI spec shaped as the agent builds it.
fn oci() -> Value {
    json!({
        "process": {
            "env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all"],
            "user": { "uid": 0, "gid": 0, "additionalGids": [5] },
        },
        "mounts": [{ "destination": "/proc" }, { "destination": "/dev/shm" }],
        "linux": { "devices": [], "resources": { "devices": [deny_all()] } },
    })
}

fn deny_all() -> Value {
    json!({ "allow": false, "access": "rwm" })
}

/// A spec whose one device, `a.com/b=d`, has `edits`.
fn spec(edits: &str) -> String {
    let device = format!("[{{name: d, containerEdits: {edits}}}]");
    format!("cdiVersion: 0.7.0\nkind: a.com/b\ndevices: {device}")
}

/// A registry of one directory holding `files`.
fn load_one(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<Registry, CdiError>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let registry = Registry::load(&[dir.path().to_owned()]);
    (dir, registry)
}

fn apply(registry: &Registry, spec: &mut Value, devices: &[&str]) -> Result<(), CdiError> {
    let devices: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
    registry.apply(spec, &devices)
}

/// Each line of a table: its ` | `-separated cells.
fn table(text: &str) -> impl Iterator<Item = Vec<&str>> {
    let rows = text.lines().filter(|l| !l.trim().is_empty());
    rows.map(|l| l.split(" | ").map(str::trim).collect())
}

#[test]
fn nvidia_spec_gives_devices_rules_mounts_hooks_and_env() {
    let (_dir, registry) = load_one(&[("nvidia.yaml", NVIDIA)]);
    let registry = registry.unwrap();
    let uuid = "nvidia.com/gpu=GPU-520e01f2-cf30-6396-abef-e8e9a5233b0e";
    assert!(registry.has("nvidia.com/gpu=0") && registry.has("nvidia.com/gpu=all"));
    assert!(registry.has("nvidia.com/gpu=0:1"), "a MIG device");
    assert!(registry.has(uuid) && !registry.has("nvidia.com/gpu=1") && !registry.has("0"));
    let mut spec = oci();
    apply(&registry, &mut spec, &["nvidia.com/gpu=0"]).unwrap();

    let env = json!(["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=void"]);
    assert_eq!(spec["process"]["env"], env);
    let dev = |path, major, minor| {
        json!({ "path": path, "type": "c",
                "major": major, "minor": minor })
    };
    let uvm = dev("/dev/nvidia-uvm", 511, 0);
    let devices = json!([dev("/dev/nvidiactl", 1, 3), uvm, dev("/dev/nvidia0", 1, 3)]);
    assert_eq!(spec["linux"]["devices"], devices);
    let allow = |major, minor| {
        json!({ "allow": true, "type": "c",
                "major": major, "minor": minor, "access": "rwm" })
    };
    let rules = json!([deny_all(), allow(1, 3), allow(511, 0)]);
    assert_eq!(spec["linux"]["resources"]["devices"], rules, "1:3 once");

    let mounts = spec["mounts"].as_array().unwrap();
    let destinations: Vec<_> = mounts.iter().map(|m| m["destination"].as_str()).collect();
    let by_depth = [
        "/proc",
        "/dev/shm",
        "/run/nvidia-persistenced/socket",
        "/usr/bin/nvidia-smi",
        "/usr/lib/x86_64-linux-gnu/libcuda.so.575.64.03",
    ];
    assert_eq!(destinations, by_depth.map(Some));
    let smi = "/usr/bin/nvidia-smi";
    let smi = json!({ "source": smi, "destination": smi, "options": ["ro", "bind"] });
    assert_eq!(mounts[3], smi);

    let hooks = spec["hooks"]["createContainer"].as_array().unwrap();
    let verbs: Vec<_> = hooks
        .iter()
        .map(|h| h["args"][2].as_str().unwrap())
        .collect();
    assert_eq!(verbs, ["create-symlinks", "update-ldcache", "chmod"]);
    assert_eq!(hooks[0]["path"], "/usr/bin/nvidia-ctk");
    assert_eq!(hooks[0]["env"], json!(["NVIDIA_CTK_DEBUG=false"]));
    assert!(hooks[1].get("env").is_none() && hooks[1].get("timeout").is_none());

    // Spec-level edits once for two devices of one spec; a repeat is one.
    let mut spec = oci();
    let all = "nvidia.com/gpu=all";
    apply(&registry, &mut spec, &[all, "nvidia.com/gpu=0", all]).unwrap();
    let count = |v: &Value| v.as_array().map(Vec::len);
    assert_eq!(count(&spec["hooks"]["createContainer"]), Some(3));
    assert_eq!(count(&spec["linux"]["devices"]), Some(3));
    assert_eq!(count(&spec["mounts"]), Some(5));
}

#[test]
fn json_spec_with_gids_user_permissions_and_mount_type() {
    let text = r#"{ "cdiVersion": "0.7.0", "kind": "a.com/b",
        "devices": [{ "name": "d", "containerEdits": {
            "deviceNodes": [{ "path": "/dev/d", "hostPath": "/dev/null",
                              "permissions": "rw", "fileMode": 438 }],
            "additionalGids": [0, 44, 5] } }],
        "containerEdits": {
            "env": ["PATH=/usr/bin"],
            "mounts": [{ "hostPath": "/srv", "containerPath": "/data", "type": "none",
                         "options": ["rbind"] }],
            "hooks": [{ "hookName": "poststop", "path": "/bin/cleanup", "timeout": 5 }] } }"#;
    let (_dir, registry) = load_one(&[("b.json", text)]);
    let registry = registry.unwrap();
    assert_eq!(registry.devices().collect::<Vec<_>>(), ["a.com/b=d"]);
    let mut spec = oci();
    spec["process"]["user"] = json!({ "uid": 1000, "gid": 1000, "additionalGids": [5] });
    apply(&registry, &mut spec, &["a.com/b=d"]).unwrap();
    assert_eq!(spec["process"]["env"][0], "PATH=/usr/bin");
    assert_eq!(spec["process"]["user"]["additionalGids"], json!([5, 44]));
    let node = json!({ "path": "/dev/d", "type": "c", "major": 1, "minor": 3,
                       "fileMode": 438, "uid": 1000, "gid": 1000 });
    assert_eq!(spec["linux"]["devices"], json!([node]));
    assert_eq!(spec["linux"]["resources"]["devices"][1]["access"], "rw");
    let data = json!({ "source": "/srv", "destination": "/data", "type": "none",
                       "options": ["rbind"] });
    assert_eq!(spec["mounts"][1], data);
    let cleanup = json!([{ "path": "/bin/cleanup", "timeout": 5 }]);
    assert_eq!(spec["hooks"]["poststop"], cleanup);
}

#[test]
fn a_later_directory_overrides_and_a_missing_one_is_empty() {
    let x = |who: &str| format!("{{name: x, containerEdits: {{env: [WHO={who}]}}}}");
    let etc = format!(
        "cdiVersion: 0.3.0\nkind: a.com/b\ndevices: [{}, {}]",
        x("etc"),
        { "{name: y, containerEdits: {env: [ONLY=etc]}}" }
    );
    let run = format!("cdiVersion: v0.8.0\nkind: a.com/b\ndevices: [{}]", x("run"));
    let ((etc, _), (run, _)) = (load_one(&[("a.yaml", &etc)]), load_one(&[("b.yml", &run)]));
    let dirs = [
        etc.path().to_owned(),
        etc.path().join("gone"),
        run.path().to_owned(),
    ];
    let registry = Registry::load(&dirs).unwrap();
    assert_eq!(registry.dirs(), dirs);
    let mut oci = json!({});
    apply(&registry, &mut oci, &["a.com/b=x", "a.com/b=y"]).unwrap();
    assert_eq!(oci["process"]["env"], json!(["WHO=run", "ONLY=etc"]));
    let empty = Registry::load(&[run.path().join("gone")]).unwrap();
    assert_eq!(empty.devices().count(), 0);
}

#[test]
fn malformed_specs_are_errors_naming_the_file() {
    // In `spec("{env: [A=1]}")`, replace the first cell by the second.
    let cases = r#"
        0.7.0 | 0.9.0 | unsupported cdiVersion "0.9.0"
        0.7.0 | 1.0.0 | unsupported cdiVersion
        a.com/b | a.com | not vendor/class
        a.com/b | a.com/-b | class "-b" must start
        kind: a.com/b |  | missing field `kind`
        name: d, |  | missing field `name`
        name: d | name: "d/e" | name "d/e" holds '/'
        [{name: d, containerEdits: {env: [A=1]}}] | [] | no devices
        {env: [A=1]} | {} | no containerEdits
        [A=1] | [A] | KEY=VALUE
        {env: [A=1]} | {hooks: [{hookName: run, path: /x}]} | hook name "run"
        {env: [A=1]} | {deviceNodes: [{path: /dev/x, type: x}]} | type "x"
        {env: [A=1]} | {bogus: 1} | unknown field `bogus`
    "#;
    for case in table(cases) {
        let text = spec("{env: [A=1]}").replacen(case[0], case[1], 1);
        let (dir, registry) = load_one(&[("bad.yaml", &text)]);
        let message = registry.unwrap_err().to_string();
        let file = dir.path().join("bad.yaml").display().to_string();
        assert!(
            message.contains(&file) && message.contains(case[2]),
            "{message}: {case:?}"
        );
    }
    let (_dir, registry) = load_one(&[("bad.json", "{\"cdiVersion\": ")]);
    assert!(matches!(registry, Err(CdiError::Invalid { .. })));
    let one = spec("{env: [A=1]}");
    let (_dir, registry) = load_one(&[("1.yaml", &one), ("2.yaml", &one)]);
    let message = registry.unwrap_err().to_string();
    assert!(
        message.contains("2.yaml: device a.com/b=d is also defined in"),
        "{message}"
    );
}

#[test]
fn apply_errors_name_the_device_and_leave_the_spec_alone() {
    let (dir, registry) = load_one(&[("a.yaml", &spec("{env: [A=1]}"))]);
    let mut oci = oci();
    let error = apply(
        &registry.unwrap(),
        &mut oci,
        &["a.com/b=d", "a.com/b=e", "x"],
    );
    let message = error.unwrap_err().to_string();
    assert!(
        message.contains("a.com/b=e, x") && !message.contains("=d"),
        "{message}"
    );
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );

    let cases = r#"
        {deviceNodes: [{path: /dev/x, hostPath: /nonexistent/x}]} | /nonexistent/x
        {deviceNodes: [{path: /dev/x, hostPath: FILE}]} | not a device node
        {deviceNodes: [{path: /dev/x, hostPath: /dev/null, type: b}]} | type b
        {intelRdt: {closID: x}} | intelRdt is not supported
        {netDevices: [{hostInterfaceName: eth1, name: eth1}]} | netDevices is not supported
    "#;
    let file = dir.path().join("a.yaml").display().to_string();
    for case in table(cases) {
        let (_dir, registry) = load_one(&[("a.yaml", &spec(&case[0].replace("FILE", &file)))]);
        let error = apply(&registry.unwrap(), &mut oci, &["a.com/b=d"]).unwrap_err();
        let message = error.to_string();
        let wanted = message.starts_with("CDI device a.com/b=d: ") && message.contains(case[1]);
        assert!(wanted, "{message}: {case:?}");
    }
    assert_eq!(oci, self::oci(), "unchanged");
}
