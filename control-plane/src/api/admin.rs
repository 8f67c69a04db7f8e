//! `orca.controlplane.v1.AdminService`: nodes, pods, logs, events.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use orca_proto::agent::v1 as agent;
use orca_proto::controlplane::v1::{self as pb, admin_service_server::AdminService};
use tonic::{Request, Response, Status, Streaming};

use super::{backup_status, status};
use crate::auth::Caller;
use crate::auth::rbac::Access;
use crate::cloud::Fault;
use crate::cluster::Cluster;

/// The AdminService server.
pub struct AdminApi {
    cluster: Cluster,
}

impl AdminApi {
    /// A server over `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        Self { cluster }
    }
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The caller the interceptor authenticated.
fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

/// A request's namespace, `default` when it names none.
fn ns_or_default(ns: &str) -> &str {
    if ns.is_empty() {
        crate::pods::DEFAULT_NAMESPACE
    } else {
        ns
    }
}

/// The resource and namespace (none for cluster-scoped kinds) of a stored
/// object's kind word; an unknown kind is authorized as itself (the call then
/// fails on the kind).
fn object_scope(kind: &str, ns: &str) -> (String, String) {
    match crate::objects::Kind::parse(kind) {
        Some(k) if !k.namespaced() => (k.resource(), String::new()),
        Some(k) => (k.resource(), ns.to_owned()),
        None => (kind.to_ascii_lowercase(), ns.to_owned()),
    }
}

/// The namespace a claim manifest names.
fn claim_namespace(manifest: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(manifest).unwrap_or_default();
    ns_or_default(v["metadata"]["namespace"].as_str().unwrap_or_default()).to_owned()
}

impl AdminApi {
    /// Authorizes `verb resource` in `ns` on `name` for the caller (audited).
    fn allow<T>(
        &self,
        req: &Request<T>,
        method: &str,
        verb: &str,
        resource: &str,
        ns: &str,
        name: &str,
    ) -> Result<(), Status> {
        let caller = caller(req)?;
        self.cluster
            .auth()
            .authorize(&caller, method, &Access::new(verb, resource, ns, name))
            .map_err(status)
    }

