//! Pods from the command line: `orca run` flags, or a Kubernetes Pod manifest.

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use orca_proto::types::v1 as types;

use super::CliError;

/// `orca run NAME --image IMAGE [flags] [-- COMMAND ARGS...]`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Pod name (also the container's name).
    pub name: String,
    /// Image reference, e.g. 127.0.0.1:5000/orca/busybox:test.
    #[arg(long)]
    pub image: String,
    /// Restart policy: Never (default, for jobs), OnFailure or Always.
    #[arg(long, default_value = "Never")]
    pub restart: String,
    /// Image pull policy: Always, IfNotPresent or Never (default: Kubernetes' rule).
    #[arg(long)]
    pub pull_policy: Option<String>,
    /// Environment variable KEY=VALUE; repeatable.
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// CPU limit, e.g. 500m.
    #[arg(long)]
    pub cpu: Option<String>,
    /// Memory limit, e.g. 256Mi.
    #[arg(long)]
    pub memory: Option<String>,
    /// Annotation KEY=VALUE; repeatable.
    #[arg(long = "annotation")]
    pub annotations: Vec<String>,
    /// Command and arguments (after `--`); the image's defaults when left out.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Splits `KEY=VALUE` (for `flag`).
pub fn key_value(what: &str, s: &str) -> Result<(String, String), CliError> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| CliError::Usage(format!("{what} {s:?} is not KEY=VALUE")))
}

/// The pod `orca run` describes.
pub fn from_run_args(namespace: &str, args: &RunArgs) -> Result<types::Pod, CliError> {
    let env = args
        .env
        .iter()
        .map(|e| {
            key_value("--env", e).map(|(name, value)| EnvVar {
                name,
                value: Some(value),
                ..Default::default()
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let limits: std::collections::BTreeMap<String, Quantity> =
        [("cpu", &args.cpu), ("memory", &args.memory)]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_owned(), Quantity(v.clone()))))
            .collect();
    let container = Container {
        name: args.name.clone(),
        image: Some(args.image.clone()),
        image_pull_policy: args.pull_policy.clone(),
        command: (!args.command.is_empty()).then(|| args.command.clone()),
        env: (!env.is_empty()).then_some(env),
        resources: (!limits.is_empty()).then(|| ResourceRequirements {
            limits: Some(limits),
            ..Default::default()
        }),
        ..Default::default()
    };
    let spec = PodSpec {
        containers: vec![container],
        restart_policy: Some(args.restart.clone()),
        ..Default::default()
    };
    let annotations = args
        .annotations
        .iter()
        .map(|a| key_value("--annotation", a))
        .collect::<Result<_, _>>()?;
    Ok(types::Pod {
        r#ref: Some(types::PodRef {
            namespace: namespace.into(),
            name: args.name.clone(),
            uid: String::new(),
        }),
        spec_json: serde_json::to_string(&spec).map_err(|e| CliError::Usage(e.to_string()))?,
        labels: [("run".to_owned(), args.name.clone())].into(),
        annotations,
    })
}

/// The pod a Kubernetes Pod manifest describes (YAML or JSON).
pub fn from_manifest(namespace: &str, text: &str) -> Result<types::Pod, CliError> {
    let pod: Pod = serde_yaml::from_str(text)
        .map_err(|e| CliError::Usage(format!("not a Kubernetes Pod: {e}")))?;
    let meta = pod.metadata;
    let spec = pod
        .spec
        .ok_or_else(|| CliError::Usage("the manifest has no spec".into()))?;
    Ok(types::Pod {
        r#ref: Some(types::PodRef {
            namespace: meta.namespace.unwrap_or_else(|| namespace.to_owned()),
            name: meta
                .name
                .ok_or_else(|| CliError::Usage("the manifest has no metadata.name".into()))?,
            uid: String::new(),
        }),
        spec_json: serde_json::to_string(&spec).map_err(|e| CliError::Usage(e.to_string()))?,
        labels: meta.labels.unwrap_or_default().into_iter().collect(),
        annotations: meta.annotations.unwrap_or_default().into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn run_flags_become_a_pod_spec() {
        let cli = super::super::Cli::parse_from([
            "orca",
            "run",
            "job",
            "--image",
            "r/busybox:1",
            "-e",
            "A=1",
            "--cpu",
            "500m",
            "--",
            "sh",
            "-c",
            "echo hi",
        ]);
        let super::super::Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let pod = from_run_args("default", &args).unwrap();
        let spec: PodSpec = serde_json::from_str(&pod.spec_json).unwrap();
        let c = &spec.containers[0];
        assert_eq!(c.command.as_deref().unwrap(), ["sh", "-c", "echo hi"]);
        assert_eq!(c.env.as_ref().unwrap()[0].value.as_deref(), Some("1"));
        assert_eq!(
            c.resources.as_ref().unwrap().limits.as_ref().unwrap()["cpu"].0,
            "500m"
        );
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let bad = RunArgs {
            env: vec!["novalue".into()],
            ..args
        };
        assert!(from_run_args("default", &bad).is_err());
    }

    #[test]
    fn manifests_keep_everything() {
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {orca.research/instance-type: g5.xlarge}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    workingDir: /tmp\n";
        let pod = from_manifest("default", yaml).unwrap();
        assert_eq!(pod.annotations["orca.research/instance-type"], "g5.xlarge");
        let spec: PodSpec = serde_json::from_str(&pod.spec_json).unwrap();
        assert_eq!(spec.containers[0].working_dir.as_deref(), Some("/tmp"));
        assert!(
            from_manifest("default", "kind: Pod\nspec: {containers: []}\n").is_err(),
            "no name"
        );
    }
}
