//! The assembly: every component built once, bottom-up, each over the shared
//! infrastructure ([`Shared`]) and handles to the components below it. The
//! edges (the gRPC API, the Virtual Kubelet, the metrics) reach components
//! through the accessors here; no component holds a `Cluster`.

use std::sync::Arc;

use crate::auth::Auth;
use crate::autoscaling::Autoscaler;
use crate::budget_caps::BudgetCaps;
use crate::budgets::Budgets;
use crate::claims::Claims;
use crate::cloud::InstanceProvider;
use crate::config::Config;
use crate::heartbeat::Heartbeats;
use crate::interruptions::Interruptions;
use crate::objects::Objects;
use crate::pki::Pki;
use crate::pods::Pods;
use crate::provisioning::Provisioner;
use crate::recovery::Recovery;
use crate::registry::Registry;
use crate::scheduler::Scheduler;
use crate::streams::Streams;
use crate::workloads::Workloads;
use orca_store::Store;

pub use crate::shared::{ClusterError, LaunchContext, PodResolver, Resolved, Shared, age, now};

/// The control plane's components; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    parts: Arc<Parts>,
}

struct Parts {
    shared: Shared,
    auth: Auth,
    budgets: Budgets,
    pods: Pods,
    claims: Claims,
    registry: Registry,
    recovery: Recovery,
    provisioner: Provisioner,
    interruptions: Interruptions,
    heartbeats: Heartbeats,
    streams: Streams,
    scheduler: Scheduler,
    objects: Objects,
    workloads: Workloads,
    autoscaler: Autoscaler,
    caps: BudgetCaps,
}

impl Cluster {
    /// Assembles the cluster; `agent_tls` is the client configuration for calls
    /// to agents (the cluster CA, the control plane's certificate).
    pub fn new(
        config: Config,
        store: Store,
        provider: Box<dyn InstanceProvider>,
        pki: Pki,
        agent_tls: Arc<rustls::ClientConfig>,
        agent_url: String,
    ) -> Self {
        let shared = Shared::new(config, store, provider, pki, agent_tls, agent_url);
        let auth = Auth::new(shared.clone());
        let budgets = Budgets::new(shared.clone());
        let pods = Pods::new(shared.clone(), budgets.clone());
        let claims = Claims::new(shared.clone());
        let registry = Registry::new(shared.clone(), pods.clone());
        let recovery = Recovery::new(shared.clone(), pods.clone(), registry.clone());
        let provisioner = Provisioner::new(
            shared.clone(),
            pods.clone(),
            registry.clone(),
            claims.clone(),
        );
        let interruptions = Interruptions::new(
            shared.clone(),
            pods.clone(),
            provisioner.clone(),
            recovery.clone(),
        );
        let objects = Objects::new(shared.clone(), pods.clone(), claims.clone());
        let heartbeats = Heartbeats::new(
            shared.clone(),
            registry.clone(),
            pods.clone(),
            interruptions.clone(),
            provisioner.clone(),
            objects.clone(),
        );
        let streams = Streams::new(shared.clone(), registry.clone(), pods.clone());
        let scheduler = Scheduler::new(
            shared.clone(),
            registry.clone(),
            pods.clone(),
            claims.clone(),
            provisioner.clone(),
            recovery.clone(),
            interruptions.clone(),
        );
        let workloads = Workloads::new(shared.clone(), pods.clone(), objects.clone());
        let autoscaler = Autoscaler::new(shared.clone(), streams.clone(), workloads.clone());
        let caps = BudgetCaps::new(shared.clone(), budgets.clone(), pods.clone());
        Self {
            parts: Arc::new(Parts {
                shared,
                auth,
                budgets,
                pods,
                claims,
                registry,
                recovery,
                provisioner,
                interruptions,
                heartbeats,
                streams,
                scheduler,
                objects,
                workloads,
                autoscaler,
                caps,
            }),
        }
    }

    /// Installs the key Secrets are sealed with (once), and, in standalone mode,
    /// the store as the source of what pods refer to.
    pub fn set_sealer(&self, sealer: Arc<crate::objects::sealing::Sealer>) {
        self.objects().set_sealer(sealer);
    }

    /// Installs the Services' network (standalone mode with simulated hosts
    /// in network namespaces); before [`Cluster::set_sealer`], whose resolver
    /// gives pods the cluster DNS.
    pub fn set_services(&self, services: Arc<crate::services::manager::Services>) {
        self.objects().set_services(services);
    }

    /// The infrastructure every component shares.
    pub fn shared(&self) -> &Shared {
        &self.parts.shared
    }
    /// Tokens and authorization.
    pub fn auth(&self) -> &Auth {
        &self.parts.auth
    }
    /// Budgets: estimates and statuses.
    pub fn budgets(&self) -> &Budgets {
        &self.parts.budgets
    }
    /// The budgets' caps, enforced on pods.
    pub fn caps(&self) -> &BudgetCaps {
        &self.parts.caps
    }
    /// Pods.
    pub fn pods(&self) -> &Pods {
        &self.parts.pods
    }
    /// PersistentVolumeClaims.
    pub fn claims(&self) -> &Claims {
        &self.parts.claims
    }
    /// Nodes: joins, liveness, health, cordon.
    pub fn registry(&self) -> &Registry {
        &self.parts.registry
    }
    /// Lost nodes, drains, faults.
    pub fn recovery(&self) -> &Recovery {
        &self.parts.recovery
    }
    /// Instances: launches, warm pool, reservation ends, EBS claims.
    pub fn provisioner(&self) -> &Provisioner {
        &self.parts.provisioner
    }
    /// Agents' interruption notices.
    pub fn interruptions(&self) -> &Interruptions {
        &self.parts.interruptions
    }
    /// Agents' heartbeats.
    pub fn heartbeats(&self) -> &Heartbeats {
        &self.parts.heartbeats
    }
    /// Logs, exec, attach, port-forward and stats relayed to agents.
    pub fn streams(&self) -> &Streams {
        &self.parts.streams
    }
    /// Placement and dispatch.
    pub fn scheduler(&self) -> &Scheduler {
        &self.parts.scheduler
    }
    /// Standalone mode's objects.
    pub fn objects(&self) -> &Objects {
        &self.parts.objects
    }
    /// Deployments and ReplicaSets.
    pub fn workloads(&self) -> &Workloads {
        &self.parts.workloads
    }
    /// HorizontalPodAutoscalers.
    pub fn autoscaler(&self) -> &Autoscaler {
        &self.parts.autoscaler
    }
}