    /// What applying a manifest does: `create` when the object is new,
    /// `update` when it exists.
    fn apply_access(
        &self,
        req: &pb::ApplyObjectRequest,
    ) -> Result<(&'static str, String, String, String), Status> {
        let v: serde_json::Value = serde_json::from_str(&req.manifest_json)
            .map_err(|e| Status::invalid_argument(format!("the manifest is not JSON: {e}")))?;
        let kind = v["kind"].as_str().unwrap_or_default();
        let name = v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let ns = v["metadata"]["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or(ns_or_default(&req.namespace));
        let (resource, ns) = object_scope(kind, ns);
        let exists = self.cluster.objects().get_object(kind, &ns, &name).is_ok();
        Ok((if exists { "update" } else { "create" }, resource, ns, name))
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    #[tracing::instrument(skip_all, fields(node = %req.get_ref().name))]
    async fn add_node(
        &self,
        req: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        self.allow(&req, "AddNode", "create", "nodes", "", &req.get_ref().name)?;
        let req = req.into_inner();
        let node = crate::registry::NodeRequest {
            name: req.name,
            size: req.size.unwrap_or_default(),
            labels: req.labels,
            taints: req.taints,
            external: req.external,
        };
        self.cluster
            .registry()
            .add_node(node)
            .await
            .map(Response::new)
            .map_err(status)
    }

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().node_name))]
    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        self.allow(
            &req,
            "CreateJoinToken",
            "create",
            "nodes",
            "",
            &req.get_ref().node_name,
        )?;
        self.cluster
            .registry()
            .create_join_token(&req.into_inner().node_name)
            .await
            .map(Response::new)
            .map_err(status)
    }

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().name))]
    async fn cordon_node(
        &self,
        req: Request<pb::CordonNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        self.allow(
            &req,
            "CordonNode",
            "patch",
            "nodes",
            "",
            &req.get_ref().name,
        )?;
        let req = req.into_inner();
        self.cluster
            .registry()
            .cordon(&req.name, req.unschedulable)
            .await
            .map(Response::new)
            .map_err(status)
    }

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().name))]
    async fn inject_fault(
        &self,
        req: Request<pb::InjectFaultRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        self.allow(
            &req,
            "InjectFault",
            "patch",
            "nodes",
            "",
            &req.get_ref().name,
        )?;
        let req = req.into_inner();
        let fault = match pb::Fault::try_from(req.fault) {
            Ok(pb::Fault::KillAgent) => Fault::KillAgent,
            Ok(pb::Fault::Partition) => Fault::Partition,
            Ok(pb::Fault::Heal) => Fault::Heal,
            Ok(pb::Fault::SpotNotice) => Fault::SpotNotice(match req.duration_ms {
                ms if ms > 0 => std::time::Duration::from_millis(ms as u64),
                _ => crate::interruptions::SPOT_NOTICE_LEAD,
            }),
            _ => {
                return Err(Status::invalid_argument(
                    "fault: kill-agent, partition, heal or spot-notice",
                ));
            }
        };
        let duration =
            (req.duration_ms > 0).then(|| std::time::Duration::from_millis(req.duration_ms as u64));
        self.cluster
            .recovery()
            .inject_fault(&req.name, fault, duration)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn get_node(
        &self,
        req: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        self.allow(&req, "GetNode", "get", "nodes", "", &req.get_ref().name)?;
        self.cluster
            .registry()
            .node(&req.into_inner().name)
            .map(Response::new)
            .map_err(status)
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.allow(&req, "ListNodes", "list", "nodes", "", "")?;
        let nodes = self.cluster.registry().nodes().map_err(status)?;
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().name))]
    async fn drain_node(
        &self,
        req: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        self.allow(&req, "DrainNode", "patch", "nodes", "", &req.get_ref().name)?;
        let req = req.into_inner();
        let grace = (req.grace_period_seconds >= 0).then_some(req.grace_period_seconds);
        self.cluster
            .recovery()
            .drain(&req.name, grace)
            .await
            .map(Response::new)
            .map_err(status)
    }

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().name))]
    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        self.allow(
            &req,
            "RemoveNode",
            "delete",
            "nodes",
            "",
            &req.get_ref().name,
        )?;
        let node = self
            .cluster
            .registry()
            .remove_node(&req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoveNodeResponse { node: Some(node) }))
    }

    #[tracing::instrument(skip_all)]
    async fn run_pod(
        &self,
        req: Request<pb::RunPodRequest>,
    ) -> Result<Response<pb::PodRecord>, Status> {
        let r = req
            .get_ref()
            .pod
            .as_ref()
            .and_then(|p| p.r#ref.clone())
            .unwrap_or_default();
        self.allow(
            &req,
            "RunPod",
            "create",
            "pods",
            ns_or_default(&r.namespace),
            &r.name,
        )?;
        let pod = req
            .into_inner()
            .pod
            .ok_or_else(|| Status::invalid_argument("pod is required"))?;
        self.cluster
            .objects()
            .create_admitted_pod(pod)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn apply_object(
        &self,
        req: Request<pb::ApplyObjectRequest>,
    ) -> Result<Response<pb::ApplyObjectResponse>, Status> {
        let (verb, resource, ns, name) = self.apply_access(req.get_ref())?;
        self.allow(&req, "ApplyObject", verb, &resource, &ns, &name)?;
        if let Ok(manifest) = serde_json::from_str(&req.get_ref().manifest_json) {
            self.cluster
                .auth()
                .refuse_escalation(&caller(&req)?, &manifest)
                .map_err(status)?;
        }
        let req = req.into_inner();
        let (object, created) = self
            .cluster
            .objects()
            .apply_object(&req.manifest_json, &req.namespace)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ApplyObjectResponse {
            object: Some(object),
            created,
        }))
    }

    async fn get_object(
        &self,
        req: Request<pb::GetObjectRequest>,
    ) -> Result<Response<pb::StoredObject>, Status> {
        let r = req.get_ref();
        let (resource, ns) = object_scope(&r.kind, &r.namespace);
        self.allow(&req, "GetObject", "get", &resource, &ns, &r.name.clone())?;
        let req = req.into_inner();
        self.cluster
            .objects()
            .get_object(&req.kind, &req.namespace, &req.name)
            .map(Response::new)
            .map_err(status)
    }

    async fn list_objects(
        &self,
        req: Request<pb::ListObjectsRequest>,
    ) -> Result<Response<pb::ListObjectsResponse>, Status> {
        let r = req.get_ref();
        let (resource, ns) = object_scope(&r.kind, &r.namespace);
        self.allow(&req, "ListObjects", "list", &resource, &ns, "")?;
        let req = req.into_inner();
        let objects = self
            .cluster
            .objects()
            .list_objects(&req.kind, &req.namespace)
            .map_err(status)?;
        Ok(Response::new(pb::ListObjectsResponse { objects }))
    }

    async fn delete_object(
        &self,
        req: Request<pb::DeleteObjectRequest>,
    ) -> Result<Response<pb::DeleteObjectResponse>, Status> {
        let r = req.get_ref();
        let (resource, ns) = object_scope(&r.kind, &r.namespace);
        self.allow(
            &req,
            "DeleteObject",
            "delete",
            &resource,
            &ns,
            &r.name.clone(),
        )?;
        let req = req.into_inner();
        let (object, pods_deleted) = self
            .cluster
            .objects()
            .delete_object(&req.kind, &req.namespace, &req.name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteObjectResponse {
            object: Some(object),
            pods_deleted,
        }))
    }

    async fn get_pod(
        &self,
        req: Request<pb::GetPodRequest>,
    ) -> Result<Response<pb::PodRecord>, Status> {
        self.allow(
            &req,
            "GetPod",
            "get",
            "pods",
            ns_or_default(&req.get_ref().namespace),
            &req.get_ref().name,
        )?;
        let req = req.into_inner();
        self.cluster
            .pods()
            .pod(&req.namespace, &req.name)
            .map(Response::new)
            .map_err(status)
    }

    async fn list_pods(
        &self,
        req: Request<pb::ListPodsRequest>,
    ) -> Result<Response<pb::ListPodsResponse>, Status> {
        self.allow(
            &req,
            "ListPods",
            "list",
            "pods",
            &req.get_ref().namespace,
            "",
        )?;
        let pods = self
            .cluster
            .pods()
            .pods(&req.into_inner().namespace)
            .map_err(status)?;
        Ok(Response::new(pb::ListPodsResponse { pods }))
    }

    #[tracing::instrument(skip_all, fields(pod = %req.get_ref().name))]
    async fn delete_pod(
        &self,
        req: Request<pb::DeletePodRequest>,
    ) -> Result<Response<pb::DeletePodResponse>, Status> {
        self.allow(
            &req,
            "DeletePod",
            "delete",
            "pods",
            ns_or_default(&req.get_ref().namespace),
            &req.get_ref().name,
        )?;
        let req = req.into_inner();
        let grace = (req.grace_period_seconds >= 0).then_some(req.grace_period_seconds);
        let pod = self
            .cluster
            .pods()
            .delete_pod(&req.namespace, &req.name, grace)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeletePodResponse { pod: Some(pod) }))
    }

    type LogsStream = Stream_<agent::LogChunk>;

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        self.allow(
            &req,
            "CreateToken",
            "create",
            "tokens",
            "",
            &req.get_ref().name,
        )?;
        let name = req.into_inner().name;
        let token = self
            .cluster
            .auth()
            .create_token(&name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateTokenResponse { name, token }))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.allow(&req, "ListTokens", "list", "tokens", "", "")?;
        let tokens = self
            .cluster
            .auth()
            .tokens()
            .map_err(status)?
            .into_iter()
            .map(|t| pb::TokenInfo {
                name: t.name,
                created_at: t.created_at,
            })
            .collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn delete_token(
        &self,
        req: Request<pb::DeleteTokenRequest>,
    ) -> Result<Response<pb::DeleteTokenResponse>, Status> {
        self.allow(
            &req,
            "DeleteToken",
            "delete",
            "tokens",
            "",
            &req.get_ref().name,
        )?;
        self.cluster
            .auth()
            .delete_token(&req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteTokenResponse {}))
    }

    async fn can_i(
        &self,
        req: Request<pb::CanIRequest>,
    ) -> Result<Response<pb::CanIResponse>, Status> {
        let asker = caller(&req)?;
        let r = req.into_inner();
        let subject = match (&asker, r.user.as_str()) {
            (_, "") => asker.clone(),
            (Caller::Admin, "admin") => Caller::Admin,
            (Caller::Admin, user) => Caller::User(user.to_owned()),
            (Caller::User(me), user) if me == user => asker.clone(),
            (Caller::User(me), user) => {
                return Err(Status::permission_denied(format!(
                    "User {me:?} cannot ask what {user:?} may do (only the admin token can)"
                )));
            }
        };
        let ns = if crate::auth::rbac::cluster_scoped(&r.resource) {
            String::new()
        } else {
            ns_or_default(&r.namespace).to_owned()
        };
        let access = Access::new(&r.verb, &r.resource, &ns, &r.name);
        let (allowed, reason) = self
            .cluster
            .auth()
            .decide(&subject, &access)
            .map_err(status)?;
        self.cluster.shared().audit().record(
            &asker,
            "CanI",
            &access,
            true,
            &format!(
                "asked for {}: {}",
                subject.name(),
                if allowed { "yes" } else { "no" }
            ),
        );
        Ok(Response::new(pb::CanIResponse { allowed, reason }))
    }
    type WatchPodsStream = Stream_<pb::PodWatchEvent>;

    async fn watch_pods(
        &self,
        req: Request<pb::WatchPodsRequest>,
    ) -> Result<Response<Self::WatchPodsStream>, Status> {
        self.allow(
            &req,
            "WatchPods",
            "watch",
            "pods",
            &req.get_ref().namespace,
            "",
        )?;
        let ns = req.into_inner().namespace;
        self.cluster
            .pods()
            .watch_pods(&ns)
            .map(|s| Response::new(s.boxed()))
            .map_err(status)
    }

    async fn logs(
        &self,
        req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        self.allow(
            &req,
            "Logs",
            "get",
            "pods/log",
            ns_or_default(&req.get_ref().namespace),
            &req.get_ref().name,
        )?;
        let req = req.into_inner();
        let options = req.options.unwrap_or_default();
        let stream = self
            .cluster
            .streams()
            .logs(&req.namespace, &req.name, options)
            .await
            .map_err(status)?;
        Ok(Response::new(stream.boxed()))
    }

    type ExecStream = Stream_<agent::ExecOutput>;

    async fn exec(
        &self,
        req: Request<Streaming<pb::ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        use agent::exec_input::Input;
        let caller = caller(&req)?;
        let mut input = req.into_inner();
        let first = input.message().await?.ok_or_else(first_message_error)?;
        let Some(Input::Start(start)) = first.input.and_then(|i| i.input) else {
            return Err(first_message_error());
        };
        let (namespace, name) = (first.namespace, first.name);
        let access = Access::new("create", "pods/exec", ns_or_default(&namespace), &name);
        self.cluster
            .auth()
            .authorize(&caller, "Exec", &access)
            .map_err(status)?;
        let rest = tokio_stream::StreamExt::map_while(input, |m| m.ok().and_then(|m| m.input));
        let output = self
            .cluster
            .streams()
            .exec(&namespace, &name, start, rest)
            .await
            .map_err(status)?;
        Ok(Response::new(output.boxed()))
    }

    type AttachStream = Stream_<agent::ExecOutput>;

    async fn attach(
        &self,
        req: Request<Streaming<pb::AttachInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        use agent::attach_input::Input;
        let caller = caller(&req)?;
        let mut input = req.into_inner();
        let first = input.message().await?.ok_or_else(first_message_error)?;
        let Some(Input::Start(start)) = first.input.and_then(|i| i.input) else {
            return Err(first_message_error());
        };
        let (namespace, name) = (first.namespace, first.name);
        let access = Access::new("create", "pods/attach", ns_or_default(&namespace), &name);
        self.cluster
            .auth()
            .authorize(&caller, "Attach", &access)
            .map_err(status)?;
        let rest = tokio_stream::StreamExt::map_while(input, |m| m.ok().and_then(|m| m.input));
        let output = self
            .cluster
            .streams()
            .attach(&namespace, &name, start, rest)
            .await
            .map_err(status)?;
        Ok(Response::new(output.boxed()))
    }

    #[tracing::instrument(skip_all)]
    async fn create_claim(
        &self,
        req: Request<pb::CreateClaimRequest>,
    ) -> Result<Response<pb::Claim>, Status> {
        self.allow(
            &req,
            "CreateClaim",
            "create",
            "persistentvolumeclaims",
            &claim_namespace(&req.get_ref().manifest_json),
            "",
        )?;
        self.cluster
            .claims()
            .create_claim(&req.into_inner().manifest_json)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn list_claims(
        &self,
        req: Request<pb::ListClaimsRequest>,
    ) -> Result<Response<pb::ListClaimsResponse>, Status> {
        self.allow(
            &req,
            "ListClaims",
            "list",
            "persistentvolumeclaims",
            &req.get_ref().namespace,
            "",
        )?;
        let claims = self
            .cluster
            .claims()
            .claims(&req.into_inner().namespace)
            .map_err(status)?;
        Ok(Response::new(pb::ListClaimsResponse { claims }))
    }

    #[tracing::instrument(skip_all, fields(claim = %req.get_ref().name))]
    async fn delete_claim(
        &self,
        req: Request<pb::DeleteClaimRequest>,
    ) -> Result<Response<pb::Claim>, Status> {
        self.allow(
            &req,
            "DeleteClaim",
            "delete",
            "persistentvolumeclaims",
            ns_or_default(&req.get_ref().namespace),
            &req.get_ref().name,
        )?;
        let req = req.into_inner();
        self.cluster
            .claims()
            .delete_claim(&req.namespace, &req.name)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn list_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        self.allow(
            &req,
            "ListEvents",
            "list",
            "events",
            &req.get_ref().namespace,
            "",
        )?;
        let req = req.into_inner();
        let events = self
            .cluster
            .pods()
            .events(&req.namespace, &req.name)
            .map_err(status)?;
        Ok(Response::new(pb::ListEventsResponse { events }))
    }

    #[tracing::instrument(skip_all)]
    async fn telemetry(
        &self,
        req: Request<pb::TelemetryRequest>,
    ) -> Result<Response<pb::TelemetryResponse>, Status> {
        self.allow(&req, "Telemetry", "get", "telemetry", "", "")?;
        let req = req.into_inner();
        if !req.node.is_empty() {
            self.cluster.registry().node(&req.node).map_err(status)?;
        }
        let nodes = self
            .cluster
            .shared()
            .telemetry()
            .snapshot(&req.node, req.history as usize);
        let pods = self
            .cluster
            .shared()
            .store()
            .pods
            .scan("")
            .map_err(|e| status(e.into()))?;
        let mut usage = crate::telemetry::pod_usage(&nodes, &pods);
        if !req.node.is_empty() {
            usage.retain(|u| u.node == req.node);
        }
        Ok(Response::new(pb::TelemetryResponse { nodes, pods: usage }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_budgets(
        &self,
        req: Request<pb::ListBudgetsRequest>,
    ) -> Result<Response<pb::ListBudgetsResponse>, Status> {
        self.allow(&req, "ListBudgets", "list", "budgets", "", "")?;
        self.cluster
            .budgets()
            .budget_statuses()
            .map(|budgets| Response::new(pb::ListBudgetsResponse { budgets }))
            .map_err(status)
    }

    type BackupStream = Stream_<pb::BackupChunk>;

    #[tracing::instrument(skip_all)]
    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        self.allow(&req, "Backup", "get", "backups", "", "")?;
        let store = self.cluster.shared().store().clone();
        let data_dir = self.cluster.shared().config().data_dir.clone();
        // Copying the store and compressing it block: off the runtime's threads.
        let (archive, manifest) =
            tokio::task::spawn_blocking(move || crate::backup::create(&store, &data_dir))
                .await
                .map_err(|e| Status::internal(format!("backup task failed: {e}")))?
                .map_err(|e| {
                    tracing::error!(error = %e, "backup failed");
                    backup_status(e)
                })?;
        tracing::info!(bytes = archive.len(), trees = %manifest.summary(), "backup taken");
        let chunks = crate::backup::chunks(archive).map(|data| Ok(pb::BackupChunk { data }));
        Ok(Response::new(futures::stream::iter(chunks).boxed()))
    }
}

fn first_message_error() -> Status {
    Status::invalid_argument(
        "the first message must name the pod (namespace, name) and carry `input.start`",
    )
}
