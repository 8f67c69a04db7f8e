//! Containers (metadata + snapshot) and tasks (their processes) in containerd.

use std::collections::HashMap;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetRequest, KillRequest, ListContainersRequest, StartRequest,
    UpdateContainerRequest, WaitRequest, containers_client::ContainersClient, snapshots,
    tasks_client::TasksClient,
};
use containerd_client::types::Mount;
use containerd_client::types::v1::Status;
use prost_types::Any;

use super::{Containerd, ImageInfo, RUNTIME, RuntimeError, SNAPSHOTTER, op};

/// The type URL containerd expects for an OCI runtime spec in JSON.
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// A task's status as containerd reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Stopped; the exit status is known.
    Stopped,
    /// Paused or pausing.
    Paused,
    /// containerd does not know.
    Unknown,
}

/// What containerd reported about a task at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskObservation {
    /// Status.
    pub status: TaskStatus,
    /// Process id on the host (0 when not running).
    pub pid: u32,
    /// Exit status, meaningful when stopped.
    pub exit_status: u32,
    /// When the task exited, when stopped.
    pub exited_at: Option<jiff::Timestamp>,
}

fn timestamp(ts: Option<prost_types::Timestamp>) -> Option<jiff::Timestamp> {
    let ts = ts?;
    // containerd reports the zero time (0001-01-01) for "not exited".
    if ts.seconds <= 0 {
        return None;
    }
    jiff::Timestamp::new(ts.seconds, ts.nanos).ok()
}

impl Containerd {
    /// Creates a container from an image: its writable snapshot, then the container
    /// record with the OCI spec and labels.
    pub async fn create_container(
        &self,
        id: &str,
        image: &ImageInfo,
        spec: &serde_json::Value,
        labels: HashMap<String, String>,
    ) -> Result<(), RuntimeError> {
        // The snapshot is unreferenced until the container record exists: a lease
        // keeps the garbage collector (which runs after every deletion) off it.
        let lease = self.create_lease("create").await?;
        let result = self
            .create_container_leased(id, image, spec, labels, &lease)
            .await;
        self.delete_lease(&lease).await;
        result
    }

    async fn create_container_leased(
        &self,
        id: &str,
        image: &ImageInfo,
        spec: &serde_json::Value,
        labels: HashMap<String, String>,
        lease: &str,
    ) -> Result<(), RuntimeError> {
        let mut snaps = snapshots::snapshots_client::SnapshotsClient::new(self.channel());
        let prepare = snapshots::PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_owned(),
            key: id.to_owned(),
            parent: image.chain_id.clone(),
            labels: HashMap::new(),
        };
        match snaps.prepare(self.request(prepare, Some(lease))).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => return Err(op("Snapshots.Prepare")(s)),
        }
        let container = Container {
            id: id.to_owned(),
            labels,
            image: image.name.clone(),
            runtime: Some(Runtime {
                name: RUNTIME.to_owned(),
                options: None,
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE_URL.to_owned(),
                value: spec.to_string().into_bytes(),
            }),
            snapshotter: SNAPSHOTTER.to_owned(),
            snapshot_key: id.to_owned(),
            ..Default::default()
        };
        let mut containers = ContainersClient::new(self.channel());
        match containers
            .create(self.request(
                CreateContainerRequest {
                    container: Some(container.clone()),
                },
                Some(lease),
            ))
            .await
        {
            Ok(_) => {}
            // The same container from before (an agent restart, or a fenced host's
            // leftover record): reuse it with this spec, whose namespace paths
            // name the pod's current orca-pause, not one that is gone.
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                let update = UpdateContainerRequest {
                    container: Some(container),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["spec".into(), "labels".into()],
                    }),
                };
                containers
                    .update(self.request(update, Some(lease)))
                    .await
                    .map_err(op("Containers.Update"))?;
            }
            Err(s) => return Err(op("Containers.Create")(s)),
        }
        Ok(())
    }

    /// Creates and starts the container's task; its stdout and stderr go to
    /// `log_uri` (a `binary://` logger). Returns the task's pid.
    pub async fn start_task(&self, id: &str, log_uri: &str) -> Result<u32, RuntimeError> {
        let mounts = self.mounts(id).await?;
        let mut tasks = TasksClient::new(self.channel());
        let create = CreateTaskRequest {
            container_id: id.to_owned(),
            rootfs: mounts,
            stdout: log_uri.to_owned(),
            stderr: log_uri.to_owned(),
            ..Default::default()
        };
        tasks
            .create(self.request(create, None))
            .await
            .map_err(op("Tasks.Create"))?;
        let start = StartRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        };
        let pid = tasks
            .start(self.request(start, None))
            .await
            .map_err(op("Tasks.Start"))?
            .into_inner()
            .pid;
        Ok(pid)
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>, RuntimeError> {
        let req = snapshots::MountsRequest {
            snapshotter: SNAPSHOTTER.to_owned(),
            key: key.to_owned(),
        };
        Ok(
            snapshots::snapshots_client::SnapshotsClient::new(self.channel())
                .mounts(self.request(req, None))
                .await
                .map_err(op("Snapshots.Mounts"))?
                .into_inner()
                .mounts,
        )
    }

    /// The task's current state; `None` when the container has no task.
    pub async fn observe(&self, id: &str) -> Result<Option<TaskObservation>, RuntimeError> {
        let req = GetRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        };
        let process = match TasksClient::new(self.channel())
            .get(self.request(req, None))
            .await
        {
            Ok(resp) => resp.into_inner().process,
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(op("Tasks.Get")(s)),
        };
        let Some(p) = process else { return Ok(None) };
        let status = match Status::try_from(p.status).unwrap_or(Status::Unknown) {
            Status::Created => TaskStatus::Created,
            Status::Running => TaskStatus::Running,
            Status::Stopped => TaskStatus::Stopped,
            Status::Paused | Status::Pausing => TaskStatus::Paused,
            Status::Unknown => TaskStatus::Unknown,
        };
        Ok(Some(TaskObservation {
            status,
            pid: p.pid,
            exit_status: p.exit_status,
            exited_at: timestamp(p.exited_at),
        }))
    }

    /// Waits until the task exits; returns its exit status and time.
    pub async fn wait(&self, id: &str) -> Result<(u32, Option<jiff::Timestamp>), RuntimeError> {
        let req = WaitRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        };
        let resp = TasksClient::new(self.channel())
            .wait(self.request(req, None))
            .await
            .map_err(op("Tasks.Wait"))?
            .into_inner();
        Ok((resp.exit_status, timestamp(resp.exited_at)))
    }

    /// Sends a signal to the task's main process, as the kubelet does for SIGTERM
    /// (the container decides how to shut down); SIGKILL goes to every process of
    /// the container.
    pub async fn kill(&self, id: &str, signal: u32) -> Result<(), RuntimeError> {
        self.send_kill(KillRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
            signal,
            all: signal == 9,
        })
        .await
    }

    /// Sends a kill request; a process already gone is not an error.
    pub(crate) async fn send_kill(&self, req: KillRequest) -> Result<(), RuntimeError> {
        match TasksClient::new(self.channel())
            .kill(self.request(req, None))
            .await
        {
            Ok(_) => Ok(()),
            // Already gone: nothing left to signal.
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(op("Tasks.Kill")(s)),
        }
    }

    /// Deletes a stopped task (its shim and state). Absent tasks are fine.
    pub async fn delete_task(&self, id: &str) -> Result<(), RuntimeError> {
        let req = DeleteTaskRequest {
            container_id: id.to_owned(),
        };
        match TasksClient::new(self.channel())
            .delete(self.request(req, None))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(op("Tasks.Delete")(s)),
        }
    }

    /// Deletes the container record and its snapshot. Absent ones are fine.
    pub async fn delete_container(&self, id: &str) -> Result<(), RuntimeError> {
        let req = DeleteContainerRequest { id: id.to_owned() };
        match ContainersClient::new(self.channel())
            .delete(self.request(req, None))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(op("Containers.Delete")(s)),
        }
        let rm = snapshots::RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_owned(),
            key: id.to_owned(),
        };
        match snapshots::snapshots_client::SnapshotsClient::new(self.channel())
            .remove(self.request(rm, None))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(op("Snapshots.Remove")(s)),
        }
    }

    /// Ids of the containers in this namespace that carry `label=value`.
    pub async fn containers_with_label(
        &self,
        label: &str,
        value: &str,
    ) -> Result<Vec<String>, RuntimeError> {
        let req = ListContainersRequest {
            filters: vec![format!("labels.\"{label}\"=={value}")],
        };
        Ok(ContainersClient::new(self.channel())
            .list(self.request(req, None))
            .await
            .map_err(op("Containers.List"))?
            .into_inner()
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect())
    }
}
